"""Linear probes on frozen embeddings: how much of a label a representation holds, linearly.

Fit on one set of identities, scored on another (the caller splits). Both probes
standardise the features with the training statistics and pick their L2 strength from a
small grid on a validation part of the training rows (``val_groups``: whole identities, so
the choice is not made on faces the probe was fitted on), then refit on all training rows.

- :func:`ridge_probe`: least squares with an L2 penalty (closed form) -> continuous targets
  (AU intensities, head-motion parameters); scores Pearson r and R² per target.
- :func:`logistic_probe`: independent logistic regressions (one per label, full-batch
  L-BFGS) -> binary labels (AU presence); scores F1 at probability 0.5 per label.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from video_fer.errors import VideoFerError

RIDGE_PENALTIES = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
LOGISTIC_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


class ProbeInputError(VideoFerError, ValueError):
    """Probe features/targets have mismatched shapes or too few rows."""


@dataclass
class ProbeScores:
    """Per-target scores of a probe on the test rows (arrays of length ``targets``) and the penalty chosen."""

    penalty: float
    pearson: np.ndarray | None = None
    r2: np.ndarray | None = None
    f1: np.ndarray | None = None


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def _check(features: torch.Tensor, targets: torch.Tensor, name: str) -> None:
    if features.ndim != 2 or targets.ndim != 2 or features.shape[0] != targets.shape[0]:
        raise ProbeInputError(f"{name}: features (N, F) and targets (N, T) must have the same N, got "
                              f"{tuple(features.shape)} and {tuple(targets.shape)}")
    if features.shape[0] < 4:
        raise ProbeInputError(f"{name}: {features.shape[0]} rows; a probe needs at least 4")


def _ridge_fit(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (N, F)`` standardised, ``y (N, T)`` -> weights ``(F, T)``, bias ``(T,)``; penalty per row (scale-free in N)."""
    y_mean = y.mean(0)
    gram = x.T @ x + penalty * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x.T @ (y - y_mean))
    return weights, y_mean - x.mean(0) @ weights


def pearson_per_column(prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Pearson r of each column ``(N, T)`` x2 -> ``(T,)``; nan where either side is constant."""
    p, t = prediction - prediction.mean(0), truth - truth.mean(0)
    denominator = p.norm(dim=0) * t.norm(dim=0)
    r = (p * t).sum(0) / denominator
    return torch.where(denominator > 1e-12, r, torch.full_like(r, float("nan"))).numpy()


def r2_per_column(prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Coefficient of determination of each column, ``1 - SS_res / SS_tot`` (can be negative)."""
    residual = (truth - prediction).pow(2).sum(0)
    total = (truth - truth.mean(0)).pow(2).sum(0)
    return torch.where(total > 1e-12, 1 - residual / total, torch.full_like(total, float("nan"))).numpy()


def f1_per_column(predicted: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """F1 of each binary column ``(N, T)`` (bool) -> ``(T,)``; 0 when a label has no positive and none is predicted."""
    true_positive = (predicted & truth).sum(0).double()
    denominator = predicted.sum(0).double() + truth.sum(0).double()
    return torch.where(denominator > 0, 2 * true_positive / denominator.clamp_min(1), torch.zeros_like(denominator)).numpy()


def _validation_rows(val_groups: np.ndarray | None, count: int) -> np.ndarray:
    """Boolean mask of the validation rows: the given mask, else every 4th row."""
    if val_groups is not None:
        mask = np.asarray(val_groups, bool)
        if mask.shape != (count,) or mask.all() or not mask.any():
            raise ProbeInputError(f"val_groups: expected a boolean mask of {count} rows with both values, got "
                                  f"{mask.sum()} of {mask.size} set")
        return mask
    return np.arange(count) % 4 == 0


def ridge_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                val_groups: np.ndarray | None = None, penalties=RIDGE_PENALTIES) -> tuple[ProbeScores, torch.Tensor]:
    """Ridge regression probe; returns scores on the test rows and the test predictions ``(N_test, T)``.

    Args:
        train_x, test_x: ``(N, F)`` features. train_y, test_y: ``(N, T)`` continuous targets.
        val_groups: ``(N_train,)`` bool, the training rows used to choose the penalty
            (e.g. the rows of a few training identities); default every 4th row.
    """
    _check(train_x, train_y, "ridge_probe train")
    _check(test_x, test_y, "ridge_probe test")
    x, x_test = _standardise(train_x.double(), test_x.double())
    y, y_test = train_y.double(), test_y.double()
    val = torch.from_numpy(_validation_rows(val_groups, len(x)))
    errors = []
    for penalty in penalties:
        weights, bias = _ridge_fit(x[~val], y[~val], penalty)
        errors.append(float((x[val] @ weights + bias - y[val]).pow(2).mean()))
    best = float(penalties[int(np.argmin(errors))])
    weights, bias = _ridge_fit(x, y, best)
    prediction = x_test @ weights + bias
    return ProbeScores(best, pearson=pearson_per_column(prediction, y_test), r2=r2_per_column(prediction, y_test)), \
        prediction.float()


def _logistic_fit(x: torch.Tensor, y: torch.Tensor, penalty: float, iterations: int = 200
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent logistic regressions ``x (N, F)``, ``y (N, T)`` in {0, 1} -> weights ``(F, T)``, bias ``(T,)``."""
    weights = torch.zeros(x.shape[1], y.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weights + bias, y) \
            + penalty * weights.pow(2).sum() / y.shape[1]
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach(), bias.detach()


def logistic_probe(train_x: torch.Tensor, train_labels: torch.Tensor, test_x: torch.Tensor, test_labels: torch.Tensor,
                   val_groups: np.ndarray | None = None, penalties=LOGISTIC_PENALTIES
                   ) -> tuple[ProbeScores, torch.Tensor]:
    """Logistic-regression probe for binary labels; scores F1 at probability 0.5, returns test probabilities.

    The penalty is chosen by the mean validation F1 (ties: the stronger penalty).
    """
    _check(train_x, train_labels, "logistic_probe train")
    _check(test_x, test_labels, "logistic_probe test")
    x, x_test = _standardise(train_x.double(), test_x.double())
    y, truth = train_labels.double(), test_labels.bool()
    val = torch.from_numpy(_validation_rows(val_groups, len(x)))
    scores = []
    for penalty in penalties:
        weights, bias = _logistic_fit(x[~val], y[~val], penalty)
        scores.append(float(np.nanmean(f1_per_column(x[val] @ weights + bias > 0, y[val].bool()))))
    best = float(penalties[len(scores) - 1 - int(np.argmax(scores[::-1]))])
    weights, bias = _logistic_fit(x, y, best)
    logits = x_test @ weights + bias
    return ProbeScores(best, f1=f1_per_column(logits > 0, truth)), torch.sigmoid(logits).float()


__all__ = ["ProbeInputError", "ProbeScores", "f1_per_column", "logistic_probe", "pearson_per_column",
           "r2_per_column", "ridge_probe"]
