"""AU benchmark evaluation: per-fold scores, the mean over folds, JSON and a Markdown table.

The protocol of the papers (METHOD.md §2): per-AU F1 at threshold 0.5 over all frames of
a test fold, the unweighted mean over AUs, then the mean over the three folds (not
micro-F1, not per video). AUC is reported beside it; for intensity (DISFA) ICC(3,1),
Pearson correlation and MAE per AU. The metric functions live in :mod:`video_fer.evaluate.metrics`;
this module organises them into a report.

Files (written atomically):

* ``fold_<k>/predictions.npz`` (:class:`FoldPredictions`): what a model predicted on the
  test frames of fold ``k``, with the labels; every number of the report is recomputed
  from these files, so ``video-fer evaluate RUN_DIR`` reproduces the recipe's table.
* ``results.json``: per-fold and aggregate scores. F1 / AUC are fractions in [0, 1].
* ``results.md``: the papers' layout: one row, the AUs as columns, the mean last, in
  percent, with the published anchors beside it.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from video_fer.data.folds import DISFA_OCCURRENCE_THRESHOLD, au_column_name
from video_fer.errors import VideoFerError
from video_fer.io import atomic_path, atomic_write
from video_fer.evaluate.metrics import (auc_per_au, f1_per_au, icc_3_1, mean_absolute_error, pearson_correlation,
                                        summarize_folds)

__all__ = [
    "PublishedResult", "PUBLISHED_ANCHORS", "FoldPredictions", "occurrence_scores", "intensity_scores",
    "evaluate_fold", "aggregate_folds", "build_report", "markdown_table", "write_report", "find_fold_predictions",
    "evaluate_run", "NUM_FOLDS",
]

NUM_FOLDS = 3
PREDICTIONS_FILE = "predictions.npz"
RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"


class EvaluationError(VideoFerError):
    """Predictions to evaluate are missing or inconsistent."""


@dataclass(frozen=True)
class PublishedResult:
    """A published number to print beside ours (mean F1 as a fraction; per-AU values when known)."""

    method: str
    protocol: str
    mean_f1: float
    source: str
    per_au_f1: Mapping[int, float] | None = None


# Only numbers we can trace (METHOD.md §2): TCAE's linear probe on BP4D, checked against the
# authors' issue tracker. Per-AU values are left out rather than guessed.
PUBLISHED_ANCHORS: dict[str, tuple[PublishedResult, ...]] = {
    "bp4d": (PublishedResult("TCAE", "linear probe", 0.561, "Li et al., CVPR 2019"),),
    "disfa": (),
}


# ----------------------------------------------------------------------------- predictions file
@dataclass
class FoldPredictions:
    """Predictions of one test fold, with the labels they are scored against (N frames, A AUs).

    Attributes:
        au_numbers: the A AUs, column order.
        scores: ``(N, A)`` float32 presence probabilities (occurrence), or None.
        occurrence: ``(N, A)`` int8 labels in {0, 1, -1 = not coded}.
        intensity_prediction: ``(N, A)`` float32 predicted intensities, or None.
        intensity: ``(N, A)`` float32 true intensities (NaN = not coded), or None.
        subjects, sources: ``(N,)`` str; frames: ``(N,)`` int64 (as in the label files).
    """

    au_numbers: tuple[int, ...]
    scores: np.ndarray | None
    occurrence: np.ndarray
    subjects: np.ndarray
    sources: np.ndarray
    frames: np.ndarray
    intensity_prediction: np.ndarray | None = None
    intensity: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = (len(self.subjects), len(self.au_numbers))
        for name in ("scores", "occurrence", "intensity_prediction", "intensity"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise EvaluationError(f"FoldPredictions.{name} has shape {value.shape}, expected {shape} "
                                      f"({shape[0]} frames x AUs {list(self.au_numbers)})")
        if self.scores is None and self.intensity_prediction is None:
            raise EvaluationError("FoldPredictions: give scores (occurrence) or intensity_prediction (intensity)")
        if self.intensity_prediction is not None and self.intensity is None:
            raise EvaluationError("FoldPredictions: intensity_prediction needs the true intensity to be scored")

    @property
    def task(self) -> str:
        return "intensity" if self.intensity_prediction is not None else "occurrence"

    def save(self, path: str | os.PathLike) -> Path:
        """Write an npz (atomic); None fields are left out."""
        arrays = {"au_numbers": np.asarray(self.au_numbers, np.int64), "occurrence": self.occurrence,
                  "subjects": self.subjects.astype(str), "sources": self.sources.astype(str), "frames": self.frames}
        for name in ("scores", "intensity_prediction", "intensity"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        path = Path(path)
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:  # a file object: np.savez would append .npz to the temp name
                np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FoldPredictions":
        """Read a file written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:  # e.g. a truncated file
            raise EvaluationError(f"{path}: cannot read predictions ({type(error).__name__}: {error}); the file is "
                                  "damaged or incomplete: rerun that fold (delete its result.json first)") from None
        missing = [key for key in ("au_numbers", "occurrence", "subjects", "sources", "frames") if key not in arrays]
        if missing:
            raise EvaluationError(f"{path}: not a predictions file (no {', '.join(missing)}); "
                                  "it must be written by FoldPredictions.save")
        return cls(tuple(int(au) for au in arrays["au_numbers"]), arrays.get("scores"), arrays["occurrence"],
                   arrays["subjects"], arrays["sources"], arrays["frames"], arrays.get("intensity_prediction"),
                   arrays.get("intensity"))


# ----------------------------------------------------------------------------- per fold
def _by_au(au_numbers: Sequence[int], values: np.ndarray) -> dict[str, float | None]:
    """``{"AU01": 0.5, ...}``; NaN becomes None (JSON has no NaN)."""
    return {au_column_name(au): (None if not np.isfinite(value) else float(value))
            for au, value in zip(au_numbers, np.atleast_1d(values))}


def _nan_mean(values: np.ndarray) -> float | None:
    finite = np.asarray(values, np.float64)[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def occurrence_scores(au_numbers: Sequence[int], occurrence: np.ndarray, scores: np.ndarray,
                      threshold: float = 0.5) -> dict:
    """F1 and AUC per AU over all frames of one fold (not-coded frames masked per AU).

    Args:
        occurrence: ``(N, A)`` labels in {0, 1, -1}.
        scores: ``(N, A)`` presence probabilities.

    Returns:
        ``{"f1": {AU: float}, "mean_f1", "auc": {AU: float | None}, "mean_auc", "coded_frames": {AU: int},
        "positive_frames": {AU: int}}``; ``mean_auc`` skips AUs whose AUC is undefined (one class only).
    """
    f1 = np.atleast_1d(f1_per_au(occurrence, scores, threshold=threshold))
    auc = np.atleast_1d(auc_per_au(occurrence, scores))
    coded = (occurrence >= 0).sum(axis=0)
    positive = (occurrence == 1).sum(axis=0)
    return {"f1": _by_au(au_numbers, f1), "mean_f1": float(f1.mean()),
            "auc": _by_au(au_numbers, auc), "mean_auc": _nan_mean(auc),
            "coded_frames": {au_column_name(au): int(n) for au, n in zip(au_numbers, coded)},
            "positive_frames": {au_column_name(au): int(n) for au, n in zip(au_numbers, positive)}}


def intensity_scores(au_numbers: Sequence[int], intensity: np.ndarray, prediction: np.ndarray) -> dict:
    """ICC(3,1), Pearson correlation and MAE per AU (NaN truth = not coded), with their means over AUs."""
    icc = np.atleast_1d(icc_3_1(intensity, prediction))
    pcc = np.atleast_1d(pearson_correlation(intensity, prediction))
    mae = np.atleast_1d(mean_absolute_error(intensity, prediction))
    return {"icc": _by_au(au_numbers, icc), "mean_icc": _nan_mean(icc),
            "pcc": _by_au(au_numbers, pcc), "mean_pcc": _nan_mean(pcc),
            "mae": _by_au(au_numbers, mae), "mean_mae": _nan_mean(mae)}


def evaluate_fold(predictions: FoldPredictions, threshold: float = 0.5,
                  intensity_threshold: float = DISFA_OCCURRENCE_THRESHOLD) -> dict:
    """Scores of one test fold: occurrence (F1, AUC) and, when predicted, intensity (ICC, PCC, MAE).

    An intensity model has no probabilities: its F1 counts an AU present where the predicted
    intensity is ``>= intensity_threshold`` (DISFA's 2, as for the labels) and its AUC ranks intensities.
    """
    result: dict = {"task": predictions.task, "frames": int(len(predictions.subjects)),
                    "subjects": sorted({str(s) for s in predictions.subjects})}
    if predictions.scores is not None:
        result.update(occurrence_scores(predictions.au_numbers, predictions.occurrence, predictions.scores, threshold))
    else:
        result["occurrence_threshold"] = intensity_threshold
        result.update(occurrence_scores(predictions.au_numbers, predictions.occurrence,
                                        np.asarray(predictions.intensity_prediction, np.float64), intensity_threshold))
    if predictions.intensity_prediction is not None:
        result.update(intensity_scores(predictions.au_numbers, predictions.intensity, predictions.intensity_prediction))
    return result


# ----------------------------------------------------------------------------- over folds
def _per_fold_matrix(fold_results: Sequence[Mapping], key: str, names: Sequence[str]) -> np.ndarray:
    return np.array([[np.nan if result[key][name] is None else result[key][name] for name in names]
                     for result in fold_results], dtype=np.float64)


def aggregate_folds(fold_results: Mapping[int, Mapping], au_numbers: Sequence[int]) -> dict:
    """Mean over folds: per AU, and the headline number = mean over folds of each fold's mean over AUs.

    Args:
        fold_results: ``{fold: evaluate_fold(...)}`` for the folds that finished.
        au_numbers: the AUs (column order of the table).

    Returns:
        ``{"folds": [...], "complete": bool, "<metric>": {AU: mean}, "mean_<metric>": float,
        "<metric>_per_fold": [fold means]}`` for f1, auc and (when present) icc, pcc, mae.
    """
    if not fold_results:
        raise EvaluationError("aggregate_folds: no finished fold to aggregate")
    folds = sorted(fold_results)
    results = [fold_results[fold] for fold in folds]
    names = [au_column_name(au) for au in au_numbers]
    aggregate: dict = {"folds": folds, "complete": folds == list(range(1, NUM_FOLDS + 1)),
                       "frames": int(sum(result["frames"] for result in results))}
    metrics = ["f1", "auc"] + (["icc", "pcc", "mae"] if all("icc" in result for result in results) else [])
    for metric in metrics:
        # AUC/ICC/PCC may be undefined for an AU in a fold (one class, constant): skip those entries
        summary = summarize_folds(_per_fold_matrix(results, metric, names), ignore_nan=metric != "f1")
        aggregate[metric] = _by_au(au_numbers, summary.per_au)
        aggregate[f"mean_{metric}"] = None if not np.isfinite(summary.mean) else summary.mean
        aggregate[f"{metric}_per_fold"] = [None if not np.isfinite(v) else float(v) for v in summary.per_fold]
    return aggregate


def build_report(fold_results: Mapping[int, Mapping], au_numbers: Sequence[int], dataset: str | None,
                 threshold: float = 0.5, method: str = "this run", extra: Mapping | None = None) -> dict:
    """The JSON document: per-fold results, their aggregate and the published anchors."""
    anchors = PUBLISHED_ANCHORS.get((dataset or "").lower(), ())
    return {"dataset": dataset, "method": method, "threshold": threshold,
            "au_numbers": [int(au) for au in au_numbers],
            "folds": {str(fold): dict(result) for fold, result in sorted(fold_results.items())},
            "aggregate": aggregate_folds(fold_results, au_numbers),
            "published": [{"method": a.method, "protocol": a.protocol, "mean_f1": a.mean_f1, "source": a.source,
                           "per_au_f1": None if a.per_au_f1 is None else
                           {au_column_name(au): v for au, v in a.per_au_f1.items()}} for a in anchors],
            **dict(extra or {})}


# ----------------------------------------------------------------------------- Markdown
def _cell(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value * scale:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _fold_text(folds: Sequence[int]) -> str:
    if list(folds) == list(range(1, NUM_FOLDS + 1)):
        return f"mean of folds 1-{NUM_FOLDS}"
    return f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))} only (incomplete)"


def markdown_table(report: Mapping) -> str:
    """The papers' layout: one row per method, AUs as columns, mean last (F1 in %); AUC and intensity below."""
    au_numbers = report["au_numbers"]
    names = [au_column_name(au) for au in au_numbers]
    header = ["Method"] + [f"AU{au}" for au in au_numbers] + ["Avg."]
    aggregate = report["aggregate"]
    dataset = (report.get("dataset") or "custom data").upper() if report.get("dataset") else "custom data"
    ours = f"{report.get('method', 'this run')} ({_fold_text(aggregate['folds'])})"
    lines = [f"## AU occurrence F1 (%) on {dataset}", "",
             f"Subject-exclusive {NUM_FOLDS}-fold protocol, threshold {report.get('threshold', 0.5)}, F1 per AU over "
             "all frames of a test fold, mean over AUs, then over folds.", ""]
    thresholds = {result.get("occurrence_threshold") for result in report["folds"].values()} - {None}
    if thresholds:  # an intensity model has no probabilities: present = predicted intensity >= the label threshold
        lines[-1:-1] = [f"Intensity model: an AU counts as predicted where its predicted intensity is >= "
                        f"{', '.join(f'{t:g}' for t in sorted(thresholds))}.", ""]
    rows = [[ours] + [_cell(aggregate["f1"][name]) for name in names] + [_cell(aggregate["mean_f1"])]]
    for anchor in report.get("published", []):
        per_au = anchor.get("per_au_f1") or {}
        rows.append([f"{anchor['method']} {anchor['protocol']} ({anchor['source']}, published)"]
                    + [_cell(per_au.get(name)) for name in names] + [_cell(anchor["mean_f1"])])
    lines += _table(header, rows)
    lines += ["", "### Per fold (F1 %)", ""]
    lines += _table(header, [[f"fold {fold}"] + [_cell(result["f1"][name]) for name in names]
                             + [_cell(result["mean_f1"])] for fold, result in report["folds"].items()])
    lines += ["", "### AUC (%)", ""]
    lines += _table(header, [[ours] + [_cell(aggregate["auc"][name]) for name in names]
                             + [_cell(aggregate["mean_auc"])]])
    if "icc" in aggregate:
        lines += ["", "### Intensity", ""]
        lines += _table(["Metric"] + header[1:], [
            [label] + [_cell(aggregate[key][name], 1.0, 3) for name in names] + [_cell(aggregate[f"mean_{key}"], 1.0, 3)]
            for key, label in (("icc", "ICC(3,1)"), ("pcc", "PCC"), ("mae", "MAE"))])
    faces = report.get("faces")
    if faces:
        lines += ["", f"{faces['without_face']} of {faces['labelled']} labelled frames had no face in the cache and are "
                      "not scored (per subject: faces_report.json)."]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (atomically); returns both paths."""
    out_dir = Path(out_dir)
    json_path, markdown_path = out_dir / RESULTS_JSON, out_dir / RESULTS_MARKDOWN
    with atomic_write(json_path) as handle:
        json.dump(report, handle, indent=2)
    with atomic_write(markdown_path) as handle:
        handle.write(markdown_table(report))
    return json_path, markdown_path


# ----------------------------------------------------------------------------- a run folder
def find_fold_predictions(run_dir: str | os.PathLike) -> dict[int, Path]:
    """``{fold: run_dir/fold_<k>/predictions.npz}`` for every fold that has one."""
    run_dir = Path(run_dir)
    found = {fold: run_dir / f"fold_{fold}" / PREDICTIONS_FILE for fold in range(1, NUM_FOLDS + 1)}
    return {fold: path for fold, path in found.items() if path.is_file()}


def evaluate_run(run_dir: str | os.PathLike, dataset: str | None = None, threshold: float = 0.5,
                 method: str | None = None, out_dir: str | os.PathLike | None = None) -> dict:
    """Recompute every number of a fine-tuning run from its ``fold_<k>/predictions.npz`` and write the report.

    ``dataset``, ``method`` and the intensity threshold of intensity models default to the run's
    ``run.json`` (written by recipes/finetune_au.py);
    the report goes to ``out_dir`` (default ``run_dir``).
    """
    run_dir = Path(run_dir)
    paths = find_fold_predictions(run_dir)
    if not paths:
        raise EvaluationError(f"{run_dir}: no fold_<k>/{PREDICTIONS_FILE}; point at the output_dir of a "
                              "finished fine-tuning run (recipes/finetune_au.py)")
    info = {}
    if (run_dir / "run.json").is_file():
        try:
            info = json.loads((run_dir / "run.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise EvaluationError(f"{run_dir / 'run.json'}: damaged ({error}); restore it, or delete it and give "
                                  "--dataset (the report then names the method 'this run')") from None
        if not isinstance(info, dict):
            raise EvaluationError(f"{run_dir / 'run.json'}: expected a JSON object, got {type(info).__name__}")
    predictions = {fold: FoldPredictions.load(path) for fold, path in paths.items()}
    au_sets = {fold: p.au_numbers for fold, p in predictions.items()}
    if len(set(au_sets.values())) != 1:
        raise EvaluationError(f"{run_dir}: the folds predict different AUs {au_sets}; rerun them with one AU list")
    au_numbers = next(iter(au_sets.values()))
    intensity_threshold = info.get("occurrence_threshold", DISFA_OCCURRENCE_THRESHOLD)
    fold_results = {fold: evaluate_fold(p, threshold, intensity_threshold) for fold, p in predictions.items()}
    extra = {key: info[key] for key in ("faces", "mode", "task", "encoder") if key in info}
    report = build_report(fold_results, au_numbers, dataset or info.get("dataset"), threshold,
                          method or info.get("method", "this run"), extra)
    write_report(report, out_dir or run_dir)
    return report
