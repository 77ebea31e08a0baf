"""Recipe configuration: a YAML file plus ``key.sub=value`` command-line overrides.

A config is a tree of dataclasses (the *schema*: every valid key and its default).
:func:`load_config` starts from the schema's defaults, merges the YAML file over them,
then the command-line overrides, and builds the dataclasses. Values given on the
command line are parsed with ``yaml.safe_load``, so ``optim.lr=3e-4`` is a float,
``data.cache=null`` is ``None`` and ``data.gap=[1,30]`` a list.

Any key the schema does not know (in the file or on the command line) is a
:class:`~video_fer.errors.ConfigError` that names the key and lists the valid ones.

A field typed ``dict`` may carry ``metadata={"schema": "module:Class"}``: its valid
keys and defaults then come from that dataclass (e.g. the model section takes the
fields of :class:`video_fer.models.tae.TAEConfig`), imported only when a config is
loaded so this module does not depend on the model.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from video_fer.errors import ConfigError

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

# --------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 0.0003)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key.sub=value (e.g. optim.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error}); quote strings") from error
    # YAML 1.1 reads yes/no/on/off as booleans; only true/false mean a boolean here (mixed_precision=no).
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()
    # yaml.safe_load reads "3e-4" as a string (YAML 1.1 wants a dot in floats); a number is meant.
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)
    return key, value


def _schema_class(spec: str):
    module_name, _, class_name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):  # the schema's module is optional: accept any keys then
        return None


def defaults_tree(schema) -> dict[str, Any]:
    """The defaults of a dataclass schema as a nested dict (dict fields with a schema expanded)."""
    tree: dict[str, Any] = {}
    hints = typing.get_type_hints(schema)
    for spec in dataclasses.fields(schema):
        kind = hints.get(spec.name)
        if dataclasses.is_dataclass(kind):
            tree[spec.name] = defaults_tree(kind)
            continue
        if spec.default is not dataclasses.MISSING:
            value = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
        else:
            value = None
        nested = spec.metadata.get("schema")
        if nested is not None:
            nested_class = _schema_class(nested)
            if nested_class is not None:
                value = {**_jsonable(dataclasses.asdict(nested_class())), **(value or {})}
        tree[spec.name] = value
    return tree


def _jsonable(value):
    """Tuples -> lists recursively, so defaults compare and print like YAML values."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _open_keys(schema) -> set[str]:
    """Names of dict fields whose keys are free (no nested schema or the schema's module is absent)."""
    names = set()
    for spec in dataclasses.fields(schema):
        nested = spec.metadata.get("schema")
        if spec.metadata.get("free_keys") or (nested is not None and _schema_class(nested) is None):
            names.add(spec.name)
    return names


def merge_into(tree: dict[str, Any], updates: Mapping[str, Any], schema=None, prefix: str = "") -> None:
    """Merge nested ``updates`` into ``tree`` in place; keys missing from ``tree`` are an error."""
    free = _open_keys(schema) if schema is not None else set()
    hints = typing.get_type_hints(schema) if schema is not None else {}
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in tree:
            valid = ", ".join(sorted(tree)) or "(none)"
            raise ConfigError(f"config key {dotted!r} is unknown; valid keys{' under ' + prefix[:-1] if prefix else ''}: {valid}")
        current = tree[key]
        kind = hints.get(key)
        if isinstance(current, dict) and key not in free:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {dotted!r} is a section; give its keys ({', '.join(sorted(current))}), not {value!r}")
            merge_into(current, value, kind if dataclasses.is_dataclass(kind) else None, f"{dotted}.")
        elif isinstance(current, dict) and isinstance(value, Mapping):
            current.update(value)
        else:
            tree[key] = _check_type(dotted, current, value)


def _check_type(dotted: str, current: Any, value: Any) -> Any:
    """Keep numbers numbers: an int may replace a float; a string may not replace a number."""
    if current is None or value is None:
        return value
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):  # "3e-4" in a YAML file
        value = float(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {dotted!r}: expected true/false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (int, float)) and not isinstance(value, (int, float)):
        raise ConfigError(f"config key {dotted!r}: expected a number, got {value!r}")
    if isinstance(current, int) and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"config key {dotted!r}: expected an integer, got {value!r}")
    if isinstance(current, int) and isinstance(value, float):
        return int(value)
    return value


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, schema=None) -> None:
    """Apply one ``a.b.c = value`` override to a nested dict, validating every level."""
    nested: Any = value
    for part in reversed(dotted.split(".")):
        nested = {part: nested}
    merge_into(tree, nested, schema)


def build(schema, tree: Mapping[str, Any]):
    """Nested dict -> dataclass instance of ``schema`` (tuples where the default is a tuple)."""
    hints = typing.get_type_hints(schema)
    values = {}
    for spec in dataclasses.fields(schema):
        kind = hints.get(spec.name)
        value = tree[spec.name]
        values[spec.name] = build(kind, value) if dataclasses.is_dataclass(kind) else value
    return schema(**values)


def load_config(path: str | Path | None, overrides: Iterable[str] = (), schema=None):
    """Defaults of ``schema`` <- YAML file ``path`` <- ``overrides`` (``key.sub=value`` strings).

    Returns:
        an instance of ``schema`` (default :class:`PretrainConfig`).

    Raises:
        ConfigError: unreadable file, unknown key (named, with the valid keys listed),
            wrong value type.
    """
    schema = schema or PretrainConfig
    tree = defaults_tree(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; give an existing YAML file (see recipes/configs/)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
        try:
            merge_into(tree, loaded, schema)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    for text in overrides:
        key, value = parse_override(text)
        try:
            set_dotted(tree, key, value, schema)
        except ConfigError as error:
            raise ConfigError(f"command line {text!r}: {error}") from None
    return build(schema, tree)


def config_to_dict(config) -> dict[str, Any]:
    """A dataclass config as a plain nested dict (for logging and ``config.yaml`` in the output dir)."""
    return _jsonable(dataclasses.asdict(config))


# --------------------------------------------------------------------------------------
# The pretraining schema (recipes/pretrain_video.py, recipes/configs/pretrain_tae.yaml)
# --------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where pairs come from. ``cache: null`` builds the embedded demo cache in the output dir."""

    cache: str | None = None
    gap: list | None = None  # [min, max] gap between the two frames; null = any gap inside the track
    gap_unit: str = "frames"  # "frames" or "seconds"
    pairs_per_epoch: int = 1024
    val_fraction: float = 0.2  # share of identities held out for the validation loss
    val_pairs: int = 64
    num_workers: int = 1
    augment: bool = True
    demo_dir: str | None = None  # where the demo cache is built; null = <train.output_dir>/demo_cache
    demo_frames_per_track: int = 24
    demo_tracks_per_identity: int = 3


@dataclass
class OptimConfig:
    """Optimiser and schedule. Reference: sgd lr 1e-3 momentum 0.9; ours: adamw."""

    name: str = "adamw"  # "adamw" or "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" (warmup + cosine), "plateau" (after the curriculum), "constant"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    plateau_patience: int = 3  # epochs without validation improvement before the LR drops ("plateau")
    plateau_factor: float = 0.5
    grad_clip: float = 1.0  # max global gradient norm; 0 disables


@dataclass
class LossConfig:
    """Loss weights (keys of TAELossWeights) and the hard-sample curriculum."""

    weights: dict = field(default_factory=dict, metadata={"schema": "video_fer.losses:TAELossWeights"})
    curriculum: bool = False
    curriculum_patience: int = 15  # epochs without validation improvement before the window moves
    # [ours] the six embedding-consistency terms are off until this optimiser step, then ramp linearly to
    # their weight over consistency_warmup_steps (0 and 0: the reference, always on); see losses.consistency_ramp
    consistency_warmup_start: int = 0
    consistency_warmup_steps: int = 0


@dataclass
class TrainConfig:
    """The loop: size, precision, checkpoints, logging."""

    output_dir: str = "runs/pretrain_tae"
    seed: int = 0
    batch_size: int = 16
    epochs: int = 4
    max_steps: int = 0  # 0: epochs decide
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # "no", "bf16", "fp16" (accelerate)
    channels_last: bool = False
    save_every: int = 50  # optimiser steps between accelerator.save_state
    keep_checkpoints: int = 2
    log_every: int = 5
    image_every: int = 100  # steps between PNG grids (0 disables)
    max_nonfinite_steps: int = 5
    debug_nan_at_step: int = -1  # testing aid: make the loss NaN from this step on (-1 = never)
    validate: bool = True


@dataclass
class PretrainConfig:
    """Everything ``recipes/pretrain_video.py`` reads."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=lambda: {"image_size": 128},
                        metadata={"schema": "video_fer.models.tae:TAEConfig"})
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


__all__ = [
    "ConfigError", "DataConfig", "LossConfig", "OptimConfig", "PretrainConfig", "TrainConfig",
    "build", "config_to_dict", "defaults_tree", "load_config", "merge_into", "parse_override", "set_dotted",
]
