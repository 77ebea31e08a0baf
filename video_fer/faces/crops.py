"""Crop geometry: where each face's aligned crop comes from in its frame, and two ways to cut it.

- :func:`crop_regions`: the integer source window each face's crop samples (from the
  similarity of :func:`~video_fer.faces.alignment.align_faces`);
- :func:`shrink_windows`: each face's window, first resized (antialiased bilinear, on uint8) by the
  exact factor that leaves the warp a shrink of at most 1.5x, the largest that
  :func:`~video_fer.faces.alignment.align_faces` warps without a Gaussian; so the warp that
  follows needs no blur and the cost per face is about flat in the face's size;
- :func:`align_in_regions`: the crops of ``video-fer prepare`` from those windows, with the source ->
  crop matrices of :func:`~video_fer.faces.alignment.align_faces` (``shrink_first=False``: the
  full-resolution Gaussian of :func:`~video_fer.faces.alignment.align_faces`, whose cost grows with
  the face's size);
- :func:`shrink_then_align`: the same crops for ``video-fer track`` (as floats in [0, 1]).

The warp is written with ``torch.nn.functional`` (:func:`warp_windows` equals kornia's
``warp_affine(align_corners=True)`` to float rounding, tested), so ``track`` and ``prepare`` never import
kornia (~0.3-0.9 s of start-up). Frames are uint8 ``(T, H, W, 3)``; landmarks float32
``(F, 68, 2)`` source pixels with the pixel-centre origin of :mod:`video_fer.faces.alignment`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from video_fer.faces.alignment import align_faces, apply_affine, five_points, invert_affine, similarity_from_points


def warp_windows(windows: torch.Tensor, matrices: torch.Tensor, size: int, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear warp of image ``b`` by ``matrices[b]`` (its pixels -> crop pixels), ``padding_mode`` outside.

    Pixel centres are the origin convention of :mod:`video_fer.faces.alignment`
    (``align_corners=True``). ``windows (B, C, H, W)`` float -> ``(B, C, size, size)``.
    """
    height, width = windows.shape[-2:]
    axis = torch.arange(size, dtype=torch.float32)
    crop_pixels = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(1, -1, 2)  # (1, S*S, 2) x, y
    source_pixels = apply_affine(invert_affine(matrices.float()), crop_pixels)  # (B, S*S, 2)
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = (source_pixels * scale - 1.0).reshape(-1, size, size, 2)
    return F.grid_sample(windows, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


# The warp shrinks by up to this factor without blurring first: align_faces' Gaussian sigma (1 / scale - 1) / 2
# reaches its 0.25 px threshold there, so faces up to 1.5x the crop keep exactly the direct path's crops.
MAX_WARP_SHRINK = 1.5


@dataclass
class ShrunkWindows:
    """Each face's source window, resized so that the warp into the crop shrinks by at most ``MAX_WARP_SHRINK``.

    Attributes:
        windows: float ``(F, 3, h, w)`` (0..255), window f at the top-left, zeros elsewhere.
        matrices: ``(F, 2, 3)`` source pixels -> crop pixels (:func:`face_matrices`, as ``align_faces``).
        window_matrices: ``(F, 2, 3)`` window pixels -> crop pixels (what the warp uses).
        origin: ``(F, 2)`` source position of window pixel ``(0, 0)``'s centre; factor: ``(F, 2)`` source pixels per
            window pixel along x and y (window pixel ``p`` is source pixel ``origin + factor * p``).
    """

    windows: torch.Tensor
    matrices: torch.Tensor
    window_matrices: torch.Tensor
    origin: torch.Tensor
    factor: torch.Tensor


def face_matrices(landmarks: torch.Tensor, spec) -> torch.Tensor:
    """``(F, 2, 3)`` source pixels -> crop pixels, the similarity of :func:`~video_fer.faces.alignment.align_faces`."""
    return similarity_from_points(five_points(landmarks), spec.template_pixels(), torch.tensor(spec.point_weights))


def shrink_windows(frames: torch.Tensor, landmarks: torch.Tensor, positions: torch.Tensor, spec) -> ShrunkWindows:
    """Cut each face's source window (:func:`crop_regions`) and resize it by ``(1 / scale) / MAX_WARP_SHRINK``
    where that exceeds 1, with an antialiased bilinear filter on the uint8 pixels.

    The resize is one pass over the window (torch's uint8 SIMD path), and the warp that follows runs on a window
    of at most 1.5x the crop's side without a blur, so the cost per face stays about flat in the face's size.
    ``frames`` uint8 ``(T, H, W, 3)``; ``landmarks`` ``(F, 68, 2)`` source pixels; ``positions`` ``(F,)``.
    """
    matrices = face_matrices(landmarks, spec)
    shrinks = (1.0 / (matrices[:, :, 0].norm(dim=-1) * MAX_WARP_SHRINK)).tolist()
    regions = crop_regions(spec, landmarks, frames.shape[1], frames.shape[2]).tolist()
    windows, origins, factors = [], [], []
    for face, ((x0, y0, x1, y1), shrink) in enumerate(zip(regions, shrinks)):
        window = frames[int(positions[face]), y0:y1, x0:x1].permute(2, 0, 1).unsqueeze(0)  # uint8 view (1, 3, h, w)
        height, width = y1 - y0, x1 - x0
        if shrink > 1.0 and height > 0 and width > 0:
            size = (max(1, round(height / shrink)), max(1, round(width / shrink)))
            window = F.interpolate(window, size=size, mode="bilinear", antialias=True, align_corners=False)
            # align_corners=False: window pixel j's centre is source pixel (j + 0.5) * k - 0.5 (k = source / window)
            factor_x, factor_y = width / size[1], height / size[0]
            origins.append([x0 + (factor_x - 1) / 2, y0 + (factor_y - 1) / 2])
            factors.append([factor_x, factor_y])
        else:
            origins.append([x0, y0])
            factors.append([1.0, 1.0])
        windows.append(window[0])
    height = max(max(window.shape[1] for window in windows), 1)
    width = max(max(window.shape[2] for window in windows), 1)
    stacked = torch.zeros((len(windows), 3, height, width))  # zeros: what the warp's padding samples off-frame
    for face, window in enumerate(windows):
        stacked[face, :, : window.shape[1], : window.shape[2]] = window  # uint8 -> float on the copy
    origin = torch.tensor(origins, dtype=torch.float32).reshape(-1, 2)
    factor = torch.tensor(factors, dtype=torch.float32).reshape(-1, 2)
    # crop = A source + t and source = origin + factor * window, so crop = (A diag(factor)) window + (A origin + t)
    linear = matrices[..., :2] * factor[:, None, :]
    translation = matrices[..., 2] + (matrices[..., :2] @ origin[..., None])[..., 0]
    return ShrunkWindows(stacked, matrices, torch.cat([linear, translation[..., None]], -1), origin, factor)


def shrink_then_align(frames: torch.Tensor, landmarks: torch.Tensor, positions: torch.Tensor, spec
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast alignment of the faces of a batch of frames (``track``'s; no kornia import).

    The crops of :func:`align_in_regions` (same windows, same warp) as floats.

    Args:
        frames: uint8 ``(T, H, W, 3)``; landmarks: float32 ``(F, 68, 2)`` source pixels;
        positions: int64 ``(F,)`` frame of each face; spec: the bundle's ``AlignmentSpec``.

    Returns:
        ``(crops float (F, 3, S, S) in [0, 1], crop landmarks (F, 68, 2))``.
    """
    shrunk = shrink_windows(frames, landmarks, positions, spec)
    crops = warp_windows(shrunk.windows, shrunk.window_matrices, spec.size)
    crops = crops.round_().clamp_(0, 255).div_(255.0)  # rounded like uint8 crops, as in training
    return crops, apply_affine(shrunk.matrices, landmarks)


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
    """``prepare``'s crops: per-face source windows warped by :func:`~video_fer.faces.alignment.align_faces`' similarity.

    Only the window each crop samples is converted to float and warped (a face crop needs a few
    percent of a 1080p frame). With ``shrink_first`` (default) each window is first resized by the
    exact factor that leaves the warp at most a 1.5x shrink (:func:`shrink_windows`), so the cost per
    face does not grow with the face's size (the full-resolution Gaussian cost ~20 ms for a 300 px face and
    ~60 ms for a 440 px face into a 256 px crop). The matrices and crop landmarks are those of
    ``align_faces``; the pixels of faces up to 1.5x the crop are the same (to float rounding), larger
    faces differ by the filter (antialiased bilinear then bilinear, against a Gaussian then bilinear): a
    fraction of a grey level on average (``tools/bench_alignment.py``). With ``shrink_first=False`` the result
    equals ``align_faces(frames, landmarks, spec, frame_index=frame_position)`` to float rounding
    for ``padding_mode="zeros"``.

    Returns:
        ``(crops uint8 (B, S, S, 3), matrices float32 (B, 2, 3) source -> crop, landmarks (B, 68, 2) in the crop)``.
    """
    if shrink_first:
        shrunk = shrink_windows(frames, landmarks, frame_position, spec)
        crops = warp_windows(shrunk.windows, shrunk.window_matrices, spec.size, padding_mode)
        crops = crops.round_().clamp_(0, 255).to(torch.uint8)
        return crops.permute(0, 2, 3, 1).contiguous(), shrunk.matrices, apply_affine(shrunk.matrices, landmarks)
    regions = crop_regions(spec, landmarks, frames.shape[1], frames.shape[2])
    windows = gather_regions(frames, frame_position, regions)
    offsets = regions[:, :2].float()  # (B, 2) window origin in source pixels
    aligned = align_faces(windows, landmarks - offsets[:, None, :], spec, padding_mode=padding_mode)
    linear = aligned.matrices[..., :2]
    translation = aligned.matrices[..., 2] - (linear @ offsets[..., None])[..., 0]  # window -> source coordinates
    matrices = torch.cat([linear, translation[..., None]], -1)
    return aligned.crops.permute(0, 2, 3, 1).contiguous(), matrices, aligned.landmarks
