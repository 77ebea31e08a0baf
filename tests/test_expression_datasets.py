"""Expression / valence-arousal readers, the synthetic expression set and the still-image face front end."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from video_fer.data.expression_datasets import (
    AFFECTNET_EXPRESSIONS, EXPRESSION_ACTION_UNITS, FERPLUS_EXPRESSIONS, RAFDB_EXPRESSIONS, SYNTHETIC_EXPRESSIONS,
    FaceLabelDataConfig, expression_intensities, ferplus_targets, load_face_label_data, make_synthetic_expressions,
    mask_face_half, photometric_jitter, read_affectnet, read_expression_csv, read_expression_folder, read_ferplus,
    read_rafdb, split_identities, valence_arousal_from_intensities,
)
from video_fer.data.face_images import align_face_arrays, align_image_files
from video_fer.data.synthetic import AU_NAMES, demo_faces
from video_fer.errors import LabelFileError
from video_fer.faces.alignment import AlignmentSpec


@pytest.fixture(autouse=True)
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add overhead on the shared machine
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- RAF-DB
def write_rafdb(root: Path, lines: str) -> Path:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(lines)
    return root


def test_rafdb_labels_paths_and_splits(tmp_path):
    root = write_rafdb(tmp_path, "train_00001.jpg 5\ntrain_00002.jpg 1\n\ntest_0001.jpg 7\n")
    table = read_rafdb(root)
    assert table.labels.tolist() == [4, 0, 6]  # 1-based file labels -> 0-based
    assert [table.class_names[i] for i in table.labels] == ["sadness", "surprise", "neutral"]
    assert table.sources[0] == str(root / "Image" / "aligned" / "train_00001_aligned.jpg")
    assert table.splits.tolist() == ["train", "train", "test"]
    assert table.lines.tolist() == [1, 2, 4]
    assert read_rafdb(root, aligned=False).sources[2] == str(root / "Image" / "original" / "test_0001.jpg")
    assert table.class_names == RAFDB_EXPRESSIONS and len(table.split("test")) == 1


@pytest.mark.parametrize("body, message", [
    ("train_00001.jpg 5\ntrain_00002.jpg 8\n", "line 2: label 8 is outside 1..7"),
    ("train_00001.jpg 5\ntrain_00002.jpg\n", "line 2: expected '<image> <label>'"),
    ("train_00001.jpg five\n", "line 1: label = 'five' is not a number"),
    ("train_00001.jpg 5\ntrain_00001.jpg 3\n", "line 2: train_00001.jpg is listed twice (first on line 1)"),
    ("val_00001.jpg 3\n", "line 1: image name 'val_00001.jpg'"),
])
def test_rafdb_malformed_lines_name_file_and_line(tmp_path, body, message):
    root = write_rafdb(tmp_path, body)
    with pytest.raises(LabelFileError, match="list_patition_label.txt " + message.replace("(", r"\(").replace(")", r"\)")):
        read_rafdb(root)


# ----------------------------------------------------------------------------- AffectNet
AFFECTNET_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"


def affectnet_points(offset: float) -> str:
    return ";".join(f"{offset + i:.1f}" for i in range(136))


def test_affectnet_rows_exclusions_landmarks_and_invalid_va(tmp_path):
    rows = [
        f"689/a.jpg,10,20,100,120,{affectnet_points(0)},1,0.5,-0.25",
        f"689/b.jpg,0,0,50,50,{affectnet_points(1)},9,0.1,0.1",  # uncertain: excluded
        f"689/c.jpg,1,2,3,4,{affectnet_points(2)},7,-2,-2",  # contempt, VA invalid
        f"689/d.jpg,1,2,3,4,{affectnet_points(3)},10,-2,-2",  # no face: excluded
    ]
    path = tmp_path / "training.csv"
    path.write_text(AFFECTNET_HEADER + "\n".join(rows) + "\n")
    table = read_affectnet(path)
    assert table.labels.tolist() == [1, 7]
    assert table.class_names == AFFECTNET_EXPRESSIONS
    assert table.excluded == {"uncertain": 1, "no-face": 1}
    np.testing.assert_allclose(table.valence_arousal[0], [0.5, -0.25])
    assert np.isnan(table.valence_arousal[1]).all()  # -2 = invalid
    np.testing.assert_allclose(table.boxes[0], [10, 20, 110, 140])
    np.testing.assert_allclose(table.landmarks[0, 1], [2.0, 3.0])  # x2, y2
    assert table.splits.tolist() == ["train", "train"] and table.sources[0] == str(tmp_path / "689/a.jpg")
    seven = read_affectnet(path, num_classes=7)
    assert seven.labels.tolist() == [1] and seven.excluded["contempt"] == 1 and len(seven.class_names) == 7


def test_affectnet_malformed_rows_name_the_line(tmp_path):
    path = tmp_path / "validation.csv"
    path.write_text(AFFECTNET_HEADER + f"a.jpg,1,2,3,4,{affectnet_points(0)},1,0.5,0.5\n" + "b.jpg,1,2,3,4,1;2;3,1,0.5,0.5\n")
    with pytest.raises(LabelFileError, match=r"validation.csv line 3: facial_landmarks has 3 values; expected 136"):
        read_affectnet(path)
    path.write_text(AFFECTNET_HEADER + f"a.jpg,1,2,3,4,{affectnet_points(0)},1,1.5,0.5\n")
    with pytest.raises(LabelFileError, match=r"line 2: valence 1.5 is outside \[-1, 1\]"):
        read_affectnet(path)
    path.write_text("subDirectory_filePath,expression\na.jpg,1\n")
    with pytest.raises(LabelFileError, match="line 1: no column 'face_x'"):
        read_affectnet(path)


# ----------------------------------------------------------------------------- FERPlus
def test_ferplus_targets_follow_the_authors_rules():
    votes = np.array([
        [6, 1, 1, 1, 0, 0, 0, 1, 0, 0],  # single votes dropped -> 6/6 neutral
        [4, 4, 0, 0, 0, 0, 0, 0, 2, 0],  # no majority (4 of 8 emotion votes)
        [0, 0, 0, 0, 0, 0, 0, 0, 7, 3],  # unknown wins -> dropped
        [2, 0, 5, 0, 0, 0, 0, 0, 0, 3],  # surprise 5 of 7 emotion votes
    ])
    labels, distributions, keep = ferplus_targets(votes, "majority")
    assert keep.tolist() == [True, False, False, True]
    assert labels[[0, 3]].tolist() == [0, 2]
    _, distributions, keep = ferplus_targets(votes, "distribution")
    assert keep.tolist() == [True, True, False, True]
    np.testing.assert_allclose(distributions[1, :2], [0.5, 0.5])
    np.testing.assert_allclose(distributions[3, [0, 2]], [2 / 7, 5 / 7], rtol=1e-6)


def test_ferplus_reader_folders_splits_and_errors(tmp_path):
    header = "Usage,Image name," + ",".join(FERPLUS_EXPRESSIONS) + ",unknown,NF\n"
    path = tmp_path / "fer2013new.csv"
    path.write_text(header + "Training,fer0000000.png,10,0,0,0,0,0,0,0,0,0\n"
                    "Training,,10,0,0,0,0,0,0,0,0,0\n"
                    "PrivateTest,fer0032220.png,0,0,0,0,0,9,0,0,1,0\n")
    table = read_ferplus(path)
    assert table.sources.tolist() == [str(tmp_path / "FER2013Train" / "fer0000000.png"),
                                      str(tmp_path / "FER2013Test" / "fer0032220.png")]
    assert table.labels.tolist() == [0, 5] and table.splits.tolist() == ["train", "test"]
    assert table.excluded == {"no image": 1}
    path.write_text(header + "Training,fer0000000.png,10,0,0,0,0,0,0,0,0,0\nTraining,fer1.png,x,0,0,0,0,0,0,0,0,0\n")
    with pytest.raises(LabelFileError, match="fer2013new.csv line 3: neutral = 'x' is not a number"):
        read_ferplus(path)
    path.write_text(header + "Holdout,fer1.png,10,0,0,0,0,0,0,0,0,0\n")
    with pytest.raises(LabelFileError, match="line 2: Usage 'Holdout'"):
        read_ferplus(path)


# ----------------------------------------------------------------------------- generic layouts
def tiny_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)
    return path


def test_folder_layout_with_and_without_splits(tmp_path):
    for name in ("happy/a.jpg", "happy/b.png", "sad/c.jpg", "sad/notes.txt"):
        tiny_image(tmp_path / "flat" / name) if name.endswith(("jpg", "png")) else (tmp_path / "flat" / name).write_text("x")
    table = read_expression_folder(tmp_path / "flat")
    assert table.class_names == ("happy", "sad") and table.labels.tolist() == [0, 0, 1]
    ordered = read_expression_folder(tmp_path / "flat", class_names=["sad", "happy", "neutral"])
    assert dict(zip((Path(p).name for p in ordered.sources), ordered.labels.tolist())) == {"c.jpg": 0, "a.jpg": 1,
                                                                                           "b.png": 1}
    with pytest.raises(LabelFileError, match=r"class folder\(s\) \['sad'\] are not in class_names"):
        read_expression_folder(tmp_path / "flat", class_names=["happy"])
    tiny_image(tmp_path / "split" / "train" / "happy" / "a.jpg")
    tiny_image(tmp_path / "split" / "test" / "sad" / "b.jpg")
    table = read_expression_folder(tmp_path / "split")
    assert table.splits.tolist() == ["train", "test"] and table.labels.tolist() == [0, 1]


def test_csv_layout_names_ids_va_and_errors(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("path,label,subject,split,valence,arousal\nimg/a.jpg,happy,s1,train,0.5,0.1\n"
                    "/abs/b.jpg,sad,s2,test,,\nimg/c.jpg,,s2,test,-0.3,0.2\n")
    table = read_expression_csv(path)
    assert table.class_names == ("happy", "sad") and table.labels.tolist() == [0, 1, -1]
    assert table.sources.tolist() == [str(tmp_path / "img/a.jpg"), "/abs/b.jpg", str(tmp_path / "img/c.jpg")]
    assert table.subjects.tolist() == ["s1", "s2", "s2"] and table.splits.tolist() == ["train", "test", "test"]
    assert np.isnan(table.valence_arousal[1]).all()
    np.testing.assert_allclose(table.valence_arousal[2], [-0.3, 0.2])
    path.write_text("path,label\na.jpg,2\nb.jpg,0\n")
    assert read_expression_csv(path, class_names=["x", "y", "z"]).labels.tolist() == [2, 0]
    with pytest.raises(LabelFileError, match="labels are class ids; pass class_names"):
        read_expression_csv(path)
    with pytest.raises(LabelFileError, match="labels.csv line 2: label 2 is not a class id in 0..1"):
        read_expression_csv(path, class_names=["x", "y"])
    path.write_text("path,label,valence\na.jpg,happy,0.2\nb.jpg,angry,0.1\n")
    with pytest.raises(LabelFileError, match="line 3: label 'angry' is not one of"):
        read_expression_csv(path, class_names=["happy"])
    path.write_text("path,label,valence,arousal\na.jpg,,,\n")
    with pytest.raises(LabelFileError, match="line 2: no label and no valence/arousal"):
        read_expression_csv(path)
    path.write_text("file,label\na.jpg,happy\n")
    with pytest.raises(LabelFileError, match="line 1: no column 'path'"):
        read_expression_csv(path)


# ----------------------------------------------------------------------------- synthetic expressions
def test_expression_intensities_realise_the_au_combinations():
    labels = torch.arange(len(SYNTHETIC_EXPRESSIONS)).repeat(20)
    intensities = expression_intensities(labels, torch.Generator().manual_seed(0), (0.5, 1.0), blink_probability=0.0)
    for label, name in enumerate(SYNTHETIC_EXPRESSIONS):
        rows = intensities[labels == label]
        active = {AU_NAMES[i] for i in torch.nonzero(rows.amax(0)).flatten().tolist()}
        assert active == set(EXPRESSION_ACTION_UNITS[name]), name
        members = [AU_NAMES.index(au) for au in EXPRESSION_ACTION_UNITS[name]]
        if members:
            assert rows[:, members].min() >= 0.5 and rows[:, members].max() <= 1.0


def test_valence_arousal_signs_match_the_circumplex():
    labels = torch.arange(len(SYNTHETIC_EXPRESSIONS))
    va = valence_arousal_from_intensities(expression_intensities(labels, None, (1.0, 1.0), blink_probability=0.0))
    by_name = dict(zip(SYNTHETIC_EXPRESSIONS, va.tolist()))
    assert by_name["happiness"][0] > 0.5 and by_name["neutral"] == [0.0, 0.0]
    for negative in ("sadness", "anger", "disgust", "fear"):
        assert by_name[negative][0] < 0, negative
    assert by_name["surprise"][1] > 0.5 and by_name["sadness"][1] < 0  # aroused vs deactivated
    assert va.abs().max() <= 1.0


def test_synthetic_set_is_balanced_per_identity_and_moves_the_right_region():
    faces = demo_faces(64)
    data = make_synthetic_expressions(faces.crops, faces.landmarks, faces.identities, samples_per_face=14, seed=3,
                                      motion_scale=0.0)
    assert data.images.shape == (4 * 14, 3, 64, 64) and data.images.dtype == torch.uint8
    for identity in set(faces.identities):
        counts = np.bincount(data.labels.numpy()[data.identities == identity], minlength=7)
        assert counts.tolist() == [4] * 7  # 2 views x 14 samples, classes cycling
    torch.testing.assert_close(data.valence_arousal, valence_arousal_from_intensities(data.au_intensities))
    # Without head motion a smile changes the mouth area far more than the brows.
    source = (faces.crops[0] * 255).round()
    happy = data.images[:14][data.labels[:14] == SYNTHETIC_EXPRESSIONS.index("happiness")][0].float()
    change = (happy - source).abs().mean(0)
    mouth_row = int(faces.landmarks[0, 62, 1])
    brow_row = int(faces.landmarks[0, 19, 1])
    assert change[mouth_row - 4:mouth_row + 4].mean() > 3 * change[brow_row - 4:brow_row + 4].mean()


def test_split_identities_is_exclusive_and_checks_names():
    identities = np.array(["a", "a", "b", "c", "c", "d"])
    train, test = split_identities(identities, ["c"])
    assert test.tolist() == [3, 4] and train.tolist() == [0, 1, 2, 5]
    train, test = split_identities(identities, None, test_fraction=0.5, seed=1)
    assert not set(identities[train]) & set(identities[test]) and len(set(identities[test])) == 2
    with pytest.raises(ValueError, match=r"test identities \['zed'\] are not among"):
        split_identities(identities, ["zed"])
    with pytest.raises(ValueError, match="only one identity"):
        split_identities(np.array(["a", "a"]))


def test_mask_face_half_cuts_at_the_nose_bridge():
    images = torch.rand(2, 3, 16, 16)
    landmarks = torch.zeros(2, 68, 2)
    landmarks[:, 28, 1] = torch.tensor([5.0, 9.5])
    upper = mask_face_half(images, landmarks, "upper", fill=0.25)
    assert (upper[0, :, :5] == 0.25).all() and torch.equal(upper[0, :, 5:], images[0, :, 5:])
    assert (upper[1, :, :10] == 0.25).all() and torch.equal(upper[1, :, 10:], images[1, :, 10:])
    lower = mask_face_half(images, landmarks, "lower")
    assert (lower[0, :, 5:] == 0.5).all() and torch.equal(lower[0, :, :5], images[0, :, :5])
    assert mask_face_half(images, landmarks, "none") is images
    with pytest.raises(ValueError, match="half='left'"):
        mask_face_half(images, landmarks, "left")


def test_photometric_jitter_bounds_and_identity_at_zero():
    images = torch.rand(4, 3, 8, 8)
    assert photometric_jitter(images, 0.0) is images
    jittered = photometric_jitter(images, 0.3, torch.Generator().manual_seed(0))
    assert jittered.shape == images.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, images)


# ----------------------------------------------------------------------------- still images through the front end
def test_given_landmarks_align_without_a_landmarker():
    faces = demo_faces(64, mirrored=False)
    # Put the aligned demo face into a bigger image at an offset, with its landmarks moved along.
    canvas = np.zeros((100, 120, 3), np.uint8)
    canvas[20:84, 30:94] = (faces.crops[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    points = faces.landmarks[0].numpy() + np.array([30.0, 20.0], np.float32)
    aligned = align_face_arrays([canvas], ["canvas"], AlignmentSpec(size=64), landmarks=[points])
    assert aligned.crops.shape == (1, 3, 64, 64) and aligned.missing == []
    np.testing.assert_allclose(aligned.landmarks[0].numpy(), faces.landmarks[0].numpy(), atol=0.05)
    with pytest.raises(LabelFileError, match="blank: no landmarks given and no landmarker"):
        align_face_arrays([canvas], ["blank"], AlignmentSpec(size=64))


def test_shared_images_through_mediapipe_are_aligned_and_cached(shared_images, mediapipe_model, tmp_path, monkeypatch):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(blank)
    paths = [shared_images / "single_face.jpg", shared_images / "multi_face.jpg", blank]
    spec = AlignmentSpec(size=64)
    found = align_image_files(paths, spec, "mediapipe", {"model_path": mediapipe_model, "tiles": True, "num_faces": 8},
                              all_faces=True, cache_dir=tmp_path / "cache")
    assert found.image_index.tolist() == [0, 1, 1, 1, 1, 1] and found.missing == [2]
    assert found.crops.shape == (6, 3, 64, 64) and found.crops.dtype == torch.uint8
    # The eyes of every face land on the alignment template (five-point similarity).
    from video_fer.faces.alignment import five_points

    np.testing.assert_allclose(five_points(found.landmarks)[:, :2].numpy(),
                               spec.template_pixels()[:2].expand(6, 2, 2).numpy(), atol=3.0)
    assert len(list((tmp_path / "cache").glob("faces_*.npz"))) == 1

    import video_fer.faces as faces_module

    def no_landmarker(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(faces_module, "create_landmarker", no_landmarker)
    again = align_image_files(paths, spec, "mediapipe", {"model_path": mediapipe_model, "tiles": True, "num_faces": 8},
                              all_faces=True, cache_dir=tmp_path / "cache")
    assert torch.equal(again.crops, found.crops) and again.missing == [2]
    with pytest.raises(LabelFileError, match="nope.jpg: image not found"):
        align_image_files([tmp_path / "nope.jpg"], spec)


def test_csv_dataset_of_shared_images_loads_through_the_front_end(shared_images, mediapipe_model, tmp_path):
    names = ["0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg"]
    labels = ["surprise", "happiness", "anger", "disgust"]
    rows = [f"{shared_images / name},{label},{'train' if k < 3 else 'test'}" for k, (name, label) in
            enumerate(zip(names, labels))]
    csv_path = tmp_path / "posed.csv"
    csv_path.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    config = FaceLabelDataConfig(kind="csv", root=str(csv_path), landmarker_model=str(mediapipe_model),
                                 class_names=list(SYNTHETIC_EXPRESSIONS))
    loaded = load_face_label_data(config, AlignmentSpec(size=64), tmp_path / "run")
    assert len(loaded.train) == 3 and len(loaded.test) == 1 and loaded.redraw_train is None
    assert loaded.test.labels.tolist() == [SYNTHETIC_EXPRESSIONS.index("disgust")]
    assert loaded.train.images.shape == (3, 3, 64, 64) and loaded.info["no_face"] == []
