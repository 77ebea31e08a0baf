"""The architecture registry: name -> model class, so a saved model is rebuilt from its name and config.

A model class joins it with ``@register_architecture("name")``. It must keep its configuration
in ``self.config`` (a dataclass, a dict, or anything with ``to_dict()``) and be constructible as
``cls(config_class(**config))`` where ``config_class`` is a class attribute; a class without
``config_class`` is built as ``cls(**config)``. :mod:`video_fer.models.checkpoint` writes and
reads the files; the task models build their encoders through :func:`build_architecture`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

from video_fer.errors import CheckpointError

_ARCHITECTURES: dict[str, type[nn.Module]] = {}


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


def architectures() -> dict[str, type[nn.Module]]:
    """Name -> class of every architecture registered so far (the modules that define them must be imported)."""
    return dict(_ARCHITECTURES)


def is_registered(model: nn.Module) -> bool:
    """True when ``type(model)`` is the class registered under its ``architecture_name``."""
    name = getattr(type(model), "architecture_name", None)
    return name is not None and _ARCHITECTURES.get(name) is type(model)


def build_architecture(name: str, config: dict[str, Any], where: str) -> nn.Module:
    """A fresh model of the registered architecture ``name`` built from its config dict.

    Raises:
        CheckpointError: naming ``where`` (the file or setting the name and config come from)
            when the name is unknown or the config does not fit the class.
    """
    if name not in _ARCHITECTURES:
        raise CheckpointError(f"{where}: unknown architecture {name!r}; known: {sorted(_ARCHITECTURES)} "
                              "(import the module that registers it before loading)")
    cls = _ARCHITECTURES[name]
    config_class = getattr(cls, "config_class", None)
    try:
        return cls(config_class(**config)) if config_class is not None else cls(**config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: cannot build {name!r} from its config ({error}); "
                              "fix the config or save the model again") from error


def config_dict(model: nn.Module) -> dict[str, Any]:
    """The constructor config of a registered model as a plain dict (what ``config.json`` records)."""
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if isinstance(config, dict):
        return dict(config)
    raise CheckpointError(f"save_model: {type(model).__name__} has no `.config` dataclass or dict; "
                          "store the constructor arguments in self.config")


__all__ = ["architectures", "build_architecture", "config_dict", "is_registered", "register_architecture"]
