"""The 3-D mean face of the 68-point head-pose fit: iBUG-68 points in millimetres, and how it was made.

:data:`MEAN_FACE_68_MM` was derived by ``python -m video_fer.faces.head_pose --derive``
(:func:`video_fer.faces.head_pose.derive_mean_face`): MediaPipe's 478-point 3-D mesh of the
frontal faces in ``shared/data/images`` and frames of ``single_face.mp4``, mapped to iBUG-68,
each face put in its own face frame (:func:`face_frame`: x along the eye line, y from the eyes to
the mouth, z = x cross y), scaled to a 63 mm distance between the eye centres (the adult mean
interpupillary distance), averaged, made left/right symmetric (:func:`symmetric_mean_face`),
then tilted about x so that those frontal faces read as pitch 0 on average (zero pose = a person
facing the camera, not the eyes-to-mouth axis).
"""
from __future__ import annotations

import numpy as np

from video_fer.faces.ibug68 import LEFT_EYE, MIRROR_68, MOUTH, RIGHT_EYE, span

INTEROCULAR_MM = 63.0  # adult mean interpupillary distance: the scale of the mean face

# fmt: off
# Derived by `python -m video_fer.faces.head_pose --derive` (see the module doc); face frame, millimetres,
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


__all__ = ["INTEROCULAR_MM", "MEAN_FACE_68_MM", "face_frame", "symmetric_mean_face"]
