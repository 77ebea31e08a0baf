"""Fast face alignment for ``video-fer track``: the geometry of ``prepare``, in plain torch.

:func:`shrink_then_align` crops every face of a batch with the similarity of
:func:`~video_fer.faces.alignment.align_faces` (same five points, template and weights, so the
crop landmarks are identical), but cheaper at small crop sizes: each face's source window is
first shrunk by the integer factor ``k = floor(1 / scale)`` with a box (area) filter, leaving
the Gaussian anti-aliasing only the residual ``< 2x`` shrink.

The warp and the blur are written with ``torch.nn.functional`` (:func:`gaussian_blur` and
:func:`warp_windows` equal kornia's ``gaussian_blur2d`` and ``warp_affine(align_corners=True)``
to float rounding, tested), so ``track`` never imports kornia (~0.3-0.9 s of start-up).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_MIN_BLUR_SIGMA = 0.25  # as align_faces: below this the Gaussian barely changes a pixel


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image and replicated borders.

    Args:
        images: float ``(B, C, H, W)``; sigma: ``(B,)`` in pixels; kernel_size: odd, shared by all images.

    Returns:
        ``(B, C, H, W)``, equal to ``kornia.filters.gaussian_blur2d(images, kernel_size, sigma (B, 2),
        border_type="replicate")`` to float rounding.
    """
    batch, channels, height, width = images.shape
    offsets = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
    kernel = torch.exp(-offsets[None] ** 2 / (2.0 * sigma.float()[:, None] ** 2))  # (B, K)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (B*C, K), one per channel
    half = kernel_size // 2
    flat = images.reshape(1, batch * channels, height, width)
    # rows then columns, each a depthwise convolution with every image's own kernel
    flat = F.conv2d(F.pad(flat, (half, half, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, half, half), mode="replicate"), kernel[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def antialias(windows: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """:func:`~video_fer.faces.alignment.align_faces`' anti-aliasing rule: Gaussian sigma
    ``(1 / scale - 1) / 2`` source pixels, kernel ``2 ceil(3 max sigma) + 1``, on the images
    shrunk by more than that threshold; the others as given. ``(B, C, H, W)``, ``scales (B,)``."""
    sigma = ((1.0 / scales - 1.0) / 2.0).clamp(min=0.0)
    needs_blur = sigma > _MIN_BLUR_SIGMA
    if not needs_blur.any():
        return windows
    kernel_size = 2 * math.ceil(3.0 * float(sigma.max())) + 1
    rows = needs_blur.nonzero().flatten()
    return windows.index_put((rows,), gaussian_blur(windows[rows], sigma[rows], kernel_size))


def warp_windows(windows: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear warp of image ``b`` by ``matrices[b]`` (its pixels -> crop pixels), zeros outside.

    Pixel centres are the origin convention of :mod:`video_fer.faces.alignment`
    (``align_corners=True``). ``windows (B, C, H, W)`` float -> ``(B, C, size, size)``.
    """
    from video_fer.faces.alignment import apply_affine, invert_affine

    height, width = windows.shape[-2:]
    axis = torch.arange(size, dtype=torch.float32)
    crop_pixels = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(1, -1, 2)  # (1, S*S, 2) x, y
    source_pixels = apply_affine(invert_affine(matrices.float()), crop_pixels)  # (B, S*S, 2)
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = (source_pixels * scale - 1.0).reshape(-1, size, size, 2)
    return F.grid_sample(windows, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def shrink_then_align(frames: torch.Tensor, landmarks: torch.Tensor, positions: torch.Tensor, spec
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast alignment of the faces of a batch of frames.

    The Gaussian blur of the exact path (``prepare``'s :func:`align_in_regions`) runs on the
    full-resolution window and costs ~8x more at 128 px crops of 640x360 faces; the two crops
    differ by ~1 grey level of 255 on average on WolfgangLanger_Pexels.mp4, and are identical
    when no face needs a 2x shrink (256 px crops of such faces).

    Args:
        frames: uint8 ``(T, H, W, 3)``; landmarks: float32 ``(F, 68, 2)`` source pixels;
        positions: int64 ``(F,)`` frame of each face; spec: the bundle's ``AlignmentSpec``.

    Returns:
        ``(crops float (F, 3, S, S) in [0, 1], crop landmarks (F, 68, 2))``.
    """
    from video_fer.data.prepare import crop_regions
    from video_fer.faces.alignment import apply_affine, five_points, similarity_from_points

    template, weights = spec.template_pixels(), torch.tensor(spec.point_weights)
    matrices = similarity_from_points(five_points(landmarks), template, weights)
    factors = torch.floor(1.0 / matrices[:, :, 0].norm(dim=-1)).clamp(min=1).long().tolist()
    regions = crop_regions(spec, landmarks, frames.shape[1], frames.shape[2]).tolist()
    windows, window_landmarks = [], []
    for face, ((x0, y0, x1, y1), factor) in enumerate(zip(regions, factors)):
        # One strided copy per face: windows differ in size (as in prepare.gather_regions).
        window = frames[int(positions[face]), y0:y1, x0:x1].permute(2, 0, 1).unsqueeze(0).float()
        if factor > 1:
            window = F.avg_pool2d(window, factor, ceil_mode=True)
        windows.append(window[0])
        # pooled pixel j averages source pixels j*k .. j*k+k-1: its centre is at j*k + (k-1)/2
        window_landmarks.append((landmarks[face] - torch.tensor([x0, y0], dtype=torch.float32) - (factor - 1) / 2)
                                / factor)
    height = max(window.shape[1] for window in windows)
    width = max(window.shape[2] for window in windows)
    stacked = torch.zeros((len(windows), 3, height, width))  # zeros: what the warp's padding samples off-frame
    for face, window in enumerate(windows):
        stacked[face, :, : window.shape[1], : window.shape[2]] = window
    window_landmarks = torch.stack(window_landmarks)
    window_matrices = similarity_from_points(five_points(window_landmarks), template, weights)
    stacked = antialias(stacked, window_matrices[:, :, 0].norm(dim=-1))
    crops = warp_windows(stacked, window_matrices, spec.size)
    crops = crops.round_().clamp_(0, 255).div_(255.0)  # rounded like uint8 crops, as in training
    return crops, apply_affine(window_matrices, window_landmarks)
