"""Linear probes against OpenFace 2.x on the clips that have its output: a check independent of MediaPipe.

The real-video benchmark (:mod:`video_fer.evaluate.real_probes`) scores embeddings against MediaPipe's
blendshapes, and the landmark terms of pretraining read MediaPipe's landmarks: a gain there could be
the encoder learning MediaPipe rather than faces. Here the reference is OpenFace's AU intensities
(``AUxx_r``) and head rotation (``pose_Rx/Ry/Rz``), another detector and another AU model, on clips
the pretraining never saw. OpenFace is a reference, not ground truth (its agreement with human coders
is modest).

Only a few clips have OpenFace output, so the probe is cross-validated in time: each clip's frames
are cut into ``blocks`` contiguous blocks; fold k fits a ridge probe on the other blocks of every clip
(minus ``gap`` frames beside block k, so neighbouring frames do not leak) and predicts block k; the
penalty is chosen on the next block. Pearson r per target is taken on each predicted block and
averaged over the folds. These are within-person scores on one or two people: a check of direction, not a benchmark.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from video_fer.errors import LabelFileError
from video_fer.evaluate.openface import POSE_ANGLES
from video_fer.evaluate.probes import pearson_per_column, ridge_probe

MIN_AU_STD = 0.05  # OpenFace intensities run 0-5; an AU that barely moves has no meaningful r


@dataclass
class OpenFaceFrames:
    """Cached crops matched to OpenFace rows (``N`` frames where both found the face).

    Attributes:
        images: uint8 ``(N, S, S, 3)``; landmarks: ``(N, 68, 2)`` crop pixels (the cache's landmarker).
        blendshapes: ``(N, 52)`` the cache's MediaPipe blendshape scores, or None when it has none.
        clips: ``(N,)`` video key; positions: ``(N,)`` source frame index.
        aus: ``(N, A)`` OpenFace ``AUxx_r``; au_names: their names. angles: ``(N, 3)`` pitch, yaw, roll in degrees.
    """

    images: torch.Tensor
    landmarks: np.ndarray
    blendshapes: np.ndarray | None
    clips: np.ndarray
    positions: np.ndarray
    aus: np.ndarray
    au_names: list[str]
    angles: np.ndarray

    def __len__(self) -> int:
        return len(self.clips)


def load_openface_frames(cache, tables: Mapping[str, Mapping[str, np.ndarray]]) -> OpenFaceFrames:
    """Every cached frame of the given videos whose number has an OpenFace row with ``success`` 1 (face 0).

    Args:
        cache: :class:`~video_fer.data.cache.FaceTrackCache`.
        tables: video key -> :func:`~video_fer.evaluate.openface.read_openface_csv` output.

    Raises:
        LabelFileError: a table lacks AU intensity or head rotation columns, or no frame matches.
    """
    au_names = None
    parts: dict[str, list] = {key: [] for key in ("images", "landmarks", "blendshapes", "clips", "positions", "aus",
                                                  "angles")}
    for key, table in tables.items():
        names = sorted(name for name in table if name.startswith("AU") and name.endswith("_r"))
        missing = [name for name in ("frame", "success", *POSE_ANGLES) if name not in table]
        if not names or missing:
            raise LabelFileError(f"OpenFace table of {key}: no AUxx_r columns or missing {missing}; expected "
                                 "FeatureExtraction output with -aus -pose")
        if au_names is not None and names != au_names:
            raise LabelFileError(f"OpenFace table of {key}: AU columns {names} differ from the first table's {au_names}")
        au_names = names
        face = table["face_id"] == 0 if "face_id" in table else np.ones(len(table["frame"]), bool)
        rows = {int(table["frame"][row]) - 1: row for row in np.flatnonzero(face & (table["success"] > 0))}
        for track in (t for t in cache.tracks if t.video_key == key):
            arrays = cache.track_arrays(track.track_id)
            chosen = np.array([i for i, frame in enumerate(arrays["frame_indices"]) if int(frame) in rows], np.int64)
            if chosen.size == 0:
                continue
            theirs = np.array([rows[int(arrays["frame_indices"][i])] for i in chosen])
            parts["images"].append(cache.read_frames(track.track_id, chosen))
            parts["landmarks"].append(arrays["landmarks_aligned"][chosen])
            parts["blendshapes"].append(arrays["blendshapes"][chosen] if "blendshapes" in arrays else None)
            parts["clips"] += [key] * len(chosen)
            parts["positions"].append(arrays["frame_indices"][chosen])
            parts["aus"].append(np.stack([table[name][theirs] for name in names], 1))
            parts["angles"].append(np.degrees(np.stack([table[name][theirs] for name in POSE_ANGLES], 1)))
    if not parts["clips"]:
        raise LabelFileError(f"no cached frame of {sorted(tables)} has an OpenFace row with success 1; check that "
                             "each CSV belongs to the video of the same name")
    blendshapes = None if any(b is None for b in parts["blendshapes"]) else np.concatenate(parts["blendshapes"])
    return OpenFaceFrames(torch.cat(parts["images"]), np.concatenate(parts["landmarks"]), blendshapes,
                          np.array(parts["clips"]), np.concatenate(parts["positions"]).astype(np.int64),
                          np.concatenate(parts["aus"]).astype(np.float32), au_names,
                          np.concatenate(parts["angles"]).astype(np.float32))


@dataclass
class Fold:
    """Rows to fit on, rows to predict, and the fit rows that choose the ridge penalty (bool over ``fit``)."""

    fit: np.ndarray
    test: np.ndarray
    val: np.ndarray


def time_blocks(clips: np.ndarray, positions: np.ndarray, blocks: int) -> np.ndarray:
    """Block index ``(N,)`` of every row: each clip's rows in time order, cut into ``blocks`` equal runs."""
    block = np.empty(len(clips), np.int64)
    for clip in np.unique(clips):
        rows = np.flatnonzero(clips == clip)
        if len(rows) < blocks:
            raise ValueError(f"clip {clip}: {len(rows)} frames, fewer than the {blocks} time blocks")
        ordered = rows[np.argsort(positions[rows], kind="stable")]
        block[ordered] = np.arange(len(ordered)) * blocks // len(ordered)
    return block


def block_folds(clips: np.ndarray, positions: np.ndarray, blocks: int = 4, gap: int = 12) -> list[Fold]:
    """Leave-one-block-out folds (module docstring): fold k predicts block k of every clip."""
    if blocks < 3:
        raise ValueError(f"blocks={blocks}: need at least 3 (one to predict, one to choose the penalty, one to fit)")
    block = time_blocks(clips, positions, blocks)
    folds = []
    for k in range(blocks):
        test = block == k
        near = np.zeros(len(clips), bool)
        for clip in np.unique(clips[test]):
            span = positions[test & (clips == clip)]
            near |= (clips == clip) & (positions >= span.min() - gap) & (positions <= span.max() + gap)
        fit = np.flatnonzero(~test & ~near)
        folds.append(Fold(fit, np.flatnonzero(test), block[fit] == (k + 1) % blocks))
    return folds


def fold_mean_r(features: torch.Tensor, targets: np.ndarray, folds: list[Fold]) -> np.ndarray:
    """Pearson r per target column on each fold's predicted rows, averaged over the folds.

    Within each fold, not over the pooled predictions: a probe fitted without block k predicts block k's
    mean from the other blocks, so pooled r would score how block means differ (negative for features that
    carry nothing), not how the prediction follows the face.
    """
    targets = torch.from_numpy(np.asarray(targets, np.float64))
    scores = []
    for fold in folds:
        _, predicted = ridge_probe(features[fold.fit], targets[fold.fit], features[fold.test], targets[fold.test],
                                   fold.val)
        scores.append(pearson_per_column(predicted.double(), targets[fold.test]))
    with warnings.catch_warnings():  # a column constant in every predicted block stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(scores), 0)


def active_aus(frames: OpenFaceFrames, min_std: float = MIN_AU_STD) -> np.ndarray:
    """AU columns that vary in every clip (boolean ``(A,)``)."""
    return np.all([frames.aus[frames.clips == clip].std(0) >= min_std for clip in np.unique(frames.clips)], axis=0)


def score(features: torch.Tensor, frames: OpenFaceFrames, folds: list[Fold], active: np.ndarray) -> dict:
    """``{"au_r", "angles_r", "per_au", "per_angle"}`` of one feature set (means over the active AUs / 3 angles)."""
    au = fold_mean_r(features, frames.aus, folds)
    angles = fold_mean_r(features, frames.angles, folds)
    names = [name for name, keep in zip(frames.au_names, active) if keep]
    return {"au_r": float(np.nanmean(au[active])), "angles_r": float(np.nanmean(angles)),
            "per_au": dict(zip(names, au[active].tolist())),
            "per_angle": dict(zip(("pitch", "yaw", "roll"), angles.tolist()))}


__all__ = ["Fold", "MIN_AU_STD", "OpenFaceFrames", "active_aus", "block_folds", "load_openface_frames",
           "fold_mean_r", "score", "time_blocks"]
