"""Expression and valence/arousal labels: benchmark readers and the controlled synthetic set.

Every reader returns an :class:`ExpressionTable` (one row per labelled image, columns as
numpy arrays); images are then aligned through the face front end by
:func:`video_fer.data.face_images.align_image_files` (cached).

* RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (lines ``train_00001.jpg 5``, labels
  1-7 = surprise, fear, disgust, happiness, sadness, anger, neutral) and images
  ``Image/aligned/train_00001_aligned.jpg`` (or ``Image/original/train_00001.jpg``).
* AffectNet: ``training.csv`` / ``validation.csv`` with ``subDirectory_filePath, face_x,
  face_y, face_width, face_height, facial_landmarks, expression, valence, arousal``;
  expression 0-7 (8 none, 9 uncertain, 10 no-face are excluded), valence/arousal in
  [-1, 1] with -2 = invalid (NaN here).
* FERPlus: ``fer2013new.csv`` (``Usage, Image name, neutral, ..., contempt, unknown, NF``
  vote counts of 10 taggers); ``majority`` or ``distribution`` targets.
* Generic layouts for users' data: one folder per class, or a CSV ``path, label``
  (+ optional ``subject, split, valence, arousal``).

Malformed rows raise :class:`~video_fer.errors.LabelFileError` naming the file and line.

:func:`make_synthetic_expressions` builds the controlled set used to check that the
heads can learn: real aligned faces animated with named action units
(:mod:`video_fer.data.synthetic`), an expression being an AU combination
(:data:`EXPRESSION_ACTION_UNITS`) and valence/arousal a fixed linear function of the AU
intensities (:data:`VALENCE_AROUSAL_WEIGHTS`).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from video_fer.errors import LabelFileError
from video_fer.faces.alignment import AlignmentSpec

__all__ = [
    "RAFDB_EXPRESSIONS", "AFFECTNET_EXPRESSIONS", "FERPLUS_EXPRESSIONS", "ExpressionTable", "read_rafdb",
    "read_affectnet", "read_ferplus", "read_expression_folder", "read_expression_csv", "IMAGE_EXTENSIONS",
    "SYNTHETIC_EXPRESSIONS", "EXPRESSION_ACTION_UNITS", "VALENCE_AROUSAL_WEIGHTS", "LabelledFaceImages",
    "expression_intensities", "valence_arousal_from_intensities", "make_synthetic_expressions",
    "mask_face_half", "split_identities", "labelled_faces_from_table", "FaceLabelDataConfig", "FaceLabelData",
    "load_face_label_data",
]

RAFDB_EXPRESSIONS = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")  # labels 1..7
AFFECTNET_EXPRESSIONS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
AFFECTNET_EXCLUDED = {8: "none", 9: "uncertain", 10: "no-face"}
AFFECTNET_INVALID_VA = -2.0
FERPLUS_EXPRESSIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_EXTRA_COLUMNS = ("unknown", "NF")
FERPLUS_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
FERPLUS_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- the table
@dataclass
class ExpressionTable:
    """Labelled face images, one row per image.

    Attributes:
        sources: ``(N,)`` image paths.
        labels: ``(N,)`` int64 class ids into ``class_names``; -1 = no class label (VA only).
        class_names: the classes, in label order.
        splits: ``(N,)`` str (``train``, ``val``, ``test`` or ``""`` when the dataset has none).
        subjects: ``(N,)`` str identity of the face when known, else ``""``.
        valence_arousal: ``(N, 2)`` float32 in [-1, 1], NaN where not annotated.
        boxes: ``(N, 4)`` float32 face boxes ``x0, y0, x1, y1`` in image pixels, NaN when unknown.
        landmarks: ``(N, 68, 2)`` float32 image-pixel landmarks given with the dataset, NaN when unknown.
        distributions: ``(N, C)`` float32 label distributions (FERPlus ``distribution``), or None.
        lines: ``(N,)`` the line of each row in its label file (0 for folder layouts), for messages.
        label_file: the file the table was read from.
        excluded: rows left out on purpose and why (e.g. ``{"no-face": 12}``).
    """

    sources: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    splits: np.ndarray
    subjects: np.ndarray
    valence_arousal: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    distributions: np.ndarray | None = None
    lines: np.ndarray | None = None
    label_file: str = ""
    excluded: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select(self, rows) -> "ExpressionTable":
        """A table of the given rows (boolean mask or indices)."""
        rows = np.asarray(rows)
        pick = (lambda a: None if a is None else a[rows])
        return replace(self, sources=self.sources[rows], labels=self.labels[rows], splits=self.splits[rows],
                       subjects=self.subjects[rows], valence_arousal=self.valence_arousal[rows],
                       boxes=self.boxes[rows], landmarks=self.landmarks[rows],
                       distributions=pick(self.distributions), lines=pick(self.lines))

    def split(self, name: str) -> "ExpressionTable":
        """Rows of one split (``train``/``val``/``test``)."""
        return self.select(self.splits == name)

    def class_counts(self) -> np.ndarray:
        """``(C,)`` rows per class (rows without a class label are not counted)."""
        labelled = self.labels[self.labels >= 0]
        return np.bincount(labelled, minlength=self.num_classes)


def _table(sources, labels, class_names, splits=None, subjects=None, valence_arousal=None, boxes=None,
           landmarks=None, distributions=None, lines=None, label_file="", excluded=None) -> ExpressionTable:
    n = len(sources)
    return ExpressionTable(
        sources=np.asarray(sources, dtype=str).reshape(n), labels=np.asarray(labels, dtype=np.int64).reshape(n),
        class_names=tuple(class_names),
        splits=np.asarray(splits if splits is not None else [""] * n, dtype=str).reshape(n),
        subjects=np.asarray(subjects if subjects is not None else [""] * n, dtype=str).reshape(n),
        valence_arousal=(np.asarray(valence_arousal, np.float32).reshape(n, 2) if valence_arousal is not None
                         else np.full((n, 2), np.nan, np.float32)),
        boxes=np.asarray(boxes, np.float32).reshape(n, 4) if boxes is not None else np.full((n, 4), np.nan, np.float32),
        landmarks=(np.asarray(landmarks, np.float32).reshape(n, 68, 2) if landmarks is not None
                   else np.full((n, 68, 2), np.nan, np.float32)),
        distributions=None if distributions is None else np.asarray(distributions, np.float32),
        lines=np.asarray(lines if lines is not None else np.zeros(n), dtype=np.int64).reshape(n),
        label_file=str(label_file), excluded=dict(excluded or {}))


def _read_csv_rows(path: Path, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """(1-based line, stripped cells) of each non-blank row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            return [(reader.line_num, [cell.strip() for cell in cells]) for cells in reader
                    if any(cell.strip() for cell in cells)]
    except FileNotFoundError:
        raise LabelFileError(f"{path}: label file not found; check the dataset root") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise LabelFileError(f"{path}: not a readable text/CSV file ({error})") from None


def _number(path: Path, line: int, name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise LabelFileError(f"{path} line {line}: {name} = {text!r} is not a number") from None


def _integer(path: Path, line: int, name: str, text: str) -> int:
    value = _number(path, line, name, text)
    if value != int(value):
        raise LabelFileError(f"{path} line {line}: {name} = {text!r} is not a whole number")
    return int(value)


def _header_columns(path: Path, line: int, header: Sequence[str], required: Sequence[str]) -> dict[str, int]:
    lowered = [name.strip().lower() for name in header]
    missing = [name for name in required if name.lower() not in lowered]
    if missing:
        raise LabelFileError(f"{path} line {line}: no column {', '.join(map(repr, missing))} in the header "
                             f"{list(header)}; the file must have the columns {list(required)}")
    return {name: index for index, name in enumerate(lowered)}


# ----------------------------------------------------------------------------- RAF-DB
def read_rafdb(root: str | os.PathLike, aligned: bool = True, label_file: str | os.PathLike | None = None
               ) -> ExpressionTable:
    """RAF-DB basic emotions.

    Args:
        root: the ``basic`` folder (holding ``EmoLabel/`` and ``Image/``).
        aligned: images from ``Image/aligned/<name>_aligned.jpg`` (100x100, the usual protocol)
            instead of ``Image/original/<name>.jpg``.
        label_file: default ``<root>/EmoLabel/list_patition_label.txt``.

    Returns:
        :class:`ExpressionTable` with class names :data:`RAFDB_EXPRESSIONS` (label - 1) and
        splits ``train`` / ``test`` from the file name prefix.
    """
    root = Path(root)
    path = Path(label_file) if label_file is not None else root / "EmoLabel" / "list_patition_label.txt"
    if not path.is_file():
        raise LabelFileError(f"{path}: RAF-DB label file not found; give the folder holding EmoLabel/ and Image/")
    sources, labels, splits, lines, seen = [], [], [], [], {}
    try:
        text = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise LabelFileError(f"{path}: not a text file ({error})") from None
    for line, raw in enumerate(text, start=1):
        cells = raw.split()
        if not cells:
            continue
        if len(cells) != 2:
            raise LabelFileError(f"{path} line {line}: expected '<image> <label>' like 'train_00001.jpg 5', got {raw!r}")
        name, label_text = cells
        label = _integer(path, line, "label", label_text)
        if not 1 <= label <= len(RAFDB_EXPRESSIONS):
            raise LabelFileError(f"{path} line {line}: label {label} is outside 1..7 "
                                 f"({', '.join(RAFDB_EXPRESSIONS)})")
        stem, dot, suffix = name.rpartition(".")
        split = name.split("_", 1)[0]
        if not dot or split not in ("train", "test"):
            raise LabelFileError(f"{path} line {line}: image name {name!r} is not like train_00001.jpg / test_0001.jpg")
        if name in seen:
            raise LabelFileError(f"{path} line {line}: {name} is listed twice (first on line {seen[name]})")
        seen[name] = line
        image = (root / "Image" / "aligned" / f"{stem}_aligned.{suffix}") if aligned else (root / "Image" / "original" / name)
        sources.append(str(image))
        labels.append(label - 1)
        splits.append(split)
        lines.append(line)
    return _table(sources, labels, RAFDB_EXPRESSIONS, splits, lines=lines, label_file=path)


# ----------------------------------------------------------------------------- AffectNet
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                     "expression", "valence", "arousal")


def read_affectnet(csv_path: str | os.PathLike, image_root: str | os.PathLike | None = None, num_classes: int = 8,
                   split: str | None = None) -> ExpressionTable:
    """AffectNet's ``training.csv`` / ``validation.csv``.

    Args:
        csv_path: the CSV (header row with :data:`AFFECTNET_COLUMNS`).
        image_root: folder ``subDirectory_filePath`` is relative to (default: ``Manually_Annotated_Images``
            beside the CSV if present, else the CSV's folder).
        num_classes: 8 (with contempt) or 7 (contempt rows excluded).
        split: the split name given to every row (default ``train`` for ``training.csv``, ``val`` otherwise).

    Returns:
        :class:`ExpressionTable` with :data:`AFFECTNET_EXPRESSIONS` (first ``num_classes``), the
        face box, the 68 landmarks and valence/arousal (NaN where -2 = invalid). Expressions
        8-10 (and 7 when ``num_classes=7``) are counted in ``excluded``.
    """
    path = Path(csv_path)
    if num_classes not in (7, 8):
        raise LabelFileError(f"{path}: num_classes={num_classes}; AffectNet is read with 7 or 8 classes")
    if image_root is None:
        candidate = path.parent / "Manually_Annotated_Images"
        image_root = candidate if candidate.is_dir() else path.parent
    image_root = Path(image_root)
    split = split or ("train" if path.stem.lower().startswith("train") else "val")
    rows = _read_csv_rows(path)
    if not rows:
        raise LabelFileError(f"{path}: empty file; expected a header {','.join(AFFECTNET_COLUMNS)}")
    header_line, header = rows[0]
    column = _header_columns(path, header_line, header, AFFECTNET_COLUMNS)
    col = {name: column[name.lower()] for name in AFFECTNET_COLUMNS}
    sources, labels, va, boxes, landmarks, lines, excluded = [], [], [], [], [], [], {}
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise LabelFileError(f"{path} line {line}: {len(cells)} fields, the header has {len(header)}")
        expression = _integer(path, line, "expression", cells[col["expression"]])
        if expression in AFFECTNET_EXCLUDED or (num_classes == 7 and expression == 7):
            reason = AFFECTNET_EXCLUDED.get(expression, "contempt")
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        if not 0 <= expression <= 10:
            raise LabelFileError(f"{path} line {line}: expression {expression} is outside 0..10")
        x, y, width, height = (_number(path, line, name, cells[col[name]])
                               for name in ("face_x", "face_y", "face_width", "face_height"))
        valence_arousal = [_number(path, line, name, cells[col[name]]) for name in ("valence", "arousal")]
        for name, value in zip(("valence", "arousal"), valence_arousal):
            if value != AFFECTNET_INVALID_VA and not -1.0 <= value <= 1.0:
                raise LabelFileError(f"{path} line {line}: {name} {value:g} is outside [-1, 1] (and not -2 = invalid)")
        points_text = cells[col["facial_landmarks"]]
        if points_text:
            parts = points_text.split(";")
            if len(parts) != 136:
                raise LabelFileError(f"{path} line {line}: facial_landmarks has {len(parts)} values; expected 136 "
                                     "(x1;y1;...;x68;y68)")
            points = np.array([_number(path, line, "facial_landmarks", part) for part in parts], np.float32).reshape(68, 2)
        else:
            points = np.full((68, 2), np.nan, np.float32)
        sources.append(str(image_root / cells[col["subDirectory_filePath"]]))
        labels.append(expression)
        va.append([np.nan if value == AFFECTNET_INVALID_VA else value for value in valence_arousal])
        boxes.append([x, y, x + width, y + height])
        landmarks.append(points)
        lines.append(line)
    n = len(sources)
    return _table(sources, labels, AFFECTNET_EXPRESSIONS[:num_classes], [split] * n,
                  valence_arousal=np.array(va, np.float32).reshape(n, 2), boxes=np.array(boxes, np.float32).reshape(n, 4),
                  landmarks=np.array(landmarks, np.float32).reshape(n, 68, 2), lines=lines, label_file=path,
                  excluded=excluded)


# ----------------------------------------------------------------------------- FERPlus
def ferplus_targets(votes: np.ndarray, mode: str = "majority") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FER+ vote counts ``(N, 10)`` (8 emotions, unknown, NF) -> ``(labels (N,), distributions (N, 8), keep (N,))``.

    As described by the FER+ authors: a single vote is treated as noise and removed;
    images whose most-voted column is ``unknown`` or ``NF`` (not a face) are dropped;
    ``majority`` keeps an image only when its top emotion has more than half of the
    remaining votes; ``distribution`` keeps the normalised 8-emotion vote vector.
    """
    votes = np.asarray(votes, dtype=np.float64)
    cleaned = np.where(votes <= 1, 0.0, votes)  # single votes are outliers
    top = cleaned.argmax(axis=1)
    has_votes = cleaned.sum(axis=1) > 0
    emotions = cleaned[:, :len(FERPLUS_EXPRESSIONS)]
    emotion_total = emotions.sum(axis=1)
    keep = has_votes & (top < len(FERPLUS_EXPRESSIONS)) & (emotion_total > 0)
    distributions = emotions / np.maximum(emotion_total, 1e-12)[:, None]
    labels = emotions.argmax(axis=1)
    if mode == "majority":
        keep &= emotions.max(axis=1) > 0.5 * emotion_total
    elif mode != "distribution":
        raise LabelFileError(f"FERPlus mode {mode!r}: choose 'majority' or 'distribution'")
    return labels.astype(np.int64), distributions.astype(np.float32), keep


def read_ferplus(csv_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 mode: str = "majority") -> ExpressionTable:
    """FERPlus ``fer2013new.csv`` (``Usage, Image name`` then the 10 vote columns).

    Images are ``<image_root>/FER2013Train|FER2013Valid|FER2013Test/<Image name>`` by
    ``Usage`` (Training, PublicTest, PrivateTest -> splits train, val, test); rows without an
    image name (dropped from FER+) are excluded.

    Args:
        mode: ``majority`` (one label per image, ambiguous images excluded) or
            ``distribution`` (``distributions`` holds the vote shares; ``labels`` the top emotion).
    """
    path = Path(csv_path)
    image_root = Path(image_root) if image_root is not None else path.parent
    rows = _read_csv_rows(path)
    if not rows:
        raise LabelFileError(f"{path}: empty file; expected the header of fer2013new.csv")
    header_line, header = rows[0]
    vote_names = FERPLUS_EXPRESSIONS + FERPLUS_EXTRA_COLUMNS
    column = _header_columns(path, header_line, header, ("Usage", "Image name") + vote_names)
    votes_at = [column[name.lower()] for name in vote_names]
    sources, splits, votes, lines, excluded = [], [], [], [], {}
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise LabelFileError(f"{path} line {line}: {len(cells)} fields, the header has {len(header)}")
        usage, name = cells[column["usage"]], cells[column["image name"]]
        if usage not in FERPLUS_FOLDERS:
            raise LabelFileError(f"{path} line {line}: Usage {usage!r} is not one of {sorted(FERPLUS_FOLDERS)}")
        if not name:
            excluded["no image"] = excluded.get("no image", 0) + 1
            continue
        counts = [_number(path, line, vote_names[i], cells[at]) for i, at in enumerate(votes_at)]
        if any(count < 0 for count in counts):
            raise LabelFileError(f"{path} line {line}: negative vote count {counts}")
        sources.append(str(image_root / FERPLUS_FOLDERS[usage] / name))
        splits.append(FERPLUS_SPLITS[usage])
        votes.append(counts)
        lines.append(line)
    labels, distributions, keep = ferplus_targets(np.array(votes).reshape(-1, len(vote_names)), mode)
    dropped = int((~keep).sum())
    if dropped:
        excluded["ambiguous or not a face" if mode == "majority" else "unknown or not a face"] = dropped
    table = _table(sources, labels, FERPLUS_EXPRESSIONS, splits, distributions=distributions, lines=lines,
                   label_file=path, excluded=excluded)
    return table.select(np.flatnonzero(keep))


# ----------------------------------------------------------------------------- generic layouts
def read_expression_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None) -> ExpressionTable:
    """One folder per class: ``<root>/<class>/<image>``; with ``<root>/<split>/<class>/<image>`` when
    ``root`` holds ``train``/``val``/``test`` folders.

    Args:
        class_names: the classes in label order (default: the class folders, sorted); a class
            folder not in the list is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise LabelFileError(f"{root}: not a folder; expected <root>/<class>/<image> (one folder per class)")
    split_dirs = [root / name for name in ("train", "val", "test") if (root / name).is_dir()]
    layouts = [(folder, folder.name) for folder in split_dirs] or [(root, "")]
    found = sorted({child.name for folder, _ in layouts for child in folder.iterdir() if child.is_dir()})
    names = tuple(class_names) if class_names is not None else tuple(found)
    unknown = [name for name in found if name not in names]
    if unknown:
        raise LabelFileError(f"{root}: class folder(s) {unknown} are not in class_names {list(names)}")
    if not names:
        raise LabelFileError(f"{root}: no class folders; expected <root>/<class>/<image>")
    sources, labels, splits = [], [], []
    for folder, split in layouts:
        for label, name in enumerate(names):
            class_dir = folder / name
            if not class_dir.is_dir():
                continue
            for image in sorted(class_dir.iterdir()):
                if image.suffix.lower() in IMAGE_EXTENSIONS:
                    sources.append(str(image))
                    labels.append(label)
                    splits.append(split)
    if not sources:
        raise LabelFileError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    return _table(sources, labels, names, splits, label_file=root)


def read_expression_csv(csv_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                        class_names: Sequence[str] | None = None) -> ExpressionTable:
    """A user's CSV: ``path, label`` and optional ``subject, split, valence, arousal``.

    ``label`` is a class name or a 0-based class id (empty: no class, e.g. VA-only rows);
    ``valence``/``arousal`` in [-1, 1] (empty: not annotated). Relative paths are resolved
    against ``image_root`` (default the CSV's folder).

    Args:
        class_names: the classes in label order (default: the names found in ``label``,
            sorted; required when labels are ids).
    """
    path = Path(csv_path)
    image_root = Path(image_root) if image_root is not None else path.parent
    rows = _read_csv_rows(path)
    if not rows:
        raise LabelFileError(f"{path}: empty file; expected a header 'path,label[,subject,split,valence,arousal]'")
    header_line, header = rows[0]
    column = _header_columns(path, header_line, header, ("path", "label"))
    body = rows[1:]
    for line, cells in body:
        if len(cells) != len(header):
            raise LabelFileError(f"{path} line {line}: {len(cells)} fields, the header has {len(header)}")
        if not cells[column["path"]]:
            raise LabelFileError(f"{path} line {line}: empty path")
    raw_labels = [cells[column["label"]] for _, cells in body]
    numeric = all(text.lstrip("-").isdigit() for text in raw_labels if text)
    if class_names is None:
        if numeric and any(raw_labels):
            raise LabelFileError(f"{path}: labels are class ids; pass class_names so they have names")
        class_names = sorted({text for text in raw_labels if text})
    names = tuple(class_names)
    sources, labels, subjects, splits, va, lines = [], [], [], [], [], []
    for (line, cells), text in zip(body, raw_labels):
        if not text:
            label = -1
        elif numeric:
            label = int(text)
            if not 0 <= label < len(names):
                raise LabelFileError(f"{path} line {line}: label {label} is not a class id in 0..{len(names) - 1}")
        elif text in names:
            label = names.index(text)
        else:
            raise LabelFileError(f"{path} line {line}: label {text!r} is not one of {list(names)}")
        values = []
        for name in ("valence", "arousal"):
            cell = cells[column[name]] if name in column else ""
            value = _number(path, line, name, cell) if cell else np.nan
            if np.isfinite(value) and not -1.0 <= value <= 1.0:
                raise LabelFileError(f"{path} line {line}: {name} {value:g} is outside [-1, 1]")
            values.append(value)
        if label < 0 and not np.isfinite(values).any():
            raise LabelFileError(f"{path} line {line}: no label and no valence/arousal; give at least one")
        split = cells[column["split"]] if "split" in column else ""
        if split not in ("", "train", "val", "test"):
            raise LabelFileError(f"{path} line {line}: split {split!r} is not train, val, test or empty")
        image = Path(cells[column["path"]])
        sources.append(str(image if image.is_absolute() else image_root / image))
        labels.append(label)
        subjects.append(cells[column["subject"]] if "subject" in column else "")
        splits.append(split)
        va.append(values)
        lines.append(line)
    n = len(sources)
    return _table(sources, labels, names, splits, subjects, np.array(va, np.float32).reshape(n, 2), lines=lines,
                  label_file=path)


# ----------------------------------------------------------------------------- synthetic expressions
# Expressions as combinations of the action units video_fer.data.synthetic can render
# (prototypes after the FACS/EMFACS descriptions, limited to the AUs available there).
SYNTHETIC_EXPRESSIONS = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")  # RAF-DB order
EXPRESSION_ACTION_UNITS: dict[str, tuple[str, ...]] = {
    "surprise": ("AU1", "AU2", "AU25", "AU26"),
    "fear": ("AU1", "AU2", "AU4", "AU20", "AU25"),
    "disgust": ("AU9", "AU15"),
    "happiness": ("AU6", "AU12"),
    "sadness": ("AU1", "AU4", "AU15"),
    "anger": ("AU4", "AU7"),
    "neutral": (),
}
# [ours] valence/arousal = clip(W^T intensities): smiles raise valence; brow lowering, nose
# wrinkling and lip-corner depression lower it; brow raising, jaw drop, lip stretching raise
# arousal, lip-corner depression lowers it (Russell's circumplex positions of the prototypes).
VALENCE_AROUSAL_WEIGHTS: dict[str, tuple[float, float]] = {
    "AU1": (0.00, 0.20), "AU2": (0.05, 0.25), "AU4": (-0.35, 0.15), "AU6": (0.30, 0.15), "AU7": (-0.25, 0.20),
    "AU9": (-0.45, 0.10), "AU12": (0.55, 0.15), "AU15": (-0.40, -0.45), "AU20": (-0.25, 0.25),
    "AU25": (0.00, 0.15), "AU26": (0.05, 0.30), "AU45": (0.00, 0.00),
}


def expression_intensities(labels: torch.Tensor, generator: torch.Generator | None = None,
                           intensity_range: tuple[float, float] = (0.5, 1.0), blink_probability: float = 0.2,
                           class_names: Sequence[str] = SYNTHETIC_EXPRESSIONS) -> torch.Tensor:
    """AU intensities ``(B, len(AU_NAMES))`` realising expression ``labels (B,)``.

    Each AU of the class's combination gets an intensity drawn uniformly in
    ``intensity_range``; a blink (AU45, not part of any expression) is added with
    ``blink_probability`` as a nuisance.
    """
    from video_fer.data.synthetic import AU_NAMES

    membership = torch.zeros(len(class_names), len(AU_NAMES))
    for row, name in enumerate(class_names):
        for au in EXPRESSION_ACTION_UNITS[name]:
            membership[row, AU_NAMES.index(au)] = 1.0
    low, high = intensity_range
    level = low + (high - low) * torch.rand(len(labels), len(AU_NAMES), generator=generator)
    intensities = membership[labels] * level
    blink = torch.rand(len(labels), generator=generator) < blink_probability
    intensities[:, AU_NAMES.index("AU45")] = blink * torch.rand(len(labels), generator=generator)
    return intensities


def valence_arousal_from_intensities(intensities: torch.Tensor) -> torch.Tensor:
    """``(B, A)`` AU intensities (columns ``AU_NAMES``) -> ``(B, 2)`` valence, arousal in [-1, 1]."""
    from video_fer.data.synthetic import AU_NAMES

    weights = torch.tensor([VALENCE_AROUSAL_WEIGHTS[name] for name in AU_NAMES], dtype=intensities.dtype)
    return (intensities @ weights).clamp(-1.0, 1.0)


@dataclass
class LabelledFaceImages:
    """Aligned faces with expression and/or valence/arousal labels, in memory (what the recipes train on).

    Attributes:
        images: ``(N, 3, S, S)`` uint8 animated faces.
        landmarks: ``(N, 68, 2)`` float32, crop pixels (carried through the animation).
        labels: ``(N,)`` int64 into ``class_names`` (-1 = no class label).
        valence_arousal: ``(N, 2)`` float32, NaN where not annotated.
        au_intensities: ``(N, A)`` float32 AU intensities of synthetic faces
            (columns ``video_fer.data.synthetic.AU_NAMES``), or None.
        identities: ``(N,)`` str, whose face it is ("" when unknown).
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    labels: torch.Tensor
    valence_arousal: torch.Tensor
    au_intensities: torch.Tensor | None
    identities: np.ndarray
    class_names: tuple[str, ...] = SYNTHETIC_EXPRESSIONS

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, rows) -> "LabelledFaceImages":
        rows = torch.as_tensor(np.asarray(rows))
        return LabelledFaceImages(self.images[rows], self.landmarks[rows], self.labels[rows],
                             self.valence_arousal[rows],
                             None if self.au_intensities is None else self.au_intensities[rows],
                             self.identities[rows.numpy()], self.class_names)


def make_synthetic_expressions(faces: torch.Tensor, landmarks: torch.Tensor, identities: Sequence[str],
                               samples_per_face: int, seed: int = 0, motion_scale: float = 0.5,
                               intensity_range: tuple[float, float] = (0.5, 1.0), chunk: int = 256
                               ) -> LabelledFaceImages:
    """Animate aligned faces into a balanced expression set with known labels and valence/arousal.

    Every face gets ``samples_per_face`` images, the classes cycling so each face shows
    every expression equally often; AU intensities vary (:func:`expression_intensities`)
    and a random head motion of ``motion_scale`` x the generator's default ranges moves
    the face, so the heads cannot rely on exact pixel positions.

    Args:
        faces: ``(F, 3, S, S)`` float in [0, 1] aligned faces (or uint8).
        landmarks: ``(F, 68, 2)`` crop pixels.
        identities: ``F`` names (whose face it is; splits are made by these).

    Returns:
        :class:`LabelledFaceImages` of ``F * samples_per_face`` images, face-major.
    """
    from video_fer.data.synthetic import HeadMotionRanges, animate_faces, sample_head_motion

    if faces.dtype == torch.uint8:
        faces = faces.float() / 255.0
    count = faces.shape[0]
    if landmarks.shape != (count, 68, 2) or len(identities) != count:
        raise ValueError(f"faces {tuple(faces.shape)}, landmarks {tuple(landmarks.shape)} and {len(identities)} "
                         "identities must describe the same faces")
    generator = torch.Generator().manual_seed(seed)
    face_of = torch.arange(count).repeat_interleave(samples_per_face)
    # Classes cycle within each face, from a random offset per face: balanced per identity.
    offsets = torch.randint(0, len(SYNTHETIC_EXPRESSIONS), (count,), generator=generator)
    labels = (torch.arange(samples_per_face).repeat(count) + offsets.repeat_interleave(samples_per_face)) \
        % len(SYNTHETIC_EXPRESSIONS)
    intensities = expression_intensities(labels, generator, intensity_range)
    base = HeadMotionRanges()
    ranges = HeadMotionRanges(base.roll_deg * motion_scale, base.scale * motion_scale,
                              base.shift_px256 * motion_scale, base.perspective * motion_scale)
    motion = sample_head_motion(len(labels), generator, ranges)
    images, moved_landmarks = [], []
    for start in range(0, len(labels), chunk):  # bounded memory: fields are (chunk, 2, S, S)
        rows = slice(start, start + chunk)
        animated = animate_faces(faces[face_of[rows]], None, intensities[rows], motion[rows],
                                 landmarks[face_of[rows]].float())
        images.append((animated.target.clamp(0, 1) * 255).round().to(torch.uint8))
        moved_landmarks.append(animated.landmarks)
    return LabelledFaceImages(torch.cat(images), torch.cat(moved_landmarks), labels,
                                valence_arousal_from_intensities(intensities), intensities,
                                np.asarray(identities)[face_of.numpy()])


def mask_face_half(images: torch.Tensor, landmarks: torch.Tensor, half: str, fill: float = 0.5) -> torch.Tensor:
    """Occlude the upper or lower half of aligned faces (the occlusion test of ACNN/RAN).

    The face is cut at the height of the nose bridge's middle (iBUG-68 landmark 29,
    0-based 28): ``upper`` hides the eyes and brows, ``lower`` the nose tip, mouth and chin.

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1].
        landmarks: ``(B, 68, 2)`` pixel coordinates.
        half: ``"upper"``, ``"lower"`` or ``"none"``.
        fill: grey level of the occluder.

    Returns:
        ``(B, 3, H, W)`` masked copy.
    """
    if half == "none":
        return images
    if half not in ("upper", "lower"):
        raise ValueError(f"half={half!r}: choose 'upper', 'lower' or 'none'")
    cut = landmarks[:, 28, 1].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    rows = torch.arange(images.shape[-2], device=images.device, dtype=landmarks.dtype).view(1, 1, -1, 1)
    hidden = rows < cut if half == "upper" else rows >= cut
    return torch.where(hidden, torch.full_like(images, fill), images)


# ----------------------------------------------------------------------------- splits and loading
def split_identities(identities: Sequence[str], test_identities: Sequence[str] | None = None,
                     test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Identity-exclusive split: ``(train rows, test rows)``.

    Args:
        test_identities: the held-out identities; default a seeded random ``test_fraction``
            of the distinct identities (at least one, and at least one left to train on).
    """
    identities = np.asarray(identities, dtype=str)
    distinct = sorted(set(identities.tolist()))
    if test_identities is None:
        if len(distinct) < 2:
            raise ValueError(f"only one identity ({distinct}); an identity-exclusive split needs two or more")
        order = np.random.default_rng(seed).permutation(len(distinct))
        count = min(max(1, round(test_fraction * len(distinct))), len(distinct) - 1)
        test_identities = [distinct[i] for i in order[:count]]
    unknown = sorted(set(test_identities) - set(distinct))
    if unknown:
        raise ValueError(f"test identities {unknown} are not among the faces' identities {distinct}")
    held_out = np.isin(identities, list(test_identities))
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def labelled_faces_from_table(table: ExpressionTable, alignment: AlignmentSpec, landmarker_options=None,
                              cache_dir=None) -> tuple[LabelledFaceImages, np.ndarray, list[str]]:
    """Align every image of ``table`` through the face front end (cached) and attach its labels.

    Dataset landmarks (AffectNet) are used where given; other images go through the
    MediaPipe landmarker (IMAGE mode), keeping the largest face.

    Returns:
        ``(faces, rows, missing)``: the labelled faces (``identities`` = the table's subjects),
        the table row of each face, and the image paths where no face was found (left out,
        reported by the caller).
    """
    from video_fer.data.face_images import align_image_files

    landmarks = table.landmarks if np.isfinite(table.landmarks).any() else None
    found = align_image_files(table.sources, alignment, "mediapipe", landmarker_options,
                              landmarks=landmarks, cache_dir=cache_dir)
    rows = found.image_index
    return (LabelledFaceImages(found.crops, found.landmarks, torch.from_numpy(table.labels[rows]),
                          torch.from_numpy(table.valence_arousal[rows]), None, table.subjects[rows],
                          table.class_names),
            rows, [str(table.sources[i]) for i in found.missing])


@dataclass
class FaceLabelDataConfig:
    """The ``data`` section of the fine-tuning recipes (finetune_expression.py, finetune_va.py).

    ``kind``: ``synthetic`` (real faces animated with AU combinations, see
    :func:`make_synthetic_expressions`; the default needs no dataset), ``rafdb``, ``affectnet``,
    ``ferplus``, ``folder`` or ``csv``. Benchmark images are aligned through the face front end
    (MediaPipe, ``landmarker_model``) into ``cache_dir``.
    """

    kind: str = "synthetic"
    root: str | None = None  # rafdb: the basic/ folder; affectnet/ferplus/csv: the CSV; folder: the class folders
    image_root: str | None = None  # images folder when it is not beside the labels
    val_root: str | None = None  # affectnet: validation.csv (the test split)
    class_names: list | None = None  # folder/csv: classes in label order (default: sorted names)
    ferplus_mode: str = "majority"  # majority | distribution
    affectnet_classes: int = 8  # 8 with contempt, 7 without
    test_split: str = "test"  # the split evaluated when the data has splits
    test_fraction: float = 0.3  # held-out identities (or images, without identities) when there is no split
    test_identities: list | None = None  # synthetic: faces held out (null: a seeded random test_fraction)
    landmarker_model: str | None = None  # MediaPipe face_landmarker.task (null: the usual locations)
    cache_dir: str | None = None  # aligned-face cache (null: <output_dir>/faces)
    synthetic_images: list = field(default_factory=list)  # photos whose faces join the demo faces
    synthetic_videos: list = field(default_factory=list)  # videos: frames_per_video frames each
    frames_per_video: int = 4
    samples_per_face: int = 56  # animated images per face view (a multiple of 7 balances classes)
    motion_scale: float = 0.5  # head motion of the animation, x the generator's default ranges


@dataclass
class FaceLabelData:
    """What :func:`load_face_label_data` gives a recipe.

    Attributes:
        train, test: the two splits.
        info: JSON-ready description (identities per split, excluded rows, images without a face).
        redraw_train: for synthetic data, ``redraw_train(epoch) -> LabelledFaceImages``: the training
            faces animated afresh (new AU intensities and head motion, same identities), so a
            head cannot memorise the images; None for datasets.
    """

    train: LabelledFaceImages
    test: LabelledFaceImages
    info: dict
    redraw_train: Callable[[int], LabelledFaceImages] | None = None

    def keep(self, rows_of: Callable[[LabelledFaceImages], np.ndarray]) -> "FaceLabelData":
        """The same data with only the rows ``rows_of(faces)`` picks in each split (redrawn faces too)."""
        def select(faces: LabelledFaceImages) -> LabelledFaceImages:
            return faces.select(rows_of(faces))

        redraw = None if self.redraw_train is None else (lambda epoch: select(self.redraw_train(epoch)))
        return FaceLabelData(select(self.train), select(self.test), self.info, redraw)

    def train_for_epoch(self, epoch: int, redraw: bool = True) -> LabelledFaceImages:
        """The training faces of ``epoch``: synthetic faces animated afresh for every epoch after the first
        (with ``redraw``), else :attr:`train`. The latest redraw is kept, so a step loop may ask every step."""
        if not redraw or self.redraw_train is None or epoch == 0:
            return self.train
        if getattr(self, "_redrawn_epoch", None) != epoch:
            self._redrawn, self._redrawn_epoch = self.redraw_train(epoch), epoch
        return self._redrawn


def load_face_label_data(config: FaceLabelDataConfig, alignment: AlignmentSpec, output_dir: str | os.PathLike,
                         seed: int = 0) -> FaceLabelData:
    """Build the train and test splits of a recipe from its data section (see :class:`FaceLabelData`).

    Every face is aligned with ``alignment``: the one the recipe's encoder was trained with.
    """
    from video_fer.data.face_images import build_face_bank

    cache_dir = Path(config.cache_dir) if config.cache_dir else Path(output_dir) / "faces"
    options = {"model_path": config.landmarker_model} if config.landmarker_model else {}
    info: dict = {"kind": config.kind}
    if config.kind == "synthetic":
        bank = build_face_bank(alignment, config.synthetic_images, config.synthetic_videos, config.frames_per_video,
                               options, cache_dir=cache_dir)
        faces = make_synthetic_expressions(bank.crops, bank.landmarks, bank.identities, config.samples_per_face,
                                           seed=seed, motion_scale=config.motion_scale)
        train_rows, test_rows = split_identities(faces.identities, config.test_identities, config.test_fraction, seed)
        train, test = faces.select(train_rows), faces.select(test_rows)
        info.update(train_identities=sorted(set(train.identities.tolist())),
                    test_identities=sorted(set(test.identities.tolist())))
        train_views = np.flatnonzero(np.isin(np.asarray(bank.identities), info["train_identities"]))
        train_bank = (bank.crops[train_views], bank.landmarks[train_views], [bank.identities[i] for i in train_views])

        def redraw_train(epoch: int) -> LabelledFaceImages:
            # Seeds never collide with the test set's (seed): epoch e draws from seed + 1 + e.
            return make_synthetic_expressions(*train_bank, config.samples_per_face, seed=seed + 1 + epoch,
                                              motion_scale=config.motion_scale)

        return FaceLabelData(train, test, info, redraw_train)
    if config.root is None:
        raise LabelFileError(f"data.root: needed for data.kind={config.kind!r}; give the dataset's label file or folder")
    if config.kind == "rafdb":
        table = read_rafdb(config.root)
    elif config.kind == "affectnet":
        table = read_affectnet(config.root, config.image_root, config.affectnet_classes, split="train")
        if config.val_root:
            validation = read_affectnet(config.val_root, config.image_root, config.affectnet_classes, split="test")
            table = _concatenate_tables(table, validation)
    elif config.kind == "ferplus":
        table = read_ferplus(config.root, config.image_root, config.ferplus_mode)
    elif config.kind == "folder":
        table = read_expression_folder(config.root, config.class_names)
    elif config.kind == "csv":
        table = read_expression_csv(config.root, config.image_root, config.class_names)
    else:
        raise LabelFileError(f"data.kind={config.kind!r}: choose synthetic, rafdb, affectnet, ferplus, folder or csv")
    info["excluded"] = table.excluded
    faces, rows, missing = labelled_faces_from_table(table, alignment, options, cache_dir)
    info["no_face"] = missing
    row_splits = table.splits[rows]
    if (row_splits == config.test_split).any():
        test_mask = row_splits == config.test_split
        train_mask = (row_splits == "train") | (row_splits == "")
        train_rows, test_rows = np.flatnonzero(train_mask), np.flatnonzero(test_mask)
    elif (faces.identities != "").all():
        train_rows, test_rows = split_identities(faces.identities, None, config.test_fraction, seed)
    else:  # no split and no identities: a seeded random image split
        order = np.random.default_rng(seed).permutation(len(faces))
        count = max(1, round(config.test_fraction * len(faces)))
        train_rows, test_rows = np.sort(order[count:]), np.sort(order[:count])
    return FaceLabelData(faces.select(train_rows), faces.select(test_rows), info)


def _concatenate_tables(first: ExpressionTable, second: ExpressionTable) -> ExpressionTable:
    join = lambda a, b: np.concatenate([a, b])  # noqa: E731
    excluded = {k: first.excluded.get(k, 0) + second.excluded.get(k, 0) for k in {**first.excluded, **second.excluded}}
    return replace(first, sources=join(first.sources, second.sources), labels=join(first.labels, second.labels),
                   splits=join(first.splits, second.splits), subjects=join(first.subjects, second.subjects),
                   valence_arousal=join(first.valence_arousal, second.valence_arousal),
                   boxes=join(first.boxes, second.boxes), landmarks=join(first.landmarks, second.landmarks),
                   lines=join(first.lines, second.lines), excluded=excluded)


def photometric_jitter(images: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast and per-channel gain per face, batched (identity-agnostic augmentation).

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1].
        strength: each factor is drawn uniformly in ``[1 - strength, 1 + strength]`` (0 = unchanged).

    Returns:
        ``(B, 3, H, W)`` in [0, 1].
    """
    if strength <= 0:
        return images
    batch = images.shape[0]
    draw = lambda *shape: (1 + strength * (2 * torch.rand(*shape, generator=generator) - 1)).to(images.device)  # noqa: E731
    brightness, contrast, gains = draw(batch, 1, 1, 1), draw(batch, 1, 1, 1), draw(batch, 3, 1, 1) ** 0.5
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (((images - mean) * contrast + mean) * brightness * gains).clamp(0, 1)
