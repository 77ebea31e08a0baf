"""Face-track cache: writer (atomic tracks, manifests, index) and reader (decord, arrays), on synthetic crops."""
import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch

from video_fer.data.cache import (CacheWriter, FaceTrackCache, TrackInfo, partial_path, read_manifests,
                                  rebuild_index)
from video_fer.errors import CacheError
from video_fer.faces.alignment import AlignmentSpec

SIZE = 64


def settings(**changes):
    base = {"alignment": AlignmentSpec(size=SIZE).to_dict(), "landmarker": "synthetic", "size": SIZE,
            "fps": None, "min_track_frames": 1}
    base.update(changes)
    return base


def numbered_frames(count: int, size: int = SIZE) -> np.ndarray:
    """Frames whose flat grey level encodes their position (8 * i + 20), plus a smooth horizontal ramp."""
    ramp = np.linspace(0, 30, size, dtype=np.float32)[None, :, None]
    levels = (8 * np.arange(count, dtype=np.float32) + 20)[:, None, None, None]
    frames = levels + ramp[None] + np.zeros((count, size, size, 3), np.float32)
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_video(writer, key, count=24, tracks=1, start=0):
    rows = []
    for number in range(tracks):
        frame_indices = np.arange(start, start + count) * 2
        landmarks = np.random.default_rng(number).uniform(0, SIZE, (count, 68, 2)).astype(np.float32)
        rows.append(writer.write_track(
            f"{key}__t{number:04d}", numbered_frames(count),
            {"frame_indices": frame_indices, "landmarks_aligned": landmarks, "scores": np.ones(count, np.float32)},
            source=f"videos/{key}.mp4", identity=f"person_{key}", fps=12.5, video_key=key))
    writer.commit_video(key, {"source": f"videos/{key}.mp4", "status": "ok", "tracks": rows})
    return rows


@pytest.fixture
def cache_dir(tmp_path):
    writer = CacheWriter(tmp_path / "cache")
    writer.begin(settings())
    return writer


def test_write_track_round_trip_frames_arrays_and_index(cache_dir):
    rows = write_video(cache_dir, "clip_a", count=24)
    cache_dir.commit_video("clip_b", {"source": "videos/clip_b.mp4", "status": "skipped", "reason": "no face found"})
    cache_dir.rebuild_index()

    cache = FaceTrackCache(cache_dir.root)
    assert [t.track_id for t in cache.tracks] == ["clip_a__t0000"]
    info = cache.tracks[0]
    assert (info.num_frames, info.first_frame, info.last_frame, info.fps, info.size) == (24, 0, 46, 12.5, SIZE)
    assert info["identity"] == "person_clip_a" and info.source == "videos/clip_a.mp4"
    assert cache.skipped == [{"source": "videos/clip_b.mp4", "video_key": "clip_b", "reason": "no face found"}]

    # random access in any order: each decoded frame has the grey level of its position
    positions = [17, 3, 23, 0, 12]
    frames = cache.read_frames("clip_a__t0000", positions)
    assert frames.dtype == torch.uint8 and frames.shape == (5, SIZE, SIZE, 3)
    expected = torch.from_numpy(numbered_frames(24)[positions]).float()
    assert (frames.float() - expected).abs().mean() < 2.0

    arrays = cache.track_arrays("clip_a__t0000")
    np.testing.assert_array_equal(arrays["frame_indices"], np.arange(24) * 2)
    np.testing.assert_allclose(arrays["timestamps"], np.arange(24) * 2 / 12.5)
    assert str(arrays["landmarker"]) == "synthetic"
    assert cache.landmarks("clip_a__t0000").shape == (24, 68, 2)
    assert cache.alignment == AlignmentSpec(size=SIZE)
    assert rows[0]["path"] == "tracks/clip_a__t0000.mp4"

    with open(cache_dir.root / "index.csv", newline="") as handle:
        index_rows = list(csv.DictReader(handle))
    assert len(index_rows) == 1 and index_rows[0]["track_id"] == "clip_a__t0000" and index_rows[0]["num_frames"] == "24"


def test_second_run_with_other_settings_is_an_error_naming_the_setting(cache_dir):
    again = CacheWriter(cache_dir.root)
    assert again.begin(settings())["size"] == SIZE  # same settings: fine
    with pytest.raises(CacheError, match=r"fps=null.*fps=1\.0"):
        CacheWriter(cache_dir.root).begin(settings(fps=1.0))
    with pytest.raises(CacheError, match="landmarker"):
        CacheWriter(cache_dir.root).begin(settings(landmarker="fan"))
    with pytest.raises(CacheError, match="alignment"):
        CacheWriter(cache_dir.root).begin(settings(alignment=AlignmentSpec(size=SIZE, point_weights=(1,) * 5).to_dict()))


def test_video_fer_version_is_recorded_but_does_not_block_resuming(cache_dir):
    path = cache_dir.root / "cache.json"
    stored = json.loads(path.read_text())
    assert stored["video_fer_version"]
    stored["video_fer_version"] = "0.0.1"
    path.write_text(json.dumps(stored))
    CacheWriter(cache_dir.root).begin(settings())


def test_reader_rebuilds_a_stale_index_when_another_shard_adds_a_manifest(cache_dir):
    write_video(cache_dir, "first")
    cache_dir.rebuild_index()
    assert len(FaceTrackCache(cache_dir.root)) == 1
    other_shard = CacheWriter(cache_dir.root)
    write_video(other_shard, "second", tracks=2)  # manifest newer than index.csv
    cache = FaceTrackCache(cache_dir.root)
    assert sorted(t.track_id for t in cache.tracks) == ["first__t0000", "second__t0000", "second__t0001"]
    with open(cache_dir.root / "index.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3  # and it wrote the fresh index back


def test_reader_builds_index_when_missing(cache_dir):
    write_video(cache_dir, "clip")
    assert not (cache_dir.root / "index.csv").exists()
    assert [t.track_id for t in FaceTrackCache(cache_dir.root).tracks] == ["clip__t0000"]
    assert (cache_dir.root / "index.csv").exists() and (cache_dir.root / "skipped.csv").exists()


def test_commit_refuses_a_manifest_whose_track_files_are_missing(cache_dir):
    with pytest.raises(CacheError, match=r"ghost__t0000 has no tracks/ghost__t0000\.mp4"):
        cache_dir.commit_video("ghost", {"source": "ghost.mp4", "tracks": [{"track_id": "ghost__t0000"}]})
    with pytest.raises(CacheError, match="needs a 'reason'"):
        cache_dir.commit_video("ghost", {"source": "ghost.mp4", "status": "skipped"})
    assert read_manifests(cache_dir.root) == []


def test_streamed_track_is_invisible_until_finished_and_abort_leaves_nothing(cache_dir):
    stream = cache_dir.open_track("live__t0000", fps=25.0)
    stream.append(torch.from_numpy(numbered_frames(5)))
    visible = [p.name for p in cache_dir.tracks_dir.iterdir() if not p.name.startswith(".")]
    assert visible == []  # only a hidden temp file (once the muxer has written its header)
    stream.finish({"frame_indices": np.arange(5)}, backend="synthetic")
    assert sorted(p.name for p in cache_dir.tracks_dir.iterdir()) == ["live__t0000.mp4", "live__t0000.npz"]

    dropped = cache_dir.open_track("live__t0001", fps=25.0)
    dropped.append(numbered_frames(2))
    dropped.append(numbered_frames(40))  # enough for the encoder to emit packets into the temp file
    assert partial_path(cache_dir.tracks_dir / "live__t0001.mp4").exists()
    dropped.abort()
    assert sorted(p.name for p in cache_dir.tracks_dir.iterdir()) == ["live__t0000.mp4", "live__t0000.npz"]


def test_finish_checks_array_lengths_against_frames(cache_dir):
    stream = cache_dir.open_track("bad__t0000", fps=25.0)
    stream.append(numbered_frames(4))
    with pytest.raises(CacheError, match=r"'scores' has shape \(3,\); expected 4 rows"):
        stream.finish({"frame_indices": np.arange(4), "scores": np.ones(3)}, backend="x")
    assert list(cache_dir.tracks_dir.iterdir()) == []


def test_remove_partial_outputs_only_touches_that_video(cache_dir):
    write_video(cache_dir, "keep")
    tracks = cache_dir.tracks_dir
    for name in ("redo__t0000.mp4", "redo__t0000.npz", ".redo__t0001.partial.mp4", "redo__tmp_notes.txt",
                 "redone__t0000.mp4"):
        (tracks / name).write_bytes(b"x")
    assert cache_dir.remove_partial_outputs("redo") == 3
    assert sorted(p.name for p in tracks.iterdir()) == [
        "keep__t0000.mp4", "keep__t0000.npz", "redo__tmp_notes.txt", "redone__t0000.mp4"]


def test_wrong_crops_and_names_are_rejected_with_the_reason(cache_dir):
    with pytest.raises(CacheError, match="crops are 32 px but this track/cache is 64 px"):
        cache_dir.write_track("x__t0000", numbered_frames(3, size=32), {"frame_indices": np.arange(3)},
                              source="x.mp4", identity="x", fps=25)
    with pytest.raises(CacheError, match="expected uint8 crops"):
        cache_dir.write_track("x__t0000", numbered_frames(3).astype(np.float32), {"frame_indices": np.arange(3)},
                              source="x.mp4", identity="x", fps=25)
    with pytest.raises(CacheError, match="track id '../evil'"):
        cache_dir.open_track("../evil", fps=25)
    with pytest.raises(CacheError, match="even number"):
        CacheWriter(cache_dir.root / "odd").begin(settings(size=63))


def test_reader_errors_name_the_cache_and_track(cache_dir, tmp_path):
    write_video(cache_dir, "clip", count=6)
    cache = FaceTrackCache(cache_dir.root)
    with pytest.raises(CacheError, match=r"positions \[6\] out of range \[0, 6\)"):
        cache.read_frames("clip__t0000", [0, 6])
    with pytest.raises(CacheError, match="no track 'nope'"):
        cache.read_frames("nope", [0])
    with pytest.raises(CacheError, match="not a face-track cache"):
        FaceTrackCache(tmp_path)
    with pytest.raises(CacheError, match="no such cache folder"):
        FaceTrackCache(tmp_path / "missing")


def test_reader_pickles_without_open_decoders_and_reads_after(cache_dir):
    write_video(cache_dir, "clip", count=10)
    cache = FaceTrackCache(cache_dir.root)
    before = cache.read_frames("clip__t0000", [4])
    clone = pickle.loads(pickle.dumps(cache))  # what a DataLoader worker receives
    assert len(clone._readers) == 0
    assert torch.equal(clone.read_frames("clip__t0000", [4]), before)


def test_rebuild_index_stamps_files_with_the_manifest_listing_time(cache_dir):
    write_video(cache_dir, "clip")
    rebuild_index(cache_dir.root)
    listed = (cache_dir.root / "manifests").stat().st_mtime_ns
    assert os.stat(cache_dir.root / "index.csv").st_mtime_ns == listed
    assert TrackInfo.from_row({**FaceTrackCache(cache_dir.root).tracks[0].as_dict()}).num_frames == 24


class _CropsDataset(torch.utils.data.Dataset):
    def __init__(self, cache, track_id):
        self.cache, self.track_id = cache, track_id

    def __len__(self):
        return 4

    def __getitem__(self, position):
        return self.cache.read_frames(self.track_id, [position])[0]


def test_reader_works_in_forked_dataloader_workers_after_the_parent_opened_decoders(cache_dir):
    write_video(cache_dir, "clip", count=8)
    cache = FaceTrackCache(cache_dir.root)
    in_parent = cache.read_frames("clip__t0000", [0, 1, 2, 3])  # the parent now holds an open decoder
    loader = torch.utils.data.DataLoader(_CropsDataset(cache, "clip__t0000"), batch_size=4, num_workers=1,
                                         multiprocessing_context="fork")
    (in_worker,) = list(loader)
    assert torch.equal(in_worker, in_parent)
