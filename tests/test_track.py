"""`video-fer track`: row counts on every shared video, columns and ranges, batching, options, batch mode, pose,
and the no-training default (--model mediapipe)."""
import gc
import shutil
import time

import numpy as np
import pytest
import torch

from video_fer.track.bundle import load_bundle, random_bundle, save_bundle
from video_fer.cli import main as cli_main
from video_fer.faces.head_pose import MEAN_FACE_68_MM, estimate_head_pose, project_mean_face
from video_fer.faces.ibug68 import MIRROR_68
from video_fer.track.run import iter_clip_batches, track
from video_fer.track.settings import TrackSettings
from video_fer.track.stages import QUEUE_BATCHES, FaceBatch, FacePredictions, batch_rows
from video_fer.track.table import BASE_COLUMNS, column_names, metadata_path, read_table
from video_fer.video import VideoReader

TINY = dict(image_size=64, width=8, embedding_dim=32, attention_streams=4, stream_width=8)
AUS = (1, 2, 4, 6, 12)
SHARED_VIDEOS = ("single_face.mp4", "WolfgangLanger_Pexels.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov")
_MEMO = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A tiny random bundle with every head kind (weights do not matter for these tests)."""
    path = tmp_path_factory.mktemp("bundle") / "bundle"
    save_bundle(random_bundle(**TINY, aus=AUS, intensity_aus=(6, 12), expression_head="acnn", va=True), path)
    return path


@pytest.fixture
def shared_tables(shared_videos, mediapipe_model, bundle_dir, tmp_path_factory):
    """`video-fer track <shared videos folder>` once for the module: clip name -> table."""
    if "tables" not in _MEMO:
        out = tmp_path_factory.mktemp("tracks")
        code = cli_main(["track", str(shared_videos), "--model", str(bundle_dir), "-o", str(out),
                         "--landmarker-model", str(mediapipe_model), "--no-progress"])
        assert code == 0
        _MEMO["tables"] = {name: read_table(out / (name.rsplit(".", 1)[0] + ".csv")) for name in SHARED_VIDEOS}
    return _MEMO["tables"]


@pytest.mark.parametrize("name", SHARED_VIDEOS)
def test_every_frame_of_every_shared_video_has_its_rows(shared_tables, shared_videos, name):
    table = shared_tables[name]
    with VideoReader(shared_videos / name) as reader:
        frames, timestamps = len(reader), reader.timestamps
    assert np.array_equal(np.unique(table["frame"]), np.arange(frames))
    assert len(table["frame"]) == frames  # one face at most in these clips: exactly one row per frame
    np.testing.assert_allclose(table["timestamp"], timestamps[table["frame"]], atol=1e-6)
    if name == "no_face.mp4":
        assert frames == 95 and (table["success"] == 0).all() and (table["face_id"] == -1).all()


@pytest.mark.parametrize("name, face_first", [("face_noface.mov", True), ("noface_face.mov", False)])
def test_face_and_no_face_segments_are_found(shared_tables, name, face_first):
    success = shared_tables[name]["success"]
    assert 50 < success.sum() < len(success) - 50
    face, scenery = (success[:60], success[-60:]) if face_first else (success[-60:], success[:60])
    assert face.mean() > 0.95 and scenery.mean() < 0.05  # a stray detection in the scenery is tolerated


def test_columns_and_value_ranges(shared_tables, bundle_dir):
    table = shared_tables["WolfgangLanger_Pexels.mp4"]
    expected = list(BASE_COLUMNS) + ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"] + [
        "AU06_r", "AU12_r"] + [f"AU{au:02d}_c" for au in AUS] + [
        f"expression_{label}" for label in ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
    ] + ["expression", "valence", "arousal"]
    assert list(table) == expected
    face = table["success"] == 1
    assert face.mean() > 0.9 and (table["face_id"][face] >= 0).all()
    values = {name: table[name][face] for name in table}
    assert ((values["confidence"] > 0) & (values["confidence"] <= 1)).all()
    for name in expected[5:]:
        if name != "expression":
            assert np.isfinite(values[name]).all(), name
            assert np.isnan(table[name][~face]).all(), name
    assert (np.abs(np.stack([values["pose_Rx"], values["pose_Ry"], values["pose_Rz"]])) < np.pi / 2).all()
    au_c = np.stack([values[f"AU{au:02d}_c"] for au in AUS])
    assert ((au_c >= 0) & (au_c <= 1)).all() and au_c.std(1).min() > 0  # varies over the clip
    assert ((values["AU12_r"] >= 0) & (values["AU12_r"] <= 5)).all()
    probabilities = np.stack([values[name] for name in expected if name.startswith("expression_")], 1)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-4)
    labels = np.array([name[len("expression_"):] for name in expected if name.startswith("expression_")])
    assert (values["expression"] == labels[probabilities.argmax(1)]).all()
    assert (np.abs(np.stack([values["valence"], values["arousal"]])) <= 1).all()


def test_head_turns_show_in_the_yaw_track(shared_tables):
    """WolfgangLanger turns her head: yaw must span tens of degrees, not sit at a constant."""
    table = shared_tables["WolfgangLanger_Pexels.mp4"]
    yaw = np.degrees(table["pose_Ry"][table["success"] == 1])
    assert np.percentile(yaw, 95) - np.percentile(yaw, 5) > 15


def test_batched_and_unbatched_give_the_same_table(shared_videos, mediapipe_model, bundle_dir):
    clip = shared_videos / "single_face.mp4"
    options = dict(end=20, landmarker_options={"model_path": str(mediapipe_model)})
    one = track(clip, bundle_dir, batch_size=1, pipelined=False, **options)
    many = track(clip, bundle_dir, batch_size=8, pipelined=True, **options)
    assert list(one) == list(many) and len(one["frame"]) == 20
    for name in one:
        if name == "expression":
            assert list(one[name]) == list(many[name])
        else:
            np.testing.assert_allclose(np.asarray(one[name], float), np.asarray(many[name], float), atol=1e-4,
                                       err_msg=name)


def test_every_start_end_select_the_rows(shared_videos, mediapipe_model, bundle_dir):
    clip = shared_videos / "single_face.mp4"
    model = {"model_path": str(mediapipe_model)}
    halved = track(clip, bundle_dir, every=2, landmarker_options=model)
    assert len(halved["frame"]) == 36 and np.array_equal(halved["frame"], np.arange(0, 72, 2))
    window = track(clip, bundle_dir, start=10, end=30, every=3, landmarker_options=model)
    assert np.array_equal(window["frame"], np.arange(10, 30, 3))


def test_corrupt_clip_in_a_batch_is_reported_and_the_others_still_produce_output(
        shared_videos, mediapipe_model, bundle_dir, tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(shared_videos / "single_face.mp4", clips / "a_good.mp4")
    data = (shared_videos / "single_face.mp4").read_bytes()
    (clips / "b_corrupt.mp4").write_bytes(data[: len(data) // 3])  # truncated: the moov/mdat data is cut
    (clips / "c_noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "out"
    code = cli_main(["track", str(clips), "--model", str(bundle_dir), "-o", str(out), "--every", "6",
                     "--landmarker-model", str(mediapipe_model), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 clip(s) tracked, 2 failed" in captured.out
    assert "b_corrupt.mp4" in captured.err and "c_noise.mp4" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a_good.csv", "a_good.meta.json"]
    assert len(read_table(out / "a_good.csv")["frame"]) == 12


def test_plot_and_annotated_video(shared_videos, mediapipe_model, bundle_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "single.csv"
    code = cli_main(["track", str(shared_videos / "single_face.mp4"), "--model", str(bundle_dir), "-o", str(out),
                     "--end", "12", "--plot", "--video-out", "--landmarker-model", str(mediapipe_model),
                     "--no-progress"])
    assert code == 0 and len(read_table(out)["frame"]) == 12
    with Image.open(tmp_path / "single.png") as picture:
        assert picture.size[0] >= 800 and picture.size[1] >= 600  # three panels: AUs, expression, VA
    with VideoReader(tmp_path / "single.annotated.mp4") as annotated:
        assert len(annotated) == 12 and (annotated.width, annotated.height) == (640, 360)
        original = VideoReader(shared_videos / "single_face.mp4").get([5]).float()
        drawn = annotated.get([5]).float()
        assert (drawn - original).abs().amax(-1).gt(60).sum() > 50  # landmarks and labels drawn


def test_parquet_format(shared_videos, mediapipe_model, bundle_dir, tmp_path, capsys):
    arguments = ["track", str(shared_videos / "single_face.mp4"), "--model", str(bundle_dir), "-o", str(tmp_path),
                 "--end", "4", "--format", "parquet", "--landmarker-model", str(mediapipe_model), "--no-progress"]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert cli_main(arguments) == 2
        assert "--format parquet needs pyarrow (pip install pyarrow)" in capsys.readouterr().err
        assert not list(tmp_path.iterdir())
        return
    assert cli_main(arguments) == 0
    table = pq.read_table(tmp_path / "single_face.parquet")
    assert table.num_rows == 4 and table.column_names[:5] == ["frame", "timestamp", "face_id", "confidence", "success"]


def test_rows_are_ordered_by_frame_then_face_and_empty_frames_get_a_failure_row():
    """Several faces: a row per face in face-id order, one success=0 row for the frame without a face."""
    bundle = random_bundle(**TINY, aus=(1, 2), expression_head="linear", va=True)
    batch = FaceBatch(frame_indices=np.array([10, 11, 12]), timestamps=np.array([0.4, 0.44, 0.48]),
                      frames=torch.zeros(3, 8, 8, 3, dtype=torch.uint8), positions=np.array([0, 0, 2]),
                      landmarks=np.zeros((3, 68, 2), np.float32), scores=np.array([0.9, 0.8, 0.7], np.float32),
                      face_ids=np.array([3, 1, 1]))
    batch.columns = {name: np.array([0.1, 0.4, 0.7]) + k for k, name in enumerate(
        ("pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"))}
    predictions = FacePredictions(crop_landmarks=np.zeros((3, 68, 2)),
                                  au_presence=np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]),
                                  expression=np.eye(7)[[0, 3, 6]],
                                  valence_arousal=np.array([[0.1, -0.1], [0.2, -0.2], [0.3, -0.3]]))
    rows = batch_rows(bundle, batch, predictions)
    assert list(rows) == column_names(bundle)
    assert rows["frame"].tolist() == [10, 10, 11, 12]
    assert rows["face_id"].tolist() == [1, 3, -1, 1]
    assert rows["success"].tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(rows["confidence"], [0.8, 0.9, 0.0, 0.7])
    np.testing.assert_allclose(rows["AU02_c"], [0.4, 0.2, np.nan, 0.6])
    np.testing.assert_allclose(rows["pose_Ry"], [4.4, 4.1, np.nan, 4.7])
    assert rows["expression"].tolist() == ["happiness", "surprise", "", "neutral"]
    np.testing.assert_allclose(rows["arousal"], [-0.2, -0.1, np.nan, -0.3])


def test_head_pose_recovers_known_rotations():
    angles = torch.tensor([[0.2, -0.5, 0.1], [-0.3, 0.7, -0.4], [0.0, 0.0, 0.0], [0.1, 0.3, 1.2]])
    projected = project_mean_face(angles, scale=3.0, offset=(100.0, 50.0))
    torch.testing.assert_close(estimate_head_pose(projected), angles, atol=1e-4, rtol=0)
    noisy = projected + torch.randn(projected.shape, generator=torch.Generator().manual_seed(0)) * 1.0
    assert (estimate_head_pose(noisy) - angles).abs().max() < 0.05  # 1 px noise on a ~430 px face


def test_mean_face_is_symmetric_and_human_sized():
    mirrored = MEAN_FACE_68_MM[MIRROR_68] * np.array([-1, 1, 1])
    np.testing.assert_allclose(mirrored, MEAN_FACE_68_MM, atol=1e-3)
    jaw_width = MEAN_FACE_68_MM[16, 0] - MEAN_FACE_68_MM[0, 0]
    assert 110 < jaw_width < 160  # mm: adult bizygomatic-ish width
    assert MEAN_FACE_68_MM[30, 2] < MEAN_FACE_68_MM[0, 2] - 50  # nose tip well in front of the ears


def test_head_pose_on_posed_photos(shared_images, mediapipe_model):
    """Frontal, 15 deg and 45 deg yaw photos (label in the file name) read in that order, near their labels."""
    from PIL import Image

    from video_fer.faces import create_landmarker

    landmarker = create_landmarker("mediapipe", model_path=str(mediapipe_model), mode="image", detector_scores=False)
    yaw = {}
    for name in ("0-f1-su-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg"):
        image = np.asarray(Image.open(shared_images / name).convert("RGB"))
        face = landmarker(image[None], np.array([0]), np.array([0.0]))[0][0]
        yaw[name] = abs(float(np.degrees(estimate_head_pose(face.landmarks[None]).numpy()[0, 1])))
    landmarker.close()
    assert yaw["0-f1-su-ph.jpg"] < 6
    assert 8 < yaw["15-f13-anc-ph.jpg"] < 22
    assert 35 < yaw["45-m7-di-ph.jpg"] < 60


def test_track_settings_are_checked():
    from video_fer.errors import ConfigError

    with pytest.raises(ConfigError, match="end=5 must be larger than start=9"):
        TrackSettings(start=9, end=5)
    with pytest.raises(ConfigError, match="precision='float16'"):
        TrackSettings(precision="float16")
    with pytest.raises(ConfigError, match="landmark_every=0"):
        TrackSettings(landmark_every=0)


def test_bfloat16_network_stays_close_to_float32(shared_videos, mediapipe_model, bundle_dir):
    clip = shared_videos / "single_face.mp4"
    options = dict(end=12, landmarker_options={"model_path": str(mediapipe_model)})
    exact = track(clip, bundle_dir, **options)
    fast = track(clip, bundle_dir, precision="bfloat16", **options)
    assert list(exact) == list(fast) and np.array_equal(exact["success"], fast["success"])
    for name in [c for c in exact if c.startswith(("AU", "expression_")) or c in ("valence", "arousal")]:
        difference = np.abs(np.asarray(exact[name], float) - np.asarray(fast[name], float))
        assert difference.max() < 0.05, name  # bfloat16 keeps 8 bits of mantissa
    assert any(np.abs(np.asarray(exact[c], float) - np.asarray(fast[c], float)).max() > 0 for c in exact
               if c.startswith("AU"))  # really computed in bfloat16


def test_sparse_confidence_equals_the_per_frame_detector_where_it_runs(shared_videos, mediapipe_model, bundle_dir):
    clip = shared_videos / "WolfgangLanger_Pexels.mp4"
    # landmarks on every frame: with keyframes, the per-frame detector would only run on the keyframes
    sparse = track(clip, bundle_dir, end=24, confidence_every=8, landmark_every=1,
                   landmarker_options={"model_path": str(mediapipe_model)})
    every = track(clip, bundle_dir, end=24, landmark_every=1, landmarker_options={"model_path": str(mediapipe_model),
                                                                                  "detector_scores": True})
    assert (sparse["success"] == 1).all() and (every["success"] == 1).all()
    np.testing.assert_allclose(sparse["confidence"][::8], every["confidence"][::8], atol=1e-5)
    # between detections a face keeps its latest score
    assert np.array_equal(sparse["confidence"], np.repeat(sparse["confidence"][::8], 8))
    assert (sparse["confidence"] > 0.5).all()  # a real detection matched, not the presence floor


def test_fast_alignment_matches_the_prepare_crops(shared_videos, mediapipe_model):
    from video_fer.data.prepare import align_in_regions
    from video_fer.faces import create_landmarker
    from video_fer.faces.alignment import AlignmentSpec
    from video_fer.faces.crops import shrink_then_align

    with VideoReader(shared_videos / "WolfgangLanger_Pexels.mp4") as reader:
        indices = np.arange(0, 472, 59)
        frames = reader.get(indices)
    landmarker = create_landmarker("mediapipe", model_path=str(mediapipe_model), mode="image", detector_scores=False)
    landmarks = torch.from_numpy(np.stack([faces[0].landmarks for faces in landmarker(frames, indices, indices * 0.04)]))
    landmarker.close()
    positions = torch.arange(len(indices))
    for size in (128, 256):
        spec = AlignmentSpec(size=size)
        exact, _, exact_landmarks = align_in_regions(frames, landmarks, positions, spec)
        fast, fast_landmarks = shrink_then_align(frames, landmarks, positions, spec)
        difference = (fast * 255 - exact.permute(0, 3, 1, 2).float()).abs()
        assert difference.max() < 1e-3, (size, float(difference.max()))  # one recipe: the same crops
        torch.testing.assert_close(fast_landmarks, exact_landmarks, atol=1e-5, rtol=0)  # same geometry


def _frames_alive(height: int, width: int) -> int:
    """Decoded frames the process holds in torch tensors of shape (..., height, width, 3), views counted once."""
    storages = {}
    for obj in gc.get_objects():
        if (type(obj) is torch.Tensor and obj.dtype == torch.uint8 and obj.dim() >= 3
                and tuple(obj.shape[-3:]) == (height, width, 3)):
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    return sum(storages.values()) // (height * width * 3)


def test_a_slow_network_stage_holds_a_bounded_number_of_frames(shared_videos, mediapipe_model, bundle_dir):
    """However slow the consumer, decoding and landmarking wait instead of piling up frames.

    This counts the frames the pipeline's queues and stages hold as tensors; what a decoder might
    buffer natively is measured by ``tools/bench_track.py --long-repeats``.
    """
    settings = TrackSettings(batch_size=8, end=160, landmarker_options={"model_path": str(mediapipe_model)})
    # the module's documented bound: QUEUE_BATCHES + 6 batches (one waits for its faces' person ids, one is
    # announced to MediaPipe ahead)
    bound = (QUEUE_BATCHES + 6) * (settings.batch_size + settings.landmark_every)
    alive, rows = [], 0
    for batch, _, columns in iter_clip_batches(shared_videos / "WolfgangLanger_Pexels.mp4", load_bundle(bundle_dir),
                                                  settings):
        time.sleep(0.05)  # a slow network: the background stages run ahead as far as they can
        alive.append(_frames_alive(360, 640))
        rows += len(columns["frame"])
    assert rows == 160
    assert settings.batch_size <= max(alive) <= bound, alive


# ----------------------------------------------------------------------------- the no-training default
POSE = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
GAZE = ["gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z", "gaze_angle_x", "gaze_angle_y"]
OPENFACE_R = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
OPENFACE_C = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)
EXPRESSIONS = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
DEFAULT_COLUMNS = (list(BASE_COLUMNS) + POSE + GAZE + [f"AU{au:02d}_r" for au in OPENFACE_R]
                   + [f"AU{au:02d}_c" for au in OPENFACE_C] + [f"expression_{e}" for e in EXPRESSIONS] + ["expression"])


@pytest.fixture
def default_tables(shared_videos, mediapipe_model, tmp_path_factory):
    """`video-fer track <shared videos folder>` without --model, once for the module: clip name -> (table, meta)."""
    import json

    if "default" not in _MEMO:
        out = tmp_path_factory.mktemp("default_tracks")
        code = cli_main(["track", str(shared_videos), "-o", str(out), "--landmarker-model", str(mediapipe_model),
                         "--no-progress"])
        assert code == 0
        _MEMO["default"] = {name: (read_table(out / (name.rsplit(".", 1)[0] + ".csv")),
                                   json.loads(metadata_path(out / (name.rsplit(".", 1)[0] + ".csv")).read_text()))
                            for name in SHARED_VIDEOS}
    return _MEMO["default"]


@pytest.mark.parametrize("name", SHARED_VIDEOS)
def test_the_default_needs_no_model_and_gives_every_frame_its_row(default_tables, shared_tables, shared_videos, name):
    table, _ = default_tables[name]
    assert list(table) == DEFAULT_COLUMNS
    with VideoReader(shared_videos / name) as reader:
        assert np.array_equal(table["frame"], np.arange(len(reader)))
    # the same faces as a learned bundle's run (the landmarker settings differ only in blendshapes)
    assert (table["success"] == shared_tables[name]["success"]).mean() > 0.98


def test_the_defaults_columns_are_in_openfaces_units(default_tables):
    table, meta = default_tables["WolfgangLanger_Pexels.mp4"]
    face = table["success"] == 1
    assert face.mean() > 0.95
    values = {name: table[name][face] for name in DEFAULT_COLUMNS[5:] if name != "expression"}
    for name, column in values.items():
        assert np.isfinite(column).all(), name
        assert np.isnan(table[name][~face]).all(), name
    assert ((values["pose_Tz"] > 200) & (values["pose_Tz"] < 1500)).all()  # mm: a head half a metre to a metre away
    assert (np.abs(np.stack([values[c] for c in POSE[3:]])) < np.pi / 2).all()
    yaw = np.degrees(values["pose_Ry"])
    assert np.percentile(yaw, 95) - np.percentile(yaw, 5) > 15  # she turns her head
    gaze = np.stack([values[f"gaze_0_{axis}"] for axis in "xyz"], 1)
    np.testing.assert_allclose(np.linalg.norm(gaze, axis=1), 1.0, atol=1e-6)
    intensity = np.stack([values[f"AU{au:02d}_r"] for au in OPENFACE_R])
    presence = np.stack([values[f"AU{au:02d}_c"] for au in OPENFACE_C])
    assert ((intensity >= 0) & (intensity <= 5)).all() and intensity.std(1).min() > 0
    assert set(np.unique(presence)) <= {0.0, 1.0}
    np.testing.assert_array_equal(values["AU12_c"], (values["AU12_r"] >= 1).astype(float))
    probabilities = np.stack([values[f"expression_{e}"] for e in EXPRESSIONS], 1)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-4)
    assert (table["expression"][face] == np.array(EXPRESSIONS)[probabilities.argmax(1)]).all()
    assert (table["expression"][~face] == "").all()
    assert meta["model"] == "mediapipe" and meta["frames"] == 472 and meta["width"] == 640
    assert sorted(meta["columns"]) == ["au", "expression", "gaze", "pose"]
    assert all("no training" in source for source in meta["columns"].values())
    assert meta["default_columns"]["expression"]["method"].startswith("prototype-based")
    assert len(meta["default_columns"]["au"]["table"]) == 18
    assert "camera axis" in meta["default_columns"]["pose"]["convention"]


def test_model_mediapipe_is_the_default_and_the_python_api_matches(shared_videos, mediapipe_model, default_tables):
    clip = shared_videos / "single_face.mp4"
    options = dict(landmarker_options={"model_path": str(mediapipe_model)})
    named = track(clip, "mediapipe", **options)
    unnamed = track(clip, **options)
    reference, _ = default_tables["single_face.mp4"]
    assert list(named) == list(unnamed) == DEFAULT_COLUMNS
    for name in DEFAULT_COLUMNS:
        if name == "expression":
            assert list(named[name]) == list(unnamed[name]) == list(reference[name])
        else:
            np.testing.assert_allclose(np.asarray(named[name], float), np.asarray(unnamed[name], float), atol=1e-9)
            np.testing.assert_allclose(np.asarray(named[name], float), reference[name], atol=2e-5, rtol=1e-5)


def test_other_landmarkers_give_pose_from_68_points_and_refuse_the_mediapipe_only_columns(
        shared_videos, mediapipe_model, bundle_dir, tmp_path, capsys):
    """Precomputed landmarks (our npz of MediaPipe's 68 points): pose comes from the 68-point fit, close to the
    mesh fit's; the default's gaze / AUs / expression need MediaPipe and say so."""
    from video_fer.faces import create_landmarker
    from video_fer.faces.precomputed import LandmarkTable, write_landmark_npz

    clip = shared_videos / "single_face.mp4"
    landmarker = create_landmarker("mediapipe", model_path=str(mediapipe_model), detector_scores=False)
    with VideoReader(clip) as reader:
        landmarker.start_clip(str(clip), reader.fps)
        indices = np.arange(len(reader))
        faces = [found[0] for found in landmarker(reader.get(indices), indices, reader.timestamps)]
    landmarker.close()
    write_landmark_npz(tmp_path / "single_face.npz", LandmarkTable(
        indices, np.zeros(len(indices)), np.stack([f.landmarks for f in faces]), np.ones(len(indices))))
    precomputed = dict(landmarker="precomputed", landmarker_options={"landmarks_dir": str(tmp_path)})
    pose_only = track(clip, bundle_dir, **precomputed)  # the test bundle: learned heads + the default's pose
    mesh = track(clip, bundle_dir, landmarker_options={"model_path": str(mediapipe_model)})
    assert (pose_only["success"] == 1).all()
    for name in POSE[3:]:
        assert np.degrees(np.abs(pose_only[name] - mesh[name])).mean() < 4.0, name
    code = cli_main(["track", str(clip), "--landmarker", "precomputed", "--landmarker-option",
                     f"landmarks_dir={tmp_path}", "-o", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert "gaze, au, expression need MediaPipe's" in capsys.readouterr().err


def test_exact_alignment_gives_the_reference_crops_of_a_large_face():
    """--exact-alignment: the full-resolution Gaussian path; the default shrinks first (a face 3x the crop)."""
    from types import SimpleNamespace

    from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, AlignmentSpec
    from video_fer.faces.crops import align_in_regions
    from video_fer.track.stages import align_batch

    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, 480, 480, 3), dtype=torch.uint8, generator=generator)
    landmarks = torch.from_numpy(CANONICAL_LANDMARKS_68 * 384 + 48).float()[None]  # a face 3x the 128 px crop
    batch = SimpleNamespace(frames=frames, landmarks=landmarks.numpy(), positions=np.zeros(1, dtype=np.int64))
    spec = AlignmentSpec(size=128)
    reference, _, reference_landmarks = align_in_regions(frames, landmarks, torch.zeros(1, dtype=torch.int64), spec,
                                                         shrink_first=False)
    exact, exact_landmarks = align_batch(batch, spec, exact_alignment=True)
    fast, fast_landmarks = align_batch(batch, spec)
    assert torch.equal(exact, reference.permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(exact_landmarks, fast_landmarks, atol=1e-4)  # same geometry
    assert (exact - fast).abs().max() > 0  # two different samplings of the same face


def test_bench_track_stage_costs_cover_every_stage(shared_videos, mediapipe_model, bundle_dir):
    """tools/bench_track.py --stages runs against today's stage functions and prices each stage."""
    from scripts import TOOLS, load_script

    bench = load_script(TOOLS / "bench_track.py", "bench_track_under_test")
    costs = bench.stage_costs(shared_videos / "single_face.mp4", mediapipe_model, bundle_dir, landmark_every=2,
                              frames_limit=32)
    assert len(costs) == 11 and all(np.isfinite(ms) and ms >= 0 for ms in costs.values()), costs
    assert costs["landmarks (MediaPipe alone on every frame)"] > 0 and costs["network (bundle)"] > 0, costs
