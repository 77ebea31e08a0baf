"""Readers for AU benchmarks in the layouts they are distributed in, and their join with a face cache.

Every reader returns an :class:`AUFrameTable`: one row per labelled frame, columns as
numpy arrays (subject, task, frame number, image or video file, frame index in the
video, AU occurrence with -1 = not coded, optional intensity with NaN = not coded).

* BP4D: ``AU_OCC/F001_T1.csv`` (header row; first column the frame number; one column
  per AU number; values 0, 1, 9 = not coded) and frames ``F001/T1/0001.jpg``.
* DISFA: ``ActionUnit_Labels/SN001/SN001_au1.txt`` (lines ``frame,intensity``, 0-5,
  frames from 1) and ``Videos_LeftCamera/LeftVideoSN001_comp.avi``.
* Generic CSV for users' data: ``path, subject, [task], [frame], AU01, AU02, ...``.
* Blendshape AUs (distillation, no human labels): every frame of a face-track cache whose
  MediaPipe blendshapes are stored, labelled by the blendshape table
  (:mod:`video_fer.faces.blendshape_aus`): :func:`read_blendshape_aus`.

Malformed label files raise :class:`~video_fer.errors.LabelFileError` naming the file
and line. Frames are taken from the videos and aligned by ``video-fer prepare``;
:func:`join_with_face_cache` maps labelled frames to the cache's face tracks and
reports (never silently drops) the frames where no face was tracked.
"""
from __future__ import annotations

import csv
import glob
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from video_fer.data.folds import BP4D_AUS, DISFA_AUS, DISFA_OCCURRENCE_THRESHOLD, au_column_name
from video_fer.errors import CacheError, LabelFileError, VideoReadError

__all__ = [
    "AUFrame", "AUFrameTable", "read_bp4d_label_file", "read_bp4d", "read_disfa_label_file", "read_disfa",
    "read_au_csv", "read_blendshape_aus", "FaceCacheJoin", "match_frames_to_tracks", "join_with_face_cache",
]

BP4D_NOT_CODED = 9  # BP4D's code for "this AU was not coded in this frame"
NOT_CODED = -1  # our code for the same, in AUFrameTable.occurrence
DISFA_MAX_INTENSITY = 5
IMAGE_SOURCE_FRAME = -1  # source_frames value of a record whose source is a still image


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class AUFrame:
    """One labelled frame (a row of :class:`AUFrameTable`)."""

    subject: str
    task: str
    frame: int
    source: str
    source_frame: int
    occurrence: np.ndarray
    intensity: np.ndarray | None


@dataclass
class AUFrameTable:
    """Labelled frames as columns (N rows, A AUs).

    Attributes:
        au_numbers: the A AU numbers, column order of the label arrays.
        subjects, tasks: ``(N,)`` str; ``task`` is ``""`` where the dataset has none.
        frames: ``(N,)`` int64, the frame number as written in the label file (-1 if none).
        sources: ``(N,)`` str, the image file, or the video file the frame comes from.
        source_frames: ``(N,)`` int64, 0-based frame index in the video; -1 for a still image.
        occurrence: ``(N, A)`` int8 in {0, 1, -1}; -1 = not coded (mask it).
        intensity: ``(N, A)`` float32 with NaN = not coded, or None when the dataset has none.
    """

    au_numbers: tuple[int, ...]
    subjects: np.ndarray
    tasks: np.ndarray
    frames: np.ndarray
    sources: np.ndarray
    source_frames: np.ndarray
    occurrence: np.ndarray
    intensity: np.ndarray | None = None

    def __post_init__(self) -> None:
        count = len(self.subjects)
        columns = {"tasks": self.tasks, "frames": self.frames, "sources": self.sources,
                   "source_frames": self.source_frames, "occurrence": self.occurrence}
        if self.intensity is not None:
            columns["intensity"] = self.intensity
        for name, column in columns.items():
            if len(column) != count:
                raise ValueError(f"AUFrameTable.{name} has {len(column)} rows, subjects has {count}")
        for name in ("occurrence", "intensity"):
            labels = getattr(self, name)
            if labels is not None and labels.shape[1:] != (len(self.au_numbers),):
                raise ValueError(f"AUFrameTable.{name} has shape {labels.shape}, expected ({count}, "
                                 f"{len(self.au_numbers)}) for AUs {self.au_numbers}")

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> AUFrame:
        return AUFrame(str(self.subjects[index]), str(self.tasks[index]), int(self.frames[index]),
                       str(self.sources[index]), int(self.source_frames[index]), self.occurrence[index],
                       None if self.intensity is None else self.intensity[index])

    @property
    def au_names(self) -> list[str]:
        """OpenFace-style names of the AU columns (``AU01``, ``AU02``, ...)."""
        return [au_column_name(au) for au in self.au_numbers]

    @property
    def mask(self) -> np.ndarray:
        """``(N, A)`` bool, True where the AU was coded."""
        return self.occurrence != NOT_CODED

    def select(self, rows) -> "AUFrameTable":
        """A new table with the rows picked by a bool mask ``(N,)`` or integer indices."""
        rows = np.asarray(rows)
        return AUFrameTable(self.au_numbers, self.subjects[rows], self.tasks[rows], self.frames[rows],
                            self.sources[rows], self.source_frames[rows], self.occurrence[rows],
                            None if self.intensity is None else self.intensity[rows])

    def for_subjects(self, subjects: Iterable[str]) -> "AUFrameTable":
        """The rows of the given subjects (e.g. one side of :func:`~video_fer.data.folds.fold_split`)."""
        return self.select(np.isin(self.subjects, list(subjects)))

    @classmethod
    def concatenate(cls, tables: Sequence["AUFrameTable"]) -> "AUFrameTable":
        """Stack tables with the same AU columns."""
        if not tables:
            raise ValueError("concatenate: no tables given")
        au_numbers = tables[0].au_numbers
        for table in tables[1:]:
            if table.au_numbers != au_numbers:
                raise ValueError(f"concatenate: AU columns differ ({au_numbers} vs {table.au_numbers})")
        has_intensity = all(table.intensity is not None for table in tables)
        return cls(au_numbers, *(np.concatenate([getattr(t, name) for t in tables])
                                 for name in ("subjects", "tasks", "frames", "sources", "source_frames", "occurrence")),
                   np.concatenate([t.intensity for t in tables]) if has_intensity else None)


def _empty_table(au_numbers: Sequence[int], with_intensity: bool) -> AUFrameTable:
    return AUFrameTable(tuple(au_numbers), np.array([], dtype=str), np.array([], dtype=str),
                        np.zeros(0, np.int64), np.array([], dtype=str), np.zeros(0, np.int64),
                        np.zeros((0, len(au_numbers)), np.int8),
                        np.zeros((0, len(au_numbers)), np.float32) if with_intensity else None)


# ----------------------------------------------------------------------------- helpers
def _pattern_regex(pattern: str) -> re.Pattern:
    """A format pattern (``"{subject}_{task}.csv"``) -> a regex with named groups for its fields."""
    parts, seen = [], set()
    for literal, field_name, _, _ in string.Formatter().parse(pattern):
        parts.append(re.escape(literal))
        if field_name is None:
            continue
        if field_name in seen:
            parts.append(f"(?P={field_name})")  # the same field repeated must repeat the same text
        else:
            seen.add(field_name)
            parts.append(f"(?P<{field_name}>[^/]+?)")
    return re.compile("".join(parts) + r"\Z")


def _discover(root: Path, pattern: str, fixed: Mapping[str, object]) -> list[dict[str, str]]:
    """Fields of every file under ``root`` matching ``pattern`` (with ``fixed`` fields filled in), sorted."""
    fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name}
    wildcard = pattern.format(**{name: fixed.get(name, "*") for name in fields})
    regex = _pattern_regex(pattern.format(**{name: fixed[name] for name in fields if name in fixed},
                                          **{name: "{" + name + "}" for name in fields if name not in fixed}))
    found = []
    for path in sorted(glob.glob(glob.escape(str(root)) + "/" + wildcard)):
        match = regex.match(Path(path).relative_to(root).as_posix())
        if match:
            found.append(match.groupdict())
    return found


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, stripped fields) of each non-blank line of a CSV/TXT file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)  # reader.line_num: the line a row ends on, right even with quoted newlines
            return [(reader.line_num, [cell.strip() for cell in cells])
                    for cells in reader if any(cell.strip() for cell in cells)]
    except FileNotFoundError:
        raise LabelFileError(f"{path}: label file not found; check the dataset root and file pattern") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise LabelFileError(f"{path}: not a readable text/CSV file ({error})") from None


def _parse_numbers(path: Path, rows: list[tuple[int, list[str]]], columns: Sequence[int],
                   names: Sequence[str]) -> np.ndarray:
    """Selected columns of ``rows`` as float64 ``(n, len(columns))``; the first bad cell is named by line."""
    table = [[cells[column] for column in columns] for _, cells in rows]
    try:
        return np.array(table, dtype=np.float64).reshape(len(rows), len(columns))
    except ValueError:
        pass
    for (line, _), values in zip(rows, table):  # only on failure: find the offending line to name it
        for name, value in zip(names, values):
            try:
                float(value)
            except ValueError:
                raise LabelFileError(f"{path} line {line}: {name} = {value!r} is not a number") from None
    raise AssertionError("unreachable: conversion failed but every cell parsed")


def _check_frames(path: Path, frames: np.ndarray, lines: np.ndarray, allow_gaps: bool) -> None:
    """Frame numbers must be whole, unique and (unless allowed) without gaps; errors name the line."""
    fractional = frames != np.round(frames)
    if fractional.any():
        index = int(np.argmax(fractional))
        raise LabelFileError(f"{path} line {lines[index]}: frame number {frames[index]} is not a whole number")
    order = np.argsort(frames, kind="stable")
    sorted_frames = frames[order]
    repeated = np.flatnonzero(np.diff(sorted_frames) == 0)
    if repeated.size:
        first, second = sorted(lines[order[repeated[0]:repeated[0] + 2]])
        raise LabelFileError(f"{path} line {second}: frame {int(sorted_frames[repeated[0]])} is duplicated "
                             f"(already on line {first}); remove the repeated row")
    gaps = np.flatnonzero(np.diff(sorted_frames) > 1)
    if gaps.size and not allow_gaps:
        before = int(sorted_frames[gaps[0]])
        raise LabelFileError(
            f"{path} line {lines[order[gaps[0] + 1]]}: frames {before + 1}..{int(sorted_frames[gaps[0] + 1]) - 1} "
            f"are missing ({gaps.size} gap(s) in total); fix the file or pass allow_frame_gaps=True")


def _au_number(header: str) -> int | None:
    """``"12"``, ``"AU12"`` or ``"au12"`` -> 12; anything else -> None."""
    match = re.fullmatch(r"(?:AU)?0*(\d+)", header.strip(), flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- BP4D
def read_bp4d_label_file(path: str | os.PathLike, aus: Sequence[int] = BP4D_AUS,
                         allow_frame_gaps: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one BP4D AU occurrence file (``F001_T1.csv``).

    Layout: a header row; the first column is the frame number (whatever its header
    says), every other header is an AU number; values are 0, 1 or 9 (not coded).

    Returns:
        ``frames (n,) int64``, ``occurrence (n, A) int8`` in {0, 1, -1} for ``aus``,
        ``lines (n,) int64`` (the line of each row, for later messages).
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise LabelFileError(f"{path}: empty label file; expected a header row and one row per frame")
    header_line, header = rows[0]
    columns = {_au_number(name): index for index, name in enumerate(header) if index > 0}
    missing = [au for au in aus if au not in columns]
    if missing:
        raise LabelFileError(f"{path} line {header_line}: no column for AU {', '.join(map(str, missing))}; "
                             f"the header must name AU numbers after the frame column (found {header[1:6]}...)")
    body = rows[1:]
    for line, cells in body:
        if len(cells) != len(header):
            raise LabelFileError(f"{path} line {line}: {len(cells)} fields, the header has {len(header)}")
    if not body:
        return np.zeros(0, np.int64), np.zeros((0, len(aus)), np.int8), np.zeros(0, np.int64)
    lines = np.array([line for line, _ in body], dtype=np.int64)
    names = ["frame"] + [f"AU{au}" for au in aus]
    values = _parse_numbers(path, body, [0] + [columns[au] for au in aus], names)
    frames, codes = values[:, 0], values[:, 1:]
    invalid = ~np.isin(codes, (0, 1, BP4D_NOT_CODED))
    if invalid.any():
        row, column = np.argwhere(invalid)[0]
        raise LabelFileError(f"{path} line {lines[row]}: AU{aus[column]} = {codes[row, column]:g}; "
                             f"BP4D occurrence codes are 0, 1 or {BP4D_NOT_CODED} (not coded)")
    _check_frames(path, frames, lines, allow_frame_gaps)
    occurrence = np.where(codes == BP4D_NOT_CODED, NOT_CODED, codes).astype(np.int8)
    return frames.astype(np.int64), occurrence, lines


def read_bp4d(label_dir: str | os.PathLike, frames_root: str | os.PathLike,
              image_pattern: str = "{subject}/{task}/{frame:04d}.jpg",
              label_pattern: str = "{subject}_{task}.csv", aus: Sequence[int] = BP4D_AUS,
              subjects: Iterable[str] | None = None, check_images: bool = True,
              allow_frame_gaps: bool = False) -> AUFrameTable:
    """Read BP4D AU occurrence labels and pair each labelled frame with its image file.

    Args:
        label_dir: folder of the occurrence CSVs (``AUCoding/AU_OCC`` in the distribution).
        frames_root: folder holding the frames; an image is
            ``frames_root / image_pattern.format(subject=, task=, frame=)``.
        image_pattern: format string with ``{subject}``, ``{task}``, ``{frame}`` (zero
            padding as a format spec, e.g. ``{frame:04d}``).
        label_pattern: how label files are named inside ``label_dir``.
        aus: the AU columns to keep (default the standard 12).
        subjects: read only these subjects (default every label file found).
        check_images: raise when a labelled frame's image file is missing.
        allow_frame_gaps: accept label files whose frame numbers skip values.

    Returns:
        An :class:`AUFrameTable` (still images: ``source_frames`` = -1; no intensity).
    """
    label_dir, frames_root = Path(label_dir), Path(frames_root)
    if not label_dir.is_dir():
        raise LabelFileError(f"{label_dir}: BP4D label folder not found; pass the folder of F001_T1.csv etc.")
    wanted = None if subjects is None else set(subjects)
    found = [names for names in _discover(label_dir, label_pattern, {})
             if wanted is None or names["subject"] in wanted]
    if not found:
        raise LabelFileError(f"{label_dir}: no label file named like {label_pattern!r}"
                             + ("" if wanted is None else f" for subjects {sorted(wanted)}"))
    if wanted is not None and (absent := wanted - {names["subject"] for names in found}):
        raise LabelFileError(f"{label_dir}: no label file for subject(s) {', '.join(sorted(absent))}")
    tables = []
    for names in found:
        label_path = label_dir / label_pattern.format(**names)
        frames, occurrence, lines = read_bp4d_label_file(label_path, aus, allow_frame_gaps)
        sources = np.array([str(frames_root / image_pattern.format(subject=names["subject"], task=names["task"],
                                                                   frame=int(frame))) for frame in frames], dtype=str)
        if check_images:
            missing = np.array([not os.path.isfile(source) for source in sources], dtype=bool)
            if missing.any():
                index = int(np.argmax(missing))
                raise LabelFileError(
                    f"{label_path} line {lines[index]}: image {sources[index]} for frame {frames[index]} not found"
                    f" ({int(missing.sum())} of {len(frames)} frames of this file missing); check frames_root "
                    f"and image_pattern, or pass check_images=False")
        count = len(frames)
        tables.append(AUFrameTable(tuple(aus), np.full(count, names["subject"]), np.full(count, names["task"]),
                                   frames, sources, np.full(count, IMAGE_SOURCE_FRAME, np.int64), occurrence))
    return AUFrameTable.concatenate(tables)


# ----------------------------------------------------------------------------- DISFA
def read_disfa_label_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one DISFA intensity file (``SN001_au1.txt``: lines ``frame,intensity``, intensity 0-5).

    Returns ``frames (n,) int64``, ``intensity (n,) float32``, ``lines (n,) int64``, sorted by frame.
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise LabelFileError(f"{path}: empty label file; expected lines 'frame,intensity'")
    for line, cells in rows:
        if len(cells) != 2:
            raise LabelFileError(f"{path} line {line}: {len(cells)} fields {cells[:4]}; expected 'frame,intensity'")
    lines = np.array([line for line, _ in rows], dtype=np.int64)
    values = _parse_numbers(path, rows, [0, 1], ["frame", "intensity"])
    frames, intensity = values[:, 0], values[:, 1]
    invalid = (intensity < 0) | (intensity > DISFA_MAX_INTENSITY) | (intensity != np.round(intensity))
    if invalid.any():
        index = int(np.argmax(invalid))
        raise LabelFileError(f"{path} line {lines[index]}: intensity {intensity[index]:g}; "
                             f"DISFA intensities are whole numbers 0..{DISFA_MAX_INTENSITY}")
    _check_frames(path, frames, lines, allow_gaps=True)  # gaps are judged across the AU files of a subject
    order = np.argsort(frames, kind="stable")
    return frames[order].astype(np.int64), intensity[order].astype(np.float32), lines[order]


def _video_frame_count(path: Path) -> int:
    from video_fer.video import VideoReader  # decoding is only needed for this optional check

    return VideoReader(path).num_frames


def read_disfa(root: str | os.PathLike, aus: Sequence[int] = DISFA_AUS, subjects: Iterable[str] | None = None,
               label_pattern: str = "ActionUnit_Labels/{subject}/{subject}_au{au}.txt",
               video_pattern: str = "Videos_LeftCamera/LeftVideo{subject}_comp.avi",
               occurrence_threshold: float = DISFA_OCCURRENCE_THRESHOLD, first_frame_number: int = 1,
               check_videos: bool = True, check_frame_counts: bool = True,
               allow_frame_gaps: bool = False) -> AUFrameTable:
    """Read DISFA AU intensities of the left camera; occurrence is ``intensity >= 2``.

    Args:
        root: the DISFA folder holding ``ActionUnit_Labels/`` and ``Videos_LeftCamera/``.
        aus: the AUs to read (default the standard 8; one file per AU and subject).
        subjects: read only these subjects (default every subject folder found).
        label_pattern, video_pattern: file layout relative to ``root``.
        occurrence_threshold: intensity from which an AU counts as present.
        first_frame_number: the frame number of the video's first frame in the label
            files (DISFA counts from 1), so ``source_frame = frame - first_frame_number``.
        check_videos: raise when a subject's video is missing.
        check_frame_counts: open each video and raise when labels point past its end.
        allow_frame_gaps: accept frame numbers that skip values (all AU files must
            still list the same frames).

    Returns:
        An :class:`AUFrameTable` with ``occurrence`` and ``intensity``; ``task`` is ``""``.
    """
    root = Path(root)
    if subjects is None:
        subjects = sorted({names["subject"] for names in _discover(root, label_pattern, {"au": aus[0]})})
        if not subjects:
            raise LabelFileError(f"{root}: no DISFA label file like {label_pattern.format(subject='SN001', au=aus[0])}"
                                 "; pass the DISFA root folder")
    tables = []
    for subject in subjects:
        per_au = [read_disfa_label_file(root / label_pattern.format(subject=subject, au=au)) for au in aus]
        reference_path = root / label_pattern.format(subject=subject, au=aus[0])
        reference_frames = per_au[0][0]
        for au, (frames, _, lines) in zip(aus[1:], per_au[1:]):  # every AU file must cover the same frames
            path = root / label_pattern.format(subject=subject, au=au)
            extra = np.setdiff1d(frames, reference_frames)
            if extra.size:
                line = lines[np.searchsorted(frames, extra[0])]
                raise LabelFileError(f"{path} line {line}: frame {extra[0]} is not in {reference_path.name} "
                                     f"({extra.size} such frame(s)); the AU files of {subject} must list "
                                     "the same frames")
            absent = np.setdiff1d(reference_frames, frames)
            if absent.size:
                raise LabelFileError(f"{path}: frame {absent[0]} is missing ({absent.size} frame(s) listed in "
                                     f"{reference_path.name} are absent); the AU files of {subject} must list "
                                     "the same frames")
        _check_frames(reference_path, reference_frames.astype(np.float64), per_au[0][2], allow_frame_gaps)
        video = root / video_pattern.format(subject=subject)
        if check_videos and not video.is_file():
            raise VideoReadError(f"{video}: DISFA video of {subject} not found; check root and video_pattern")
        source_frames = reference_frames - first_frame_number
        if source_frames.size and source_frames[0] < 0:
            raise LabelFileError(f"{reference_path} line {per_au[0][2][0]}: frame {reference_frames[0]} comes before "
                                 f"the first frame number {first_frame_number}; set first_frame_number")
        if check_frame_counts and source_frames.size:
            num_frames = _video_frame_count(video)
            if source_frames[-1] >= num_frames:
                raise LabelFileError(f"{reference_path} line {per_au[0][2][-1]}: frame {reference_frames[-1]} is past "
                                     f"the end of {video.name} ({num_frames} frames); wrong video or "
                                     "first_frame_number")
        intensity = np.stack([values for _, values, _ in per_au], axis=1)
        count = len(reference_frames)
        tables.append(AUFrameTable(tuple(aus), np.full(count, subject), np.full(count, ""), reference_frames,
                                   np.full(count, str(video)), source_frames,
                                   (intensity >= occurrence_threshold).astype(np.int8), intensity))
    return AUFrameTable.concatenate(tables) if tables else _empty_table(aus, with_intensity=True)


# ----------------------------------------------------------------------------- generic CSV
def read_au_csv(path: str | os.PathLike, root: str | os.PathLike | None = None, aus: Sequence[int] | None = None,
                occurrence_threshold: float | None = None) -> AUFrameTable:
    """Read a user's AU label CSV: columns ``path, subject, AU01, AU02, ...``.

    Optional columns: ``task``; ``frame`` (0-based frame index when ``path`` is a video;
    leave it out or empty for images). AU columns are named ``AUxx`` (``AU1`` or ``AU01``);
    an empty cell means "not coded". Other columns are ignored.

    Args:
        path: the CSV file.
        root: folder that relative ``path`` values are resolved against (default the CSV's folder).
        aus: AU numbers to read (default every AU column, in increasing order).
        occurrence_threshold: None when the values are occurrence 0/1; for intensities, the
            value from which an AU counts as present (e.g. 2 as for DISFA).

    Returns:
        An :class:`AUFrameTable`; ``intensity`` holds the raw values (NaN = not coded).
    """
    path = Path(path)
    root = path.parent if root is None else Path(root)
    rows = _read_rows(path)
    if not rows:
        raise LabelFileError(f"{path}: empty label file; expected a header 'path,subject,AU01,...'")
    header_line, header = rows[0]
    lowered = [name.lower() for name in header]
    for required in ("path", "subject"):
        if required not in lowered:
            raise LabelFileError(f"{path} line {header_line}: no {required!r} column; the header must start "
                                 f"with path,subject,AU01,... (found {header})")
    au_columns: dict[int, int] = {}
    for index, name in enumerate(header):
        match = re.fullmatch(r"AU0*(\d+)", name, flags=re.IGNORECASE)
        if match:
            number = int(match.group(1))
            if number in au_columns:
                raise LabelFileError(f"{path} line {header_line}: AU{number} has two columns")
            au_columns[number] = index
    au_numbers = tuple(sorted(au_columns)) if aus is None else tuple(aus)
    if not au_numbers or (absent := [au for au in au_numbers if au not in au_columns]):
        raise LabelFileError(f"{path} line {header_line}: no column for AU "
                             f"{', '.join(map(str, absent)) if au_numbers else '(none)'}; "
                             "name AU columns AU01, AU02, ...")
    body = rows[1:]
    for line, cells in body:
        if len(cells) != len(header):
            raise LabelFileError(f"{path} line {line}: {len(cells)} fields, the header has {len(header)}")
    if not body:
        return _empty_table(au_numbers, with_intensity=True)
    column = {name: lowered.index(name) for name in ("path", "subject", "task", "frame") if name in lowered}
    lines = np.array([line for line, _ in body], dtype=np.int64)
    for line, cells in body:
        if not cells[column["path"]] or not cells[column["subject"]]:
            raise LabelFileError(f"{path} line {line}: empty path or subject")
    # empty AU cell = not coded -> NaN; parse the rest as numbers
    filled = [(line, [cell if cell else "nan" for cell in cells]) for line, cells in body]
    values = _parse_numbers(path, filled, [au_columns[au] for au in au_numbers], [f"AU{au:02d}" for au in au_numbers])
    if "frame" in column:
        frame_cells = [(line, [cells[column["frame"]] or str(IMAGE_SOURCE_FRAME)]) for line, cells in body]
        frames = _parse_numbers(path, frame_cells, [0], ["frame"])[:, 0]
        bad = (frames != np.round(frames)) | (frames < IMAGE_SOURCE_FRAME)
        if bad.any():
            raise LabelFileError(f"{path} line {lines[np.argmax(bad)]}: frame {frames[np.argmax(bad)]:g} is not a "
                                 "0-based frame index")
        frames = frames.astype(np.int64)
    else:
        frames = np.full(len(body), IMAGE_SOURCE_FRAME, np.int64)
    sources = np.array([str(Path(cells[column["path"]]) if Path(cells[column["path"]]).is_absolute()
                            else root / cells[column["path"]]) for _, cells in body], dtype=str)
    _check_unique_sources(path, sources, frames, lines)
    coded = np.isfinite(values)
    if occurrence_threshold is None:
        not_binary = coded & ~np.isin(values, (0, 1))
        if not_binary.any():
            row, col = np.argwhere(not_binary)[0]
            raise LabelFileError(f"{path} line {lines[row]}: AU{au_numbers[col]:02d} = {values[row, col]:g} "
                                 "is not 0/1; "
                                 "pass occurrence_threshold (e.g. 2 as for DISFA) for intensity labels")
        present = values == 1
    else:
        present = values >= occurrence_threshold
    occurrence = np.where(coded, present, NOT_CODED).astype(np.int8)
    tasks = (np.array([cells[column["task"]] for _, cells in body], dtype=str) if "task" in column
             else np.full(len(body), ""))
    subjects = np.array([cells[column["subject"]] for _, cells in body], dtype=str)
    return AUFrameTable(au_numbers, subjects, tasks, frames.copy(), sources, frames, occurrence,
                        values.astype(np.float32))


def read_blendshape_aus(cache, aus: Sequence[int] | None = None,
                        presence_intensity: float | None = None) -> AUFrameTable:
    """Labels for distillation: every cached frame's AUs from its MediaPipe blendshapes (no human labels).

    Each track's per-frame ``blendshapes`` (stored by ``video-fer prepare`` with MediaPipe) go through the
    blendshape table; subject = the track's identity, task = its video key, source = its video.

    Args:
        cache: a :class:`~video_fer.data.cache.FaceTrackCache`.
        aus: AU numbers to keep (default: the table's 17 intensity AUs).
        presence_intensity: occurrence = intensity >= this (default: the table's presence threshold, 1).

    Returns:
        an :class:`AUFrameTable` with ``intensity`` (0-5; NaN where a frame has no blendshapes) and ``occurrence``.

    Raises:
        CacheError: the cache stores no blendshapes (prepared with another landmarker).
    """
    from video_fer.faces.blendshape_aus import INTENSITY_AUS, PRESENCE_INTENSITY, blendshape_aus

    aus = tuple(INTENSITY_AUS if aus is None else aus)
    unknown = [au for au in aus if au not in INTENSITY_AUS]
    if unknown:
        raise LabelFileError(f"blendshape AUs: the table gives no intensity for AU {unknown}; choose from "
                             f"{list(INTENSITY_AUS)}")
    threshold = PRESENCE_INTENSITY if presence_intensity is None else presence_intensity
    columns: dict[str, list] = {"subjects": [], "tasks": [], "sources": [], "frames": [], "intensity": []}
    without = []
    for track in cache.tracks:
        arrays = cache.track_arrays(track.track_id)
        if "blendshapes" not in arrays:
            without.append(track.track_id)
            continue
        values = blendshape_aus(arrays["blendshapes"])
        frames = np.asarray(arrays["frame_indices"], np.int64)
        columns["subjects"].append(np.full(len(frames), track.identity))
        columns["tasks"].append(np.full(len(frames), track.video_key))
        columns["sources"].append(np.full(len(frames), track.source))
        columns["frames"].append(frames)
        columns["intensity"].append(np.stack([values[f"AU{au:02d}_r"] for au in aus], 1))
    if not columns["frames"]:
        raise CacheError(f"{getattr(cache, 'root', cache)}: no track stores MediaPipe blendshapes ({len(without)} "
                         "tracks without); prepare the videos with --landmarker mediapipe")
    intensity = np.concatenate(columns["intensity"]).astype(np.float32)
    occurrence = np.where(np.isnan(intensity), NOT_CODED, intensity >= threshold).astype(np.int8)
    frames = np.concatenate(columns["frames"])
    return AUFrameTable(aus, np.concatenate(columns["subjects"]).astype(str), np.concatenate(columns["tasks"]).astype(str),
                        frames, np.concatenate(columns["sources"]).astype(str), frames, occurrence, intensity)


def _check_unique_sources(path: Path, sources: np.ndarray, frames: np.ndarray, lines: np.ndarray) -> None:
    """A (file, frame) pair labelled twice is an error naming both lines."""
    first_line: dict[tuple[str, int], int] = {}
    for source, frame, line in zip(sources.tolist(), frames.tolist(), lines.tolist()):
        key = (source, frame)
        if key in first_line:
            where = source if frame == IMAGE_SOURCE_FRAME else f"{source} frame {frame}"
            raise LabelFileError(f"{path} line {line}: {where} is duplicated (already on line {first_line[key]})")
        first_line[key] = line


# ----------------------------------------------------------------------------- join with the face cache
@dataclass
class FaceCacheJoin:
    """Where each labelled frame lives in a face-track cache, and which frames have no face.

    Attributes:
        track_ids: ``(N,)`` str, the track of each table row, ``""`` where no face was tracked.
        track_positions: ``(N,)`` int64 position of the frame inside that track (for
            ``FaceTrackCache.read_frames``), -1 if none.
        frames_per_subject: labelled frames of each subject.
        unmatched_per_subject: labelled frames of each subject without a tracked face.
        sources_without_tracks: label sources with no track at all in the cache (not prepared?).
        ambiguous_frames: matched frames covered by more than one track (the longest was used).
    """

    track_ids: np.ndarray
    track_positions: np.ndarray
    frames_per_subject: dict[str, int]
    unmatched_per_subject: dict[str, int]
    sources_without_tracks: list[str] = field(default_factory=list)
    ambiguous_frames: int = 0

    @property
    def matched(self) -> np.ndarray:
        """``(N,)`` bool, True where the labelled frame has a tracked face."""
        return self.track_positions >= 0

    def summary(self) -> str:
        """Human-readable report: per subject, how many labelled frames have no face."""
        total_unmatched = sum(self.unmatched_per_subject.values())
        total = sum(self.frames_per_subject.values())
        lines = [f"{total - total_unmatched} of {total} labelled frames have a face in the cache; "
                 f"{total_unmatched} have none"]
        lines += [f"  {subject}: {missing} of {self.frames_per_subject[subject]} frames without a face"
                  for subject, missing in self.unmatched_per_subject.items() if missing]
        if self.sources_without_tracks:
            shown = ", ".join(self.sources_without_tracks[:5]) + (" ..." if len(self.sources_without_tracks) > 5 else "")
            lines.append(f"  {len(self.sources_without_tracks)} source(s) have no track at all (prepare them?): {shown}")
        if self.ambiguous_frames:
            lines.append(f"  {self.ambiguous_frames} frames are in several tracks; the longest track was used")
        return "\n".join(lines)


def _field(row, name: str):
    """A field of an index row given as a mapping or an object with attributes."""
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def _optional_field(row, name: str):
    """A field of an index row, or None when the row does not have it."""
    if isinstance(row, Mapping):
        return row.get(name)
    return getattr(row, name, None)


def _source_key(path: str) -> str:
    return os.path.normcase(os.path.abspath(os.fspath(path)))


def match_frames_to_tracks(sources: Sequence[str], source_frames: Sequence[int], subjects: Sequence[str],
                           track_rows: Iterable, frame_indices_of: Callable[[object], np.ndarray]) -> FaceCacheJoin:
    """Map labelled frames to face-track frames (pure: arrays and index rows in, a report out).

    Args:
        sources: ``(N,)`` image or video file of each labelled frame.
        source_frames: ``(N,)`` 0-based frame index in the video, -1 for a still image (frame 0).
        subjects: ``(N,)`` subject of each labelled frame (for the per-subject report).
        track_rows: index rows (mappings or objects such as ``TrackInfo``) with ``source``,
            ``first_frame``, ``num_frames``, ``track_id`` and optionally ``last_frame``.
        frame_indices_of: ``track_id -> (n,)`` source-video frame index of each track frame.

    A source is matched by its absolute path, else by its file name when that name is
    unique among the cache's sources. A frame in several tracks goes to the longest one.
    """
    sources = np.asarray(sources, dtype=str)
    frames = np.maximum(np.asarray(source_frames, dtype=np.int64), 0)  # a still image is frame 0 of its source
    subjects = np.asarray(subjects, dtype=str)
    track_numbers = np.full(len(sources), -1, np.int64)  # index into track_names, -1 = no face
    track_names: list[str] = []
    positions = np.full(len(sources), -1, np.int64)

    tracks_by_source: dict[str, list] = {}
    for row in track_rows:
        tracks_by_source.setdefault(_source_key(str(_field(row, "source"))), []).append(row)
    names = [os.path.normcase(os.path.basename(key)) for key in tracks_by_source]
    unique_names = {name: key for name, key in zip(names, tracks_by_source) if names.count(name) == 1}

    unique_sources, inverse = np.unique(sources, return_inverse=True)
    without_tracks, ambiguous = [], 0
    for source_index, source in enumerate(unique_sources):  # vectorised within each source video
        key = _source_key(source)
        fallback = unique_names.get(os.path.normcase(os.path.basename(key)), "")  # same file name elsewhere
        rows = tracks_by_source.get(key) or tracks_by_source.get(fallback)
        if not rows:
            without_tracks.append(str(source))
            continue
        record_rows = np.flatnonzero(inverse == source_index)
        wanted = frames[record_rows]
        candidate_frames, candidate_tracks, candidate_positions, candidate_lengths = [], [], [], []
        for row in rows:
            first, count = int(_field(row, "first_frame")), int(_field(row, "num_frames"))
            # a subsampled track spans first..last_frame, wider than num_frames; without last_frame, no upper bound
            last = _optional_field(row, "last_frame")
            in_span = (wanted >= first) & (wanted <= (int(last) if last is not None else wanted.max()))
            if count <= 0 or not in_span.any():
                continue  # skip reading the track's frame list when its span misses every labelled frame
            track_frames = np.asarray(frame_indices_of(_field(row, "track_id")), dtype=np.int64)
            track_names.append(str(_field(row, "track_id")))
            candidate_frames.append(track_frames)
            candidate_tracks.append(np.full(len(track_frames), len(track_names) - 1, np.int64))
            candidate_positions.append(np.arange(len(track_frames), dtype=np.int64))
            candidate_lengths.append(np.full(len(track_frames), len(track_frames), np.int64))
        if not candidate_frames:
            continue
        all_frames = np.concatenate(candidate_frames)
        all_tracks, all_positions = np.concatenate(candidate_tracks), np.concatenate(candidate_positions)
        order = np.lexsort((-np.concatenate(candidate_lengths), all_frames))  # by frame, longest track first
        all_frames, all_tracks, all_positions = all_frames[order], all_tracks[order], all_positions[order]
        unique_frames, first_index, counts = np.unique(all_frames, return_index=True, return_counts=True)
        slot = np.clip(np.searchsorted(unique_frames, wanted), 0, len(unique_frames) - 1)
        hit = unique_frames[slot] == wanted
        track_numbers[record_rows[hit]] = all_tracks[first_index[slot[hit]]]
        positions[record_rows[hit]] = all_positions[first_index[slot[hit]]]
        ambiguous += int((counts[slot[hit]] > 1).sum())

    subject_names, subject_inverse = np.unique(subjects, return_inverse=True)
    totals = np.bincount(subject_inverse, minlength=len(subject_names))
    unmatched = np.bincount(subject_inverse, weights=(track_numbers < 0), minlength=len(subject_names))
    track_ids = np.array(track_names + [""], dtype=str)[track_numbers]  # -1 picks the trailing ""
    return FaceCacheJoin(track_ids, positions,
                         {str(name): int(total) for name, total in zip(subject_names, totals)},
                         {str(name): int(missing) for name, missing in zip(subject_names, unmatched)},
                         without_tracks, ambiguous)


def _cache_frame_indices(cache) -> Callable[[object], np.ndarray]:
    """``track_id -> frame_indices`` for a FaceTrackCache (per-track npz ``frame_indices``)."""
    if callable(getattr(cache, "track_arrays", None)):  # video_fer.data.cache.FaceTrackCache
        return lambda track_id: cache.track_arrays(track_id)["frame_indices"]
    if callable(getattr(cache, "frame_indices", None)):
        return cache.frame_indices
    raise CacheError(f"{getattr(cache, 'root', cache)}: this cache object offers no per-track frame_indices; "
                     "pass frame_indices_of to match_frames_to_tracks")


def join_with_face_cache(table: AUFrameTable, cache) -> FaceCacheJoin:
    """Map the labelled frames of ``table`` to the face tracks of ``cache`` (a ``FaceTrackCache``).

    The result reports the frames without a face per subject; keep the matched rows
    with ``table.select(join.matched)`` and print ``join.summary()`` so nothing is dropped silently.
    """
    return match_frames_to_tracks(table.sources, table.source_frames, table.subjects, cache.tracks,
                                  _cache_frame_indices(cache))
