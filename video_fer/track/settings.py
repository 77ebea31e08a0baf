"""What ``video-fer track`` processes and how: :class:`TrackSettings` and the landmarker it builds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from video_fer.errors import ConfigError
from video_fer.faces.keyframes import DEFAULT_LANDMARK_EVERY

DEFAULT_BATCH_SIZE = 32
PRECISIONS = ("float32", "bfloat16")


@dataclass
class TrackSettings:
    """What to process and how.

    Attributes:
        every: process every N-th frame (1 = all).
        start, end: frame range ``[start, end)`` (None = to the end).
        batch_size: frames decoded and faces encoded per step.
        landmarker: ``"mediapipe-zoom"`` (default: MediaPipe plus a search for the small and turned faces it
            misses, :mod:`video_fer.faces.zoom_finder`), ``"mediapipe"`` (MediaPipe alone), ``"fan"`` or
            ``"precomputed"``.
        landmarker_options: options of :func:`video_fer.faces.create_landmarker` (e.g.
            ``model_path``, ``num_faces``, ``detector_scores``).
        tracker_options: :class:`~video_fer.faces.tracking.FaceTracker` options.
        identity_options: :class:`~video_fer.faces.identity.PersonTracker` options (face ids across gaps;
            ``{"link": False, "min_frames": 1}``: the FaceTracker's ids, nothing dropped).
        pipelined: landmarks in a background thread while the network runs (two cores).
        torch_threads: intra-op threads of the network (default 1: the landmarker keeps the other core
            busy, and tiny batched convolutions gain little from more threads on a loaded machine).
        channels_last: run the encoder in channels-last memory format (faster convolutions on CPU).
        confidence_every: MediaPipe (either landmarker) only: run the face detector for the ``confidence`` column on
            every N-th processed frame (and where a new face appears), see
            :class:`~video_fer.faces.detection.SparseDetectorConfidence`; 0 = the landmarker's own per-frame scores (pass
            ``landmarker_options={"detector_scores": True}`` for MediaPipe's detector on every frame).
        exact_alignment: the reference crops (Gaussian anti-aliasing of the whole window at full
            resolution, ``align_in_regions(shrink_first=False)``); default: :func:`shrink_then_align`, the
            crops ``video-fer prepare`` makes, same geometry, a cost that does not grow with face size.
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
    landmarker: str = "mediapipe-zoom"
    landmarker_options: dict[str, Any] = field(default_factory=dict)
    tracker_options: dict[str, Any] = field(default_factory=dict)
    identity_options: dict[str, Any] = field(default_factory=dict)
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


MEDIAPIPE_LANDMARKERS = ("mediapipe-zoom", "mediapipe")


def default_landmarker_options(name: str, blendshapes: bool = False) -> dict[str, Any]:
    """Track's defaults: MediaPipe with blendshapes only when the default's AU or expression columns need
    them, without its per-frame detector pass (confidence comes from
    :class:`~video_fer.faces.detection.SparseDetectorConfidence`), up to 4 faces (8 with ``mediapipe-zoom``,
    which finds the small faces of groups)."""
    if name == "mediapipe-zoom":
        return {"blendshapes": bool(blendshapes), "num_faces": 8, "detector_scores": False}
    if name != "mediapipe":
        return {}
    return {"mode": "video", "blendshapes": bool(blendshapes), "num_faces": 4, "detector_scores": False}


def create_track_landmarker(settings: TrackSettings, blendshapes: bool = False):
    """The landmarker of a run; ``blendshapes``: the bundle's default columns need them."""
    from video_fer.faces import create_landmarker

    options = {**default_landmarker_options(settings.landmarker, blendshapes), **settings.landmarker_options}
    return create_landmarker(settings.landmarker, **options)


def uses_sparse_confidence(settings: TrackSettings) -> bool:
    """MediaPipe without its per-frame detector scores, and confidence_every > 0."""
    options = {**default_landmarker_options(settings.landmarker), **settings.landmarker_options}
    return settings.landmarker in MEDIAPIPE_LANDMARKERS and settings.confidence_every > 0 \
        and not options.get("detector_scores")


def expected_rows(num_frames: int, settings: TrackSettings) -> int:
    """Frames processed for a clip of ``num_frames`` (the row count when every frame has at most one face)."""
    end = num_frames if settings.end is None else min(settings.end, num_frames)
    return len(range(settings.start, end, settings.every))
