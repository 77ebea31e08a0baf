"""AHA: attentive hybrid features with two-step fusion (ICPR 2020).

Three parallel branches on the backbone features:
- global: the deepest map, average-pooled and projected;
- local: aligned facial parts (:func:`~video_fer.models.regions.aha_region_boxes`: the
  two eye+brow areas, nose, mouth) RoI-aligned from a mid-level map, each through its
  own conv branch with a softmax spatial attention over its cells; step one fuses the
  region vectors with an LSTM run over the regions, its outputs summed;
- mixture **[ours]**: the whole mid-level map with one softmax spatial attention, so
  the regions mix with everything between them.
Step two concatenates global, local and mixture features and classifies them with a
softmax (linear) or a large-margin cosine (CosFace) classifier. Each region branch has
its own classifier too; train with :func:`video_fer.train.losses.heads.aha_loss`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from video_fer.errors import ConfigError
from video_fer.models.heads.common import (BackboneFeatures, CosineClassifier, cosface_logits, HeadInputError,
                                           HeadOutput, feature_map_at_stride, pooled_norm, require,
                                           softmax_spatial_pool, trunk_channels, with_coordinates)
from video_fer.models.regions import AHA_REGION_NAMES, aha_region_boxes, crop_resize

AHA_CLASSIFIERS = ("softmax", "cosface")


class RegionwiseClassifier(nn.Module):
    """One classifier per region branch, all applied at once: ``(B, R, D) -> (B, R, n)``."""

    def __init__(self, num_regions: int, in_dim: int, num_classes: int, cosine: bool, scale: float, margin: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_regions, num_classes, in_dim))
        nn.init.xavier_uniform_(self.weight)
        self.bias = None if cosine else nn.Parameter(torch.zeros(num_regions, num_classes))
        self.cosine, self.scale, self.margin = cosine, scale, margin

    def forward(self, region_features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.cosine:
            return torch.einsum("brd,rnd->brn", region_features, self.weight) + self.bias
        cosine = torch.einsum("brd,rnd->brn", F.normalize(region_features, dim=-1), F.normalize(self.weight, dim=-1))
        region_labels = None if labels is None else labels[:, None].expand(cosine.shape[:2])
        return cosface_logits(cosine, region_labels, self.scale, self.margin)


class AHAHead(nn.Module):
    """Attentive hybrid expression head.

    Args:
        local_stride: stride of the map the regions and the mixture branch read (default 8).
        global_stride: stride of the map the global branch reads (default 32).
        region_size: RoI-align output cells per side.
        classifier: ``"softmax"`` or ``"cosface"`` (``cosface_scale`` s, ``cosface_margin`` m).
        region_margin: pixels around each part's landmarks.
        embedding_dim: > 0: the global branch reads the backbone's global embedding
            ``action_embedding (B, D)`` instead of the average-pooled deepest map. **[ours]**
            An average pool discards where on the aligned face a pattern is; the embedding,
            reduced by strided convolutions, keeps it (the global face descriptor of the paper).

    ``forward(features, *, landmarks (B, 68, 2), labels=None)``: pass ``labels (B,)``
    while training with CosFace so the margin enters the logits.
    Returns :class:`HeadOutput` with ``logits (B, n)``, ``region_logits (B, R, n)``,
    ``embedding (B, 3 * feature_dim)``, ``attention["region_spatial"] (B, R, k, k)`` and
    ``attention["mixture_spatial"] (B, H, W)`` (each sums to 1 over positions),
    ``attention["boxes"] (B, R, 4)``.
    """

    def __init__(self, num_classes: int = 7, local_stride: int = 8, global_stride: int = 32,
                 local_channels: int | None = None, global_channels: int | None = None, region_size: int = 6,
                 branch_channels: int = 64, feature_dim: int = 128, classifier: str = "softmax",
                 cosface_scale: float = 30.0, cosface_margin: float = 0.35, region_margin: float = 10.0,
                 dropout: float = 0.5, image_size: int = 256, embedding_dim: int = 0):
        super().__init__()
        if classifier not in AHA_CLASSIFIERS:
            raise ConfigError(f"classifier: unknown classifier {classifier!r}; choose one of {AHA_CLASSIFIERS}")
        local_channels = local_channels or trunk_channels(local_stride)
        global_channels = global_channels or trunk_channels(global_stride)
        r = len(AHA_REGION_NAMES)
        self.local_stride, self.global_stride, self.image_size = local_stride, global_stride, image_size
        self.region_size, self.region_margin, self.num_regions = region_size, region_margin, r
        # Every pooled vector is batch-normalised first (see heads.pooled_norm: pooled maps are near-constant).
        self.use_embedding = embedding_dim > 0
        global_dim = embedding_dim if self.use_embedding else global_channels
        self.global_branch = nn.Sequential(pooled_norm(global_dim), nn.Linear(global_dim, feature_dim),
                                           nn.ReLU(inplace=True))
        # Region r's branch is group r of these grouped convolutions.
        self.region_convs = nn.Sequential(
            nn.Conv2d(r * (local_channels + 2), r * branch_channels, 3, padding=1, groups=r), nn.ReLU(inplace=True),
            nn.Conv2d(r * branch_channels, r * branch_channels, 3, padding=1, groups=r), nn.ReLU(inplace=True),
        )
        self.region_attention = nn.Conv2d(r * branch_channels, r, 1, groups=r)
        self.region_norm = pooled_norm(r * branch_channels)  # per region and channel
        self.region_lstm = nn.LSTM(branch_channels, feature_dim, batch_first=True)
        self.mixture_conv = nn.Sequential(nn.Conv2d(local_channels + 2, branch_channels, 3, padding=1),
                                          nn.ReLU(inplace=True))
        self.mixture_attention = nn.Conv2d(branch_channels, 1, 1)
        self.mixture_project = nn.Sequential(pooled_norm(branch_channels), nn.Linear(branch_channels, feature_dim),
                                             nn.ReLU(inplace=True))
        cosine = classifier == "cosface"
        self.region_classifier = RegionwiseClassifier(r, branch_channels, num_classes, cosine, cosface_scale,
                                                      cosface_margin)
        self.dropout = nn.Dropout(dropout)
        self.classifier = (CosineClassifier(3 * feature_dim, num_classes, cosface_scale, cosface_margin) if cosine
                           else nn.Linear(3 * feature_dim, num_classes))

    def forward(self, features: BackboneFeatures = None, *, landmarks: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_unused) -> HeadOutput:
        name = type(self).__name__
        local_map = feature_map_at_stride(features, self.local_stride, self.image_size, name)
        landmarks = require(landmarks, "landmarks", name)
        if landmarks.shape[0] != local_map.shape[0]:
            raise HeadInputError(f"{name}: landmarks for {landmarks.shape[0]} faces, features for {local_map.shape[0]}")
        batch, k, r = local_map.shape[0], self.region_size, self.num_regions

        global_vector = (features.action_embedding if self.use_embedding else
                         feature_map_at_stride(features, self.global_stride, self.image_size, name).mean(dim=(-2, -1)))
        global_feature = self.global_branch(global_vector)

        boxes = aha_region_boxes(landmarks, self.image_size, self.region_margin)  # (B, R, 4)
        regions = crop_resize(local_map, boxes, k, stride=self.local_stride)  # (B, R, C, k, k)
        # [ours] Every branch also sees its cells' coordinates, so attention pooling keeps where
        # the pattern is (heads.with_coordinates); the mixture branch likewise.
        regions = with_coordinates(regions.flatten(0, 1)).view(batch, r, -1, k, k)  # (B, R, C + 2, k, k)
        region_maps = self.region_convs(regions.reshape(batch, -1, k, k))  # (B, R*C', k, k)
        region_scores = self.region_attention(region_maps)  # (B, R, k, k)
        region_vectors, region_spatial = softmax_spatial_pool(region_maps.reshape(batch * r, -1, k, k),
                                                              region_scores.reshape(batch * r, 1, k, k))
        region_vectors = self.region_norm(region_vectors.view(batch, -1)).view(batch, r, -1)  # (B, R, C')
        local_feature = self.region_lstm(region_vectors)[0].sum(dim=1)  # step one: LSTM over regions, summed

        mixture_map = self.mixture_conv(with_coordinates(local_map))
        mixture_vector, mixture_spatial = softmax_spatial_pool(mixture_map, self.mixture_attention(mixture_map))
        mixture_feature = self.mixture_project(mixture_vector)

        fused = torch.cat([global_feature, local_feature, mixture_feature], dim=1)  # step two
        dropped = self.dropout(fused)
        logits = self.classifier(dropped, labels) if isinstance(self.classifier, CosineClassifier) else self.classifier(dropped)
        return HeadOutput(
            logits=logits, region_logits=self.region_classifier(region_vectors, labels), embedding=fused,
            attention={"region_spatial": region_spatial.view(batch, r, k, k), "mixture_spatial": mixture_spatial,
                       "boxes": boxes},
        )
