"""``video-fer prepare``: raw videos -> face-track cache (landmarks, tracking, alignment, H.264 crops).

Per video, in bounded memory: frames are decoded in batches (optionally subsampled to a
target fps by timestamp), the landmarker finds the faces of each batch, the incremental
:class:`~video_fer.faces.identity.PersonTracker` links them into tracks, one per person even
across short absences (a batch waits until its faces' people are decided), all faces of the
batch are aligned by one batched kornia warp (of per-face source windows, not whole
frames: :mod:`video_fer.faces.crops`), and each crop goes straight into its track's open mp4 encoder. A track's temp
files are renamed into place when the track ends; the video's manifest is written after
its last track, so an interrupted run leaves no half track in the index and a rerun skips
every video that has a manifest, except a skipped video whose file changed since (size or
modification time; or every skipped one with ``retry_skipped``).

Inputs (:mod:`video_fer.data.inputs`) are files, folders (searched recursively) or ``.txt``
lists of paths; the sorted list is split into shards by taking every n-th
video, so ``--shard i/n`` on n machines covers it exactly once. ``workers`` processes
share a shard's videos; each owns its landmarker.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from video_fer.data.cache import CacheWriter, TrackVideoWriter, check_readable_size, track_row
from video_fer.data.inputs import VideoInput, expand_inputs, select_shard
from video_fer.errors import ConfigError, LabelFileError, VideoReadError
from video_fer.faces.crops import align_in_regions
from video_fer.runtime import die_with_parent, torch_threads

# Default shortest track: half a second of processed frames, at least 2 (a pair). Shorter ones
# are mostly detector flicker; a fixed frame count would drop most tracks at --fps 1.
DEFAULT_MIN_TRACK_SECONDS = 0.5
DEFAULT_BATCH_SIZE = 32
STAGES = ("decode", "landmarks", "tracking", "align", "encode")


# ---------------------------------------------------------------------------------------------
# Frame sampling
# ---------------------------------------------------------------------------------------------
def sample_frame_indices(timestamps: np.ndarray, source_fps: float, target_fps: float | None) -> np.ndarray:
    """Frames to process: all of them, or the first frame at or after each tick ``k / target_fps``.

    Args:
        timestamps: float64 ``(N,)`` start time of each frame, seconds (frame 0 at 0).
        source_fps: the video's frame rate (half a frame of tolerance around each tick).
        target_fps: wanted rate, or None for every frame (also when it is >= the source rate).

    Returns:
        int64 ``(M,)`` increasing frame indices.
    """
    num_frames = len(timestamps)
    if target_fps is None or target_fps >= source_fps:
        return np.arange(num_frames, dtype=np.int64)
    if target_fps <= 0:
        raise ConfigError(f"--fps {target_fps}: must be > 0")
    ticks = np.arange(0.0, float(timestamps[-1]) + 1e-9, 1.0 / target_fps)
    indices = np.searchsorted(timestamps, ticks - 0.5 / source_fps, side="left")
    return np.unique(np.clip(indices, 0, num_frames - 1)).astype(np.int64)


def _batches(reader, indices: np.ndarray, every_frame: bool, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Decoded batches of the chosen frames (sequential decoding when every frame is used)."""
    if every_frame:
        yield from reader.iter_batches(batch_size=batch_size)
    else:
        for first in range(0, len(indices), batch_size):
            chunk = indices[first:first + batch_size]
            yield chunk, reader.get(chunk)


def _runs(flags: np.ndarray, frame_indices: np.ndarray) -> list[list[int]]:
    """``[[first, last], ...]`` source frame indices of consecutive processed frames where ``flags`` holds."""
    if not flags.any():
        return []
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1) - 1
    return [[int(frame_indices[s]), int(frame_indices[e])] for s, e in zip(starts, ends)]


# ---------------------------------------------------------------------------------------------
# One video
# ---------------------------------------------------------------------------------------------
@dataclass
class PrepareConfig:
    """Settings of one prepare run (the cache-defining ones go to ``cache.json``)."""

    size: int = 256
    fps: float | None = None
    min_track_frames: int | None = None  # None: DEFAULT_MIN_TRACK_SECONDS at the processed rate, >= 2
    batch_size: int = DEFAULT_BATCH_SIZE
    tracker_options: dict[str, Any] = field(default_factory=dict)
    # PersonTracker options (video_fer.faces.identity): tracks of one person across gaps share one cache track
    identity_options: dict[str, Any] = field(default_factory=dict)
    encoder_options: dict[str, Any] = field(default_factory=dict)
    padding_mode: str = "zeros"
    # Align + encode in a background thread, overlapping the landmarker. Off by default: on the
    # busy 2-core test machine it measured 0.90-0.95x the one-thread speed (tools/bench_prepare.py).
    pipelined: bool = False

    def __post_init__(self) -> None:
        if self.min_track_frames is not None and self.min_track_frames < 1:
            raise ConfigError(f"--min-track-frames {self.min_track_frames}: must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be >= 1")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"--fps {self.fps}: must be > 0 (omit it to keep every frame)")
        if self.size < 8 or self.size % 2:
            raise ConfigError(f"--size {self.size}: must be an even number >= 8")
        check_readable_size(self.size)

    def min_frames_at(self, processed_fps: float) -> int:
        """Shortest kept track, in processed frames, for a video processed at ``processed_fps``."""
        if self.min_track_frames is not None:
            return int(self.min_track_frames)
        return max(2, int(np.ceil(DEFAULT_MIN_TRACK_SECONDS * processed_fps - 1e-6)))

    @property
    def alignment(self):
        from video_fer.faces.alignment import AlignmentSpec

        return AlignmentSpec(size=self.size)


class _OpenTrack:
    """A track being written: its mp4 encoder plus the per-frame arrays gathered so far."""

    def __init__(self, writer: TrackVideoWriter):
        self.writer = writer
        self.positions: list[int] = []  # processed-frame position of each crop (for the coverage count)
        self.columns: dict[str, list[np.ndarray]] = defaultdict(list)

    def append(self, position: int, crop: np.ndarray, values: Mapping[str, Any]) -> None:
        self.writer.append(crop[None])
        self.positions.append(position)
        for key, value in values.items():
            self.columns[key].append(value)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {key: np.stack(values) for key, values in self.columns.items() if key != "blendshapes"}
        blendshapes = self.columns.get("blendshapes", [])
        present = [b for b in blendshapes if b is not None]
        if present:  # NaN rows where one frame of the track lacked blendshapes
            width = present[0].shape[-1]
            arrays["blendshapes"] = np.stack(
                [np.full(width, np.nan, np.float32) if b is None else b for b in blendshapes]).astype(np.float32)
        return arrays


class _StageClock:
    """Accumulates wall time per pipeline stage (stages run in two threads, so they may overlap)."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def _faces_to_arrays(per_frame_faces: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray, list]:
    """Flatten faces of a batch: frame position ``(F,)``, landmarks ``(F, 68, 2)``, the Face objects."""
    positions, landmarks, faces = [], [], []
    for position, frame_faces in enumerate(per_frame_faces):
        for face in frame_faces:
            positions.append(position)
            landmarks.append(np.asarray(face.landmarks, dtype=np.float32))
            faces.append(face)
    if not faces:
        return np.zeros(0, np.int64), np.zeros((0, 68, 2), np.float32), []
    return np.asarray(positions, np.int64), np.stack(landmarks), faces


@dataclass
class _Batch:
    """What the align/encode stage needs from one decoded batch (all faces in frame order)."""

    processed_offset: int  # position of the batch's first frame among the processed frames
    frame_indices: np.ndarray  # (T,)
    frames: torch.Tensor  # uint8 (T, H, W, 3)
    positions: np.ndarray  # (F,) frame of each face inside the batch
    landmarks: np.ndarray  # (F, 68, 2)
    faces: list  # F Face objects
    track_ids: list[int]  # F person ids (video_fer.faces.identity), or FaceTracker ids until released
    closed_tracks: list[int]  # people who can no longer continue, closed after this batch


class _TrackWriterStage:
    """Second pipeline stage: aligns the faces of a batch and streams each crop into its track's mp4.

    Runs in the main thread, or with ``pipelined`` in one background thread so alignment and
    H.264 encoding (which release the GIL) overlap the landmarker on the next batch (a single
    worker keeps batches in order). Track files are named ``<video key>__t<tracker id>``; ids
    of dropped short tracks leave gaps in the numbering.
    """

    def __init__(self, video: VideoInput, writer: CacheWriter, config: PrepareConfig, backend: str, track_fps: float,
                 timestamps: np.ndarray, num_processed: int, clock: _StageClock):
        self.video, self.writer, self.config, self.backend = video, writer, config, backend
        self.track_fps, self.timestamps, self.clock = track_fps, timestamps, clock
        self.min_frames = config.min_frames_at(track_fps)
        self.spec = config.alignment
        self.open_tracks: dict[int, _OpenTrack] = {}
        self.rows: list[dict[str, Any]] = []
        self.dropped: list[int] = []
        self.in_track = np.zeros(num_processed, bool)

    def write_batch(self, batch: _Batch) -> None:
        if batch.faces:
            with self.clock("align"):
                crops, matrices, aligned_landmarks = align_in_regions(
                    batch.frames, torch.from_numpy(batch.landmarks), torch.from_numpy(batch.positions), self.spec,
                    self.config.padding_mode)
                crops, matrices, aligned_landmarks = crops.numpy(), matrices.numpy(), aligned_landmarks.numpy()
            with self.clock("encode"):
                for number, (position, face, track_id) in enumerate(zip(batch.positions, batch.faces, batch.track_ids)):
                    frame_index = int(batch.frame_indices[position])
                    self._track(track_id).append(batch.processed_offset + int(position), crops[number], {
                        "frame_indices": frame_index,
                        "timestamps": float(self.timestamps[frame_index]),
                        "landmarks_source": batch.landmarks[number],
                        "landmarks_aligned": aligned_landmarks[number],
                        "matrices": matrices[number],
                        "scores": np.float32(face.score),
                        "boxes": np.asarray(face.box, np.float32),
                        "blendshapes": None if getattr(face, "blendshapes", None) is None
                        else np.asarray(face.blendshapes, np.float32),
                    })
        self.close_tracks(batch.closed_tracks)

    def _track(self, track_id: int) -> _OpenTrack:
        state = self.open_tracks.get(track_id)
        if state is None:
            name = f"{self.video.key}__t{track_id:04d}"
            state = self.open_tracks[track_id] = _OpenTrack(
                self.writer.open_track(name, self.track_fps, **self.config.encoder_options))
        return state

    def close_tracks(self, finished: Iterable[int]) -> None:
        """Put finished tracks (person ids) in place (or drop the short ones) and record their rows."""
        for track_id in finished:
            state = self.open_tracks.pop(track_id, None)
            if state is None:
                continue
            if len(state.positions) < self.min_frames:
                state.writer.abort()
                self.dropped.append(len(state.positions))
                continue
            with self.clock("encode"):
                arrays = state.arrays()
                state.writer.finish(arrays, self.backend)
            self.in_track[state.positions] = True
            self.rows.append(track_row(state.writer.track_id, arrays, video_key=self.video.key, source=str(self.video.path),
                                       identity=self.video.identity, fps=self.track_fps, landmarker=self.backend,
                                       size=self.config.size))

    def abort(self) -> None:
        """Remove every file of this video's tracks: open temp files and finished ones."""
        for state in self.open_tracks.values():
            state.writer.abort()
        self.open_tracks.clear()
        self.writer.remove_partial_outputs(self.video.key)
        self.rows.clear()


def _released(held: list[_Batch], people, final: bool) -> Iterator[_Batch]:
    """The held batches whose faces all have their person decided (all of them when ``final``), oldest first,
    with person ids in place of track ids and the faces of dropped (too short) tracks removed."""
    while held and (final or all(people.decided(track_id) for track_id in held[0].track_ids)):
        batch = held.pop(0)
        person_ids = [people.person_of(track_id) for track_id in batch.track_ids]
        keep = [number for number, person in enumerate(person_ids) if person is not None]
        batch.positions, batch.landmarks = batch.positions[keep], batch.landmarks[keep]
        batch.faces = [batch.faces[number] for number in keep]
        batch.track_ids = [person_ids[number] for number in keep]
        batch.closed_tracks = people.pop_ended_people()
        yield batch


def prepare_one_video(video: VideoInput, writer: CacheWriter, landmarker, config: PrepareConfig,
                      on_frames: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the whole pipeline on one video and commit its manifest; returns the manifest.

    ``on_frames(n)`` is called after each batch of ``n`` processed frames (progress display).

    Unreadable videos (:class:`VideoReadError`), bad precomputed landmark files
    (:class:`LabelFileError`), videos without a face and videos without a long enough
    track get a ``skipped`` manifest with the reason. Other errors propagate after the
    video's temp files are removed (the video has no manifest, so a rerun retries it).
    """
    from video_fer.faces.identity import PersonTracker, confirmation_frames
    from video_fer.video import VideoReader

    started = time.perf_counter()
    clock = _StageClock()
    writer.remove_partial_outputs(video.key)
    settings = writer.settings or {}
    backend = str(getattr(landmarker, "name", settings.get("landmarker", "unknown")))
    manifest: dict[str, Any] = {"source": str(video.path), "relative_path": video.relative.as_posix(),
                                "identity": video.identity, "landmarker": backend, **source_stamp(video.path)}
    stage: _TrackWriterStage | None = None
    background = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="track-writer")
    pending: concurrent.futures.Future | None = None
    try:
        with clock("decode"):
            reader = VideoReader(video.path)
        frame_indices = sample_frame_indices(reader.timestamps, reader.fps, config.fps)
        track_fps = reader.fps if config.fps is None or config.fps >= reader.fps else float(config.fps)
        manifest.update(fps=reader.fps, num_frames=reader.num_frames, width=reader.width, height=reader.height,
                        processed_fps=track_fps, processed_frames=int(len(frame_indices)))
        has_face = np.zeros(len(frame_indices), bool)
        stage = _TrackWriterStage(video, writer, config, backend, track_fps, reader.timestamps, len(frame_indices), clock)
        # person ids across gaps; false faces shorter than a few frames never reach a track (the stage drops
        # people shorter than min_frames when they end)
        people = PersonTracker(track_fps, config.tracker_options, **{
            "min_frames": min(confirmation_frames(track_fps), stage.min_frames), **config.identity_options})
        held: list[_Batch] = []  # batches whose faces' people are not all decided yet
        landmarker.start_clip(str(video.path), reader.fps)

        processed = 0
        batches = _batches(reader, frame_indices, len(frame_indices) == reader.num_frames, config.batch_size)
        while True:
            with clock("decode"):
                batch = next(batches, None)
            if batch is None:
                break
            batch_indices, frames = batch
            with clock("landmarks"):
                per_frame_faces = landmarker(frames, batch_indices, reader.timestamps[batch_indices])
            with clock("tracking"):
                track_ids = [people.update(int(index), faces, frames[row].numpy())
                             for row, (index, faces) in enumerate(zip(batch_indices, per_frame_faces))]
            has_face[processed:processed + len(batch_indices)] = [len(faces) > 0 for faces in per_frame_faces]
            positions, landmarks, faces = _faces_to_arrays(per_frame_faces)
            held.append(_Batch(processed, batch_indices, frames, positions, landmarks, faces,
                               [track_id for ids in track_ids for track_id in ids], []))
            for work in _released(held, people, final=False):
                if config.pipelined:
                    if pending is not None:
                        pending.result()  # at most one batch waits: memory stays bounded, errors surface here
                    pending = background.submit(stage.write_batch, work)
                else:
                    stage.write_batch(work)
            processed += len(batch_indices)
            if on_frames is not None:
                on_frames(len(batch_indices))
        if pending is not None:
            pending.result()
        remaining = people.finish()
        for work in _released(held, people, final=True):
            stage.write_batch(work)
        stage.close_tracks(remaining)
        reader.close()
    except (VideoReadError, LabelFileError) as error:
        background.shutdown(wait=True, cancel_futures=True)
        if stage is not None:
            stage.abort()
        manifest.update(status="skipped", reason=str(error), tracks=[], input_error=True)
        manifest["seconds"] = round(time.perf_counter() - started, 3)
        writer.commit_video(video.key, manifest)
        return manifest
    except BaseException:
        background.shutdown(wait=True, cancel_futures=True)
        if stage is not None:
            stage.abort()
        raise
    background.shutdown(wait=True)

    frames_with_face = int(has_face.sum())
    rows = sorted(stage.rows, key=lambda row: row["track_id"])
    manifest.update(
        frames_with_face=frames_with_face, frames_without_face=int(len(has_face) - frames_with_face),
        frames_in_tracks=int(stage.in_track.sum()), no_face_ranges=_runs(~has_face, frame_indices),
        min_track_frames=stage.min_frames, dropped_short_tracks=len(stage.dropped), tracks=rows,
    )
    if frames_with_face == 0:
        manifest.update(status="skipped", reason=f"no face found in {len(has_face)} processed frames")
    elif not rows:
        manifest.update(status="skipped", reason=(
            f"no face track of at least {stage.min_frames} frames (longest had {max(stage.dropped, default=0)}); "
            "lower --min-track-frames or raise --fps"))
    else:
        manifest.update(status="ok", reason=None)
    manifest["stage_seconds"] = {name: round(seconds, 4) for name, seconds in clock.seconds.items()}
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    writer.commit_video(video.key, manifest)
    return manifest


def source_stamp(path: str | os.PathLike) -> dict[str, int | None]:
    """``source_size`` and ``source_mtime_ns`` of an input video (None when it cannot be read): a skipped
    video whose stamp changed is retried by the next run."""
    try:
        info = os.stat(path)
    except OSError:
        return {"source_size": None, "source_mtime_ns": None}
    return {"source_size": info.st_size, "source_mtime_ns": info.st_mtime_ns}


def needs_retry(manifest: Mapping[str, Any], path: str | os.PathLike, retry_skipped: bool = False) -> bool:
    """True for a skipped video to redo: ``retry_skipped``, or its file changed since (a manifest without a
    stamp, from an older version, counts as changed)."""
    if manifest.get("status") != "skipped":
        return False
    if retry_skipped or "source_size" not in manifest:
        return True
    return {key: manifest.get(key) for key in ("source_size", "source_mtime_ns")} != source_stamp(path)


# ---------------------------------------------------------------------------------------------
# Many videos
# ---------------------------------------------------------------------------------------------
@dataclass
class PrepareSummary:
    """What a prepare run did (its shard only); counts only, so memory stays flat over huge lists."""

    videos: int = 0            # videos in this shard
    already_done: int = 0      # had a manifest before the run
    processed: int = 0         # done by this run
    ok: int = 0
    skipped: int = 0
    unreadable: int = 0        # skipped because the video or its landmark file could not be read
    tracks: int = 0
    frames: int = 0            # processed (decoded and searched) frames
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, manifest: Mapping[str, Any]) -> None:
        self.processed += 1
        self.ok += manifest.get("status") == "ok"
        self.skipped += manifest.get("status") == "skipped"
        self.unreadable += bool(manifest.get("input_error"))
        self.tracks += int(manifest.get("num_tracks", len(manifest.get("tracks", []))))
        self.frames += int(manifest.get("processed_frames", 0))
        for stage, seconds in manifest.get("stage_seconds", {}).items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds


def _create_landmarker(name: str, options: Mapping[str, Any] | None):
    from video_fer.faces import create_landmarker

    try:
        return create_landmarker(name, **dict(options or {}))
    except TypeError as error:  # an option the backend does not take: a user error, not a bug
        raise ConfigError(f"landmarker {name!r}: {error}; check the --landmarker-option names") from None


_WORKER_STATE: dict[str, Any] = {}


def _init_worker(parent_pid: int, out: str, landmarker: str, landmarker_options: dict, config: PrepareConfig,
                 threads: int) -> None:
    """Process-pool initialiser: each worker ends with its parent and owns one landmarker and one writer."""
    die_with_parent(parent_pid)  # a killed prepare must not leave workers holding their memory for ever
    torch.set_num_threads(max(1, threads))
    writer = CacheWriter(out)
    writer.require_settings()
    _WORKER_STATE.update(writer=writer, landmarker=_create_landmarker(landmarker, landmarker_options), config=config)


def _brief(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The counts :class:`PrepareSummary` needs (a manifest can be large; only this crosses processes)."""
    return {"status": manifest.get("status"), "num_tracks": len(manifest.get("tracks", [])),
            "processed_frames": manifest.get("processed_frames", 0), "stage_seconds": manifest.get("stage_seconds", {}),
            "source": manifest.get("source"), "reason": manifest.get("reason"),
            "input_error": bool(manifest.get("input_error"))}


def _worker_prepare(video: VideoInput) -> dict[str, Any]:
    return _brief(prepare_one_video(video, _WORKER_STATE["writer"], _WORKER_STATE["landmarker"], _WORKER_STATE["config"]))


def cache_settings(landmarker: str, config: PrepareConfig) -> dict[str, Any]:
    """The ``cache.json`` settings a run with ``config`` must match."""
    return {"alignment": config.alignment.to_dict(), "landmarker": landmarker, "size": config.size,
            "fps": config.fps, "min_track_frames": config.min_track_frames}


def prepare_videos(inputs: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike,
                   landmarker: str = "mediapipe-zoom", landmarker_options: Mapping[str, Any] | None = None,
                   size: int = 256, fps: float | None = None, min_track_frames: int | None = None,
                   workers: int = 1, shard: tuple[int, int] = (0, 1), batch_size: int = DEFAULT_BATCH_SIZE,
                   progress: bool = True, tracker_options: Mapping[str, Any] | None = None,
                   identity_options: Mapping[str, Any] | None = None,
                   encoder_options: Mapping[str, Any] | None = None, pipelined: bool = False,
                   torch_threads_per_worker: int = 1, retry_skipped: bool = False,
                   report: Callable[[str], None] | None = None) -> PrepareSummary:
    """Build (or resume) a face-track cache from videos.

    Args:
        inputs: video files, folders (recursive) or ``.txt`` lists (one path per line, ``#`` comments).
        out: cache directory.
        landmarker: ``"mediapipe-zoom"`` (MediaPipe plus a search for the small and turned faces it misses),
            ``"mediapipe"`` (MediaPipe alone), ``"fan"`` or ``"precomputed"``; ``landmarker_options`` go to
            :func:`video_fer.faces.create_landmarker` (e.g. ``model_path``, ``landmarks_dir``).
        size: crop side S.
        fps: process this many frames per second (chosen by timestamp), None = every frame.
        min_track_frames: shorter tracks (in processed frames) are dropped; None: half a second at the
            processed rate, at least 2 (e.g. 15 at 30 fps, 2 at ``fps=1``).
        workers: processes over videos (each with its own landmarker).
        shard: ``(i, n)``: this run does every n-th video of the sorted list, starting at i.
        batch_size: frames decoded and searched at once (bounds memory).
        progress: show a tqdm bar (videos, frames/s).
        tracker_options: :class:`~video_fer.faces.tracking.FaceTracker` arguments.
        identity_options: :class:`~video_fer.faces.identity.PersonTracker` arguments: a person who is gone
            for a while (up to 2 s, or longer when the face comes back where it left and looks the same)
            stays one cache track; ``{"link": False, "min_frames": 1}`` gives one cache track per FaceTracker track.
        encoder_options: :class:`~video_fer.data.cache.TrackVideoWriter` x264 arguments (crf, gop, preset, threads).
        pipelined: align and encode in a background thread while the landmarker reads the next batch
            (for machines with idle cores; see :class:`PrepareConfig`).
        torch_threads_per_worker: torch intra-op threads of each worker (alignment). 1 by default: the
            per-batch warps are small, and OpenMP threads spinning against the landmarker's own
            thread pool made alignment 3-6x slower on a busy 2-core machine; scale with ``workers``.
        retry_skipped: redo every skipped video (else only those whose file changed since).
        report: called with one line per video skipped by this run (its path and the reason).

    Returns:
        :class:`PrepareSummary` of this shard.

    Raises:
        ConfigError: bad inputs or options; CacheError: the cache was made with other settings.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    config = PrepareConfig(size=int(size), fps=None if fps is None else float(fps), min_track_frames=None if min_track_frames is None else int(min_track_frames),
                           batch_size=int(batch_size), tracker_options=dict(tracker_options or {}),
                           identity_options=dict(identity_options or {}),
                           encoder_options=dict(encoder_options or {}), pipelined=bool(pipelined))
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be >= 1")
    videos = select_shard(expand_inputs(inputs), shard)
    writer = CacheWriter(out)
    writer.begin(cache_settings(landmarker, config))
    if shard[1] == 1:  # no other shard can be writing: every temp file is a leftover
        writer.remove_all_partial_files()
    summary = PrepareSummary(videos=len(videos))
    todo = [video for video in videos if _to_do(writer, video, retry_skipped)]
    summary.already_done = len(videos) - len(todo)
    started = time.perf_counter()
    bar = _ProgressBar(len(todo), summary, started) if progress else None
    try:
        for manifest in _run(todo, writer, out, landmarker, landmarker_options, config, workers, torch_threads_per_worker,
                             on_frames=bar.frames if bar else None):
            summary.add(manifest)
            if bar is not None:
                bar.video_done()
            if report is not None and manifest.get("status") == "skipped":
                report(f"{manifest.get('source')}: skipped: {manifest.get('reason')}")
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - started
        writer.rebuild_index()
    return summary


def _to_do(writer: CacheWriter, video: VideoInput, retry_skipped: bool) -> bool:
    """No manifest yet, or a skipped one to retry (:func:`needs_retry`)."""
    if not writer.has_manifest(video.key):
        return True
    try:
        manifest = json.loads(writer.manifest_path(video.key).read_text())
    except (OSError, json.JSONDecodeError):
        return False  # a damaged manifest is reported by the index rebuild, naming the file
    return needs_retry(manifest, video.path, retry_skipped)


class _ProgressBar:
    """tqdm bar over videos; frames/s counts the video in progress too (in-process runs)."""

    def __init__(self, total: int, summary: PrepareSummary, started: float):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="video", desc="prepare", dynamic_ncols=True)
        self.summary, self.started, self.frames_in_video, self.shown_at = summary, started, 0, 0.0

    def frames(self, count: int) -> None:
        self.frames_in_video += count
        if time.perf_counter() - self.shown_at > 0.5:  # refreshing costs: twice a second is enough
            self._show()

    def video_done(self) -> None:
        self.frames_in_video = 0
        self._show()
        self.bar.update(1)

    def _show(self) -> None:
        self.shown_at = time.perf_counter()
        rate = (self.summary.frames + self.frames_in_video) / max(self.shown_at - self.started, 1e-9)
        self.bar.set_postfix_str(f"{rate:.1f} frames/s, {self.summary.tracks} tracks, {self.summary.skipped} skipped")

    def close(self) -> None:
        self.bar.close()


def _run(videos: list[VideoInput], writer: CacheWriter, out, landmarker: str, landmarker_options, config: PrepareConfig,
         workers: int, threads: int, on_frames: Callable[[int], None] | None = None) -> Iterable[dict[str, Any]]:
    """Brief counts (:func:`_brief`) of each video as it finishes (in process, or over a pool of ``workers`` processes)."""
    if not videos:
        return
    if workers == 1:
        detector = _create_landmarker(landmarker, landmarker_options)
        try:
            for video in videos:
                with torch_threads(threads):  # restored between videos: the caller's setting is theirs
                    manifest = prepare_one_video(video, writer, detector, config, on_frames)
                yield _brief(manifest)
        finally:
            with contextlib.suppress(Exception):
                detector.close()
        return
    _create_landmarker(landmarker, landmarker_options).close()  # bad model/options: one clear error, not a broken pool
    context = multiprocessing.get_context("spawn")  # fork + MediaPipe/torch threads can deadlock
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker,
            initargs=(os.getpid(), str(out), landmarker, dict(landmarker_options or {}), config, threads)) as pool:
        queue = iter(videos)
        # A few videos in flight per worker, not the whole list: bounded memory for huge lists.
        running = {pool.submit(_worker_prepare, video) for video in itertools.islice(queue, 2 * workers)}
        try:
            while running:
                done, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    running |= {pool.submit(_worker_prepare, video) for video in itertools.islice(queue, 1)}
        except BaseException:
            for future in running:
                future.cancel()
            raise
