"""Agreement of a track table with OpenFace 2.x's output for the same clip (a reference, not ground truth).

OpenFace's own AU agreement with human coders is modest, so these numbers say how close we come
to a widely used tool, not how right either is. Frames are matched by number (OpenFace counts
from 1, ``track`` from 0); per frame the table's main face (the face id in most rows) is
compared with OpenFace's face 0.

- ``success``: the fraction of frames where both say the same (face found or not);
- on the frames where both found the face: Pearson r per AU intensity (``AUxx_r``), presence
  agreement and F1 per AU (``AUxx_c``), head pose r and mean absolute error (degrees for
  ``pose_R*``, mm for ``pose_T*``), gaze r and mean absolute error (degrees) of the two angles.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from video_fer.errors import LabelFileError

POSE_ANGLES = ("pose_Rx", "pose_Ry", "pose_Rz")
POSE_TRANSLATION = ("pose_Tx", "pose_Ty", "pose_Tz")
GAZE_ANGLES = ("gaze_angle_x", "gaze_angle_y")


def read_openface_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An OpenFace 2.x ``FeatureExtraction`` CSV -> ``{column: float64 (N,)}`` (header spaces stripped).

    Raises:
        LabelFileError: naming the file (and line) when it is empty or a row has another number of cells.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise LabelFileError(f"{path}: empty file; expected an OpenFace CSV with a header row")
        rows = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise LabelFileError(f"{path}, line {line}: {len(row)} cells, the header has {len(header)}")
            try:
                rows.append([float(cell) for cell in row])
            except ValueError as error:
                raise LabelFileError(f"{path}, line {line}: {error}; expected numbers only") from None
    values = np.array(rows, dtype=np.float64).reshape(-1, len(header))
    return {name: values[:, k] for k, name in enumerate(header)}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r, NaN when either side is constant or fewer than 3 pairs are finite."""
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def main_face_by_frame(table: Mapping[str, np.ndarray]) -> dict[int, int]:
    """Frame -> row of the table's main face (the face id in most rows with ``success`` 1)."""
    found = table["success"] == 1
    if not found.any():
        return {}
    ids, counts = np.unique(table["face_id"][found], return_counts=True)
    main = ids[counts.argmax()]
    return {int(table["frame"][row]): int(row) for row in np.flatnonzero(found & (table["face_id"] == main))}


def matched_frames(table: Mapping[str, np.ndarray], openface: Mapping[str, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(frames, our rows or -1, OpenFace rows, both found)`` over the frames both tables cover."""
    ours = main_face_by_frame(table)
    theirs = {}
    face_zero = openface["face_id"] == 0 if "face_id" in openface else np.ones(len(openface["frame"]), bool)
    for row in np.flatnonzero(face_zero):
        theirs[int(openface["frame"][row]) - 1] = int(row)
    frames = np.array(sorted(set(np.unique(table["frame"]).tolist()) & set(theirs)), np.int64)
    our_rows = np.array([ours.get(int(frame), -1) for frame in frames], np.int64)
    their_rows = np.array([theirs[int(frame)] for frame in frames], np.int64)
    both = (our_rows >= 0) & (openface["success"][their_rows] > 0)
    return frames, our_rows, their_rows, both


def matched_values(table: Mapping[str, np.ndarray], openface: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    """The pairs :func:`agreement_of_pairs` scores: ``"success"`` -> (ours found, OpenFace found) over the matched
    frames, and every column both tables have -> (ours, OpenFace) on the frames where both found the face."""
    frames, our_rows, their_rows, both = matched_frames(table, openface)
    pairs: dict[str, tuple] = {"success": (our_rows >= 0, openface["success"][their_rows] > 0)}
    mine, theirs = our_rows[both], their_rows[both]
    for name in set(table) & set(openface):
        if name.startswith(("AU", "pose_", "gaze_")):
            pairs[name] = (np.asarray(table[name], np.float64)[mine], np.asarray(openface[name], np.float64)[theirs])
    return pairs


def pool_pairs(pair_sets: list[dict[str, tuple]]) -> dict[str, tuple]:
    """Concatenate the pairs of several clips (columns every clip has)."""
    names = set.intersection(*(set(pairs) for pairs in pair_sets))
    return {name: tuple(np.concatenate([pairs[name][k] for pairs in pair_sets]) for k in range(2)) for name in names}


def agreement_of_pairs(pairs: Mapping[str, tuple]) -> dict:
    """Scores of :func:`matched_values`' pairs; see :func:`agreement`."""
    ours_found, theirs_found = pairs["success"]
    both = int((ours_found & theirs_found).sum())
    result: dict = {"frames": int(len(ours_found)), "both_found": both,
                    "success_agreement": float((ours_found == theirs_found).mean()) if len(ours_found) else float("nan"),
                    "au_r": {}, "au_c_agreement": {}, "au_c_f1": {}, "pose": {}, "gaze": {}}
    for name in sorted(pairs):
        a, b = pairs[name]
        if name.startswith("AU") and name.endswith("_r"):
            result["au_r"][name[:-2]] = pearson(a, b)
        elif name.startswith("AU") and name.endswith("_c"):
            a, b = a >= 0.5, b >= 0.5
            result["au_c_agreement"][name[:-2]] = float((a == b).mean()) if len(a) else float("nan")
            denominator = a.sum() + b.sum()
            result["au_c_f1"][name[:-2]] = float(2 * (a & b).sum() / denominator) if denominator else float("nan")
    for names, scale, group in ((POSE_ANGLES, 180.0 / np.pi, "pose"), (POSE_TRANSLATION, 1.0, "pose"),
                                (GAZE_ANGLES, 180.0 / np.pi, "gaze")):
        for name in names:
            if name in pairs:
                a, b = pairs[name]
                error = np.abs(a - b) * scale
                result[group][name] = {"r": pearson(a, b),
                                       "mae": float(np.nanmean(error)) if np.isfinite(error).any() else float("nan")}
    values = [r for r in result["au_r"].values() if np.isfinite(r)]
    result["mean_au_r"] = float(np.mean(values)) if values else float("nan")
    return result


def agreement(table: Mapping[str, np.ndarray], openface: Mapping[str, np.ndarray]) -> dict:
    """Agreement of a track table with an OpenFace table (see the module doc).

    Returns:
        ``{"frames", "both_found", "success_agreement", "au_r": {AU: r}, "mean_au_r", "au_c_agreement": {AU: acc},
        "au_c_f1": {AU: f1}, "pose": {column: {"r", "mae"}}, "gaze": {column: {"r", "mae"}}}``; columns one
        of the two tables lacks are left out (angles in degrees, translations in mm).
    """
    return agreement_of_pairs(matched_values(table, openface))


__all__ = ["agreement", "agreement_of_pairs", "main_face_by_frame", "matched_frames", "matched_values", "pearson",
           "pool_pairs", "read_openface_csv"]
