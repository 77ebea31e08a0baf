"""video_fer: self-supervised facial action learning from video."""
from video_fer.errors import VideoFerError

__version__ = "0.1.0"


def load_model(path):
    """Load a model saved with :func:`video_fer.checkpoint.save_model` (``config.json`` + ``model.safetensors``)."""
    from video_fer.checkpoint import load_model as _load_model

    return _load_model(path)


__all__ = ["VideoFerError", "load_model", "__version__"]
