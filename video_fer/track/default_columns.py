"""The no-training default's columns: head pose, gaze, AUs and expression from the landmarker's outputs.

Per face, from what the landmarker gives (MediaPipe: the 478-point mesh and 52 blendshapes;
FAN and precomputed files: 68 landmarks), no network:

- ``pose``: ``pose_Tx, pose_Ty, pose_Tz`` (mm), ``pose_Rx, pose_Ry, pose_Rz`` (radians), OpenFace's
  camera-axis convention (:mod:`video_fer.faces.head_pose`: the mesh fit, or the 68-point fit);
- ``gaze``: ``gaze_0_x .. gaze_1_z``, ``gaze_angle_x``, ``gaze_angle_y`` (radians;
  :mod:`video_fer.faces.gaze`; needs MediaPipe's iris points);
- ``au``: ``AUxx_r`` (0-5) and ``AUxx_c`` (0/1) of the blendshape table
  (:mod:`video_fer.faces.blendshape_aus`; needs blendshapes);
- ``expression``: ``expression_<class>`` probabilities and ``expression`` from AU prototypes
  (:mod:`video_fer.faces.expression_prototypes`, on the table's AU intensities).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from video_fer.errors import ConfigError
from video_fer.faces.blendshape_aus import (au_table_metadata, blendshape_aus, intensity_column_names,
                                            presence_column_names)
from video_fer.faces.canonical_face import FaceGeometry, geometry_of
from video_fer.faces.expression_prototypes import EXPRESSION_CLASSES, expression_columns, prototype_metadata
from video_fer.faces.gaze import GAZE_COLUMNS, gaze_columns
from video_fer.faces.head_pose import POSE_COLUMNS, fit_head_to_landmarks68, fit_head_to_mesh
from video_fer.track.settings import MEDIAPIPE_LANDMARKERS

MESH_POINTS = 478  # MediaPipe's face mesh with the 10 iris points
NUM_BLENDSHAPES = 52
GROUP_NEEDS = {"gaze": "MediaPipe's iris points (--landmarker mediapipe-zoom or mediapipe)",
               "au": "MediaPipe's blendshapes (--landmarker mediapipe-zoom or mediapipe)",
               "expression": "MediaPipe's blendshapes (--landmarker mediapipe-zoom or mediapipe)"}


def group_columns(group: str) -> list[str]:
    """The columns of one default group, in table order."""
    if group == "pose":
        return list(POSE_COLUMNS)
    if group == "gaze":
        return list(GAZE_COLUMNS)
    if group == "au":
        return intensity_column_names() + presence_column_names()
    if group == "expression":
        return [f"expression_{name}" for name in EXPRESSION_CLASSES] + ["expression"]
    raise ConfigError(f"default column group {group!r}: unknown; choose pose, gaze, au or expression")


class DefaultColumns:
    """Computes the default's column groups for the faces of a batch.

    Args:
        groups: which of ``pose``, ``gaze``, ``au``, ``expression``.
        landmarker: the landmarker ``track`` runs (its ``name``, ``model_path``, ``blendshapes``):
            gaze, AUs and expression need MediaPipe with blendshapes; pose works with any.

    Raises:
        ConfigError: a group the landmarker cannot feed, naming what it needs.
    """

    def __init__(self, groups: Sequence[str], landmarker) -> None:
        self.groups = tuple(groups)
        for group in self.groups:
            group_columns(group)
        mediapipe = getattr(landmarker, "name", None) in MEDIAPIPE_LANDMARKERS
        missing = [g for g in self.groups if g in GROUP_NEEDS and not mediapipe
                   or g in ("au", "expression") and not getattr(landmarker, "blendshapes", False)]
        if missing:
            raise ConfigError(f"the default columns {', '.join(missing)} need "
                              f"{'; '.join(sorted({GROUP_NEEDS[g] for g in missing}))}, and landmarker "
                              f"{getattr(landmarker, 'name', landmarker)!r} gives none; use --landmarker mediapipe-zoom "
                              "(the default) or mediapipe, or a bundle without those columns")
        self.geometry: FaceGeometry | None = None
        if mediapipe and self.groups:  # the mesh fit needs MediaPipe's canonical face (read from the .task file)
            self.geometry = geometry_of(landmarker.model_path)

    @property
    def needs_blendshapes(self) -> bool:
        return "au" in self.groups or "expression" in self.groups

    def columns(self) -> list[str]:
        return [name for group in self.groups for name in group_columns(group)]

    def __call__(self, landmarks: np.ndarray, meshes: np.ndarray | None, blendshapes: np.ndarray | None,
                 width: int, height: int) -> dict[str, np.ndarray]:
        """Per-face values of every column.

        Args:
            landmarks: float32 ``(F, 68, 2)`` pixels; meshes: ``(F, 478, 3)`` MediaPipe points in pixels or
                None; blendshapes: ``(F, 52)`` or None; width, height: the frame's size.

        Returns:
            ``{column: (F,)}`` (float64; ``expression`` is an object array of labels).
        """
        count = len(landmarks)
        values: dict[str, np.ndarray] = {}
        if not self.groups:
            return values
        use_mesh = meshes is not None and self.geometry is not None
        if "pose" in self.groups or "gaze" in self.groups:
            fit = (fit_head_to_mesh(meshes, width, height, self.geometry) if use_mesh
                   else fit_head_to_landmarks68(landmarks, width, height))
            if "pose" in self.groups:
                values.update(fit.columns())
            if "gaze" in self.groups:
                values.update(gaze_columns(meshes, fit) if use_mesh
                              else {name: np.full(count, np.nan) for name in GAZE_COLUMNS})
        if self.needs_blendshapes:
            shapes = blendshapes if blendshapes is not None else np.full((count, NUM_BLENDSHAPES), np.nan)
            aus = blendshape_aus(shapes)
            if "au" in self.groups:
                values.update(aus)
            if "expression" in self.groups:
                values.update(expression_columns(aus))
        return values

    @staticmethod
    def describe(groups: Sequence[str], landmarker_name: str) -> dict:
        """What the table's metadata says about these groups' columns (units, conventions, the AU table, prototypes)."""
        info: dict = {}
        if "pose" in groups:
            info["pose"] = {
                "columns": list(POSE_COLUMNS), "units": "mm (T), radians (R)",
                "convention": "OpenFace 2.x camera axis: camera x right, y down, z away; R = Rx Ry Rz; camera "
                              "focal 500 * (W/640 + H/480) / 2 px, principal point at the image centre",
                "fit": "MediaPipe's canonical face to the 478-point mesh" if landmarker_name in MEDIAPIPE_LANDMARKERS
                       else "the 3-D mean face to the 68 landmarks (T = the mean face's centroid)"}
        if "gaze" in groups:
            info["gaze"] = {"columns": list(GAZE_COLUMNS), "units": "unit vectors in camera coordinates; radians",
                            "convention": "OpenFace 2.x: gaze_0 = image-left eye; angle_x positive to the image's "
                                          "right, angle_y positive down"}
        if "au" in groups:
            info["au"] = {"intensity": "AUxx_r on 0-5", "presence": "AUxx_c = AUxx_r >= 1", "table": au_table_metadata()}
        if "expression" in groups:
            info["expression"] = prototype_metadata()
        return info


__all__ = ["DefaultColumns", "group_columns"]
