"""ACNN: occlusion-aware expression head with gated patches (Li, Zeng, Shan, Chen, TIP 2019).

24 patches (:func:`~video_fer.models.regions.acnn_points`) are cut as 6x6 windows of a
mid-level feature map. Each patch has its own Patch-Gated Unit: two 3x3 convs and a
full-window linear layer give a 64-d feature; an attention net (pool, conv, two FC,
sigmoid) on the first conv's output gives a gate in (0, 1); the unit outputs
gate * feature. The Global-Gated Unit does the same on the whole map (gACNN);
pACNN has no global unit. Concatenate -> FC 1024 -> ReLU -> dropout 0.5 -> classes.
The gates are learnt from the classification loss only (no loss on gates).

All 24 units run at once as grouped convolutions (group p = patch p).
"""
from __future__ import annotations

import torch
from torch import nn

from video_fer.models.heads.common import (BackboneFeatures, HeadInputError, HeadOutput, feature_map_at_stride, require,
                                           trunk_channels)
from video_fer.models.regions import acnn_points, point_windows

ACNN_NUM_PATCHES = 24


class PatchGatedUnits(nn.Module):
    """P independent Patch-Gated Units run as grouped convolutions.

    Input ``(B, P, C, w, w)``; returns ``(gated features (B, P, feature_dim), gates (B, P))``.
    """

    def __init__(self, num_patches: int, in_channels: int, window: int, hidden_channels: int = 64,
                 feature_dim: int = 64, gate_channels: int = 32):
        super().__init__()
        p = num_patches
        self.num_patches = p
        self.shared_conv = nn.Sequential(nn.Conv2d(p * in_channels, p * hidden_channels, 3, padding=1, groups=p),
                                         nn.ReLU(inplace=True))
        self.feature = nn.Sequential(
            nn.Conv2d(p * hidden_channels, p * hidden_channels, 3, padding=1, groups=p), nn.ReLU(inplace=True),
            nn.Conv2d(p * hidden_channels, p * feature_dim, window, groups=p),  # full-window conv = per-patch FC
            nn.ReLU(inplace=True),
        )
        self.gate = nn.Sequential(
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(p * hidden_channels, p * gate_channels, 3, padding=1, groups=p), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(p * gate_channels, p * gate_channels, 1, groups=p), nn.ReLU(inplace=True),
            nn.Conv2d(p * gate_channels, p, 1, groups=p),
            nn.Sigmoid(),
        )

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, p, channels, height, width = patches.shape
        shared = self.shared_conv(patches.reshape(batch, p * channels, height, width))
        features = self.feature(shared).reshape(batch, p, -1)  # (B, P, feature_dim)
        gates = self.gate(shared).reshape(batch, p)  # (B, P) in (0, 1)
        return gates.unsqueeze(-1) * features, gates


class GlobalGatedUnit(nn.Module):
    """The Global-Gated Unit on the whole-face map: ``(B, C, H, W)`` -> ``(gated (B, feature_dim), gate (B,))``."""

    def __init__(self, in_channels: int, hidden_channels: int = 128, feature_dim: int = 512, gate_channels: int = 64,
                 pooled_size: int = 4):
        super().__init__()
        self.shared_conv = nn.Sequential(nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.feature = nn.Sequential(
            nn.Conv2d(hidden_channels, hidden_channels, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(pooled_size), nn.Flatten(),
            nn.Linear(hidden_channels * pooled_size ** 2, feature_dim), nn.ReLU(inplace=True),
        )
        self.gate = nn.Sequential(
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(hidden_channels, gate_channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(gate_channels, gate_channels), nn.ReLU(inplace=True),
            nn.Linear(gate_channels, 1), nn.Sigmoid(),
        )

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.shared_conv(feature_map)
        gate = self.gate(shared)  # (B, 1)
        return gate * self.feature(shared), gate[:, 0]


class ACNNHead(nn.Module):
    """gACNN (default) or pACNN (``use_global_unit=False``) expression head.

    ``forward(features, *, landmarks)``: ``features.feature_maps`` must hold the map of
    ``stride``; ``landmarks (B, 68, 2)`` are in the pixels of the ``image_size`` face.

    Returns :class:`HeadOutput` with ``logits (B, n)``, ``embedding (B, 24*64 [+ 512])``,
    ``attention["patch_gates"] (B, 24)`` and, for gACNN, ``attention["global_gate"] (B,)``,
    all gates in (0, 1).
    """

    def __init__(self, num_classes: int = 7, stride: int = 8, in_channels: int | None = None, window: int = 6,
                 patch_hidden_channels: int = 64, patch_feature_dim: int = 64, global_feature_dim: int = 512,
                 global_hidden_channels: int = 128, use_global_unit: bool = True, fc_dim: int = 1024,
                 dropout: float = 0.5, image_size: int = 256):
        super().__init__()
        in_channels = in_channels or trunk_channels(stride)
        self.stride, self.window, self.image_size = stride, window, image_size
        self.patch_units = PatchGatedUnits(ACNN_NUM_PATCHES, in_channels, window, patch_hidden_channels,
                                           patch_feature_dim)
        self.global_unit = (GlobalGatedUnit(in_channels, global_hidden_channels, global_feature_dim)
                            if use_global_unit else None)
        fused_dim = ACNN_NUM_PATCHES * patch_feature_dim + (global_feature_dim if use_global_unit else 0)
        self.classifier = nn.Sequential(nn.Linear(fused_dim, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(fc_dim, num_classes))

    def forward(self, features: BackboneFeatures = None, *, landmarks: torch.Tensor | None = None,
                **_unused) -> HeadOutput:
        name = type(self).__name__
        feature_map = feature_map_at_stride(features, self.stride, self.image_size, name)
        landmarks = require(landmarks, "landmarks", name)
        if landmarks.shape[0] != feature_map.shape[0]:
            raise HeadInputError(f"{name}: landmarks for {landmarks.shape[0]} faces, features for {feature_map.shape[0]}")
        patches = point_windows(feature_map, acnn_points(landmarks), self.stride, self.window)  # (B, 24, C, w, w)
        patch_features, patch_gates = self.patch_units(patches)
        parts, attention = [patch_features.flatten(1)], {"patch_gates": patch_gates}
        if self.global_unit is not None:
            global_feature, global_gate = self.global_unit(feature_map)
            parts.append(global_feature)
            attention["global_gate"] = global_gate
        fused = torch.cat(parts, dim=1)
        return HeadOutput(logits=self.classifier(fused), embedding=fused, attention=attention)
