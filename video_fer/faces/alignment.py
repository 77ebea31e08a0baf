"""Similarity alignment of faces into square crops, batched with kornia.

A face is aligned by the similarity (scale, rotation, translation) that carries five
points of its iBUG-68 landmarks (two eye centres, nose tip, two mouth corners) onto
the five points of a template, fitted in closed form by weighted least squares, and
applied to the image with :func:`kornia.geometry.transform.warp_affine`.

Coordinate conventions (see docs/ARCHITECTURE.md):
- pixel coordinates ``(x, y)`` with the origin at the centre of the top-left pixel, so
  pixel ``(i, j)`` covers ``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``; kornia's
  ``align_corners=True`` uses exactly this convention, so ``matrix @ (x, y, 1)`` is
  where a source point lands in the crop, with no half-pixel shift;
- normalised crop coordinates ``(u, v)`` in ``[0, 1]`` describe the template
  independently of the crop size: ``0`` and ``1`` are the outer edges of the crop, so
  pixel ``= u * size - 0.5`` (the crop centre ``0.5`` is pixel ``(size - 1) / 2``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from video_fer.errors import ConfigError, CropMismatchError, VideoFerError
from video_fer.faces.ibug68 import LEFT_EYE, MOUTH_LEFT, MOUTH_RIGHT, NOSE_TIP, RIGHT_EYE, span


class AlignmentInputError(VideoFerError, ValueError):
    """Images, landmarks or frame indices given to the alignment have the wrong shape or values."""


# Mean frontal iBUG-68 face in normalised crop coordinates [0, 1], float32 (68, 2).
# Produced by tools/make_face_template.py: MediaPipe landmarks (mapped to iBUG-68) of the
# 8 faces in shared/data/images/{0-f1-su-ph,0-f15-hao-ph,single_face,multi_face}.jpg and
# the 72 frames of single_face.mp4 (one source), Procrustes-averaged, symmetrised, eye
# line horizontal, box centred with its largest side 168 px of 256, so the 68 points lie
# inside every 200 px augmentation crop of the central 224 px. Most sources smile, so the
# mouth corners sit a little wide and high for a neutral face. Re-run the tool to change it.
CANONICAL_LANDMARKS_68 = np.array(
    [
        [0.1719, 0.3227], [0.1733, 0.3879], [0.1826, 0.4904], [0.1983, 0.5637],
        [0.2242, 0.6309], [0.2739, 0.7020], [0.3349, 0.7541], [0.4159, 0.8018],
        [0.5000, 0.8172], [0.5841, 0.8018], [0.6651, 0.7541], [0.7261, 0.7020],
        [0.7758, 0.6309], [0.8017, 0.5637], [0.8174, 0.4904], [0.8267, 0.3879],
        [0.8281, 0.3227], [0.2316, 0.2260], [0.2601, 0.1983], [0.3046, 0.1828],
        [0.3637, 0.1843], [0.4312, 0.1936], [0.5688, 0.1936], [0.6363, 0.1843],
        [0.6954, 0.1828], [0.7399, 0.1983], [0.7684, 0.2260], [0.5000, 0.2744],
        [0.5000, 0.3389], [0.5000, 0.3960], [0.5000, 0.4628], [0.4181, 0.4781],
        [0.4613, 0.4887], [0.5000, 0.4917], [0.5387, 0.4887], [0.5819, 0.4781],
        [0.3000, 0.2949], [0.3293, 0.2787], [0.3722, 0.2765], [0.4208, 0.3015],
        [0.3781, 0.3058], [0.3345, 0.3056], [0.5792, 0.3015], [0.6278, 0.2765],
        [0.6707, 0.2787], [0.7000, 0.2949], [0.6655, 0.3056], [0.6219, 0.3058],
        [0.3574, 0.5741], [0.3898, 0.5561], [0.4577, 0.5415], [0.5000, 0.5474],
        [0.5423, 0.5415], [0.6102, 0.5561], [0.6426, 0.5741], [0.6084, 0.6235],
        [0.5618, 0.6533], [0.5000, 0.6651], [0.4382, 0.6533], [0.3916, 0.6235],
        [0.3690, 0.5757], [0.4188, 0.5675], [0.5000, 0.5700], [0.5812, 0.5675],
        [0.6310, 0.5757], [0.5790, 0.6097], [0.5000, 0.6236], [0.4210, 0.6097],
    ],
    dtype=np.float32,
)
CANONICAL_LANDMARKS_68.setflags(write=False)

FIVE_POINT_NAMES = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")

# Each eye weighs 8x the nose tip and each mouth corner: smiles and speech move the mouth
# corners and the nose tip shifts with head pitch, so a plain 5-point fit drags the eyes off
# the template (up to 5.2 px at 256 px on single_face.mp4; 3.1 px with 4x; 2.3 px with 8x,
# measured by tools/make_face_template.py); the eyes are the most rigid points under facial
# actions, and the other three still steady the scale when the head turns.
DEFAULT_POINT_WEIGHTS = (8.0, 8.0, 1.0, 1.0, 1.0)


def five_points(landmarks68):
    """Five alignment points from iBUG-68 landmarks.

    Args:
        landmarks68: ``(..., 68, 2)`` numpy array or torch tensor.

    Returns:
        ``(..., 5, 2)`` of the same type: left eye centre (mean of 36-41), right eye
        centre (mean of 42-47), nose tip (30), left mouth corner (48), right mouth
        corner (54); left/right as seen in the image.
    """
    if landmarks68.shape[-2:] != (68, 2):
        raise AlignmentInputError(f"landmarks68: expected shape (..., 68, 2), got {tuple(landmarks68.shape)}")
    left_eye = landmarks68[..., span(LEFT_EYE), :].mean(-2)
    right_eye = landmarks68[..., span(RIGHT_EYE), :].mean(-2)
    points = [left_eye, right_eye, landmarks68[..., NOSE_TIP, :],
              landmarks68[..., MOUTH_LEFT, :], landmarks68[..., MOUTH_RIGHT, :]]
    if isinstance(landmarks68, torch.Tensor):
        return torch.stack(points, dim=-2)
    return np.stack(points, axis=-2)


def normalised_to_pixels(points, size: int):
    """Normalised crop coordinates ``[0, 1]`` -> crop pixels (pixel-centre origin): ``u * size - 0.5``."""
    return points * size - 0.5


def pixels_to_normalised(points, size: int):
    """Crop pixels (pixel-centre origin) -> normalised crop coordinates: ``(x + 0.5) / size``."""
    return (points + 0.5) / size


@dataclass(frozen=True)
class AlignmentSpec:
    """How faces are aligned; saved with caches and model bundles so faces are cropped alike.

    Attributes:
        size: side of the square crop in pixels.
        template_points: five ``(u, v)`` points in normalised crop coordinates ``[0, 1]``,
            in the order of :data:`FIVE_POINT_NAMES`.
        point_weights: least-squares weight of each of the five points.
    """

    size: int = 256
    template_points: tuple[tuple[float, float], ...] = field(
        default_factory=lambda: tuple(tuple(round(float(c), 6) for c in p) for p in five_points(CANONICAL_LANDMARKS_68))
    )
    point_weights: tuple[float, ...] = DEFAULT_POINT_WEIGHTS

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 8:
            raise ConfigError(f"AlignmentSpec.size: expected an integer >= 8, got {self.size!r}")
        points = np.asarray(self.template_points, dtype=np.float64)
        if points.shape != (5, 2) or not np.isfinite(points).all():
            raise ConfigError(
                f"AlignmentSpec.template_points: expected 5 finite (u, v) pairs, got shape {points.shape}"
            )
        weights = np.asarray(self.point_weights, dtype=np.float64)
        if weights.shape != (5,) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(
                f"AlignmentSpec.point_weights: expected 5 non-negative weights with a positive sum, got {self.point_weights!r}"
            )
        # Normalise to plain tuples so equality and to_dict do not depend on the input container.
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "template_points", tuple((float(u), float(v)) for u, v in points))
        object.__setattr__(self, "point_weights", tuple(float(w) for w in weights))

    def template_pixels(self) -> torch.Tensor:
        """The five template points in crop pixels, float32 ``(5, 2)``."""
        points = torch.tensor(self.template_points, dtype=torch.float64)
        return normalised_to_pixels(points, self.size).float()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (written into caches and bundles)."""
        return {
            "method": "similarity_five_points",
            "size": self.size,
            "point_names": list(FIVE_POINT_NAMES),
            "template_points": [list(p) for p in self.template_points],
            "point_weights": list(self.point_weights),
            "coordinates": "normalised crop [0,1]; pixel = u * size - 0.5 (pixel-centre origin)",
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AlignmentSpec":
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` naming the bad or missing key."""
        method = data.get("method", "similarity_five_points")
        if method != "similarity_five_points":
            raise ConfigError(f"alignment.method: unknown method {method!r}; this version only reads 'similarity_five_points'")
        missing = [key for key in ("size", "template_points", "point_weights") if key not in data]
        if missing:
            raise ConfigError(f"alignment: missing key(s) {missing}; re-create the file with AlignmentSpec.to_dict()")
        return cls(
            size=data["size"],
            template_points=tuple(tuple(p) for p in data["template_points"]),
            point_weights=tuple(data["point_weights"]),
        )


def check_encoder_crops(crops: "AlignmentSpec | int", encoder: "AlignmentSpec | int", where: str) -> None:
    """Crops must be what the encoder was trained on: the same side and, when both are known, the same template.

    The one check of "crop side = encoder side" (pretraining cache, fine-tuning data, bundles).

    Args:
        crops: the alignment (or just the side in pixels) of the faces about to be encoded.
        encoder: the alignment the encoder recorded at export, or its input side in pixels.
        where: the input or setting at fault, named first in the message.

    Raises:
        CropMismatchError: (a ConfigError and a CheckpointError) ``"<where>: crops of A px but the encoder takes B px; ..."`` or
            ``"<where>: crops aligned differently from the encoder's ..."``.
    """
    crop_size = crops.size if isinstance(crops, AlignmentSpec) else int(crops)
    encoder_size = encoder.size if isinstance(encoder, AlignmentSpec) else int(encoder)
    if crop_size != encoder_size:
        raise CropMismatchError(f"{where}: crops of {crop_size} px but the encoder takes {encoder_size} px; align the faces "
                          f"at {encoder_size} px (`video-fer prepare --size {encoder_size}`, model.image_size="
                          f"{encoder_size}) or use an encoder trained on {crop_size} px crops")
    if isinstance(crops, AlignmentSpec) and isinstance(encoder, AlignmentSpec) and crops != encoder:
        raise CropMismatchError(f"{where}: crops aligned differently from the encoder's ({crops.to_dict()} vs "
                          f"{encoder.to_dict()}); prepare the faces with the encoder's alignment")


@dataclass
class AlignedFaces:
    """Result of :func:`align_faces`.

    Attributes:
        crops: ``(B, 3, S, S)`` float in [0, 1] (float input) or uint8 (uint8 input).
        matrices: float32 ``(B, 2, 3)`` mapping source-image pixels to crop pixels.
        landmarks: float32 ``(B, 68, 2)`` landmarks in crop pixels (``matrices`` applied).
        spec: the :class:`AlignmentSpec` used.
    """

    crops: torch.Tensor
    matrices: torch.Tensor
    landmarks: torch.Tensor
    spec: AlignmentSpec


def similarity_from_points(src, dst, weights=None) -> torch.Tensor:
    """Closed-form weighted least-squares similarity carrying ``src`` onto ``dst``.

    Minimises ``sum_n w_n |A src_n + t - dst_n|^2`` over ``A = s R`` (uniform scale and
    rotation, no reflection) and ``t``; this is Umeyama's solution restricted to 2-D,
    written with complex numbers: ``a + ib = sum w conj(s_c) d_c / sum w |s_c|^2`` on
    weighted-centred points.

    Args:
        src: ``(B, N, 2)`` points in the source frame (N >= 2).
        dst: ``(B, N, 2)`` or ``(N, 2)`` target points.
        weights: optional ``(N,)`` or ``(B, N)`` non-negative weights (default all 1).

    Returns:
        float32 ``(B, 2, 3)`` matrices ``[[a, -b, tx], [b, a, ty]]``.
    """
    src = torch.as_tensor(src)
    dst = torch.as_tensor(dst, device=src.device)
    if src.ndim != 3 or src.shape[-1] != 2 or src.shape[1] < 2:
        raise AlignmentInputError(f"src: expected shape (B, N>=2, 2), got {tuple(src.shape)}")
    if dst.shape[-2:] != src.shape[-2:]:
        raise AlignmentInputError(f"dst: expected shape (B, {src.shape[1]}, 2) or ({src.shape[1]}, 2), got {tuple(dst.shape)}")
    src64 = src.double()
    dst64 = dst.double().expand_as(src64)
    if weights is None:
        weights = torch.ones(src.shape[1], dtype=torch.float64, device=src.device)
    weights = torch.as_tensor(weights, dtype=torch.float64, device=src.device)
    if weights.shape[-1] != src.shape[1] or (weights < 0).any() or (weights.sum(-1) <= 0).any():
        raise AlignmentInputError(
            f"weights: expected {src.shape[1]} non-negative weights with a positive sum, got {weights.tolist()}"
        )
    weights = (weights / weights.sum(-1, keepdim=True)).expand(src.shape[:2]).unsqueeze(-1)  # (B, N, 1)

    src_mean = (weights * src64).sum(1, keepdim=True)
    dst_mean = (weights * dst64).sum(1, keepdim=True)
    src_c, dst_c = src64 - src_mean, dst64 - dst_mean
    src_var = (weights[..., 0] * (src_c ** 2).sum(-1)).sum(1)  # (B,)
    bad = ~torch.isfinite(src_var) | (src_var <= 1e-12) | ~torch.isfinite(dst64).all(-1).all(-1)
    if bad.any():
        raise AlignmentInputError(
            f"src: face(s) {bad.nonzero().flatten().tolist()} have coincident or non-finite points; "
            "drop them before fitting a similarity"
        )
    w = weights[..., 0]
    a = (w * (src_c[..., 0] * dst_c[..., 0] + src_c[..., 1] * dst_c[..., 1])).sum(1) / src_var
    b = (w * (src_c[..., 0] * dst_c[..., 1] - src_c[..., 1] * dst_c[..., 0])).sum(1) / src_var
    linear = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (B, 2, 2)
    translation = dst_mean[:, 0] - (linear @ src_mean[:, 0, :, None])[..., 0]
    return torch.cat([linear, translation[..., None]], -1).float()


def invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse of affine maps ``(..., 2, 3)`` (e.g. crop pixels -> source pixels), ``(..., 2, 3)``."""
    linear, translation = matrices[..., :2], matrices[..., 2:]
    inverse_linear = torch.linalg.inv(linear.double()).to(matrices.dtype)
    return torch.cat([inverse_linear, -inverse_linear @ translation], -1)


def apply_affine(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map points ``(B, N, 2)`` with affine matrices ``(B, 2, 3)`` -> ``(B, N, 2)``."""
    return points @ matrices[..., :2].transpose(-1, -2) + matrices[..., 2].unsqueeze(-2)


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 stays in 0..255 (rounded back after warping); float is used as given."""
    return images.float() if images.dtype == torch.uint8 else images


def _restore_dtype(crops: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        return crops.round().clamp_(0, 255).to(torch.uint8)
    return crops


def _antialias(source: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Low-pass the images that are shrunk by the warp, so bilinear sampling does not alias.

    Args:
        source: ``(N, C, H, W)`` float images (never modified in place).
        scales: ``(N,)`` crop pixels per source pixel for each image (< 1 = shrinking).

    Returns:
        ``(N, C, H, W)``: Gaussian-blurred with sigma ``(1 / scale - 1) / 2`` source pixels
        (kornia's anti-aliasing rule for resizing) where that exceeds 0.25 px; as given otherwise.
    """
    from kornia.filters import gaussian_blur2d  # imported on use: kornia costs ~0.3-0.9 s of start-up

    sigma = ((1.0 / scales - 1.0) / 2.0).clamp(min=0.0)
    needs_blur = sigma > 0.25  # below this the Gaussian barely changes a pixel: skip the cost
    if not needs_blur.any():
        return source
    kernel = 2 * math.ceil(3.0 * float(sigma.max())) + 1
    rows = needs_blur.nonzero().flatten()
    blurred = gaussian_blur2d(source[rows], kernel, sigma[rows, None].expand(-1, 2).float(), border_type="replicate")
    return source.index_put((rows,), blurred.to(source.dtype))


def _slot_within_frame(frame_slot: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, int]:
    """Rank of each face among the faces of its frame (0, 1, ...) and the largest count."""
    order = torch.argsort(frame_slot, stable=True)
    counts = torch.bincount(frame_slot, minlength=num_frames)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(frame_slot)
    slot[order] = torch.arange(frame_slot.numel(), device=frame_slot.device) - starts[frame_slot[order]]
    return slot, int(counts.max())


def _warp_packed(frames: torch.Tensor, frame_slot: torch.Tensor, matrices: torch.Tensor, size: int,
                 padding_mode: str) -> torch.Tensor:
    """Warp several faces per frame with one ``grid_sample`` without copying any frame.

    The crops of the faces of one frame are laid side by side in one wide output
    ``(U, C, S, K*S)``, K being the largest number of faces in a frame; empty slots
    sample outside the frame.

    Args:
        frames: ``(U, C, H, W)`` float, each frame once.
        frame_slot: ``(B,)`` which of the U frames each face comes from.
        matrices: ``(B, 2, 3)`` source pixels -> crop pixels.

    Returns:
        ``(B, C, S, S)`` crops, identical (to float rounding) to ``warp_affine``.
    """
    num_frames, _, height, width = frames.shape
    slot, per_frame = _slot_within_frame(frame_slot, num_frames)
    axis = torch.arange(size, dtype=torch.float32, device=frames.device)
    crop_pixels = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(1, -1, 2)  # (1, S*S, 2) x, y
    source_pixels = apply_affine(invert_affine(matrices.float()), crop_pixels)  # (B, S*S, 2)
    # align_corners=True: pixel centres 0 and W-1 map to -1 and +1.
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=frames.device)
    face_grids = (source_pixels * scale - 1.0).reshape(-1, size, size, 2)
    grid = torch.full((num_frames, size, per_frame, size, 2), -3.0, device=frames.device)  # outside -> padding
    grid[frame_slot, :, slot] = face_grids
    wide = F.grid_sample(frames, grid.reshape(num_frames, size, per_frame * size, 2), mode="bilinear",
                         padding_mode=padding_mode, align_corners=True)
    return wide.reshape(num_frames, frames.shape[1], size, per_frame, size)[frame_slot, :, :, slot]


def align_faces(images, landmarks68, spec: AlignmentSpec | None = None, frame_index=None,
                padding_mode: str = "zeros", antialias: bool = True) -> AlignedFaces:
    """Crop and align faces with a similarity fitted to five landmark points.

    Args:
        images: either one image per face, ``(B, 3, H, W)`` float in [0, 1] or uint8;
            or decoded frames ``(T, H, W, 3)`` uint8 (or float) with ``frame_index``
            giving each face's frame (several faces of one frame share that frame:
            it is converted once and never copied per face).
        landmarks68: ``(B, 68, 2)`` iBUG-68 landmarks in source pixels.
        spec: crop size, template and weights (default :class:`AlignmentSpec`).
        frame_index: ``(B,)`` int, the frame of each face; needed for ``(T, H, W, 3)``
            frames unless T == B (one face per frame, in order).
        padding_mode: what the crop shows outside the source image: ``"zeros"``,
            ``"border"`` or ``"reflection"``.
        antialias: blur a source before shrinking it (a face larger than the crop), with
            the Gaussian of :func:`_antialias`; for frames holding several faces the
            frame is blurred for its most shrunk face.

    Returns:
        :class:`AlignedFaces` with crops ``(B, 3, S, S)`` of the input dtype,
        matrices ``(B, 2, 3)`` (source pixels -> crop pixels) and crop landmarks.
    """
    spec = spec or AlignmentSpec()
    images = torch.as_tensor(images)
    landmarks68 = torch.as_tensor(landmarks68, device=images.device).float()
    if landmarks68.ndim != 3 or landmarks68.shape[1:] != (68, 2):
        raise AlignmentInputError(f"landmarks68: expected shape (B, 68, 2), got {tuple(landmarks68.shape)}")
    if images.ndim != 4:
        raise AlignmentInputError(f"images: expected (B, 3, H, W) images or (T, H, W, 3) frames, got {tuple(images.shape)}")
    channels_last = images.shape[-1] == 3 and images.shape[1] != 3
    if not channels_last and images.shape[1] != 3:
        raise AlignmentInputError(f"images: expected 3 RGB channels, got shape {tuple(images.shape)}")
    batch = landmarks68.shape[0]
    not_finite = ~torch.isfinite(landmarks68).all(-1).all(-1)
    if not_finite.any():
        raise AlignmentInputError(f"landmarks68: face(s) {not_finite.nonzero().flatten().tolist()} have non-finite points")

    source_points = five_points(landmarks68)
    target_points = spec.template_pixels().to(images.device)
    weights = torch.tensor(spec.point_weights, device=images.device)
    matrices = similarity_from_points(source_points, target_points.expand(batch, 5, 2), weights)
    aligned_landmarks = apply_affine(matrices, landmarks68)
    scales = matrices[:, :, 0].norm(dim=-1)  # crop pixels per source pixel (similarity: sqrt(a^2 + b^2))
    size = spec.size

    if frame_index is None and images.shape[0] != batch:
        raise AlignmentInputError(
            f"images: {images.shape[0]} images for {batch} faces; give frame_index (B,) saying which frame each face is in"
        )
    if frame_index is not None:
        frame_index = torch.as_tensor(frame_index, dtype=torch.long, device=images.device).reshape(-1)
        if frame_index.numel() != batch:
            raise AlignmentInputError(f"frame_index: expected {batch} entries (one per face), got {frame_index.numel()}")
        if batch and (frame_index.min() < 0 or frame_index.max() >= images.shape[0]):
            raise AlignmentInputError(
                f"frame_index: values must lie in [0, {images.shape[0] - 1}] (the frames given), got "
                f"[{int(frame_index.min())}, {int(frame_index.max())}]"
            )
    if batch == 0:
        crops = torch.zeros((0, 3, size, size), dtype=images.dtype, device=images.device)
        return AlignedFaces(crops, matrices, aligned_landmarks, spec)

    used_frames, frame_slot = (None, None) if frame_index is None else torch.unique(frame_index, return_inverse=True)
    if used_frames is None or used_frames.numel() == batch:  # one face per image: a plain batched kornia warp
        from kornia.geometry.transform import warp_affine  # imported on use, like gaussian_blur2d

        source = images if frame_index is None else images[frame_index]
        source = _as_float_images(source.permute(0, 3, 1, 2) if channels_last else source)
        if antialias:
            source = _antialias(source, scales)
        crops = warp_affine(source, matrices, (size, size), mode="bilinear", padding_mode=padding_mode,
                            align_corners=True)
    else:  # several faces share a frame: convert each used frame once, never copy it per face
        source = images[used_frames]
        source = _as_float_images(source.permute(0, 3, 1, 2) if channels_last else source)
        if antialias:
            frame_scales = torch.full((used_frames.numel(),), float("inf"), device=images.device)
            source = _antialias(source, frame_scales.scatter_reduce(0, frame_slot, scales, reduce="amin"))
        crops = _warp_packed(source, frame_slot, matrices, size, padding_mode)
    return AlignedFaces(_restore_dtype(crops, images.dtype), matrices, aligned_landmarks, spec)
