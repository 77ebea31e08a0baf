"""AU fine-tuning: class weights, sampling, the crop dataset, the model, and recipes/finetune_au.py end to end."""
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import video_fer
from video_fer.data import au_faces
from video_fer.models import task_models
from video_fer.train.losses import au as au_losses
from video_fer.data.au_datasets import AUFrameTable, read_bp4d, read_disfa
from video_fer.data.cache import CacheWriter, FaceTrackCache
from video_fer.data.folds import BP4D_AUS, DISFA_AUS
from video_fer.faces.alignment import AlignmentSpec
from video_fer.models.tae import FaceActionEncoder, TAEConfig
from video_fer.train.logs import read_csv_log
from video_fer.train.run import run_recipe as run_with_error_exit
from scripts import load_script

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPE = PROJECT_ROOT / "recipes" / "finetune_au.py"
TINY_ENCODER = dict(image_size=64, width=4, embedding_dim=16, attention_streams=2, stream_width=4)
TINY = [f"model.tae.{key}={value}" for key, value in TINY_ENCODER.items()] + [
    "train.batch_size=8", "train.embedding_batch_size=16", "data.num_workers=0"]
# two subjects of each standard part, so every fold has test and training subjects
DISFA_SUBJECTS = ("SN002", "SN010", "SN013", "SN018", "SN003", "SN029")
BP4D_SUBJECTS = ("F001", "M007", "M011", "F003", "F007", "F015")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


# ----------------------------------------------------------------------------- weights and losses
def test_positive_weights_are_negatives_over_positives_of_coded_frames():
    occurrence = np.array([[1, 0, 0], [0, 0, 0], [0, -1, 0], [1, 1, -1]], np.int8)
    # AU a: 2 positives, 2 negatives -> 1; AU b: 1 positive, 2 negatives (row 2 not coded) -> 2; AU c: no positive -> 1
    np.testing.assert_allclose(au_losses.positive_weights(occurrence), [1.0, 2.0, 1.0])
    many_negatives = np.array([[1]] + [[0]] * 9, np.int8)
    assert au_losses.positive_weights(many_negatives)[0] == pytest.approx(9.0)
    assert au_losses.positive_weights(many_negatives, max_weight=5.0)[0] == pytest.approx(5.0)


def test_balanced_sampling_gives_each_class_of_an_au_half_the_mass():
    occurrence = np.array([[1], [0], [0], [0]], np.int8)  # p = 1/4: positive 0.5/0.25 = 2, negatives 0.5/0.75
    weights = au_faces.balanced_sampling_weights(occurrence)
    np.testing.assert_allclose(weights, [2.0, 2 / 3, 2 / 3, 2 / 3])
    two_aus = np.array([[1, 0], [0, 1], [0, 1], [0, -1]], np.int8)
    # AU1 p=1/4: [2, 2/3, 2/3, 2/3]; AU2 p=2/3 (row 3 not coded): [1.5, 0.75, 0.75, -]; mean over coded AUs
    raw = np.array([(2 + 1.5) / 2, (2 / 3 + 0.75) / 2, (2 / 3 + 0.75) / 2, 2 / 3])
    np.testing.assert_allclose(au_faces.balanced_sampling_weights(two_aus), raw * 4 / raw.sum())
    shares = [(weights * (occurrence[:, 0] == 1)).sum() / weights.sum()]
    assert shares == pytest.approx([0.5])
    with pytest.raises(video_fer.VideoFerError, match="balanced sampling"):
        au_faces.balanced_sampling_weights(np.ones((3, 2), np.int8))


def test_masked_losses_ignore_not_coded_entries():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    occurrence = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    pos_weight = torch.tensor([3.0, 1.0])
    expected = (3.0 * F.softplus(-logits[0, 0]) + F.softplus(logits[1, 0]) + F.softplus(-logits[1, 1])) / 3
    assert au_losses.masked_bce_loss(logits, occurrence, pos_weight) == pytest.approx(float(expected), rel=1e-6)
    intensity = torch.tensor([[1.0, float("nan")], [0.0, 2.0]])
    assert au_losses.masked_mse_loss(logits, intensity) == pytest.approx(((2 - 1) ** 2 + 0.25 + 1.0) / 3)


# ----------------------------------------------------------------------------- a synthetic face cache
def disfa_like(root: Path, frames_per_subject: int = 6, seed: int = 0) -> AUFrameTable:
    """DISFA label files for DISFA_SUBJECTS, random intensities 0-5, and a cache of random crops for them.

    Crops are random 64 px images; the last frame of SN013 has no track (a face the front end missed).
    """
    rng = np.random.default_rng(seed)
    writer = CacheWriter(root / "cache")
    writer.begin({"alignment": AlignmentSpec(size=64).to_dict(), "landmarker": "synthetic", "size": 64})
    for subject in DISFA_SUBJECTS:
        folder = root / "ActionUnit_Labels" / subject
        folder.mkdir(parents=True)
        for au in DISFA_AUS:
            lines = [f"{frame},{rng.integers(0, 6)}" for frame in range(1, frames_per_subject + 1)]
            (folder / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")
        video = str(root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi")
        tracked = frames_per_subject - (subject == "SN013")
        crops = rng.integers(0, 256, (tracked, 64, 64, 3), dtype=np.uint8)
        row = writer.write_track(f"{subject}__t0000", crops, {"frame_indices": np.arange(tracked)},
                                 source=video, identity=subject, fps=25.0)
        writer.commit_video(subject, {"source": video, "status": "ok", "tracks": [row]})
    writer.rebuild_index()
    return read_disfa(root, check_videos=False, check_frame_counts=False)


def test_dataset_reads_each_labelled_crop_and_reports_frames_without_face(tmp_path):
    table = disfa_like(tmp_path)
    cache = FaceTrackCache(tmp_path / "cache")
    faces, join = au_faces.match_labelled_faces(table, cache)
    report = au_faces.faces_report(join)
    assert report["labelled"] == 36 and report["without_face"] == 1
    assert report["without_face_per_subject"]["SN013"] == 1 and len(faces) == 35
    dataset = au_faces.AUFaceDataset(cache, faces)
    rows = [34, 0, 7]  # mixed tracks, out of order
    items = dataset.__getitems__(rows)
    for row, item in zip(rows, items):
        expected = cache.read_frames(str(faces.track_ids[row]), [int(faces.positions[row])])[0]
        assert torch.equal(item["image"], expected)
        np.testing.assert_array_equal(item["occurrence"].numpy(), faces.table.occurrence[row])
        np.testing.assert_array_equal(item["intensity"].numpy(), faces.table.intensity[row])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 64, 64, 3) and batch["occurrence"].shape == (4, 8)


def test_embeddings_equal_the_frozen_encoder_on_each_crop_and_the_model_round_trips(tmp_path):
    table = disfa_like(tmp_path)
    cache = FaceTrackCache(tmp_path / "cache")
    faces, _ = au_faces.match_labelled_faces(table, cache)
    torch.manual_seed(0)
    encoder = FaceActionEncoder(TAEConfig(**TINY_ENCODER)).train()
    embeddings = au_faces.compute_embeddings(encoder, cache, faces, batch_size=4)
    assert encoder.training  # restored
    rows = np.array([3, 20, 34])
    crops = au_faces.read_face_crops(cache, faces.track_ids[rows], faces.positions[rows])
    with torch.no_grad():
        direct = encoder.eval().forward_features(crops.permute(0, 3, 1, 2).float() / 255).action_embedding
    torch.testing.assert_close(embeddings[rows], direct, rtol=1e-4, atol=1e-5)

    model = task_models.AUClassifier(task_models.AUClassifierConfig(list(DISFA_AUS), dict(TINY_ENCODER)))
    model.encoder.load_state_dict(encoder.state_dict())
    model.eval()
    images = crops.permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(model(images), model(direct), rtol=1e-4, atol=1e-5)  # images or embeddings
    video_fer.save_model(model, tmp_path / "model")
    loaded = video_fer.load_model(tmp_path / "model")
    assert isinstance(loaded, task_models.AUClassifier) and loaded.config.au_numbers == list(DISFA_AUS)
    probabilities = loaded.predict(images)
    assert probabilities.shape == (3, 8) and bool(((probabilities > 0) & (probabilities < 1)).all())
    torch.testing.assert_close(probabilities, torch.sigmoid(model(images)))


def test_sequence_videos_keep_frame_order_per_subject_and_task(tmp_path):
    from PIL import Image

    from video_fer.video import VideoReader

    rng = np.random.default_rng(1)
    sources, frames, subjects, tasks, pixels = [], [], [], [], {}
    for subject, task, numbers in (("F001", "T1", [3, 1, 2]), ("F001", "T2", [7, 5]), ("M002", "T1", [1])):
        for number in numbers:
            image = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 48x64 blocks
            path = tmp_path / "frames" / subject / task / f"{number}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            sources.append(str(path)), frames.append(number), subjects.append(subject), tasks.append(task)
            pixels[(subject, task, number)] = image
    count = len(sources)
    table = AUFrameTable((1,), np.array(subjects), np.array(tasks), np.array(frames), np.array(sources),
                         np.full(count, -1), np.zeros((count, 1), np.int8))
    remapped = au_faces.write_sequence_videos(table, tmp_path / "videos", crf=0)
    assert remapped.source_frames.tolist() == [2, 0, 1, 1, 0, 0]  # rank of the frame number in its sequence
    assert remapped.sources[0] == str(tmp_path / "videos" / "F001" / "F001_T1.mp4")
    reader = VideoReader(remapped.sources[0])
    assert reader.num_frames == 3
    decoded = reader.get([0, 1, 2]).numpy().astype(np.float32)
    for position, number in enumerate([1, 2, 3]):
        assert np.abs(decoded[position] - pixels[("F001", "T1", number)]).mean() < 8  # yuv420p of flat blocks
    # already written: reused, and a stale video (other frame count) is an error naming it
    au_faces.write_sequence_videos(table, tmp_path / "videos")
    longer = table.select([0, 1, 2, 3, 4, 5, 0])
    longer.frames[-1] = 4
    with pytest.raises(video_fer.VideoFerError, match=r"F001_T1.mp4: has 3 frames but F001 T1 has 4"):
        au_faces.write_sequence_videos(longer, tmp_path / "videos")


# ----------------------------------------------------------------------------- the recipe
@pytest.fixture(scope="module")
def recipe():
    """recipes/finetune_au.py loaded once and run in this process (no interpreter + torch start per run)."""
    yield load_script(RECIPE, "finetune_au_recipe")
    sys.modules.pop("finetune_au_recipe", None)


@dataclass
class RecipeRun:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_recipe(recipe, capsys):
    def run(*arguments, config="finetune_au_disfa.yaml") -> RecipeRun:
        capsys.readouterr()  # drop earlier output
        code = run_with_error_exit(recipe.main, "finetune_au",
                                   ["--config", str(PROJECT_ROOT / "recipes" / "configs" / config), *TINY, *arguments])
        captured = capsys.readouterr()
        return RecipeRun(code, captured.out, captured.err)

    return run


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(recipe):
    progress = {"epoch": 0, "best_score": None, "best_epoch": None, "epochs_without_improvement": 0}
    improved = [recipe.record_validation(progress, score, epoch) for epoch, score in enumerate([0.3, 0.5, 0.5, 0.4], 1)]
    assert improved == [True, True, False, False]  # equal is not better
    assert progress["best_epoch"] == 2 and progress["best_score"] == 0.5
    assert recipe.should_stop(progress, patience=2) and not recipe.should_stop(progress, patience=3)
    assert not recipe.should_stop(progress, patience=0)  # 0 = never stop early
    assert recipe.record_validation(progress, None, 5) and progress["best_epoch"] == 5  # no validation: keep the last


def test_recipe_errors_name_the_setting_to_fix(tmp_path, run_recipe):
    missing_cache = run_recipe(f"train.output_dir={tmp_path / 'run'}")
    assert missing_cache.returncode == 2 and "data.cache: give the face-track cache" in missing_cache.stderr
    unknown = run_recipe("data.cahce=x")
    assert unknown.returncode == 2 and "'data.cahce' is unknown" in unknown.stderr
    no_labels = run_recipe(f"data.cache={tmp_path}", f"data.root={tmp_path / 'nowhere'}")
    assert no_labels.returncode == 2 and "nowhere: no DISFA label file" in no_labels.stderr


def test_recipe_resumes_a_fold_exactly_and_skips_finished_folds(tmp_path, run_recipe):
    disfa_like(tmp_path)
    data = [f"data.root={tmp_path}", f"data.cache={tmp_path / 'cache'}", "data.check_media=false",
            "data.val_fraction=0", "train.epochs=4", "train.patience=0", "train.keep_checkpoints=0"]
    full = run_recipe(*data, f"train.output_dir={tmp_path / 'full'}", "--fold", "1")
    assert full.returncode == 0, full.stderr[-3000:]
    assert "35 of 36 labelled frames have a face" in full.stdout and "SN013: 1 of 6 frames without a face" in full.stdout
    full_log = read_csv_log(tmp_path / "full" / "fold_1" / "train.csv")
    assert [row["epoch"] for row in full_log] == ["1", "2", "3", "4"]
    assert len({row["loss"] for row in full_log}) > 1  # the probe trains

    # an interrupted run: the same folder holding only its epoch-2 checkpoint and log
    interrupted = tmp_path / "resumed" / "fold_1"
    shutil.copytree(tmp_path / "full" / "fold_1" / "checkpoints" / "step_00000002",
                    interrupted / "checkpoints" / "step_00000002")
    shutil.copy(tmp_path / "full" / "fold_1" / "train.csv", interrupted / "train.csv")
    resumed = run_recipe(*data, f"train.output_dir={tmp_path / 'resumed'}", "--fold", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "(epoch 2)" in resumed.stdout
    assert read_csv_log(interrupted / "train.csv") == full_log
    before = np.load(tmp_path / "full" / "fold_1" / "predictions.npz")
    after = np.load(interrupted / "predictions.npz")
    np.testing.assert_allclose(after["scores"], before["scores"], rtol=1e-5, atol=1e-6)

    # --fold all: fold 1 is skipped, 2 and 3 run, the aggregate covers the three
    rest = run_recipe(*data, f"train.output_dir={tmp_path / 'full'}", "--fold", "all")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "fold 1: already finished" in rest.stdout and "fold 2: already finished" not in rest.stdout
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    per_fold = [json.loads((tmp_path / "full" / f"fold_{k}" / "result.json").read_text())["mean_f1"] for k in (1, 2, 3)]
    assert results["aggregate"]["complete"] and results["aggregate"]["mean_f1"] == pytest.approx(np.mean(per_fold))
    changed = run_recipe(*data, f"train.output_dir={tmp_path / 'full'}", "train.lr=0.5", "--fold", "1")
    assert changed.returncode != 0 and "this fold finished with other settings" in changed.stderr


def test_recipe_finetunes_intensity_on_crops(tmp_path, run_recipe):
    disfa_like(tmp_path)
    result = run_recipe(f"data.root={tmp_path}", f"data.cache={tmp_path / 'cache'}", "data.check_media=false",
                        "data.val_fraction=0.25", "data.balanced_sampling=true", "train.mode=finetune",
                        "train.task=intensity", "train.epochs=1", f"train.output_dir={tmp_path / 'run'}", "--fold", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    fold = json.loads((tmp_path / "run" / "fold_3" / "result.json").read_text())
    assert fold["task"] == "intensity" and fold["test_subjects"] == ["SN003", "SN029"] and fold["frames"] == 12
    assert set(fold["icc"]) == {f"AU{au:02d}" for au in DISFA_AUS} and fold["mean_mae"] > 0
    assert len(fold["train_subjects"]) == 3 and len(fold["validation_subjects"]) == 1
    model = video_fer.load_model(tmp_path / "run" / "fold_3" / "model")
    assert model.config.task == "intensity"
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert "ICC(3,1)" in markdown and "fold 3 only (incomplete)" in markdown


# ----------------------------------------------------------------------------- distillation of the blendshape AUs
IDENTITIES = ("ann", "bob", "cy", "dee", "eve", "fay")


def blendshape_cache(root: Path, frames_per_identity: int = 8, seed: int = 0, alignment=None) -> Path:
    """A cache of random 64 px crops whose tracks store MediaPipe-like blendshapes (what prepare stores)."""
    rng = np.random.default_rng(seed)
    writer = CacheWriter(root)
    alignment = alignment or AlignmentSpec(size=64)
    writer.begin({"alignment": alignment.to_dict(), "landmarker": "mediapipe", "size": alignment.size})
    for identity in IDENTITIES:
        video = str(root.parent / "videos" / f"{identity}.mp4")
        crops = rng.integers(0, 256, (frames_per_identity, alignment.size, alignment.size, 3), dtype=np.uint8)
        shapes = rng.uniform(0, 0.8, (frames_per_identity, 52)).astype(np.float32)
        shapes[-1] = np.nan  # a frame whose blendshapes are missing: not coded
        row = writer.write_track(f"{identity}__t0000", crops, {"frame_indices": np.arange(frames_per_identity),
                                                               "blendshapes": shapes},
                                 source=video, identity=identity, fps=25.0)
        writer.commit_video(identity, {"source": video, "status": "ok", "tracks": [row]})
    writer.rebuild_index()
    return root


def test_blendshape_labels_are_the_tables_aus_of_each_cached_frame(tmp_path):
    from video_fer.data.au_datasets import read_blendshape_aus
    from video_fer.faces.blendshape_aus import INTENSITY_AUS, blendshape_aus

    cache = FaceTrackCache(blendshape_cache(tmp_path / "cache"))
    table = read_blendshape_aus(cache)
    assert table.au_numbers == INTENSITY_AUS and len(table) == 48
    shapes = cache.track_arrays("bob__t0000")["blendshapes"]
    expected = blendshape_aus(shapes)
    rows = np.flatnonzero(table.subjects == "bob")
    np.testing.assert_allclose(table.intensity[rows, INTENSITY_AUS.index(12)], expected["AU12_r"], rtol=1e-6)
    assert (table.occurrence[rows[-1]] == -1).all() and np.isnan(table.intensity[rows[-1]]).all()  # not coded
    np.testing.assert_array_equal(table.occurrence[rows[:-1], INTENSITY_AUS.index(12)], expected["AU12_c"][:-1])
    faces, join = au_faces.match_labelled_faces(table, cache)
    assert len(faces) == 48 and au_faces.faces_report(join)["without_face"] == 0


def test_distillation_recipe_writes_identity_disjoint_folds_and_a_track_bundle(tmp_path, run_recipe):
    from video_fer.track.bundle import load_bundle
    from video_fer.track.table import column_names

    blendshape_cache(tmp_path / "cache")
    out = tmp_path / "run"
    result = run_recipe(f"data.cache={tmp_path / 'cache'}", "train.epochs=2", f"train.output_dir={out}",
                        "data.val_fraction=0.25", "--fold", "all", config="distill_au_blendshapes.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    folds = [json.loads((out / f"fold_{k}" / "result.json").read_text()) for k in (1, 2, 3)]
    tested = [set(fold["test_subjects"]) for fold in folds]
    assert set().union(*tested) == set(IDENTITIES) and sum(map(len, tested)) == 6  # each identity tested once
    for fold in folds:
        assert not set(fold["test_subjects"]) & set(fold["train_subjects"] + fold["validation_subjects"])
        assert len(fold["icc"]) == 17 and fold["task"] == "intensity"
    assert json.loads((out / "fold_1" / "model" / "config.json").read_text())["extra"]["alignment"]["size"] == 64
    bundle = load_bundle(out / "bundle")
    assert bundle.default_columns == ("pose", "gaze") and bundle.specs["au_intensity"].names[-1] == 45
    columns = column_names(bundle)
    assert "gaze_angle_x" in columns and "AU45_r" in columns and "AU45_c" not in columns
    assert "track bundle:" in result.stdout


# ----------------------------------------------------------------------------- the full protocol on real faces
def write_fake_bp4d(root: Path, videos: Path) -> dict[str, int]:
    """BP4D layout from real frames: 6 subjects (2 per part), task T1, 5 face frames each; F003 also gets
    2 frames of cartoon scenery (no face). Labels: 12 AUs, random 0/1 with a few 9 (not coded).

    Returns the number of labelled frames per subject.
    """
    from PIL import Image

    from video_fer.video import VideoReader

    rng = np.random.default_rng(0)
    single = VideoReader(videos / "single_face.mp4").get(np.arange(0, 72, 14)[:5]).numpy()
    other = VideoReader(videos / "WolfgangLanger_Pexels.mp4").get([0, 24, 48, 72, 96]).numpy()
    scenery = VideoReader(videos / "no_face.mp4").get([10, 60]).numpy()
    scenery = np.stack([np.asarray(Image.fromarray(frame).resize((640, 360))) for frame in scenery])
    counts = {}
    for number, subject in enumerate(BP4D_SUBJECTS):
        frames = single if number % 2 == 0 else other
        if subject == "F003":
            frames = np.concatenate([frames, scenery])
        folder = root / "frames" / subject / "T1"
        folder.mkdir(parents=True)
        for index, frame in enumerate(frames, start=1):
            Image.fromarray(frame).save(folder / f"{index:04d}.jpg", quality=95)
        labels = rng.integers(0, 2, (len(frames), len(BP4D_AUS)))
        labels[rng.random(labels.shape) < 0.05] = 9
        rows = [",".join(map(str, [index, *row])) for index, row in enumerate(labels, start=1)]
        (root / "AU_OCC").mkdir(exist_ok=True)
        (root / "AU_OCC" / f"{subject}_T1.csv").write_text(
            "\n".join([",".join(["frame", *map(str, BP4D_AUS)]), *rows]) + "\n")
        counts[subject] = len(frames)
    return counts


def test_fold_all_on_a_fake_bp4d_of_real_faces_writes_the_table(tmp_path, shared_videos, mediapipe_model, run_recipe):
    from video_fer.data.prepare import prepare_videos
    from video_fer.evaluate.au_report import evaluate_run

    counts = write_fake_bp4d(tmp_path, shared_videos)
    table = read_bp4d(tmp_path / "AU_OCC", tmp_path / "frames")
    au_faces.write_sequence_videos(table, tmp_path / "videos")  # prepare reads videos
    prepare_videos(tmp_path / "videos", tmp_path / "cache", landmarker_options={"model_path": str(mediapipe_model)},
                   size=64, min_track_frames=2, progress=False)
    out = tmp_path / "run"
    result = run_recipe(f"data.label_dir={tmp_path / 'AU_OCC'}", f"data.frames_root={tmp_path / 'frames'}",
                        f"data.sequence_videos={tmp_path / 'videos'}", f"data.cache={tmp_path / 'cache'}",
                        "data.val_fraction=0.25", "train.epochs=3", f"train.output_dir={out}", "--fold", "all",
                        config="finetune_au_bp4d.yaml")
    assert result.returncode == 0, result.stderr[-3000:]

    faces = json.loads((out / "faces_report.json").read_text())
    assert faces["frames_per_subject"] == counts
    # the two scenery frames of F003 are reported, not dropped (MediaPipe finds every real face here)
    assert faces["without_face_per_subject"] == {subject: 2 * (subject == "F003") for subject in BP4D_SUBJECTS}
    assert "F003: 2 of 7 frames without a face" in result.stdout
    folds = [json.loads((out / f"fold_{k}" / "result.json").read_text()) for k in (1, 2, 3)]
    assert [fold["test_subjects"] for fold in folds] == [["F001", "M007"], ["M011", "F003"], ["F007", "F015"]]
    scored = sum(fold["frames"] for fold in folds)
    assert scored == faces["labelled"] - faces["without_face"]
    assert all(len(fold["positive_weights"]) == 12 for fold in folds)

    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "bp4d" and results["aggregate"]["complete"]
    assert results["aggregate"]["mean_f1"] == pytest.approx(np.mean([fold["mean_f1"] for fold in folds]))
    markdown = (out / "results.md").read_text()
    assert "| Method | AU1 | AU2 | AU4 | AU6 | AU7 | AU10 | AU12 | AU14 | AU15 | AU17 | AU23 | AU24 | Avg. |" in markdown
    assert f"{100 * results['aggregate']['mean_f1']:.1f} |" in markdown and "| 56.1 |" in markdown
    assert markdown in result.stdout  # the recipe prints the table it wrote

    again = evaluate_run(out, out_dir=tmp_path / "recomputed")  # `video-fer evaluate` gives the same numbers
    assert again["aggregate"]["f1"] == results["aggregate"]["f1"]
