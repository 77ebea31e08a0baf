"""Task models: an encoder plus one head, each saveable with ``save_model`` and loadable in one call.

- :class:`AUClassifier` (``"au_classifier"``): TAE encoder + the papers' linear probe per AU;
  ``crops or embeddings -> (B, A)`` (recipes/finetune_au.py);
- :class:`ExpressionModel` (``"expression_model"``): encoder + one expression head
  (ACNN, pACNN, RAN, prior attention, AHA, linear probe); ``(images, landmarks) -> HeadOutput``.
- :class:`ValenceArousalModel` (``"valence_arousal_model"``): encoder + the two-level
  attention head; ``images -> HeadOutput(valence_arousal, logits?)``.

Each keeps everything needed to rebuild it in ``self.config`` (the encoder's registered
architecture and config, the head and its options), so ``video_fer.load_model(dir)``
returns the trained model in one call. A recipe that starts from a pretrained encoder
builds the model from that encoder's config and copies its weights in
(:func:`load_encoder_weights`; the export is read by
:func:`video_fer.models.checkpoint.load_encoder`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from video_fer.errors import ConfigError
from video_fer.models.heads import create_head
from video_fer.models.heads.common import BackboneEmbedding, HeadOutput, backbone_channels
from video_fer.models.heads.linear import LinearProbeHead
from video_fer.models.registry import build_architecture, register_architecture
from video_fer.models.tae import FaceActionEncoder, TAEConfig

# Recipe head keys -> create_head names.
EXPRESSION_HEADS = {"acnn": "acnn", "pacnn": "pacnn", "ran": "ran", "prior": "prior_attention", "aha": "aha",
                    "linear": "linear"}
IMAGE_HEADS = ("ran", "prior")  # heads that encode crops of the image themselves (no backbone maps)


def build_encoder(architecture: str, config: dict) -> nn.Module:
    """A fresh encoder of a registered ``architecture`` (e.g. ``"tae_encoder"``) from its config dict."""
    return build_architecture(architecture, config, "encoder_architecture")


def encoder_config_dict(config) -> dict:
    """An encoder config (dataclass or dict) as a plain dict without ``image_size`` (the model sets it)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    values.pop("image_size", None)
    return values


def encoder_settings(pretrained: nn.Module | None, backbone: dict) -> dict:
    """``encoder_architecture`` and ``encoder`` config fields of a task model: the pretrained encoder's, or a
    fresh TAE encoder of ``backbone`` (TAEConfig keys)."""
    return {"encoder_architecture": getattr(type(pretrained), "architecture_name", "tae_encoder"),
            "encoder": encoder_config_dict(pretrained.config if pretrained is not None else backbone)}


def load_encoder_weights(model: nn.Module, encoder: nn.Module) -> bool:
    """Copy a (pretrained) encoder's weights into ``model.encoder`` (or RAN's shared crop encoder), strictly.

    Returns False, copying nothing, for a head that uses no full-size encoder (prior attention, RAN on its
    own crop encoder).
    """
    target = model.encoder
    if target is None and model.config.head_options.get("region_encoder") == "backbone":
        target = model.head.region_encoder.backbone
    if target is None:
        return False
    target.load_state_dict(encoder.state_dict(), strict=True)
    return True


def encode(encoder: nn.Module, images: torch.Tensor, frozen: bool):
    """``encoder.forward_features(images)``; frozen: no gradient and BatchNorm statistics of pretraining kept."""
    if not frozen:
        return encoder.forward_features(images)
    encoder.eval()
    with torch.no_grad():
        return encoder.forward_features(images)


@dataclass
class EmbeddingFeatures:
    """The part of ``EncoderFeatures`` a linear probe reads, for precomputed embeddings ``(B, D)``."""

    action_embedding: torch.Tensor
    feature_maps: list = field(default_factory=list)


@dataclass
class AUClassifierConfig:
    """An encoder with a linear probe per AU.

    Attributes:
        au_numbers: the AUs, output column order.
        encoder: :class:`~video_fer.models.tae.TAEConfig` fields of the encoder.
        task: ``"occurrence"`` (outputs are logits) or ``"intensity"`` (outputs are intensities).
    """

    au_numbers: list = field(default_factory=list)
    encoder: dict = field(default_factory=dict)
    task: str = "occurrence"

    def __post_init__(self) -> None:
        if self.task not in ("occurrence", "intensity"):
            raise ValueError(f"AUClassifierConfig.task={self.task!r}: choose 'occurrence' or 'intensity'")
        if not self.au_numbers:
            raise ValueError("AUClassifierConfig.au_numbers: give at least one AU")


@register_architecture("au_classifier")
class AUClassifier(nn.Module):
    """Face crops ``(B, 3, S, S)`` in [0, 1] -> per-AU outputs ``(B, A)``.

    The papers' probe (METHOD.md §2): BatchNorm1d(D) -> Linear(D, A, bias=False) on the
    action embedding ``phi``; BCE with logits for occurrence, MSE for intensity (the
    BatchNorm shift gives the regression its offset).
    """

    config_class = AUClassifierConfig

    def __init__(self, config: AUClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = FaceActionEncoder(TAEConfig(**config.encoder))
        self.head = LinearProbeHead(len(config.au_numbers), self.encoder.config.embedding_dim)

    def forward_embedding(self, action_embedding: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` action embeddings -> ``(B, A)`` outputs (the probe alone)."""
        return self.head(EmbeddingFeatures(action_embedding)).logits

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` face crops, or ``(B, D)`` precomputed action embeddings -> ``(B, A)`` outputs.

        Taking embeddings through ``forward`` lets a DDP-wrapped model train the probe on
        embeddings computed once by the frozen encoder (the linear protocol).
        """
        if inputs.ndim == 2:
            return self.forward_embedding(inputs)
        return self.forward_embedding(self.encoder.forward_features(inputs).action_embedding)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Presence probabilities (occurrence) or intensities ``(B, A)`` of crops or embeddings."""
        outputs = self(inputs)
        return torch.sigmoid(outputs) if self.config.task == "occurrence" else outputs


@dataclass
class ExpressionModelConfig:
    """What rebuilds an :class:`ExpressionModel`.

    ``head``: a key of :data:`EXPRESSION_HEADS`; ``head_options``: extra ``create_head``
    arguments (for RAN ``region_encoder: backbone`` re-encodes the crops with the encoder);
    ``encoder_architecture`` / ``encoder``: the registered encoder and its config dict.
    """

    head: str = "acnn"
    num_classes: int = 7
    image_size: int = 128
    encoder_architecture: str = "tae_encoder"
    encoder: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)
    freeze_encoder: bool = False
    class_names: list = field(default_factory=list)


@register_architecture("expression_model")
class ExpressionModel(nn.Module):
    """Encoder (None for RAN / prior attention on their own crop CNNs) + expression head.

    ``forward(images (B, 3, S, S) in [0, 1], landmarks (B, 68, 2) crop pixels, labels (B,)?)``
    returns the head's :class:`HeadOutput` (``logits (B, num_classes)``, attention weights).
    """

    config_class = ExpressionModelConfig

    def __init__(self, config: ExpressionModelConfig):
        super().__init__()
        if config.head not in EXPRESSION_HEADS:
            raise ConfigError(f"model.head={config.head!r}: choose one of {sorted(EXPRESSION_HEADS)}")
        self.config = config
        options = dict(config.head_options)
        encoder = build_encoder(config.encoder_architecture, {**config.encoder, "image_size": config.image_size})
        self.encoder: nn.Module | None = None if config.head in IMAGE_HEADS else encoder
        self.head = self._build_head(config, encoder, options)
        if self.encoder is not None and config.freeze_encoder:
            self.encoder.requires_grad_(False)

    @staticmethod
    def _build_head(config: ExpressionModelConfig, encoder: nn.Module, options: dict) -> nn.Module:
        size, classes, key = config.image_size, config.num_classes, config.head
        if key == "ran":
            return ExpressionModel._build_ran(config, encoder, options)
        if key in IMAGE_HEADS:
            return create_head(EXPRESSION_HEADS[key], num_classes=classes, **options)
        if key == "linear":
            return create_head("linear", num_outputs=classes, embedding_dim=encoder.config.embedding_dim, **options)
        channels = backbone_channels(encoder, size)  # {stride: channels}
        if key in ("acnn", "pacnn"):
            stride = options.pop("stride", 8)
            return create_head(key, num_classes=classes, stride=stride, in_channels=channels[stride], image_size=size,
                               **options)
        local, global_ = options.pop("local_stride", 8), options.pop("global_stride", max(channels))
        options.setdefault("embedding_dim", encoder.config.embedding_dim)  # global branch on the embedding
        return create_head("aha", num_classes=classes, local_stride=local, global_stride=global_,
                           local_channels=channels[local], global_channels=channels[global_], image_size=size,
                           **options)

    @staticmethod
    def _build_ran(config: ExpressionModelConfig, encoder: nn.Module, options: dict) -> nn.Module:
        """RAN with its crop encoder: ``region_encoder`` ``"tae"`` (default), ``"backbone"`` or ``"small"``.

        ``tae``: a TAE encoder of the model's encoder config sized to ``crop_size`` (64 px by
        default), shared by the face and its crops, like the paper's shared CNN; its
        strided-conv action embedding keeps where patterns are. ``backbone``: the model's
        encoder itself on full-size crops (``crop_size`` = ``image_size``; a pretrained
        ``model.encoder`` is copied into it), ~6x the cost. ``small``: a 3-layer CNN
        (:class:`~video_fer.models.heads.common.SmallRegionEncoder`), measured to stay near chance
        on the synthetic benchmark when trained from scratch.
        """
        mode = options.pop("region_encoder", "tae")
        if mode == "small":
            return create_head("ran", num_classes=config.num_classes, **options)
        if mode == "backbone":
            crop_encoder, options["crop_size"] = encoder, config.image_size
        elif mode == "tae":
            options.setdefault("crop_size", 64)
            if options["crop_size"] < 64:
                raise ConfigError(f"model.head_options.crop_size={options['crop_size']}: the TAE crop encoder needs "
                                  "64 px or more; raise it or set model.head_options.region_encoder=small")
            crop_encoder = build_encoder(config.encoder_architecture,
                                         {**config.encoder, "image_size": options["crop_size"]})
        else:
            raise ConfigError(f"model.head_options.region_encoder={mode!r}: choose 'tae', 'backbone' or 'small'")
        dim = crop_encoder.config.embedding_dim
        return create_head("ran", num_classes=config.num_classes, region_encoder=BackboneEmbedding(crop_encoder, dim),
                           feature_dim=dim, **options)

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> HeadOutput:
        features = None if self.encoder is None else encode(self.encoder, images, self.config.freeze_encoder)
        return self.head(features, images=images, landmarks=landmarks, labels=labels)


@dataclass
class ValenceArousalModelConfig:
    """What rebuilds a :class:`ValenceArousalModel` (``strides``: the encoder maps read, shallow to deep)."""

    image_size: int = 128
    strides: list = field(default_factory=list)
    num_expressions: int = 0
    encoder_architecture: str = "tae_encoder"
    encoder: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)
    freeze_encoder: bool = False


@register_architecture("valence_arousal_model")
class ValenceArousalModel(nn.Module):
    """Encoder + two-level attention head: ``images (B, 3, S, S) -> HeadOutput(valence_arousal (B, 2), logits?)``.

    ``strides`` empty: every encoder map from stride 4 on.
    """

    config_class = ValenceArousalModelConfig

    def __init__(self, config: ValenceArousalModelConfig):
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config.encoder_architecture, {**config.encoder, "image_size": config.image_size})
        channels = backbone_channels(self.encoder, config.image_size)
        strides = list(config.strides) or [s for s in sorted(channels) if s >= 4]
        missing = [s for s in strides if s not in channels]
        if missing:
            raise ConfigError(f"model.strides: {missing} are not strides of the encoder ({sorted(channels)})")
        options = {"embedding_dim": self.encoder.config.embedding_dim, **config.head_options}
        self.head = create_head("two_level_va", strides=strides, channels=[channels[s] for s in strides],
                                num_expressions=config.num_expressions, image_size=config.image_size, **options)
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> HeadOutput:
        return self.head(encode(self.encoder, images, self.config.freeze_encoder))


__all__ = ["AUClassifier", "AUClassifierConfig", "EXPRESSION_HEADS", "EmbeddingFeatures", "ExpressionModel",
           "ExpressionModelConfig", "ValenceArousalModel", "ValenceArousalModelConfig", "build_encoder",
           "encoder_config_dict", "encoder_settings", "load_encoder_weights"]
