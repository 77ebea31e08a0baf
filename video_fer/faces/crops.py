"""Crop geometry: where each face's aligned crop comes from in its frame, and two ways to cut it.

- :func:`crop_regions`: the integer source window each face's crop samples (from the
  similarity of :func:`~video_fer.faces.alignment.align_faces`);
- :func:`shrink_windows`: each face's window, first shrunk by the integer factor
  ``k = floor(1 / scale)`` with a box (area) filter, so the Gaussian anti-aliasing and the warp
  that follow handle only the residual ``< 2x`` shrink and cost the same for any face size;
- :func:`align_in_regions`: the crops of ``video-fer prepare`` (kornia) on those windows, with the
  matrices mapped back to source pixels (``shrink_first=False``: the full-resolution Gaussian of
  :func:`~video_fer.faces.alignment.align_faces`, whose cost grows with the face's size cubed);
- :func:`shrink_then_align`: the same crops for ``video-fer track``, without kornia.

The fast path's warp and blur are written with ``torch.nn.functional`` (:func:`gaussian_blur`
and :func:`warp_windows` equal kornia's ``gaussian_blur2d`` and
``warp_affine(align_corners=True)`` to float rounding, tested), so ``track`` never imports
kornia (~0.3-0.9 s of start-up). Frames are uint8 ``(T, H, W, 3)``; landmarks float32
``(F, 68, 2)`` source pixels with the pixel-centre origin of :mod:`video_fer.faces.alignment`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from video_fer.faces.alignment import align_faces, apply_affine, five_points, invert_affine, similarity_from_points

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
    height, width = windows.shape[-2:]
    axis = torch.arange(size, dtype=torch.float32)
    crop_pixels = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(1, -1, 2)  # (1, S*S, 2) x, y
    source_pixels = apply_affine(invert_affine(matrices.float()), crop_pixels)  # (B, S*S, 2)
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = (source_pixels * scale - 1.0).reshape(-1, size, size, 2)
    return F.grid_sample(windows, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


@dataclass
class ShrunkWindows:
    """Each face's source window, box-filtered by its integer factor (the input of both alignment paths).

    Attributes:
        windows: float ``(F, 3, h, w)`` (0..255), window f at the top-left, zeros elsewhere.
        landmarks: ``(F, 68, 2)`` in window pixels.
        origin: ``(F, 2)`` source position of window pixel ``(0, 0)``'s centre; factor: ``(F,)`` shrink factors
            (window pixel ``p`` is source pixel ``origin + factor * p``).
    """

    windows: torch.Tensor
    landmarks: torch.Tensor
    origin: torch.Tensor
    factor: torch.Tensor


def shrink_factors(landmarks: torch.Tensor, spec) -> torch.Tensor:
    """int64 ``(F,)`` integer shrink ``floor(1 / scale)`` (at least 1) of each face into the crop."""
    matrices = similarity_from_points(five_points(landmarks), spec.template_pixels(), torch.tensor(spec.point_weights))
    return torch.floor(1.0 / matrices[:, :, 0].norm(dim=-1)).clamp(min=1).long()


def shrink_windows(frames: torch.Tensor, landmarks: torch.Tensor, positions: torch.Tensor, spec) -> ShrunkWindows:
    """Cut each face's source window (:func:`crop_regions`) and average it down by ``k = floor(1 / scale)``.

    One pass over the window, so what follows (blur, warp) runs on about the crop's size whatever the face's
    size. ``frames`` uint8 ``(T, H, W, 3)``; ``landmarks`` ``(F, 68, 2)`` source pixels; ``positions`` ``(F,)``.
    """
    factors = shrink_factors(landmarks, spec).tolist()
    regions = crop_regions(spec, landmarks, frames.shape[1], frames.shape[2]).tolist()
    windows, origins = [], []
    for face, ((x0, y0, x1, y1), factor) in enumerate(zip(regions, factors)):
        # One strided copy per face: windows differ in size (as in gather_regions).
        window = frames[int(positions[face]), y0:y1, x0:x1].permute(2, 0, 1).unsqueeze(0).float()
        if factor > 1:
            window = F.avg_pool2d(window, factor, ceil_mode=True)
        windows.append(window[0])
        # pooled pixel j averages source pixels j*k .. j*k+k-1: its centre is at j*k + (k-1)/2
        origins.append([x0 + (factor - 1) / 2, y0 + (factor - 1) / 2])
    height = max(window.shape[1] for window in windows)
    width = max(window.shape[2] for window in windows)
    stacked = torch.zeros((len(windows), 3, height, width))  # zeros: what the warp's padding samples off-frame
    for face, window in enumerate(windows):
        stacked[face, :, : window.shape[1], : window.shape[2]] = window
    origin = torch.tensor(origins, dtype=torch.float32)
    factor = torch.tensor(factors, dtype=torch.float32)
    return ShrunkWindows(stacked, (landmarks - origin[:, None, :]) / factor[:, None, None], origin, factor)


def shrink_then_align(frames: torch.Tensor, landmarks: torch.Tensor, positions: torch.Tensor, spec
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast alignment of the faces of a batch of frames (``track``'s; no kornia import).

    The same windows as :func:`align_in_regions` (:func:`shrink_windows`), blurred and warped with the
    torch functions of this module; the crops equal :func:`align_in_regions`' to float rounding.

    Args:
        frames: uint8 ``(T, H, W, 3)``; landmarks: float32 ``(F, 68, 2)`` source pixels;
        positions: int64 ``(F,)`` frame of each face; spec: the bundle's ``AlignmentSpec``.

    Returns:
        ``(crops float (F, 3, S, S) in [0, 1], crop landmarks (F, 68, 2))``.
    """
    template, weights = spec.template_pixels(), torch.tensor(spec.point_weights)
    shrunk = shrink_windows(frames, landmarks, positions, spec)
    window_matrices = similarity_from_points(five_points(shrunk.landmarks), template, weights)
    stacked = antialias(shrunk.windows, window_matrices[:, :, 0].norm(dim=-1))
    crops = warp_windows(stacked, window_matrices, spec.size)
    crops = crops.round_().clamp_(0, 255).div_(255.0)  # rounded like uint8 crops, as in training
    return crops, apply_affine(window_matrices, shrunk.landmarks)


def crop_regions(spec, landmarks: torch.Tensor, frame_height: int, frame_width: int, margin: int = 2) -> torch.Tensor:
    """Integer source windows that hold everything each face's aligned crop samples.

    Args:
        spec: the :class:`~video_fer.faces.alignment.AlignmentSpec`.
        landmarks: float32 ``(B, 68, 2)`` source pixels.
        margin: extra pixels for the bilinear neighbours.

    Returns:
        int64 ``(B, 4)`` windows ``x0, y0, x1, y1`` (exclusive ends), clipped to the frame.
    """
    matrices = similarity_from_points(five_points(landmarks), spec.template_pixels(), torch.tensor(spec.point_weights))
    edge = spec.size - 0.5
    corners = torch.tensor([[-0.5, -0.5], [edge, -0.5], [-0.5, edge], [edge, edge]]).expand(len(landmarks), 4, 2)
    source_corners = apply_affine(invert_affine(matrices), corners)  # (B, 4, 2) where the crop's corners come from
    low = torch.floor(source_corners.amin(1)).long() - margin
    high = torch.ceil(source_corners.amax(1)).long() + margin + 1
    limit = torch.tensor([frame_width, frame_height])
    low = torch.minimum(low.clamp(min=0), limit)
    high = torch.maximum(torch.minimum(high, limit), low)
    return torch.cat([low, high], 1)


def gather_regions(frames: torch.Tensor, frame_position: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Cut one window per face out of its frame, padded with zeros to the largest window.

    Args:
        frames: uint8 ``(T, H, W, 3)``; frame_position: int64 ``(B,)`` frame of each face;
        regions: int64 ``(B, 4)`` windows from :func:`crop_regions`.

    Returns:
        uint8 ``(B, h, w, 3)``: window b at the top-left, zeros elsewhere (zeros are what
        the warp's zero padding would have sampled there: those pixels lie outside the frame).
    """
    sizes = regions[:, 2:] - regions[:, :2]  # (B, 2) width, height
    width, height = max(int(sizes[:, 0].max()), 1), max(int(sizes[:, 1].max()), 1)
    windows = torch.zeros((len(regions), height, width, 3), dtype=torch.uint8)
    # One strided copy per face: windows differ in size, and this is ~50x faster than an
    # advanced-indexing gather of the same pixels (measured on 32 faces of 640x360 frames).
    for face, (x0, y0, x1, y1) in enumerate(regions.tolist()):
        windows[face, :y1 - y0, :x1 - x0] = frames[int(frame_position[face]), y0:y1, x0:x1]
    return windows


def align_in_regions(frames: torch.Tensor, landmarks: torch.Tensor, frame_position: torch.Tensor, spec,
                     padding_mode: str = "zeros", shrink_first: bool = True):
    """``prepare``'s crops: :func:`~video_fer.faces.alignment.align_faces` (kornia) on per-face source windows.

    Only the window each crop samples is converted to float and warped (a face crop needs a few
    percent of a 1080p frame), and the matrices are moved back to source pixels. With
    ``shrink_first`` (default) each window is first averaged down by its integer factor
    (:func:`shrink_windows`), so the cost per face does not grow with the face's size (a 440 px face
    into a 256 px crop: the Gaussian anti-aliasing of the full-resolution window cost ~70 ms);
    the matrices and crop landmarks are the same, the pixels differ by the filter (a box then a
    narrower Gaussian, against one wide Gaussian): a fraction of a grey level on average (a batch
    where no face needs a 2x shrink takes the direct path: identical). With ``shrink_first=False`` the result
    equals ``align_faces(frames, landmarks, spec, frame_index=frame_position)`` to float rounding
    for ``padding_mode="zeros"``.

    Returns:
        ``(crops uint8 (B, S, S, 3), matrices float32 (B, 2, 3) source -> crop, landmarks (B, 68, 2) in the crop)``.
    """
    if shrink_first and len(landmarks) and int(shrink_factors(landmarks, spec).max()) > 1:
        shrunk = shrink_windows(frames, landmarks, frame_position, spec)
        aligned = align_faces(shrunk.windows, shrunk.landmarks, spec, padding_mode=padding_mode)
        # window -> source: x_window = (x_source - origin) / k, so A_source = A_window / k, t = t_window - A_source origin
        linear = aligned.matrices[..., :2] / shrunk.factor[:, None, None]
        translation = aligned.matrices[..., 2] - (linear @ shrunk.origin[..., None])[..., 0]
        crops = aligned.crops.round().clamp(0, 255).to(torch.uint8) if aligned.crops.dtype != torch.uint8 \
            else aligned.crops
        return crops.permute(0, 2, 3, 1).contiguous(), torch.cat([linear, translation[..., None]], -1), aligned.landmarks
    regions = crop_regions(spec, landmarks, frames.shape[1], frames.shape[2])
    windows = gather_regions(frames, frame_position, regions)
    offsets = regions[:, :2].float()  # (B, 2) window origin in source pixels
    aligned = align_faces(windows, landmarks - offsets[:, None, :], spec, padding_mode=padding_mode)
    linear = aligned.matrices[..., :2]
    translation = aligned.matrices[..., 2] - (linear @ offsets[..., None])[..., 0]  # window -> source coordinates
    matrices = torch.cat([linear, translation[..., None]], -1)
    return aligned.crops.permute(0, 2, 3, 1).contiguous(), matrices, aligned.landmarks
