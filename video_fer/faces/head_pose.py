"""Head pose in OpenFace 2.x's convention, batched: from MediaPipe's 478-point mesh, or from 68 landmarks.

**The convention** (OpenFace's ``FeatureExtraction`` columns; checked on its CSVs, see
``tests/test_head_pose.py``):

- camera coordinates: x to the image's right, y down, z away from the camera, millimetres; a
  pinhole camera with ``fx = fy = 500 * (W/640 + H/480) / 2`` px and the principal point at the
  image centre (OpenFace's guess when no calibration is given; 437.5 px for 640x360: the 2-D and
  3-D landmark columns of the shared OpenFace CSVs fit exactly this camera);
- ``pose_Tx, pose_Ty, pose_Tz``: the head model's origin in camera coordinates (mm);
- ``pose_Rx, pose_Ry, pose_Rz`` (radians; pitch, yaw, roll): the head's rotation in camera
  coordinates, ``R = Rx(pose_Rx) @ Ry(pose_Ry) @ Rz(pose_Rz)``, right-handed: a model point ``p``
  sits at ``R p + T``. On screen: positive pitch moves the nose down, positive yaw moves it
  towards the image's left (the subject turns to their right), positive roll tilts the face
  clockwise;
- the rotation is measured against the **camera axis** (``convention="camera_axis"``): a head
  that keeps its orientation while it moves across the frame keeps its angles. A head that keeps
  *facing the camera* while it moves off-centre turns, so it reads the bearing of its line of
  sight, ``atan(offset / f)``. A frontal face pasted into a corner of a wide image is that second
  case: nothing in its pixels shows it is off-centre except its position, and it still looks
  straight into the camera, so in camera-axis angles it reads the bearing (e.g. yaw -24 deg at
  512 px left of the centre of a 1536 px wide frame), and ``convention="line_of_sight"`` (the
  rotation seen from the ray to the head) reads the same angles as at the centre.

**From the mesh** (:func:`fit_head_to_mesh`, what ``track`` uses with MediaPipe):

1. line-of-sight rotation: weighted Procrustes (rotation + scale + shift) of MediaPipe's canonical
   face onto the frame's 3-D mesh, on the rigid landmarks and with the weights MediaPipe's own
   geometry pipeline uses (both read from the ``.task`` file,
   :mod:`video_fer.faces.canonical_face`). MediaPipe's x, y are the image's pixels (an
   off-centre head carries the image plane's perspective shear) while its z is depth as the
   network sees it in a crop around the head (along the line of sight). So a first fit finds
   the head's bearing, the pixels are re-imaged in a virtual camera turned towards the head
   (:func:`to_head_camera`, exact for a pinhole camera) and the fit is repeated there, where a
   weak-perspective fit is accurate (a synthetic head in a corner of a 1920x1080 frame is
   recovered to < 1.5 deg);
2. camera axis: ``bearing @ line_of_sight``, the bearing being the rotation from the optical
   axis to the ray through the head under OpenFace's camera (or ``focal_px``);
3. translation: distance = focal length x model size / image size (the canonical face is in cm;
   OpenFace's head model measures :data:`CANONICAL_TO_OPENFACE_SCALE` mm per canonical cm), the
   OpenFace model origin (:data:`OPENFACE_ORIGIN_IN_CANONICAL_CM`) back-projected at that distance.

MediaPipe's facial transformation matrix is not used: for a frontal face pasted into the
corners of a wide canvas its rotation turns by only ~25 % of the bearing (neither convention),
and on the shared OpenFace clips it agrees less with OpenFace (``tools/bench_track_accuracy.py``).

**From 68 landmarks** (:func:`fit_head_to_landmarks68`, for FAN and precomputed landmarks): the
same two steps with the weak-perspective fit of the rigid 3-D mean face
:data:`~video_fer.faces.mean_face.MEAN_FACE_68_MM` (mm) to the 2-D points: a first fit gives the
face's bearing, the points are re-imaged in the turned camera and fitted again (line of sight),
then turned by the bearing (camera axis); the distance is focal length / the fit's px per mm.
``pose_T*`` then give the mean face's centroid (between the eyes and the mouth, ~2 cm behind
the nose tip), not OpenFace's model origin. :func:`estimate_head_pose` is the plain one-pass
weak-perspective fit in image coordinates (no camera, no bearing).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from video_fer.errors import VideoFerError
from video_fer.faces.canonical_face import FaceGeometry
from video_fer.faces.mean_face import MEAN_FACE_68_MM, face_frame, symmetric_mean_face

CONVENTIONS = ("camera_axis", "line_of_sight")
POSE_COLUMNS = ("pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz")
FLIP_Y_Z = np.diag([1.0, -1.0, -1.0])  # MediaPipe canonical (y up, z to the viewer) <-> OpenFace (y down, z away)
# Derived from OpenFace_Test.csv (a Procrustes fit of the canonical face to OpenFace's mean shape on the rigid
# iBUG points, residual 3.2 mm), never from the clips OpenFace is compared on:
CANONICAL_TO_OPENFACE_SCALE = 9.845  # mm of OpenFace's head model per cm of MediaPipe's canonical face
OPENFACE_ORIGIN_IN_CANONICAL_CM = np.array([-0.003, -1.026, 4.169])  # OpenFace's model origin, canonical coordinates


class HeadPoseInputError(VideoFerError, ValueError):
    """Landmarks given to a head-pose fit have the wrong shape or are degenerate."""


# ------------------------------------------------------------------------------ rotations, weak perspective
def _rotation_from_affine(affine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest scaled rotation to affine cameras ``(F, 2, 3)`` -> ``(R (F, 3, 3), scale (F,))``."""
    u, singular, vh = torch.linalg.svd(affine, full_matrices=False)  # (F,2,2), (F,2), (F,2,3)
    rows = u @ vh  # (F, 2, 3) orthonormal rows
    third = torch.linalg.cross(rows[:, 0], rows[:, 1], dim=-1)
    return torch.cat([rows, third[:, None]], 1), singular.mean(-1)


def euler_from_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)`` ``(..., 3, 3)`` -> ``(..., 3)`` pitch, yaw, roll in radians."""
    yaw = torch.asin(rotation[..., 0, 2].clamp(-1.0, 1.0))
    pitch = torch.atan2(-rotation[..., 1, 2], rotation[..., 2, 2])
    roll = torch.atan2(-rotation[..., 0, 1], rotation[..., 0, 0])
    return torch.stack([pitch, yaw, roll], -1)


def rotation_from_euler(angles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_from_rotation`: ``(..., 3)`` pitch, yaw, roll -> ``(..., 3, 3)``."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[..., 0]), torch.zeros_like(cos[..., 0])

    def matrix(*entries):
        return torch.stack([torch.stack(entries[i:i + 3], -1) for i in (0, 3, 6)], -2)

    rx = matrix(one, zero, zero, zero, cos[..., 0], -sin[..., 0], zero, sin[..., 0], cos[..., 0])
    ry = matrix(cos[..., 1], zero, sin[..., 1], zero, one, zero, -sin[..., 1], zero, cos[..., 1])
    rz = matrix(cos[..., 2], -sin[..., 2], zero, sin[..., 2], cos[..., 2], zero, zero, zero, one)
    return rx @ ry @ rz


_MEAN_FACE_PINV: torch.Tensor | None = None


def _pseudo_inverse(mean_face: np.ndarray | None) -> torch.Tensor:
    """``(68, 3)`` pseudo-inverse of a centred 3-D face (the default one computed once)."""
    global _MEAN_FACE_PINV
    if mean_face is not None:
        model = torch.from_numpy(np.asarray(mean_face, dtype=np.float64))
        return torch.linalg.pinv(model - model.mean(0)).T
    if _MEAN_FACE_PINV is None:
        _MEAN_FACE_PINV = _pseudo_inverse(MEAN_FACE_68_MM)
    return _MEAN_FACE_PINV


def weak_perspective_fit(points: torch.Tensor, mean_face: np.ndarray | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled-orthographic fit of the mean face to image points: ``(F, 68, 2)`` float64 ->
    ``(R (F, 3, 3), scale (F,) px per model mm)``, ``x_image = scale * (R @ X)[:2] + t``."""
    centred = points - points.mean(1, keepdim=True)
    if not torch.isfinite(centred).all() or (centred.abs().amax((1, 2)) < 1e-6).any():
        raise HeadPoseInputError("landmarks68: some faces have non-finite or coincident points")
    # The model is fixed, so the least-squares affine camera of every face is one product: (F, 2, 68) @ (68, 3).
    affine = centred.transpose(1, 2) @ _pseudo_inverse(mean_face).to(points.device)
    return _rotation_from_affine(affine)


def estimate_head_pose(landmarks68, mean_face: np.ndarray | None = None) -> torch.Tensor:
    """Pitch, yaw, roll (radians) of faces from their image landmarks: one weak-perspective fit in image
    coordinates, no camera (for OpenFace's camera-axis angles use :func:`fit_head_to_landmarks68`).

    Args:
        landmarks68: ``(F, 68, 2)`` iBUG-68 points in image pixels (numpy or torch).
        mean_face: ``(68, 3)`` 3-D model; default :data:`~video_fer.faces.mean_face.MEAN_FACE_68_MM`.

    Returns:
        float32 ``(F, 3)`` ``pose_Rx`` (pitch), ``pose_Ry`` (yaw), ``pose_Rz`` (roll) in radians (OpenFace's
        axes and Euler order).
    """
    points = torch.as_tensor(np.asarray(landmarks68) if not isinstance(landmarks68, torch.Tensor) else landmarks68)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise HeadPoseInputError(f"landmarks68: expected shape (F, 68, 2), got {tuple(points.shape)}")
    if points.shape[0] == 0:
        return torch.zeros((0, 3), dtype=torch.float32)
    rotation, _ = weak_perspective_fit(points.double(), mean_face)
    return euler_from_rotation(rotation).float()


def project_mean_face(angles: torch.Tensor, scale: float = 2.0, offset=(320.0, 180.0)) -> torch.Tensor:
    """Weak-perspective image of the mean face under ``angles (F, 3)`` -> ``(F, 68, 2)`` pixels (tests, demos)."""
    rotation = rotation_from_euler(angles.double())
    model = torch.from_numpy(MEAN_FACE_68_MM.astype(np.float64))
    rotated = model @ rotation.transpose(-1, -2)  # (F, 68, 3)
    return (scale * rotated[..., :2] + torch.tensor(offset, dtype=torch.float64)).float()


def rotation_to_euler(rotation: np.ndarray) -> np.ndarray:
    """numpy :func:`euler_from_rotation`: ``(..., 3, 3)`` -> ``(..., 3)`` float64 pitch, yaw, roll (radians)."""
    return euler_from_rotation(torch.from_numpy(np.asarray(rotation, np.float64))).numpy()


def euler_to_rotation(angles: np.ndarray) -> np.ndarray:
    """numpy :func:`rotation_from_euler`: ``(..., 3)`` pitch, yaw, roll -> ``(..., 3, 3)`` float64 ``Rx @ Ry @ Rz``."""
    return rotation_from_euler(torch.from_numpy(np.asarray(angles, np.float64))).numpy()


# ------------------------------------------------------------------------------ cameras
def openface_focal_px(width: float, height: float) -> float:
    """OpenFace's focal length when no calibration is given: ``500 * (W/640 + H/480) / 2`` px."""
    return 500.0 * (float(width) / 640.0 + float(height) / 480.0) / 2.0


def image_centre(width: float, height: float) -> np.ndarray:
    """The principal point in pixel-centre coordinates ``(2,)``: ``((W - 1) / 2, (H - 1) / 2)``."""
    return np.array([(float(width) - 1.0) / 2.0, (float(height) - 1.0) / 2.0])


def bearing_rotation(rays: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the optical axis ``(0, 0, 1)`` onto each ray: ``(F, 3)`` -> ``(F, 3, 3)``."""
    rays = np.asarray(rays, dtype=np.float64)
    rays = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    axis = np.stack([-rays[:, 1], rays[:, 0], np.zeros(len(rays))], -1)  # z x ray
    sin = np.linalg.norm(axis, axis=-1)
    cos = rays[:, 2]
    unit = np.where(sin[:, None] > 1e-12, axis / np.maximum(sin, 1e-12)[:, None], 0.0)
    cross = np.zeros((len(rays), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -unit[:, 2], unit[:, 1], -unit[:, 0]
    cross = cross - cross.transpose(0, 2, 1)
    return np.eye(3) + sin[:, None, None] * cross + (1.0 - cos)[:, None, None] * (cross @ cross)


def pixel_rays(pixels: np.ndarray, focal: float, centre: np.ndarray) -> np.ndarray:
    """``(..., 2)`` pixels -> ``(..., 3)`` rays ``((x - cx) / f, (y - cy) / f, 1)``."""
    return np.concatenate([(pixels - centre) / focal, np.ones(pixels.shape[:-1] + (1,))], -1)


def to_head_camera(points: np.ndarray, bearing: np.ndarray, focal: float, centre: np.ndarray) -> np.ndarray:
    """Re-image points ``(F, N, 2 or 3)`` (pixels; z, if any, is kept) in a virtual camera turned by
    ``bearing (F, 3, 3)`` with the same focal length and centre: each pixel's ray is rotated by ``bearing^T``.

    Why: an off-centre head is seen obliquely by the real image plane (perspective shear); in the
    turned camera it sits on the optical axis, where a weak-perspective fit is accurate.
    """
    turned = np.einsum("fji,fnj->fni", bearing, pixel_rays(points[..., :2], focal, centre))  # bearing^T @ ray
    pixels = turned[..., :2] / turned[..., 2:3] * focal + centre
    return np.concatenate([pixels, points[..., 2:]], -1)


# ------------------------------------------------------------------------------ fits in OpenFace's convention
@dataclass
class HeadFit:
    """The rigid fit of a head model to faces: their pose, and what gaze needs.

    Attributes:
        pose: float64 ``(F, 6)`` ``pose_Tx, pose_Ty, pose_Tz`` (mm), ``pose_Rx, pose_Ry, pose_Rz`` (radians).
        rotation: ``(F, 3, 3)`` the head's rotation in the requested convention (OpenFace axes).
        line_of_sight: ``(F, 3, 3)`` the rotation seen by a virtual camera turned to look at the head.
        bearing: ``(F, 3, 3)`` the rotation from the optical axis to the ray through the head.
        scale: ``(F,)`` turned-camera pixels per model unit (canonical cm for the mesh, mm for 68 points).
        shift: ``(F, 3)`` the mesh fit's translation (turned-camera pixels; NaN for the 68-point fit).
        focal, centre: the camera (px) the points were taken with.
        valid: bool ``(F,)`` faces with finite points (the other rows are NaN).
    """

    pose: np.ndarray
    rotation: np.ndarray
    line_of_sight: np.ndarray
    bearing: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    focal: float
    centre: np.ndarray
    valid: np.ndarray

    @classmethod
    def empty(cls, count: int, focal: float, centre: np.ndarray, valid: np.ndarray) -> "HeadFit":
        nan_rotations = np.full((count, 3, 3), np.nan)
        return cls(np.full((count, 6), np.nan), nan_rotations, nan_rotations.copy(), nan_rotations.copy(),
                   np.full(count, np.nan), np.full((count, 3), np.nan), focal, centre, valid)

    def columns(self) -> dict[str, np.ndarray]:
        """``{"pose_Tx": (F,), ..., "pose_Rz": (F,)}``."""
        return {name: self.pose[:, k] for k, name in enumerate(POSE_COLUMNS)}


def weighted_procrustes(source: np.ndarray, target: np.ndarray, weights: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity transforms ``target ~ scale * R @ source + shift``, batched.

    Args:
        source: ``(K, 3)`` model points; target: ``(F, K, 3)`` observed points; weights: ``(K,)`` >= 0.

    Returns:
        ``R (F, 3, 3)`` proper rotations, ``scale (F,)``, ``shift (F, 3)``.
    """
    w = np.asarray(weights, np.float64) / np.sum(weights)
    source_mean = w @ source
    target_mean = np.einsum("k,fkd->fd", w, target)
    s0 = source - source_mean
    t0 = target - target_mean[:, None]
    covariance = np.einsum("k,fki,kj->fij", w, t0, s0)  # sum_k w t s^T
    u, singular, vt = np.linalg.svd(covariance)
    fix = np.ones((len(target), 3))
    fix[:, 2] = np.sign(np.linalg.det(u @ vt))  # a reflection is not a head pose
    rotation = (u * fix[:, None, :]) @ vt
    scale = (singular * fix).sum(-1) / (w @ (s0 ** 2).sum(-1))
    shift = target_mean - scale[:, None] * (rotation @ source_mean)
    return rotation, scale, shift


def _camera(width: int, height: int, focal_px: float | None, convention: str) -> tuple[float, np.ndarray]:
    if convention not in CONVENTIONS:
        raise HeadPoseInputError(f"convention={convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if width <= 0 or height <= 0:
        raise HeadPoseInputError(f"image size must be positive, got {width}x{height}")
    return (openface_focal_px(width, height) if focal_px is None else float(focal_px)), image_centre(width, height)


def fit_head_to_mesh(mesh: np.ndarray, width: int, height: int, geometry: FaceGeometry, focal_px: float | None = None,
                     convention: str = "camera_axis") -> HeadFit:
    """OpenFace-style head pose of faces from their MediaPipe meshes (see the module doc).

    Args:
        mesh: ``(F, 478 or 468, 3)`` MediaPipe points in pixels of a ``width x height`` image, as
            ``Face.native_landmarks``: ``x = x_norm * W - 0.5``, ``y = y_norm * H - 0.5`` (origin at the
            top-left pixel centre), ``z = z_norm * W`` (away from the camera). NaN faces give NaN rows.
        geometry: :func:`~video_fer.faces.canonical_face.read_face_geometry` of the landmarker's model file.
        focal_px: **[ours]** the camera's focal length in px; default :func:`openface_focal_px` (OpenFace's own
            guess, so the angles and mm compare with its columns).
        convention: ``"camera_axis"`` (OpenFace's) or ``"line_of_sight"``.
    """
    focal, centre = _camera(width, height, focal_px, convention)
    mesh = np.asarray(mesh, dtype=np.float64)
    if mesh.ndim != 3 or mesh.shape[1] < 468 or mesh.shape[2] != 3:
        raise HeadPoseInputError(f"mesh: expected MediaPipe points (F, 478, 3) in pixels, got shape {mesh.shape}")
    fit = HeadFit.empty(len(mesh), focal, centre, np.isfinite(mesh[:, :468]).all((1, 2)))
    valid = fit.valid
    if not valid.any():
        return fit
    canonical = geometry.canonical @ FLIP_Y_Z  # OpenFace axes: x right, y down, z away
    model, weights = canonical[geometry.landmark_ids], geometry.landmark_weights
    origin = FLIP_Y_Z @ OPENFACE_ORIGIN_IN_CANONICAL_CM
    observed = mesh[valid][:, geometry.landmark_ids]

    def head_ray(rotation, scale, shift):  # the ray through the model origin's pixel
        return pixel_rays((scale[:, None] * (rotation @ origin) + shift)[:, :2], focal, centre)

    bearing = bearing_rotation(head_ray(*weighted_procrustes(model, observed, weights)))  # pass 1: where
    rotation, scale, shift = weighted_procrustes(model, to_head_camera(observed, bearing, focal, centre), weights)
    bearing = bearing @ bearing_rotation(head_ray(rotation, scale, shift))  # the small residual turn of pass 2
    rotation, scale, shift = weighted_procrustes(model, to_head_camera(observed, bearing, focal, centre), weights)
    depth = focal * CANONICAL_TO_OPENFACE_SCALE / scale  # mm along the head's ray: model mm * f / size px
    fit.line_of_sight[valid] = rotation
    fit.bearing[valid] = bearing
    fit.rotation[valid] = bearing @ rotation if convention == "camera_axis" else rotation
    fit.scale[valid], fit.shift[valid] = scale, shift
    fit.pose[valid, :3] = np.einsum("fij,fj->fi", bearing, head_ray(rotation, scale, shift) * depth[:, None])
    fit.pose[valid, 3:] = rotation_to_euler(fit.rotation[valid])
    return fit


def fit_head_to_landmarks68(landmarks68: np.ndarray, width: int, height: int, focal_px: float | None = None,
                            convention: str = "camera_axis") -> HeadFit:
    """OpenFace-style head pose from 68 image landmarks (FAN, precomputed files; see the module doc).

    Args:
        landmarks68: ``(F, 68, 2)`` iBUG-68 points in pixels of a ``width x height`` image (NaN faces give NaN rows).
        focal_px, convention: as :func:`fit_head_to_mesh`.

    Returns:
        a :class:`HeadFit` (``scale`` in turned-camera px per mm; ``pose_T*`` = the mean face's centroid).
    """
    focal, centre = _camera(width, height, focal_px, convention)
    points = np.asarray(landmarks68, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise HeadPoseInputError(f"landmarks68: expected shape (F, 68, 2), got {points.shape}")
    fit = HeadFit.empty(len(points), focal, centre, np.isfinite(points).all((1, 2)))
    valid = fit.valid
    if not valid.any():
        return fit
    observed = points[valid]
    bearing = bearing_rotation(pixel_rays(observed.mean(1), focal, centre))  # pass 1: the centroid's ray
    for _ in range(2):  # pass 2 refines the bearing with the re-imaged centroid
        turned = to_head_camera(observed, bearing, focal, centre)
        bearing = bearing @ bearing_rotation(pixel_rays(turned.mean(1), focal, centre))
    turned = to_head_camera(observed, bearing, focal, centre)
    rotation, scale = weak_perspective_fit(torch.from_numpy(turned))
    rotation, scale = rotation.numpy(), scale.numpy()
    depth = focal / scale  # mm along the ray: f / (px per mm)
    fit.line_of_sight[valid] = rotation
    fit.bearing[valid] = bearing
    fit.rotation[valid] = bearing @ rotation if convention == "camera_axis" else rotation
    fit.scale[valid] = scale
    fit.pose[valid, :3] = np.einsum("fij,fj->fi", bearing, pixel_rays(turned.mean(1), focal, centre) * depth[:, None])
    fit.pose[valid, 3:] = rotation_to_euler(fit.rotation[valid])
    return fit


# ------------------------------------------------------------------------------ derivation
FRONTAL_IMAGES = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "single_face.jpg", "multi_face.jpg")


def derive_mean_face(shared: Path, model_path: Path, video_frames: int = 24) -> np.ndarray:
    """Run MediaPipe on the shared frontal faces and return the symmetric mean face ``(68, 3)`` mm.

    Each still face counts once and the video's frames are averaged first, so the video counts
    as one face (it is one person).
    """
    from PIL import Image

    from video_fer.faces import create_landmarker
    from video_fer.faces.ibug68 import mediapipe_to_ibug68
    from video_fer.video import VideoReader

    faces, images_2d = [], []
    still = create_landmarker("mediapipe", model_path=str(model_path), mode="image", num_faces=8, tiles=True)
    for name in FRONTAL_IMAGES:
        image = np.asarray(Image.open(shared / "data" / "images" / name).convert("RGB"))
        for face in still(image[None], np.array([0]), np.array([0.0]))[0]:
            faces.append(face_frame(mediapipe_to_ibug68(face.native_landmarks[None].astype(np.float64)))[0])
            images_2d.append(face.landmarks)
    still.close()
    reader = VideoReader(shared / "data" / "videos" / "single_face.mp4")
    indices = np.linspace(0, len(reader) - 1, video_frames).astype(np.int64)
    clip = create_landmarker("mediapipe", model_path=str(model_path), mode="video", num_faces=1)
    clip.start_clip(str(reader.path), reader.fps)
    per_frame = clip(reader.get(indices), indices, reader.timestamps[indices])
    clip.close()
    meshes = np.stack([found[0].native_landmarks for found in per_frame if found]).astype(np.float64)
    faces.append(face_frame(mediapipe_to_ibug68(meshes)).mean(0))
    images_2d.append(np.stack([found[0].landmarks for found in per_frame if found]).mean(0))
    mean_face = symmetric_mean_face(np.stack(faces))
    # The eyes-to-mouth axis is not the head's vertical: tilt the model so that these frontal
    # faces read as pitch 0 on average (yaw and roll are 0 by symmetry and the eye line).
    pitch = float(estimate_head_pose(np.stack(images_2d), mean_face)[:, 0].mean())
    tilt = rotation_from_euler(torch.tensor([pitch, 0.0, 0.0], dtype=torch.float64)).numpy()
    return mean_face @ tilt.T


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Derive MEAN_FACE_68_MM from the shared faces and print it.")
    parser.add_argument("--derive", action="store_true", required=True)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args(argv)
    face = derive_mean_face(args.shared, args.shared / "models" / "mediapipe" / "face_landmarker.task")
    rows = [f"    [{x:8.3f}, {y:8.3f}, {z:8.3f}]," for x, y, z in face]
    print("\n".join(rows))
    return 0


__all__ = ["CONVENTIONS", "HeadFit", "HeadPoseInputError", "MEAN_FACE_68_MM", "POSE_COLUMNS", "bearing_rotation",
           "estimate_head_pose", "euler_from_rotation", "euler_to_rotation", "fit_head_to_landmarks68",
           "fit_head_to_mesh", "openface_focal_px", "project_mean_face", "rotation_from_euler", "rotation_to_euler",
           "to_head_camera", "weak_perspective_fit", "weighted_procrustes"]


if __name__ == "__main__":
    sys.exit(main())
