"""Model bundles: one directory holding everything ``video-fer track`` needs, and the no-training default.

Layout::

    bundle/
      bundle.json        format, encoder(s), alignment, heads, the default's column groups, the columns' sources
      model.safetensors  "encoder.*", "extra_encoders.<task>.*" and "heads.<task>.*" weights

Tasks (each optional, a missing one simply omits its columns):

- ``au``: AU presence, logits -> sigmoid -> ``AUxx_c``; ``names`` = AU numbers;
- ``au_intensity``: AU intensity regression (0..5) -> ``AUxx_r``; ``names`` = AU numbers;
- ``expression``: class logits -> softmax -> ``expression_<label>`` and the argmax ``expression``;
- ``va``: valence/arousal in [-1, 1] (``HeadOutput.valence_arousal``) -> ``valence``, ``arousal``.

Column groups of the no-training default (``default_columns``, :data:`DEFAULT_COLUMN_GROUPS`,
computed by :mod:`video_fer.track.default_columns` from the landmarker's outputs, no network):
``pose`` (``pose_T*``, ``pose_R*``), ``gaze``, ``au`` (the blendshape table) and ``expression``
(AU prototypes). The default itself, :func:`mediapipe_bundle` (``--model mediapipe``), is a
bundle with all four groups and no network; a learned bundle combines its heads with any groups
whose columns no head gives (``video-fer bundle --default-columns pose,gaze``); ``bundle.json``
says which source each group comes from (``columns``). A bundle written before the groups existed
has ``pose``.

Each head reads the features of one encoder (``HeadSpec.encoder``): the bundle's ``encoder`` or,
for a head fine-tuned with its own encoder (the ``model/`` of ``finetune_expression``), that one
(``extra_encoders[<task>]``); an encoder equal to another is stored and run once.

Head checkpoints (:func:`save_head` / :func:`load_head`) are directories with ``config.json``
``{"kind": "video_fer.head", "task": ..., "head": <create_head name>, "options": {...}, "names": [...],
"alignment": {...} | null}`` and ``model.safetensors``. The recipes' own outputs (encoder exports,
``finetune_au`` folds and runs, task models) are read by :mod:`video_fer.track.assemble`.
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
MEDIAPIPE = "mediapipe"  # the name of the no-training default (--model mediapipe)
DEFAULT_COLUMN_GROUPS = ("pose", "gaze", "au", "expression")  # what the default computes without a network
DEFAULT_SOURCES = {  # what each default group is computed from (bundle.json "columns", the table's metadata)
    "pose": "mediapipe (no training): rigid fit to the face mesh (68 landmarks for other landmarkers)",
    "gaze": "mediapipe (no training): iris landmarks in an eyeball model",
    "au": "mediapipe (no training): blendshapes through the AU table",
    "expression": "mediapipe (no training): prototype-based, EMFACS AU prototypes on the blendshape AUs",
}
LEGACY_DEFAULT_COLUMNS = ("pose",)  # bundles written before the groups existed had head pose only
MAIN_ENCODER = "encoder"
# which default group the columns of a learned head would clash with
TASK_GROUP = {"au": "au", "au_intensity": "au", "expression": "expression", "va": "va"}


@dataclass
class HeadSpec:
    """How to rebuild one head and read its output.

    Attributes:
        task: one of :data:`TASKS`.
        head: :func:`video_fer.models.heads.create_head` name (``linear``, ``acnn``, ``two_level_va`` ...).
        options: JSON keyword arguments of the head's constructor.
        names: AU numbers (``au``, ``au_intensity``) or expression labels (``expression``); empty for ``va``.
        encoder: whose features the head reads: ``"encoder"`` (the bundle's), a key of the bundle's
            ``extra_encoders``, or None (a head that encodes the images itself: RAN, prior attention).
        model: for a head taken from a recipe's task model, that model's ``{"architecture", "config"}``
            (the head is rebuilt as the model's ``.head``); None for a plain head checkpoint.
    """

    task: str
    head: str
    options: dict[str, Any] = field(default_factory=dict)
    names: list = field(default_factory=list)
    encoder: str | None = MAIN_ENCODER
    model: dict | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CheckpointError(f"head task {self.task!r}: unknown; choose one of {', '.join(TASKS)}")
        if self.task in ("au", "au_intensity"):
            self.names = [int(au) for au in self.names]
        else:
            self.names = [str(name) for name in self.names]

    def to_dict(self) -> dict[str, Any]:
        document = {"task": self.task, "head": self.head, "options": dict(self.options), "names": list(self.names),
                    "encoder": self.encoder}
        if self.model is not None:
            document["model"] = dict(self.model)
        return document

    @classmethod
    def from_dict(cls, task: str, document: Mapping[str, Any]) -> "HeadSpec":
        """Read :meth:`to_dict`'s document (older ones lack ``encoder`` and ``model``)."""
        return cls(task, document["head"], document.get("options", {}), document.get("names", []),
                   document.get("encoder", MAIN_ENCODER), document.get("model"))


def build_task_model(spec: HeadSpec, where: str | os.PathLike = "head") -> nn.Module:
    """The (untrained) task model a head comes from (``spec.model``); its ``.head`` and ``.encoder`` are the parts."""
    from video_fer.models.registry import build_architecture

    try:
        return build_architecture(spec.model["architecture"], spec.model["config"], f"{where} ({spec.task} model)")
    except KeyError as error:
        raise CheckpointError(f"{where}: the {spec.task} head's model has no {error}; build the bundle again") from None


def build_head(spec: HeadSpec, where: str | os.PathLike = "head") -> nn.Module:
    """Construct the (untrained) head a :class:`HeadSpec` describes; CheckpointError if the options don't fit."""
    from video_fer.models.heads import create_head

    if spec.model is not None:
        return build_task_model(spec, where).head
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
    """Load weights that fit the module exactly and are all finite (NaN weights give NaN for every face)."""
    from video_fer.models.checkpoint import describe_mismatch

    mismatch = describe_mismatch(module.state_dict(), dict(state))
    if mismatch:
        raise CheckpointError(f"{where}: weights do not match the recorded architecture: {mismatch}; "
                              "the weights and the config come from different models, write them again")
    bad = [key for key, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(f"{where}: weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN or "
                              "infinite values; the model diverged or the file is damaged: use an earlier "
                              "checkpoint or train again")
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
        spec = HeadSpec.from_dict(document["task"], document)
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
    """Encoder(s) + heads + the alignment they were trained with, and the default's column groups.

    ``forward`` gives every head's output; a bundle without heads (the no-training default) has no
    network at all and is never called.

    Args:
        encoder: a :class:`~video_fer.models.tae.FaceActionEncoder` (any registered architecture
            with ``forward_features`` and ``config.image_size``), or None (no head reads it).
        heads: task -> ``(module, HeadSpec)``.
        alignment: the :class:`~video_fer.faces.alignment.AlignmentSpec` of the training crops (None
            without heads); its size must equal every encoder's image size.
        default_columns: groups of :data:`DEFAULT_COLUMN_GROUPS` computed without a network
            (:mod:`video_fer.track.default_columns`); none may give columns a head gives.
        extra_encoders: name -> encoder, for heads fine-tuned with an encoder of their own.
    """

    def __init__(self, encoder: nn.Module | None, heads: Mapping[str, tuple[nn.Module, HeadSpec]], alignment,
                 default_columns: Sequence[str] = LEGACY_DEFAULT_COLUMNS,
                 extra_encoders: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.extra_encoders = nn.ModuleDict(dict(extra_encoders or {}))
        self.heads = nn.ModuleDict({task: module for task, (module, _) in heads.items()})
        self.specs = {task: spec for task, (_, spec) in heads.items()}
        self.alignment = alignment
        self.default_columns = check_default_columns(default_columns, self.specs)
        if self.specs and alignment is None:
            raise CheckpointError("a bundle with heads needs the alignment of the crops they were trained on")
        encoders = {MAIN_ENCODER: encoder, **dict(self.extra_encoders)}
        for name, module in encoders.items():
            if module is not None:
                check_encoder_crops(alignment, int(getattr(module.config, "image_size", alignment.size)), name)
        for task, spec in self.specs.items():
            if task != spec.task:
                raise CheckpointError(f"heads[{task!r}]: its spec says task {spec.task!r}")
            if spec.encoder is not None and encoders.get(spec.encoder) is None:
                raise CheckpointError(f"the {task} head reads encoder {spec.encoder!r}, which the bundle lacks")

    @property
    def image_size(self) -> int | None:
        return None if self.alignment is None else self.alignment.size

    @property
    def has_network(self) -> bool:
        """False for the no-training default (no head: nothing to align or run)."""
        return bool(self.specs)

    def forward(self, crops: torch.Tensor, landmarks: torch.Tensor | None = None) -> BundleOutput:
        """``crops (B, 3, S, S)`` aligned faces in [0, 1], ``landmarks (B, 68, 2)`` in crop pixels -> :class:`BundleOutput`."""
        features: dict[str, Any] = {}

        def features_of(name: str | None):
            if name is not None and name not in features:  # each encoder runs once per batch
                encoder = self.encoder if name == MAIN_ENCODER else self.extra_encoders[name]
                features[name] = encoder.forward_features(crops)
            return features.get(name)

        output = BundleOutput()
        for task, head in self.heads.items():
            result = head(features_of(self.specs[task].encoder), images=crops, landmarks=landmarks)
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

    def column_sources(self) -> dict[str, str]:
        """Column group -> where its values come from (``bundle.json`` ``columns`` and the table's metadata)."""
        sources = {group: DEFAULT_SOURCES[group] for group in self.default_columns}
        names = {"au": "au_c", "au_intensity": "au_r", "expression": "expression", "va": "va"}
        for task, spec in self.specs.items():
            sources[names[task]] = f"learned: {task} head ({spec.head}" + (
                f", {spec.model['architecture']})" if spec.model else ")")
        return sources

    def describe(self) -> dict[str, Any]:
        """The ``bundle.json`` document."""
        def architecture(module):
            return {"architecture": type(module).architecture_name, "config": config_dict(module)}

        return {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "video_fer_version": __version__,
                "encoder": None if self.encoder is None else architecture(self.encoder),
                "extra_encoders": {name: architecture(module) for name, module in self.extra_encoders.items()},
                "alignment": None if self.alignment is None else self.alignment.to_dict(),
                "heads": {task: spec.to_dict() for task, spec in self.specs.items()},
                "default_columns": list(self.default_columns), "columns": self.column_sources()}


def check_default_columns(groups: Sequence[str], specs: Mapping[str, HeadSpec]) -> tuple[str, ...]:
    """The default's column groups in canonical order; CheckpointError for an unknown group or one a head gives."""
    groups = tuple(groups)
    unknown = [group for group in groups if group not in DEFAULT_COLUMN_GROUPS]
    if unknown:
        raise CheckpointError(f"default columns {unknown}: unknown; choose from {', '.join(DEFAULT_COLUMN_GROUPS)}")
    clashes = [task for task in specs if TASK_GROUP[task] in groups]
    if clashes:
        raise CheckpointError(f"default columns {', '.join(TASK_GROUP[t] for t in clashes)} would give the columns of "
                              f"the learned {', '.join(clashes)} head; leave them out of the default columns")
    return tuple(group for group in DEFAULT_COLUMN_GROUPS if group in groups)


def mediapipe_bundle() -> ModelBundle:
    """The no-training default (``--model mediapipe``): every default column group, no network."""
    return ModelBundle(None, {}, None, default_columns=DEFAULT_COLUMN_GROUPS).eval()


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


def check_heads_run(bundle: ModelBundle, where: str, head_where: Mapping[str, str] | None = None) -> None:
    """One forward pass on two blank faces: a head whose options do not fit the encoder, or whose ``names``
    do not match its outputs, fails here, not mid-clip. ``head_where``: task -> where that head came from
    (named instead of ``where`` when its names are wrong)."""
    if not bundle.has_network:
        return
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
            raise CheckpointError(f"{(head_where or {}).get(task, where)}: head {task!r} gives {values.shape[1]} "
                                  f"outputs but names {len(bundle.specs[task].names)} ({bundle.specs[task].names}); "
                                  "fix its names (one per output)")


def save_bundle(bundle: ModelBundle, directory: str | os.PathLike,
                head_where: Mapping[str, str] | None = None) -> Path:
    """Write ``bundle.json`` + ``model.safetensors`` into ``directory`` (atomically, weights first).
    ``head_where``: task -> where that head came from, named if its check fails."""
    check_heads_run(bundle, str(directory), head_where)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous().cpu() for key, value in bundle.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": BUNDLE_FORMAT})
    with atomic_write(directory / BUNDLE_FILE) as handle:
        json.dump(bundle.describe(), handle, indent=2)
    return directory


def default_columns_of(model) -> tuple[str, ...]:
    """The default's column groups of ``"mediapipe"``, a :class:`ModelBundle` or a bundle directory, read without
    building the network (``track`` configures the landmarker from it while the bundle loads)."""
    if isinstance(model, ModelBundle):
        return model.default_columns
    if isinstance(model, str) and model == MEDIAPIPE:
        return DEFAULT_COLUMN_GROUPS
    path = Path(model)
    file = (path.parent if path.is_file() else path) / BUNDLE_FILE
    if not file.is_file():  # not a bundle: load_bundle says what it is instead
        return LEGACY_DEFAULT_COLUMNS
    return tuple(_read_json(file, "build a bundle with `video-fer bundle`").get("default_columns",
                                                                                 LEGACY_DEFAULT_COLUMNS))


def load_bundle(directory: str | os.PathLike, map_location: str = "cpu") -> ModelBundle:
    """Rebuild a bundle written by :func:`save_bundle`; eval mode. Any mismatch is a CheckpointError.

    ``"mediapipe"`` gives the no-training default (:func:`mediapipe_bundle`); a folder of that name is ``./mediapipe``.
    """
    if isinstance(directory, str) and directory == MEDIAPIPE:
        return mediapipe_bundle()
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
    where = f"{directory}/{BUNDLE_FILE}"
    try:
        encoder_doc, heads_doc, alignment_doc = document["encoder"], document["heads"], document["alignment"]
        encoder = None if encoder_doc is None else build_architecture(encoder_doc["architecture"],
                                                                      encoder_doc["config"], where)
        extra_encoders = {name: build_architecture(doc["architecture"], doc["config"], where)
                          for name, doc in document.get("extra_encoders", {}).items()}
        heads = {task: (build_head(spec, directory), spec)
                 for task, spec in ((task, HeadSpec.from_dict(task, doc)) for task, doc in heads_doc.items())}
        alignment = None if alignment_doc is None else AlignmentSpec.from_dict(alignment_doc)
        default_columns = document.get("default_columns", LEGACY_DEFAULT_COLUMNS)
    except KeyError as error:
        raise CheckpointError(f"{where}: missing key {error}; build the bundle again") from None
    except Exception as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{where}: {error}; build the bundle again") from error
    bundle = ModelBundle(encoder, heads, alignment, default_columns, extra_encoders)
    _load_strict(bundle, read_weights(directory / WEIGHTS_FILE), str(directory))
    check_heads_run(bundle, f"{directory}/{BUNDLE_FILE}")  # an edited names list would drop or shift columns
    return bundle.to(map_location).eval()


def random_bundle(image_size: int = 128, width: int = 32, embedding_dim: int = 256, attention_streams: int = 8,
                  stream_width: int = 64, aus: Sequence[int] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
                  intensity_aus: Sequence[int] = (), expression_head: str | None = "linear",
                  expressions: Sequence[str] = RAFDB_EXPRESSIONS, va: bool = True, seed: int = 0,
                  default_columns: Sequence[str] = LEGACY_DEFAULT_COLUMNS) -> ModelBundle:
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
    bundle = ModelBundle(encoder, heads, AlignmentSpec(size=image_size), default_columns)
    for module in bundle.modules():  # random BatchNorm statistics so the heads' outputs vary between faces
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.normal_(0.0, 0.1)
    return bundle.eval()


__all__ = ["BundleOutput", "DEFAULT_COLUMN_GROUPS", "HeadSpec", "MEDIAPIPE", "ModelBundle", "TASKS", "build_head",
           "build_task_model", "check_default_columns", "default_columns_of", "fuse_batch_norms", "load_bundle", "load_head",
           "mediapipe_bundle", "random_bundle", "save_bundle", "save_head"]
