"""Eye gaze in OpenFace 2.x's convention from MediaPipe's iris landmarks, batched.

OpenFace's columns (checked on ``single_face.openface.csv`` to 5e-4 rad): ``gaze_0_*`` and
``gaze_1_*`` are unit gaze vectors of the image-left eye (the subject's right) and of the
image-right eye in camera coordinates (x right, y down, z away from the camera: a gaze at the
camera points to -z); with ``g = (gaze_0 + gaze_1) / 2``, ``gaze_angle_x = atan2(g_x, -g_z)``
(positive = looking towards the image's right) and ``gaze_angle_y = atan2(g_y, -g_z)``
(positive = looking down), radians.

Our estimate, per eye:

1. the mesh is brought into the head frame with the rigid fit of
   :func:`video_fer.faces.head_pose.fit_head_to_mesh` (line-of-sight rotation, scale, shift;
   canonical cm, OpenFace axes);
2. the eyeball's centre is placed as OpenFace's eye model places it, :data:`EYEBALL_ABOVE_CORNERS_CM`
   (3.5 mm) above the midpoint of the eye corners (mesh 33/133 for the image-left eye, 362/263 for
   the other); a gaze straight out of the face puts the iris centre (mesh 468 / 473) in front of
   it, so the iris's offset ``(dx, dy)`` from it is the projection of the eyeball radius:
   ``gaze_head = (dx / r, dy / r, -sqrt(1 - (dx/r)^2 - (dy/r)^2))``, ``r`` =
   :data:`EYEBALL_RADIUS_CM` **[ours]** (the eye's rotation centre lies ~12 mm behind the cornea
   in adults; the canonical face is an average adult face in cm);
3. into camera coordinates with the head's rotation (camera-axis convention, like OpenFace); the
   two eyes' vectors are averaged for the angles.

What it ignores: per-person eyeball geometry (no calibration), eyelids that move MediaPipe's iris
estimate, and the two eyes' vergence on a near camera.
"""
from __future__ import annotations

import numpy as np

from video_fer.faces.head_pose import HeadFit, to_head_camera

EYEBALL_RADIUS_CM = 1.2  # [ours] eye rotation centre to iris centre, adult average
EYEBALL_ABOVE_CORNERS_CM = 0.35  # OpenFace's eye model: the eyeball centre 3.5 mm above the corners' midpoint
# MediaPipe 478-point mesh: (iris centre, corner, corner); eye 0 = image left (the subject's right), as OpenFace.
EYES = ((468, 33, 133), (473, 362, 263))
MAX_SINE = 0.95  # iris offsets beyond 0.95 r (landmark noise, closed lids) are clipped
GAZE_COLUMNS = ("gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z", "gaze_angle_x", "gaze_angle_y")


def eye_gaze_vectors(mesh: np.ndarray, fit: HeadFit, eyeball_radius_cm: float = EYEBALL_RADIUS_CM,
                     eyeball_above_corners_cm: float = EYEBALL_ABOVE_CORNERS_CM) -> np.ndarray:
    """Unit gaze vectors of both eyes in camera coordinates (OpenFace axes).

    Args:
        mesh: ``(F, 478, 3)`` MediaPipe points in pixels (as for :func:`~video_fer.faces.head_pose.fit_head_to_mesh`).
        fit: the mesh fit of the same faces (its ``rotation`` sets the convention).
        eyeball_radius_cm: **[ours]** ``r`` above.
        eyeball_above_corners_cm: the eyeball centre's height above the corners' midpoint (0 = at it).

    Returns:
        float64 ``(F, 2, 3)``: eye 0 (image left) and eye 1; NaN where the fit is invalid.
    """
    mesh = np.asarray(mesh, dtype=np.float64)
    if mesh.ndim != 3 or mesh.shape[1] != 478 or mesh.shape[2] != 3:
        raise ValueError(f"mesh: expected (F, 478, 3) MediaPipe points with the iris landmarks, got {mesh.shape}")
    out = np.full((len(mesh), 2, 3), np.nan)
    valid = fit.valid & np.isfinite(mesh[:, 468:]).all((1, 2))
    if not valid.any():
        return out
    rotation, scale, shift = fit.line_of_sight[valid], fit.scale[valid], fit.shift[valid]
    for eye, (iris, corner_a, corner_b) in enumerate(EYES):
        points = to_head_camera(mesh[valid][:, [iris, corner_a, corner_b]], fit.bearing[valid], fit.focal, fit.centre)
        head = np.einsum("vji,vkj->vki", rotation, points - shift[:, None]) / scale[:, None, None]  # R^T (p - t) / s
        centre = (head[:, 1, :2] + head[:, 2, :2]) / 2.0 - np.array([0.0, eyeball_above_corners_cm])  # y down
        sine = (head[:, 0, :2] - centre) / eyeball_radius_cm  # the iris's offset from the eyeball centre, / r
        norm = np.linalg.norm(sine, axis=-1, keepdims=True)
        sine = sine * np.minimum(1.0, MAX_SINE / np.maximum(norm, 1e-12))
        forward = -np.sqrt(1.0 - (sine ** 2).sum(-1, keepdims=True))  # out of the face: -z
        out[valid, eye] = np.einsum("vij,vj->vi", fit.rotation[valid], np.concatenate([sine, forward], -1))
    return out


def gaze_angles(vectors: np.ndarray) -> np.ndarray:
    """``(F, 2, 3)`` eye gaze vectors -> ``(F, 2)`` ``gaze_angle_x, gaze_angle_y`` (radians, OpenFace's)."""
    mean = np.asarray(vectors, dtype=np.float64).mean(1)
    return np.stack([np.arctan2(mean[:, 0], -mean[:, 2]), np.arctan2(mean[:, 1], -mean[:, 2])], -1)


def gaze_columns(mesh: np.ndarray, fit: HeadFit, **options) -> dict[str, np.ndarray]:
    """OpenFace's gaze columns :data:`GAZE_COLUMNS` -> ``{name: (F,)}`` (options: :func:`eye_gaze_vectors`)."""
    vectors = eye_gaze_vectors(mesh, fit, **options)
    angles = gaze_angles(vectors)
    values = np.concatenate([vectors.reshape(-1, 6), angles], 1)
    return {name: values[:, k] for k, name in enumerate(GAZE_COLUMNS)}


__all__ = ["EYEBALL_ABOVE_CORNERS_CM", "EYEBALL_RADIUS_CM", "EYES", "GAZE_COLUMNS", "eye_gaze_vectors", "gaze_angles",
           "gaze_columns"]
