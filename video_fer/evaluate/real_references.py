"""Reference signals for real video that no part of the TAE produced (METHOD.md §1, "Judging a representation").

Per cached frame of a face-track cache:

- **head pose**: pitch, yaw, roll from MediaPipe's facial transformation matrix, computed on the
  *source* frames (the aligned crops have the roll removed by the alignment), in OpenFace's
  convention (:mod:`video_fer.faces.head_pose`: ``R = Rx(pitch) Ry(yaw) Rz(roll)``, x right, y down,
  z away from the camera), degrees;
- **facial-action intensities**: MediaPipe's 52 blendshape scores of the same pass, mapped to AU
  intensities by a pluggable table (:func:`load_au_mapping`); the default keeps the blendshapes that
  describe facial actions (drops ``_neutral`` and the eight gaze scores).

:func:`compute_references` runs MediaPipe once per source video (VIDEO mode, every frame, as
``video-fer prepare`` does without ``--fps``), matches each cached face to the found face whose
iBUG-68 points are nearest to the cached source landmarks, and writes
``<cache>/references/<track_id>.npz`` atomically; a rerun skips the tracks already done.

MediaPipe's matrix maps its canonical face model (x right, y up, z towards the viewer) into its
camera space (same axes, OpenGL style); conjugating the rotation by ``diag(1, -1, -1)`` gives
OpenFace's axes. The matrix can carry a scale, so the nearest rotation (SVD) is taken first.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from video_fer.errors import ConfigError, VideoFerError

REFERENCES_DIR = "references"
GAZE_PREFIX = "eyeLook"  # blendshapes of gaze direction, not facial actions
NEUTRAL = "_neutral"
HEAD_ANGLE_NAMES = ("pitch", "yaw", "roll")
_OPENGL_TO_OPENFACE = np.diag([1.0, -1.0, -1.0])


class ReferenceError(VideoFerError, RuntimeError):
    """Reference signals are missing or cannot be computed for a cache."""


def head_angles_from_transformation(matrices: np.ndarray) -> np.ndarray:
    """MediaPipe facial transformation matrices ``(N, 4, 4)`` -> pitch, yaw, roll ``(N, 3)`` in degrees.

    OpenFace's convention (see module doc); a face looking straight into the camera is about (0, 0, 0).
    """
    from video_fer.faces.head_pose import euler_from_rotation

    matrices = np.asarray(matrices, dtype=np.float64)
    if matrices.ndim != 3 or matrices.shape[1:] != (4, 4):
        raise ReferenceError(f"transformation matrices: expected (N, 4, 4), got {matrices.shape}")
    u, _, vh = np.linalg.svd(matrices[:, :3, :3])
    rotation = u @ vh  # nearest rotation: the matrix may include MediaPipe's scale
    rotation = _OPENGL_TO_OPENFACE @ rotation @ _OPENGL_TO_OPENFACE
    return np.degrees(euler_from_rotation(torch.from_numpy(rotation)).numpy())


# ----------------------------------------------------------------------------- AU mapping
@dataclass
class AUMapping:
    """Blendshape scores -> AU intensities.

    Attributes:
        names: ``A`` output names.
        apply: ``(N, 52) scores, 52 blendshape names -> (N, A)``.
        description: where the table came from (printed with the results).
    """

    names: list[str]
    apply: Callable[[np.ndarray, Sequence[str]], np.ndarray]
    description: str


def default_au_mapping(blendshape_names: Sequence[str]) -> AUMapping:
    """The blendshapes themselves, without ``_neutral`` and the gaze scores (used until a blendshape->AU table exists)."""
    keep = [i for i, name in enumerate(blendshape_names) if name != NEUTRAL and not name.startswith(GAZE_PREFIX)]
    return AUMapping([blendshape_names[i] for i in keep], lambda scores, names: np.asarray(scores)[:, keep],
                     f"raw MediaPipe blendshapes ({len(keep)} of {len(blendshape_names)}: no _neutral, no gaze)")


def load_au_mapping(spec: str | os.PathLike | None, blendshape_names: Sequence[str]) -> AUMapping:
    """``None`` -> :func:`default_au_mapping`; else a Python file defining ``AU_NAMES`` and ``blendshapes_to_aus``.

    ``blendshapes_to_aus(scores (N, 52), names)`` must return ``(N, len(AU_NAMES))`` (a function taking
    only the scores is accepted too: the scores are then in MediaPipe's order).
    """
    if spec is None:
        return default_au_mapping(blendshape_names)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--au-map {path}: no such file; give a .py file with AU_NAMES and blendshapes_to_aus")
    module_spec = importlib.util.spec_from_file_location(f"au_mapping_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "AU_NAMES") or not hasattr(module, "blendshapes_to_aus"):
        raise ConfigError(f"--au-map {path}: the file must define AU_NAMES and blendshapes_to_aus(scores, names)")
    function = module.blendshapes_to_aus

    def apply(scores: np.ndarray, names: Sequence[str]) -> np.ndarray:
        try:
            result = function(np.asarray(scores), list(names))
        except TypeError:
            result = function(np.asarray(scores))
        return np.asarray(result, dtype=np.float32)

    return AUMapping([str(name) for name in module.AU_NAMES], apply, f"{path} (AU_NAMES, blendshapes_to_aus)")


# ----------------------------------------------------------------------------- the MediaPipe pass
def reference_path(cache_root: str | os.PathLike, track_id: str) -> Path:
    return Path(cache_root) / REFERENCES_DIR / f"{track_id}.npz"


class _PoseLandmarker:
    """MediaPipe face landmarker in VIDEO mode with transformation matrices and blendshapes."""

    def __init__(self, model_path: str | os.PathLike, num_faces: int = 4):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)), running_mode=vision.RunningMode.VIDEO,
            num_faces=num_faces, output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        self.task = vision.FaceLandmarker.create_from_options(options)
        self.last_ms = -1

    def __call__(self, frame: np.ndarray, seconds: float):
        """One RGB frame -> list of (ibug68 (68, 2) px, matrix (4, 4), blendshapes (52,), names)."""
        import mediapipe as mp

        from video_fer.faces.ibug68 import mediapipe_to_ibug68

        stamp = max(int(round(seconds * 1000)), self.last_ms + 1)  # VIDEO mode wants strictly increasing stamps
        self.last_ms = stamp
        height, width = frame.shape[:2]
        result = self.task.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                     data=np.ascontiguousarray(frame)), stamp)
        faces = []
        for index, points in enumerate(result.face_landmarks):
            mesh = np.array([(p.x * width - 0.5, p.y * height - 0.5) for p in points], dtype=np.float32)
            categories = result.face_blendshapes[index]
            faces.append((mediapipe_to_ibug68(mesh), np.asarray(result.facial_transformation_matrixes[index]),
                          np.array([c.score for c in categories], np.float32), [c.category_name for c in categories]))
        return faces

    def close(self) -> None:
        self.task.close()


def compute_references(cache, model_path: str | os.PathLike, progress: bool = True,
                       max_match_px: float = 3.0) -> dict:
    """Head pose and blendshapes of every cached frame, written to ``<cache>/references/`` (resumes).

    Args:
        cache: a :class:`~video_fer.data.cache.FaceTrackCache` made by ``video-fer prepare``.
        model_path: MediaPipe ``face_landmarker.task``.
        max_match_px: a cached face whose nearest MediaPipe face is farther than this (mean iBUG-68
            distance, source pixels) gets NaN references (``found`` False).

    Returns:
        counts ``{"tracks": done now, "skipped": already done, "frames": n, "unmatched": n, "median_match_px": x}``.
    """
    from video_fer.io import atomic_path
    from video_fer.video import VideoReader

    by_source: dict[str, list] = {}
    for track in cache.tracks:
        by_source.setdefault(track["source"], []).append(track)
    counts = {"tracks": 0, "skipped": 0, "frames": 0, "unmatched": 0}
    distances_all: list[np.ndarray] = []
    for source, tracks in sorted(by_source.items()):
        todo = [t for t in tracks if not reference_path(cache.root, t.track_id).exists()]
        counts["skipped"] += len(tracks) - len(todo)
        if not todo:
            continue
        wanted: dict[int, list[tuple[int, int]]] = {}  # source frame -> [(track number, position)]
        arrays = [cache.track_arrays(t.track_id) for t in todo]
        for number, track_arrays in enumerate(arrays):
            for position, frame in enumerate(track_arrays["frame_indices"]):
                wanted.setdefault(int(frame), []).append((number, position))
        results = [{"matrices": np.full((len(a["frame_indices"]), 4, 4), np.nan, np.float32),
                    "blendshapes": np.full((len(a["frame_indices"]), 52), np.nan, np.float32),
                    "match_px": np.full(len(a["frame_indices"]), np.inf, np.float32)} for a in arrays]
        names: list[str] | None = None
        reader = VideoReader(source)
        landmarker = _PoseLandmarker(model_path)
        try:
            last = max(wanted)
            for indices, frames in reader.iter_batches(batch_size=32, end=last + 1):
                for index, frame in zip(indices.tolist(), frames.numpy()):
                    faces = landmarker(frame, float(reader.timestamps[index]))  # every frame: VIDEO-mode tracking
                    for number, position in wanted.get(index, []):
                        cached = arrays[number]["landmarks_source"][position]
                        if not faces:
                            continue
                        distance = [float(np.linalg.norm(face[0] - cached, axis=-1).mean()) for face in faces]
                        best = int(np.argmin(distance))
                        if distance[best] <= max_match_px:
                            results[number]["matrices"][position] = faces[best][1]
                            results[number]["blendshapes"][position] = faces[best][2]
                            names = names or faces[best][3]
                        results[number]["match_px"][position] = distance[best]
        finally:
            landmarker.close()
            reader.close()
        for track, result in zip(todo, results):
            found = np.isfinite(result["matrices"]).all(axis=(1, 2))
            angles = np.full((len(found), 3), np.nan, np.float32)
            if found.any():
                angles[found] = head_angles_from_transformation(result["matrices"][found])
            final = reference_path(cache.root, track.track_id)
            final.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(final) as temp, open(temp, "wb") as handle:
                np.savez(handle, head_angles=angles, head_angle_names=np.array(HEAD_ANGLE_NAMES),
                         transformation_matrices=result["matrices"], blendshapes=result["blendshapes"],
                         blendshape_names=np.array(names or [""] * 52), match_px=result["match_px"], found=found)
            counts["tracks"] += 1
            counts["frames"] += len(found)
            counts["unmatched"] += int((~found).sum())
            distances_all.append(result["match_px"][found])
        if progress:
            print(f"references: {Path(source).name}: {len(todo)} track(s)", flush=True)
    if distances_all:
        counts["median_match_px"] = float(np.median(np.concatenate(distances_all)))
    return counts


@dataclass
class FrameReferences:
    """Reference signals of the frames of one track.

    Attributes:
        head_angles: ``(n, 3)`` pitch, yaw, roll in degrees (NaN where no match).
        blendshapes: ``(n, 52)`` MediaPipe scores; blendshape_names: their 52 names.
        found: ``(n,)`` bool.
    """

    head_angles: np.ndarray
    blendshapes: np.ndarray
    blendshape_names: list[str]
    found: np.ndarray


def read_references(cache_root: str | os.PathLike, track_id: str) -> FrameReferences:
    path = reference_path(cache_root, track_id)
    if not path.is_file():
        raise ReferenceError(f"{path}: no reference signals for track {track_id}; run "
                             "video_fer.evaluate.real_references.compute_references on the cache first")
    with np.load(path, allow_pickle=False) as data:
        return FrameReferences(data["head_angles"], data["blendshapes"], [str(n) for n in data["blendshape_names"]],
                               data["found"])


__all__ = ["AUMapping", "FrameReferences", "HEAD_ANGLE_NAMES", "ReferenceError", "compute_references",
           "default_au_mapping", "head_angles_from_transformation", "load_au_mapping", "read_references",
           "reference_path"]
