"""Landmark-guided fields **[ours]** (METHOD.md §1, "What we add"): a label-free signal for both decoders,
and optionally for both embeddings directly (``TAEConfig.landmark_readout``, ``TAEConfig.frame_readout``).

For a pair (source ``s``, target ``t``) with iBUG-68 landmarks in crop pixels:

1. **head motion**: a transform ``G`` fitted by least squares on rigid points
   (:data:`RIGID_POINTS_68`: eye corners, nose bridge, the upper face contour, no jaw) that maps the
   target's points onto the source's; ``G(q_t)`` is where each target landmark lies in the source's
   head pose. ``kind``:

   - ``"rigid3d"`` (default **[ours]**): a 3-D head turn. A weak-perspective camera (scaled rotation +
     translation) is fitted to each frame's rigid points with the 3-D mean face ``X`` of
     :mod:`video_fer.faces.head_pose`, and ``G(q_t) = P_s(X) + S(q_t) - S(P_t(X))`` with ``S`` the 2-D
     similarity fit: the mean face seen by the source's camera, plus the target's own difference from
     the mean face carried over by ``S`` (a pure 2-D motion is then exact, a turn adds its parallax). On the real pretraining clips this
     removes the parallax of a head turn that a 2-D fit leaves: the nose's residual falls from
     2.7 to 0.5 px (128 px crops) and its correlation with the pair's |yaw change| from 0.94 to
     0.49, while the mouth's residual correlates better with the blendshape change (0.46 -> 0.57);
   - ``"similarity"`` or ``"affine"``: a 2-D transform (METHOD.md's wording). Aligned crops have
     their 2-D motion mostly removed already, so what these leave is largely 3-D head rotation.
2. **facial action**: what the fit leaves, ``p_s - G(q_t)`` at every landmark.

The frame readout **[ours]** asks the same of one frame against its track's mean landmarks ``m`` (the
person's average face): the action part of the pair (frame, ``m``), ``p - G(m)``. A similarity fit
absorbs any shift and scale of ``m``, so ``m`` can stay in the prepared crop's pixels while ``p`` has
been through the augmentation's crop.

The attention term **[ours]** (:func:`landmark_attention_term`) turns the same frame split into a place: a
heat map of the frame's brow, eye and mouth landmarks on the attention grid, half of its mass spread
evenly over them and half in proportion to how far each has moved from the person's average face, and
asks the action branch's attention (mean over its K streams, as a distribution over the grid) to match it.

The fields use the backward-warp convention of :mod:`video_fer.models.warp` (output pixel ``p``
samples the input at ``p + T(p)``), so:

- the pose-changed face ``I^P = warp(I_s, T_P)`` has the target's pose: at the target landmark
  ``q_t`` the pose field should read ``G(q_t) - q_t`` (exact for a rigid field at any point);
- the action-changed face ``I^A = warp(I_s, T_A)`` keeps the source pose and shows the target's
  actions, so its landmark sits at ``G(q_t)``; the action field there should read the residual
  ``p_s - G(q_t)``.

:func:`landmark_field_terms` samples the two predicted fields at those points (``grid_sample``,
normalised units, ``align_corners=True``) and compares them with L1 or Huber, per sample. Points
outside the crop (after augmentation) are left out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from video_fer.errors import ConfigError

# iBUG-68 points that facial actions barely move: the upper face contour (0-2, 14-16; the jaw 3-13
# opens with the mouth), the nose bridge and tip (27-30) and the four eye corners (36, 39, 42, 45).
RIGID_POINTS_68 = (0, 1, 2, 14, 15, 16, 27, 28, 29, 30, 36, 39, 42, 45)
FITS = ("rigid3d", "similarity", "affine")
PENALTIES = ("l1", "huber")


def weak_perspective_projection(points: torch.Tensor, rigid_points=RIGID_POINTS_68) -> torch.Tensor:
    """The 3-D mean face's 68 points as seen by the camera fitted to each face's rigid points.

    Args:
        points: ``(B, 68, 2)`` landmarks (pixels).

    Returns:
        ``(B, 68, 2)``: ``s R[:2] X + t``, the scaled rotation ``s R[:2]`` being the nearest one (SVD) to the
        least-squares affine camera of the rigid points (as :func:`video_fer.faces.head_pose.estimate_head_pose`).
    """
    from video_fer.faces.head_pose import MEAN_FACE_68_MM

    index = list(rigid_points)
    model = torch.tensor(MEAN_FACE_68_MM, dtype=torch.float64, device=points.device)
    anchor = model[index].mean(0)
    rigid_model = model[index] - anchor
    observed = points[:, index].double()
    centre = observed.mean(1, keepdim=True)
    affine = (observed - centre).transpose(1, 2) @ torch.linalg.pinv(rigid_model).T  # (B, 2, 3)
    u, singular, vh = torch.linalg.svd(affine, full_matrices=False)
    camera = (u @ vh) * singular.mean(-1)[:, None, None]  # nearest scaled rotation rows
    return ((model - anchor) @ camera.transpose(1, 2) + centre).to(points.dtype)


def fit_rigid_transform(from_points: torch.Tensor, to_points: torch.Tensor, kind: str = "similarity") -> torch.Tensor:
    """Least-squares transforms mapping ``from_points`` onto ``to_points``, batched.

    Args:
        from_points, to_points: ``(B, P, 2)`` with ``P >= 3``.
        kind: ``"similarity"`` (scale, rotation, translation; closed form) or ``"affine"``.

    Returns:
        ``(B, 2, 3)`` matrices ``M`` with ``to ≈ M @ [from; 1]``.
    """
    if kind not in ("similarity", "affine"):
        raise ConfigError(f"loss.landmark_fit={kind!r}: a 2-D transform is 'similarity' or 'affine'")
    if from_points.shape != to_points.shape or from_points.ndim != 3 or from_points.shape[-1] != 2:
        raise ValueError(f"fit_rigid_transform: points must both be (B, P, 2), got {tuple(from_points.shape)} "
                         f"and {tuple(to_points.shape)}")
    source, target = from_points.double(), to_points.double()
    if kind == "affine":
        ones = torch.ones_like(source[..., :1])
        design = torch.cat([source, ones], -1)  # (B, P, 3)
        solution = torch.linalg.lstsq(design, target).solution  # (B, 3, 2)
        return solution.transpose(1, 2).to(from_points.dtype)
    source_mean, target_mean = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    q, p = source - source_mean, target - target_mean
    norm = q.pow(2).sum((1, 2)).clamp_min(1e-12)
    a = (q * p).sum((1, 2)) / norm  # s cos(theta)
    b = (q[..., 0] * p[..., 1] - q[..., 1] * p[..., 0]).sum(1) / norm  # s sin(theta)
    linear = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (B, 2, 2)
    translation = target_mean[:, 0] - (linear @ source_mean[:, 0, :, None])[..., 0]
    return torch.cat([linear, translation[..., None]], -1).to(from_points.dtype)


def apply_transform(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(B, 2, 3)`` transforms applied to ``(B, P, 2)`` points."""
    return points @ matrices[:, :, :2].transpose(1, 2) + matrices[:, None, :, 2]


def split_landmark_motion(source_points: torch.Tensor, target_points: torch.Tensor, kind: str = "rigid3d",
                          rigid_points=RIGID_POINTS_68) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head-motion and facial-action parts of a pair's landmark motion (crop pixels).

    Args:
        source_points, target_points: ``(B, 68, 2)`` landmarks of the source and target frames.
        kind: the head-motion model fitted on ``rigid_points`` (``"rigid3d"``, ``"similarity"`` or ``"affine"``).

    Returns:
        ``(rigid, residual, moved)``, each ``(B, 68, 2)``: ``moved = G(q_t)`` (target points in the
        source's head pose), ``rigid = moved - q_t`` (what the pose field should read at ``q_t``),
        ``residual = p_s - moved`` (what the action field should read at ``moved``).
    """
    if kind not in FITS:
        raise ConfigError(f"loss.landmark_fit={kind!r}: choose one of {FITS}")
    index = list(rigid_points)
    matrices = fit_rigid_transform(target_points[:, index], source_points[:, index],
                                   "similarity" if kind == "rigid3d" else kind)
    moved = apply_transform(matrices, target_points)
    if kind == "rigid3d":
        # The mean face seen by each frame's camera; the 2-D fit carries the target's own shape
        # (its difference from the mean face) over, so a 2-D motion stays exact and a turn adds its parallax.
        model_source = weak_perspective_projection(source_points, rigid_points)
        model_target = weak_perspective_projection(target_points, rigid_points)
        moved = model_source + (moved - apply_transform(matrices, model_target))
    return moved - target_points, source_points - moved, moved


def pixels_to_grid(points: torch.Tensor, size: int) -> torch.Tensor:
    """Crop pixels (origin at the first pixel centre) -> normalised ``[-1, 1]`` (``align_corners=True``)."""
    return points * (2.0 / (size - 1)) - 1.0


def sample_field_at(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``field (B, 2, S, S)`` at normalised ``points (B, P, 2)`` -> ``(B, P, 2)``."""
    samples = F.grid_sample(field, points[:, None].to(field.dtype), mode="bilinear", padding_mode="border",
                            align_corners=True)  # (B, 2, 1, P)
    return samples[:, :, 0].transpose(1, 2)


def _penalty(difference: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "l1":
        return difference.abs()
    if kind == "huber":
        return F.smooth_l1_loss(difference, torch.zeros_like(difference), reduction="none", beta=delta)
    raise ConfigError(f"loss.landmark_penalty={kind!r}: choose one of {PENALTIES}")


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``values (B, P, 2)``, ``valid (B, P)`` -> per-sample mean over valid points and both axes ``(B,)``."""
    weight = valid.to(values.dtype)[..., None]
    return (values * weight).sum((1, 2)) / (2 * weight.sum((1, 2))).clamp_min(1.0)


# Where the AUs act: the brows (17-26), the eyes (36-47) and the mouth (48-67); the attention term's places.
FEATURE_POINTS_68 = (*range(17, 27), *range(36, 68))


def grid_cell_centres(image_size: int, grid: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(grid,)`` the crop-pixel coordinate of each cell centre along one side of a ``grid x grid`` map over the crop."""
    return (torch.arange(grid, device=device, dtype=dtype) + 0.5) * (image_size / grid) - 0.5


def landmark_heatmap(points: torch.Tensor, weights: torch.Tensor, image_size: int, grid: int) -> torch.Tensor:
    """``points (B, P, 2)`` crop pixels with ``weights (B, P)`` -> ``(B, grid, grid)``: a Gaussian of one grid
    cell's width at each point (separable, one einsum), normalised to sum 1 per sample."""
    cell = image_size / grid
    centres = grid_cell_centres(image_size, grid, points.device, points.dtype)
    bumps = torch.exp(-0.5 * ((points[..., None] - centres) / cell) ** 2)  # (B, P, 2, grid)
    heat = torch.einsum("bp,bpy,bpx->byx", weights, bumps[:, :, 1], bumps[:, :, 0])
    return heat / heat.sum((1, 2), keepdim=True).clamp_min(1e-12)


def landmark_attention_term(attention_maps: torch.Tensor, points: torch.Tensor, residual: torch.Tensor,
                            image_size: int) -> torch.Tensor:
    """**[ours]** KL divergence from the frame's action heat map to its attention, per sample ``(B,)``.

    Args:
        attention_maps: ``(B, K, h, h)`` the action branch's maps of the frames, in [0, 1].
        points: ``(B, 68, 2)`` the frames' landmarks (crop pixels of the images the model saw).
        residual: ``(B, 68, 2)`` their action part against the track's mean (:func:`split_landmark_motion`).
        image_size: the crop side in pixels.
    """
    index = list(FEATURE_POINTS_68)
    points, residual = points[:, index].float(), residual[:, index].float()
    finite = (torch.isfinite(points).all(-1) & torch.isfinite(residual).all(-1)).float()
    motion = residual.nan_to_num().norm(dim=-1) * finite
    weights = (0.5 * finite / finite.sum(1, keepdim=True).clamp_min(1.0)
               + 0.5 * motion / motion.sum(1, keepdim=True).clamp_min(1e-6))
    target = landmark_heatmap(points.nan_to_num(), weights, image_size, attention_maps.shape[-1])
    attention = attention_maps.float().mean(1)
    attention = attention / attention.sum((1, 2), keepdim=True).clamp_min(1e-12)
    kl = target * (target.clamp_min(1e-12).log() - attention.clamp_min(1e-12).log())
    return kl.sum((1, 2)) * (finite.sum(1) > 0)


def landmark_field_terms(action_flow: torch.Tensor, pose_flow: torch.Tensor, source_points: torch.Tensor,
                         target_points: torch.Tensor, kind: str = "rigid3d", penalty: str = "huber",
                         delta: float = 0.01, readouts: tuple[torch.Tensor, torch.Tensor] | None = None,
                         frame_readouts: torch.Tensor | None = None, track_points: torch.Tensor | None = None,
                         pose_frame_readouts: torch.Tensor | None = None,
                         attention_maps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The landmark-guidance terms, per sample: two on the fields, and two on the embeddings with ``readouts``.

    Args:
        action_flow, pose_flow: ``(B, 2, S, S)`` predicted fields (normalised units).
        source_points, target_points: ``(B, 68, 2)`` landmarks in crop pixels of the images the
            model saw (after augmentation).
        kind: head-motion model (``"rigid3d"``, ``"similarity"`` or ``"affine"``).
        penalty: ``"l1"`` or ``"huber"``: smooth L1, quadratic below ``delta`` (normalised units; 0.01 is
            0.6 px at 128 px, about MediaPipe's landmark jitter) and L1 above it, so both penalties have
            the scale of L1 (torch's Huber proper is ``delta`` times smaller: negligible beside the
            reconstruction term at the same weight).
        readouts: **[ours]** ``TAEOutput.landmark_readouts``, the linear readouts of the embedding changes
            ``(B, 68, 2)`` (normalised units), compared with the residual and the head motion at every
            finite landmark (in or out of the crop: no field is sampled), or None.
        frame_readouts: **[ours]** ``TAEOutput.frame_readouts`` ``(B, 2, 68, 2)`` (source, target), compared
            with each frame's action part against ``track_points``, or None.
        track_points: ``(B, 68, 2)`` the mean landmarks of each pair's track (any crop's pixels), needed
            with ``frame_readouts`` or ``pose_frame_readouts``.
        pose_frame_readouts: **[ours]** ``TAEOutput.pose_frame_readouts`` ``(B, 2, 68, 2)``, compared with the
            head motion from ``track_points`` to each frame, read at ``track_points`` (it includes the crop's
            offset: the pose embedding sees the face's place in the crop), or None.
        attention_maps: **[ours]** ``TAEOutput.source_attention_maps`` ``(B, K, h, h)``, compared with the source
            frame's action heat map (:func:`landmark_attention_term`), or None.

    Returns:
        ``{"landmark_pose_field": (B,), "landmark_action_field": (B,)}`` float32, plus
        ``"landmark_pose_embedding"`` and ``"landmark_action_embedding"`` with ``readouts`` and
        ``"landmark_action_frame"`` (mean of the two frames) with ``frame_readouts`` and ``"landmark_pose_frame"``
        with ``pose_frame_readouts`` and ``"landmark_attention"`` with ``attention_maps``.
    """
    size = action_flow.shape[-1]
    source_points, target_points = source_points.float(), target_points.float()
    rigid, residual, moved = split_landmark_motion(source_points, target_points, kind)
    scale = 2.0 / (size - 1)  # pixels -> normalised displacement
    at_target, at_moved = pixels_to_grid(target_points, size), pixels_to_grid(moved, size)

    def inside(points: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(points).all(-1) & (points.abs() <= 1.0).all(-1)

    valid = inside(at_target) & inside(at_moved) & inside(pixels_to_grid(source_points, size))
    pose = sample_field_at(pose_flow.float(), at_target.nan_to_num())
    action = sample_field_at(action_flow.float(), at_moved.nan_to_num())
    pose_target, action_target = (rigid * scale).nan_to_num(), (residual * scale).nan_to_num()
    terms = {
        "landmark_pose_field": _masked_mean(_penalty(pose - pose_target, penalty, delta), valid),
        "landmark_action_field": _masked_mean(_penalty(action - action_target, penalty, delta), valid),
    }
    if readouts is not None:
        finite = torch.isfinite(rigid).all(-1) & torch.isfinite(residual).all(-1)
        action_readout, pose_readout = (readout.float() for readout in readouts)
        terms["landmark_pose_embedding"] = _masked_mean(_penalty(pose_readout - pose_target, penalty, delta), finite)
        terms["landmark_action_embedding"] = _masked_mean(_penalty(action_readout - action_target, penalty, delta),
                                                          finite)
    per_frame = {name: readout for name, readout in (("landmark_action_frame", frame_readouts),
                                                     ("landmark_pose_frame", pose_frame_readouts)) if readout is not None}
    if per_frame or attention_maps is not None:
        if track_points is None:
            raise ValueError("landmark_field_terms: frame readouts and attention need track_points (the tracks' mean landmarks)")
        frames = torch.cat((source_points, target_points))
        frame_rigid, frame_residual, _ = split_landmark_motion(frames, track_points.float().repeat(2, 1, 1), kind)
        if attention_maps is not None:
            terms["landmark_attention"] = landmark_attention_term(attention_maps, source_points,
                                                                  frame_residual[:len(source_points)], size)
        frame_targets = {"landmark_action_frame": frame_residual, "landmark_pose_frame": frame_rigid}
        for name, readout in per_frame.items():
            target = (frame_targets[name] * scale).unflatten(0, (2, -1)).transpose(0, 1)  # (B, 2, 68, 2)
            finite = torch.isfinite(target).all(-1)
            error = _penalty(readout.float() - target.nan_to_num(), penalty, delta)
            terms[name] = _masked_mean(error.flatten(1, 2), finite.flatten(1))
    return terms


__all__ = ["FEATURE_POINTS_68", "FITS", "PENALTIES", "RIGID_POINTS_68", "apply_transform", "grid_cell_centres",
           "landmark_attention_term", "landmark_heatmap", "weak_perspective_projection", "fit_rigid_transform", "landmark_field_terms",
           "pixels_to_grid", "sample_field_at", "split_landmark_motion"]
