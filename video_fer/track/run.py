"""Clip -> per-frame table of AUs, expression, valence/arousal, head pose and gaze (``video-fer track``).

The model is ``"mediapipe"`` (the default: no training, every column from MediaPipe's mesh and
blendshapes, :mod:`video_fer.track.default_columns`) or a bundle (learned heads, optionally with
the default's column groups; :mod:`video_fer.track.bundle`). Pipeline, streaming with bounded memory:

    thread "decode":     decode a batch (PyAV, sequential and synchronous), one batch ahead
    thread "mediapipe":  MediaPipe's whole-frame landmarker on the next batch's keyframes, while
                         the landmarks thread finishes this one (``KeyframeLandmarks.prefetch``)
    thread "landmarks":  landmarker on every ``landmark_every``-th frame only (MediaPipe VIDEO mode
                         tracks faces from keyframe to keyframe), landmarks of the frames in
                         between interpolated (:mod:`video_fer.faces.keyframes`) -> FaceTracker
                         (stable face ids) -> confidence (MediaPipe's face detector on every 8th
                         frame and on new faces) -> the default's columns (head pose, gaze, AUs,
                         expression) -> align every face (a learned bundle's AlignmentSpec,
                         :mod:`video_fer.faces.crops`)
                              | queue of at most QUEUE_BATCHES batches
    caller's thread:     encoder + heads in one batched pass (BatchNorms folded, channels-last,
                         one torch thread; nothing for the default) -> rows -> writer

The stages overlap on two cores (PyAV, MediaPipe and torch all release the GIL while they compute).
Per frame on this 2-core machine (``tools/bench_track.py --stages``): MediaPipe (``mediapipe-zoom``)
~10 ms on a keyframe (~5.7 ms per frame at ``landmark_every=2``, less at the default 3, interpolation
included), person ids ~1.1 ms, alignment ~1.7 ms, the 128 px reference TAE with its heads ~5 ms,
decoding ~1 ms. At most ``QUEUE_BATCHES + 6`` batches of frames (~270 frames at the default batch
size; one of them waits for its faces' person ids, one is announced to MediaPipe ahead) are alive at
once, whatever the clip's length;
rows are written as they come. The process's resident memory levels off (~1.1 GB on a 472-frame
clip, ~2 GB over an hour with the reference bundle: glibc keeps freed network and landmarker
buffers); ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment kept it under 1 GB on an 8-minute
clip, at the cost of ~40 % longer runs.

Table (:mod:`video_fer.track.table`, ``docs/TRACK_COLUMNS.md``), one row per (processed frame, face),
ordered by frame then ``face_id``: ``frame, timestamp, face_id, confidence, success``, then the
columns the model gives in OpenFace's names and units (``pose_T*`` mm, ``pose_R*`` and gaze angles
in radians, ``AUxx_r`` 0-5, ``AUxx_c``, ``expression_<label>`` probabilities and ``expression``,
``valence``, ``arousal``). A processed frame without a face gets one row with ``success=0``,
``face_id=-1``, ``confidence=0`` and empty (NaN) values. Beside each table, ``<table>.meta.json``
says where each column group comes from, its units and conventions.
"""
from __future__ import annotations

import contextlib
import copy as copying
import importlib.util
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from video_fer.data.inputs import expand_inputs
from video_fer.errors import ConfigError, OutputError, VideoFerError, VideoReadError
from video_fer.faces.detection import SparseDetectorConfidence
from video_fer.io import temp_names
from video_fer.runtime import gil_switch_interval, long_lived_allocations, torch_threads
from video_fer.track.bundle import MEDIAPIPE, ModelBundle, default_columns_of, fuse_batch_norms, load_bundle
from video_fer.track.default_columns import DefaultColumns
from video_fer.track.plot import VideoAnnotator, plot_tracks
from video_fer.track.settings import (MEDIAPIPE_LANDMARKERS, TrackSettings, create_track_landmarker, expected_rows,
                                      uses_sparse_confidence)
from video_fer.track.stages import FaceBatch, FacePredictions, batch_rows, find_faces, predict_faces, run_in_background
from video_fer.track.table import FORMATS, as_table, column_names, concatenate_columns, open_writer, write_metadata
from video_fer.version import __version__
from video_fer.video import StreamEndedError, VideoReader


# the GIL hand-over interval while the stages run (Python's default: 5 ms); 1 ms and 0.2 ms measured alike
GIL_SWITCH_SECONDS = 0.001


class PartialClipError(VideoReadError):
    """The clip's stream ended early: the rows computed up to there are in the table (``result``)."""

    def __init__(self, message: str, result: "ClipResult"):
        super().__init__(message)
        self.result = result


@dataclass
class ClipResult:
    """What :func:`track_clip` did: rows, processed frames, faces, wall seconds."""

    path: Path
    rows: int = 0
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def iter_clip_batches(path: str | os.PathLike, bundle, settings: TrackSettings, landmarker=None
                      ) -> Iterator[tuple[FaceBatch, FacePredictions, dict[str, np.ndarray]]]:
    """Yield ``(batch, predictions, row columns)`` for a clip, streaming (see module doc).

    Raises:
        VideoReadError: the clip cannot be opened or decoded.
    """
    own_landmarker = landmarker is None
    landmarker = landmarker or create_track_landmarker(settings, needs_blendshapes(bundle.default_columns))
    confidence = reader = batches = None
    try:
        defaults = DefaultColumns(bundle.default_columns, landmarker)
        if uses_sparse_confidence(settings):
            confidence = SparseDetectorConfidence(getattr(landmarker, "model_path", None), settings.confidence_every)
        reader = VideoReader(path)
        if settings.start >= len(reader):
            raise ConfigError(f"{path}: start={settings.start} is past the last frame ({len(reader)} frames)")
        threads = settings.torch_threads or 1  # more intra-op threads only contend with the landmarker here
        bundle = inference_bundle(bundle, settings)
        # pipelined: faces are aligned and scored in the landmark thread, this thread only runs the network
        batches = find_faces(reader, landmarker, settings,
                             bundle.alignment if settings.pipelined and bundle.has_network else None, confidence,
                             defaults)
        if settings.pipelined:
            batches = run_in_background(batches)
        with torch_threads(threads), gil_switch_interval(GIL_SWITCH_SECONDS):
            for batch in batches:
                predictions = predict_faces(bundle, batch, settings.channels_last, settings.exact_alignment,
                                            settings.precision)
                yield batch, predictions, batch_rows(bundle, batch, predictions)
    finally:
        if batches is not None:
            batches.close()  # stops the background threads before their reader is closed
        if reader is not None:
            reader.close()
        if confidence is not None:
            confidence.close()
        if own_landmarker:
            landmarker.close()


def _prepared_bundle(model, settings: TrackSettings):
    """A bundle directory or ModelBundle -> :func:`inference_bundle` (the caller's object is never changed)."""
    return inference_bundle(_as_bundle(model), settings, copy=isinstance(model, ModelBundle))


def _as_bundle(model):
    if isinstance(model, ModelBundle):
        return model.eval()
    if isinstance(model, (str, os.PathLike)):
        return load_bundle(model)  # "mediapipe": the no-training default
    raise ConfigError(f"model: expected 'mediapipe', a bundle directory or a ModelBundle, got {type(model).__name__}")


def needs_blendshapes(default_columns) -> bool:
    """The default's AU and expression columns read MediaPipe's blendshapes."""
    return "au" in default_columns or "expression" in default_columns


def inference_bundle(bundle, settings: TrackSettings, copy: bool = True):
    """The bundle as ``track`` runs it: BatchNorms folded into their convs, weights channels-last.

    A bundle is prepared once and marked (``_track_ready``). A caller's bundle is copied first
    (``copy=True``), so ``track(path, my_bundle)`` leaves ``my_bundle`` (and its state_dict) as
    it was; a bundle ``track`` loaded itself is prepared in place.
    """
    if getattr(bundle, "_track_ready", None) == settings.channels_last or not bundle.has_network:
        return bundle
    bundle = (copying.deepcopy(bundle) if copy else bundle).eval()
    fuse_batch_norms(bundle)
    if settings.channels_last:  # 4-D weights in NHWC, like the inputs: the fast CPU convolution path
        bundle.to(memory_format=torch.channels_last)
    bundle._track_ready = settings.channels_last
    return bundle


def track(path: str | os.PathLike, model=MEDIAPIPE, **settings: Any):
    """Per-frame AU / expression / valence-arousal / head-pose / gaze table of one clip.

    Args:
        path: a video file.
        model: ``"mediapipe"`` (the no-training default), a bundle directory (``video-fer bundle``) or a
            loaded :class:`~video_fer.track.bundle.ModelBundle`.
        **settings: :class:`TrackSettings` fields (``every``, ``start``, ``end``, ``batch_size``,
            ``landmarker_options`` ...).

    Returns:
        a pandas DataFrame when pandas is installed, else a dict of numpy columns (see module doc).
    """
    options = TrackSettings(**settings)
    bundle = _prepared_bundle(model, options)
    chunks = [rows for _, _, rows in iter_clip_batches(path, bundle, options)]
    return as_table(concatenate_columns(chunks, column_names(bundle)))


# ------------------------------------------------------------------------------ batch mode
@dataclass
class TrackSummary:
    """Outcome of :func:`track_files`: one output per clip that worked, one message per clip that failed."""

    outputs: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    results: list[ClipResult] = field(default_factory=list)


def check_output(out: str | os.PathLike | None, fmt: str, clips: int) -> None:
    """``-o`` naming a table file must name one of ``fmt`` for exactly one clip (else a folder would take its name)."""
    if out is None:
        return
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix in FORMATS and suffix != fmt:
        raise ConfigError(f"-o {out}: names a .{suffix} table but the format is {fmt}; give --format {suffix} "
                          "or another name")
    if suffix == fmt and clips > 1:
        raise ConfigError(f"-o {out}: names one table but {clips} clips were given; give a folder for their tables")


def output_path(video, out: Path | None, fmt: str, single: bool) -> Path:
    """Where a clip's table goes: ``out`` itself for one clip given a file name, else ``out/<key>.<fmt>``."""
    suffix = "." + fmt
    if out is not None and single and out.suffix.lower() == suffix:
        return out
    return (out or Path("processed")) / f"{video.key}{suffix}"


def table_metadata(path, bundle, settings: TrackSettings, model_name: str, frames: int, fps: float,
                   size: tuple[int, int]) -> dict[str, Any]:
    """The ``<table>.meta.json`` document: the clip, the model, where each column group comes from, units."""
    sources = bundle.column_sources()
    if "pose" in sources and settings.landmarker not in MEDIAPIPE_LANDMARKERS:
        sources["pose"] = f"{settings.landmarker} landmarks (no training): rigid fit of the 3-D mean face to 68 points"
    defaults = DefaultColumns.describe(bundle.default_columns, settings.landmarker)
    heads = {task: {"head": spec.head, "names": list(spec.names), "model": (spec.model or {}).get("architecture")}
             for task, spec in bundle.specs.items()}
    return {"video_fer_version": __version__, "clip": str(path), "frames": frames, "fps": fps, "width": size[0],
            "height": size[1], "model": model_name, "landmarker": settings.landmarker,
            "every": settings.every, "landmark_every": settings.landmark_every, "columns": sources,
            "default_columns": defaults, "learned_heads": heads,
            "missing_values": "empty cells (NaN) on rows with success=0"}


def track_clip(path: Path, bundle, settings: TrackSettings, table_path: Path, fmt: str = "csv",
               plot_path: Path | None = None, video_path: Path | None = None, landmarker=None,
               progress: bool = True, model_name: str | None = None) -> ClipResult:
    """Track one clip into ``table_path`` with its metadata beside it (``<table>.meta.json``), and optionally a
    PNG plot and an annotated mp4.

    Temp files a killed run left beside the outputs are removed first.

    Raises:
        PartialClipError: the stream ended early (truncated or damaged); the table holds the rows
            computed up to there, the message says where it ended.
    """
    from tqdm.auto import tqdm

    with VideoReader(path) as probe:  # frame count for the bar; also fails early on an unreadable clip
        frames, fps, size = len(probe), probe.fps, (probe.width, probe.height)
    total = expected_rows(frames, settings)
    for output in (table_path, plot_path, video_path):
        for stale in temp_names(output) if output is not None else []:
            stale.unlink(missing_ok=True)
    columns = column_names(bundle)
    metadata = table_metadata(path, bundle, settings, model_name or MEDIAPIPE, frames, fps, size)
    writer = open_writer(table_path, columns, fmt, metadata)
    keep_for_plot: list[dict[str, np.ndarray]] = []
    annotator = None
    result = ClipResult(Path(path))
    ok, ended = False, None
    started = time.perf_counter()
    bar = tqdm(total=total, unit="frame", desc=Path(path).name, disable=not progress, leave=False)
    try:
        if video_path is not None:
            annotator = VideoAnnotator(video_path, fps / settings.every, size, bundle)
        try:
            for batch, predictions, rows in iter_clip_batches(path, bundle, settings, landmarker):
                writer.write(rows)
                if plot_path is not None:  # numbers only (a few floats per row), never frames
                    keep_for_plot.append(rows)
                if annotator is not None:
                    annotator.write(batch, predictions, rows)
                result.rows += len(rows["frame"])
                result.frames += len(batch.frame_indices)
                result.faces += len(batch.positions)
                bar.update(len(batch.frame_indices))
        except StreamEndedError as error:  # keep what was computed: the rows up to the end are right
            ended = error
        ok = True
    finally:
        bar.close()
        writer.close(ok)
        if annotator is not None:
            annotator.close(ok)
    write_metadata(table_path, metadata)
    if plot_path is not None:
        plot_tracks(concatenate_columns(keep_for_plot, columns), bundle, plot_path, title=Path(path).name)
    result.seconds = time.perf_counter() - started
    if ended is not None:
        raise PartialClipError(f"{ended}; kept the {result.rows} rows up to frame {ended.last_frame} in {table_path}",
                               result)
    return result


def _start_in_thread(function: Callable, *arguments) -> Callable[[], Any]:
    """Run ``function(*arguments)`` in a thread; the returned callable waits and returns (or raises) its result."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function(*arguments)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="video-fer-startup", daemon=True)
    worker.start()

    def result():
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return result


def track_files(inputs: Sequence[str | os.PathLike], model=MEDIAPIPE, out: str | os.PathLike | None = None,
                fmt: str = "csv", plot: bool = False, video_out: bool = False, settings: TrackSettings | None = None,
                progress: bool = True, report: Callable[[str], None] | None = None) -> TrackSummary:
    """Batch mode: every clip of ``inputs`` (files, folders, ``.txt`` lists) -> one table each.

    A clip that fails (unreadable, corrupt) is recorded in ``summary.failures`` and the others
    go on. Outputs: ``out/<clip key>.<fmt>`` (``out`` may be the file name when there is one clip) and its
    ``.meta.json``, plus ``.png`` / ``.annotated.mp4`` beside it with ``plot`` / ``video_out``. ``model``:
    ``"mediapipe"`` (no training), a bundle directory or a ModelBundle.
    """
    settings = settings or TrackSettings()
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:  # fail before any clip is processed
        raise ConfigError("--format parquet needs pyarrow (pip install pyarrow); or use --format csv")
    videos = expand_inputs(inputs)
    check_output(out, fmt, len(videos))
    blendshapes = needs_blendshapes(default_columns_of(model))  # from bundle.json: the landmarker starts now
    # MediaPipe's import and start-up (~1 s) overlap loading the bundle (torch, weights).
    with long_lived_allocations():
        landmarker_future = _start_in_thread(create_track_landmarker, settings, blendshapes)
        try:
            bundle = _prepared_bundle(model, settings)  # once for all clips
            landmarker = landmarker_future()
            DefaultColumns(bundle.default_columns, landmarker)  # a landmarker that cannot feed them fails now
        except BaseException:
            with contextlib.suppress(Exception):
                landmarker_future().close()
            raise
    model_name = MEDIAPIPE if isinstance(model, str) and model == MEDIAPIPE else (
        str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__)
    out_path = Path(out) if out is not None else None
    summary = TrackSummary()
    try:
        for video in videos:
            table = output_path(video, out_path, fmt, single=len(videos) == 1)
            stem = table.with_suffix("")
            try:
                result = track_clip(video.path, bundle, settings, table, fmt,
                                    plot_path=stem.with_suffix(".png") if plot else None,
                                    video_path=Path(f"{stem}.annotated.mp4") if video_out else None,
                                    landmarker=landmarker, progress=progress, model_name=model_name)
            except PartialClipError as error:
                summary.outputs.append(table)
                summary.results.append(error.result)
                summary.failures.append((video.path, str(error)))
                if report:
                    report(f"{video.path} -> {table}: PARTIAL: {error}")
                continue
            except OutputError:
                raise  # the output folder is at fault, not the clip: every clip would fail the same way
            except VideoFerError as error:
                summary.failures.append((video.path, str(error)))
                if report:
                    report(f"{video.path}: FAILED: {error}")
                continue
            summary.outputs.append(table)
            summary.results.append(result)
            if report:
                report(f"{video.path} -> {table}: {result.rows} rows, {result.frames} frames, {result.faces} faces, "
                       f"{result.fps:.1f} frames/s")
    finally:
        landmarker.close()
    return summary


__all__ = ["ClipResult", "PartialClipError", "TrackSettings", "TrackSummary", "check_output", "iter_clip_batches",
           "track", "track_clip", "track_files"]
