"""Backward warping of images by displacement fields, and the fusion of two fields (METHOD.md §1).

A *field* (flow) is a ``(B, 2, H, W)`` tensor of displacements ``(dx, dy)`` in normalised
grid units: the image spans [-1, 1] in both axes and pixel ``i`` of ``S`` sits at
``-1 + 2 i / (S - 1)`` (``align_corners=True``). Warping is *backward*: output pixel ``p``
reads the input at ``clamp(p + T(p), -1, 1)``, so a field of constant ``dx = 2k / (S - 1)``
makes every output pixel show the input pixel ``k`` columns to its right.

Implementation: :func:`torch.nn.functional.grid_sample` directly. kornia's ``remap`` wraps
the same kernel but takes pixel coordinates and renormalises them; the method is stated in
normalised units with ``align_corners=True``, so calling ``grid_sample`` avoids a round trip
and keeps the exact convention in one visible place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_grid(size: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """The sampling grid that leaves a ``size x size`` image unchanged.

    Returns:
        ``(1, S, S, 2)``; ``grid[0, i, j] = (x_j, y_i)`` with ``x, y = linspace(-1, 1, S)``
        (grid_sample's ``(x, y)`` order).
    """
    coords = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)


def _check_image_and_flow(image: torch.Tensor, flow: torch.Tensor) -> None:
    if image.dim() != 4:
        raise ValueError(f"warp: `image` must be (B, C, H, W), got shape {tuple(image.shape)}")
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"warp: `flow` must be (B, 2, H, W) displacements (dx, dy), got shape {tuple(flow.shape)}")
    if image.shape[0] != flow.shape[0] or image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(
            f"warp: `image` {tuple(image.shape)} and `flow` {tuple(flow.shape)} must share batch size and H, W; "
            "resize the flow to the image first")
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"warp: expects square images (the TAE works on S x S faces), got {tuple(image.shape)}")


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``image`` by ``flow``: ``out(p) = image(clamp(p + flow(p), -1, 1))``.

    Bilinear sampling, zeros padding, ``align_corners=True``. The image is detached, so the
    gradient of anything computed from the result reaches ``flow`` only (METHOD.md §1: the
    pixels being warped are not trained through the warp).

    Args:
        image: ``(B, C, S, S)``.
        flow: ``(B, 2, S, S)`` displacements ``(dx, dy)`` in normalised units.

    Returns:
        ``(B, C, S, S)``, same dtype as ``image``.
    """
    _check_image_and_flow(image, flow)
    size = image.shape[-1]
    grid = identity_grid(size, device=flow.device, dtype=flow.dtype)
    sample_at = (grid + flow.permute(0, 2, 3, 1)).clamp(-1.0, 1.0)
    return F.grid_sample(image.detach().to(flow.dtype), sample_at, mode="bilinear",
                         padding_mode="zeros", align_corners=True).to(image.dtype)


def fuse_flows(action_out: torch.Tensor,
               pose_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fuse the action and pose fields with per-pixel attention (METHOD.md §1, "Warping and fusion").

    Args:
        action_out: ``(B, 3, H, W)`` action-decoder output: channels 0-1 field, channel 2 mask logit.
        pose_out: ``(B, 3, H, W)`` pose-decoder output, same layout.

    Returns:
        ``fused_flow (B, 2, H, W) = A_A * T_A + A_P * T_P``, ``action_weight A_A (B, 1, H, W)``,
        ``pose_weight A_P (B, 1, H, W)``, where ``(A_A, A_P)`` is the softmax of the two mask
        logits at each pixel (so ``A_A + A_P = 1``).
    """
    if action_out.shape != pose_out.shape or action_out.dim() != 4 or action_out.shape[1] != 3:
        raise ValueError(
            "fuse_flows: `action_out` and `pose_out` must both be (B, 3, H, W) decoder outputs, got "
            f"{tuple(action_out.shape)} and {tuple(pose_out.shape)}")
    logits = torch.cat((action_out[:, 2:3], pose_out[:, 2:3]), dim=1)
    weights = logits.softmax(dim=1)
    action_weight, pose_weight = weights[:, 0:1], weights[:, 1:2]
    fused_flow = action_weight * action_out[:, :2] + pose_weight * pose_out[:, :2]
    return fused_flow, action_weight, pose_weight


__all__ = ["fuse_flows", "identity_grid", "warp"]
