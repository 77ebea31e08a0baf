"""Two-level attention, multi-task valence/arousal head (MMM 2019).

Level one: on each of several backbone maps (different depths) a softmax spatial
attention over the face's cells (its regions) pools the map into one vector.
Level two: the per-depth vectors, shallow to deep, form a sequence read by a
bidirectional GRU (or LSTM); a self-attention over the sequence pools the RNN states.
One shared representation regresses valence and arousal jointly (tanh, in [-1, 1]) and,
optionally, classifies expressions. Train with :func:`video_fer.train.losses.heads.va_multitask_loss`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from video_fer.errors import ConfigError
from video_fer.models.heads.common import (BackboneFeatures, HeadOutput, feature_map_at_stride, pooled_norm,
                                           softmax_spatial_pool, trunk_channels, with_coordinates)

RNN_TYPES = {"gru": nn.GRU, "lstm": nn.LSTM}


class SpatialAttentionPool(nn.Module):
    """First level: project a map and pool it with a softmax spatial attention.

    **[ours]** The projection also sees each cell's coordinates (:func:`with_coordinates`),
    so the pooled vector keeps where the attended pattern is (see that function).
    ``(B, C, H, W)`` -> ``(vector (B, D), attention (B, H, W))``.
    """

    def __init__(self, in_channels: int, out_dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(in_channels + 2, out_dim, 1), nn.ReLU(inplace=True))
        self.score = nn.Conv2d(out_dim, 1, 1)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.project(with_coordinates(feature_map))
        return softmax_spatial_pool(projected, self.score(projected))


class TwoLevelAttentionVAHead(nn.Module):
    """Valence/arousal from several encoder depths with two levels of attention.

    Args:
        strides: the backbone maps read, shallow to deep (default 4, 8, 16, 32).
        channels: their channels (default the TAE trunk's).
        rnn: ``"gru"`` or ``"lstm"`` (bidirectional either way).
        num_expressions: > 0 adds the auxiliary expression classifier.
        embedding_dim: > 0 appends the backbone's global embedding ``action_embedding (B, D)``
            (projected to ``sequence_dim``) as the deepest element of the depth sequence.
            **[ours]** Pooling a map, even with attention, discards where on the aligned face a
            pattern is, and facial actions are mostly *where* (a lip corner a few pixels up);
            the encoder's embedding is reduced by strided convolutions and keeps it.

    ``forward(features)`` returns :class:`HeadOutput` with ``valence_arousal (B, 2)`` in
    [-1, 1], ``embedding (B, shared_dim)``, ``logits (B, n)`` if ``num_expressions``,
    ``attention["spatial_s{stride}"] (B, H, W)`` per depth (sums to 1) and
    ``attention["depth"] (B, L)`` (sums to 1 over the L depths: the maps, then the embedding if used).
    """

    def __init__(self, strides: Sequence[int] = (4, 8, 16, 32), channels: Sequence[int] | None = None,
                 sequence_dim: int = 128, rnn: str = "gru", rnn_hidden: int = 64, attention_dim: int = 64,
                 shared_dim: int = 128, num_expressions: int = 0, dropout: float = 0.3, image_size: int = 256,
                 embedding_dim: int = 0):
        super().__init__()
        if rnn not in RNN_TYPES:
            raise ConfigError(f"rnn: unknown recurrent layer {rnn!r}; choose one of {sorted(RNN_TYPES)}")
        channels = list(channels) if channels is not None else [trunk_channels(s) for s in strides]
        if len(channels) != len(strides):
            raise ConfigError(f"channels: {len(channels)} values for {len(strides)} strides {list(strides)}")
        self.strides, self.image_size = tuple(strides), image_size
        self.spatial_pools = nn.ModuleList(SpatialAttentionPool(c, sequence_dim) for c in channels)
        self.depth_norms = nn.ModuleList(pooled_norm(sequence_dim) for _ in channels)  # pooled vectors: see pooled_norm
        self.embedding_project = (nn.Sequential(pooled_norm(embedding_dim), nn.Linear(embedding_dim, sequence_dim),
                                                nn.ReLU(inplace=True), pooled_norm(sequence_dim))
                                  if embedding_dim > 0 else None)
        self.depth_rnn = RNN_TYPES[rnn](sequence_dim, rnn_hidden, batch_first=True, bidirectional=True)
        self.depth_score = nn.Sequential(nn.Linear(2 * rnn_hidden, attention_dim), nn.Tanh(),
                                         nn.Linear(attention_dim, 1, bias=False))
        self.shared = nn.Sequential(nn.Linear(2 * rnn_hidden, shared_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.valence_arousal = nn.Linear(shared_dim, 2)
        self.expression = nn.Linear(shared_dim, num_expressions) if num_expressions > 0 else None

    def forward(self, features: BackboneFeatures = None, **_unused) -> HeadOutput:
        name = type(self).__name__
        vectors, attention = [], {}
        for stride, pool, norm in zip(self.strides, self.spatial_pools, self.depth_norms):
            vector, spatial = pool(feature_map_at_stride(features, stride, self.image_size, name))
            vectors.append(norm(vector))
            attention[f"spatial_s{stride}"] = spatial
        if self.embedding_project is not None:
            vectors.append(self.embedding_project(features.action_embedding))
        states = self.depth_rnn(torch.stack(vectors, dim=1))[0]  # (B, L, 2H), shallow -> deep
        depth_weights = torch.softmax(self.depth_score(states).squeeze(-1), dim=1)  # (B, L)
        attention["depth"] = depth_weights
        shared = self.shared((depth_weights.unsqueeze(-1) * states).sum(dim=1))
        return HeadOutput(valence_arousal=torch.tanh(self.valence_arousal(shared)),
                          logits=self.expression(shared) if self.expression is not None else None,
                          embedding=shared, attention=attention)
