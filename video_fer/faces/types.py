"""The face record every landmarker returns, and the small protocol landmarkers follow."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Face:
    """One face found in one frame.

    Attributes:
        box: float32 ``(4,)`` x0, y0, x1, y1 in pixels.
        score: confidence in [0, 1] that this is a face (each backend documents its source).
        landmarks: float32 ``(68, 2)`` iBUG-68 points, pixel ``(x, y)``, origin at the top-left pixel centre.
        native_landmarks: the backend's own points ``(N, 2)`` or ``(N, 3)`` in pixels, or None.
        blendshapes: float32 ``(52,)`` MediaPipe blendshape scores, or None.
        follow_id: the landmarker's own number for the face when it follows faces between calls
            (``mediapipe-zoom``): the same number on two calls is the same face; None otherwise.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    native_landmarks: np.ndarray | None = None
    blendshapes: np.ndarray | None = None
    follow_id: int | None = None

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
        if self.landmarks.shape != (68, 2):
            raise ValueError(f"Face.landmarks must have shape (68, 2), got {self.landmarks.shape}")
        self.score = float(self.score)
        if self.blendshapes is not None:
            self.blendshapes = np.asarray(self.blendshapes, dtype=np.float32)


@runtime_checkable
class Landmarker(Protocol):
    """Finds faces and their 68 landmarks in batches of frames of one clip at a time."""

    name: str

    def start_clip(self, source: str | None, fps: float) -> None:
        """Reset per-clip state (tracking, timestamps); precomputed backends look up ``source``'s file."""

    def __call__(self, frames, frame_indices, timestamps) -> list[list[Face]]:
        """``frames`` uint8 ``(T, H, W, 3)`` RGB, ``frame_indices`` int ``(T,)``, ``timestamps`` seconds ``(T,)``
        -> for each frame, the faces found in it (possibly none)."""

    def close(self) -> None:
        """Release models and native resources."""
