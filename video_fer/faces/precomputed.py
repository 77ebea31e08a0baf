"""Landmarks computed elsewhere: OpenFace 2.x CSV, and our own npz / CSV, as a Landmarker.

Formats read (one row per face per frame):
- OpenFace 2.x ``FeatureExtraction`` CSV: ``frame`` (1-based), optional ``face_id``, ``timestamp``,
  ``confidence``, ``success``, ``x_0..x_67``, ``y_0..y_67`` (header may have spaces after commas).
  Rows with ``success`` 0 give no face. Coordinates are used as written (OpenFace/OpenCV
  pixel coordinates, origin at the top-left pixel centre, like ours).
- our CSV: ``frame`` (0-based frame index), ``face_id``, ``score``, ``x_0..x_67``, ``y_0..y_67``.
- our npz: ``frame_index (N,)`` 0-based, ``face_id (N,)``, ``landmarks (N, 68, 2)``, ``score (N,)``.

The file for a video is found by an explicit mapping, else ``<video stem>.csv`` / ``.npz`` in the
given folder, else next to the video.
"""
from __future__ import annotations

import csv
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from video_fer.errors import LabelFileError
from video_fer.faces.boxes import boxes_from_points
from video_fer.faces.types import Face
from video_fer.io import atomic_path, atomic_write

LANDMARK_FILE_SUFFIXES = (".csv", ".npz")
_POINT_COLUMNS = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]


@dataclass
class LandmarkTable:
    """Faces of one video, one row per face per frame, sorted by frame.

    Attributes:
        frame_index: int64 ``(N,)`` 0-based frame index.
        face_id: int64 ``(N,)``.
        landmarks: float32 ``(N, 68, 2)`` pixels.
        score: float32 ``(N,)`` confidence.
        path: the file it came from.
    """

    frame_index: np.ndarray
    face_id: np.ndarray
    landmarks: np.ndarray
    score: np.ndarray
    path: Path | None = None

    def __post_init__(self) -> None:
        order = np.lexsort((self.face_id, self.frame_index))  # sorted by frame, then face
        self.frame_index = np.asarray(self.frame_index, dtype=np.int64)[order]
        self.face_id = np.asarray(self.face_id, dtype=np.int64)[order]
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32)[order]
        self.score = np.asarray(self.score, dtype=np.float32)[order]

    def __len__(self) -> int:
        return len(self.frame_index)

    def rows_of_frames(self, frame_indices: np.ndarray) -> list[np.ndarray]:
        """Row numbers of each requested frame's faces (empty where the file has none)."""
        starts = np.searchsorted(self.frame_index, frame_indices, side="left")
        ends = np.searchsorted(self.frame_index, frame_indices, side="right")
        return [np.arange(start, end) for start, end in zip(starts, ends)]


def _parse_number(text: str, path: Path, line: int, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise LabelFileError(f"{path}:{line}: column {column!r} has {text.strip()!r}, not a number; fix or regenerate the file") from None


def read_landmark_csv(path: str | os.PathLike) -> LandmarkTable:
    """OpenFace 2.x CSV (has ``success``) or our CSV (has ``score``) -> :class:`LandmarkTable`."""
    path = Path(path)
    try:
        return _read_landmark_csv(path)
    except (UnicodeDecodeError, csv.Error) as error:  # a binary file (an mp4 renamed, a zip...), NUL bytes
        raise LabelFileError(f"{path}: not a text CSV ({type(error).__name__}: {str(error)[:120]}); give an "
                             "OpenFace 2.x CSV, our landmark CSV or our npz") from None


def _read_landmark_csv(path: Path) -> LandmarkTable:
    with open(path, newline="") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = [name.strip() for name in next(reader, [])]
        is_openface = "success" in header
        required = ["frame"] + (["confidence", "success"] if is_openface else ["face_id", "score"]) + _POINT_COLUMNS
        missing = [name for name in required if name not in header]
        if missing:
            raise LabelFileError(
                f"{path}:1: header lacks columns {missing[:6]}{' ...' if len(missing) > 6 else ''}; expected an OpenFace 2.x "
                "CSV (frame, confidence, success, x_0..x_67, y_0..y_67) or frame, face_id, score, x_0..x_67, y_0..y_67"
            )
        position = {name: header.index(name) for name in header}
        point_positions = [position[name] for name in _POINT_COLUMNS]
        frames, face_ids, scores, points, lines = [], [], [], [], []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise LabelFileError(f"{path}:{line}: {len(row)} values but the header has {len(header)} columns")
            if is_openface and _parse_number(row[position["success"]], path, line, "success") == 0:
                continue  # OpenFace found no face in this frame
            frame = _parse_number(row[position["frame"]], path, line, "frame")
            frames.append(int(frame) - (1 if is_openface else 0))  # OpenFace counts frames from 1
            face_ids.append(int(_parse_number(row[position["face_id"]], path, line, "face_id")) if "face_id" in position else 0)
            scores.append(_parse_number(row[position["confidence" if is_openface else "score"]], path, line,
                                        "confidence" if is_openface else "score"))
            points.append([_parse_number(row[p], path, line, name) for p, name in zip(point_positions, _POINT_COLUMNS)])
            lines.append(line)
    coordinates = np.asarray(points, dtype=np.float32).reshape(-1, 2, 68).transpose(0, 2, 1)  # x block, y block -> (N, 68, 2)
    _check_finite(coordinates, np.asarray(scores, np.float32), path, [f"line {line}" for line in lines])
    return LandmarkTable(np.asarray(frames), np.asarray(face_ids), coordinates, np.asarray(scores), path)


def _check_finite(landmarks: np.ndarray, scores: np.ndarray, path: Path, rows: Sequence[str]) -> None:
    """LabelFileError naming the file and the first row with a NaN or infinite landmark or score."""
    finite = np.isfinite(landmarks.reshape(len(landmarks), -1)).all(axis=1) & np.isfinite(scores)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise LabelFileError(f"{path}: {rows[first]} holds a NaN or infinite landmark or score "
                             f"({int((~finite).sum())} of {len(finite)} rows do); fix or regenerate the file")


def read_landmark_npz(path: str | os.PathLike) -> LandmarkTable:
    """Our npz (``frame_index``, ``face_id``, ``landmarks``, ``score``) -> :class:`LandmarkTable`."""
    path = Path(path)
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in ("frame_index", "face_id", "landmarks", "score") if key in data}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise LabelFileError(f"{path}: not a readable npz file ({error}); regenerate it") from error
    missing = {"frame_index", "face_id", "landmarks", "score"} - set(arrays)
    if missing:
        raise LabelFileError(f"{path}: npz lacks arrays {sorted(missing)}; expected frame_index, face_id, landmarks, score")
    count = len(arrays["frame_index"])
    if arrays["landmarks"].shape != (count, 68, 2) or arrays["face_id"].shape != (count,) or arrays["score"].shape != (count,):
        raise LabelFileError(
            f"{path}: array shapes frame_index {arrays['frame_index'].shape}, face_id {arrays['face_id'].shape}, "
            f"landmarks {arrays['landmarks'].shape}, score {arrays['score'].shape} do not match (N,), (N,), (N, 68, 2), (N,)"
        )
    _check_finite(np.asarray(arrays["landmarks"], np.float32), np.asarray(arrays["score"], np.float32), path,
                  [f"frame {int(frame)}" for frame in arrays["frame_index"]])
    return LandmarkTable(arrays["frame_index"], arrays["face_id"], arrays["landmarks"], arrays["score"], path)


def read_landmark_file(path: str | os.PathLike) -> LandmarkTable:
    """Read a ``.csv`` (OpenFace or ours) or ``.npz`` landmark file."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"{path}: landmark file not found")
    if path.suffix.lower() == ".npz":
        return read_landmark_npz(path)
    if path.suffix.lower() == ".csv":
        return read_landmark_csv(path)
    raise LabelFileError(f"{path}: unknown landmark file type; use .csv (OpenFace 2.x or ours) or .npz")


def write_landmark_npz(path: str | os.PathLike, table: LandmarkTable) -> None:
    """Write our npz format atomically."""
    with atomic_path(path) as partial:
        with open(partial, "wb") as handle:
            np.savez(handle, frame_index=table.frame_index, face_id=table.face_id, landmarks=table.landmarks, score=table.score)


def write_landmark_csv(path: str | os.PathLike, table: LandmarkTable) -> None:
    """Write our CSV format (``frame`` 0-based, ``face_id``, ``score``, ``x_*``, ``y_*``) atomically."""
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "face_id", "score"] + _POINT_COLUMNS)
        for frame, face_id, score, points in zip(table.frame_index, table.face_id, table.score, table.landmarks):
            writer.writerow([int(frame), int(face_id), f"{score:.6g}"] + [f"{v:.6g}" for v in np.concatenate([points[:, 0], points[:, 1]])])


def find_landmark_file(video: str | os.PathLike, files: Mapping[str, str | os.PathLike] | None = None,
                       folder: str | os.PathLike | None = None) -> Path:
    """The landmark file of ``video``: ``files[video path | name | stem]``, else ``<stem>.csv|.npz`` in ``folder``, else beside the video."""
    video = Path(video)
    for key in (str(video), video.name, video.stem):
        if files and key in files:
            return Path(files[key])
    searched = []
    for directory in ([Path(folder)] if folder is not None else []) + [video.parent]:
        for suffix in LANDMARK_FILE_SUFFIXES:
            candidate = directory / f"{video.stem}{suffix}"
            searched.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise LabelFileError(f"{video}: no landmark file found (looked for {', '.join(searched)}); pass files={{...}} or folder=")


class PrecomputedLandmarker:
    """Serves faces from landmark files instead of running a model.

    Args:
        files: explicit mapping video (path, name or stem) -> landmark file.
        landmarks_dir: folder holding ``<video stem>.csv`` / ``.npz`` files (the CLI's ``--landmarks-dir``).
        min_score: rows scoring below this give no face.
        box_padding: boxes are the landmark extent grown by this fraction per side.
    """

    name = "precomputed"

    def __init__(self, files: Mapping[str, str | os.PathLike] | None = None, landmarks_dir: str | os.PathLike | None = None,
                 min_score: float = 0.0, box_padding: float = 0.0):
        self.files = dict(files or {})
        self.landmarks_dir = landmarks_dir
        self.min_score = float(min_score)
        self.box_padding = float(box_padding)
        self.table: LandmarkTable | None = None

    def start_clip(self, source: str | None, fps: float | None = None) -> None:
        """Load the landmark file of ``source`` (a video path)."""
        if source is None:
            raise LabelFileError("precomputed landmarks need the video path to find its landmark file (source=None given)")
        self.table = read_landmark_file(find_landmark_file(source, self.files, self.landmarks_dir))

    def __call__(self, frames, frame_indices: Sequence[int], timestamps: Sequence[float] | None = None) -> list[list[Face]]:
        """Faces of the requested frames (``frames`` is not looked at)."""
        if self.table is None:
            raise RuntimeError("PrecomputedLandmarker: call start_clip(video_path, fps) first")
        table = self.table
        results = []
        for rows in table.rows_of_frames(np.asarray(frame_indices, dtype=np.int64)):
            rows = rows[table.score[rows] >= self.min_score]
            boxes = boxes_from_points(table.landmarks[rows], self.box_padding) if len(rows) else []
            results.append([Face(box=box, score=float(table.score[row]), landmarks=table.landmarks[row])
                            for box, row in zip(boxes, rows)])
        return results

    def close(self) -> None:
        self.table = None
