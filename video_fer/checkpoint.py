"""Model checkpoints: a directory with ``config.json`` and ``model.safetensors``.

``config.json``::

    {"architecture": "twin_cycle_autoencoder", "config": {...}, "format_version": 1,
     "video_fer_version": "0.1.0", "extra": {...}}

A model class joins the registry with ``@register_architecture("name")``. It must keep its
configuration in ``self.config`` (a dataclass, or anything with ``to_dict()``) and be
constructible as ``cls(config_class(**config))`` where ``config_class`` is a class attribute;
a class without ``config_class`` is built as ``cls(**config)``.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from video_fer.errors import CheckpointError
from video_fer.io_utils import atomic_path, atomic_write

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_SHOWN_KEYS = 5  # how many mismatching keys an error lists

_ARCHITECTURES: dict[str, type[nn.Module]] = {}
# Modules that register architectures; imported by load_model so a fresh process finds them.
_BUILTIN_MODULES = ("video_fer.models.tae", "video_fer.data.au_training", "video_fer.models.heads_finetune")


def register_architecture(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``cls`` saveable/loadable under ``name``."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        known = _ARCHITECTURES.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"register_architecture: {name!r} is already {known.__qualname__}; pick another name")
        _ARCHITECTURES[name] = cls
        cls.architecture_name = name
        return cls

    return decorate


def registered_architectures() -> dict[str, type[nn.Module]]:
    """Name -> class of every registered architecture (built-ins imported first)."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(_ARCHITECTURES)


def _config_to_dict(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if isinstance(config, dict):
        return dict(config)
    raise CheckpointError(f"save_model: {type(model).__name__} has no `.config` dataclass or dict; "
                          "store the constructor arguments in self.config")


def save_model(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed): weights first, then ``config.json``.

    Both files are written atomically (temp file + rename), so a crash never leaves half a file.
    ``extra`` is any JSON-serialisable dict (e.g. training step, alignment spec) kept in config.json.
    Returns the directory.
    """
    from video_fer import __version__

    model = getattr(model, "module", model)  # unwrap DDP / accelerate wrappers
    model = getattr(model, "_orig_mod", model)  # and torch.compile's
    name = getattr(type(model), "architecture_name", None)
    if name is None or _ARCHITECTURES.get(name) is not type(model):
        raise CheckpointError(
            f"save_model: {type(model).__name__} is not a registered architecture; decorate the class with "
            "@video_fer.checkpoint.register_architecture(name)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.detach().contiguous().cpu() for key, tensor in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"architecture": name, "format_version": str(FORMAT_VERSION)})
    document = {"architecture": name, "config": _config_to_dict(model), "format_version": FORMAT_VERSION,
                "video_fer_version": __version__}
    if extra is not None:
        document["extra"] = extra
    with atomic_write(directory / CONFIG_FILE) as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; point load_model at a directory written by save_model")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the file is corrupt, save the model again") from error
    for key in ("architecture", "config", "format_version"):
        if key not in document:
            raise CheckpointError(f"{path}: missing key {key!r}; it was not written by video_fer.checkpoint.save_model")
    if document["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {document['format_version']} is not {FORMAT_VERSION}; "
                              "load it with the video_fer version that wrote it "
                              f"({document.get('video_fer_version', 'unknown')})")
    return document


def _build(directory: Path, name: str, config: dict[str, Any]) -> nn.Module:
    architectures = registered_architectures()
    if name not in architectures:
        raise CheckpointError(f"{directory}: unknown architecture {name!r}; known: {sorted(architectures)} "
                              "(import the module that registers it before loading)")
    cls = architectures[name]
    config_class = getattr(cls, "config_class", None)
    try:
        return cls(config_class(**config)) if config_class is not None else cls(**config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory}/{CONFIG_FILE}: cannot build {name!r} from its config ({error}); "
                              "fix the config or save the model again") from error


def _describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    problems = []
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong_shape = [f"{key} {tuple(found[key].shape)} vs config {tuple(expected[key].shape)}"
                   for key in expected if key in found and found[key].shape != expected[key].shape]
    if missing:
        problems.append(f"missing {missing[:_SHOWN_KEYS]}" + (" ..." if len(missing) > _SHOWN_KEYS else ""))
    if unexpected:
        problems.append(f"unexpected {unexpected[:_SHOWN_KEYS]}" + (" ..." if len(unexpected) > _SHOWN_KEYS else ""))
    if wrong_shape:
        problems.append(f"shape {wrong_shape[:_SHOWN_KEYS]}" + (" ..." if len(wrong_shape) > _SHOWN_KEYS else ""))
    return "; ".join(problems)


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in ``directory`` and load its weights strictly; returns it in eval mode.

    ``directory`` may also be the path of its ``config.json`` or ``model.safetensors``.
    Raises :class:`CheckpointError` (naming the directory and the first mismatching keys) when a
    file is missing or corrupt or the weights do not fit the config.
    """
    directory = Path(directory)
    if directory.is_file() and directory.name in (CONFIG_FILE, WEIGHTS_FILE):
        directory = directory.parent
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    document = _read_config(directory)
    model = _build(directory, document["architecture"], document["config"])
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE} beside {CONFIG_FILE}; the save was interrupted, "
                              "save the model again")
    device = str(map_location) if isinstance(map_location, torch.device) else map_location
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({error}); save the model again") from error
    expected = model.state_dict()
    mismatch = _describe_mismatch(expected, state)
    if mismatch:
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} does not match {CONFIG_FILE} "
                              f"({document['architecture']}): {mismatch}; the two files come from different "
                              "models, save the model again or fix config.json")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


__all__ = ["CheckpointError", "load_model", "register_architecture", "registered_architectures", "save_model"]
