"""Evaluation metrics for AUs, expression and valence/arousal (numpy in, floats/arrays out).

Every function accepts numpy arrays, lists or torch tensors (moved to CPU and converted)
and returns plain Python floats for one-column inputs and float64 numpy arrays for
several columns. Columns are AUs (or valence/arousal); rows are frames.

Conventions (what the field does, and our choice where it is silent):

* AU occurrence labels are ``{0, 1}``; ``-1`` means "not coded" (BP4D's 9) and is
  masked for that AU, not counted as negative. An explicit boolean ``mask`` (True =
  use the entry) can be given as well; both are combined.
* Predictions are presence probabilities; a frame is predicted positive when
  ``score >= threshold`` (0.5). Hard 0/1 predictions work unchanged.
* F1 = 2 TP / (2 TP + FP + FN) over all (unmasked) frames of an AU. An AU with no
  positive label and no positive prediction has 0/0; we report F1 = 0 for it (the
  conservative choice; such an AU then pulls the mean down instead of vanishing).
* AUC (Mann-Whitney rank formula with mid-ranks for ties) is NaN when the unmasked
  labels of an AU hold only one class: there is no ranking to judge.
* Intensity and valence/arousal: NaN in the ground truth means "not coded" and is
  masked; NaN in a prediction is an error (it hides a model or pipeline bug).
  PCC, ICC and CCC are NaN when their denominator is 0 (e.g. a constant column).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from video_fer.io import atomic_path

__all__ = [
    "f1_per_au", "mean_f1", "auc_per_au", "FoldSummary", "summarize_folds",
    "icc_3_1", "pearson_correlation", "mean_absolute_error", "root_mean_square_error",
    "concordance_correlation", "accuracy", "mean_class_accuracy", "confusion_matrix",
    "normalize_confusion_rows", "plot_confusion_matrix",
]


# ----------------------------------------------------------------------------- inputs
def _to_numpy(values, name: str) -> np.ndarray:
    """numpy / list / torch tensor -> numpy array (torch imported lazily: metrics need no torch)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, got ragged or non-numeric values")
    return array


def _as_columns(values, name: str) -> tuple[np.ndarray, bool]:
    """(N,) or (N, K) -> (N, K) and whether the input had one column only (to return a float)."""
    array = _to_numpy(values, name)
    if array.ndim == 1:
        return array[:, None], True
    if array.ndim == 2:
        return array, False
    raise ValueError(f"{name}: expected shape (N,) or (N, K), got {array.shape}")


def _paired_columns(truth, prediction, mask, truth_name: str, prediction_name: str):
    """Check shapes; return truth (N, K), prediction (N, K), mask (N, K) bool, single-column flag."""
    truth_2d, single = _as_columns(truth, truth_name)
    prediction_2d, _ = _as_columns(prediction, prediction_name)
    if truth_2d.shape != prediction_2d.shape:
        raise ValueError(
            f"{truth_name} has shape {truth_2d.shape[:1 + (not single)]} but {prediction_name} has "
            f"{prediction_2d.shape[:1 + (not single)]}; they must match frame for frame")
    if mask is None:
        mask_2d = np.ones(truth_2d.shape, dtype=bool)
    else:
        mask_2d, _ = _as_columns(mask, "mask")
        if mask_2d.shape != truth_2d.shape:
            raise ValueError(f"mask has shape {mask_2d.shape}, expected {truth_2d.shape} like {truth_name}")
        mask_2d = mask_2d.astype(bool)
    return truth_2d, prediction_2d, mask_2d, single


def _result(values: np.ndarray, single: bool):
    """One column -> float, several -> float64 array."""
    values = np.asarray(values, dtype=np.float64)
    return float(values[0]) if single else values


def _binary_inputs(labels, scores, mask):
    """AU labels/scores -> labels (N, A) int, scores (N, A) float, valid (N, A) bool, single flag."""
    labels_2d, scores_2d, mask_2d, single = _paired_columns(labels, scores, mask, "labels", "scores")
    labels_2d = labels_2d.astype(np.int64)
    bad = mask_2d & ~np.isin(labels_2d, (-1, 0, 1))  # masked entries may hold anything
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"labels[{row}, {column}] = {labels_2d[row, column]}: AU labels must be 0, 1 or -1 "
            "(not coded); threshold intensities first (e.g. DISFA: intensity >= 2)")
    scores_2d = scores_2d.astype(np.float64)
    valid = mask_2d & (labels_2d >= 0)
    if np.isnan(scores_2d[valid]).any():
        raise ValueError("scores contain NaN on coded frames; check the model output")
    return labels_2d, scores_2d, valid, single


# ----------------------------------------------------------------------------- AU occurrence
def f1_per_au(labels, scores, mask=None, threshold: float = 0.5):
    """F1 score of each AU over all frames, at a fixed threshold.

    Args:
        labels: ``(N, A)`` or ``(N,)`` in {0, 1, -1}; -1 = not coded (masked).
        scores: same shape; presence probabilities (or hard 0/1 predictions).
        mask: optional same-shape bool, True where the entry counts.
        threshold: positive prediction when ``score >= threshold``.

    Returns:
        ``(A,)`` float64 array (float for 1-D input). F1 = 2TP / (2TP + FP + FN);
        0 when an AU has neither positive labels nor positive predictions (convention).
    """
    labels_2d, scores_2d, valid, single = _binary_inputs(labels, scores, mask)
    predicted = (scores_2d >= threshold) & valid
    actual = (labels_2d == 1) & valid
    true_positive = (predicted & actual).sum(axis=0)
    false_positive = (predicted & ~actual).sum(axis=0)
    false_negative = (~predicted & actual & valid).sum(axis=0)
    denominator = 2 * true_positive + false_positive + false_negative
    # 0/0 (nothing to find and nothing predicted) -> 0 by the documented convention
    f1 = np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 0.0)
    return _result(f1, single)


def mean_f1(labels, scores, mask=None, threshold: float = 0.5) -> float:
    """Unweighted mean over AUs of :func:`f1_per_au` (the AU benchmark number of one fold)."""
    return float(np.mean(f1_per_au(labels, scores, mask, threshold)))


def auc_per_au(labels, scores, mask=None):
    """Area under the ROC curve of each AU (rank formula, mid-ranks for tied scores).

    AUC = (sum of the ranks of the positives - P (P + 1) / 2) / (P * N), which equals the
    probability that a random positive scores above a random negative (ties count 1/2).

    Args:
        labels: ``(N, A)`` or ``(N,)`` in {0, 1, -1}; -1 = not coded (masked).
        scores: same shape, any real scores (probabilities or logits).
        mask: optional same-shape bool, True where the entry counts.

    Returns:
        ``(A,)`` float64 (float for 1-D input); NaN for an AU whose unmasked labels are
        all positive or all negative (e.g. a rare AU in one test fold).
    """
    labels_2d, scores_2d, valid, single = _binary_inputs(labels, scores, mask)
    auc = np.full(labels_2d.shape[1], np.nan)
    for column in range(labels_2d.shape[1]):  # masks differ per AU, so each AU has its own ranking
        keep = valid[:, column]
        positive = labels_2d[keep, column] == 1
        num_positive, num_negative = int(positive.sum()), int((~positive).sum())
        if num_positive == 0 or num_negative == 0:
            continue
        ranks = rankdata(scores_2d[keep, column])  # average ranks for ties
        auc[column] = (ranks[positive].sum() - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative)
    return _result(auc, single)


@dataclass(frozen=True)
class FoldSummary:
    """Cross-validation summary of a per-AU metric.

    Attributes:
        mean: mean over folds of the per-fold mean over AUs (the headline number).
        per_au: ``(A,)`` mean over folds of each AU's score.
        per_fold: ``(F,)`` mean over AUs within each fold.
    """

    mean: float
    per_au: np.ndarray
    per_fold: np.ndarray


def summarize_folds(per_fold_scores: Sequence, ignore_nan: bool = False) -> FoldSummary:
    """Aggregate per-fold per-AU scores (e.g. F1 of 3 folds x 12 AUs).

    Args:
        per_fold_scores: ``(F, A)`` array-like: one row of per-AU scores per fold.
        ignore_nan: skip NaN entries (AUC of a one-class AU) in the means instead of
            propagating them; a mean over nothing but NaN stays NaN.
    """
    scores = np.asarray([_to_numpy(row, "per_fold_scores").astype(np.float64) for row in per_fold_scores])
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"per_fold_scores: expected (folds, AUs) scores, got shape {scores.shape}")
    if ignore_nan:
        counts_au, counts_fold = np.isfinite(scores).sum(axis=0), np.isfinite(scores).sum(axis=1)
        filled = np.where(np.isfinite(scores), scores, 0.0)
        per_au = np.where(counts_au > 0, filled.sum(axis=0) / np.maximum(counts_au, 1), np.nan)
        per_fold = np.where(counts_fold > 0, filled.sum(axis=1) / np.maximum(counts_fold, 1), np.nan)
        finite_folds = np.isfinite(per_fold)
        mean = float(per_fold[finite_folds].mean()) if finite_folds.any() else float("nan")
    else:
        per_au, per_fold = scores.mean(axis=0), scores.mean(axis=1)
        mean = float(per_fold.mean())
    return FoldSummary(mean=mean, per_au=per_au, per_fold=per_fold)


# ----------------------------------------------------------------------------- intensity, valence/arousal
def _continuous_inputs(truth, prediction, mask):
    """Ground truth/prediction -> float64 (N, K) each, weights (N, K) in {0, 1}, single flag."""
    truth_2d, prediction_2d, mask_2d, single = _paired_columns(truth, prediction, mask, "truth", "prediction")
    truth_2d, prediction_2d = truth_2d.astype(np.float64), prediction_2d.astype(np.float64)
    valid = mask_2d & np.isfinite(truth_2d)  # NaN ground truth = not coded
    if not np.isfinite(prediction_2d[valid]).all():
        raise ValueError("prediction contains NaN or inf on coded frames; check the model output")
    weights = valid.astype(np.float64)
    # zero the masked entries so NaNs there cannot leak into the sums
    return np.where(valid, truth_2d, 0.0), np.where(valid, prediction_2d, 0.0), weights, single


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (undefined statistic)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator != 0, numerator / np.where(denominator != 0, denominator, 1.0), np.nan)


def _moments(truth: np.ndarray, prediction: np.ndarray, weights: np.ndarray):
    """Masked population moments per column: means, variances, covariance, count (each (K,))."""
    count = weights.sum(axis=0)
    mean_truth = _safe_divide((weights * truth).sum(axis=0), count)
    mean_prediction = _safe_divide((weights * prediction).sum(axis=0), count)
    centred_truth = weights * (truth - np.nan_to_num(mean_truth))
    centred_prediction = weights * (prediction - np.nan_to_num(mean_prediction))
    variance_truth = _safe_divide((centred_truth ** 2).sum(axis=0), count)
    variance_prediction = _safe_divide((centred_prediction ** 2).sum(axis=0), count)
    covariance = _safe_divide((centred_truth * centred_prediction).sum(axis=0), count)
    return mean_truth, mean_prediction, variance_truth, variance_prediction, covariance, count


def pearson_correlation(truth, prediction, mask=None):
    """Pearson correlation per column; ``(N,)``/``(N, K)`` in, float/``(K,)`` out; NaN for a constant column."""
    truth_2d, prediction_2d, weights, single = _continuous_inputs(truth, prediction, mask)
    _, _, variance_truth, variance_prediction, covariance, _ = _moments(truth_2d, prediction_2d, weights)
    return _result(_safe_divide(covariance, np.sqrt(variance_truth * variance_prediction)), single)


def concordance_correlation(truth, prediction, mask=None):
    """Lin's concordance correlation coefficient per column (population moments).

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2): PCC penalised for any
    shift or scale difference between prediction and truth (the valence/arousal metric).
    ``(N,)``/``(N, K)`` in, float/``(K,)`` out.
    """
    truth_2d, prediction_2d, weights, single = _continuous_inputs(truth, prediction, mask)
    mean_truth, mean_prediction, variance_truth, variance_prediction, covariance, _ = _moments(
        truth_2d, prediction_2d, weights)
    denominator = variance_truth + variance_prediction + (mean_truth - mean_prediction) ** 2
    return _result(_safe_divide(2 * covariance, denominator), single)


def mean_absolute_error(truth, prediction, mask=None):
    """Mean absolute error per column; ``(N,)``/``(N, K)`` in, float/``(K,)`` out."""
    truth_2d, prediction_2d, weights, single = _continuous_inputs(truth, prediction, mask)
    return _result(_safe_divide((weights * np.abs(truth_2d - prediction_2d)).sum(axis=0), weights.sum(axis=0)), single)


def root_mean_square_error(truth, prediction, mask=None):
    """Root mean square error per column; ``(N,)``/``(N, K)`` in, float/``(K,)`` out."""
    truth_2d, prediction_2d, weights, single = _continuous_inputs(truth, prediction, mask)
    mean_square = _safe_divide((weights * (truth_2d - prediction_2d) ** 2).sum(axis=0), weights.sum(axis=0))
    return _result(np.sqrt(mean_square), single)


def icc_3_1(truth, prediction, mask=None):
    """Intraclass correlation ICC(3,1) between prediction and ground truth, per column.

    Shrout & Fleiss (1979) case 3, single rater: two-way mixed model, consistency. The
    n frames are the targets, ground truth and prediction the k = 2 "raters":
    ICC(3,1) = (BMS - EMS) / (BMS + (k - 1) EMS), with BMS the between-frames mean square
    and EMS the residual mean square of the two-way ANOVA. A constant offset between the
    raters does not lower it (consistency, not absolute agreement).

    Returns float/``(K,)``; NaN when BMS + EMS = 0 (all values equal) or fewer than 2 frames.
    """
    truth_2d, prediction_2d, weights, single = _continuous_inputs(truth, prediction, mask)
    raters = 2
    count = weights.sum(axis=0)
    mean_truth = _safe_divide((weights * truth_2d).sum(axis=0), count)
    mean_prediction = _safe_divide((weights * prediction_2d).sum(axis=0), count)
    grand_mean = (mean_truth + mean_prediction) / 2
    frame_mean = (truth_2d + prediction_2d) / 2
    # sums of squares of the two-way ANOVA (frames x raters), masked frames weigh 0
    between_frames = raters * (weights * (frame_mean - np.nan_to_num(grand_mean)) ** 2).sum(axis=0)
    between_raters = count * ((mean_truth - grand_mean) ** 2 + (mean_prediction - grand_mean) ** 2)
    total = (weights * ((truth_2d - np.nan_to_num(grand_mean)) ** 2
                        + (prediction_2d - np.nan_to_num(grand_mean)) ** 2)).sum(axis=0)
    residual = total - between_frames - between_raters
    between_frames_mean_square = _safe_divide(between_frames, count - 1)
    residual_mean_square = _safe_divide(residual, (count - 1) * (raters - 1))
    icc = _safe_divide(between_frames_mean_square - residual_mean_square,
                       between_frames_mean_square + (raters - 1) * residual_mean_square)
    return _result(icc, single)


# ----------------------------------------------------------------------------- expression
def _class_predictions(labels, predictions, num_classes: int | None):
    """labels (N,) int; predictions (N,) class ids or (N, C) scores (argmax) -> (labels, predicted, C)."""
    labels = _to_numpy(labels, "labels")
    predictions = _to_numpy(predictions, "predictions")
    if labels.ndim != 1:
        raise ValueError(f"labels: expected class ids of shape (N,), got {labels.shape}")
    if predictions.ndim == 2:
        if num_classes is not None and predictions.shape[1] != num_classes:
            raise ValueError(f"predictions has {predictions.shape[1]} class scores but num_classes={num_classes}")
        num_classes = predictions.shape[1] if num_classes is None else num_classes
        predictions = predictions.argmax(axis=1)
    elif predictions.ndim != 1:
        raise ValueError(f"predictions: expected (N,) class ids or (N, C) scores, got {predictions.shape}")
    if predictions.shape[0] != labels.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} samples but predictions has {predictions.shape[0]}")
    labels, predictions = labels.astype(np.int64), predictions.astype(np.int64)
    if num_classes is None:
        num_classes = int(max(labels.max(initial=-1), predictions.max(initial=-1))) + 1
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name}: class ids must lie in [0, {num_classes}), found "
                             f"{values.min()}..{values.max()}; pass the right num_classes")
    return labels, predictions, num_classes


def confusion_matrix(labels, predictions, num_classes: int | None = None) -> np.ndarray:
    """Counts ``(C, C)`` int64: row = true class, column = predicted class.

    ``predictions`` may be class ids ``(N,)`` or scores ``(N, C)`` (argmax is taken).
    """
    labels, predictions, num_classes = _class_predictions(labels, predictions, num_classes)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def normalize_confusion_rows(matrix) -> np.ndarray:
    """Row-normalised confusion ``(C, C)`` float64 (each row sums to 1; a class with no sample gives a row of 0)."""
    matrix = _to_numpy(matrix, "matrix").astype(np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.where(totals > 0, matrix / np.maximum(totals, 1e-300), 0.0)


def accuracy(labels, predictions) -> float:
    """Fraction of samples whose predicted class equals the label (ids ``(N,)`` or scores ``(N, C)``)."""
    labels, predictions, _ = _class_predictions(labels, predictions, None)
    if labels.size == 0:
        raise ValueError("accuracy of zero samples is undefined; pass at least one sample")
    return float(np.mean(labels == predictions))


def mean_class_accuracy(labels, predictions, num_classes: int | None = None) -> float:
    """Mean over the classes present in ``labels`` of their recall (the class-balanced accuracy).

    Classes without any labelled sample are left out of the mean (their recall is undefined).
    """
    matrix = confusion_matrix(labels, predictions, num_classes)
    totals = matrix.sum(axis=1)
    present = totals > 0
    if not present.any():
        raise ValueError("mean class accuracy of zero samples is undefined; pass at least one sample")
    return float(np.mean(np.diag(matrix)[present] / totals[present]))


def plot_confusion_matrix(matrix, path: str | os.PathLike, class_names: Sequence[str] | None = None,
                          normalize: bool = True, title: str | None = None) -> None:
    """Write the confusion matrix as a PNG heat map (matplotlib Agg, no display needed).

    Args:
        matrix: ``(C, C)`` counts from :func:`confusion_matrix`.
        path: the PNG file to write (atomically).
        class_names: C labels for the axes (default: class ids).
        normalize: colour and annotate the row-normalised matrix (recall per cell) instead of counts.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = _to_numpy(matrix, "matrix")
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"matrix: expected a square (C, C) confusion matrix, got {counts.shape}")
    num_classes = counts.shape[0]
    names = [str(index) for index in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for a {num_classes}-class matrix")
    shown = normalize_confusion_rows(counts) if normalize else counts.astype(np.float64)

    figure = Figure(figsize=(1.2 + 0.7 * num_classes, 1.0 + 0.6 * num_classes))
    FigureCanvasAgg(figure)  # Agg canvas: works headless and leaves pyplot's global state alone
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(shown.max(), 1.0))
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(num_classes), labels=names, rotation=45, ha="right")
    axes.set_yticks(range(num_classes), labels=names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if title:
        axes.set_title(title)
    threshold = 0.5 * (1.0 if normalize else max(shown.max(), 1.0))
    for row in range(num_classes):
        for column in range(num_classes):  # one text label per cell; C is small (7-8 expressions)
            text = f"{shown[row, column]:.2f}" if normalize else f"{int(counts[row, column])}"
            axes.text(column, row, text, ha="center", va="center", fontsize=8,
                      color="white" if shown[row, column] > threshold else "black")
    figure.tight_layout()
    path = os.fspath(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
