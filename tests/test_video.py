"""VideoReader on the real shared videos and on broken inputs built in the test."""
import itertools
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from video_fer.errors import VideoReadError
from video_fer.video import VIDEO_EXTENSIONS, VideoReader, is_video_file


def _decode_all_with_pyav(path: Path) -> np.ndarray:
    """Independent reference decoder (ffmpeg through PyAV, honours edit lists) -> (N, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _nearest_reference(reference: np.ndarray, frames: torch.Tensor) -> list[int]:
    """Index of the reference frame closest to each decoded frame (identifies content)."""
    reference_small = torch.from_numpy(reference[:, ::8, ::8]).float()
    frames_small = frames[:, ::8, ::8].float()
    distances = (frames_small[:, None] - reference_small[None]).abs().mean(dim=(2, 3, 4))
    return distances.argmin(dim=1).tolist()


def _write_blocky_avi(path: Path) -> np.ndarray:
    """30 distinct blocky 64x64 frames as x264 with B-frames in AVI (no presentation times) -> the frames."""
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(30, 4, 4, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(patterns, 16, axis=1), 16, axis=2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames


@pytest.mark.parametrize(
    "name, num_frames, fps, size",
    [
        ("single_face.mp4", 72, 30.0, (360, 640)),
        ("WolfgangLanger_Pexels.mp4", 472, 23.976, (360, 640)),
        # decord counts 98 here, but the edit list hides 3 leading frames: 95 are displayed (PyAV agrees)
        ("no_face.mp4", 95, 23.67, (540, 960)),
        ("face_noface.mov", 169, 26.40, (540, 960)),
        ("noface_face.mov", 169, 26.49, (540, 960)),
    ],
)
def test_shared_videos_metadata(shared_videos, name, num_frames, fps, size):
    reader = VideoReader(shared_videos / name)
    assert len(reader) == reader.num_frames == num_frames
    assert reader.fps == pytest.approx(fps, abs=0.01)
    assert (reader.height, reader.width) == size
    assert reader.timestamps.shape == (num_frames,) and reader.timestamps.dtype == np.float64
    assert reader.timestamps[0] == 0.0
    assert np.all(np.diff(reader.timestamps) > 0)
    # last start time is about (N - 1) / fps for these near-constant-rate clips
    assert reader.timestamps[-1] == pytest.approx((num_frames - 1) / fps, rel=0.03)


def test_single_face_timestamps_are_frame_times(shared_videos):
    reader = VideoReader(shared_videos / "single_face.mp4")
    np.testing.assert_allclose(reader.timestamps, np.arange(72) / 30.0, atol=1e-5)


def test_no_face_timestamps_start_at_zero_although_decord_reports_negative(shared_videos):
    import decord

    raw = decord.VideoReader(str(shared_videos / "no_face.mp4")).get_frame_timestamp([0])[0, 0]
    assert raw < 0  # the premise: the container starts before 0
    reader = VideoReader(shared_videos / "no_face.mp4")
    np.testing.assert_allclose(reader.timestamps[:4], np.arange(4) / 24.0, atol=1e-5)


@pytest.mark.parametrize("name", ["single_face.mp4", "no_face.mp4"])
def test_random_access_returns_the_requested_frames(shared_videos, name):
    path = shared_videos / name
    reference = _decode_all_with_pyav(path)
    reader = VideoReader(path)
    assert len(reader) == len(reference)
    indices = [40, 3, 3, len(reader) - 1, 0, 17]
    frames = reader.get(indices)
    assert frames.dtype == torch.uint8 and frames.shape == (6, reader.height, reader.width, 3)
    assert _nearest_reference(reference, frames) == indices
    assert torch.equal(reader.get(-1)[0], frames[3])
    assert reader.get([]).shape == (0, reader.height, reader.width, 3)


@pytest.mark.parametrize("name", ["single_face.mp4", "no_face.mp4"])
def test_iter_batches_concatenate_to_get(shared_videos, name):
    reader = VideoReader(shared_videos / name)
    batches = list(reader.iter_batches(batch_size=16, start=5, end=60, step=2))
    assert [len(indices) for indices, _ in batches] == [16, 12]
    indices = np.concatenate([indices for indices, _ in batches])
    np.testing.assert_array_equal(indices, np.arange(5, 60, 2))
    frames = torch.cat([frames for _, frames in batches])
    assert torch.equal(frames, reader.get(indices))


def test_out_of_range_index_names_file_and_range(shared_videos):
    reader = VideoReader(shared_videos / "single_face.mp4")
    with pytest.raises(IndexError, match=r"single_face\.mp4.*\[72\].*\[0, 72\)"):
        reader.get([0, 72])


def test_closed_reader_says_so(shared_videos):
    with VideoReader(shared_videos / "single_face.mp4") as reader:
        assert reader.get([1]).shape == (1, 360, 640, 3)
    with pytest.raises(VideoReadError, match=r"single_face\.mp4: this VideoReader was closed"):
        reader.get([1])


def test_missing_file(tmp_path):
    with pytest.raises(VideoReadError, match=r"clip\.mp4: no such file"):
        VideoReader(tmp_path / "clip.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(VideoReadError, match=r"clip\.mp4: file is empty \(0 bytes\)"):
        VideoReader(tmp_path / "clip.mp4")


def test_directory(tmp_path):
    folder = tmp_path / "clips.mp4"
    folder.mkdir()
    with pytest.raises(VideoReadError, match=r"clips\.mp4: is a directory"):
        VideoReader(folder)


def test_text_file_renamed_mp4(tmp_path):
    (tmp_path / "clip.mp4").write_text("this is a shopping list, not a video\n" * 20)
    with pytest.raises(VideoReadError, match=r"clip\.mp4: not a readable video \(decord: "):
        VideoReader(tmp_path / "clip.mp4")


def test_truncated_file(shared_videos, tmp_path):
    data = (shared_videos / "single_face.mp4").read_bytes()
    (tmp_path / "clip.mp4").write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(VideoReadError, match=r"clip\.mp4: not a readable video"):
        VideoReader(tmp_path / "clip.mp4")


def test_corrupt_tail_is_caught_on_open(shared_videos, tmp_path):
    """Zeroed frame data after an intact index: decord opens it, decoding the end fails."""
    import decord

    data = bytearray((shared_videos / "single_face.mp4").read_bytes())
    index_start = data.find(b"moov")  # this file keeps its index after the frame data
    data[index_start // 2: index_start - 8] = bytes(index_start - 8 - index_start // 2)
    (tmp_path / "clip.mp4").write_bytes(bytes(data))
    assert len(decord.VideoReader(str(tmp_path / "clip.mp4"))) == 72  # decord alone does not notice
    with pytest.raises(VideoReadError, match=r"clip\.mp4: cannot decode frames \[0, 71\]"):
        VideoReader(tmp_path / "clip.mp4")


def test_video_extensions():
    assert ".mp4" in VIDEO_EXTENSIONS and ".mov" in VIDEO_EXTENSIONS
    assert all(suffix == suffix.lower() and suffix.startswith(".") for suffix in VIDEO_EXTENSIONS)
    assert is_video_file("a/B.MOV") and not is_video_file("a/b.csv")


def test_frames_do_not_depend_on_decord_bridge(shared_videos):
    import decord

    reader = VideoReader(shared_videos / "single_face.mp4")
    native = reader.get([3, 9])
    with decord.bridge.use_torch():  # another part of the program may switch decord's bridge
        bridged = reader.get([3, 9])
    assert isinstance(bridged, torch.Tensor) and bridged.dtype == torch.uint8
    assert torch.equal(native, bridged)


def test_h264_in_avi_without_frame_times_reads_the_right_frames(tmp_path):
    """x264 with B-frames in AVI has no presentation times; decord's seeks go wrong there."""
    path = tmp_path / "clip.avi"
    frames = _write_blocky_avi(path)
    reader = VideoReader(path)
    assert len(reader) == 30
    np.testing.assert_allclose(reader.timestamps, np.arange(30) / 25.0)
    wanted = [29, 5, 17, 0, 17]
    assert _nearest_reference(frames, reader.get(wanted)) == wanted


@pytest.mark.parametrize("start", [0, 200, 471])
def test_streaming_from_any_start_gives_the_frames_random_access_gives(shared_videos, start):
    """iter_batches decodes with PyAV after a seek to the keyframe before ``start``; get() uses decord."""
    reader = VideoReader(shared_videos / "WolfgangLanger_Pexels.mp4")  # keyframes every 72 frames
    streamed = list(reader.iter_batches(batch_size=32, start=start, step=3))
    indices = np.concatenate([i for i, _ in streamed])
    np.testing.assert_array_equal(indices, np.arange(start, 472, 3))
    frames = torch.cat([f for _, f in streamed])
    for chunk in np.array_split(np.arange(len(indices)), 4):
        assert torch.equal(frames[chunk], reader.get(indices[chunk]))


def test_streaming_counts_from_the_first_frame_when_frame_times_do_not_match(shared_videos):
    reader = VideoReader(shared_videos / "single_face.mp4")
    expected = reader.get(np.arange(40, 50))
    reader._stream_starts = reader._stream_starts + 1000.0  # a container whose times cannot be looked up
    (indices, frames), = reader.iter_batches(batch_size=16, start=40, end=50)
    np.testing.assert_array_equal(indices, np.arange(40, 50))
    assert torch.equal(frames, expected)


def test_streaming_h264_in_avi_without_frame_times(tmp_path):
    path = tmp_path / "clip.avi"
    frames = _write_blocky_avi(path)
    reader = VideoReader(path)
    indices, streamed = zip(*reader.iter_batches(batch_size=8, start=3, step=2))
    np.testing.assert_array_equal(np.concatenate(indices), np.arange(3, 30, 2))
    assert _nearest_reference(frames, torch.cat(streamed)) == list(range(3, 30, 2))


def test_streaming_a_closed_reader_says_so(shared_videos):
    reader = VideoReader(shared_videos / "single_face.mp4")
    reader.close()
    with pytest.raises(VideoReadError, match="was closed"):
        next(reader.iter_batches(8))


def test_streaming_that_ends_early_names_the_file_and_the_last_frame(shared_videos, monkeypatch):
    reader = VideoReader(shared_videos / "single_face.mp4")
    full_stream = reader._stream
    monkeypatch.setattr(reader, "_stream", lambda start, end: itertools.islice(full_stream(start, end), 10))
    batches = reader.iter_batches(batch_size=4)
    assert [len(indices) for indices, _ in itertools.islice(batches, 3)] == [4, 4, 2]  # what was decoded is given
    with pytest.raises(VideoReadError, match=r"single_face\.mp4: the stream ended after frame 9 .* lists 72 frames"):
        next(batches)
