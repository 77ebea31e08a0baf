"""Prior-attention expression head (2022): attend where expressions are, by construction.

Two blocks are cut from the face image, each bounded by its landmarks plus a 10 px
margin: eyes + eyebrows, and mouth (:func:`~video_fer.models.regions.prior_attention_boxes`).
Each is resized, encoded by its own small CNN + MLP; the two vectors are concatenated
and classified.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from video_fer.models.heads.common import HeadInputError, HeadOutput, SmallRegionEncoder, require
from video_fer.models.regions import PRIOR_ATTENTION_NAMES, crop_resize, prior_attention_boxes


class BlockEncoder(nn.Module):
    """Small CNN + MLP for one block: ``(B, 3, h, w) -> (B, out_dim)``."""

    def __init__(self, out_dim: int, channels: Sequence[int], hidden_dim: int, dropout: float):
        super().__init__()
        self.cnn = SmallRegionEncoder(hidden_dim, channels)
        self.mlp = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim),
                                 nn.ReLU(inplace=True))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.cnn(crops))


class PriorAttentionHead(nn.Module):
    """Eyes+brows block and mouth block, encoded separately, concatenated, classified.

    Args:
        eye_crop_size, mouth_crop_size: ``(h, w)`` each block is resized to (wide blocks).
        margin: pixels around the landmarks, at the size of the images given to forward().

    ``forward(features=None, *, images (B, 3, S, S), landmarks (B, 68, 2))`` returns
    :class:`HeadOutput` with ``logits (B, n)``, ``embedding (B, 2 * block_dim)`` and
    ``attention["boxes"] (B, 2, 4)`` (the two blocks, in :data:`PRIOR_ATTENTION_NAMES` order).
    """

    def __init__(self, num_classes: int = 7, eye_crop_size: tuple[int, int] = (32, 96),
                 mouth_crop_size: tuple[int, int] = (32, 64), margin: float = 10.0,
                 channels: Sequence[int] = (32, 64, 128), hidden_dim: int = 256, block_dim: int = 128,
                 dropout: float = 0.5):
        super().__init__()
        self.eye_crop_size, self.mouth_crop_size, self.margin = tuple(eye_crop_size), tuple(mouth_crop_size), margin
        self.eye_encoder = BlockEncoder(block_dim, channels, hidden_dim, dropout)
        self.mouth_encoder = BlockEncoder(block_dim, channels, hidden_dim, dropout)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * block_dim, num_classes))

    def forward(self, features=None, *, images: torch.Tensor | None = None, landmarks: torch.Tensor | None = None,
                **_unused) -> HeadOutput:
        name = type(self).__name__
        images, landmarks = require(images, "images", name), require(landmarks, "landmarks", name)
        if images.ndim != 4 or images.shape[1] != 3 or landmarks.shape[0] != images.shape[0]:
            raise HeadInputError(f"{name}: expected images (B, 3, H, W) and landmarks (B, 68, 2) for the same B, "
                                 f"got {tuple(images.shape)} and {tuple(landmarks.shape)}")
        boxes = prior_attention_boxes(landmarks, (images.shape[-2], images.shape[-1]), self.margin)  # (B, 2, 4)
        eyes = crop_resize(images, boxes[:, :1], self.eye_crop_size, samples_per_bin=2)[:, 0]
        mouth = crop_resize(images, boxes[:, 1:], self.mouth_crop_size, samples_per_bin=2)[:, 0]
        fused = torch.cat([self.eye_encoder(eyes), self.mouth_encoder(mouth)], dim=1)
        return HeadOutput(logits=self.classifier(fused), embedding=fused, attention={"boxes": boxes})


__all__ = ["PriorAttentionHead", "PRIOR_ATTENTION_NAMES"]
