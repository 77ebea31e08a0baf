"""The twin-cycle autoencoder (TCAE / TAE, METHOD.md §1): encoder, flow decoders and the full model.

Layout at ``image_size=256``, ``width=32`` (the reference):

- trunk: 5 x [conv 4x4 s2 p1, BN, LeakyReLU(0.2)], channels 3-32-64-128-256-256, 256 -> 8x8;
- pose branch: 3 x conv 4x4 s2 (256 ch) 8 -> 1, the last without BN/activation -> ``psi`` (D);
- action branch: the same (``attention_streams=0``, exactly TCAE), or the TAE attention
  branch (``attention_streams=K>0`` **[ours]**, see :class:`AttentionActionBranch`) -> ``phi`` (D);
- two decoders ``[emb; emb] (2D, 1x1)`` -> ReLU -> log2(S) x [bilinear up x2, conv 3x3, BN, ReLU],
  channels 512-256-256-256-256-128-64-32-3, the last block tanh instead of BN/ReLU.

Other sizes **[ours]**: the trunk always ends at 8x8, so it has ``log2(S) - 3`` blocks
(4 at 128 px: 3-32-64-128-256) and both branches keep their 3 layers; the attention branch
always taps the 16x16 map before the trunk's last block. The decoder has ``log2(S)`` blocks;
the ones removed at smaller sizes are wide (256-ch) blocks, so the last four widths are
always ``4w, 2w, w, 3``. Any power of two >= 64 works; 256 is the reference, 128 the
fast setting.

Batching (the reference encodes six image sets one by one): :class:`TwinCycleAutoencoder`
makes two encoder passes per step, ``[source; target]`` and ``[generated; action-changed;
pose-changed]``, and one warp call per stage. In training mode BatchNorm therefore
normalises each pass over its concatenated sets: source and target are frames drawn the
same way from the same tracks, so pooling them is the statistics of a ``2B`` batch of real
frames; the three generated sets are all warps of the source and are pooled likewise. Real
and generated images are never mixed in one BatchNorm batch, as in the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from video_fer.models.registry import register_architecture
from video_fer.models.warp import fuse_flows, warp

LEAKY_SLOPE = 0.2
READOUT_LANDMARKS = 68  # iBUG-68, the caches' landmarks (video_fer.faces.ibug68)
DECODER_INPUTS = ("concat", "difference")


@dataclass
class TAEConfig:
    """Size of the twin-cycle autoencoder.

    Attributes:
        image_size: side ``S`` of the square face crops, a power of two >= 64 (256 reference, 128 fast).
        width: base channels ``w``; trunk ``w, 2w, 4w, 8w, 8w`` and branches ``8w`` (32 reference).
        embedding_dim: ``D``, size of ``phi`` and ``psi`` (256 reference).
        attention_streams: ``K`` attention streams of the TAE action branch (8 **[ours]**); 0 = TCAE.
        stream_width: channels inside each attention stream (64 **[ours]**).
        zero_init_flow: **[ours]** zero the decoders' last conv so training starts from the
            identity warp with equal masks (the reference uses PyTorch's default init).
        decoder_input: what the two decoders read of an embedding pair ``(a, b)`` (a frame's, then the
            frame it is warped towards): ``"concat"``, ``[a; b]`` (the reference); or ``"difference"``
            **[ours]**, ``[b - a; a - b]``, the change alone, so what stays constant along a track
            (identity, lighting) cannot shape a field and only the embedding's change can. Both are
            ``2D`` wide and pass the decoder's input ReLU; the difference's two signs keep it lossless.
        landmark_readout: **[ours]** two linear maps, trained with the pairs' landmarks
            (``loss.weights.landmark_action_embedding`` / ``landmark_pose_embedding``): ``phi_s - phi_t`` to
            what the head motion leaves at the 68 landmarks, ``psi_s - psi_t`` to the head motion there.
            They start at zero ("no motion"): from PyTorch's random start their loss was 3-4x that of no
            motion on real video, and AdamW at 1e-4 took ~500 steps to get back to it. Pretraining only:
            an encoder export does not contain them. False = the reference model.
        frame_readout: **[ours]** one more linear map, from a single frame's ``phi`` to what the head pose
            leaves of that frame's landmarks against its track's mean landmarks
            (``loss.weights.landmark_action_frame``). The pair readout fixes ``phi`` only up to an offset per
            person (any ``phi + c`` has the same changes); this one anchors it at the person's average face,
            the reading a single-frame AU probe of unseen people needs. Zero start; pretraining only.
        pose_frame_readout: **[ours]** its pose twin, from a single frame's ``psi`` to the head motion that
            takes the track's mean landmarks to that frame's (``loss.weights.landmark_pose_frame``): the pair
            readout fixes ``psi`` only up to an offset per person too, and a single-frame head-angle probe of
            unseen people reads that offset as pose. Zero start; pretraining only.
    """

    image_size: int = 256
    width: int = 32
    embedding_dim: int = 256
    attention_streams: int = 8
    stream_width: int = 64
    zero_init_flow: bool = False
    decoder_input: str = "concat"
    landmark_readout: bool = False
    frame_readout: bool = False
    pose_frame_readout: bool = False

    def __post_init__(self) -> None:
        size = self.image_size
        if self.decoder_input not in DECODER_INPUTS:
            raise ValueError(f"TAEConfig.decoder_input={self.decoder_input!r}: use one of {DECODER_INPUTS} "
                             "(concat = the reference)")
        if size < 64 or size & (size - 1):
            raise ValueError(f"TAEConfig.image_size={size}: must be a power of two >= 64 (256 reference, 128 fast)")
        if self.width < 1 or self.embedding_dim < 1:
            raise ValueError(f"TAEConfig: width={self.width} and embedding_dim={self.embedding_dim} must be positive")
        if self.attention_streams < 0:
            raise ValueError(f"TAEConfig.attention_streams={self.attention_streams}: use 0 (TCAE) or K > 0 (TAE)")
        if self.attention_streams and self.embedding_dim % self.attention_streams:
            raise ValueError(
                f"TAEConfig: embedding_dim={self.embedding_dim} must be divisible by attention_streams="
                f"{self.attention_streams} (each stream gives embedding_dim / K dims)")

    @property
    def trunk_channels(self) -> list[int]:
        """Output channels of the trunk blocks: ``w * 2^i`` capped at ``8w``, down to 8x8."""
        n_blocks = int(math.log2(self.image_size)) - 3
        return [min(self.width * 2 ** i, 8 * self.width) for i in range(n_blocks)]

    @property
    def decoder_channels(self) -> list[int]:
        """Input then output channels of every decoder block (512-256-...-32-3 at the reference)."""
        n_blocks = int(math.log2(self.image_size))
        tail = [4 * self.width, 2 * self.width, self.width, 3]
        return [2 * self.embedding_dim] + [8 * self.width] * (n_blocks - len(tail)) + tail


@dataclass
class EncoderFeatures:
    """What :meth:`FaceActionEncoder.forward_features` returns.

    Attributes:
        action_embedding: ``phi`` ``(B, D)``.
        pose_embedding: ``psi`` ``(B, D)``.
        attention_maps: ``(B, K, 16, 16)`` in [0, 1], or None for the TCAE branch (K = 0).
        feature_maps: the trunk block outputs, ``(B, C_i, S / 2^(i+1), S / 2^(i+1))``, strides 2, 4, ... .
    """

    action_embedding: torch.Tensor
    pose_embedding: torch.Tensor
    attention_maps: torch.Tensor | None
    feature_maps: list[torch.Tensor]


def down_block(in_channels: int, out_channels: int, *, last: bool = False, groups: int = 1) -> nn.Sequential:
    """conv 4x4 stride 2 pad 1, then BN + LeakyReLU(0.2) unless ``last`` (halves H and W)."""
    if last:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 4, 2, 1, groups=groups))
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 4, 2, 1, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


def embedding_branch(in_channels: int, width: int, embedding_dim: int) -> nn.Sequential:
    """The TCAE pose/action branch: 3 stride-2 convs, 8x8 -> 1x1, last without BN/activation."""
    return nn.Sequential(
        down_block(in_channels, width),
        down_block(width, width),
        down_block(width, embedding_dim, last=True),
    )


class AttentionActionBranch(nn.Module):
    """TAE action branch **[ours]**: one conv block, then K attention streams merged into ``phi``.

    Stream ``k``: ``map_k = sigmoid(conv1x1(f))``, then ``f * map_k`` is reduced by its own
    stack of stride-2 convs (width ``stream_width``) to ``D / K`` dims; the K vectors are
    concatenated. The K stacks run as one grouped convolution (``groups=K``), which gives
    every stream its own weights and BatchNorm channels without a Python loop.
    """

    def __init__(self, in_channels: int, map_size: int, config: TAEConfig) -> None:
        super().__init__()
        streams, stream_width = config.attention_streams, config.stream_width
        feature_channels = 8 * config.width
        self.streams = streams
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_channels, feature_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(feature_channels),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )
        self.attention = nn.Conv2d(feature_channels, streams, 1)
        n_layers = int(math.log2(map_size))
        layers = [down_block(streams * feature_channels, streams * stream_width, groups=streams)]
        layers += [down_block(streams * stream_width, streams * stream_width, groups=streams)
                   for _ in range(n_layers - 2)]
        layers.append(down_block(streams * stream_width, config.embedding_dim, last=True, groups=streams))
        self.streams_stack = nn.Sequential(*layers)

    def forward(self, tapped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tapped (B, C, h, w)`` -> ``(phi (B, D), attention_maps (B, K, h, w))``."""
        features = self.conv_block(tapped)
        maps = torch.sigmoid(self.attention(features))
        batch, channels, height, width = features.shape
        # (B, K, C, h, w) -> (B, K*C, h, w): stream-major, the layout the grouped convs expect.
        attended = (maps.unsqueeze(2) * features.unsqueeze(1)).reshape(batch, self.streams * channels, height, width)
        return self.streams_stack(attended).flatten(1), maps


@register_architecture("tae_encoder")
class FaceActionEncoder(nn.Module):
    """``E(I) -> (phi, psi)``: shared trunk, pose branch, action branch (TCAE or TAE attention)."""

    config_class = TAEConfig

    def __init__(self, config: TAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TAEConfig()
        channels = [3] + config.trunk_channels
        self.trunk = nn.ModuleList(down_block(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        branch_width = 8 * config.width
        self.pose_branch = embedding_branch(channels[-1], branch_width, config.embedding_dim)
        if config.attention_streams:
            # Tap the trunk before its last block: the 16x16 map (METHOD.md: attention on >= 16x16).
            self.action_branch = AttentionActionBranch(channels[-2], 16, config)
        else:
            self.action_branch = embedding_branch(channels[-1], branch_width, config.embedding_dim)

    def forward_features(self, images: torch.Tensor) -> EncoderFeatures:
        """``images (B, 3, S, S)`` RGB in [0, 1], no normalisation -> :class:`EncoderFeatures`."""
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
            raise ValueError(
                f"FaceActionEncoder: `images` must be (B, 3, {size}, {size}) RGB in [0, 1] "
                f"(TAEConfig.image_size={size}), got shape {tuple(images.shape)}; resize the face crops")
        feature_maps = []
        x = images
        for block in self.trunk:
            x = block(x)
            feature_maps.append(x)
        pose_embedding = self.pose_branch(x).flatten(1)
        if self.config.attention_streams:
            action_embedding, attention_maps = self.action_branch(feature_maps[-2])
        else:
            action_embedding, attention_maps = self.action_branch(x).flatten(1), None
        return EncoderFeatures(action_embedding, pose_embedding, attention_maps, feature_maps)

    def forward(self, images: torch.Tensor) -> EncoderFeatures:
        """Same as :meth:`forward_features` (the encoder has no head of its own)."""
        return self.forward_features(images)


class FlowDecoder(nn.Module):
    """``[emb_a; emb_b] (B, 2D)`` -> ``(B, 3, S, S)``: field ``(dx, dy)`` (ch 0-1) and mask logit (ch 2).

    ReLU, then log2(S) x [bilinear up x2, conv 3x3, BN, ReLU]; the last block ends in tanh,
    so the field is in normalised units within [-1, 1].
    """

    def __init__(self, config: TAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TAEConfig()
        channels = config.decoder_channels
        blocks = []
        for index, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            is_last = index == len(channels) - 2
            layers = [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                      nn.Conv2d(c_in, c_out, 3, 1, 1, bias=is_last)]
            layers += [nn.Tanh()] if is_last else [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        if config.zero_init_flow:
            nn.init.zeros_(self.blocks[-1][1].weight)
            nn.init.zeros_(self.blocks[-1][1].bias)

    def forward(self, embedding_pair: torch.Tensor) -> torch.Tensor:
        """``embedding_pair (B, 2D)`` or ``(B, 2D, 1, 1)`` -> ``(B, 3, S, S)`` in [-1, 1]."""
        expected = 2 * self.config.embedding_dim
        if embedding_pair.shape[1] != expected:
            raise ValueError(f"FlowDecoder: input must have {expected} channels ([emb; emb]), "
                             f"got shape {tuple(embedding_pair.shape)}")
        x = embedding_pair.reshape(embedding_pair.shape[0], expected, 1, 1)
        return self.blocks(torch.relu(x))


@dataclass
class TAEOutput:
    """Everything one :meth:`TwinCycleAutoencoder.forward` computes (``B`` pairs, ``S x S`` faces).

    Embeddings are ``(B, D)``; fields ``(B, 2, S, S)``; weights ``(B, 1, S, S)``; images ``(B, 3, S, S)``.
    Naming: ``<image>_<action|pose>_embedding``; ``generated`` is the generated target ``Î_t``,
    ``action_changed`` is ``I^A = warp(I_s, T_A)``, ``pose_changed`` is ``I^P = warp(I_s, T_P)``.
    ``landmark_readouts``: with ``TAEConfig.landmark_readout`` **[ours]**, the readouts of ``phi_s - phi_t``
    and ``psi_s - psi_t`` at the 68 landmarks, ``(B, 68, 2)`` each in normalised units; else None.
    ``frame_readouts``: with ``TAEConfig.frame_readout`` **[ours]**, the readouts of ``phi_s`` and ``phi_t``,
    ``(B, 2, 68, 2)`` in normalised units; else None. ``pose_frame_readouts``: the same for ``psi_s`` and ``psi_t``
    with ``TAEConfig.pose_frame_readout`` **[ours]**.
    """

    source_action_embedding: torch.Tensor
    source_pose_embedding: torch.Tensor
    target_action_embedding: torch.Tensor
    target_pose_embedding: torch.Tensor
    action_flow: torch.Tensor
    pose_flow: torch.Tensor
    fused_flow: torch.Tensor
    action_weight: torch.Tensor
    pose_weight: torch.Tensor
    generated_target: torch.Tensor
    action_changed: torch.Tensor
    pose_changed: torch.Tensor
    generated_action_embedding: torch.Tensor
    generated_pose_embedding: torch.Tensor
    action_changed_action_embedding: torch.Tensor
    action_changed_pose_embedding: torch.Tensor
    pose_changed_action_embedding: torch.Tensor
    pose_changed_pose_embedding: torch.Tensor
    action_cycle_flow: torch.Tensor
    pose_cycle_flow: torch.Tensor
    action_cycle_reconstruction: torch.Tensor
    pose_cycle_reconstruction: torch.Tensor
    source_attention_maps: torch.Tensor | None
    landmark_readouts: tuple[torch.Tensor, torch.Tensor] | None = None
    frame_readouts: torch.Tensor | None = None
    pose_frame_readouts: torch.Tensor | None = None


@register_architecture("twin_cycle_autoencoder")
class TwinCycleAutoencoder(nn.Module):
    """Encoder + action decoder ``D_A`` + pose decoder ``D_P`` with the twin cycles (METHOD.md §1)."""

    config_class = TAEConfig

    def __init__(self, config: TAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TAEConfig()
        self.encoder = FaceActionEncoder(config)
        self.action_decoder = FlowDecoder(config)
        self.pose_decoder = FlowDecoder(config)
        if config.landmark_readout:
            self.action_readout = nn.Linear(config.embedding_dim, 2 * READOUT_LANDMARKS)
            self.pose_readout = nn.Linear(config.embedding_dim, 2 * READOUT_LANDMARKS)
        if config.frame_readout:
            self.frame_readout = nn.Linear(config.embedding_dim, 2 * READOUT_LANDMARKS)
        if config.pose_frame_readout:
            self.pose_frame_readout = nn.Linear(config.embedding_dim, 2 * READOUT_LANDMARKS)
        for module in self.children():  # the readouts, the only Linear children, start at "no motion"
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def embedding_pair(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """A decoder's input for the change ``first -> second`` (both ``(B, D)``), as ``config.decoder_input`` says."""
        if self.config.decoder_input == "difference":
            change = second - first
            return torch.cat((change, -change), dim=1)
        return torch.cat((first, second), dim=1)

    def encode(self, images: torch.Tensor) -> EncoderFeatures:
        """The encoder alone: ``images (B, 3, S, S)`` -> :class:`EncoderFeatures`."""
        return self.encoder.forward_features(images)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> TAEOutput:
        """``source``, ``target`` ``(B, 3, S, S)`` in [0, 1] (two frames of one face track) -> :class:`TAEOutput`."""
        size = self.config.image_size
        for name, images in (("source", source), ("target", target)):
            if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
                raise ValueError(
                    f"TwinCycleAutoencoder: `{name}` must be (B, 3, {size}, {size}) RGB in [0, 1] "
                    f"(TAEConfig.image_size={size}), got shape {tuple(images.shape)}; resize the face crops")
        if source.shape != target.shape:
            raise ValueError(f"TwinCycleAutoencoder: `source` {tuple(source.shape)} and `target` "
                             f"{tuple(target.shape)} must have the same batch size")
        batch = source.shape[0]

        # Pass 1: the real frames, one encoder call for both sets.
        real = self.encoder.forward_features(torch.cat((source, target)))
        phi_s, phi_t = real.action_embedding.split(batch)
        psi_s, psi_t = real.pose_embedding.split(batch)

        action_out = self.action_decoder(self.embedding_pair(phi_s, phi_t))
        pose_out = self.pose_decoder(self.embedding_pair(psi_s, psi_t))
        fused_flow, action_weight, pose_weight = fuse_flows(action_out, pose_out)
        action_flow, pose_flow = action_out[:, :2], pose_out[:, :2]

        # The three warps of the source in one call: generated target, action-changed, pose-changed.
        warped = warp(source.repeat(3, 1, 1, 1), torch.cat((fused_flow, action_flow, pose_flow)))
        generated_target, action_changed, pose_changed = warped.split(batch)

        # Pass 2: the three generated sets, one encoder call.
        generated = self.encoder.forward_features(warped)
        phi_g, phi_a, phi_p = generated.action_embedding.split(batch)
        psi_g, psi_a, psi_p = generated.pose_embedding.split(batch)

        # The twin cycles: undo the action change with D_A and the pose change with D_P.
        action_cycle_flow = self.action_decoder(self.embedding_pair(phi_a, phi_s))[:, :2]
        pose_cycle_flow = self.pose_decoder(self.embedding_pair(psi_p, psi_s))[:, :2]
        cycled = warp(torch.cat((action_changed, pose_changed)), torch.cat((action_cycle_flow, pose_cycle_flow)))
        action_cycle_reconstruction, pose_cycle_reconstruction = cycled.split(batch)

        source_attention_maps = None if real.attention_maps is None else real.attention_maps[:batch]
        landmark_readouts = None
        if self.config.landmark_readout:  # [ours] (B, 68, 2) each: action part, head-motion part
            landmark_readouts = (self.action_readout(phi_s - phi_t).unflatten(1, (READOUT_LANDMARKS, 2)),
                                 self.pose_readout(psi_s - psi_t).unflatten(1, (READOUT_LANDMARKS, 2)))
        frame_readouts = pose_frame_readouts = None
        if self.config.frame_readout:  # [ours] (B, 2, 68, 2): source, target
            frame_readouts = self.frame_readout(torch.stack((phi_s, phi_t), 1)).unflatten(-1, (READOUT_LANDMARKS, 2))
        if self.config.pose_frame_readout:  # [ours] the same for psi
            pose_frame_readouts = self.pose_frame_readout(torch.stack((psi_s, psi_t), 1)).unflatten(
                -1, (READOUT_LANDMARKS, 2))
        return TAEOutput(
            source_action_embedding=phi_s, source_pose_embedding=psi_s,
            target_action_embedding=phi_t, target_pose_embedding=psi_t,
            action_flow=action_flow, pose_flow=pose_flow, fused_flow=fused_flow,
            action_weight=action_weight, pose_weight=pose_weight,
            generated_target=generated_target, action_changed=action_changed, pose_changed=pose_changed,
            generated_action_embedding=phi_g, generated_pose_embedding=psi_g,
            action_changed_action_embedding=phi_a, action_changed_pose_embedding=psi_a,
            pose_changed_action_embedding=phi_p, pose_changed_pose_embedding=psi_p,
            action_cycle_flow=action_cycle_flow, pose_cycle_flow=pose_cycle_flow,
            action_cycle_reconstruction=action_cycle_reconstruction,
            pose_cycle_reconstruction=pose_cycle_reconstruction,
            source_attention_maps=source_attention_maps, landmark_readouts=landmark_readouts,
            frame_readouts=frame_readouts, pose_frame_readouts=pose_frame_readouts,
        )


__all__ = [
    "AttentionActionBranch", "EncoderFeatures", "FaceActionEncoder", "FlowDecoder", "TAEConfig", "TAEOutput",
    "TwinCycleAutoencoder",
]
