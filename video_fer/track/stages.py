"""The two stages of ``video-fer track`` and the thread that overlaps them.

1. :func:`find_faces` (frames -> :class:`FaceBatch`): decode, landmarks on keyframes, face ids,
   confidence and, when pipelined, alignment; runs in a background thread
   (:func:`run_in_background`, at most :data:`QUEUE_BATCHES` batches ahead).
   The default's columns (head pose, gaze, blendshape AUs, prototype expression:
   :mod:`video_fer.track.default_columns`) are computed here too, from the landmarker's outputs.
2. :func:`predict_faces` (faces -> :class:`FacePredictions`): encoder + heads in one batched pass
   (nothing for the no-training default); :func:`batch_rows` turns both into the table's row
   chunk (:mod:`video_fer.track.table`).
"""
from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from video_fer.faces.crops import align_in_regions, shrink_then_align
from video_fer.faces.identity import PersonTracker, confirmation_frames
from video_fer.faces.keyframes import KeyframeLandmarks, image_mode_twin
from video_fer.track.default_columns import MESH_POINTS, DefaultColumns, group_columns
from video_fer.track.settings import TrackSettings
from video_fer.track.table import au_columns, expression_columns
from video_fer.video import StreamEndedError

QUEUE_BATCHES = 2  # decoded batches waiting for the network: enough to smooth the two stages' jitter


@dataclass
class FaceBatch:
    """One decoded batch and the faces found in it.

    Attributes:
        frame_indices: int64 ``(T,)``; timestamps: float64 ``(T,)`` seconds.
        frames: uint8 ``(T, H, W, 3)``.
        positions: int64 ``(F,)`` frame (0..T-1) of each face; landmarks: float32 ``(F, 68, 2)`` pixels;
        scores: float32 ``(F,)``; face_ids: int64 ``(F,)`` person ids (:mod:`video_fer.faces.identity`).
        crops: the aligned faces, float ``(F, 3, S, S)`` in [0, 1], and crop_landmarks ``(F, 68, 2)``
            when stage 1 aligned them already (else None: :func:`predict_faces` aligns).
        landmark_source: int8 ``(T,)`` keyframe / interpolated / gap-filled
            (:mod:`video_fer.faces.keyframes`), or None.
        faces: the F :class:`~video_fer.faces.types.Face` objects (mesh, blendshapes), or None.
        meshes: float32 ``(F, 478, 3)`` MediaPipe points in pixels (NaN rows for faces without), when the
            default's columns use them; blendshapes: float32 ``(F, 52)`` likewise.
        columns: the default's per-face values ``{column: (F,)}`` (:mod:`video_fer.track.default_columns`).
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
    faces: list | None = None
    meshes: np.ndarray | None = None
    blendshapes: np.ndarray | None = None
    columns: dict[str, np.ndarray] | None = None


def stack_face_arrays(faces: list, attribute: str, shape: tuple[int, ...]) -> np.ndarray:
    """``(F, *shape)`` float32 of one optional Face attribute, NaN rows where a face lacks it (or has another shape)."""
    out = np.full((len(faces),) + shape, np.nan, np.float32)
    for row, face in enumerate(faces):
        value = getattr(face, attribute, None)
        if value is not None and np.shape(value) == shape:
            out[row] = value
    return out


def find_faces(reader, landmarker, settings: TrackSettings, alignment=None, confidence=None,
               defaults: DefaultColumns | None = None) -> Iterator[FaceBatch]:
    """Decode, find and track faces batch by batch (stage 1; runs in the background thread).

    Landmarks come from keyframes (:class:`~video_fer.faces.keyframes.KeyframeLandmarks`, every
    ``settings.landmark_every``-th frame); batches are therefore cut at keyframes and hold
    ``batch_size +- landmark_every`` frames. With ``alignment`` (an AlignmentSpec) the faces are
    also aligned here (:func:`align_batch`), and with ``confidence`` (:class:`~video_fer.faces.detection.SparseDetectorConfidence`)
    scored here, and with ``defaults`` the default's columns are computed here: with keyframes, this
    thread has less to do than the network's. When pipelined, decoding runs one batch ahead in a
    thread of its own.

    Face ids are person ids (:class:`~video_fer.faces.identity.PersonTracker`): a person gone for a while keeps
    one id, and faces of tracks shorter than ~0.2 s are dropped. A face's id is known once its track is
    confirmed or ended, so each batch waits here until all its faces are decided (at most ~24 processed
    frames later, usually until the next batch), then goes on with its final ids: the table stays streamed.
    """
    processed_fps = reader.fps / settings.every if reader.fps else 25.0
    people = PersonTracker(processed_fps, settings.tracker_options,
                           **{"min_frames": confirmation_frames(processed_fps), **settings.identity_options})
    keyframes = KeyframeLandmarks(landmarker, settings.landmark_every, image_mode_twin(landmarker))
    keyframes.start_clip(str(reader.path), reader.fps)
    decoded = reader.iter_batches(settings.batch_size, settings.start, settings.end, settings.every)
    if settings.pipelined:  # decoding runs a batch ahead; MediaPipe landmarks the next batch's keyframes meanwhile
        decoded = announced_ahead(run_in_background(decoded, max_waiting=1, name="video-fer-decode"), keyframes,
                                  reader.timestamps)

    def landmarked() -> Iterator:
        ended = None
        try:
            for indices, frames in decoded:
                chunk = keyframes.push(indices, reader.timestamps[indices], frames)
                if chunk is not None:
                    yield chunk
        except StreamEndedError as error:  # the frames decoded before the end still get their rows
            ended = error
        chunk = keyframes.finish()
        if chunk is not None:
            yield chunk
        if ended is not None:
            raise ended

    try:
        for batch in with_person_ids(landmarked(), people):
            if confidence is not None:
                batch.scores = confidence(batch.frames, batch.positions, batch.face_ids, batch.landmarks)
            if defaults is not None and defaults.groups:
                height, width = batch.frames.shape[1:3]
                if defaults.geometry is not None:
                    batch.meshes = stack_face_arrays(batch.faces, "native_landmarks", (MESH_POINTS, 3))
                if defaults.needs_blendshapes:
                    batch.blendshapes = stack_face_arrays(batch.faces, "blendshapes", (52,))
                batch.columns = defaults(batch.landmarks, batch.meshes, batch.blendshapes, width, height)
            if alignment is not None:
                batch.crops, batch.crop_landmarks = align_batch(batch, alignment, settings.exact_alignment)
            yield batch
    finally:
        keyframes.close()


def announced_ahead(decoded: Iterator, keyframes: KeyframeLandmarks, timestamps: np.ndarray) -> Iterator:
    """Decoded batches ``(indices, frames)``, each yielded once the next one was announced to ``keyframes``
    (:meth:`~video_fer.faces.keyframes.KeyframeLandmarks.prefetch`); one batch more is alive."""
    previous = None
    try:
        for batch in decoded:
            keyframes.prefetch(batch[0], timestamps[batch[0]], batch[1])
            if previous is not None:
                yield previous
            previous = batch
    except StreamEndedError:  # the batches decoded before the end still get their rows
        if previous is not None:
            yield previous
        raise
    if previous is not None:
        yield previous


def with_person_ids(chunks: Iterator, people: PersonTracker) -> Iterator[FaceBatch]:
    """Landmarked chunks (:class:`~video_fer.faces.keyframes.LandmarkedFrames`) -> FaceBatches with person ids.

    A batch is held until every face in it has its person decided (confirmed or dropped as too short), then
    yielded with the dropped faces removed; the last ones when the clip ends, also when its stream stops early
    (the :class:`~video_fer.video.StreamEndedError` is raised again after them).
    """
    held: list[FaceBatch] = []
    ended = None
    try:
        for chunk in chunks:
            positions, found, track_ids = [], [], []
            for position, (frame_index, faces) in enumerate(zip(chunk.frame_indices, chunk.faces)):
                track_ids += people.update(int(frame_index), faces, np.asarray(chunk.frames[position]))
                positions += [position] * len(faces)
                found += faces
            held.append(FaceBatch(chunk.frame_indices, chunk.timestamps, chunk.frames, np.asarray(positions, np.int64),
                                  np.asarray([f.landmarks for f in found], np.float32).reshape(-1, 68, 2),
                                  np.asarray([f.score for f in found], np.float32), np.asarray(track_ids, np.int64),
                                  landmark_source=chunk.source, faces=found))
            while held and all(people.decided(int(track_id)) for track_id in held[0].face_ids):
                yield _person_batch(held.pop(0), people)
    except StreamEndedError as error:  # the batches decoded before the end still get their rows
        ended = error
    people.finish()
    while held:
        yield _person_batch(held.pop(0), people)
    if ended is not None:
        raise ended


def _person_batch(batch: FaceBatch, people: PersonTracker) -> FaceBatch:
    """Track ids -> person ids; faces of dropped tracks removed."""
    person_ids = [people.person_of(int(track_id)) for track_id in batch.face_ids]
    keep = np.array([number for number, person in enumerate(person_ids) if person is not None], np.int64)
    batch.positions, batch.landmarks, batch.scores = batch.positions[keep], batch.landmarks[keep], batch.scores[keep]
    batch.face_ids = np.array([person_ids[number] for number in keep], np.int64)
    batch.faces = [batch.faces[number] for number in keep]
    return batch


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
    """Network outputs for the F faces of a batch (numpy, None where the bundle lacks the head or has no network)."""

    crop_landmarks: np.ndarray | None = None  # (F, 68, 2) in crop pixels
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
        crops, _, crop_landmarks = align_in_regions(batch.frames, landmarks, positions, spec, shrink_first=False)
        return crops.permute(0, 3, 1, 2).float().div_(255.0), crop_landmarks
    return shrink_then_align(batch.frames, landmarks, positions, spec)


def predict_faces(bundle, batch: FaceBatch, channels_last: bool = True, exact_alignment: bool = False,
                  precision: str = "float32") -> FacePredictions:
    """Align the faces of a batch with the bundle's alignment (unless stage 1 did) and run encoder + heads once
    (nothing without a network: the no-training default)."""
    if not bundle.has_network:
        return FacePredictions()
    if len(batch.landmarks) == 0:
        return FacePredictions(np.zeros((0, 68, 2), np.float32))
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

    return FacePredictions(crop_landmarks.numpy(), as_numpy(output.au_presence), as_numpy(output.au_intensity),
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
    specs = bundle.specs

    def add(names: list[str], values: np.ndarray | None, width: int) -> None:
        values = values if values is not None else np.zeros((0, width), np.float32)
        for k, name in enumerate(names):
            columns[name] = face_values(values[:, k])

    def label_column(labels: list[str], probabilities: np.ndarray | None) -> np.ndarray:
        best = probabilities.argmax(1) if num_faces else np.zeros(0, np.int64)
        names = np.asarray(list(labels) + [""], dtype=object)
        return names[np.where(face_rows, best[source] if num_faces else -1, -1)]

    defaults = batch.columns or {}
    for group in bundle.default_columns:
        for name in group_columns(group):
            values = defaults.get(name)
            if values is None:  # not computed (no face in the batch): empty cells
                values = np.full(num_faces, "" if name == "expression" else np.nan,
                                 dtype=object if name == "expression" else np.float64)
            columns[name] = face_values(values, "") if values.dtype == object else face_values(values)
    if "au_intensity" in specs:
        add(au_columns(specs["au_intensity"].names, "_r"), predictions.au_intensity, len(specs["au_intensity"].names))
    if "au" in specs:
        add(au_columns(specs["au"].names, "_c"), predictions.au_presence, len(specs["au"].names))
    if "expression" in specs:
        labels = specs["expression"].names
        add(expression_columns(labels), predictions.expression, len(labels))
        columns["expression"] = label_column(labels, predictions.expression)
    if "va" in specs:
        add(["valence", "arousal"], predictions.valence_arousal, 2)
    return columns
