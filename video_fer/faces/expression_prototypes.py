"""Prototype-based expression probabilities from AU intensities (no training).

**Prototype-based, not learned**: each basic emotion is its FACS/EMFACS prototype AU
combination (Friesen & Ekman's EMFACS as summarised in the FACS Investigator's Guide, Ekman,
Friesen & Hager 2002), matched against AU intensities on OpenFace's 0-5 scale (the track's
``AUxx_r`` columns of :mod:`video_fer.faces.blendshape_aus`):

| class | AUs used | EMFACS prototype, and what differs |
|---|---|---|
| surprise | 1 + 2 + 5 + 26 | 1+2+5B+26 |
| fear | 1 + 2 + 4 + 5 + 7 + 20 + 26 | 1+2+4+5+7+20+26 |
| disgust | 9 + 10 + 15 | 9+15+16; AU16 is not read, AU10 (from the other disgust prototypes 10+17, 9+10) stands in |
| happiness | 6 + 12 | 6+12 |
| sadness | 1 + 4 + 15 | 1+4+15 |
| anger | 4 + 5 + 7 + 23 | 4+5+7+23 |
| neutral | none | a constant score (below) |

Classes and their order: :data:`EXPRESSION_CLASSES`, the project's RAF-DB order
(``video_fer.data.expression_datasets.RAFDB_EXPRESSIONS``; a test keeps them equal).

Score of a class **[ours]** = coverage x share, both in [0, 1]:

- coverage: the mean of its AUs' intensities / 5 (how much of the prototype the face shows);
- share: the sum of its AUs' intensities / the sum over every AU any prototype uses (how much of
  the face's prototype-relevant activity it explains; 1 when nothing is active). Without it a
  prototype contained in another (surprise 1+2+5+26 inside fear) ties with it on a fear face.

Neutral scores :data:`NEUTRAL_SCORE` **[ours]** (0.2: every AU of a prototype at FACS's trace
level, intensity 1, with nothing else active; a face whose best prototype scores less reads
neutral). Probabilities = softmax(scores / :data:`TEMPERATURE`) **[ours]** (0.1: a prototype
shown 0.2 more completely than another is e^2 ~ 7x as probable).

Checked on the four posed photos of ``shared/data/images`` (label in the file name): surprise,
happiness and anger read as labelled; the disgust face (45 deg yaw) reads sadness (AU15 at 5,
AU09/AU10 below 1: the blendshapes barely move for the raised upper lip at that angle).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

EXPRESSION_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
PROTOTYPES: dict[str, tuple[int, ...]] = {
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 7, 20, 26),
    "disgust": (9, 10, 15),
    "happiness": (6, 12),
    "sadness": (1, 4, 15),
    "anger": (4, 5, 7, 23),
    "neutral": (),
}
PROTOTYPE_AUS = tuple(sorted({au for aus in PROTOTYPES.values() for au in aus}))
NEUTRAL_SCORE = 0.2  # [ours] score of "no prototype": every AU at trace level (intensity 1 of 5)
TEMPERATURE = 0.1  # [ours] softmax temperature on the [0, 1] prototype scores
METHOD = "prototype-based: EMFACS AU prototypes matched against the AU intensities, no training"


def prototype_metadata() -> dict:
    """What the track table's metadata says about its expression columns."""
    return {"method": METHOD, "prototypes": {name: [f"AU{au:02d}" for au in aus] for name, aus in PROTOTYPES.items()},
            "neutral_score": NEUTRAL_SCORE, "temperature": TEMPERATURE}


def prototype_scores(intensities: Mapping[str, np.ndarray], neutral_score: float = NEUTRAL_SCORE) -> np.ndarray:
    """AU intensity columns (``"AU01_r"``: ``(F,)`` on 0-5) -> ``(F, 7)`` prototype scores in [0, 1].

    Raises:
        KeyError: naming the AU columns a prototype needs and the input lacks.
    """
    missing = [f"AU{au:02d}_r" for au in PROTOTYPE_AUS if f"AU{au:02d}_r" not in intensities]
    if missing:
        raise KeyError(f"expression prototypes need {', '.join(missing)}; got columns {sorted(intensities)}")
    level = {au: np.clip(np.asarray(intensities[f"AU{au:02d}_r"], np.float64) / 5.0, 0.0, 1.0) for au in PROTOTYPE_AUS}
    total = np.sum([level[au] for au in PROTOTYPE_AUS], axis=0)
    scores = np.empty((len(total), len(EXPRESSION_CLASSES)))
    for column, name in enumerate(EXPRESSION_CLASSES):
        aus = PROTOTYPES[name]
        if not aus:
            scores[:, column] = np.where(np.isnan(total), np.nan, neutral_score)
            continue
        shown = np.sum([level[au] for au in aus], axis=0)
        share = np.where(total > 1e-9, shown / np.maximum(total, 1e-9), 1.0)
        scores[:, column] = shown / len(aus) * share
    return scores


def expression_probabilities(intensities: Mapping[str, np.ndarray], temperature: float = TEMPERATURE,
                             neutral_score: float = NEUTRAL_SCORE) -> np.ndarray:
    """``(F, 7)`` probabilities over :data:`EXPRESSION_CLASSES` (rows sum to 1; NaN rows stay NaN)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = prototype_scores(intensities, neutral_score) / temperature
    if len(logits):
        with np.errstate(all="ignore"):  # all-NaN rows (no face) stay NaN
            logits = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(1, keepdims=True)


def expression_columns(intensities: Mapping[str, np.ndarray], **options) -> dict[str, np.ndarray]:
    """Track-table columns: ``expression_<class>`` probabilities ``(F,)`` and ``expression`` ``(F,)`` the top class
    (``""`` where the face has no AU values)."""
    probabilities = expression_probabilities(intensities, **options)
    columns: dict[str, np.ndarray] = {f"expression_{name}": probabilities[:, k] for k, name in enumerate(EXPRESSION_CLASSES)}
    finite = np.isfinite(probabilities).all(1)
    best = np.nan_to_num(probabilities, nan=-1.0).argmax(1)
    columns["expression"] = np.where(finite, np.asarray(EXPRESSION_CLASSES, dtype=object)[best], "").astype(object)
    return columns


__all__ = ["EXPRESSION_CLASSES", "METHOD", "NEUTRAL_SCORE", "PROTOTYPES", "PROTOTYPE_AUS", "TEMPERATURE",
           "expression_columns", "expression_probabilities", "prototype_metadata", "prototype_scores"]
