"""Losses of the AU protocol (METHOD.md §2): BCE over coded entries with per-AU positive weights, masked MSE."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def positive_weights(occurrence: np.ndarray, max_weight: float | None = None) -> np.ndarray:
    """``pos_weight`` of each AU for ``BCEWithLogits``: negatives / positives among its coded frames.

    Args:
        occurrence: ``(N, A)`` in {0, 1, -1 = not coded} (the training fold).
        max_weight: optional cap (a very rare AU can otherwise get weights in the hundreds).

    Returns:
        float32 ``(A,)``; 1 for an AU without positive (or without negative) frames: no
        ratio exists, and 1 leaves its loss unweighted.
    """
    occurrence = np.asarray(occurrence)
    positives = (occurrence == 1).sum(axis=0).astype(np.float64)
    negatives = (occurrence == 0).sum(axis=0).astype(np.float64)
    weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    return weights.astype(np.float32)


def masked_bce_loss(logits: torch.Tensor, occurrence: torch.Tensor, pos_weight: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """BCE with logits over coded entries only (``occurrence`` -1 = not coded is masked, not negative).

    Args:
        logits, occurrence: ``(B, A)``; pos_weight: ``(A,)`` or None.

    Returns:
        scalar: the sum over coded entries divided by their count (0 when none is coded).
    """
    coded = (occurrence >= 0).to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(logits, occurrence.clamp(min=0).to(logits.dtype),
                                                   pos_weight=pos_weight, reduction="none")
    return (per_entry * coded).sum() / coded.sum().clamp(min=1)


def masked_mse_loss(prediction: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """MSE over entries whose intensity is coded (NaN masked); ``(B, A)`` in, scalar out."""
    coded = torch.isfinite(intensity)
    squared = (prediction - torch.nan_to_num(intensity)) ** 2
    return (squared * coded).sum() / coded.sum().clamp(min=1)


__all__ = ["masked_bce_loss", "masked_mse_loss", "positive_weights"]
