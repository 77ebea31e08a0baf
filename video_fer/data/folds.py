"""Standard AU benchmark protocol: AU lists and subject-exclusive 3-fold splits.

The fold lists are the ones used by JAA-Net and the papers that compare with it
(TCAE, TAE, ...): fold ``k`` tests on part ``k`` and trains on the other two parts,
so no subject appears in both training and test data. Folds are numbered 1, 2, 3
like the parts.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from video_fer.errors import ConfigError

__all__ = [
    "BP4D_AUS", "DISFA_AUS", "DISFA_OCCURRENCE_THRESHOLD", "BP4D_PARTS", "DISFA_PARTS",
    "DATASET_PARTS", "DATASET_AUS", "au_column_name", "dataset_parts", "fold_split", "split_validation",
]

# The 12 BP4D AUs and the 8 DISFA AUs every paper reports (METHOD.md §2).
BP4D_AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
DISFA_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
# DISFA codes intensity 0-5; an AU counts as present from intensity 2 (B) upward.
DISFA_OCCURRENCE_THRESHOLD: int = 2

BP4D_PARTS: tuple[tuple[str, ...], ...] = (
    ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014", "F023", "M008"),
    ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011", "M013", "M005"),
    ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015", "F014"),
)
DISFA_PARTS: tuple[tuple[str, ...], ...] = (
    ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
)

DATASET_PARTS: dict[str, tuple[tuple[str, ...], ...]] = {"bp4d": BP4D_PARTS, "disfa": DISFA_PARTS}
DATASET_AUS: dict[str, tuple[int, ...]] = {"bp4d": BP4D_AUS, "disfa": DISFA_AUS}


def au_column_name(au: int, suffix: str = "") -> str:
    """OpenFace-style column name: ``au_column_name(6, "_c") == "AU06_c"``."""
    return f"AU{int(au):02d}{suffix}"


def dataset_parts(dataset: str) -> tuple[tuple[str, ...], ...]:
    """The three subject lists of ``"bp4d"`` or ``"disfa"`` (case-insensitive)."""
    key = dataset.lower()
    if key not in DATASET_PARTS:
        raise ConfigError(f"dataset {dataset!r}: no standard folds; choose one of {sorted(DATASET_PARTS)}")
    return DATASET_PARTS[key]


def fold_split(dataset: str, k: int) -> tuple[list[str], list[str]]:
    """Subjects of fold ``k`` (1, 2 or 3): ``(train_subjects, test_subjects)``.

    The test subjects are part ``k``; the training subjects are the other two parts, in
    part order.
    """
    parts = dataset_parts(dataset)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(parts):
        raise ConfigError(f"fold {k!r} of {dataset}: folds are numbered 1..{len(parts)} (part k is the test set)")
    test = list(parts[k - 1])
    train = [subject for index, part in enumerate(parts) if index != k - 1 for subject in part]
    return train, test


def split_validation(train_subjects: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Hold out a subject-exclusive validation set from the training subjects.

    Args:
        train_subjects: the training subjects of a fold.
        fraction: share of subjects to hold out, in [0, 1); at least one subject is held
            out when ``fraction > 0`` and at least one is kept for training.
        seed: the draw is deterministic for a given seed and subject list.

    Returns:
        ``(train, validation)``, each keeping the order of ``train_subjects``.
    """
    subjects = list(train_subjects)
    if len(set(subjects)) != len(subjects):
        raise ConfigError("train_subjects: a subject is listed twice; pass each subject once")
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction {fraction}: must be in [0, 1)")
    if fraction == 0.0:
        return subjects, []
    num_validation = max(1, int(round(fraction * len(subjects))))
    if num_validation >= len(subjects):
        raise ConfigError(f"validation fraction {fraction} of {len(subjects)} subjects leaves no training "
                          "subject; lower the fraction")
    chosen = set(np.random.default_rng(seed).choice(len(subjects), size=num_validation, replace=False).tolist())
    train = [subject for index, subject in enumerate(subjects) if index not in chosen]
    validation = [subject for index, subject in enumerate(subjects) if index in chosen]
    return train, validation
