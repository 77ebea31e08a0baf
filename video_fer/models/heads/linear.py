"""The linear probe of the papers (AUs, and the simplest expression baseline)."""
from __future__ import annotations

from torch import nn

from video_fer.models.heads.common import BackboneFeatures, HeadInputError, HeadOutput, require


class LinearProbeHead(nn.Module):
    """The linear probe of the papers: BatchNorm1d(D) -> Linear(D, n, bias=False) on the action embedding.

    Used for AUs (BCE with logits) and as the simplest expression baseline.
    ``forward(features)`` reads ``features.action_embedding (B, D)``; returns logits ``(B, n)``.
    """

    def __init__(self, num_outputs: int, embedding_dim: int = 256):
        super().__init__()
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.linear = nn.Linear(embedding_dim, num_outputs, bias=False)

    def forward(self, features: BackboneFeatures = None, **_unused) -> HeadOutput:
        embedding = require(features, "features", type(self).__name__).action_embedding
        if embedding.ndim != 2 or embedding.shape[1] != self.norm.num_features:
            raise HeadInputError(f"LinearProbeHead: action_embedding must be (B, {self.norm.num_features}), "
                                 f"got {tuple(embedding.shape)}; set embedding_dim to the backbone's width")
        normalised = self.norm(embedding)
        return HeadOutput(logits=self.linear(normalised), embedding=normalised)
