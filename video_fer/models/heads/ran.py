"""RAN: region attention network (Wang, Peng, Yang, Meng, Qiao, TIP 2020).

The whole face (F_0) and K crops (F_1..F_K) are encoded by one shared encoder. Self
attention ``mu_i = sigmoid(w0 . F_i)`` gives ``F_m = sum mu_i F_i / sum mu_i``; relation
attention ``nu_i = sigmoid(w1 . [F_i; F_m])`` gives
``P = sum mu_i nu_i [F_i; F_m] / sum mu_i nu_i``, which is classified. Train with
:func:`video_fer.train.losses.heads.ran_loss` (cross-entropy + region biased loss on mu).
"""
from __future__ import annotations

import torch
from torch import nn

from video_fer.errors import ConfigError
from video_fer.models.heads.common import HeadInputError, HeadOutput, SmallRegionEncoder, pooled_norm, require
from video_fer.models.regions import (RAN_FIXED_CROPS, crop_resize, landmark_centred_boxes, random_boxes,
                                      relative_boxes, whole_image_box)

RAN_CROP_MODES = ("fixed", "random", "landmark")


def ran_attention_pool(region_features: torch.Tensor, self_attention: nn.Linear, relation_attention: nn.Linear
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RAN's two attention stages on ``(B, 1 + K, D)`` region features.

    Returns:
        ``(P (B, 2D), mu (B, 1 + K), nu (B, 1 + K))``.
    """
    mu = torch.sigmoid(self_attention(region_features)).squeeze(-1)  # (B, 1+K)
    face_summary = (mu.unsqueeze(-1) * region_features).sum(1) / mu.sum(1, keepdim=True)  # F_m (B, D)
    paired = torch.cat([region_features, face_summary.unsqueeze(1).expand_as(region_features)], dim=-1)  # (B, 1+K, 2D)
    nu = torch.sigmoid(relation_attention(paired)).squeeze(-1)
    weights = mu * nu
    pooled = (weights.unsqueeze(-1) * paired).sum(1) / weights.sum(1, keepdim=True)
    return pooled, mu, nu


class RANHead(nn.Module):
    """Region attention head on crops of the face image.

    Args:
        num_classes: expression classes.
        crops: ``"fixed"`` (:data:`~video_fer.models.regions.RAN_FIXED_CROPS`), ``"random"``
            (``num_random_crops`` squares of ``random_scale`` of the side, a new draw each
            training call, the same ``eval_seed`` draw in eval mode)
            or ``"landmark"`` (squares of ``landmark_side_fraction`` around eyes, nose tip,
            mouth corners).
        region_encoder: shared crop encoder ``(N, 3, crop_size, crop_size) -> (N, feature_dim)``;
            default a :class:`SmallRegionEncoder`; pass
            :class:`~video_fer.models.heads.common.BackboneEmbedding` to reuse the pretrained encoder
            (then ``crop_size`` must be its input size).
        feature_dim: the encoder's output width (read from ``region_encoder.out_dim`` if absent).

    ``forward(features=None, *, images (B, 3, S, S), landmarks (B, 68, 2) for "landmark")``
    returns :class:`HeadOutput` with ``logits (B, n)``, ``embedding`` P ``(B, 2D)``,
    ``attention["self"]`` mu and ``attention["relation"]`` nu, both ``(B, 1 + K)`` in
    (0, 1), column 0 the whole face; ``attention["boxes"] (B, 1 + K, 4)``.
    """

    def __init__(self, num_classes: int = 7, crops: str = "fixed", region_encoder: nn.Module | None = None,
                 feature_dim: int | None = None, crop_size: int = 64, num_random_crops: int = 5,
                 random_scale: tuple[float, float] = (0.7, 0.95), landmark_side_fraction: float = 0.5,
                 dropout: float = 0.5, eval_seed: int = 0):
        super().__init__()
        if crops not in RAN_CROP_MODES:
            raise ConfigError(f"crops: unknown crop mode {crops!r}; choose one of {RAN_CROP_MODES}")
        self.region_encoder = region_encoder or SmallRegionEncoder(out_dim=feature_dim or 128)
        feature_dim = feature_dim or getattr(self.region_encoder, "out_dim", None)
        if feature_dim is None:
            raise ConfigError("feature_dim: give the region encoder's output width")
        self.crops, self.crop_size = crops, crop_size
        self.num_random_crops, self.random_scale = num_random_crops, random_scale
        self.landmark_side_fraction, self.eval_seed = landmark_side_fraction, eval_seed
        # [ours] Region features are batch-normalised before the attention (like the linear probe's
        # BatchNorm): unnormalised crop embeddings left RAN at chance on the synthetic benchmark.
        self.region_norm = pooled_norm(feature_dim)
        self.self_attention = nn.Linear(feature_dim, 1)
        self.relation_attention = nn.Linear(2 * feature_dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * feature_dim, num_classes)

    def crop_boxes(self, images: torch.Tensor, landmarks: torch.Tensor | None) -> torch.Tensor:
        """The whole-face box followed by the K crop boxes, ``(B, 1 + K, 4)`` image pixels."""
        batch, size = images.shape[0], (images.shape[-2], images.shape[-1])
        if self.crops == "fixed":
            crop_boxes = relative_boxes(batch, size, RAN_FIXED_CROPS, device=images.device)
        elif self.crops == "random":
            # [ours] evaluation draws from a fixed seed so scores are reproducible; training draws afresh.
            generator = None if self.training else torch.Generator(images.device).manual_seed(self.eval_seed)
            crop_boxes = random_boxes(batch, self.num_random_crops, size, self.random_scale, generator,
                                      device=images.device)
        else:
            landmarks = require(landmarks, "landmarks", f"{type(self).__name__}(crops='landmark')")
            crop_boxes = landmark_centred_boxes(landmarks, size, self.landmark_side_fraction)
        return torch.cat([whole_image_box(batch, size, device=images.device), crop_boxes.to(images.dtype)], dim=1)

    def forward(self, features=None, *, images: torch.Tensor | None = None, landmarks: torch.Tensor | None = None,
                **_unused) -> HeadOutput:
        images = require(images, "images", type(self).__name__)
        if images.ndim != 4 or images.shape[1] != 3:
            raise HeadInputError(f"{type(self).__name__}: images must be (B, 3, S, S), got {tuple(images.shape)}")
        boxes = self.crop_boxes(images, landmarks)
        # 2x2 samples per output pixel: crops shrink 3-4x, one sample would alias.
        crops = crop_resize(images, boxes, self.crop_size, samples_per_bin=2)  # (B, 1+K, 3, h, w)
        encoded = self.region_norm(self.region_encoder(crops.flatten(0, 1)))  # (B * (1+K), D)
        region_features = encoded.view(crops.shape[0], crops.shape[1], -1)
        pooled, mu, nu = ran_attention_pool(region_features, self.self_attention, self.relation_attention)
        return HeadOutput(logits=self.classifier(self.dropout(pooled)), embedding=pooled,
                          attention={"self": mu, "relation": nu, "boxes": boxes})
