"""Landmarker backends: iBUG-68 table, model files, MediaPipe, FAN wiring, precomputed files."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from video_fer.errors import ConfigError, LabelFileError, ModelFileError
from video_fer.faces import Face, Landmarker, create_landmarker
from video_fer.faces import model_files
from video_fer.faces.ibug68 import MEDIAPIPE_TO_IBUG68, mediapipe_to_ibug68
from video_fer.faces.precomputed import (LandmarkTable, PrecomputedLandmarker, find_landmark_file, read_landmark_file,
                                         write_landmark_csv, write_landmark_npz)
from video_fer.video import VideoReader


def _image(folder: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(folder / name).convert("RGB"))


# ---------------------------------------------------------------- iBUG-68 table
def test_ibug_table_shape_and_group_means():
    assert len(MEDIAPIPE_TO_IBUG68) == 68
    assert all(1 <= len(entry) <= 2 and all(0 <= v < 478 for v in entry) for entry in MEDIAPIPE_TO_IBUG68)
    mesh = np.stack([np.arange(478), -np.arange(478)], axis=1).astype(np.float32)[None]  # (1, 478, 2)
    mapped = mediapipe_to_ibug68(mesh)
    expected = np.array([np.mean(entry) for entry in MEDIAPIPE_TO_IBUG68], dtype=np.float32)
    assert mapped.shape == (1, 68, 2)
    np.testing.assert_allclose(mapped[0, :, 0], expected)
    np.testing.assert_allclose(mapped[0, :, 1], -expected)
    from_torch = mediapipe_to_ibug68(torch.from_numpy(mesh).repeat(3, 1, 1))
    assert from_torch.shape == (3, 68, 2)
    np.testing.assert_allclose(from_torch[2].numpy(), mapped[0])
    with pytest.raises(ValueError, match="478"):
        mediapipe_to_ibug68(np.zeros((68, 2)))


@pytest.fixture(scope="module")
def still_landmarker():
    """MediaPipe in IMAGE mode (shared by the still-image tests; model from ../shared)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "mediapipe" / "face_landmarker.task"
    if not path.exists():
        pytest.skip(f"needs {path} (the shared test assets beside the project); not present here")
    landmarker = create_landmarker("mediapipe", model_path=path, mode="image", num_faces=2, download=False)
    yield landmarker
    landmarker.close()


@pytest.mark.parametrize("name", ["single_face.jpg", "0-f15-hao-ph.jpg", "0-f1-su-ph.jpg"])
def test_ibug68_geometry_on_real_faces(shared_images, still_landmarker, name):
    faces = still_landmarker(_image(shared_images, name)[None], [0], [0.0])[0]
    assert len(faces) == 1
    points = faces[0].landmarks
    x, y = points[:, 0], points[:, 1]
    assert x[36] < x[39] < x[42] < x[45]  # right eye (image left) outer, inner; left eye inner, outer
    assert x[48] < x[51] < x[54] and x[17] < x[21] < x[22] < x[26]
    assert y[8] > y[57] > y[66] > y[62] > y[51] > y[33] > y[30]  # chin below lower lip ... nose tip on top
    assert max(y[36:48]) < y[30] < y[51]  # nose tip between the eyes and the mouth
    assert max(y[17:27]) < min(y[36:48])  # brows above eyes
    # jaw runs ear to ear (its ear ends are near vertical, so 0-1 and 15-16 may tie in x)
    assert np.all(np.diff(x[1:16]) > 0) and x[0] < x[2] and x[16] > x[14]
    # down towards the chin, then up (the chin itself may sit a pixel above its neighbour on a tilted head)
    assert np.all(np.diff(y[0:8]) > 0) and np.all(np.diff(y[9:17]) < 0) and y[8] > max(y[0], y[16], y[57])
    assert abs(y[0] - y[36]) < 0.25 * (y[8] - y[27])  # jaw starts near eye level


def test_face_checks_landmark_shape():
    face = Face(box=[1, 2, 3, 4], score=0.9, landmarks=np.zeros((68, 2)))
    assert face.box.dtype == np.float32 and face.landmarks.dtype == np.float32
    with pytest.raises(ValueError, match=r"Face.landmarks must have shape \(68, 2\), got \(5, 2\)"):
        Face(box=[1, 2, 3, 4], score=0.9, landmarks=np.zeros((5, 2)))


# ---------------------------------------------------------------- model files
@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIDEO_FER_CACHE", str(cache))
    monkeypatch.delenv("VIDEO_FER_MEDIAPIPE_MODEL", raising=False)
    monkeypatch.delenv("VIDEO_FER_FAN_MODEL", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return cache


def _model(content: bytes, url: str = "http://example.invalid/weights.bin") -> model_files.ModelFile:
    return model_files.ModelFile("weights.bin", "VIDEO_FER_TEST_WEIGHTS", url, hashlib.sha256(content).hexdigest())


def test_model_file_order_explicit_env_cache(isolated_cache, tmp_path, monkeypatch):
    model = _model(b"abc")
    explicit = tmp_path / "mine.bin"
    explicit.write_bytes(b"anything")
    assert model_files.resolve_model_file(model, explicit) == explicit
    with pytest.raises(ModelFileError, match=r"nope\.bin: model file weights\.bin given explicitly does not exist"):
        model_files.resolve_model_file(model, tmp_path / "nope.bin")
    monkeypatch.setenv("VIDEO_FER_TEST_WEIGHTS", str(explicit))
    assert model_files.resolve_model_file(model) == explicit
    monkeypatch.setenv("VIDEO_FER_TEST_WEIGHTS", str(tmp_path / "gone.bin"))
    with pytest.raises(ModelFileError, match=r"gone\.bin: \$VIDEO_FER_TEST_WEIGHTS points to a file that does not exist"):
        model_files.resolve_model_file(model)
    monkeypatch.delenv("VIDEO_FER_TEST_WEIGHTS")
    isolated_cache.mkdir()
    (isolated_cache / "weights.bin").write_bytes(b"abc")
    assert model_files.resolve_model_file(model, download=False) == isolated_cache / "weights.bin"


def test_model_file_checksum_mismatch_in_cache(isolated_cache):
    isolated_cache.mkdir()
    (isolated_cache / "weights.bin").write_bytes(b"corrupted")
    with pytest.raises(ModelFileError, match=r"weights\.bin: sha256 [0-9a-f]{64} does not match the expected"):
        model_files.resolve_model_file(_model(b"abc"), download=False)


def test_download_lands_atomically_and_is_verified(isolated_cache):
    calls = []

    def fake_download(url, destination):
        calls.append(url)
        Path(destination).write_bytes(b"abc")

    path = model_files.resolve_model_file(_model(b"abc"), downloader=fake_download)
    assert path == isolated_cache / "weights.bin" and path.read_bytes() == b"abc" and len(calls) == 1
    assert model_files.resolve_model_file(_model(b"abc"), downloader=fake_download) == path and len(calls) == 1


def test_bad_download_leaves_nothing(isolated_cache):
    def wrong_download(url, destination):
        Path(destination).write_bytes(b"html error page")

    with pytest.raises(ModelFileError, match="does not match the expected"):
        model_files.resolve_model_file(_model(b"abc"), downloader=wrong_download)
    assert not isolated_cache.exists() or list(isolated_cache.iterdir()) == []


def test_offline_error_says_where_to_put_the_file(isolated_cache):
    model = _model(b"abc", url="http://127.0.0.1:9/weights.bin")  # discard port: refused at once
    with pytest.raises(ModelFileError) as caught:
        model_files.resolve_model_file(model, downloader=lambda url, dest: model_files.download_file(url, dest, timeout=2))
    message = str(caught.value)
    assert "weights.bin not found and its download from http://127.0.0.1:9/weights.bin failed" in message
    assert str(isolated_cache / "weights.bin") in message and "VIDEO_FER_TEST_WEIGHTS=" in message
    assert "disk" not in message  # a network failure is not blamed on the file
    with pytest.raises(ModelFileError, match=r"weights\.bin not found; put it at .*cache"):
        model_files.resolve_model_file(model, download=False)


def test_mediapipe_model_is_found_through_env_and_checksum(isolated_cache, mediapipe_model, monkeypatch):
    monkeypatch.setenv("VIDEO_FER_MEDIAPIPE_MODEL", str(mediapipe_model))
    assert model_files.resolve_model_file(model_files.MEDIAPIPE_FACE_LANDMARKER) == mediapipe_model
    assert model_files.sha256_of(mediapipe_model) == model_files.MEDIAPIPE_FACE_LANDMARKER.sha256


# ---------------------------------------------------------------- MediaPipe
def test_create_landmarker_rejects_unknown_name():
    with pytest.raises(ConfigError, match="'openpose' is unknown; choose one of mediapipe-zoom, mediapipe, fan, precomputed"):
        create_landmarker("openpose")


def test_mediapipe_single_image_face(shared_images, still_landmarker):
    image = _image(shared_images, "single_face.jpg")
    faces = still_landmarker(image[None], [0], [0.0])[0]
    assert isinstance(still_landmarker, Landmarker)
    assert len(faces) == 1
    face = faces[0]
    assert isinstance(face, Face) and face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    assert face.native_landmarks.shape == (478, 3) and face.blendshapes.shape == (52,)
    assert 0.5 <= face.score <= 1.0
    x0, y0, x1, y1 = face.box
    assert x0 <= face.native_landmarks[:, 0].min() + 1e-3 and x1 >= face.native_landmarks[:, 0].max() - 1e-3
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    assert (x1 - x0) > 0.2 * image.shape[1]  # a close-up portrait


def test_mediapipe_group_photo_needs_tiles(shared_images, mediapipe_model):
    image = _image(shared_images, "multi_face.jpg")[None]
    with create_landmarker("mediapipe", model_path=mediapipe_model, mode="image", num_faces=8, tiles=True) as landmarker:
        faces = landmarker(image, [0], [0.0])[0]
    assert len(faces) >= 4
    centres = np.array([(face.box[:2] + face.box[2:]) / 2 for face in faces])
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(faces)) * 1e9
    assert distances.min() > 50  # distinct people, no duplicates from overlapping tiles
    assert all(face.score > 0.5 for face in faces)


def test_mediapipe_video_mode_on_clips(shared_videos, mediapipe_model):
    with create_landmarker("mediapipe", model_path=mediapipe_model, num_faces=3) as landmarker:
        reader = VideoReader(shared_videos / "single_face.mp4")
        landmarker.start_clip(str(reader.path), reader.fps)
        found = []
        for indices, frames in reader.iter_batches(batch_size=24):
            found += [len(faces) for faces in landmarker(frames, indices, reader.timestamps[indices])]
        assert len(found) == 72 and sum(count == 1 for count in found) >= 70
        # a new clip restarts the ms clock: timestamps from 0 again must not fail
        reader = VideoReader(shared_videos / "no_face.mp4")
        landmarker.start_clip(str(reader.path), reader.fps)
        indices = np.arange(0, len(reader), 4)
        faces = landmarker(reader.get(indices), indices, reader.timestamps[indices])
        assert sum(len(per_frame) for per_frame in faces) == 0


def _mesh_per_frame(faces_per_frame):
    return [[face.native_landmarks for face in faces] for faces in faces_per_frame]


def test_mediapipe_prefetched_calls_return_what_direct_calls_do(shared_videos, mediapipe_model):
    """Work handed ahead to the worker thread comes back unchanged, in order; a call with other frames drops it."""
    reader = VideoReader(shared_videos / "single_face.mp4")
    batches = [np.arange(start, start + 8) for start in range(0, 48, 8)]
    with create_landmarker("mediapipe", model_path=mediapipe_model, num_faces=2) as direct, \
            create_landmarker("mediapipe", model_path=mediapipe_model, num_faces=2) as ahead:
        direct.start_clip(str(reader.path), reader.fps)
        ahead.start_clip(str(reader.path), reader.fps)
        expected = [direct(reader.get(b), b, reader.timestamps[b]) for b in batches]
        ahead.prefetch(reader.get(batches[0]), batches[0], reader.timestamps[batches[0]])
        got = []
        for number, indices in enumerate(batches[:4]):
            if number + 1 < len(batches):  # one call ahead, as track announces its next batch
                coming = batches[number + 1]
                ahead.prefetch(reader.get(coming), coming, reader.timestamps[coming])
            got.append(ahead(reader.get(indices), indices, reader.timestamps[indices]))
        for mine, theirs in zip(got, expected):
            assert [len(f) for f in mine] == [len(f) for f in theirs] == [1] * 8
            for a, b in zip(_mesh_per_frame(mine), _mesh_per_frame(theirs)):
                np.testing.assert_array_equal(np.stack(a), np.stack(b))
        # batch 4 was announced; asking for batch 5 instead drops it and still landmarks batch 5
        assert len(ahead._ahead) == 1
        late = ahead(reader.get(batches[5]), batches[5], reader.timestamps[batches[5]])
        assert not ahead._ahead and [len(f) for f in late] == [1] * 8
        ahead.prefetch(reader.get(batches[0]), batches[0], reader.timestamps[batches[0]] + 10.0)
    assert ahead._worker is None and not ahead._ahead  # closed with work pending: waited for, then shut down


def test_mediapipe_timestamps_strictly_increase(mediapipe_model):
    landmarker = create_landmarker("mediapipe", model_path=mediapipe_model, detector_scores=False)
    stamps = landmarker._timestamps_ms(np.array([0.0, 0.0, 0.0004, 0.010, 0.0101, 0.5]), 6)
    np.testing.assert_array_equal(stamps, [0, 1, 2, 10, 11, 500])
    later = landmarker._timestamps_ms(np.array([0.2]), 1)  # behind the last one: bumped past it
    np.testing.assert_array_equal(later, [501])
    frame = np.zeros((1, 64, 64, 3), np.uint8)
    assert landmarker(frame, [0], [0.0]) == [[]]
    landmarker.close()
    landmarker.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        landmarker(frame, [0], [1.0])


# ---------------------------------------------------------------- FAN wiring
class GreenDotHeatmaps(torch.nn.Module):
    """Stand-in for FAN: every one of the 68 heatmaps peaks on the 4x4 cell holding the greenest pixels."""

    def forward(self, crops):  # (N, 3, 256, 256) in [0, 1]
        greenness = crops[:, 1] - crops[:, 0] - crops[:, 2]
        heatmap = torch.nn.functional.max_pool2d(greenness[:, None], 4)  # (N, 1, 64, 64)
        return [heatmap.repeat(1, 68, 1, 1)]


def test_fan_decoding_matches_face_alignment_integer_output():
    from face_alignment.utils import get_preds_fromhm

    from video_fer.faces.fan_backend import decode_heatmaps

    generator = torch.Generator().manual_seed(0)
    heatmaps = torch.rand(3, 68, 64, 64, generator=generator)
    centres = torch.tensor([[300.3, 200.7], [120.2, 90.9], [400.6, 310.1]])
    sides = torch.tensor([180.3, 95.7, 240.2])
    ours, peaks = decode_heatmaps(heatmaps, centres, sides)
    for face in range(3):
        _, theirs, scores = get_preds_fromhm(heatmaps[face:face + 1].numpy(), centres[face].numpy(), float(sides[face] / 200))
        # face-alignment truncates the continuous point to int; ours is that point - 0.5
        np.testing.assert_array_equal(np.floor(ours[face].numpy() + 0.5), theirs[0])
        np.testing.assert_allclose(peaks[face].numpy(), scores[0])


def test_fan_crop_puts_the_box_centre_in_the_middle():
    from video_fer.faces.fan_backend import crop_faces

    image = torch.zeros(1, 3, 100, 120)
    image[0, 1, 40, 70] = 1.0  # pixel (x=70, y=40): centre at edge coordinate (70.5, 40.5)
    crop = crop_faces(image, torch.tensor([[70.5, 40.5]]), torch.tensor([32.0]), size=32)
    assert crop.shape == (1, 3, 32, 32)
    assert torch.nonzero(crop[0, 1] == crop[0, 1].max()).tolist() == [[15, 15], [15, 16], [16, 15], [16, 16]]


@pytest.mark.parametrize("flip_input", [False, True])
def test_fan_backend_batches_frames_and_maps_points_back(shared_videos, blazeface_files, flip_input):
    from video_fer.faces.fan_backend import FANLandmarker

    detector_path, anchor_path = blazeface_files
    landmarker = create_landmarker(
        "fan", detector="blazeface",
        detector_options={"path_to_detector": str(detector_path), "path_to_anchor": str(anchor_path)},
        landmark_network=GreenDotHeatmaps(), flip_input=flip_input, max_faces_per_forward=2,
    )
    assert isinstance(landmarker, FANLandmarker)
    reader = VideoReader(shared_videos / "single_face.mp4")
    frames = reader.get([0, 30, 60]).clone()
    dots = [(290, 190), (270, 230), (310, 170)]  # (x, y) inside the face, a different place per frame
    for frame, (x, y) in zip(frames, dots):
        frame[y - 1:y + 2, x - 1:x + 2] = torch.tensor([0, 255, 0], dtype=torch.uint8)
    faces = landmarker(frames, [0, 30, 60], reader.timestamps[[0, 30, 60]])
    assert [len(per_frame) for per_frame in faces] == [1, 1, 1]
    for (face,), (x, y) in zip(faces, dots):
        side = 200 * ((face.box[2] - face.box[0]) + (face.box[3] - face.box[1])) / 195
        cell = side / 64  # one heatmap cell in image pixels: the decoding resolution
        # the peak cell holds the dot; the quarter-cell nudge may move away from it: at most 3/4 cell off
        assert np.all(np.abs(face.landmarks - np.array([x, y])) <= 0.75 * cell + 1.0)
        assert face.box[0] < x < face.box[2] and face.box[1] < y < face.box[3]
        assert 0.5 <= face.score <= 1.0
    no_face = VideoReader(shared_videos / "no_face.mp4")
    assert landmarker(no_face.get([0, 40]), [0, 40], no_face.timestamps[[0, 40]]) == [[], []]


def test_fan_missing_weights_error_names_file_and_hub_folder(isolated_cache, tmp_path):
    with pytest.raises(ModelFileError) as caught:
        create_landmarker("fan", detector="blazeface", download=False)
    message = str(caught.value)
    assert "2DFAN4-11f355bf06.pth.tar not found" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "2DFAN4-11f355bf06.pth.tar") in message
    assert "VIDEO_FER_FAN_MODEL=" in message


# ---------------------------------------------------------------- precomputed landmarks
def test_openface_csv_parses(openface_csv):
    table = read_landmark_file(openface_csv)
    assert len(table) == 100  # OpenFace_Test.csv: 100 frames, all success=1
    np.testing.assert_array_equal(table.frame_index, np.arange(100))  # OpenFace's frame 1 is our index 0
    first_row = openface_csv.read_text().splitlines()[1].split(",")
    header = [name.strip() for name in openface_csv.read_text().splitlines()[0].split(",")]
    assert table.landmarks[0, 0, 0] == pytest.approx(float(first_row[header.index("x_0")]))
    assert table.landmarks[0, 67, 1] == pytest.approx(float(first_row[header.index("y_67")]))
    assert table.score[0] == pytest.approx(float(first_row[header.index("confidence")]))


def _openface_text(rows: list[dict]) -> str:
    header = ["frame", "face_id", "timestamp", "confidence", "success"] + [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    lines = [", ".join(header)]
    for row in rows:
        values = [row["frame"], 0, 0.0, row.get("confidence", 0.9), row["success"]]
        values += list(np.arange(68) + row["frame"]) + list(np.arange(68) * 2.0)
        lines.append(", ".join(str(value) for value in values))
    return "\n".join(lines) + "\n"


def test_openface_failed_frames_give_no_face(tmp_path):
    video = tmp_path / "clip.mp4"
    (tmp_path / "clip.csv").write_text(_openface_text([{"frame": 1, "success": 1}, {"frame": 2, "success": 0},
                                                        {"frame": 3, "success": 1}]))
    landmarker = create_landmarker("precomputed")
    landmarker.start_clip(str(video), 30.0)  # found beside the video by its stem
    faces = landmarker(None, [0, 1, 2, 5], None)
    assert [len(per_frame) for per_frame in faces] == [1, 0, 1, 0]
    assert faces[2][0].landmarks[4, 0] == pytest.approx(4 + 3)
    np.testing.assert_allclose(faces[0][0].box, [1, 0, 68, 134])


def test_malformed_csv_names_file_and_line(tmp_path):
    text = _openface_text([{"frame": 1, "success": 1}, {"frame": 2, "success": 1}]).splitlines()
    text[2] = text[2].replace(", 0.9,", ", high,")
    (tmp_path / "bad.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(LabelFileError, match=r"bad\.csv:3: column 'confidence' has 'high', not a number"):
        read_landmark_file(tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("frame, face_id, score, x_0\n0, 0, 1.0, 5\n")
    with pytest.raises(LabelFileError, match=r"short\.csv:1: header lacks columns \['x_1'"):
        read_landmark_file(tmp_path / "short.csv")


def test_our_npz_and_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    table = LandmarkTable(frame_index=np.array([4, 0, 4, 9]), face_id=np.array([1, 0, 0, 0]),
                          landmarks=rng.uniform(0, 500, (4, 68, 2)).astype(np.float32), score=np.array([0.5, 0.9, 0.8, 0.7]))
    write_landmark_npz(tmp_path / "a.npz", table)
    write_landmark_csv(tmp_path / "b.csv", table)
    for path in (tmp_path / "a.npz", tmp_path / "b.csv"):
        loaded = read_landmark_file(path)
        np.testing.assert_array_equal(loaded.frame_index, [0, 4, 4, 9])
        np.testing.assert_array_equal(loaded.face_id, [0, 0, 1, 0])
        np.testing.assert_allclose(loaded.landmarks, table.landmarks, rtol=1e-5)
        np.testing.assert_allclose(loaded.score, table.score, rtol=1e-5)
    landmarker = PrecomputedLandmarker(files={"talk.mp4": tmp_path / "a.npz"}, min_score=0.6)
    landmarker.start_clip(str(tmp_path / "elsewhere" / "talk.mp4"), 25.0)
    faces = landmarker(None, [4, 9, 3], None)
    assert [[round(face.score, 2) for face in per_frame] for per_frame in faces] == [[0.8], [0.7], []]


def test_missing_landmark_file_lists_places(tmp_path):
    with pytest.raises(LabelFileError, match=r"clip\.mp4: no landmark file found \(looked for .*labels/clip\.csv"):
        find_landmark_file(tmp_path / "clip.mp4", folder=tmp_path / "labels")


def test_landmarks_dir_is_searched_before_the_video_folder(tmp_path):
    (tmp_path / "labels").mkdir()
    table = LandmarkTable(np.array([2]), np.array([0]), np.full((1, 68, 2), 7.0, np.float32), np.array([0.9]))
    write_landmark_npz(tmp_path / "labels" / "clip.npz", table)
    (tmp_path / "clip.csv").write_text("not used\n")
    landmarker = create_landmarker("precomputed", landmarks_dir=tmp_path / "labels")
    landmarker.start_clip(str(tmp_path / "clip.mp4"), 25.0)
    assert [len(faces) for faces in landmarker(None, [1, 2], None)] == [0, 1]
