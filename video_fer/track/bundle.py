"""Model bundles: one directory holding everything ``video-fer track`` needs.

Layout::

    bundle/
      bundle.json        format, encoder architecture + config, alignment, heads (kind, options, names)
      model.safetensors  "encoder.*" and "heads.<task>.*" weights

Tasks (each optional, a missing one simply omits its columns):

- ``au``: AU presence, logits -> sigmoid -> ``AUxx_c``; ``names`` = AU numbers;
- ``au_intensity``: AU intensity regression (0..5) -> ``AUxx_r``; ``names`` = AU numbers;
- ``expression``: class logits -> softmax -> ``expression_<label>`` and the argmax ``expression``;
- ``va``: valence/arousal in [-1, 1] (``HeadOutput.valence_arousal``) -> ``valence``, ``arousal``.

Head checkpoints (what the fine-tuning recipes write, input of ``video-fer bundle``) are
directories with ``config.json`` ``{"kind": "video_fer.head", "task": ..., "head": <create_head
name>, "options": {...}, "names": [...], "alignment": {...} | null}`` and ``model.safetensors``:
:func:`save_head` writes one, :func:`load_head` reads it. The encoder comes from a
:func:`video_fer.models.checkpoint.save_model` export (``recipes/pretrain_video.py`` writes
``encoder/``), whose ``extra.alignment`` is the face alignment it was trained with.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from video_fer.data.expression_datasets import RAFDB_EXPRESSIONS
from video_fer.errors import CheckpointError
from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, AlignmentSpec, check_encoder_crops
from video_fer.io import atomic_path, atomic_write
from video_fer.models.registry import config_dict
from video_fer.version import __version__

BUNDLE_FORMAT = "video_fer.track.bundle"
HEAD_FORMAT = "video_fer.head"
FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
HEAD_CONFIG_FILE = "config.json"
TASKS = ("au", "au_intensity", "expression", "va")
AU_INTENSITY_MAX = 5.0  # FACS intensity scale A..E as 1..5 (DISFA, BP4D intensity)


@dataclass
class HeadSpec:
    """How to rebuild one head and read its output.

    Attributes:
        task: one of :data:`TASKS`.
        head: :func:`video_fer.models.heads.create_head` name (``linear``, ``acnn``, ``two_level_va`` ...).
        options: JSON keyword arguments of the head's constructor.
        names: AU numbers (``au``, ``au_intensity``) or expression labels (``expression``); empty for ``va``.
    """

    task: str
    head: str
    options: dict[str, Any] = field(default_factory=dict)
    names: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CheckpointError(f"head task {self.task!r}: unknown; choose one of {', '.join(TASKS)}")
        if self.task in ("au", "au_intensity"):
            self.names = [int(au) for au in self.names]
        else:
            self.names = [str(name) for name in self.names]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "head": self.head, "options": dict(self.options), "names": list(self.names)}


def build_head(spec: HeadSpec, where: str | os.PathLike = "head") -> nn.Module:
    """Construct the (untrained) head a :class:`HeadSpec` describes; CheckpointError if the options don't fit."""
    from video_fer.models.heads import create_head

    try:
        return create_head(spec.head, **spec.options)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: cannot build head {spec.head!r} with options {spec.options} ({error}); "
                              "fix the options or save the head again") from error


# ------------------------------------------------------------------------------ head checkpoints
def save_head(head: nn.Module, directory: str | os.PathLike, task: str, head_name: str,
              options: Mapping[str, Any] | None = None, names: Sequence = (),
              alignment: Mapping[str, Any] | None = None) -> Path:
    """Write a trained head as a head checkpoint (``config.json`` + ``model.safetensors``), atomically.

    Args:
        head: the trained module, built as ``create_head(head_name, **options)``.
        task: ``au``, ``au_intensity``, ``expression`` or ``va``.
        names: AU numbers or expression labels, one per output.
        alignment: ``AlignmentSpec.to_dict()`` of the crops it was trained on (checked by the bundle).
    """
    spec = HeadSpec(task, head_name, dict(options or {}), list(names))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous().cpu() for key, value in head.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": HEAD_FORMAT})
    document = {"kind": HEAD_FORMAT, "format_version": FORMAT_VERSION, **spec.to_dict(),
                "alignment": dict(alignment) if alignment is not None else None}
    with atomic_write(directory / HEAD_CONFIG_FILE) as handle:
        json.dump(document, handle, indent=2)
    return directory


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}; {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the file is corrupt, write it again") from error


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    from video_fer.models.checkpoint import describe_mismatch

    mismatch = describe_mismatch(module.state_dict(), dict(state))
    if mismatch:
        raise CheckpointError(f"{where}: weights do not match the recorded architecture: {mismatch}; "
                              "the weights and the config come from different models, write them again")
    module.load_state_dict(dict(state), strict=True)


def load_head(directory: str | os.PathLike) -> tuple[nn.Module, HeadSpec, dict | None]:
    """Read a head checkpoint -> ``(head in eval mode, spec, alignment dict or None)``."""
    from video_fer.models.checkpoint import read_weights

    directory = Path(directory)
    document = _read_json(directory / HEAD_CONFIG_FILE, "a head checkpoint is written by video_fer.track.bundle.save_head")
    if document.get("kind") != HEAD_FORMAT:
        raise CheckpointError(f"{directory}: not a head checkpoint (config.json has kind={document.get('kind')!r}, "
                              f"architecture={document.get('architecture')!r}); give the folder written by save_head")
    try:
        spec = HeadSpec(document["task"], document["head"], document.get("options", {}), document.get("names", []))
    except KeyError as error:
        raise CheckpointError(f"{directory}/{HEAD_CONFIG_FILE}: missing key {error}; write the head again") from None
    head = build_head(spec, directory)
    _load_strict(head, read_weights(directory / WEIGHTS_FILE), str(directory))
    return head.eval(), spec, document.get("alignment")


# ------------------------------------------------------------------------------ the bundle
@dataclass
class BundleOutput:
    """Per-face outputs of :class:`ModelBundle` (None where the bundle has no such head).

    Attributes:
        au_presence: ``(B, n_au)`` probabilities in [0, 1].
        au_intensity: ``(B, n_au_r)`` in [0, 5].
        expression: ``(B, n_expr)`` probabilities summing to 1.
        valence_arousal: ``(B, 2)`` in [-1, 1].
    """

    au_presence: torch.Tensor | None = None
    au_intensity: torch.Tensor | None = None
    expression: torch.Tensor | None = None
    valence_arousal: torch.Tensor | None = None


class ModelBundle(nn.Module):
    """Encoder + heads + the alignment they were trained with; ``forward`` gives every head's output.

    Args:
        encoder: a :class:`~video_fer.models.tae.FaceActionEncoder` (any registered architecture
            with ``forward_features`` and ``config.image_size``).
        heads: task -> ``(module, HeadSpec)``.
        alignment: the :class:`~video_fer.faces.alignment.AlignmentSpec` of the training crops;
            its size must equal the encoder's image size.
    """

    def __init__(self, encoder: nn.Module, heads: Mapping[str, tuple[nn.Module, HeadSpec]], alignment) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({task: module for task, (module, _) in heads.items()})
        self.specs = {task: spec for task, (_, spec) in heads.items()}
        self.alignment = alignment
        check_encoder_crops(alignment, int(getattr(encoder.config, "image_size", alignment.size)), "alignment")
        for task, spec in self.specs.items():
            if task != spec.task:
                raise CheckpointError(f"heads[{task!r}]: its spec says task {spec.task!r}")

    @property
    def image_size(self) -> int:
        return self.alignment.size

    def forward(self, crops: torch.Tensor, landmarks: torch.Tensor | None = None) -> BundleOutput:
        """``crops (B, 3, S, S)`` aligned faces in [0, 1], ``landmarks (B, 68, 2)`` in crop pixels -> :class:`BundleOutput`."""
        features = self.encoder.forward_features(crops)
        output = BundleOutput()
        for task, head in self.heads.items():
            result = head(features, images=crops, landmarks=landmarks)
            if task == "au":
                output.au_presence = torch.sigmoid(result.logits)
            elif task == "au_intensity":
                values = result.logits if result.logits is not None else result.valence_arousal
                output.au_intensity = values.clamp(0.0, AU_INTENSITY_MAX)
            elif task == "expression":
                output.expression = torch.softmax(result.logits, dim=-1)
            else:
                output.valence_arousal = result.valence_arousal.clamp(-1.0, 1.0)
        return output

    def describe(self) -> dict[str, Any]:
        """The ``bundle.json`` document."""
        return {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "video_fer_version": __version__,
                "encoder": {"architecture": type(self.encoder).architecture_name,
                            "config": config_dict(self.encoder)},
                "alignment": self.alignment.to_dict(),
                "heads": {task: spec.to_dict() for task, spec in self.specs.items()}}


def fuse_batch_norms(module: nn.Module) -> int:
    """Fold each BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` into that conv (in place).

    Inference only (the BatchNorm's running statistics become the conv's weight and bias, the
    BatchNorm an ``nn.Identity``): the outputs are unchanged to float rounding and the network
    skips one pass over every feature map (~8 % of the TAE encoder's CPU time at 128 px).

    Returns:
        the number of BatchNorms folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if module.training:
        raise CheckpointError("fuse_batch_norms: the module is in training mode; call .eval() first")
    folded = 0
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        for k in range(len(child) - 1):
            if isinstance(child[k], nn.Conv2d) and isinstance(child[k + 1], nn.BatchNorm2d):
                child[k] = fuse_conv_bn_eval(child[k], child[k + 1])
                child[k + 1] = nn.Identity()
                folded += 1
    return folded


def check_heads_run(bundle: ModelBundle, where: str) -> None:
    """One forward pass on two blank faces: a head whose options do not fit the encoder fails here, not mid-clip."""
    size = bundle.image_size
    crops = torch.full((2, 3, size, size), 0.5)
    landmarks = torch.from_numpy(CANONICAL_LANDMARKS_68 * size - 0.5).expand(2, 68, 2).contiguous()
    try:
        with torch.inference_mode():
            output = bundle.eval()(crops, landmarks)
    except Exception as error:  # any head/encoder mismatch (shapes, strides, channels)
        raise CheckpointError(f"{where}: the heads do not run on this encoder's features ({type(error).__name__}: "
                              f"{error}); train the heads on this encoder (same image size and widths)") from error
    for task, values in (("au", output.au_presence), ("au_intensity", output.au_intensity),
                         ("expression", output.expression)):
        if values is not None and values.shape[1] != len(bundle.specs[task].names):
            raise CheckpointError(f"{where}: head {task!r} gives {values.shape[1]} outputs but names "
                                  f"{len(bundle.specs[task].names)} ({bundle.specs[task].names}); fix its names")


def save_bundle(bundle: ModelBundle, directory: str | os.PathLike) -> Path:
    """Write ``bundle.json`` + ``model.safetensors`` into ``directory`` (atomically, weights first)."""
    check_heads_run(bundle, str(directory))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous().cpu() for key, value in bundle.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": BUNDLE_FORMAT})
    with atomic_write(directory / BUNDLE_FILE) as handle:
        json.dump(bundle.describe(), handle, indent=2)
    return directory


def load_bundle(directory: str | os.PathLike, map_location: str = "cpu") -> ModelBundle:
    """Rebuild a bundle written by :func:`save_bundle`; eval mode. Any mismatch is a CheckpointError."""
    # imported here, not at the top: `track` loads the models while MediaPipe starts in a thread
    from video_fer.models.checkpoint import CONFIG_FILE, build_architecture, read_weights

    directory = Path(directory)
    if directory.is_file() and directory.name in (BUNDLE_FILE, WEIGHTS_FILE):
        directory = directory.parent
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a model bundle directory; build one with `video-fer bundle`")
    if not (directory / BUNDLE_FILE).is_file() and (directory / CONFIG_FILE).is_file():
        raise CheckpointError(f"{directory}: a single-model checkpoint, not a bundle (no {BUNDLE_FILE}); "
                              f"assemble one with `video-fer bundle --encoder {directory} --au HEAD ... -o BUNDLE`")
    document = _read_json(directory / BUNDLE_FILE, "build a bundle with `video-fer bundle`")
    if document.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{directory}/{BUNDLE_FILE}: format {document.get('format')!r} is not {BUNDLE_FORMAT!r}")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory}/{BUNDLE_FILE}: format_version {document.get('format_version')} is not "
                              f"{FORMAT_VERSION}; use the video_fer version that wrote it "
                              f"({document.get('video_fer_version', 'unknown')})")
    try:
        encoder_doc, heads_doc, alignment_doc = document["encoder"], document["heads"], document["alignment"]
        encoder = build_architecture(encoder_doc["architecture"], encoder_doc["config"], f"{directory}/{BUNDLE_FILE}")
        heads = {}
        for task, head_doc in heads_doc.items():
            spec = HeadSpec(task, head_doc["head"], head_doc.get("options", {}), head_doc.get("names", []))
            heads[task] = (build_head(spec, directory), spec)
        alignment = AlignmentSpec.from_dict(alignment_doc)
    except KeyError as error:
        raise CheckpointError(f"{directory}/{BUNDLE_FILE}: missing key {error}; build the bundle again") from None
    except Exception as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{directory}/{BUNDLE_FILE}: {error}; build the bundle again") from error
    bundle = ModelBundle(encoder, heads, alignment)
    _load_strict(bundle, read_weights(directory / WEIGHTS_FILE), str(directory))
    return bundle.to(map_location).eval()


def assemble_bundle(encoder_dir: str | os.PathLike, out: str | os.PathLike,
                    heads: Mapping[str, str | os.PathLike | None], alignment: Mapping[str, Any] | None = None
                    ) -> ModelBundle:
    """``video-fer bundle``: an encoder export + head checkpoints -> a bundle in ``out``.

    Args:
        encoder_dir: a :func:`~video_fer.models.checkpoint.save_model` directory (its ``extra.alignment``
            is the alignment unless ``alignment`` is given).
        heads: task -> head checkpoint directory (None entries are skipped).
        alignment: ``AlignmentSpec.to_dict()`` to record instead (e.g. an old export without one).

    Raises:
        CheckpointError: unreadable inputs, a head in the wrong task slot, alignments that
            differ between the encoder and a head, or heads that do not run on the encoder.
    """
    from video_fer.models.checkpoint import load_encoder

    encoder_dir = Path(encoder_dir)
    export = load_encoder(encoder_dir)
    encoder = export.encoder
    if alignment is None and export.alignment is None:
        raise CheckpointError(f"{encoder_dir}: the export records no alignment (config.json extra.alignment); "
                              "pass --alignment ALIGNMENT.json (AlignmentSpec.to_dict())")
    spec = AlignmentSpec.from_dict(alignment) if alignment is not None else export.alignment
    loaded = {}
    for task, head_dir in heads.items():
        if head_dir is None:
            continue
        module, head_spec, head_alignment = load_head(head_dir)
        if head_spec.task != task:
            raise CheckpointError(f"{head_dir}: a {head_spec.task!r} head given as the {task!r} head; "
                                  f"pass it with --{head_spec.task.replace('_', '-')}")
        if head_alignment is not None and AlignmentSpec.from_dict(head_alignment) != spec:
            raise CheckpointError(f"{head_dir}: trained on crops aligned differently from the encoder's "
                                  f"({head_alignment} vs {spec.to_dict()}); retrain the head on the encoder's crops")
        loaded[task] = (module, head_spec)
    if not loaded:
        raise CheckpointError("video-fer bundle: no head given; pass at least one of --au, --au-intensity, "
                          "--expression, --va")
    bundle = ModelBundle(encoder, loaded, spec)
    save_bundle(bundle, out)
    return bundle.eval()


def random_bundle(image_size: int = 128, width: int = 32, embedding_dim: int = 256, attention_streams: int = 8,
                  stream_width: int = 64, aus: Sequence[int] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
                  intensity_aus: Sequence[int] = (), expression_head: str | None = "linear",
                  expressions: Sequence[str] = RAFDB_EXPRESSIONS, va: bool = True, seed: int = 0) -> ModelBundle:
    """A bundle with randomly initialised weights, for tests and speed benchmarks (its outputs mean nothing).

    The AU head is the papers' linear probe; ``expression_head`` any :func:`create_head` name
    (``linear``, ``acnn`` ...) or None; ``va`` adds the two-level attention VA head.
    """
    from video_fer.models.heads.common import backbone_channels
    from video_fer.models.tae import FaceActionEncoder, TAEConfig

    torch.manual_seed(seed)
    encoder = FaceActionEncoder(TAEConfig(image_size=image_size, width=width, embedding_dim=embedding_dim,
                                          attention_streams=attention_streams, stream_width=stream_width))
    channels = backbone_channels(encoder, image_size)
    specs = []
    if aus:
        specs.append(HeadSpec("au", "linear", {"num_outputs": len(aus), "embedding_dim": embedding_dim}, list(aus)))
    if intensity_aus:
        specs.append(HeadSpec("au_intensity", "linear", {"num_outputs": len(intensity_aus),
                                                         "embedding_dim": embedding_dim}, list(intensity_aus)))
    if expression_head == "linear":
        specs.append(HeadSpec("expression", "linear", {"num_outputs": len(expressions), "embedding_dim": embedding_dim},
                              list(expressions)))
    elif expression_head == "acnn":
        specs.append(HeadSpec("expression", "acnn", {"num_classes": len(expressions), "stride": 8,
                                                     "in_channels": channels[8], "image_size": image_size},
                              list(expressions)))
    elif expression_head is not None:
        raise ValueError(f"random_bundle: expression_head {expression_head!r}: use 'linear', 'acnn' or None")
    if va:
        strides = [stride for stride in sorted(channels) if stride >= 4]  # every trunk depth but the first
        specs.append(HeadSpec("va", "two_level_va", {"strides": list(strides), "channels": [channels[s] for s in strides],
                                                     "image_size": image_size}))
    heads = {spec.task: (build_head(spec), spec) for spec in specs}
    bundle = ModelBundle(encoder, heads, AlignmentSpec(size=image_size))
    for module in bundle.modules():  # random BatchNorm statistics so the heads' outputs vary between faces
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.normal_(0.0, 0.1)
    return bundle.eval()


__all__ = ["BundleOutput", "HeadSpec", "ModelBundle", "TASKS", "assemble_bundle",
           "fuse_batch_norms", "load_bundle", "load_head", "random_bundle", "save_bundle", "save_head"]
