"""What every head shares: the backbone protocol, :class:`HeadOutput`, map lookup, pooling, small encoders.

A backbone is anything whose ``forward_features(images)`` returns an object with
``feature_maps`` (list of ``(B, C_i, H_i, W_i)`` maps, e.g. the TAE trunk at strides
2, 4, 8, 16, 32) and ``action_embedding`` ``(B, D)`` (see :class:`BackboneFeatures`).
Every head is an ``nn.Module`` whose ``forward(features=None, *, images=None,
landmarks=None, ...)`` returns a :class:`HeadOutput`; each head says which inputs it
needs and ignores the others, so a recipe can pass ``features``, ``images`` and
``landmarks`` to any head. The families live one per file (timm style) beside this one:
``linear.py``, ``acnn.py``, ``ran.py``, ``prior.py``, ``aha.py``, ``va.py``; the registry
(:func:`video_fer.models.heads.create_head`) is the package's ``__init__``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from video_fer.errors import ConfigError, VideoFerError

# Channels of the TAE trunk maps by stride (METHOD.md §1: 3-32-64-128-256-256), the defaults of every head.
TAE_TRUNK_CHANNELS = {2: 32, 4: 64, 8: 128, 16: 256, 32: 256}


class HeadInputError(VideoFerError, ValueError):
    """A head was called without an input it needs, or with the wrong shape."""


class BackboneFeatures(Protocol):
    """What heads read from a backbone (``video_fer.models.tae.EncoderFeatures`` satisfies it)."""

    action_embedding: torch.Tensor  # (B, D)
    feature_maps: Sequence[torch.Tensor]  # (B, C_i, H_i, W_i), increasing stride


@dataclass
class HeadOutput:
    """What every head returns.

    Attributes:
        logits: ``(B, n_classes)`` class scores (expression / AUs), or None.
        valence_arousal: ``(B, 2)`` in [-1, 1] (valence, arousal), or None.
        region_logits: ``(B, R, n_classes)`` per-region-branch scores (AHA), or None.
        embedding: ``(B, D)`` the fused representation fed to the classifier.
        attention: named attention weights (shapes in each head's docstring).
    """

    logits: torch.Tensor | None = None
    valence_arousal: torch.Tensor | None = None
    region_logits: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] = field(default_factory=dict)


def require(value: Any, name: str, head: str) -> Any:
    """Return ``value`` or raise a clear error saying ``head`` needs ``name``."""
    if value is None:
        raise HeadInputError(f"{head}: needs `{name}=`; pass it to forward()")
    return value


def feature_map_at_stride(features: BackboneFeatures, stride: int, image_size: int, head: str) -> torch.Tensor:
    """The backbone map whose stride (``image_size / width``) is ``stride``, ``(B, C, H, W)``."""
    features = require(features, "features", head)
    maps = list(getattr(features, "feature_maps", None) or [])
    strides = [image_size / fmap.shape[-1] for fmap in maps]
    for fmap, map_stride in zip(maps, strides):
        if abs(map_stride - stride) < 1e-6:
            return fmap
    raise HeadInputError(
        f"{head}: no feature map of stride {stride} for {image_size}px faces (strides available: {strides}); "
        "choose one of those strides or set image_size to the face size the backbone saw"
    )


@torch.no_grad()
def backbone_channels(backbone: nn.Module, image_size: int = 256) -> dict[int, int]:
    """Channels of each backbone map by stride, read from one forward pass on a blank image.

    Pass the result as ``channels=`` / ``in_channels=`` to heads built on a backbone that is
    not the reference TAE (other width or image size). Returns e.g. ``{2: 32, 4: 64, ...}``.
    """
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    was_training = backbone.training
    backbone.eval()  # BatchNorm must not update its running statistics on the blank image
    try:
        maps = backbone.forward_features(torch.zeros(1, 3, image_size, image_size, device=device)).feature_maps
    finally:
        backbone.train(was_training)
    return {round(image_size / fmap.shape[-1]): fmap.shape[1] for fmap in maps}


def trunk_channels(stride: int, channels: dict[int, int] | None = None) -> int:
    """Channels of the backbone map at ``stride`` (TAE trunk by default)."""
    table = channels or TAE_TRUNK_CHANNELS
    if stride not in table:
        raise ConfigError(f"stride: {stride} is not one of the backbone strides {sorted(table)}; pass `channels=`")
    return table[stride]


def with_coordinates(feature_map: torch.Tensor) -> torch.Tensor:
    """Append two channels holding each cell's x and y in [-1, 1] (CoordConv): ``(N, C, H, W) -> (N, C + 2, H, W)``.

    A conv on these channels can make its features depend on *where* a cell is, so an
    attention-weighted sum keeps the geometry of the attended pattern, which a plain
    pooled map loses (a lip corner a few pixels higher is an expression on an aligned face).
    """
    n, _, height, width = feature_map.shape
    ys = torch.linspace(-1, 1, height, device=feature_map.device, dtype=feature_map.dtype)
    xs = torch.linspace(-1, 1, width, device=feature_map.device, dtype=feature_map.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x, y
    return torch.cat([feature_map, grid.expand(n, -1, -1, -1)], dim=1)


def softmax_spatial_pool(features: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-weighted sum over positions.

    Args:
        features: ``(N, C, H, W)``; scores: ``(N, 1, H, W)`` logits.

    Returns:
        ``(pooled (N, C), attention (N, H, W))``, the attention summing to 1 over positions.
    """
    attention = torch.softmax(scores.flatten(1), dim=1)  # (N, H*W)
    pooled = torch.einsum("nchw,nhw->nc", features, attention.view_as(scores[:, 0]))
    return pooled, attention.view_as(scores[:, 0])


def pooled_norm(channels: int) -> nn.BatchNorm1d:
    """BatchNorm1d for vectors pooled from feature maps ``(N, channels)``.

    A spatial average (or a near-uniform attention) of post-ReLU maps of aligned faces is
    almost the same vector for every face: between-face spread ~2-15% of the mean on the
    TAE trunk (measured on the synthetic expression set). Normalising over the batch
    removes the shared offset so the differences reach the next layer at unit scale.
    """
    return nn.BatchNorm1d(channels)


def cosface_logits(cosine: torch.Tensor, labels: torch.Tensor | None, scale: float, margin: float) -> torch.Tensor:
    """CosFace logits: ``s * (cos - m)`` for the true class, ``s * cos`` for the others.

    Args:
        cosine: ``(..., n_classes)`` cosines between normalised features and class weights.
        labels: ``(...)`` integer classes, or None (inference: no margin).

    Returns:
        ``(..., n_classes)``.
    """
    if labels is None:
        return scale * cosine
    if labels.shape != cosine.shape[:-1]:
        raise HeadInputError(f"labels: expected shape {tuple(cosine.shape[:-1])}, got {tuple(labels.shape)}")
    margin_on_true = F.one_hot(labels.long(), cosine.shape[-1]).to(cosine.dtype) * margin
    return scale * (cosine - margin_on_true)


class SmallRegionEncoder(nn.Module):
    """A small CNN that turns a crop into a vector: [conv3x3, BN, ReLU, maxpool2] per width, grid pool, BN, Linear.

    The last map is average-pooled to a ``grid x grid`` layout and flattened, not pooled to
    one cell: on an aligned crop *where* a pattern sits is the expression (a lip corner a few
    pixels higher), and a global average throws that away (measured: fresh RAN / prior-attention
    heads stayed at chance with ``grid=1``). The BatchNorm1d on the pooled vector: see
    :func:`pooled_norm`. Input ``(N, 3, h, w)``; output ``(N, out_dim)``.
    """

    def __init__(self, out_dim: int = 128, channels: Sequence[int] = (32, 64, 128), in_channels: int = 3,
                 grid: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.norm = pooled_norm(previous * grid * grid)
        self.project = nn.Linear(previous * grid * grid, out_dim)
        self.out_dim = out_dim

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.project(self.norm(self.pool(self.body(crops)).flatten(1)))


class BackboneEmbedding(nn.Module):
    """Wrap a backbone so it encodes crops: ``(N, 3, S, S) -> (N, D)`` = its ``action_embedding``.

    Lets RAN re-encode its crops with the shared (pretrained) encoder instead of a small CNN.
    """

    def __init__(self, backbone: nn.Module, out_dim: int = 256):
        super().__init__()
        self.backbone = backbone
        self.out_dim = out_dim

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(crops).action_embedding


class CosineClassifier(nn.Module):
    """Large-margin cosine classifier (CosFace, Wang et al. CVPR 2018).

    Logits are ``s * cos(theta_j)`` with ``cos`` between the L2-normalised feature and
    class weight; with ``labels`` given (training) the true class gets ``s * (cos - m)``.
    Input ``(..., D)``; output ``(..., n_classes)``.
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.35):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = float(scale), float(margin)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).t()

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return cosface_logits(self.cosine(features), labels, self.scale, self.margin)
