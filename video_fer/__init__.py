"""video_fer: self-supervised facial action learning from video.

One wing per verb over shared floors (see docs/ARCHITECTURE.md): core modules (``errors``,
``io``, ``config``, ``video``, ``runtime``, ``version``), ``faces/`` and ``models/``, then
``data/`` (prepare), ``train/``, ``evaluate/``, ``track/`` and ``cli/``.

The root stays cheap to import (no torch): the public calls below import their part on use.
The per-frame tracker is ``video_fer.track.track`` (``video_fer.track`` is the wing itself).
"""
from video_fer.errors import VideoFerError
from video_fer.version import __version__


def load_model(path, map_location="cpu"):
    """Load a model saved with :func:`save_model` (``config.json`` + ``model.safetensors``); eval mode."""
    from video_fer.models.checkpoint import load_model as load

    return load(path, map_location)


def save_model(model, directory, extra=None):
    """Write a registered model to ``directory`` (see :func:`video_fer.models.checkpoint.save_model`)."""
    from video_fer.models.checkpoint import save_model as save

    return save(model, directory, extra)


def load_bundle(path, map_location="cpu"):
    """Load a model bundle written by ``video-fer bundle`` (see :mod:`video_fer.track.bundle`)."""
    from video_fer.track.bundle import load_bundle as load

    return load(path, map_location)


__all__ = ["VideoFerError", "__version__", "load_bundle", "load_model", "save_model"]
