"""Pretraining augmentation (METHOD.md §1): a random crop of each frame, resized back.

Reference, at 256 px: every frame independently gets a square crop of side 200..223 px
placed anywhere inside the central 224 px of the face, resized back to 256 px. For
another crop size ``S`` the three numbers scale by ``S / 256``: central side
``round(224 S / 256)``, crop sides ``round(200 S / 256)`` .. ``floor(223 S / 256)``
(at 128 px: crops of 100..111 px inside the central 112 px). Sides and corners are
whole pixels, as in the reference (an integer crop of the image).

All crops of a batch are resized by one ``grid_sample`` call (an affine grid per
sample, ``align_corners=True``: the centres of the crop's corner pixels land on the
centres of the output's corner pixels), so nothing loops over the batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from video_fer.errors import VideoFerError

REFERENCE_SIZE = 256
REFERENCE_CENTRAL = 224
REFERENCE_MIN_SIDE = 200
REFERENCE_MAX_SIDE = 223


class AugmentInputError(VideoFerError, ValueError):
    """Frames or crop boxes given to the augmentation have the wrong shape or values."""


def crop_ranges(size: int) -> tuple[int, int, int]:
    """``(central, min_side, max_side)`` in pixels for crops of an ``size`` px face (scaled from 256 px)."""
    scale = size / REFERENCE_SIZE
    central = round(REFERENCE_CENTRAL * scale)
    min_side = round(REFERENCE_MIN_SIDE * scale)
    max_side = min(math.floor(REFERENCE_MAX_SIDE * scale), central)
    return central, min_side, max_side


def as_float_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, S, S, 3)`` frames or float ``(B, 3, S, S)`` images -> float ``(B, 3, S, S)`` in [0, 1]."""
    if frames.ndim != 4:
        raise AugmentInputError(f"frames: expected uint8 (B, S, S, 3) or float (B, 3, S, S), got shape {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        if frames.shape[-1] != 3:
            raise AugmentInputError(f"frames: uint8 frames must be (B, S, S, 3) RGB, got shape {tuple(frames.shape)}")
        return frames.permute(0, 3, 1, 2).float().div_(255.0)
    if frames.shape[1] != 3:
        raise AugmentInputError(f"frames: float images must be (B, 3, S, S), got shape {tuple(frames.shape)}")
    return frames.float()


def random_crop_boxes(batch: int, size: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Random square crops inside the central region, ``(B, 3)`` int64 ``(x0, y0, side)`` in pixels.

    ``side`` is uniform in ``[min_side, max_side]``; the corner is uniform over the
    positions that keep the crop inside the central ``central x central`` box.
    """
    central, min_side, max_side = crop_ranges(size)
    margin = (size - central) // 2
    side = torch.randint(min_side, max_side + 1, (batch,), generator=generator)
    room = (central - side + 1).double()  # number of allowed corner positions per axis
    corner = (torch.rand(batch, 2, generator=generator, dtype=torch.float64) * room[:, None]).long().clamp_max(
        (central - side)[:, None]
    )
    return torch.cat([corner + margin, side[:, None]], 1).to(device)


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, out_size: int | None = None) -> torch.Tensor:
    """Cut square boxes out of images and resize each to ``out_size``, one ``grid_sample`` for the batch.

    Args:
        images: float ``(B, C, S, S)``.
        boxes: ``(B, 3)`` ``(x0, y0, side)`` in pixels (top-left pixel index and side length).
        out_size: output side (default ``S``).

    Returns:
        float ``(B, C, out_size, out_size)``; bilinear, so a linear ramp stays exactly linear.
    """
    batch, _, height, width = images.shape
    if boxes.shape != (batch, 3):
        raise AugmentInputError(f"boxes: expected shape ({batch}, 3) (x0, y0, side), got {tuple(boxes.shape)}")
    out_size = out_size or height
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    x0, y0, side = boxes.unbind(1)
    # Normalised (align_corners=True) affine from output coordinates to input coordinates.
    scale_x = (side - 1) / (width - 1)
    scale_y = (side - 1) / (height - 1)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = scale_x
    theta[:, 1, 1] = scale_y
    theta[:, 0, 2] = 2 * x0 / (width - 1) + scale_x - 1
    theta[:, 1, 2] = 2 * y0 / (height - 1) + scale_y - 1
    grid = F.affine_grid(theta, [batch, images.shape[1], out_size, out_size], align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def random_crop_jitter(frames: torch.Tensor, generator: torch.Generator | None = None,
                       boxes: torch.Tensor | None = None) -> torch.Tensor:
    """The METHOD.md augmentation on a batch: each frame its own random crop, resized back.

    Args:
        frames: uint8 ``(B, S, S, 3)`` (decoded) or float ``(B, 3, S, S)`` in [0, 1].
        generator: seeds the crops (a ``torch.Generator`` on the CPU).
        boxes: optional fixed ``(B, 3)`` crops ``(x0, y0, side)`` instead of random ones.

    Returns:
        float ``(B, 3, S, S)`` in [0, 1].
    """
    images = as_float_images(frames)
    size = images.shape[-1]
    if images.shape[-2] != size:
        raise AugmentInputError(f"frames: expected square faces, got {tuple(images.shape[-2:])}")
    if boxes is None:
        boxes = random_crop_boxes(images.shape[0], size, generator, images.device)
    return crop_and_resize(images, boxes).clamp_(0.0, 1.0)


def pair_boxes(batch: int, size: int, generator: torch.Generator | None = None, same_crop: bool = False,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Crop boxes ``(2B, 3)`` for ``[source; target]``: independent (the reference), or **[ours]** ``same_crop``:
    each target gets its source's crop, so the crops add no relative motion to the pair (the same draws either way)."""
    boxes = random_crop_boxes(2 * batch, size, generator, device)
    if same_crop:
        boxes[batch:] = boxes[:batch]
    return boxes


def augment_pair(source: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None,
                 same_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent crops for the source and target frames of a batch of pairs, in one call.

    Args:
        source, target: uint8 ``(B, S, S, 3)`` or float ``(B, 3, S, S)``.
        same_crop: **[ours]** one crop per pair instead (see :func:`pair_boxes`).

    Returns:
        ``(source, target)`` float ``(B, 3, S, S)`` in [0, 1].
    """
    images = as_float_images(torch.cat([source, target]))
    both = random_crop_jitter(images, boxes=pair_boxes(len(source), images.shape[-1], generator, same_crop, images.device))
    return both[: len(source)], both[len(source):]


def crop_points(points: torch.Tensor, boxes: torch.Tensor, size: int, out_size: int | None = None) -> torch.Tensor:
    """Where points of the ``size`` px images land after :func:`crop_and_resize` with ``boxes``.

    Args:
        points: ``(B, P, 2)`` pixel coordinates (origin at the first pixel centre).
        boxes: ``(B, 3)`` ``(x0, y0, side)``.

    Returns:
        ``(B, P, 2)`` in pixels of the ``out_size`` (default ``size``) output: ``(x - x0) (out - 1) / (side - 1)``.
    """
    out_size = out_size or size
    boxes = boxes.to(device=points.device, dtype=points.dtype)
    return (points - boxes[:, None, :2]) * ((out_size - 1) / (boxes[:, 2:3, None] - 1))


def augment_pair_and_points(source: torch.Tensor, target: torch.Tensor, source_points: torch.Tensor,
                            target_points: torch.Tensor, generator: torch.Generator | None = None,
                            same_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`augment_pair` (the same crops for the same generator state) plus the landmarks moved with them.

    Args:
        source, target: uint8 ``(B, S, S, 3)`` or float ``(B, 3, S, S)``.
        source_points, target_points: ``(B, P, 2)`` crop pixels.

    Returns:
        ``(source, target, source_points, target_points)`` after the crops.
    """
    images = as_float_images(torch.cat([source, target]))
    boxes = pair_boxes(len(source), images.shape[-1], generator, same_crop, images.device)
    both = random_crop_jitter(images, boxes=boxes)
    points = crop_points(torch.cat([source_points, target_points]).float(), boxes, images.shape[-1])
    batch = len(source)
    return both[:batch], both[batch:], points[:batch], points[batch:]
