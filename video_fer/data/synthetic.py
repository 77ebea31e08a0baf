"""Synthetic faces with known head motion and facial actions, and the embedded demo cache.

Animating a face (:func:`animate_faces`) applies, on batched tensors:

1. **facial actions**: a smooth local displacement field per action unit (AU), a sum of
   anisotropic Gaussian bumps placed at iBUG-68 landmarks of the face (by default the
   canonical template :data:`~video_fer.faces.alignment.CANONICAL_LANDMARKS_68`); each
   bump carries a feature (brow, lid, lip corner, jaw...) by a displacement scaled by
   the AU's intensity in [0, 1] (table :data:`ACTION_UNITS`);
2. **head motion**: a homography close to a similarity (a few degrees of roll, a few %
   of scale, a few px of translation at 256 px) with a mild perspective term that
   foreshortens one side of the face like a small yaw or pitch.

Fields follow the convention of :mod:`video_fer.models.warp`: a field ``T`` is ``(B, 2,
S, S)`` in normalised grid units (``align_corners=True``) and the output pixel ``p``
samples the input at ``p + T(p)`` (backward warp). With ``A`` the action field and ``P``
the pose field, the target is the source with the actions applied first, then the head
motion: ``target(p) = source(p + P(p) + A(p + P(p)))``, so

- ``warp(source, action_field)`` is the action-changed face (source pose, target actions),
- ``warp(source, pose_field)`` is the pose-changed face (source actions, target pose),
- ``warp(source, total_field)`` is the target, ``total = P + A o (id + P)``.

A bump of displacement ``d`` (pixels) is centred on the feature's *destination*
``c + d`` and has value ``-d`` there, so the target pixel at ``c + d`` shows the source
pixel at ``c`` exactly: the feature moves by ``d``. Displacements are at most ~1.3 sigma along
an axis, so a bump's slope stays below 0.8 (0.61 d / sigma) and the field does not fold.

Units in the AU table are fractions of the crop side (the template's [0, 1]
coordinates), so one table serves every crop size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from video_fer.errors import VideoFerError
from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, normalised_to_pixels
from video_fer.faces.ibug68 import MIRROR_68
from video_fer.models.warp import identity_grid


class SyntheticInputError(VideoFerError, ValueError):
    """Inputs of the synthetic face animation have the wrong shape or values."""


@dataclass(frozen=True)
class Bump:
    """One Gaussian displacement bump of an AU, on the image-left side (mirrored unless ``mirror=False``).

    Attributes:
        anchor: iBUG-68 indices whose mean is the feature's position.
        displacement: ``(dx, dy)`` the feature moves at intensity 1, fraction of the crop side
            (``dy < 0`` is up; ``dx > 0`` is towards the image right).
        sigma: ``(sx, sy)`` extent of the bump, fraction of the crop side.
        mirror: also place the mirrored bump on the other side (``dx`` negated).
    """

    anchor: tuple[int, ...]
    displacement: tuple[float, float]
    sigma: tuple[float, float]
    mirror: bool = True


# Facial action units as displacement bumps (FACS descriptions; magnitudes chosen so an
# intensity of 1 is a clear, apex-level action on a 256 px aligned face).
ACTION_UNITS: dict[str, tuple[Bump, ...]] = {
    # AU1 inner brow raiser: the inner ends of the brows go up.
    "AU1": (Bump((21,), (0.0, -0.030), (0.030, 0.034)), Bump((20,), (0.0, -0.018), (0.026, 0.030))),
    # AU2 outer brow raiser: the outer ends of the brows go up.
    "AU2": (Bump((17, 18), (0.0, -0.030), (0.036, 0.034)),),
    # AU4 brow lowerer: the brows go down and are pulled together.
    "AU4": (Bump((20, 21), (0.014, 0.022), (0.040, 0.034)), Bump((18, 19), (0.0, 0.012), (0.034, 0.030))),
    # AU6 cheek raiser: the cheeks lift, pushing the lower lids up (crow's-feet region).
    "AU6": (Bump((2, 31, 41), (0.0, -0.022), (0.050, 0.040)), Bump((40, 41), (0.0, -0.007), (0.028, 0.014))),
    # AU7 lid tightener: the lower lids rise and the upper lids drop a little, narrowing the eye.
    "AU7": (Bump((40, 41), (0.0, -0.010), (0.026, 0.012)), Bump((37, 38), (0.0, 0.006), (0.026, 0.012))),
    # AU9 nose wrinkler: the nose wings and the skin beside the nose pull up.
    "AU9": (Bump((31,), (0.0, -0.018), (0.024, 0.026)), Bump((33,), (0.0, -0.010), (0.022, 0.020), mirror=False)),
    # AU12 lip corner puller (smile): the mouth corners go out and up.
    "AU12": (Bump((48,), (-0.030, -0.026), (0.040, 0.034)),),
    # AU15 lip corner depressor: the mouth corners go down.
    "AU15": (Bump((48,), (-0.004, 0.026), (0.034, 0.030)),),
    # AU20 lip stretcher: the mouth corners go out sideways.
    "AU20": (Bump((48,), (-0.034, 0.004), (0.040, 0.030)),),
    # AU25 lips part: the lower lip moves down off the upper lip.
    "AU25": (Bump((57, 66), (0.0, 0.024), (0.050, 0.021), mirror=False),),
    # AU26 jaw drop: chin and lower lip go down; the upper lip stays.
    "AU26": (Bump((8,), (0.0, 0.060), (0.100, 0.060), mirror=False),
             Bump((57,), (0.0, 0.032), (0.060, 0.028), mirror=False)),
    # AU45 blink: the upper lids come down to the lower lids.
    "AU45": (Bump((37, 38), (0.0, 1.0), (0.040, 0.032)),),  # dy in units of the eye opening, see below
}
AU_NAMES: tuple[str, ...] = tuple(ACTION_UNITS)
# AU45's dy is the lid gap of the face (upper-lid to lower-lid distance), not a fixed length.
_EYE_OPENING_BUMPS = {"AU45"}
_UPPER_LID, _LOWER_LID = (37, 38), (40, 41)

HEAD_MOTION_NAMES = ("roll_deg", "scale", "shift_x_px256", "shift_y_px256", "yaw_perspective", "pitch_perspective")


@dataclass(frozen=True)
class HeadMotionRanges:
    """Largest head motion drawn by :func:`sample_head_motion` (uniform in ``[-r, r]``).

    Sized like a talking head between two frames: roll in degrees, relative scale change,
    shift in pixels of a 256 px crop, and perspective coefficients (``0.04`` shrinks one
    side of the face by ~4 % relative to the other, like a few degrees of yaw/pitch).
    """

    roll_deg: float = 4.0
    scale: float = 0.04
    shift_px256: float = 5.0
    perspective: float = 0.04


@dataclass
class SyntheticPairs:
    """Result of :func:`animate_faces` (all tensors batched on the first axis).

    Attributes:
        target: ``(B, 3, S, S)`` the animated faces.
        action_field: ``(B, 2, S, S)`` ground-truth action field (source pose).
        pose_field: ``(B, 2, S, S)`` ground-truth head-motion field.
        total_field: ``(B, 2, S, S)`` the field that made ``target`` from the source.
        au_intensities: ``(B, len(AU_NAMES))`` in [0, 1], columns in :data:`AU_NAMES` order.
        head_motion: ``(B, 6)`` columns :data:`HEAD_MOTION_NAMES`.
        landmarks: ``(B, 68, 2)`` the landmarks carried to the target, crop pixels.
    """

    target: torch.Tensor
    action_field: torch.Tensor
    pose_field: torch.Tensor
    total_field: torch.Tensor
    au_intensities: torch.Tensor
    head_motion: torch.Tensor
    landmarks: torch.Tensor
    au_names: tuple[str, ...] = field(default=AU_NAMES)


def _bump_table(au_names: Sequence[str]):
    """Flatten the AU table into arrays: anchor weights ``(K, 68)``, displacement/sigma ``(K, 2)``, AU of bump ``(K,)``."""
    anchors, displacements, sigmas, owners, eye_relative = [], [], [], [], []
    for au_index, name in enumerate(au_names):
        for bump in ACTION_UNITS[name]:
            sides = [(bump.anchor, 1.0)]
            if bump.mirror:
                sides.append((tuple(int(MIRROR_68[i]) for i in bump.anchor), -1.0))
            for indices, sign in sides:
                weights = np.zeros(68, dtype=np.float32)
                weights[list(indices)] = 1.0 / len(indices)
                anchors.append(weights)
                displacements.append((sign * bump.displacement[0], bump.displacement[1]))
                sigmas.append(bump.sigma)
                owners.append(au_index)
                eye_relative.append(name in _EYE_OPENING_BUMPS)
    return (torch.tensor(np.stack(anchors)), torch.tensor(displacements, dtype=torch.float32),
            torch.tensor(sigmas, dtype=torch.float32), torch.tensor(owners), torch.tensor(eye_relative))


def template_landmarks(batch: int, size: int, device=None) -> torch.Tensor:
    """The canonical iBUG-68 face in crop pixels, ``(B, 68, 2)``."""
    points = normalised_to_pixels(torch.from_numpy(CANONICAL_LANDMARKS_68.copy()), size)
    return points.to(device).expand(batch, 68, 2).clone()


def action_field(au_intensities: torch.Tensor, size: int, landmarks: torch.Tensor | None = None,
                 au_names: Sequence[str] = AU_NAMES) -> torch.Tensor:
    """Displacement field of facial actions, batched.

    Args:
        au_intensities: ``(B, A)`` in [0, 1], columns ``au_names``.
        size: crop side S in pixels.
        landmarks: ``(B, 68, 2)`` crop pixels of each face (default: the canonical template).
        au_names: which AUs the columns are (default :data:`AU_NAMES`).

    Returns:
        ``(B, 2, S, S)`` backward-warp field in normalised grid units.
    """
    batch = au_intensities.shape[0]
    if au_intensities.shape[1] != len(au_names):
        raise SyntheticInputError(f"au_intensities: expected {len(au_names)} columns ({', '.join(au_names)}), got {au_intensities.shape[1]}")
    device = au_intensities.device
    if landmarks is None:
        landmarks = template_landmarks(batch, size, device)
    if landmarks.shape != (batch, 68, 2):
        raise SyntheticInputError(f"landmarks: expected ({batch}, 68, 2) crop pixels, got {tuple(landmarks.shape)}")
    anchor_weights, displacement, sigma, owner, eye_relative = (t.to(device) for t in _bump_table(au_names))
    anchors = anchor_weights @ landmarks.float()  # (B, K, 2) feature positions, pixels
    move = displacement * size  # (K, 2) pixels at intensity 1
    eye_opening = (landmarks[:, _LOWER_LID, 1].mean(1) - landmarks[:, _UPPER_LID, 1].mean(1)).clamp_min(0)  # (B,)
    move = move.expand(batch, -1, -1).clone()
    move[:, eye_relative, 1] = eye_opening[:, None] * displacement[eye_relative, 1]
    move = move * au_intensities.float()[:, owner, None]  # (B, K, 2)
    centre = anchors + move  # the bump sits where the feature arrives
    axis = torch.arange(size, dtype=torch.float32, device=device)
    # The Gaussian window is separable: one (B, K, S) profile per axis instead of (B, K, S, S).
    profile = torch.exp(-0.5 * ((axis - centre[..., None]) / (sigma[..., None] * size)) ** 2)  # (B, K, 2, S)
    # Sum over bumps as one batched matmul, (B, 2, S, K) @ (B, 1, K, S): ~25x faster than the 3-operand einsum.
    weighted_rows = profile[:, None, :, 1] * move.permute(0, 2, 1)[..., None]  # (B, 2, K, S): y profile x move
    field_pixels = -(weighted_rows.transpose(-1, -2) @ profile[:, None, :, 0])
    return field_pixels * (2.0 / (size - 1))


def homography_from_motion(head_motion: torch.Tensor) -> torch.Tensor:
    """Backward homographies ``(B, 3, 3)`` in normalised grid coordinates (target point -> source point).

    The target shows the source rotated by ``roll_deg``, scaled by ``scale``, shifted by
    ``shift_*`` (pixels of a 256 px crop) about the crop centre, with the perspective
    terms ``(yaw, pitch)`` in the bottom row (one side of the face shrinks).
    """
    roll, scale, shift_x, shift_y, yaw, pitch = head_motion.float().unbind(1)
    angle = torch.deg2rad(roll)
    shift = torch.stack([shift_x, shift_y], 1) * (2.0 / 255.0)  # 256 px crop pixels -> grid units
    # Forward map (source -> target): x' = s R x + t; its inverse is the backward map.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # (s R)^-1 = R^T / s
    inverse_linear = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (B, 2, 2)
    inverse_translation = -(inverse_linear @ shift[..., None])[..., 0]
    matrix = torch.zeros(head_motion.shape[0], 3, 3, device=head_motion.device)
    matrix[:, :2, :2] = inverse_linear
    matrix[:, :2, 2] = inverse_translation
    matrix[:, 2, 0], matrix[:, 2, 1], matrix[:, 2, 2] = yaw, pitch, 1.0
    return matrix


def pose_field(head_motion: torch.Tensor, size: int) -> torch.Tensor:
    """Head-motion field ``(B, 2, S, S)``: ``H(p) - p`` in normalised grid units."""
    matrix = homography_from_motion(head_motion)
    grid = identity_grid(size, device=head_motion.device).reshape(1, -1, 2)  # (1, S*S, 2)
    homogeneous = torch.cat([grid, torch.ones_like(grid[..., :1])], -1).expand(matrix.shape[0], -1, -1)
    mapped = homogeneous @ matrix.transpose(1, 2)
    source_points = mapped[..., :2] / mapped[..., 2:]
    return (source_points - grid).reshape(-1, size, size, 2).permute(0, 3, 1, 2).contiguous()


def sample_field(field_: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Values of fields ``(B, 2, S, S)`` at normalised points ``(B, N, 2)`` -> ``(B, N, 2)`` (bilinear)."""
    values = F.grid_sample(field_, points[:, :, None], mode="bilinear", padding_mode="border", align_corners=True)
    return values[..., 0].permute(0, 2, 1)


def compose_fields(action: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Field of "actions, then head motion": ``P(p) + A(p + P(p))``, ``(B, 2, S, S)``."""
    batch, _, size, _ = pose.shape
    grid = identity_grid(size, device=pose.device).reshape(1, -1, 2)
    moved = grid + pose.permute(0, 2, 3, 1).reshape(batch, -1, 2)
    action_there = sample_field(action, moved)
    return pose + action_there.reshape(batch, size, size, 2).permute(0, 3, 1, 2)


def carry_points(points: torch.Tensor, total: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """Where source points ``(B, N, 2)`` (crop pixels) appear in the target: solve ``p + T(p) = q``.

    Fixed-point iteration ``p <- q - T(p)`` (converges because the fields are smooth and small).
    """
    size = total.shape[-1]
    to_grid, to_pixels = 2.0 / (size - 1), (size - 1) / 2.0
    source = points.float() * to_grid - 1.0
    moved = source.clone()
    for _ in range(iterations):
        moved = source - sample_field(total, moved)
    return (moved + 1.0) * to_pixels


def render(source: torch.Tensor, total: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Apply a field to the source with the warp convention, optionally reading a larger canvas.

    Args:
        source: ``(B, 3, M, M)``: the face crop (``margin=1``) or a canvas around it whose
            central ``1 / margin`` part is the crop (so head motion shows real surroundings
            instead of black borders).
        total: ``(B, 2, S, S)`` field in crop grid units.

    Returns:
        ``(B, 3, S, S)``.
    """
    batch, _, size, _ = total.shape
    sample_at = identity_grid(size, device=total.device) + total.permute(0, 2, 3, 1)
    if margin == 1.0:
        sample_at = sample_at.clamp(-1.0, 1.0)  # exactly models.warp.warp
    return F.grid_sample(source, sample_at / margin, mode="bilinear", padding_mode="zeros", align_corners=True)


def sample_action_intensities(batch: int, generator: torch.Generator | None = None, active_probability: float = 0.35,
                              min_intensity: float = 0.3, au_names: Sequence[str] = AU_NAMES) -> torch.Tensor:
    """Random AU intensities ``(B, A)``: each AU active with ``active_probability``, intensity U(min, 1).

    Opposite actions of one feature are not combined: AU15 is dropped where AU12 is
    active (corners cannot go up and down at once), AU4 where AU1 is active.
    """
    active = torch.rand(batch, len(au_names), generator=generator) < active_probability
    level = min_intensity + (1 - min_intensity) * torch.rand(batch, len(au_names), generator=generator)
    intensities = active * level
    for keep, drop in (("AU12", "AU15"), ("AU1", "AU4")):
        if keep in au_names and drop in au_names:
            clash = intensities[:, au_names.index(keep)] > 0
            intensities[clash, au_names.index(drop)] = 0.0
    return intensities


def sample_head_motion(batch: int, generator: torch.Generator | None = None,
                       ranges: HeadMotionRanges = HeadMotionRanges()) -> torch.Tensor:
    """Random head motion ``(B, 6)`` (columns :data:`HEAD_MOTION_NAMES`), uniform within ``ranges``."""
    unit = 2 * torch.rand(batch, 6, generator=generator) - 1
    limits = torch.tensor([ranges.roll_deg, ranges.scale, ranges.shift_px256, ranges.shift_px256,
                           ranges.perspective, ranges.perspective])
    motion = unit * limits
    motion[:, 1] += 1.0  # scale factor around 1
    return motion


def identity_head_motion(batch: int) -> torch.Tensor:
    """No head motion ``(B, 6)``: roll 0, scale 1, no shift, no perspective."""
    motion = torch.zeros(batch, 6)
    motion[:, 1] = 1.0
    return motion


def animate_faces(source: torch.Tensor, generator: torch.Generator | None = None,
                  au_intensities: torch.Tensor | None = None, head_motion: torch.Tensor | None = None,
                  landmarks: torch.Tensor | None = None, canvas: torch.Tensor | None = None,
                  margin: float = 1.0) -> SyntheticPairs:
    """Animate aligned faces with facial actions and head motion (deterministic given the generator).

    Args:
        source: ``(B, 3, S, S)`` float in [0, 1], aligned faces.
        generator: seeds the AUs and motion that are not given.
        au_intensities: ``(B, len(AU_NAMES))`` in [0, 1]; default random (:func:`sample_action_intensities`).
        head_motion: ``(B, 6)``; default random (:func:`sample_head_motion`).
        landmarks: ``(B, 68, 2)`` crop pixels of the faces (default: the canonical template).
        canvas: optional ``(B, 3, M, M)`` larger view around each face (crop = its central
            ``1 / margin`` part), rendered from instead of ``source`` so borders show real pixels.
        margin: ``M / S`` of ``canvas``.

    Returns:
        :class:`SyntheticPairs`.
    """
    if source.ndim != 4 or source.shape[1] != 3 or source.shape[2] != source.shape[3]:
        raise SyntheticInputError(f"source: expected (B, 3, S, S) float faces, got {tuple(source.shape)}")
    batch, size = source.shape[0], source.shape[-1]
    if au_intensities is None:
        au_intensities = sample_action_intensities(batch, generator)
    if head_motion is None:
        head_motion = sample_head_motion(batch, generator)
    au_intensities, head_motion = au_intensities.to(source.device).float(), head_motion.to(source.device).float()
    if landmarks is None:
        landmarks = template_landmarks(batch, size, source.device)
    actions = action_field(au_intensities, size, landmarks)
    pose = pose_field(head_motion, size)
    total = compose_fields(actions, pose)
    target = render(source if canvas is None else canvas, total, 1.0 if canvas is None else margin)
    return SyntheticPairs(target=target, action_field=actions, pose_field=pose, total_field=total,
                          au_intensities=au_intensities, head_motion=head_motion,
                          landmarks=carry_points(landmarks, total))


def flow_to_color(flow: torch.Tensor, max_magnitude: float | None = None) -> torch.Tensor:
    """HSV colouring of fields ``(B, 2, H, W)`` -> RGB ``(B, 3, H, W)`` in [0, 1].

    Hue = direction, saturation = magnitude / ``max_magnitude`` (default: the batch's
    largest), value 1: zero motion is white.
    """
    dx, dy = flow[:, 0], flow[:, 1]
    magnitude = torch.sqrt(dx ** 2 + dy ** 2)
    scale = max_magnitude if max_magnitude is not None else float(magnitude.max().clamp_min(1e-8))
    hue = (torch.atan2(dy, dx) / (2 * math.pi)) % 1.0  # (B, H, W) in [0, 1)
    saturation = (magnitude / scale).clamp(0, 1)
    # HSV -> RGB with value 1: each channel is 1 - s * clamp(|(6h + offset) mod 6 - 3| - 1, 0, 1) complement.
    offsets = torch.tensor([5.0, 3.0, 1.0], device=flow.device).view(1, 3, 1, 1)
    k = (offsets + hue[:, None] * 6) % 6
    channel = 1 - saturation[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))
    return channel


# --------------------------------------------------------------------------------------
# The embedded demo cache
# --------------------------------------------------------------------------------------

# Face photos shipped inside installed packages (one identity each). skimage's cameraman was
# tried and left out: MediaPipe finds his face only in profile behind the camera.
DEMO_PHOTOS = ("astronaut", "grace_hopper")


def load_demo_photo(name: str) -> np.ndarray:
    """One demo photo as uint8 RGB ``(H, W, 3)`` (cameraman is grey, repeated on 3 channels)."""
    if name == "astronaut":
        from skimage import data

        return data.astronaut()
    if name == "cameraman":
        from skimage import data

        return np.repeat(data.camera()[..., None], 3, axis=-1)
    if name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as handle:
            return np.asarray(Image.open(handle).convert("RGB"))
    raise SyntheticInputError(f"demo photo {name!r}: unknown; choose one of {', '.join(DEMO_PHOTOS)}")


# iBUG-68 landmarks (x, y source pixels) of the demo photos, made once by
# ``python tools/make_demo_landmarks.py`` (MediaPipe face landmarker on the photo, 478 mesh
# points mapped to iBUG-68 by video_fer.faces.ibug68); re-run it and paste to change them.
DEMO_PHOTO_LANDMARKS: dict[str, tuple[float, ...]] = {
    "astronaut": (
        180.4, 100.8, 180.4, 109.4, 180.6, 123.4, 181.5, 133.8, 183.5, 143.9, 188.6, 155.6,
        196.7, 164.7, 208.2, 173.6, 220.9, 176.9, 233.8, 175.0, 246.4, 167.3, 255.6, 158.9,
        262.5, 147.8, 265.9, 138.1, 267.9, 127.9, 269.3, 113.9, 269.7, 105.4, 187.4, 90.2,
        191.1, 87.3, 197.0, 86.1, 205.1, 87.3, 214.6, 89.3, 235.5, 90.1, 245.4, 89.2,
        253.7, 89.1, 259.7, 91.0, 263.2, 94.4, 224.4, 100.9, 224.0, 111.2, 223.5, 120.7,
        223.0, 130.6, 210.8, 129.0, 217.2, 131.8, 223.0, 132.9, 228.9, 132.3, 235.8, 130.2,
        194.8, 100.1, 198.7, 97.7, 205.6, 97.9, 213.1, 103.1, 207.1, 103.5, 200.2, 103.2,
        235.9, 104.4, 243.8, 99.8, 250.9, 100.5, 254.8, 103.3, 248.9, 105.9, 241.8, 105.5,
        201.8, 138.7, 207.3, 138.4, 216.8, 138.9, 222.9, 140.1, 229.2, 139.3, 238.7, 139.5,
        244.0, 140.1, 238.2, 148.0, 231.2, 152.6, 222.2, 154.2, 213.4, 152.0, 206.7, 147.0,
        203.4, 139.2, 210.8, 140.6, 222.8, 142.7, 235.0, 141.4, 242.4, 140.6, 234.3, 146.3,
        222.5, 148.7, 210.8, 145.6,
    ),
    "grace_hopper": (
        170.1, 200.6, 173.3, 216.8, 179.3, 243.2, 184.6, 262.9, 191.1, 281.8, 202.6, 303.6,
        219.3, 318.7, 244.0, 331.4, 269.7, 334.1, 295.7, 328.3, 319.0, 312.7, 333.5, 295.9,
        342.2, 273.2, 346.5, 253.8, 349.9, 233.6, 353.6, 206.2, 354.9, 189.5, 185.0, 177.0,
        192.2, 169.5, 204.2, 164.9, 221.0, 164.8, 241.1, 166.8, 283.9, 163.9, 303.8, 159.6,
        320.4, 157.9, 332.7, 161.3, 340.1, 167.8, 263.8, 188.2, 264.8, 208.4, 265.4, 226.8,
        266.2, 246.2, 242.7, 250.1, 255.0, 252.6, 266.3, 253.1, 277.9, 251.6, 290.0, 248.2,
        206.7, 193.0, 213.1, 187.6, 225.6, 186.7, 240.0, 195.3, 228.7, 196.1, 216.7, 196.4,
        288.4, 192.3, 301.4, 182.0, 314.2, 181.6, 321.5, 186.2, 311.5, 190.9, 299.3, 192.0,
        233.5, 278.9, 240.4, 274.7, 255.5, 270.7, 265.8, 272.3, 276.2, 270.0, 293.3, 273.0,
        302.0, 276.2, 293.2, 282.1, 281.3, 287.1, 266.5, 289.9, 252.6, 288.8, 241.5, 284.6,
        236.5, 278.6, 248.1, 278.2, 266.1, 278.8, 285.8, 277.0, 299.2, 276.3, 285.6, 276.9,
        266.2, 279.0, 248.4, 278.6,
    ),
}


@dataclass
class DemoFaces:
    """The demo photos aligned like a cache, with a larger canvas around each crop.

    Attributes:
        crops: ``(N, 3, S, S)`` float aligned faces (the cache's alignment at size S).
        canvases: ``(N, 3, M, M)`` the same alignment over a wider view; the crop is its centre.
        landmarks: ``(N, 68, 2)`` crop pixels.
        identities: ``N`` names (a mirrored photo keeps its identity).
        margin: ``M / S``.
    """

    crops: torch.Tensor
    canvases: torch.Tensor
    landmarks: torch.Tensor
    identities: list[str]
    margin: float


def demo_faces(size: int = 128, margin: float = 1.25, mirrored: bool = True, alignment=None) -> DemoFaces:
    """Align the demo photos (and their mirror images) with the cache's alignment, batched.

    Returns:
        :class:`DemoFaces` ordered photo by photo (original, then mirrored when ``mirrored``).
    """
    from video_fer.faces.alignment import AlignmentSpec, align_faces

    spec = alignment if alignment is not None else AlignmentSpec(size=size)
    size = spec.size
    canvas_size = size + 2 * round(size * (margin - 1) / 2)
    offset = (canvas_size - size) // 2
    # Same face placement in a bigger square: template u -> (u S + offset) / M.
    canvas_points = tuple(((u * size + offset) / canvas_size, (v * size + offset) / canvas_size)
                          for u, v in spec.template_points)
    canvas_spec = AlignmentSpec(size=canvas_size, template_points=canvas_points, point_weights=spec.point_weights)
    canvases, landmarks, identities = [], [], []
    for name in DEMO_PHOTOS:
        photo = torch.from_numpy(np.array(load_demo_photo(name)))  # a writable copy
        points = torch.tensor(DEMO_PHOTO_LANDMARKS[name], dtype=torch.float32).reshape(68, 2)
        views = [(photo, points)]
        if mirrored:
            flipped_points = points[torch.from_numpy(MIRROR_68)].clone()
            flipped_points[:, 0] = photo.shape[1] - 1 - flipped_points[:, 0]
            views.append((photo.flip(1), flipped_points))
        for image, view_points in views:
            aligned = align_faces(image.permute(2, 0, 1)[None].float() / 255.0, view_points[None], canvas_spec,
                                  padding_mode="reflection")
            canvases.append(aligned.crops[0].clamp(0, 1))
            landmarks.append(aligned.landmarks[0] - offset)
            identities.append(name)
    canvases = torch.stack(canvases)
    crops = canvases[:, :, offset:offset + size, offset:offset + size].contiguous()
    return DemoFaces(crops, canvases, torch.stack(landmarks), identities, canvas_size / size)


def _raised_cosine(t: torch.Tensor) -> torch.Tensor:
    """1 at 0, falling smoothly to 0 at |t| = 1 (and 0 beyond)."""
    return torch.where(t.abs() < 1, 0.5 * (1 + torch.cos(math.pi * t.clamp(-1, 1))), torch.zeros_like(t))


def smooth_track_labels(num_frames: int, generator: torch.Generator | None = None, episodes_per_au: float = 0.6,
                        ranges: HeadMotionRanges = HeadMotionRanges()) -> tuple[torch.Tensor, torch.Tensor]:
    """AU intensities and head motion of one talking-head-like track, smooth in time.

    Each AU has 0..2 activation episodes (raised-cosine bumps of random centre, width
    and peak); head-motion parameters are sums of two slow sinusoids within ``ranges``.

    Returns:
        ``au_intensities (n, A)`` in [0, 1] and ``head_motion (n, 6)``.
    """
    frames = torch.arange(num_frames, dtype=torch.float32)
    count = len(AU_NAMES)
    episodes = 2
    active = torch.rand(count, episodes, generator=generator) < episodes_per_au / episodes
    centre = torch.rand(count, episodes, generator=generator) * num_frames
    width = (0.25 + 0.35 * torch.rand(count, episodes, generator=generator)) * num_frames
    peak = 0.4 + 0.6 * torch.rand(count, episodes, generator=generator)
    bumps = _raised_cosine((frames[:, None, None] - centre) / width) * peak * active  # (n, A, E)
    intensities = bumps.amax(-1).clamp(0, 1)
    for keep, drop in (("AU12", "AU15"), ("AU1", "AU4")):  # opposite actions of one feature never overlap
        i, j = AU_NAMES.index(keep), AU_NAMES.index(drop)
        clash = (intensities[:, i] > 0) & (intensities[:, j] > 0)
        weaker = torch.where(intensities[:, i] >= intensities[:, j], j, i)
        intensities[clash, weaker[clash]] = 0.0
    limits = torch.tensor([ranges.roll_deg, ranges.scale, ranges.shift_px256, ranges.shift_px256,
                           ranges.perspective, ranges.perspective])
    periods = num_frames * (0.8 + 1.6 * torch.rand(6, 2, generator=generator))
    phases = 2 * math.pi * torch.rand(6, 2, generator=generator)
    amplitude = 0.5 * torch.rand(6, 2, generator=generator) + 0.25
    waves = (amplitude * torch.sin(2 * math.pi * frames[:, None, None] / periods + phases)).sum(-1)  # (n, 6)
    motion = waves.clamp(-1, 1) * limits
    motion[:, 1] += 1.0
    return intensities, motion


def build_animated_cache(root, crops: torch.Tensor, landmarks: torch.Tensor, identities: Sequence[str],
                         frames_per_track: int = 24, tracks_per_identity: int = 3, seed: int = 0, fps: float = 25.0,
                         canvases: torch.Tensor | None = None, margin: float = 1.0, settings: dict | None = None):
    """Write a face-track cache (the format of ``video-fer prepare``) of animated aligned faces and open it.

    Every track animates one view of an identity (views taken in turn) with smooth head
    motion and AU activations (:func:`smooth_track_labels`); its npz holds, besides the
    cache's arrays, the ground truth: ``au_intensities (n, A)``, ``au_names (A,)``,
    ``head_motion (n, 6)``, ``head_motion_names (6,)``. An existing cache made with the
    same ``settings`` is reused; identities already committed are skipped (an interrupted
    build resumes).

    Args:
        crops: ``(N, 3, S, S)`` float aligned faces in [0, 1] (the cache's alignment at size S).
        landmarks: ``(N, 68, 2)`` crop pixels.
        identities: ``N`` names; a name is used in file names, so keep to letters, digits, ``-_.``.
        canvases, margin: optional wider views around the crops (see :func:`animate_faces`).
        settings: what made the faces, recorded in ``cache.json`` under ``"animated"``; a
            different value for an existing cache is an error.

    Returns:
        :class:`~video_fer.data.cache.FaceTrackCache` of ``root``.
    """
    from pathlib import Path

    from video_fer.data.cache import CacheWriter, FaceTrackCache, read_settings
    from video_fer.errors import CacheError
    from video_fer.faces.alignment import AlignmentSpec

    root, size = Path(root), crops.shape[-1]
    recorded = {"seed": int(seed), "frames_per_track": int(frames_per_track),
                "tracks_per_identity": int(tracks_per_identity), "fps": float(fps), **dict(settings or {})}
    if (root / "cache.json").exists() and read_settings(root).get("animated") != recorded:
        raise CacheError(f"{root}: holds an animated cache made with other settings "
                         f"({read_settings(root).get('animated')}); delete it or choose another folder")
    writer = CacheWriter(root)
    writer.begin({"alignment": AlignmentSpec(size=size).to_dict(), "landmarker": "synthetic", "size": size,
                  "fps": None, "min_track_frames": 1, "animated": recorded})
    generator = torch.Generator().manual_seed(int(seed))
    for identity in dict.fromkeys(identities):  # first-seen order, each once
        views = [i for i, name in enumerate(identities) if name == identity]
        labels = [smooth_track_labels(frames_per_track, generator) for _ in range(tracks_per_identity)]
        if writer.has_manifest(identity):
            continue
        writer.remove_partial_outputs(identity)
        rows = []
        for number, (intensities, motion) in enumerate(labels):
            view = views[number % len(views)]
            animated = animate_faces(crops[view].expand(frames_per_track, -1, -1, -1), None, intensities, motion,
                                     landmarks[view].expand(frames_per_track, -1, -1),
                                     None if canvases is None else canvases[view].expand(frames_per_track, -1, -1, -1),
                                     margin)
            frames = (animated.target.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
            arrays = {"frame_indices": np.arange(frames_per_track), "landmarks_aligned": animated.landmarks.numpy(),
                      "scores": np.ones(frames_per_track, np.float32), "au_intensities": intensities.numpy(),
                      "au_names": np.array(AU_NAMES), "head_motion": motion.numpy(),
                      "head_motion_names": np.array(HEAD_MOTION_NAMES)}
            rows.append(writer.write_track(f"{identity}__t{number:04d}", frames, arrays, source=f"synthetic://{identity}",
                                           identity=identity, fps=fps, video_key=identity))
        writer.commit_video(identity, {"source": f"synthetic://{identity}", "status": "ok", "tracks": rows,
                                       "num_frames": frames_per_track * tracks_per_identity})
    writer.rebuild_index()
    return FaceTrackCache(root)


def build_demo_cache(root, size: int = 128, frames_per_track: int = 24, tracks_per_identity: int = 3,
                     seed: int = 0, fps: float = 25.0):
    """The embedded demo face-track cache: the demo photos (and their mirror images) animated.

    Needs no model file and no network; see :func:`build_animated_cache` for what it holds.
    """
    faces = demo_faces(size)
    return build_animated_cache(root, faces.crops, faces.landmarks, faces.identities, frames_per_track,
                                tracks_per_identity, seed, fps, faces.canvases, faces.margin,
                                settings={"photos": list(DEMO_PHOTOS)})


def save_example_sheet(path, size: int = 256, seed: int = 0, pairs: int = 4) -> None:
    """PNG sheet: each AU alone on a demo face, then random pairs (source, target, action field, pose field)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = demo_faces(size)
    generator = torch.Generator().manual_seed(seed)
    face, canvas, points = faces.crops[:1], faces.canvases[:1], faces.landmarks[:1]
    count = len(AU_NAMES)
    singles = animate_faces(face.expand(count, -1, -1, -1), None, torch.eye(count), identity_head_motion(count),
                            points.expand(count, -1, -1), canvas.expand(count, -1, -1, -1), faces.margin)
    chosen = torch.arange(pairs) % len(faces.identities)
    examples = animate_faces(faces.crops[chosen], generator, landmarks=faces.landmarks[chosen],
                             canvas=faces.canvases[chosen], margin=faces.margin)
    limit = float(torch.cat([examples.action_field, examples.pose_field]).norm(dim=1).max())
    columns = 7  # 13 AU tiles in two rows; pairs use 5 columns
    rows = -(-(count + 1) // columns) + pairs
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.4 * rows))
    for axis in axes.ravel():
        axis.axis("off")
    tiles = [("neutral", face[0])] + [(name, singles.target[i]) for i, name in enumerate(AU_NAMES)]
    for axis, (title, image) in zip(axes.ravel(), tiles):
        axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        axis.set_title(title, fontsize=9)
    first_pair_row = -(-(count + 1) // columns)
    action_colour = flow_to_color(examples.action_field, limit)
    pose_colour = flow_to_color(examples.pose_field, limit)
    for k in range(pairs):
        active = [f"{n}:{v:.1f}" for n, v in zip(AU_NAMES, examples.au_intensities[k].tolist()) if v > 0]
        motion = examples.head_motion[k].tolist()
        panels = [("source", faces.crops[chosen[k]]), ("target", examples.target[k]),
                  ("action field", action_colour[k]), ("pose field", pose_colour[k])]
        for column, (title, image) in enumerate(panels):
            axis = axes[first_pair_row + k, column]
            axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
            axis.set_title(title, fontsize=9)
        axes[first_pair_row + k, 4].text(0, 0.5, "\n".join(active[:6]) + f"\nroll {motion[0]:+.1f} deg\nscale {motion[1]:.3f}"
                                         f"\nshift ({motion[2]:+.1f}, {motion[3]:+.1f}) px",
                                         fontsize=8, va="center", transform=axes[first_pair_row + k, 4].transAxes)
    figure.suptitle("each AU alone at intensity 1 (top); random pairs (bottom): field colour hue = direction, "
                    f"saturation = magnitude (max {limit * (size - 1) / 2:.1f} px), white = still", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=64)
    plt.close(figure)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the PNG sheet of synthetic facial actions and pairs.")
    parser.add_argument("--sheet", default="docs/images/synthetic_pairs.png")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    from pathlib import Path

    Path(arguments.sheet).parent.mkdir(parents=True, exist_ok=True)
    save_example_sheet(arguments.sheet, arguments.size, arguments.seed)
    print(f"wrote {arguments.sheet}")
