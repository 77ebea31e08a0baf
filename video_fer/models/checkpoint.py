"""Model checkpoints: a directory with ``config.json`` and ``model.safetensors``; encoder exports.

``config.json``::

    {"architecture": "twin_cycle_autoencoder", "config": {...}, "format_version": 1,
     "video_fer_version": "0.1.0", "extra": {...}}

Architectures come from :mod:`video_fer.models.registry`; the built-in ones (the TAE and its
encoder, the task models) are imported here, so a fresh process loads them with one call.

An *encoder export* (:func:`save_encoder`, what pretraining writes as ``<run>/encoder``) is a
checkpoint whose ``extra.alignment`` records the :class:`~video_fer.faces.alignment.AlignmentSpec`
of the crops it was trained on; :func:`load_encoder` gives the encoder with that alignment, and
fine-tuning and ``video-fer bundle`` check their crops against it
(:func:`~video_fer.faces.alignment.check_encoder_crops`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from video_fer.errors import CheckpointError
from video_fer.faces.alignment import AlignmentSpec, check_encoder_crops
from video_fer.io import atomic_path, atomic_write
from video_fer.models import task_models, tae  # noqa: F401  (they register the built-in architectures)
from video_fer.models.registry import (architectures, build_architecture, config_dict, is_registered,
                                       register_architecture)
from video_fer.version import __version__

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_SHOWN_KEYS = 5  # how many mismatching keys an error lists


def registered_architectures() -> dict[str, type[nn.Module]]:
    """Name -> class of every registered architecture (the built-in ones included)."""
    return architectures()


def save_model(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed): weights first, then ``config.json``.

    Both files are written atomically (temp file + rename), so a crash never leaves half a file.
    ``extra`` is any JSON-serialisable dict (e.g. training step, alignment spec) kept in config.json.
    Returns the directory.
    """
    model = getattr(model, "module", model)  # unwrap DDP / accelerate wrappers
    model = getattr(model, "_orig_mod", model)  # and torch.compile's
    if not is_registered(model):
        raise CheckpointError(
            f"save_model: {type(model).__name__} is not a registered architecture; decorate the class with "
            "@video_fer.models.registry.register_architecture(name)")
    name = type(model).architecture_name
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.detach().contiguous().cpu() for key, tensor in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"architecture": name, "format_version": str(FORMAT_VERSION)})
    document = {"architecture": name, "config": config_dict(model), "format_version": FORMAT_VERSION,
                "video_fer_version": __version__}
    if extra is not None:
        document["extra"] = extra
    with atomic_write(directory / CONFIG_FILE) as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    """The checked ``config.json`` document of a checkpoint directory."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; point load_model at a directory written by save_model")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the file is corrupt, save the model again") from error
    for key in ("architecture", "config", "format_version"):
        if key not in document:
            raise CheckpointError(f"{path}: missing key {key!r}; it was not written by video_fer.models.checkpoint.save_model")
    if document["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {document['format_version']} is not {FORMAT_VERSION}; "
                              "load it with the video_fer version that wrote it "
                              f"({document.get('video_fer_version', 'unknown')})")
    return document


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """The first missing / unexpected / wrongly shaped keys of ``found`` against ``expected`` ("" when they fit)."""
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
    document = read_config(directory)
    model = build_architecture(document["architecture"], document["config"], f"{directory}/{CONFIG_FILE}")
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
    mismatch = describe_mismatch(expected, state)
    if mismatch:
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} does not match {CONFIG_FILE} "
                              f"({document['architecture']}): {mismatch}; the two files come from different "
                              "models, save the model again or fix config.json")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; CheckpointError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}; the save was interrupted, write it again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error}); write it again") from error


# ------------------------------------------------------------------------------ encoder exports
@dataclass
class EncoderExport:
    """An encoder loaded from an export, with the alignment of the crops it was trained on.

    Attributes:
        encoder: the encoder (``forward_features``, ``config.image_size``), eval mode.
        alignment: the recorded AlignmentSpec, or None for an export that records none.
        path: the export directory.
    """

    encoder: nn.Module
    alignment: AlignmentSpec | None
    path: Path

    @property
    def image_size(self) -> int:
        return int(self.encoder.config.image_size)

    @property
    def crops(self) -> AlignmentSpec | int:
        """What crops must match: the recorded alignment, else just the encoder's side."""
        return self.alignment if self.alignment is not None else self.image_size


def save_encoder(encoder: nn.Module, directory: str | os.PathLike, alignment: AlignmentSpec,
                 extra: dict[str, Any] | None = None) -> Path:
    """Export an encoder with the alignment of its training crops (``extra.alignment``); see :func:`load_encoder`."""
    encoder = getattr(encoder, "module", encoder)
    check_encoder_crops(alignment, int(encoder.config.image_size), str(directory))
    return save_model(encoder, directory, extra={**(extra or {}), "alignment": alignment.to_dict()})


def load_encoder(path: str | os.PathLike) -> EncoderExport:
    """The encoder of an export (a whole TwinCycleAutoencoder checkpoint gives its encoder) and its alignment.

    Raises:
        CheckpointError: the directory holds no encoder (no ``forward_features``) or is unreadable.
    """
    path = Path(path)
    loaded = load_model(path)
    encoder = loaded.encoder if isinstance(getattr(loaded, "encoder", None), nn.Module) else loaded
    if not hasattr(encoder, "forward_features"):
        raise CheckpointError(f"{path}: {type(loaded).__name__} is not an encoder (no forward_features); "
                              "give the encoder/ folder written by recipes/pretrain_video.py")
    recorded = (read_config(path if path.is_dir() else path.parent).get("extra") or {}).get("alignment")
    return EncoderExport(encoder, AlignmentSpec.from_dict(recorded) if recorded else None,
                         path if path.is_dir() else path.parent)


def encoder_for_crops(path: str | os.PathLike | None, image_size: int, setting: str = "model.image_size"
                      ) -> tuple[EncoderExport | None, AlignmentSpec]:
    """A recipe's pretrained encoder (None without ``path``) and the alignment its faces are cropped with.

    The alignment is the one the export recorded (an export without one: the default template at its
    side); the crop side the recipe asks for (``image_size``, named by ``setting``) must be the
    encoder's: one check (:func:`~video_fer.faces.alignment.check_encoder_crops`), one message.
    """
    if not path:
        return None, AlignmentSpec(size=image_size)
    export = load_encoder(path)
    check_encoder_crops(image_size, export.crops, f"{setting} with model.encoder={path}")
    return export, export.alignment or AlignmentSpec(size=export.image_size)


__all__ = ["CONFIG_FILE", "EncoderExport", "encoder_for_crops", "WEIGHTS_FILE", "describe_mismatch", "load_encoder", "load_model",
           "read_config", "read_weights", "register_architecture", "registered_architectures", "save_encoder",
           "save_model"]
