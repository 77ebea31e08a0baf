"""One region mechanism for the region-attention heads (ACNN, RAN, prior attention, AHA, VA).

Everything here is a function on batches: landmarks ``(B, 68, 2)`` of aligned faces in
crop pixels (iBUG-68 order, origin at the centre of the top-left pixel, see
docs/ARCHITECTURE.md) go in; points ``(B, P, 2)`` or boxes ``(B, R, 4)`` come out, and two
samplers turn them into tensors:

- :func:`crop_resize` cuts boxes out of images (or feature maps) and resizes them
  (``(B, C, H, W)`` + ``(B, R, 4)`` -> ``(B, R, C, h, w)``), RoI-align style;
- :func:`point_windows` takes a fixed ``w x w`` window of a stride-``s`` feature map
  around each point (``(B, C, H, W)`` + ``(B, P, 2)`` -> ``(B, P, C, w, w)``).

Both are one ``grid_sample`` call for the whole batch (regions are stacked along the
output height), so no image is copied per region and nothing loops over the batch.

Boxes are ``(x0, y0, x1, y1)`` in pixel coordinates (same origin as the landmarks); a
box covering a whole ``S x S`` image is ``(-0.5, -0.5, S - 0.5, S - 0.5)``.
A map of stride ``s`` has its cell ``j`` centred on image pixel ``(j + 0.5) * s - 0.5``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from video_fer.errors import VideoFerError
from video_fer.faces.ibug68 import (LEFT_BROW, LEFT_EYE, MOUTH, MOUTH_LEFT, MOUTH_RIGHT, NOSE, NOSE_TIP, RIGHT_BROW,
                                    RIGHT_EYE)


class RegionInputError(VideoFerError, ValueError):
    """Landmarks, points, boxes or images given to the region functions have the wrong shape or values."""


# ACNN (Li et al., TIP 2019) 24 points. The paper lists its 16 landmarks 1-based as
# 19, 22, 23, 26 (brows), 39, 37, 44, 46 (eyes), 28, 30 (nose), 49, 51, 53, 55, 59, 57
# (mouth); 0-based here.
ACNN_LANDMARK_INDICES = (18, 21, 22, 25, 38, 36, 43, 45, 27, 29, 48, 50, 52, 54, 58, 56)
# One point per eye and per eyebrow as the midpoint of a landmark pair: eye centres are
# the middle of upper/lower lid (1-based 38&42, 44&48); the brow points sit between the
# brow centre and the upper lid below it (1-based 20&38, 25&45), where brow raises show.
ACNN_MIDPOINT_PAIRS = ((37, 41), (43, 47), (19, 37), (24, 44))
# [ours] the paper adds two points per cheek derived from the landmarks; we take the
# midpoints between the jaw contour and the nostril / mouth corner on each side
# (1-based 2&32, 4&49 left; 16&36, 14&55 right): the cheek-raiser (AU6) and dimple areas.
ACNN_CHEEK_PAIRS = ((1, 31), (3, 48), (15, 35), (13, 54))

# RAN fixed crops (Wang et al., TIP 2020) as (x0, y0, x1, y1) fractions of the face
# crop: top-left, top-right and bottom-centre crops of 0.75 of the side, and centred
# crops of 0.9 and 0.85 of the side.
RAN_FIXED_CROPS = (
    (0.0, 0.0, 0.75, 0.75),
    (0.25, 0.0, 1.0, 0.75),
    (0.125, 0.25, 0.875, 1.0),
    (0.05, 0.05, 0.95, 0.95),
    (0.075, 0.075, 0.925, 0.925),
)

# [ours] RAN landmark-centred crops: the five alignment points (eye centres, nose tip,
# mouth corners), each the centre of a square crop.
RAN_LANDMARK_GROUPS = (LEFT_EYE, RIGHT_EYE, (NOSE_TIP,), (MOUTH_LEFT,), (MOUTH_RIGHT,))

# Prior attention (2022): eyes + eyebrows in one block, the mouth in another.
PRIOR_ATTENTION_GROUPS = (LEFT_BROW + RIGHT_BROW + LEFT_EYE + RIGHT_EYE, MOUTH)
PRIOR_ATTENTION_NAMES = ("eyes_and_brows", "mouth")

# AHA (ICPR 2020): aligned facial parts, each bounded by its landmarks.
AHA_REGION_GROUPS = (LEFT_BROW + LEFT_EYE, RIGHT_BROW + RIGHT_EYE, NOSE, MOUTH)
AHA_REGION_NAMES = ("left_eye_and_brow", "right_eye_and_brow", "nose", "mouth")


def _check_landmarks(landmarks: torch.Tensor, name: str = "landmarks") -> torch.Tensor:
    if not isinstance(landmarks, torch.Tensor) or landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        shape = tuple(landmarks.shape) if hasattr(landmarks, "shape") else type(landmarks).__name__
        raise RegionInputError(f"{name}: expected a (B, 68, 2) iBUG-68 landmark tensor, got {shape}")
    return landmarks


def _image_size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def _clamp_boxes(boxes: torch.Tensor, image_size: int | Sequence[int]) -> torch.Tensor:
    """Clamp ``(..., 4)`` boxes to the image extent ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``."""
    height, width = _image_size_hw(image_size)
    low = boxes.new_tensor([-0.5, -0.5, -0.5, -0.5])
    high = boxes.new_tensor([width - 0.5, height - 0.5, width - 0.5, height - 0.5])
    return torch.maximum(torch.minimum(boxes, high), low)


# --------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------
def acnn_points(landmarks: torch.Tensor) -> torch.Tensor:
    """ACNN's 24 patch centres from iBUG-68 landmarks.

    Args:
        landmarks: ``(B, 68, 2)`` pixel coordinates.

    Returns:
        ``(B, 24, 2)``: the 16 landmarks of :data:`ACNN_LANDMARK_INDICES`, then the 4
        eye/brow midpoints of :data:`ACNN_MIDPOINT_PAIRS`, then the 4 cheek points of
        :data:`ACNN_CHEEK_PAIRS`.
    """
    landmarks = _check_landmarks(landmarks)
    pairs = torch.tensor(ACNN_MIDPOINT_PAIRS + ACNN_CHEEK_PAIRS, device=landmarks.device)  # (8, 2)
    midpoints = landmarks[:, pairs].mean(dim=2)  # (B, 8, 2)
    return torch.cat([landmarks[:, list(ACNN_LANDMARK_INDICES)], midpoints], dim=1)


# --------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------
def landmark_group_boxes(landmarks: torch.Tensor, groups: Sequence[Sequence[int]], image_size: int | Sequence[int],
                         margin: float = 10.0, square: bool = False) -> torch.Tensor:
    """Boxes bounding groups of landmarks, grown by ``margin`` pixels and clamped to the image.

    Args:
        landmarks: ``(B, 68, 2)`` pixel coordinates in the image the boxes are for.
        groups: R sequences of landmark indices.
        image_size: ``S`` or ``(H, W)`` of that image.
        margin: pixels added on every side (at the image's size).
        square: grow the shorter side to the longer one (around the centre) before clamping.

    Returns:
        ``(B, R, 4)`` boxes ``(x0, y0, x1, y1)``.
    """
    landmarks = _check_landmarks(landmarks)
    if len(groups) == 0 or any(len(group) == 0 for group in groups):
        raise RegionInputError(f"groups: expected non-empty landmark index groups, got {groups!r}")
    # Pad groups to one length by repeating their first index: min/max are unchanged.
    longest = max(len(group) for group in groups)
    index = torch.tensor([list(group) + [group[0]] * (longest - len(group)) for group in groups],
                         device=landmarks.device)  # (R, G)
    points = landmarks[:, index]  # (B, R, G, 2)
    low, high = points.amin(dim=2) - margin, points.amax(dim=2) + margin  # (B, R, 2)
    if square:
        centre, half = (low + high) / 2, (high - low).amax(dim=-1, keepdim=True) / 2
        low, high = centre - half, centre + half
    return _clamp_boxes(torch.cat([low, high], dim=-1), image_size)


def prior_attention_boxes(landmarks: torch.Tensor, image_size: int | Sequence[int], margin: float = 10.0) -> torch.Tensor:
    """Prior-attention blocks: eyes+eyebrows and mouth, bounded by their landmarks plus ``margin`` px.

    Returns:
        ``(B, 2, 4)`` boxes in the order of :data:`PRIOR_ATTENTION_NAMES`, clamped to the image.
    """
    return landmark_group_boxes(landmarks, PRIOR_ATTENTION_GROUPS, image_size, margin)


def aha_region_boxes(landmarks: torch.Tensor, image_size: int | Sequence[int], margin: float = 10.0,
                     square: bool = True) -> torch.Tensor:
    """AHA's aligned facial parts (:data:`AHA_REGION_NAMES`), square by default so parts keep their aspect.

    Returns:
        ``(B, 4, 4)`` boxes, clamped to the image.
    """
    return landmark_group_boxes(landmarks, AHA_REGION_GROUPS, image_size, margin, square=square)


def relative_boxes(batch_size: int, image_size: int | Sequence[int],
                   fractions: Sequence[Sequence[float]] = RAN_FIXED_CROPS, device=None) -> torch.Tensor:
    """Fixed boxes given as fractions ``(x0, y0, x1, y1)`` of the image (0 and 1 = outer edges).

    Returns:
        ``(B, R, 4)`` pixel boxes, the same for every face.
    """
    height, width = _image_size_hw(image_size)
    fractions = torch.as_tensor(fractions, dtype=torch.float32, device=device)
    if fractions.ndim != 2 or fractions.shape[1] != 4 or (fractions < 0).any() or (fractions > 1).any():
        raise RegionInputError(f"fractions: expected (R, 4) fractions in [0, 1], got {fractions.tolist()}")
    scale = fractions.new_tensor([width, height, width, height])
    return (fractions * scale - 0.5).expand(batch_size, -1, -1).clone()


def random_boxes(batch_size: int, num_boxes: int, image_size: int | Sequence[int],
                 scale_range: tuple[float, float] = (0.7, 0.95), generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """Random square crops (RAN's random cropping): side a random fraction of the image, position uniform.

    Args:
        scale_range: the side as a fraction of the shorter image side, drawn uniformly.
        generator: torch generator for reproducible draws.

    Returns:
        ``(B, R, 4)`` boxes inside the image.
    """
    low, high = scale_range
    if not 0 < low <= high <= 1:
        raise RegionInputError(f"scale_range: expected 0 < low <= high <= 1, got {scale_range}")
    height, width = _image_size_hw(image_size)
    uniform = torch.rand((batch_size, num_boxes, 3), generator=generator, device=device)
    side = (low + (high - low) * uniform[..., 0]) * min(height, width)  # (B, R)
    x0 = uniform[..., 1] * (width - side) - 0.5
    y0 = uniform[..., 2] * (height - side) - 0.5
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=-1)


def centred_boxes(points: torch.Tensor, side: float, image_size: int | Sequence[int], clamp: bool = True) -> torch.Tensor:
    """Square boxes of ``side`` pixels centred on points (landmark-centred crops).

    Args:
        points: ``(B, P, 2)`` pixel coordinates.
        clamp: clamp to the image (a box at the border then shrinks); ``False`` keeps the
            size and lets the sampler pad with zeros.

    Returns:
        ``(B, P, 4)`` boxes.
    """
    if points.ndim != 3 or points.shape[-1] != 2:
        raise RegionInputError(f"points: expected (B, P, 2), got {tuple(points.shape)}")
    half = side / 2
    boxes = torch.cat([points - half, points + half], dim=-1)
    return _clamp_boxes(boxes, image_size) if clamp else boxes


def landmark_centred_boxes(landmarks: torch.Tensor, image_size: int | Sequence[int], side_fraction: float = 0.5,
                           groups: Sequence[Sequence[int]] = RAN_LANDMARK_GROUPS) -> torch.Tensor:
    """RAN-style landmark crops: a square of ``side_fraction`` of the image around each group's mean point.

    Returns:
        ``(B, R, 4)`` boxes (not clamped: out-of-image parts are zero-padded when sampled).
    """
    landmarks = _check_landmarks(landmarks)
    height, width = _image_size_hw(image_size)
    centres = torch.stack([landmarks[:, list(group)].mean(dim=1) for group in groups], dim=1)  # (B, R, 2)
    return centred_boxes(centres, side_fraction * min(height, width), image_size, clamp=False)


def whole_image_box(batch_size: int, image_size: int | Sequence[int], device=None) -> torch.Tensor:
    """The box covering the whole image, ``(B, 1, 4)``."""
    return relative_boxes(batch_size, image_size, ((0.0, 0.0, 1.0, 1.0),), device=device)


# --------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------
def _to_grid_coordinates(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Map-cell coordinates ``(x, y)`` -> grid_sample's [-1, 1] with align_corners=True (cell centres at +-1)."""
    scale = points.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    return points * scale - 1.0


def _image_to_map(points: torch.Tensor, stride: float) -> torch.Tensor:
    """Image pixel coordinates -> cell coordinates of a stride-``stride`` map (cell j centred on (j+0.5)s-0.5)."""
    return (points + 0.5) / stride - 0.5


def _sample_stacked(inputs: torch.Tensor, cell_points: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """Bilinearly sample ``inputs (B, C, H, W)`` at ``cell_points (B, R, h, w, 2)`` -> ``(B, R, C, h / pool, w / pool)``.

    ``pool > 1`` averages ``pool x pool`` blocks of samples (``h`` and ``w`` multiples of ``pool``).
    """
    batch, regions, out_h, out_w, _ = cell_points.shape
    grid = _to_grid_coordinates(cell_points, inputs.shape[-2], inputs.shape[-1])
    # Regions stacked along the output height: one grid_sample for the whole batch.
    sampled = F.grid_sample(inputs, grid.reshape(batch, regions * out_h, out_w, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=True)
    if pool > 1:  # pool while still stacked: blocks never straddle two regions, and no copy is made first
        sampled = F.avg_pool2d(sampled, pool)
    return sampled.reshape(batch, inputs.shape[1], regions, out_h // pool, out_w // pool).transpose(1, 2)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, out_size: int | Sequence[int], stride: float = 1.0,
                samples_per_bin: int = 1) -> torch.Tensor:
    """Cut boxes out of images or feature maps and resize them (RoI-align with ``aligned=True`` semantics).

    Output pixel ``(i, j)`` of a box ``(x0, y0, x1, y1)`` of an ``h x w`` output is the
    average of ``samples_per_bin**2`` bilinear samples inside its bin; with one sample it
    is the bin centre ``x0 + (j + 0.5) (x1 - x0) / w``. Outside the input reads as zero.

    Args:
        images: ``(B, C, H, W)`` images (stride 1) or a stride-``stride`` feature map.
        boxes: ``(B, R, 4)`` boxes in *image* pixels.
        out_size: ``h`` or ``(h, w)``.
        stride: the input's stride relative to the image the boxes are in.
        samples_per_bin: sub-samples per output pixel and axis (anti-aliasing when shrinking).

    Returns:
        ``(B, R, C, h, w)``.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise RegionInputError(f"images: expected a float (B, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}; "
                               "convert uint8 images with .float() / 255")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != images.shape[0]:
        raise RegionInputError(f"boxes: expected ({images.shape[0]}, R, 4) boxes for {images.shape[0]} images, "
                               f"got {tuple(boxes.shape)}")
    out_h, out_w = _image_size_hw(out_size)
    n = int(samples_per_bin)
    boxes = _image_to_map(boxes.to(images.dtype).reshape(*boxes.shape[:2], 2, 2), stride).reshape(boxes.shape)
    # Sample positions as fractions of the box, sub-sampled n x n per output bin.
    fraction_y = (torch.arange(out_h * n, device=images.device, dtype=images.dtype) + 0.5) / (out_h * n)
    fraction_x = (torch.arange(out_w * n, device=images.device, dtype=images.dtype) + 0.5) / (out_w * n)
    x0, y0, x1, y1 = boxes.unbind(-1)  # (B, R) each
    xs = x0[..., None] + fraction_x * (x1 - x0)[..., None]  # (B, R, w*n)
    ys = y0[..., None] + fraction_y * (y1 - y0)[..., None]  # (B, R, h*n)
    cell_points = torch.stack(torch.broadcast_tensors(xs[:, :, None, :], ys[:, :, :, None]), dim=-1)
    return _sample_stacked(images, cell_points, pool=n)


def point_windows(feature_map: torch.Tensor, points: torch.Tensor, stride: float, window: int = 6) -> torch.Tensor:
    """A fixed ``window x window`` block of map cells around each point (ACNN's patches).

    The block is centred on the point (bilinear between cells), one cell apart, so an
    even window straddles the point symmetrically. Cells outside the map read as zero.

    Args:
        feature_map: ``(B, C, H, W)`` map of stride ``stride`` relative to the image.
        points: ``(B, P, 2)`` image pixel coordinates.
        window: cells per side.

    Returns:
        ``(B, P, C, window, window)``.
    """
    if feature_map.ndim != 4:
        raise RegionInputError(f"feature_map: expected (B, C, H, W), got {tuple(feature_map.shape)}")
    if points.ndim != 3 or points.shape[-1] != 2 or points.shape[0] != feature_map.shape[0]:
        raise RegionInputError(f"points: expected ({feature_map.shape[0]}, P, 2) points, got {tuple(points.shape)}")
    centres = _image_to_map(points.to(feature_map.dtype), stride)  # (B, P, 2)
    offsets = torch.arange(window, device=feature_map.device, dtype=feature_map.dtype) - (window - 1) / 2
    offset_grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="xy"), dim=-1)  # (w, w, 2) as (x, y)
    cell_points = centres[:, :, None, None, :] + offset_grid  # (B, P, w, w, 2)
    return _sample_stacked(feature_map, cell_points)
