"""video_fer: self-supervised facial action learning from video."""
from video_fer.errors import VideoFerError

__version__ = "0.1.0"


def load_model(path):
    """Load a model saved with :func:`video_fer.checkpoint.save_model` (``config.json`` + ``model.safetensors``)."""
    from video_fer.checkpoint import load_model as _load_model

    return _load_model(path)


def track(path, model, **settings):
    """Per-frame AU / expression / valence-arousal table of one clip (see :func:`video_fer.tracks.track`)."""
    from video_fer.tracks import track as _track

    return _track(path, model, **settings)


__all__ = ["VideoFerError", "load_model", "track", "__version__"]
