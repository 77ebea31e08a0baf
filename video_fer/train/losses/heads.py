"""Losses of the expression / valence-arousal heads (METHOD.md §2).

- :func:`region_biased_loss`: RAN's region biased loss on the self-attention weights;
- :func:`concordance_correlation` / :func:`ccc_loss`: Lin's CCC and ``1 - CCC``;
- :func:`ran_loss`, :func:`aha_loss`, :func:`va_multitask_loss`: each head's total,
  returned as a dict of scalar terms with the weighted sum under ``"total"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from video_fer.errors import VideoFerError


class HeadLossInputError(VideoFerError, ValueError):
    """A loss got outputs or targets of the wrong shape."""


def region_biased_loss(self_attention: torch.Tensor, alpha: float = 0.02) -> torch.Tensor:
    """RAN's region biased loss ``mean_b max(0, alpha - (max_{i>0} mu_i - mu_0))``.

    Pushes the most attended crop to be weighted at least ``alpha`` above the whole face.

    Args:
        self_attention: ``(B, 1 + K)`` self-attention weights, column 0 the whole face.
        alpha: the margin (the paper uses 0.02 .. 0.1).

    Returns:
        scalar.
    """
    if self_attention.ndim != 2 or self_attention.shape[1] < 2:
        raise HeadLossInputError(f"self_attention: expected (B, 1 + K) with K >= 1 crops, got {tuple(self_attention.shape)}")
    best_crop = self_attention[:, 1:].amax(dim=1)
    return F.relu(alpha - (best_crop - self_attention[:, 0])).mean()


def concordance_correlation(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lin's concordance correlation coefficient per column.

    ``CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2)`` with population
    (biased) moments over the batch.

    Args:
        prediction, target: ``(N,)`` or ``(N, K)``.

    Returns:
        ``()`` or ``(K,)``.
    """
    if prediction.shape != target.shape:
        raise HeadLossInputError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must match")
    mean_p, mean_t = prediction.mean(dim=0), target.mean(dim=0)
    centred_p, centred_t = prediction - mean_p, target - mean_t
    covariance = (centred_p * centred_t).mean(dim=0)
    variance_p, variance_t = centred_p.pow(2).mean(dim=0), centred_t.pow(2).mean(dim=0)
    return 2 * covariance / (variance_p + variance_t + (mean_p - mean_t) ** 2 + eps)


def ccc_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - CCC`` averaged over columns (valence, arousal), scalar."""
    return (1 - concordance_correlation(prediction, target)).mean()


def ran_loss(output, labels: torch.Tensor, alpha: float = 0.02, region_biased_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """RAN total: cross-entropy on the fused logits plus the region biased loss.

    Args:
        output: :class:`~video_fer.models.heads.HeadOutput` of a RAN head
            (``logits (B, n)``, ``attention["self"] (B, 1 + K)``).
        labels: ``(B,)`` classes.
    """
    terms = {
        "cross_entropy": F.cross_entropy(output.logits, labels),
        "region_biased": region_biased_loss(output.attention["self"], alpha),
    }
    terms["total"] = terms["cross_entropy"] + region_biased_weight * terms["region_biased"]
    return terms


def aha_loss(output, labels: torch.Tensor, region_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """AHA total: cross-entropy on the fused output plus one cross-entropy per region branch (summed).

    With the CosFace classifier the head must have been called with ``labels=`` so
    the margin is in the logits.

    Args:
        output: AHA :class:`~video_fer.models.heads.HeadOutput` (``logits (B, n)``,
            ``region_logits (B, R, n)``).
        labels: ``(B,)`` classes.
    """
    region_logits = output.region_logits
    regions = region_logits.shape[1]
    per_region = F.cross_entropy(region_logits.flatten(0, 1), labels.repeat_interleave(regions), reduction="none")
    terms = {
        "cross_entropy": F.cross_entropy(output.logits, labels),
        "region_cross_entropy": per_region.view(-1, regions).mean(dim=0).sum(),
    }
    terms["total"] = terms["cross_entropy"] + region_weight * terms["region_cross_entropy"]
    return terms


def va_multitask_loss(output, targets: torch.Tensor, mse_weight: float = 1.0, ccc_weight: float = 1.0,
                      expression_labels: torch.Tensor | None = None, expression_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Valence/arousal multi-task loss: ``w_mse * MSE + w_ccc * (1 - CCC)`` (+ ``w_expr * CE``).

    Args:
        output: :class:`~video_fer.models.heads.HeadOutput` with ``valence_arousal (B, 2)``
            (and ``logits (B, n)`` when expression labels are given).
        targets: ``(B, 2)`` valence, arousal in [-1, 1].
        expression_labels: optional ``(B,)`` classes for the auxiliary expression task.
    """
    prediction = output.valence_arousal
    if prediction is None or prediction.shape != targets.shape:
        got = None if prediction is None else tuple(prediction.shape)
        raise HeadLossInputError(f"targets: expected the shape of the predicted valence/arousal {got}, got {tuple(targets.shape)}")
    terms = {"mse": F.mse_loss(prediction, targets), "ccc": ccc_loss(prediction, targets)}
    total = mse_weight * terms["mse"] + ccc_weight * terms["ccc"]
    if expression_labels is not None:
        if output.logits is None:
            raise HeadLossInputError("expression_labels: the head has no expression output; build it with num_expressions > 0")
        terms["expression_cross_entropy"] = F.cross_entropy(output.logits, expression_labels)
        total = total + expression_weight * terms["expression_cross_entropy"]
    terms["total"] = total
    return terms
