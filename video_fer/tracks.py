"""Clip -> per-frame table of AUs, expression, valence/arousal and head pose (``video-fer track``).

Pipeline, streaming with bounded memory:

    thread "decode":     decode a batch (PyAV, sequential and synchronous), one batch ahead
    thread "landmarks":  landmarker on every ``landmark_every``-th frame only (MediaPipe VIDEO mode
                         tracks faces from keyframe to keyframe), landmarks of the frames in
                         between interpolated (:mod:`video_fer.faces.keyframes`) -> FaceTracker
                         (stable face ids) -> confidence (MediaPipe's face detector on every 8th
                         frame and on new faces) -> align every face (the bundle's AlignmentSpec,
                         :mod:`video_fer.track_align`)
                              | queue of at most QUEUE_BATCHES batches
    caller's thread:     encoder + heads in one batched pass (BatchNorms folded, channels-last,
                         one torch thread) -> head pose -> rows -> writer

The stages overlap on two cores (PyAV, MediaPipe and torch all release the GIL while they
compute). Per frame on this 2-core machine (``tools/bench_track.py --stages``): MediaPipe
~8.5 ms on a keyframe (~2.8 ms per frame at the default ``landmark_every=3``), alignment
~1.3 ms, the 128 px reference TAE with its heads ~5 ms, decoding ~1 ms. At most
``QUEUE_BATCHES + 4`` batches of frames (~200 frames at the default batch size) are alive at
once, whatever the clip's length; rows are written as they come. The process's resident memory
levels off (~1.1 GB on a 472-frame clip, ~2 GB over an hour with the reference bundle: glibc
keeps freed network and landmarker buffers); ``MALLOC_MMAP_THRESHOLD_=131072`` in the
environment kept it under 1 GB on an 8-minute clip, at the cost of ~40 % longer runs.

Table, one row per (processed frame, face), ordered by frame then ``face_id``:
``frame, timestamp, face_id, confidence, success, pose_Rx, pose_Ry, pose_Rz`` (radians,
:mod:`video_fer.head_pose`), ``AUxx_c`` (presence probability), ``AUxx_r`` (intensity 0..5),
``expression_<label>`` probabilities and ``expression`` (the argmax label), ``valence``,
``arousal`` — the columns of the heads the bundle has. A processed frame without a face gets
one row with ``success=0``, ``face_id=-1``, ``confidence=0`` and empty (NaN) values.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from video_fer.errors import ConfigError, VideoFerError
from video_fer.faces.keyframes import DEFAULT_LANDMARK_EVERY, KeyframeLandmarks, image_mode_twin
from video_fer.startup import long_lived_allocations
from video_fer.track_align import shrink_then_align

DEFAULT_BATCH_SIZE = 32
QUEUE_BATCHES = 2  # decoded batches waiting for the network: enough to smooth the two stages' jitter
BASE_COLUMNS = ("frame", "timestamp", "face_id", "confidence", "success", "pose_Rx", "pose_Ry", "pose_Rz")
INTEGER_COLUMNS = ("frame", "face_id", "success")
FORMATS = ("csv", "parquet")
PRECISIONS = ("float32", "bfloat16")


@dataclass
class TrackSettings:
    """What to process and how.

    Attributes:
        every: process every N-th frame (1 = all).
        start, end: frame range ``[start, end)`` (None = to the end).
        batch_size: frames decoded and faces encoded per step.
        landmarker: ``"mediapipe"`` (default), ``"fan"`` or ``"precomputed"``.
        landmarker_options: options of :func:`video_fer.faces.create_landmarker` (e.g.
            ``model_path``, ``num_faces``, ``detector_scores``).
        tracker_options: :class:`~video_fer.faces.tracking.FaceTracker` options.
        pipelined: landmarks in a background thread while the network runs (two cores).
        torch_threads: intra-op threads of the network (default 1: the landmarker keeps the other core
            busy, and tiny batched convolutions gain little from more threads on a loaded machine).
        channels_last: run the encoder in channels-last memory format (faster convolutions on CPU).
        confidence_every: MediaPipe only: run the face detector for the ``confidence`` column on
            every N-th processed frame (and where a new face appears), see
            :class:`SparseDetectorConfidence`; 0 = the landmarker's own per-frame scores (pass
            ``landmarker_options={"detector_scores": True}`` for MediaPipe's detector on every frame).
        exact_alignment: crop exactly as ``video-fer prepare`` does (Gaussian anti-aliasing at full
            resolution); default: :func:`shrink_then_align`, same geometry, ~8x cheaper at 128 px.
        precision: ``"float32"`` (default) or ``"bfloat16"``: the network under CPU bfloat16 autocast,
            ~2x faster on CPUs with native bfloat16 (AVX512-BF16, AMX), outputs within ~2e-3.
        landmark_every: run the landmarker on every N-th processed frame only and interpolate the
            landmarks of the frames in between (:mod:`video_fer.faces.keyframes`; frames between
            keyframes that disagree on the faces are landmarked one by one); 1 = every frame.
    """

    every: int = 1
    start: int = 0
    end: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    landmarker: str = "mediapipe"
    landmarker_options: dict[str, Any] = field(default_factory=dict)
    tracker_options: dict[str, Any] = field(default_factory=dict)
    pipelined: bool = True
    torch_threads: int | None = None
    channels_last: bool = True
    exact_alignment: bool = False
    confidence_every: int = 8
    landmark_every: int = DEFAULT_LANDMARK_EVERY
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"track: precision={self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.every < 1 or self.batch_size < 1 or self.start < 0 or self.confidence_every < 0 \
                or self.landmark_every < 1:
            raise ConfigError(f"track: need every >= 1, batch_size >= 1, start >= 0, confidence_every >= 0, "
                              f"landmark_every >= 1; got every={self.every}, batch_size={self.batch_size}, "
                              f"start={self.start}, confidence_every={self.confidence_every}, "
                              f"landmark_every={self.landmark_every}")
        if self.end is not None and self.end <= self.start:
            raise ConfigError(f"track: end={self.end} must be larger than start={self.start}")


def default_landmarker_options(name: str) -> dict[str, Any]:
    """Track's defaults: MediaPipe without blendshapes (unused here) and without its per-frame
    detector pass (confidence comes from :class:`SparseDetectorConfidence`), up to 4 faces."""
    if name != "mediapipe":
        return {}
    return {"mode": "video", "blendshapes": False, "num_faces": 4, "detector_scores": False}


class SparseDetectorConfidence:
    """Per-face confidence from MediaPipe's own face detector, run on a few frames only.

    MediaPipe's landmarker tracks faces between frames and does not expose a presence score;
    its bundle's face detector gives one but costs ~30 % of the landmark stage per frame. So the
    detector runs on every ``every``-th processed frame and on any frame where a new face id
    appears; each face keeps the score of its track's latest detection. As in the MediaPipe
    backend, a face takes the detector's score when a detection overlaps its landmark box
    (IoU > 0.3), floored at ``default`` (the presence threshold every returned face passed), and
    ``default`` when no detection matches.
    """

    def __init__(self, model_path=None, every: int = 8, default: float = 0.5, match_iou: float = 0.3):
        import zipfile

        from mediapipe.tasks.python import BaseOptions, vision

        from video_fer.errors import ModelFileError
        from video_fer.faces.model_files import MEDIAPIPE_FACE_LANDMARKER, resolve_model_file

        path = resolve_model_file(MEDIAPIPE_FACE_LANDMARKER, model_path)
        try:
            with zipfile.ZipFile(path) as bundle:
                detector_model = bundle.read("face_detector.tflite")
        except (zipfile.BadZipFile, KeyError, OSError) as error:
            raise ModelFileError(f"{path}: no face_detector.tflite inside ({error}); download the model again") from error
        options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=detector_model),
                                             running_mode=vision.RunningMode.IMAGE, min_detection_confidence=0.3)
        self._detector = vision.FaceDetector.create_from_options(options)
        self.every, self.default, self.match_iou = int(every), float(default), float(match_iou)
        self._scores: dict[int, float] = {}
        self._processed = 0

    def start_clip(self) -> None:
        self._scores.clear()
        self._processed = 0

    def _detections(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import mediapipe as mp

        found = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
        boxes = np.array([[d.bounding_box.origin_x, d.bounding_box.origin_y,
                           d.bounding_box.origin_x + d.bounding_box.width,
                           d.bounding_box.origin_y + d.bounding_box.height] for d in found.detections],
                         np.float32).reshape(-1, 4)
        return boxes, np.array([d.categories[0].score for d in found.detections], np.float32)

    def __call__(self, batch: "FaceBatch") -> np.ndarray:
        """Confidence of each face of ``batch``, float32 ``(F,)``."""
        from video_fer.faces.types import box_iou, boxes_from_points

        frames = batch.frames.numpy()
        confidence = np.full(len(batch.face_ids), self.default, np.float32)
        for position in range(len(batch.frame_indices)):
            faces = np.flatnonzero(batch.positions == position)
            due = self._processed % self.every == 0
            self._processed += 1
            ids = batch.face_ids[faces].tolist()
            if faces.size and (due or any(face_id not in self._scores for face_id in ids)):
                boxes, scores = self._detections(frames[position])
                overlap = box_iou(boxes_from_points(batch.landmarks[faces]), boxes) if len(boxes) else None
                for row, face_id in enumerate(ids):
                    best = int(overlap[row].argmax()) if overlap is not None else -1
                    matched = best >= 0 and overlap[row, best] > self.match_iou
                    self._scores[face_id] = max(float(scores[best]), self.default) if matched else self.default
            confidence[faces] = [self._scores[face_id] for face_id in ids]  # the track's latest detection
        return confidence

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None


def create_track_landmarker(settings: TrackSettings):
    from video_fer.faces import create_landmarker

    options = {**default_landmarker_options(settings.landmarker), **settings.landmarker_options}
    return create_landmarker(settings.landmarker, **options)


# ------------------------------------------------------------------------------ columns
def au_columns(aus: Sequence[int], suffix: str) -> list[str]:
    """OpenFace names: ``[1, 12] , "_c"`` -> ``["AU01_c", "AU12_c"]``."""
    return [f"AU{int(au):02d}{suffix}" for au in aus]


def expression_columns(labels: Sequence[str]) -> list[str]:
    return [f"expression_{label}" for label in labels]


def column_names(bundle) -> list[str]:
    """Every column the table of ``bundle`` has, in order."""
    specs = bundle.specs
    columns = list(BASE_COLUMNS)
    if "au" in specs:
        columns += au_columns(specs["au"].names, "_c")
    if "au_intensity" in specs:
        columns += au_columns(specs["au_intensity"].names, "_r")
    if "expression" in specs:
        columns += expression_columns(specs["expression"].names) + ["expression"]
    if "va" in specs:
        columns += ["valence", "arousal"]
    return columns


# ------------------------------------------------------------------------------ stage 1: frames -> faces
@dataclass
class FaceBatch:
    """One decoded batch and the faces found in it.

    Attributes:
        frame_indices: int64 ``(T,)``; timestamps: float64 ``(T,)`` seconds.
        frames: uint8 ``(T, H, W, 3)``.
        positions: int64 ``(F,)`` frame (0..T-1) of each face; landmarks: float32 ``(F, 68, 2)`` pixels;
        scores: float32 ``(F,)``; face_ids: int64 ``(F,)`` tracker ids.
        crops: the aligned faces, float ``(F, 3, S, S)`` in [0, 1], and crop_landmarks ``(F, 68, 2)``
            when stage 1 aligned them already (else None: :func:`predict_faces` aligns).
        landmark_source: int8 ``(T,)`` keyframe / interpolated / gap-filled
            (:mod:`video_fer.faces.keyframes`), or None.
    """

    frame_indices: np.ndarray
    timestamps: np.ndarray
    frames: torch.Tensor
    positions: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    face_ids: np.ndarray
    crops: torch.Tensor | None = None
    crop_landmarks: torch.Tensor | None = None
    landmark_source: np.ndarray | None = None


def find_faces(reader, landmarker, settings: TrackSettings, alignment=None, confidence=None) -> Iterator[FaceBatch]:
    """Decode, find and track faces batch by batch (stage 1; runs in the background thread).

    Landmarks come from keyframes (:class:`~video_fer.faces.keyframes.KeyframeLandmarks`, every
    ``settings.landmark_every``-th frame); batches are therefore cut at keyframes and hold
    ``batch_size +- landmark_every`` frames. With ``alignment`` (an AlignmentSpec) the faces are
    also aligned here (:func:`align_batch`), and with ``confidence`` (:class:`SparseDetectorConfidence`)
    scored here: with keyframes, this thread has less to do than the network's. When pipelined,
    decoding runs one batch ahead in a thread of its own.
    """
    from video_fer.faces.tracking import FaceTracker

    tracker = FaceTracker(**settings.tracker_options)
    keyframes = KeyframeLandmarks(landmarker, settings.landmark_every, image_mode_twin(landmarker))
    keyframes.start_clip(str(reader.path), reader.fps)
    decoded = reader.iter_batches(settings.batch_size, settings.start, settings.end, settings.every)
    if settings.pipelined:
        decoded = run_in_background(decoded, max_waiting=1, name="video-fer-decode")

    def landmarked() -> Iterator:
        for indices, frames in decoded:
            chunk = keyframes.push(indices, reader.timestamps[indices], frames)
            if chunk is not None:
                yield chunk
        chunk = keyframes.finish()
        if chunk is not None:
            yield chunk

    try:
        for chunk in landmarked():
            positions, landmarks, scores, ids = [], [], [], []
            for position, (frame_index, faces) in enumerate(zip(chunk.frame_indices, chunk.faces)):
                ids += tracker.update(int(frame_index), faces)
                for face in faces:
                    positions.append(position)
                    landmarks.append(face.landmarks)
                    scores.append(face.score)
            tracker.pop_closed_tracks()  # finished tracks are not needed again: memory stays bounded
            batch = FaceBatch(chunk.frame_indices, chunk.timestamps, chunk.frames, np.asarray(positions, np.int64),
                              np.asarray(landmarks, np.float32).reshape(-1, 68, 2), np.asarray(scores, np.float32),
                              np.asarray(ids, np.int64), landmark_source=chunk.source)
            if confidence is not None:
                batch.scores = confidence(batch)
            if alignment is not None:
                batch.crops, batch.crop_landmarks = align_batch(batch, alignment, settings.exact_alignment)
            yield batch
    finally:
        keyframes.close()


class _Stop(Exception):
    pass


def run_in_background(batches: Iterator, max_waiting: int = QUEUE_BATCHES, name: str = "video-fer-landmarks"
                      ) -> Iterator:
    """Run an iterator in a thread, at most ``max_waiting`` items ahead; its exceptions re-raise here."""
    waiting: queue.Queue = queue.Queue(maxsize=max_waiting)
    stop = threading.Event()
    done = object()

    def put(item) -> None:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def produce() -> None:
        try:
            for item in batches:
                put(item)
            put(done)
        except _Stop:
            pass
        except BaseException as error:  # handed to the consumer, which re-raises it in its thread
            with contextlib.suppress(_Stop):
                put(error)
        finally:
            if hasattr(batches, "close"):  # a nested pipeline stage stops its own thread now
                batches.close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = waiting.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


# ------------------------------------------------------------------------------ stage 2: faces -> rows
@dataclass
class FacePredictions:
    """Network and pose outputs for the F faces of a batch (numpy, None where the bundle lacks the head)."""

    pose: np.ndarray  # (F, 3)
    crop_landmarks: np.ndarray  # (F, 68, 2) in crop pixels
    au_presence: np.ndarray | None = None
    au_intensity: np.ndarray | None = None
    expression: np.ndarray | None = None
    valence_arousal: np.ndarray | None = None


def align_batch(batch: FaceBatch, spec, exact_alignment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned faces of a batch: ``(crops float (F, 3, S, S) in [0, 1], crop landmarks (F, 68, 2))``."""
    landmarks = torch.from_numpy(batch.landmarks)
    if len(landmarks) == 0:
        return torch.zeros((0, 3, spec.size, spec.size)), torch.zeros((0, 68, 2))
    positions = torch.from_numpy(batch.positions)
    if exact_alignment:
        from video_fer.data.prepare import align_in_regions

        crops, _, crop_landmarks = align_in_regions(batch.frames, landmarks, positions, spec)
        return crops.permute(0, 3, 1, 2).float().div_(255.0), crop_landmarks
    return shrink_then_align(batch.frames, landmarks, positions, spec)


def predict_faces(bundle, batch: FaceBatch, channels_last: bool = True, exact_alignment: bool = False,
                  precision: str = "float32") -> FacePredictions:
    """Align the faces of a batch with the bundle's alignment (unless stage 1 did), run encoder +
    heads once, fit head pose."""
    from video_fer.head_pose import estimate_head_pose

    pose = estimate_head_pose(torch.from_numpy(batch.landmarks)).numpy()
    if len(batch.landmarks) == 0:
        empty = np.zeros((0, 68, 2), np.float32)
        return FacePredictions(pose, empty)
    if batch.crops is not None:
        images, crop_landmarks = batch.crops, batch.crop_landmarks
    else:
        images, crop_landmarks = align_batch(batch, bundle.alignment, exact_alignment)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        output = bundle(images, crop_landmarks)

    def as_numpy(values):
        return None if values is None else values.float().numpy()

    return FacePredictions(pose, crop_landmarks.numpy(), as_numpy(output.au_presence), as_numpy(output.au_intensity),
                           as_numpy(output.expression), as_numpy(output.valence_arousal))


def batch_rows(bundle, batch: FaceBatch, predictions: FacePredictions) -> dict[str, np.ndarray]:
    """Columns of the rows of one batch: a row per face, a ``success=0`` row per frame without one.

    Rows are ordered by frame, then face id.
    """
    num_frames, num_faces = len(batch.frame_indices), len(batch.positions)
    has_face = np.zeros(num_frames, bool)
    has_face[batch.positions] = True
    empty = np.flatnonzero(~has_face)
    row_position = np.concatenate([batch.positions, empty])  # (R,) frame position of each row
    row_face = np.concatenate([batch.face_ids, np.full(len(empty), -1, np.int64)])
    order = np.lexsort((row_face, row_position))
    face_rows = order < num_faces  # in sorted order: which rows hold a face
    source = np.where(face_rows, order, 0)  # face index of each face row

    def face_values(values: np.ndarray, fill=np.nan) -> np.ndarray:
        """``(F, ...)`` per-face values -> ``(R, ...)`` per row, ``fill`` on rows without a face."""
        out = values[source] if num_faces else np.zeros((len(order),) + values.shape[1:], values.dtype)
        out = out.astype(np.float64 if values.dtype.kind == "f" else values.dtype)
        out[~face_rows] = fill
        return out

    columns: dict[str, np.ndarray] = {
        "frame": batch.frame_indices[row_position[order]].astype(np.int64),
        "timestamp": batch.timestamps[row_position[order]].astype(np.float64),
        "face_id": row_face[order],
        "confidence": face_values(batch.scores, 0.0),
        "success": face_rows.astype(np.int64),
    }
    for axis, name in enumerate(("pose_Rx", "pose_Ry", "pose_Rz")):
        columns[name] = face_values(predictions.pose[:, axis])
    specs = bundle.specs

    def add(names: list[str], values: np.ndarray | None, width: int) -> None:
        values = values if values is not None else np.zeros((0, width), np.float32)
        for k, name in enumerate(names):
            columns[name] = face_values(values[:, k])

    if "au" in specs:
        add(au_columns(specs["au"].names, "_c"), predictions.au_presence, len(specs["au"].names))
    if "au_intensity" in specs:
        add(au_columns(specs["au_intensity"].names, "_r"), predictions.au_intensity, len(specs["au_intensity"].names))
    if "expression" in specs:
        labels = specs["expression"].names
        add(expression_columns(labels), predictions.expression, len(labels))
        best = predictions.expression.argmax(1) if num_faces else np.zeros(0, np.int64)
        names = np.asarray(labels + [""], dtype=object)
        columns["expression"] = names[np.where(face_rows, best[source] if num_faces else -1, -1)]
    if "va" in specs:
        add(["valence", "arousal"], predictions.valence_arousal, 2)
    return columns


# ------------------------------------------------------------------------------ one clip
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


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def iter_clip_batches(path: str | os.PathLike, bundle, settings: TrackSettings, landmarker=None
                      ) -> Iterator[tuple[FaceBatch, FacePredictions, dict[str, np.ndarray]]]:
    """Yield ``(batch, predictions, row columns)`` for a clip, streaming (see module doc).

    Raises:
        VideoReadError: the clip cannot be opened or decoded.
    """
    from video_fer.video import VideoReader

    own_landmarker = landmarker is None
    landmarker = landmarker or create_track_landmarker(settings)
    confidence = reader = batches = None
    try:
        if uses_sparse_confidence(settings):
            confidence = SparseDetectorConfidence(getattr(landmarker, "model_path", None), settings.confidence_every)
        reader = VideoReader(path)
        if settings.start >= len(reader):
            raise ConfigError(f"{path}: start={settings.start} is past the last frame ({len(reader)} frames)")
        threads = settings.torch_threads or 1  # more intra-op threads only contend with the landmarker here
        bundle = inference_bundle(bundle, settings)
        # pipelined: faces are aligned and scored in the landmark thread, this thread only runs the network
        batches = find_faces(reader, landmarker, settings, bundle.alignment if settings.pipelined else None,
                             confidence)
        if settings.pipelined:
            batches = run_in_background(batches)
        with torch_threads(threads):
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


def uses_sparse_confidence(settings: TrackSettings) -> bool:
    """MediaPipe without its per-frame detector scores, and confidence_every > 0."""
    options = {**default_landmarker_options(settings.landmarker), **settings.landmarker_options}
    return settings.landmarker == "mediapipe" and settings.confidence_every > 0 and not options.get("detector_scores")


def expected_rows(num_frames: int, settings: TrackSettings) -> int:
    """Frames processed for a clip of ``num_frames`` (the row count when every frame has at most one face)."""
    end = num_frames if settings.end is None else min(settings.end, num_frames)
    return len(range(settings.start, end, settings.every))


def concatenate_columns(chunks: Sequence[Mapping[str, np.ndarray]], columns: Sequence[str]) -> dict[str, np.ndarray]:
    if not chunks:
        return {name: np.zeros(0) for name in columns}
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in columns}


def as_table(columns: dict[str, np.ndarray]):
    """pandas DataFrame when pandas is installed, else the dict of numpy columns."""
    try:
        import pandas
    except ImportError:
        return columns
    return pandas.DataFrame(columns)


def _prepared_bundle(model, settings: TrackSettings):
    """A bundle directory or ModelBundle -> :func:`inference_bundle` (the caller's object is never changed)."""
    from video_fer.bundle import ModelBundle

    return inference_bundle(_as_bundle(model), settings, copy=isinstance(model, ModelBundle))


def _as_bundle(model):
    from video_fer.bundle import ModelBundle, load_bundle

    if isinstance(model, ModelBundle):
        return model.eval()
    if isinstance(model, (str, os.PathLike)):
        return load_bundle(model)
    raise ConfigError(f"model: expected a bundle directory or a ModelBundle, got {type(model).__name__}")


def inference_bundle(bundle, settings: TrackSettings, copy: bool = True):
    """The bundle as ``track`` runs it: BatchNorms folded into their convs, weights channels-last.

    A bundle is prepared once and marked (``_track_ready``). A caller's bundle is copied first
    (``copy=True``), so ``track(path, my_bundle)`` leaves ``my_bundle`` (and its state_dict) as
    it was; a bundle ``track`` loaded itself is prepared in place.
    """
    import copy as copying

    from video_fer.bundle import fuse_batch_norms

    if getattr(bundle, "_track_ready", None) == settings.channels_last:
        return bundle
    bundle = (copying.deepcopy(bundle) if copy else bundle).eval()
    fuse_batch_norms(bundle)
    if settings.channels_last:  # 4-D weights in NHWC, like the inputs: the fast CPU convolution path
        bundle.to(memory_format=torch.channels_last)
    bundle._track_ready = settings.channels_last
    return bundle


def track(path: str | os.PathLike, model, **settings: Any):
    """Per-frame AU / expression / valence-arousal / head-pose table of one clip.

    Args:
        path: a video file.
        model: a bundle directory (``video-fer bundle``) or a loaded :class:`~video_fer.bundle.ModelBundle`.
        **settings: :class:`TrackSettings` fields (``every``, ``start``, ``end``, ``batch_size``,
            ``landmarker_options`` ...).

    Returns:
        a pandas DataFrame when pandas is installed, else a dict of numpy columns (see module doc).
    """
    options = TrackSettings(**settings)
    bundle = _prepared_bundle(model, options)
    chunks = [rows for _, _, rows in iter_clip_batches(path, bundle, options)]
    return as_table(concatenate_columns(chunks, column_names(bundle)))


# ------------------------------------------------------------------------------ writers
def _format_column(values: np.ndarray, name: str) -> list[str]:
    """One column as CSV text: integers as such, NaN as an empty cell, seconds to the microsecond."""
    if values.dtype == object:
        return [str(v) for v in values]
    if values.dtype.kind in "iub":
        return [str(v) for v in values.tolist()]
    pattern = "{:.6f}" if name == "timestamp" else "{:.6g}"
    return ["" if v != v else pattern.format(v) for v in values.tolist()]


class CsvTableWriter:
    """Streams row chunks to a CSV file (temp file beside it, renamed on :meth:`close`)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        import csv

        self.path, self.columns = Path(path), list(columns)
        self._context = _atomic_text(self.path)
        self._handle = self._context.__enter__()
        self._writer = csv.writer(self._handle, lineterminator="\n")
        self._writer.writerow(self.columns)

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        self._writer.writerows(zip(*[_format_column(chunk[name], name) for name in self.columns]))

    def close(self, ok: bool = True) -> None:
        if ok:
            self._context.__exit__(None, None, None)
            _readable_by_all(self.path)
        else:
            self._context.__exit__(VideoFerError, VideoFerError("aborted"), None)


def _readable_by_all(path: Path) -> None:
    """The atomic temp file is created 0600; give the result the usual mode (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def _atomic_text(path: Path):
    from video_fer.io_utils import atomic_write

    with atomic_write(path, "w") as handle:
        yield handle


class ParquetTableWriter:
    """Streams row chunks to a Parquet file, one row group per chunk (needs pyarrow)."""

    def __init__(self, path: Path, columns: Sequence[str]):
        try:
            import pyarrow  # noqa: F401
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ConfigError("--format parquet needs pyarrow (pip install pyarrow); or use --format csv") from None
        from video_fer.io_utils import atomic_path

        self.path, self.columns = Path(path), list(columns)
        self._context = atomic_path(self.path)
        self._tmp = self._context.__enter__()
        self._writer = None

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = [pa.array(chunk[name].tolist() if chunk[name].dtype == object else chunk[name])
                  for name in self.columns]
        table = pa.Table.from_arrays(arrays, names=self.columns)
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self._tmp), table.schema)
        self._writer.write_table(table)

    def close(self, ok: bool = True) -> None:
        if self._writer is not None:
            self._writer.close()
        if ok:
            self._context.__exit__(None, None, None)
            _readable_by_all(self.path)
        else:
            self._context.__exit__(VideoFerError, VideoFerError("aborted"), None)


def open_writer(path: Path, columns: Sequence[str], fmt: str):
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return (CsvTableWriter if fmt == "csv" else ParquetTableWriter)(path, columns)


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a track CSV back as numpy columns (strings for ``expression``, NaN for empty cells)."""
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    table = {}
    for k, name in enumerate(header):
        values = [row[k] for row in body]
        if name == "expression":
            table[name] = np.asarray(values, dtype=object)
        elif name in INTEGER_COLUMNS:
            table[name] = np.asarray([int(v) for v in values], dtype=np.int64)
        else:
            table[name] = np.asarray([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    return table


# ------------------------------------------------------------------------------ batch mode
@dataclass
class TrackSummary:
    """Outcome of :func:`track_files`: one output per clip that worked, one message per clip that failed."""

    outputs: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    results: list[ClipResult] = field(default_factory=list)


def output_path(video, out: Path | None, fmt: str, single: bool) -> Path:
    """Where a clip's table goes: ``out`` itself for one clip given a file name, else ``out/<key>.<fmt>``."""
    suffix = "." + fmt
    if out is not None and single and out.suffix.lower() == suffix:
        return out
    return (out or Path("processed")) / f"{video.key}{suffix}"


def track_clip(path: Path, bundle, settings: TrackSettings, table_path: Path, fmt: str = "csv",
               plot_path: Path | None = None, video_path: Path | None = None, landmarker=None,
               progress: bool = True) -> ClipResult:
    """Track one clip into ``table_path`` (and optionally a PNG plot and an annotated mp4)."""
    from tqdm.auto import tqdm

    from video_fer.video import VideoReader

    with VideoReader(path) as probe:  # frame count for the bar; also fails early on an unreadable clip
        total, fps, size = expected_rows(len(probe), settings), probe.fps, (probe.width, probe.height)
    columns = column_names(bundle)
    writer = open_writer(table_path, columns, fmt)
    keep_for_plot: list[dict[str, np.ndarray]] = []
    annotator = None
    result = ClipResult(Path(path))
    ok = False
    started = time.perf_counter()
    bar = tqdm(total=total, unit="frame", desc=Path(path).name, disable=not progress, leave=False)
    try:
        if video_path is not None:
            from video_fer.track_plot import VideoAnnotator

            annotator = VideoAnnotator(video_path, fps / settings.every, size, bundle)
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
        ok = True
    finally:
        bar.close()
        writer.close(ok)
        if annotator is not None:
            annotator.close(ok)
    if plot_path is not None:
        from video_fer.track_plot import plot_tracks

        plot_tracks(concatenate_columns(keep_for_plot, columns), bundle, plot_path, title=Path(path).name)
    result.seconds = time.perf_counter() - started
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


def track_files(inputs: Sequence[str | os.PathLike], model, out: str | os.PathLike | None = None,
                fmt: str = "csv", plot: bool = False, video_out: bool = False, settings: TrackSettings | None = None,
                progress: bool = True, report: Callable[[str], None] | None = None) -> TrackSummary:
    """Batch mode: every clip of ``inputs`` (files, folders, ``.txt`` lists) -> one table each.

    A clip that fails (unreadable, corrupt) is recorded in ``summary.failures`` and the others
    go on. Outputs: ``out/<clip key>.<fmt>`` (``out`` may be the file name when there is one clip),
    plus ``.png`` / ``.annotated.mp4`` beside it with ``plot`` / ``video_out``.
    """
    from video_fer.data.prepare import expand_inputs

    settings = settings or TrackSettings()
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:  # fail before any clip is processed
        raise ConfigError("--format parquet needs pyarrow (pip install pyarrow); or use --format csv")
    videos = expand_inputs(inputs)
    # MediaPipe's import and start-up (~1 s) overlap loading the bundle (torch, weights).
    with long_lived_allocations():
        landmarker_future = _start_in_thread(create_track_landmarker, settings)
        try:
            bundle = _prepared_bundle(model, settings)  # once for all clips
            import scipy.optimize  # noqa: F401  (the face tracker assigns with it: imported once, here)
        except BaseException:
            with contextlib.suppress(Exception):
                landmarker_future().close()
            raise
        landmarker = landmarker_future()
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
                                    landmarker=landmarker, progress=progress)
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


__all__ = ["BASE_COLUMNS", "ClipResult", "TrackSettings", "TrackSummary", "column_names", "read_table", "track",
           "track_clip", "track_files"]
