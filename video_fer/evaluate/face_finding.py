"""How well a face front end (a :class:`~video_fer.faces.types.Landmarker`) finds faces: recall, false faces, CPU.

- On generated clips (:mod:`video_fer.evaluate.face_clips`), with box truth: a true face at least
  half visible is *expected*; it is *found* when a found face overlaps its box by IoU >= 0.3
  (greedy, best overlaps first); a found face that matches no true face is *false* (one matching
  a barely visible face is neither).
- On shared videos without box truth: each frame holds one face except the known no-face frames
  (:data:`~video_fer.evaluate.face_clips.NO_FACE_FRAMES`): a frame with a face is found when at
  least one face is found; faces beyond the first, and every face on a no-face frame, are false.

Faces of short tracks can be removed first (:func:`drop_short_tracks`), as ``prepare`` and ``track``
drop them. CPU is the process's CPU time (all threads: MediaPipe runs its own) per frame.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from video_fer.faces.boxes import box_iou


@dataclass
class FindingScore:
    """Counts of one front end on one clip."""

    name: str
    frames: int
    expected: int  # (face, frame) pairs expected
    found: int  # of those, found
    false: int  # found faces matching no true face
    no_face_frames: int  # frames where no face is expected
    cpu_ms: float  # CPU per frame

    @property
    def recall(self) -> float:
        return self.found / self.expected if self.expected else float("nan")


def match_faces(truth: dict[int, tuple[np.ndarray, float]], boxes: np.ndarray, min_iou: float = 0.3,
                min_visible: float = 0.5) -> tuple[dict[int, int], int, int]:
    """Match the faces found in one frame to its truth.

    Args:
        truth: ``{person id: (box (4,), visible fraction)}``; boxes: ``(F, 4)`` found faces.

    Returns:
        ``({person id: index of the found face}, expected, false)`` over the people at least
        ``min_visible`` visible.
    """
    ids = list(truth)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    expected = sum(1 for person in ids if truth[person][1] >= min_visible)
    if not ids:
        return {}, 0, len(boxes)
    overlap = box_iou(np.stack([truth[p][0] for p in ids]).astype(np.float32), boxes) if len(boxes) \
        else np.zeros((len(ids), 0))
    matches: dict[int, int] = {}
    for flat in np.argsort(-overlap, axis=None):
        row, column = np.unravel_index(flat, overlap.shape)
        if overlap[row, column] < min_iou:
            break
        if ids[row] not in matches and column not in matches.values():
            matches[ids[row]] = int(column)
    false = len(boxes) - len(matches)
    return {p: c for p, c in matches.items() if truth[p][1] >= min_visible}, expected, false


def score_clip(name: str, truth: Sequence[dict], faces: Sequence[Sequence], cpu_ms: float = 0.0) -> FindingScore:
    """Score the faces found on a generated clip against its truth."""
    expected = found = false = empty = 0
    for frame_truth, frame_faces in zip(truth, faces):
        matched, wanted, wrong = match_faces(frame_truth, np.array([f.box for f in frame_faces]))
        expected, found, false, empty = expected + wanted, found + len(matched), false + wrong, empty + (not frame_truth)
    return FindingScore(name, len(truth), expected, found, false, empty, cpu_ms)


def score_video(name: str, faces: Sequence[Sequence], no_face: np.ndarray | None = None, cpu_ms: float = 0.0
                ) -> FindingScore:
    """Score a shared video: one face per frame except on the frames where ``no_face`` (bool ``(T,)``) holds."""
    counts = np.array([len(f) for f in faces])
    no_face = np.zeros(len(counts), bool) if no_face is None else np.asarray(no_face, bool)
    false = int(counts[no_face].sum() + np.clip(counts[~no_face] - 1, 0, None).sum())
    return FindingScore(name, len(counts), int((~no_face).sum()), int(((counts > 0) & ~no_face).sum()), false,
                        int(no_face.sum()), cpu_ms)


def find_faces_in_frames(landmarker, frames: np.ndarray, timestamps: np.ndarray, batch_size: int = 32
                         ) -> tuple[list[list], float]:
    """Run ``landmarker`` over a clip's frames in batches: ``(faces per frame, CPU ms per frame)``."""
    landmarker.start_clip(None, None)
    faces: list[list] = []
    started = time.process_time()
    for start in range(0, len(frames), batch_size):
        stop = min(start + batch_size, len(frames))
        faces += landmarker(frames[start:stop], np.arange(start, stop), timestamps[start:stop])
    return faces, (time.process_time() - started) / max(len(frames), 1) * 1000


def find_faces_with_keyframes(landmarker, frames: np.ndarray, timestamps: np.ndarray, every: int,
                              batch_size: int = 32, counters: dict | None = None) -> tuple[list[list], float]:
    """As :func:`find_faces_in_frames`, through :class:`~video_fer.faces.keyframes.KeyframeLandmarks` (landmarks on
    every ``every``-th frame, the rest interpolated or filled, as ``track``); ``counters`` receives its
    ``keyframes``, ``interpolated``, ``gap_filled`` and ``probes`` counts."""
    import torch

    from video_fer.faces.keyframes import KeyframeLandmarks

    keyframes = KeyframeLandmarks(landmarker, every)
    keyframes.start_clip(None, None)
    faces: list[list] = []
    started = time.process_time()
    try:
        for start in range(0, len(frames), batch_size):
            stop = min(start + batch_size, len(frames))
            chunk = keyframes.push(np.arange(start, stop), timestamps[start:stop], torch.from_numpy(frames[start:stop]))
            faces += [] if chunk is None else chunk.faces
        chunk = keyframes.finish()
        faces += [] if chunk is None else chunk.faces
    finally:
        keyframes.close()
    if counters is not None:
        counters.update({name: getattr(keyframes, name) for name in ("keyframes", "interpolated", "gap_filled", "probes")})
    return faces, (time.process_time() - started) / max(len(frames), 1) * 1000


def drop_short_tracks(faces: Sequence[Sequence], min_frames: int, **tracker_options) -> list[list]:
    """Remove the faces whose track (:class:`~video_fer.faces.tracking.FaceTracker`) has fewer than ``min_frames`` faces."""
    from video_fer.faces.tracking import track_faces

    if min_frames <= 1:
        return [list(f) for f in faces]
    result = track_faces(faces, np.arange(len(faces)), min_track_frames=min_frames, **tracker_options)
    return [[face for face, track in zip(frame_faces, ids) if track >= 0]
            for frame_faces, ids in zip(faces, result.face_track_ids)]
