"""Face boxes ``(N, 4)`` as ``x0, y0, x1, y1`` pixels: from landmarks, overlap, size (numpy, batched)."""
from __future__ import annotations

import numpy as np


def boxes_from_points(points: np.ndarray, padding: float = 0.0) -> np.ndarray:
    """Landmark extent as boxes: ``(F, N, 2)`` -> float32 ``(F, 4)`` x0, y0, x1, y1, grown by ``padding`` x size per side."""
    lower = points.min(axis=1)
    upper = points.max(axis=1)
    margin = (upper - lower) * padding
    return np.concatenate([lower - margin, upper + margin], axis=1).astype(np.float32)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of boxes: ``(A, 4), (B, 4) -> (A, B)`` (0 where both are empty)."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = np.clip(boxes_a[:, 2:] - boxes_a[:, :2], 0, None).prod(-1)
    area_b = np.clip(boxes_b[:, 2:] - boxes_b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


def box_size(boxes: np.ndarray) -> np.ndarray:
    """Face size ``sqrt(w * h)`` of boxes ``(N, 4)`` -> ``(N,)`` (at least 1 px)."""
    return np.sqrt(np.clip(boxes[:, 2:] - boxes[:, :2], 1.0, None).prod(-1))
