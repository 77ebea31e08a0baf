"""Head pose (pitch, yaw, roll) from the 68 image landmarks of a face, batched.

Model: a rigid 3-D mean face :data:`MEAN_FACE_68_MM` seen by a *scaled orthographic*
(weak-perspective) camera, ``x_image = s * (R @ X)[:2] + t``. No camera intrinsics are
needed (we never know the focal length of a user's clip); at the face-to-camera distances
of webcam and talking-head video the perspective error this ignores is a few degrees.

Fit, closed form and batched (no iterations, no per-face Python loop):
1. the mean face is fixed, so the least-squares affine camera ``A (2x3)`` of every face is
   one matrix product with the pseudo-inverse of the centred mean face;
2. the nearest scaled rotation to ``A``: SVD ``A = U S V^T``, first two rotation rows
   ``U V^T`` (orthonormal), the third their cross product;
3. Euler angles in OpenFace's convention: ``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)``, camera
   coordinates x right, y down, z away from the camera; radians, like OpenFace's
   ``pose_Rx, pose_Ry, pose_Rz``. A frontal face is about (0, 0, 0); positive yaw turns the
   nose towards the image's left (a rotation about +y), positive roll is a rotation about +z
   (the face leans clockwise on screen), positive pitch about +x.

The mean face was derived by this module (``python -m video_fer.faces.head_pose --derive``):
MediaPipe's 478-point 3-D mesh of the frontal faces in ``shared/data/images`` and frames of
``single_face.mp4``, mapped to iBUG-68, each face put in its own face frame (x along the eye
line, y from the eyes to the mouth, z = x cross y), scaled to a 63 mm distance between the eye
centres (the adult mean interpupillary distance), averaged, made left/right symmetric, then
tilted about x so that those frontal faces read as pitch 0 on average (zero pose = a person
facing the camera, not the eyes-to-mouth axis). On the posed photos of ``shared/data/images``
it reads yaw 13 deg for the 15 deg face and 52 deg for the 45 deg face, pitch and roll within 5 deg.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from video_fer.errors import VideoFerError
from video_fer.faces.ibug68 import LEFT_EYE, MIRROR_68, MOUTH, RIGHT_EYE, span

INTEROCULAR_MM = 63.0  # adult mean interpupillary distance: the scale of the mean face

# fmt: off
# Derived by `python -m video_fer.faces.head_pose --derive` (see module doc); face frame, millimetres,
# x towards the image right of a frontal face, y down, z away from the camera, centroid at 0.
MEAN_FACE_68_MM = np.array([
    [ -71.645,  -30.147,   54.540],
    [ -71.352,  -15.917,   58.318],
    [ -69.295,    6.465,   56.073],
    [ -65.860,   22.476,   51.032],
    [ -60.217,   37.142,   42.509],
    [ -49.372,   52.634,   26.669],
    [ -36.060,   63.961,   14.501],
    [ -18.368,   74.316,    0.666],
    [  -0.000,   77.664,   -3.766],
    [  18.368,   74.316,    0.666],
    [  36.060,   63.961,   14.501],
    [  49.372,   52.634,   26.669],
    [  60.217,   37.142,   42.509],
    [  65.860,   22.476,   51.032],
    [  69.295,    6.465,   56.073],
    [  71.352,  -15.917,   58.318],
    [  71.645,  -30.147,   54.540],
    [ -58.583,  -51.231,    6.057],
    [ -52.348,  -57.261,   -2.007],
    [ -42.638,  -60.648,   -8.790],
    [ -29.727,  -60.326,  -14.988],
    [ -15.006,  -58.311,  -18.042],
    [  15.006,  -58.311,  -18.042],
    [  29.727,  -60.326,  -14.988],
    [  42.638,  -60.648,   -8.790],
    [  52.348,  -57.261,   -2.007],
    [  58.583,  -51.231,    6.057],
    [  -0.000,  -40.663,  -18.348],
    [  -0.000,  -26.595,  -28.944],
    [  -0.000,  -14.133,  -41.478],
    [  -0.000,    0.401,  -42.550],
    [ -17.780,    3.833,  -18.323],
    [  -8.396,    6.127,  -25.053],
    [  -0.000,    6.759,  -26.795],
    [   8.396,    6.127,  -25.053],
    [  17.780,    3.833,  -18.323],
    [ -43.673,  -36.184,    4.345],
    [ -37.283,  -39.706,   -2.479],
    [ -27.903,  -40.194,   -4.261],
    [ -17.314,  -34.748,   -1.063],
    [ -26.658,  -33.797,   -3.357],
    [ -36.168,  -33.846,   -1.572],
    [  17.314,  -34.748,   -1.063],
    [  27.903,  -40.194,   -4.261],
    [  37.283,  -39.706,   -2.479],
    [  43.673,  -36.184,    4.345],
    [  36.168,  -33.846,   -1.572],
    [  26.658,  -33.797,   -3.357],
    [ -31.048,   24.916,   -1.523],
    [ -23.972,   20.926,  -14.249],
    [  -9.193,   17.678,  -24.839],
    [  -0.000,   18.968,  -25.652],
    [   9.193,   17.678,  -24.839],
    [  23.972,   20.926,  -14.249],
    [  31.048,   24.916,   -1.523],
    [  23.592,   35.568,   -9.365],
    [  13.470,   41.958,  -15.313],
    [  -0.000,   44.507,  -18.052],
    [ -13.470,   41.958,  -15.313],
    [ -23.592,   35.568,   -9.365],
    [ -28.492,   25.249,   -3.084],
    [ -17.647,   23.399,  -14.386],
    [  -0.000,   23.903,  -20.900],
    [  17.647,   23.399,  -14.386],
    [  28.492,   25.249,   -3.084],
    [  17.185,   32.522,  -10.587],
    [  -0.000,   35.479,  -16.373],
    [ -17.185,   32.522,  -10.587],
], dtype=np.float32)
# fmt: on
MEAN_FACE_68_MM.setflags(write=False)


class HeadPoseInputError(VideoFerError, ValueError):
    """Landmarks given to the head-pose fit have the wrong shape or are degenerate."""


def face_frame(points3d: np.ndarray) -> np.ndarray:
    """Express 3-D iBUG-68 points in their own face frame, in millimetres.

    Args:
        points3d: ``(F, 68, 3)`` points in any right-handed frame with the face seen from -z
            (e.g. MediaPipe's mesh in pixels: x right, y down, z away from the camera).

    Returns:
        ``(F, 68, 3)``: centroid at 0, x along the eye line (image-left eye -> image-right eye),
        y from the eyes towards the mouth (made orthogonal to x), z = x cross y; scaled so the
        eye centres are :data:`INTEROCULAR_MM` apart.
    """
    points = np.asarray(points3d, dtype=np.float64)
    eye_a = points[:, span(LEFT_EYE)].mean(1)
    eye_b = points[:, span(RIGHT_EYE)].mean(1)
    x_axis = eye_b - eye_a
    interocular = np.linalg.norm(x_axis, axis=-1, keepdims=True)
    x_axis = x_axis / interocular
    down = points[:, span(MOUTH)].mean(1) - (eye_a + eye_b) / 2
    y_axis = down - (down * x_axis).sum(-1, keepdims=True) * x_axis
    y_axis /= np.linalg.norm(y_axis, axis=-1, keepdims=True)
    z_axis = np.cross(x_axis, y_axis)
    basis = np.stack([x_axis, y_axis, z_axis], -1)  # (F, 3, 3) columns = face axes
    centred = points - points.mean(1, keepdims=True)
    return (centred @ basis) * (INTEROCULAR_MM / interocular[:, None])


def symmetric_mean_face(faces: np.ndarray) -> np.ndarray:
    """Average faces in the face frame ``(F, 68, 3)`` and make the mean left/right symmetric ``(68, 3)``."""
    mean = faces.mean(0)
    mirrored = mean[MIRROR_68] * np.array([-1.0, 1.0, 1.0])
    symmetric = (mean + mirrored) / 2
    return symmetric - symmetric.mean(0)


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


def estimate_head_pose(landmarks68, mean_face: np.ndarray | None = None) -> torch.Tensor:
    """Pitch, yaw, roll (radians) of faces from their image landmarks.

    Args:
        landmarks68: ``(F, 68, 2)`` iBUG-68 points in image pixels (numpy or torch).
        mean_face: ``(68, 3)`` 3-D model; default :data:`MEAN_FACE_68_MM`.

    Returns:
        float32 ``(F, 3)`` ``pose_Rx`` (pitch), ``pose_Ry`` (yaw), ``pose_Rz`` (roll) in radians,
        OpenFace's convention (see module doc).
    """
    points = torch.as_tensor(np.asarray(landmarks68) if not isinstance(landmarks68, torch.Tensor) else landmarks68)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise HeadPoseInputError(f"landmarks68: expected shape (F, 68, 2), got {tuple(points.shape)}")
    if points.shape[0] == 0:
        return torch.zeros((0, 3), dtype=torch.float32)
    points = points.double()
    centred = points - points.mean(1, keepdim=True)
    if not torch.isfinite(centred).all() or (centred.abs().amax((1, 2)) < 1e-6).any():
        raise HeadPoseInputError("landmarks68: some faces have non-finite or coincident points")
    # The model is fixed, so the least-squares affine camera of every face is one product: (F, 2, 68) @ (68, 3).
    affine = centred.transpose(1, 2) @ _pseudo_inverse(mean_face).to(points.device)
    rotation, _ = _rotation_from_affine(affine)
    return euler_from_rotation(rotation).float()


def project_mean_face(angles: torch.Tensor, scale: float = 2.0, offset=(320.0, 180.0)) -> torch.Tensor:
    """Weak-perspective image of the mean face under ``angles (F, 3)`` -> ``(F, 68, 2)`` pixels (tests, demos)."""
    rotation = rotation_from_euler(angles.double())
    model = torch.from_numpy(MEAN_FACE_68_MM.astype(np.float64))
    rotated = model @ rotation.transpose(-1, -2)  # (F, 68, 3)
    return (scale * rotated[..., :2] + torch.tensor(offset, dtype=torch.float64)).float()


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


if __name__ == "__main__":
    sys.exit(main())
