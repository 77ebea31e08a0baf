"""`prepare`: inputs, shards, frame sampling, region alignment, and real runs on the shared videos (MediaPipe)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from video_fer.data.cache import FaceTrackCache, read_manifests
from video_fer.data.inputs import expand_inputs, parse_shard, select_shard
from video_fer.data.prepare import prepare_one_video, prepare_videos, sample_frame_indices
from video_fer.faces.crops import align_in_regions
from video_fer.errors import CacheError, ConfigError
from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, AlignmentSpec, align_faces, five_points
from video_fer.video import VideoReader

# --------------------------------------------------------------------------------------------
# inputs, keys, identities, shards (no video decoding)
# --------------------------------------------------------------------------------------------


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")
    return path


def test_expand_inputs_folders_lists_identities_and_unique_keys(tmp_path):
    root = tmp_path / "data"
    touch(root / "id10001" / "1zcIwhmdeo4" / "00001.mp4")  # VoxCeleb layout: identity = first level
    touch(root / "alice" / "smile.MOV")  # upper-case suffix counts
    touch(root / "loose.mp4")  # no folder: identity = stem
    touch(root / "clash.mp4")
    touch(root / "clash.mov")
    touch(root / "alice" / "#2 take (final).mp4")  # characters that are not file-name safe everywhere
    touch(root / "notes.txt")  # not a video
    touch(root / ".hidden" / "x.mp4")  # hidden folders are skipped
    single = touch(tmp_path / "elsewhere" / "single.mkv")
    listing = tmp_path / "list.txt"
    listing.write_text("# my videos\nelsewhere/single.mkv\n\n  data/loose.mp4   # again, deduplicated\n")

    videos = expand_inputs([root, listing, single])
    by_key = {video.key: video for video in videos}
    assert sorted(by_key) == ["alice___2_take__final_", "alice__smile", "clash_mov", "clash_mp4", "elsewhere__single", "id10001__1zcIwhmdeo4__00001",
                              "loose"]
    assert by_key["id10001__1zcIwhmdeo4__00001"].identity == "id10001"
    assert by_key["alice__smile"].identity == "alice"
    assert by_key["loose"].identity == "loose"
    assert by_key["elsewhere__single"].identity == "elsewhere"  # relative path as written in the list
    assert [v.relative.as_posix() for v in videos] == sorted(v.relative.as_posix() for v in videos)


def test_expand_inputs_errors_name_the_input(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.mp4: no such file or folder"):
        expand_inputs([tmp_path / "missing.mp4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no video found"):
        expand_inputs([tmp_path / "empty"])


def test_list_entries_that_do_not_exist_are_kept_for_a_skip_entry(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("gone.mp4\n")
    (video,) = expand_inputs([listing])
    assert video.key == "gone" and not video.path.exists()


def test_shards_partition_the_sorted_list(tmp_path):
    for name in "abcdefg":
        touch(tmp_path / f"{name}.mp4")
    videos = expand_inputs([tmp_path])
    shards = [select_shard(videos, (i, 3)) for i in range(3)]
    assert [v.key for v in shards[0]] == ["a", "d", "g"]
    assert sorted(v.key for shard in shards for v in shard) == [v.key for v in videos]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ConfigError, match="expected i/n"):
            parse_shard(bad)


def test_sample_frame_indices_by_timestamp():
    timestamps = np.arange(240) / 24.0  # 10 s at 24 fps
    np.testing.assert_array_equal(sample_frame_indices(timestamps, 24.0, 1.0), np.arange(10) * 24)
    np.testing.assert_array_equal(sample_frame_indices(timestamps, 24.0, None), np.arange(240))
    np.testing.assert_array_equal(sample_frame_indices(timestamps, 24.0, 30.0), np.arange(240))
    # variable frame rate: the first frame at (or half a frame before) each tick
    jittery = np.array([0.0, 0.04, 0.09, 0.52, 0.55, 0.98, 1.51])
    np.testing.assert_array_equal(sample_frame_indices(jittery, 25.0, 2.0), [0, 3, 5, 6])


def test_default_shortest_track_is_half_a_second_of_processed_frames():
    from video_fer.data.prepare import PrepareConfig

    assert [PrepareConfig().min_frames_at(rate) for rate in (30.0, 23.976, 5.0, 1.0)] == [15, 12, 3, 2]
    assert PrepareConfig(min_track_frames=4).min_frames_at(30.0) == 4
    with pytest.raises(ConfigError, match="--min-track-frames 0: must be >= 1"):
        PrepareConfig(min_track_frames=0)


def test_align_in_regions_matches_whole_frame_alignment():
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 120, 200, 3), dtype=torch.uint8, generator=generator)
    base = torch.from_numpy(CANONICAL_LANDMARKS_68.copy())
    faces = []
    for scale, shift, angle in [(70, (60, 20), 0.0), (90, (-30, 10), 0.4), (40, (150, 90), -0.3), (50, (10, 60), 0.1)]:
        rotation = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float32)
        faces.append((base - 0.5) @ rotation.T * scale + 0.5 * scale + torch.tensor(shift, dtype=torch.float32))
    landmarks, frame_of_face = torch.stack(faces), torch.tensor([0, 1, 2, 2])  # off the left edge, over the bottom, two in one frame
    spec = AlignmentSpec(size=64)
    reference = align_faces(frames, landmarks, spec, frame_index=frame_of_face)
    crops, matrices, aligned = align_in_regions(frames, landmarks, frame_of_face, spec, shrink_first=False)
    assert crops.shape == (4, 64, 64, 3) and crops.dtype == torch.uint8
    assert (crops.int() - reference.crops.permute(0, 2, 3, 1).int()).abs().max() <= 1
    torch.testing.assert_close(matrices, reference.matrices, atol=2e-3, rtol=0)
    torch.testing.assert_close(aligned, reference.landmarks, atol=2e-3, rtol=0)


def test_shrink_first_alignment_keeps_the_geometry_and_the_pixels(shared_videos):
    """prepare's crops (shrink first: cost flat in the face's size) against the full-resolution Gaussian path,
    on a real face blown up to ~440 px and ~300 px tall (where the full-resolution path cost ~60 and ~20 ms a face:
    1.8x the 256 px crop shrinks by less than 2, where an integer shrink does nothing)."""
    import torch.nn.functional as F

    with VideoReader(shared_videos / "single_face.mp4") as reader:
        frames = reader.get([0, 40])
    big = F.interpolate(frames.permute(0, 3, 1, 2).float(), scale_factor=2.3, mode="bilinear").round().clamp(0, 255)
    big = big.to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (2, 828, 1472, 3): the face is ~440 px tall
    base = torch.from_numpy(CANONICAL_LANDMARKS_68.copy())
    landmarks = torch.stack([base * 300 + torch.tensor([560.0, 190.0]), base * 200 + torch.tensor([600.0, 260.0])])
    spec = AlignmentSpec(size=256)
    crops, matrices, aligned = align_in_regions(big, landmarks, torch.tensor([0, 1]), spec)
    full_crops, full_matrices, full_aligned = align_in_regions(big, landmarks, torch.tensor([0, 1]), spec,
                                                               shrink_first=False)
    torch.testing.assert_close(matrices, full_matrices, atol=1e-3, rtol=1e-5)  # the same source -> crop map
    torch.testing.assert_close(aligned, full_aligned, atol=1e-3, rtol=0)
    difference = (crops.int() - full_crops.int()).abs().float()
    assert difference.mean() < 0.5 and crops.dtype == torch.uint8  # a fraction of a grey level on average


def test_shrink_first_alignment_samples_the_right_place():
    """On a smooth pattern any low-pass filter leaves alone, the shrink-first crops equal the direct ones for
    faces from 0.5x to 4x the crop: a half-pixel slip of the resized window would show as ~5 grey levels."""
    rows, columns = torch.meshgrid(torch.arange(900.0), torch.arange(1200.0), indexing="ij")
    pattern = 128 + 60 * torch.sin(2 * np.pi * columns / 96) + 60 * torch.cos(2 * np.pi * (rows + 0.3 * columns) / 128)
    frames = pattern.round().to(torch.uint8)[None, :, :, None].expand(1, 900, 1200, 3).contiguous()
    base = torch.from_numpy(CANONICAL_LANDMARKS_68.copy())
    spec = AlignmentSpec(size=64)
    scales = [30.0, 60.0, 100.0, 130.0, 200.0, 260.0]  # face extent in source pixels: 1 / scale from ~0.5 to ~4.4
    landmarks = torch.stack([(base - 0.5) * extent + torch.tensor([600.0 + 3.3 * i, 450.0 - 2.7 * i])
                             for i, extent in enumerate(scales)])
    positions = torch.zeros(len(scales), dtype=torch.long)
    crops, matrices, _ = align_in_regions(frames, landmarks, positions, spec)
    full_crops, full_matrices, _ = align_in_regions(frames, landmarks, positions, spec, shrink_first=False)
    torch.testing.assert_close(matrices, full_matrices, atol=1e-2, rtol=1e-5)
    difference = (crops.int() - full_crops.int()).abs()
    assert difference.max() <= 2, difference.amax((1, 2, 3))


# --------------------------------------------------------------------------------------------
# real runs (MediaPipe on the shared videos); one prepared cache is reused across tests
# --------------------------------------------------------------------------------------------
_PREPARED: dict = {}
CORRUPT_NAME = "text_as_video.mp4"


@pytest.fixture
def prepared(shared_videos, mediapipe_model, tmp_path_factory):
    """Cache of the four short shared videos + one text file named .mp4, listed in a .txt (prepared once)."""
    if "cache" not in _PREPARED:
        folder = tmp_path_factory.mktemp("prepared")
        corrupt = folder / CORRUPT_NAME
        corrupt.write_text("this is not a video\n" * 50)
        listing = folder / "videos.txt"
        names = ["single_face.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov"]
        listing.write_text("# shared test videos\n" + "".join(f"{shared_videos / name}\n" for name in names)
                           + f"{corrupt}\n")
        summary = prepare_videos([listing], folder / "cache", landmarker_options={"model_path": str(mediapipe_model)},
                                 progress=False)
        _PREPARED.update(cache=folder / "cache", summary=summary)
    return _PREPARED


def manifest_of(cache_root, key):
    return json.loads((cache_root / "manifests" / f"{key}.json").read_text())


def test_single_face_gives_one_track_over_the_clip(prepared):
    cache = FaceTrackCache(prepared["cache"])
    tracks = [t for t in cache.tracks if t.video_key == "single_face"]
    assert len(tracks) == 1
    assert tracks[0].num_frames >= 70 and tracks[0].identity == "single_face" and tracks[0].size == 256
    manifest = manifest_of(prepared["cache"], "single_face")
    assert manifest["status"] == "ok" and manifest["num_frames"] == 72 and manifest["min_track_frames"] == 15
    # every processed frame is accounted for
    assert manifest["frames_with_face"] + manifest["frames_without_face"] == manifest["processed_frames"] == 72


def test_no_face_video_is_skipped_with_the_reason(prepared):
    cache = FaceTrackCache(prepared["cache"])
    assert not [t for t in cache.tracks if t.video_key == "no_face"]
    (entry,) = [s for s in cache.skipped if s["video_key"] == "no_face"]
    assert entry["reason"].startswith("no face found in") and entry["source"].endswith("no_face.mp4")
    manifest = manifest_of(prepared["cache"], "no_face")
    assert manifest["frames_with_face"] == 0 and manifest["no_face_ranges"] == [[0, manifest["processed_frames"] - 1]]


def test_corrupt_input_is_skipped_and_the_run_goes_on(prepared):
    cache = FaceTrackCache(prepared["cache"])
    (entry,) = [s for s in cache.skipped if s["source"].endswith(CORRUPT_NAME)]
    assert "not a readable video" in entry["reason"] and CORRUPT_NAME in entry["reason"]
    assert prepared["summary"].processed == 5 and prepared["summary"].ok == 3


def test_face_segment_videos_get_a_track_only_over_the_face(prepared):
    # face_noface = the 72 frames of single_face then scenery; noface_face = scenery (~96 frames) then the face
    cache = FaceTrackCache(prepared["cache"])
    (face_first,) = [t for t in cache.tracks if t.video_key == "face_noface"]
    assert face_first.first_frame <= 1 and 69 <= face_first.last_frame <= 73
    (face_last,) = [t for t in cache.tracks if t.video_key == "noface_face"]
    assert 94 <= face_last.first_frame <= 99 and face_last.last_frame >= 165 and face_last.num_frames >= 68
    manifest = manifest_of(prepared["cache"], "face_noface")
    assert manifest["num_frames"] == 169 and manifest["frames_without_face"] >= 90


def test_reader_crops_are_aligned_to_the_template(prepared, mediapipe_model):
    from video_fer.faces import create_landmarker

    cache = FaceTrackCache(prepared["cache"])
    track = next(t for t in cache.tracks if t.video_key == "single_face")
    positions = [0, 35, 71 if track.num_frames > 71 else track.num_frames - 1]
    crops = cache.read_frames(track.track_id, positions)
    assert crops.shape == (3, 256, 256, 3) and crops.dtype == torch.uint8
    template_eyes = cache.alignment.template_pixels()[:2].numpy()  # (2, 2) eye centres in crop pixels

    stored = five_points(cache.landmarks(track.track_id)[positions])[:, :2]
    assert np.abs(stored - template_eyes).max() < 4.0  # the similarity fit puts the eyes on the template

    # the pixels agree with the stored landmarks: a landmarker run on the decoded crops finds the eyes there
    landmarker = create_landmarker("mediapipe", model_path=str(mediapipe_model), mode="image", detector_scores=False)
    try:
        found = landmarker(crops, np.arange(3), np.zeros(3))
    finally:
        landmarker.close()
    assert all(len(faces) == 1 for faces in found)
    eyes = np.stack([five_points(faces[0].landmarks)[:2] for faces in found])
    assert np.abs(eyes - template_eyes).max() < 8.0
    arrays = cache.track_arrays(track.track_id)
    assert arrays["matrices"].shape == (track.num_frames, 2, 3) and arrays["blendshapes"].shape == (track.num_frames, 52)
    assert str(arrays["landmarker"]) == "mediapipe-zoom"


def test_one_frame_per_second_as_in_the_reference(shared_videos, mediapipe_model, tmp_path):
    summary = prepare_videos([shared_videos / "WolfgangLanger_Pexels.mp4"], tmp_path / "cache", fps=1.0,
                             landmarker_options={"model_path": str(mediapipe_model)}, progress=False)
    assert summary.frames == 20  # 472 frames at 23.976 fps = 19.7 s: ticks 0, 1, ..., 19 s
    cache = FaceTrackCache(tmp_path / "cache")
    (track,) = cache.tracks
    assert track.fps == 1.0 and track.num_frames == 20
    timestamps = cache.track_arrays(track.track_id)["timestamps"]
    np.testing.assert_allclose(np.diff(timestamps), 1.0, atol=0.5 / 23.976)
    assert cache.read_frames(track.track_id, [19]).shape == (1, 256, 256, 3)


def test_second_run_with_other_settings_names_the_setting(prepared, shared_videos, mediapipe_model):
    with pytest.raises(CacheError, match=r"fps=null, this run asks for fps=1\.0"):
        prepare_videos([shared_videos / "single_face.mp4"], prepared["cache"], fps=1.0, progress=False,
                       landmarker_options={"model_path": str(mediapipe_model)})


def test_rerun_skips_done_videos(prepared, mediapipe_model):
    listing = prepared["cache"].parent / "videos.txt"
    summary = prepare_videos([listing], prepared["cache"], landmarker_options={"model_path": str(mediapipe_model)},
                             progress=False)
    assert (summary.videos, summary.already_done, summary.processed) == (5, 5, 0)


# --------------------------------------------------------------------------------------------
# resume, interruption, shards, workers (small: two short videos, subsampled)
# --------------------------------------------------------------------------------------------
def small_run(videos, out, model, **options):
    return prepare_videos(videos, out, landmarker_options={"model_path": str(model)}, fps=10.0, min_track_frames=3,
                          progress=False, **options)


def test_resume_recomputes_only_the_video_without_manifest(shared_videos, mediapipe_model, tmp_path):
    videos = [shared_videos / "single_face.mp4", shared_videos / "no_face.mp4"]
    out = tmp_path / "cache"
    first = small_run(videos, out, mediapipe_model)
    assert (first.processed, first.ok, first.skipped) == (2, 1, 1)
    track_id = FaceTrackCache(out).tracks[0].track_id
    untouched = (out / "manifests" / "no_face.json").stat().st_mtime_ns

    # what a killed run leaves: no manifest for single_face, a half-written temp and an orphan track
    (out / "manifests" / "single_face.json").unlink()
    (out / "tracks" / ".single_face__t0007.partial.mp4").write_bytes(b"half")
    shutil.copy(out / "tracks" / f"{track_id}.mp4", out / "tracks" / "single_face__t0009.mp4")
    assert [t.track_id for t in FaceTrackCache(out).tracks] == []  # not in any manifest: not in the index

    second = small_run(videos, out, mediapipe_model)
    assert (second.already_done, second.processed) == (1, 1)
    assert (out / "manifests" / "no_face.json").stat().st_mtime_ns == untouched
    assert sorted(p.name for p in (out / "tracks").iterdir()) == [f"{track_id}.mp4", f"{track_id}.npz"]
    cache = FaceTrackCache(out)
    assert [t.track_id for t in cache.tracks] == [track_id] and cache.read_frames(track_id, [0]).shape == (1, 256, 256, 3)


class InterruptAfter:
    """Wraps a real landmarker and raises KeyboardInterrupt on its n-th call (a Ctrl-C mid-video)."""

    def __init__(self, landmarker, calls, watched_folder):
        self.landmarker, self.calls, self.name = landmarker, calls, landmarker.name
        self.watched_folder, self.files_at_interrupt = watched_folder, None

    def start_clip(self, source, fps):
        self.landmarker.start_clip(source, fps)

    def __call__(self, frames, frame_indices, timestamps):
        self.calls -= 1
        if self.calls == 0:
            self.files_at_interrupt = sorted(p.name for p in self.watched_folder.iterdir())
            raise KeyboardInterrupt
        return self.landmarker(frames, frame_indices, timestamps)


def test_interrupted_video_leaves_no_track_and_reruns_cleanly(shared_videos, mediapipe_model, tmp_path):
    from video_fer.data.cache import CacheWriter
    from video_fer.data.prepare import PrepareConfig, cache_settings
    from video_fer.faces import create_landmarker

    out = tmp_path / "cache"
    config = PrepareConfig(batch_size=8, min_track_frames=3, pipelined=True)
    writer = CacheWriter(out)
    writer.begin(cache_settings("mediapipe-zoom", config))
    (video,) = expand_inputs([shared_videos / "single_face.mp4"])
    landmarker = create_landmarker("mediapipe-zoom", model_path=str(mediapipe_model))
    interrupting = InterruptAfter(landmarker, calls=4, watched_folder=out / "tracks")
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare_one_video(video, writer, interrupting, config)
    finally:
        landmarker.close()
    assert interrupting.files_at_interrupt == [".single_face__t0000.partial.mp4"]  # 3 batches were being encoded
    assert read_manifests(out) == [] and list((out / "tracks").iterdir()) == []
    assert FaceTrackCache(out).tracks == []

    summary = prepare_videos([video.path], out, landmarker_options={"model_path": str(mediapipe_model)},
                             batch_size=8, min_track_frames=3, progress=False)
    assert summary.ok == 1 and FaceTrackCache(out).tracks[0].num_frames >= 70


def test_two_shards_into_one_cache_cover_the_list(shared_videos, mediapipe_model, tmp_path):
    videos = [shared_videos / "single_face.mp4", shared_videos / "no_face.mp4"]
    out = tmp_path / "cache"
    runs = [small_run(videos, out, mediapipe_model, shard=(i, 2), pipelined=True) for i in range(2)]
    assert [run.videos for run in runs] == [1, 1]
    assert sorted(m["video_key"] for m in read_manifests(out)) == ["no_face", "single_face"]
    cache = FaceTrackCache(out)
    assert [t.video_key for t in cache.tracks] == ["single_face"] and [s["video_key"] for s in cache.skipped] == ["no_face"]


def test_worker_processes_write_the_same_cache(shared_videos, mediapipe_model, tmp_path):
    videos = [shared_videos / "single_face.mp4", shared_videos / "no_face.mp4"]
    summary = small_run(videos, tmp_path / "pool", mediapipe_model, workers=2)
    assert (summary.processed, summary.ok, summary.skipped) == (2, 1, 1)
    in_process = small_run(videos, tmp_path / "single", mediapipe_model)
    pooled, single = FaceTrackCache(tmp_path / "pool"), FaceTrackCache(tmp_path / "single")
    assert [t.as_dict() for t in pooled.tracks] == [t.as_dict() for t in single.tracks]
    assert os.listdir(tmp_path / "pool" / "tracks") and in_process.tracks == 1
