"""OpenFace-named action units from MediaPipe's 52 face blendshapes: one documented table, no training.

Each rule names the blendshapes that show the AU's appearance change as FACS defines it
(Ekman, Friesen & Hager 2002), read from the ARKit-style names of MediaPipe's blendshape model.
The table is this project's own; nothing in it was fitted to OpenFace.

| AU | FACS name | blendshapes | combine | rest | full |
|---|---|---|---|---|---|
| 1 | inner brow raiser | browInnerUp | single | 0.1644 | 0.9830 |
| 2 | outer brow raiser | browOuterUpL/R | single | 0.1444 | 0.9733 |
| 4 | brow lowerer | browDownL/R | single | 0.0086 | 0.6114 |
| 5 | upper lid raiser | eyeWideL/R | single | 0.0073 | 0.4745 |
| 6 | cheek raiser | eyeSquintL/R, mouthSmileL/R | mean | 0.2053 | 0.7097 |
| 7 | lid tightener | eyeSquintL/R | single | 0.3422 | 0.7302 |
| 9 | nose wrinkler | mouthUpperUpL/R, browDownL/R | soft_and | 0.0034 | 0.4337 |
| 10 | upper lip raiser | mouthUpperUpL/R | single | 0.0010 | 0.6629 |
| 12 | lip corner puller | mouthSmileL/R | single | 0.0080 | 0.8610 |
| 14 | dimpler | mouthDimpleL/R | single | 0.0123 | 0.2646 |
| 15 | lip corner depressor | mouthFrownL/R | single | 0.0003 | 0.0805 |
| 17 | chin raiser | mouthShrugLower | single | 0.0034 | 0.3830 |
| 20 | lip stretcher | mouthStretchL/R | single | 0.0063 | 0.2294 |
| 23 | lip tightener | mouthPressL/R | single | 0.0309 | 0.3814 |
| 25 | lips part | jawOpen - mouthClose, mouthLowerDownL/R | max | 0.0233 | 0.7866 |
| 26 | jaw drop | jawOpen | single | 0.0196 | 0.7805 |
| 28 | lip suck (presence only) | mouthRollLower, mouthRollUpper | mean | 0.0097 | 0.3984 |
| 45 | blink | eyeBlinkL/R | single | 0.1097 | 0.7299 |

``L/R``: the Left and Right blendshapes combined by ``side``. ``docs/TRACK_COLUMNS.md`` prints the same
table from :data:`AU_TABLE` with each rule's reasoning; a test keeps the three equal.

How a rule becomes numbers, per face:

1. **parts**: each part is one blendshape; a base name with Left/Right variants (``eyeSquint``)
   is the two sides combined by ``side`` (default **[ours]** the mean: OpenFace's AUs are
   bilateral; ``"max"`` keeps one-sided actions); ``"a-b"`` is a minus b.
2. **combine** the parts into one score: ``single``; ``mean`` (two cues of one appearance
   change); ``max`` (either cue suffices); ``soft_and`` (geometric mean of the parts clipped at
   0: every cue is needed).
3. **intensity** on OpenFace's 0-5 scale: ``5 * clip((score - rest) / (full - rest), 0, 1)``, a
   monotone piecewise-linear curve. ``rest`` and ``full`` are the median and the 99th
   percentile of the rule's score over the 7,584 frames of ``shared/data/pretrain`` (31
   unlabeled clips, ~30 people) as ``video-fer prepare`` caches them: MediaPipe VIDEO mode on
   every frame, up to 4 faces, the landmarker settings ``track`` uses (MediaPipe's blendshapes
   depend on them: with ``num_faces=1`` they differ by up to 0.54 on the same frames).
   ``tools/calibrate_blendshape_aus.py CACHE`` recomputes them. Two numbers per AU from a fixed
   rule on unlabeled video, never from the clips OpenFace's outputs are compared on. **[ours]**
   the quantiles (:data:`REST_QUANTILE`, :data:`FULL_QUANTILE`); the reference behaviour (raw
   score x 5) is one setting away: ``calibrated=False``.
4. **presence** ``_c``: 1 where the intensity is at least :data:`PRESENCE_INTENSITY` (1.0, FACS's
   trace level A on OpenFace's scale) **[ours]**, else 0, like OpenFace's column.

What the shipped model (``face_landmarker.task``, mediapipe 1.2.x) cannot see, measured on the
same 7,584 frames: ``cheekSquintLeft/Right``, ``noseSneerLeft/Right`` and ``cheekPuff`` stay
below 0.005 at the 99.9th percentile (dead outputs). So AU06 and AU09 take FACS's secondary
signs (the lower lid pushed up and the smile; the raised upper lip with the lowered medial
brow). AUs no blendshape shows (AU16, AU18, AU22, AU24, AU27 ...) are absent, not invented; of
OpenFace's AUs only AU28 (presence only, from the lip rolls) has no intensity here, as in OpenFace.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# MediaPipe face_landmarker.task blendshape order (category index 0..51).
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
BLENDSHAPE_INDEX = {name: index for index, name in enumerate(BLENDSHAPE_NAMES)}
COMBINES = ("single", "mean", "max", "soft_and")
SIDES = ("mean", "max")
REST_QUANTILE = 50.0  # [ours] percentile of the unlabeled corpus taken as an AU's resting score
FULL_QUANTILE = 99.0  # [ours] percentile taken as its full (intensity 5) score
PRESENCE_INTENSITY = 1.0  # [ours] _c = 1 from FACS's trace level (A ~ 1 on OpenFace's 0-5 scale)
INTENSITY_MAX = 5.0


@dataclass(frozen=True)
class AURule:
    """How one OpenFace AU is read from blendshapes.

    Attributes:
        au: FACS number (OpenFace columns ``AU{au:02d}_r`` / ``_c``).
        parts: blendshape base names (Left/Right pairs combined by ``side``); ``"a-b"`` is a difference.
        combine: how the parts make one score (one of :data:`COMBINES`).
        rest, full: the score at intensity 0 and at intensity 5 (corpus quantiles, see the module doc).
        intensity: False when OpenFace gives presence only (AU28).
        name: the FACS name; why: which appearance change the blendshapes show, one line.
    """

    au: int
    parts: tuple[str, ...]
    combine: str
    rest: float
    full: float
    intensity: bool = True
    name: str = ""
    why: str = ""


# rest/full: median and 99th percentile of each rule's score over shared/data/pretrain as `video-fer prepare`
# caches it (7,584 frames; MediaPipe VIDEO mode on every frame, 4 faces); tools/calibrate_blendshape_aus.py.
AU_TABLE: tuple[AURule, ...] = (
    AURule(1, ("browInnerUp",), "single", 0.1644, 0.9830,
           name="inner brow raiser",
           why="frontalis pars medialis lifts the inner brow corners"),
    AURule(2, ("browOuterUp",), "single", 0.1444, 0.9733,
           name="outer brow raiser",
           why="frontalis pars lateralis lifts the brow tails"),
    AURule(4, ("browDown",), "single", 0.0086, 0.6114,
           name="brow lowerer",
           why="corrugator and depressors pull the brows down and together"),
    AURule(5, ("eyeWide",), "single", 0.0073, 0.4745,
           name="upper lid raiser",
           why="the upper lid retracts, widening the eye"),
    AURule(6, ("eyeSquint", "mouthSmile"), "mean", 0.2053, 0.7097,
           name="cheek raiser",
           why="the lower lid pushed up (eyeSquint) and the strong smile that raises the cheeks "
                "(mouthSmile); cheekSquint, the direct cue, is dead in this model"),
    AURule(7, ("eyeSquint",), "single", 0.3422, 0.7302,
           name="lid tightener",
           why="orbicularis oculi pars palpebralis narrows the lids"),
    AURule(9, ("mouthUpperUp", "browDown"), "soft_and", 0.0034, 0.4337,
           name="nose wrinkler",
           why="raises the upper lip and lowers the medial brow together; noseSneer is dead"),
    AURule(10, ("mouthUpperUp",), "single", 0.0010, 0.6629,
           name="upper lip raiser",
           why="levator labii superioris lifts the upper lip"),
    AURule(12, ("mouthSmile",), "single", 0.0080, 0.8610,
           name="lip corner puller",
           why="zygomaticus major pulls the corners up and back"),
    AURule(14, ("mouthDimple",), "single", 0.0123, 0.2646,
           name="dimpler",
           why="buccinator tightens the lip corners inward, dimpling"),
    AURule(15, ("mouthFrown",), "single", 0.0003, 0.0805,
           name="lip corner depressor",
           why="depressor anguli oris pulls the corners down"),
    AURule(17, ("mouthShrugLower",), "single", 0.0034, 0.3830,
           name="chin raiser",
           why="mentalis pushes the chin boss and the lower lip up"),
    AURule(20, ("mouthStretch",), "single", 0.0063, 0.2294,
           name="lip stretcher",
           why="risorius pulls the corners sideways, the lips flatten"),
    AURule(23, ("mouthPress",), "single", 0.0309, 0.3814,
           name="lip tightener",
           why="orbicularis oris narrows and tightens the lips (pressed lips, AU24, look alike)"),
    AURule(25, ("jawOpen-mouthClose", "mouthLowerDown"), "max", 0.0233, 0.7866,
           name="lips part",
           why="the lips separate, by the jaw opening while not held shut, or by the lower lip lowering"),
    AURule(26, ("jawOpen",), "single", 0.0196, 0.7805,
           name="jaw drop",
           why="the mandible lowers"),
    AURule(28, ("mouthRollLower", "mouthRollUpper"), "mean", 0.0097, 0.3984, intensity=False,
           name="lip suck",
           why="both lips are pulled in over the teeth"),
    AURule(45, ("eyeBlink",), "single", 0.1097, 0.7299,
           name="blink",
           why="the lids close"),
)
AU_RULES = {rule.au: rule for rule in AU_TABLE}
INTENSITY_AUS = tuple(rule.au for rule in AU_TABLE if rule.intensity)  # OpenFace's 17 _r AUs
PRESENCE_AUS = tuple(rule.au for rule in AU_TABLE)  # OpenFace's 18 _c AUs


def intensity_column_names() -> list[str]:
    """``["AU01_r", ..., "AU45_r"]`` in table order."""
    return [f"AU{au:02d}_r" for au in INTENSITY_AUS]


def presence_column_names() -> list[str]:
    """``["AU01_c", ..., "AU28_c", "AU45_c"]`` in table order."""
    return [f"AU{au:02d}_c" for au in PRESENCE_AUS]


def part_score(blendshapes: np.ndarray, part: str, side: str) -> np.ndarray:
    """``(F, 52)`` -> ``(F,)`` one part of a rule: a blendshape, a Left/Right pair, or ``"a-b"``."""
    if "-" in part:
        first, second = part.split("-")
        return part_score(blendshapes, first, side) - part_score(blendshapes, second, side)
    if part in BLENDSHAPE_INDEX:
        return blendshapes[:, BLENDSHAPE_INDEX[part]]
    pair = blendshapes[:, [BLENDSHAPE_INDEX[part + "Left"], BLENDSHAPE_INDEX[part + "Right"]]]
    return pair.mean(1) if side == "mean" else pair.max(1)


def rule_scores(blendshapes: np.ndarray, rules=AU_TABLE, side: str = "mean") -> np.ndarray:
    """Raw AU scores before the intensity curve.

    Args:
        blendshapes: ``(F, 52)`` MediaPipe scores in :data:`BLENDSHAPE_NAMES` order (NaN rows stay NaN).
        rules: the :class:`AURule` s to score.
        side: **[ours]** ``"mean"`` or ``"max"`` of a Left/Right pair.

    Returns:
        float64 ``(F, len(rules))``.
    """
    blendshapes = np.asarray(blendshapes, dtype=np.float64)
    if blendshapes.ndim != 2 or blendshapes.shape[1] != len(BLENDSHAPE_NAMES):
        raise ValueError(f"blendshapes: expected shape (F, {len(BLENDSHAPE_NAMES)}) in MediaPipe's order, "
                         f"got {blendshapes.shape}")
    if side not in SIDES:
        raise ValueError(f"side={side!r}; choose one of {', '.join(SIDES)}")
    columns = []
    for rule in rules:
        parts = np.stack([part_score(blendshapes, part, side) for part in rule.parts], 1)
        if rule.combine in ("single", "mean"):
            columns.append(parts.mean(1))
        elif rule.combine == "max":
            columns.append(parts.max(1))
        elif rule.combine == "soft_and":
            columns.append(np.exp(np.log(np.clip(parts, 1e-6, None)).mean(1)))
        else:
            raise ValueError(f"AU{rule.au}: unknown combine {rule.combine!r}; choose one of {', '.join(COMBINES)}")
    return np.stack(columns, 1) if columns else np.zeros((len(blendshapes), 0))


def intensity_from_score(score: np.ndarray, rest, full) -> np.ndarray:
    """The monotone curve ``5 * clip((score - rest) / (full - rest), 0, 1)``; shapes broadcast."""
    return INTENSITY_MAX * np.clip((score - rest) / np.maximum(np.subtract(full, rest), 1e-6), 0.0, 1.0)


def blendshape_aus(blendshapes: np.ndarray, side: str = "mean", calibrated: bool = True,
                   presence_intensity: float = PRESENCE_INTENSITY) -> dict[str, np.ndarray]:
    """OpenFace-named AU columns from blendshapes.

    Args:
        blendshapes: ``(F, 52)`` MediaPipe scores (NaN rows, e.g. faces without blendshapes, give NaN).
        side: Left/Right combination, ``"mean"`` (default) or ``"max"``.
        calibrated: the table's corpus rest/full (default); False = the raw score x 5.
        presence_intensity: the ``_c`` threshold on the 0-5 intensity.

    Returns:
        ``{"AU01_r": (F,), ..., "AU45_r": (F,)}`` float64 in [0, 5] for :data:`INTENSITY_AUS`, then
        ``{"AU01_c": ..., "AU28_c": ..., "AU45_c": ...}`` in {0, 1} (NaN rows stay NaN) for :data:`PRESENCE_AUS`.
    """
    scores = rule_scores(blendshapes, AU_TABLE, side)
    rest = np.array([rule.rest if calibrated else 0.0 for rule in AU_TABLE])
    full = np.array([rule.full if calibrated else 1.0 for rule in AU_TABLE])
    intensity = intensity_from_score(scores, rest, full)
    presence = np.where(np.isnan(intensity), np.nan, (intensity >= presence_intensity).astype(np.float64))
    columns = {f"AU{rule.au:02d}_r": intensity[:, k] for k, rule in enumerate(AU_TABLE) if rule.intensity}
    columns.update({f"AU{rule.au:02d}_c": presence[:, k] for k, rule in enumerate(AU_TABLE)})
    return columns


def au_table_metadata() -> list[dict]:
    """The table as plain data (the track table's metadata)."""
    return [{"au": f"AU{rule.au:02d}", "name": rule.name, "blendshapes": list(rule.parts), "combine": rule.combine,
             "rest": rule.rest, "full": rule.full, "intensity": rule.intensity, "why": rule.why}
            for rule in AU_TABLE]


def au_table_markdown() -> str:
    """The table as Markdown: the module doc and ``docs/TRACK_COLUMNS.md`` hold this text (a test keeps them equal)."""
    def parts(rule: AURule) -> str:
        return ", ".join(" - ".join(name if name in BLENDSHAPE_INDEX else f"{name}L/R" for name in part.split("-"))
                         for part in rule.parts)

    lines = ["| AU | FACS name | blendshapes | combine | rest | full |", "|---|---|---|---|---|---|"]
    for rule in AU_TABLE:
        presence_only = "" if rule.intensity else " (presence only)"
        lines.append(f"| {rule.au} | {rule.name}{presence_only} | {parts(rule)} | {rule.combine} | {rule.rest:.4f} | "
                     f"{rule.full:.4f} |")
    return "\n".join(lines)


__all__ = ["AURule", "AU_RULES", "AU_TABLE", "BLENDSHAPE_NAMES", "INTENSITY_AUS", "PRESENCE_AUS",
           "PRESENCE_INTENSITY", "au_table_markdown", "au_table_metadata", "blendshape_aus",
           "intensity_column_names", "intensity_from_score", "presence_column_names", "rule_scores"]
