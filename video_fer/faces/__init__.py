"""Faces: landmarker backends behind one protocol (MediaPipe, face-alignment FAN, precomputed files).

Backends are imported only when created, so ``import video_fer.faces`` stays cheap and works
without mediapipe / face-alignment installed. The other modules (import them directly):
``types`` (Face, Landmarker), ``zoom_finder`` (the ``mediapipe-zoom`` front end), ``ibug68`` (every iBUG-68 index table), ``boxes``, ``detection``
(face detector scores), ``keyframes``, ``tracking`` (stable face ids), ``alignment``
(AlignmentSpec, similarity alignment), ``crops`` (crop geometry: exact and fast crops),
``head_pose``, ``model_files``.
"""
from __future__ import annotations

from video_fer.errors import ConfigError
from video_fer.faces.types import Face, Landmarker

LANDMARKER_NAMES = ("mediapipe-zoom", "mediapipe", "fan", "precomputed")


def create_landmarker(name: str, **options) -> Landmarker:
    """Build a landmarker by name; options go to its class.

    ``"mediapipe-zoom"`` (MediaPipe plus a search for the small and turned faces it misses,
    :mod:`video_fer.faces.zoom_finder`), ``"mediapipe"`` (MediaPipe's landmarker alone), ``"fan"``
    (face-alignment) or ``"precomputed"`` (landmark files).
    """
    if name == "mediapipe-zoom":
        from video_fer.faces.zoom_finder import ZoomFaceFinder

        return ZoomFaceFinder(**options)
    if name == "mediapipe":
        from video_fer.faces.mediapipe_backend import MediaPipeLandmarker

        return MediaPipeLandmarker(**options)
    if name == "fan":
        from video_fer.faces.fan_backend import FANLandmarker

        return FANLandmarker(**options)
    if name == "precomputed":
        from video_fer.faces.precomputed import PrecomputedLandmarker

        return PrecomputedLandmarker(**options)
    raise ConfigError(f"landmarker {name!r} is unknown; choose one of {', '.join(LANDMARKER_NAMES)}")


__all__ = ["Face", "Landmarker", "create_landmarker", "LANDMARKER_NAMES"]
