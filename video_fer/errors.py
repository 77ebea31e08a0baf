"""Exceptions raised by video_fer. Every message names the input at fault and what to do."""

EXIT_ERROR = 2  # exit code of `video-fer` and the recipes when one of these ends them (one line on stderr)


class VideoFerError(Exception):
    """Base class of every error video_fer raises on purpose."""


class VideoReadError(VideoFerError):
    """A video could not be opened or decoded (missing, empty, truncated, not a video...)."""


class ModelFileError(VideoFerError):
    """A model weight file is missing, corrupt or cannot be downloaded."""


class CheckpointError(VideoFerError):
    """A checkpoint directory does not match its config or is incomplete."""


class LabelFileError(VideoFerError):
    """A label / annotation / landmark file is malformed (names file and line)."""


class CacheError(VideoFerError):
    """A face-track cache is missing, inconsistent or was written with other settings."""


class ConfigError(VideoFerError):
    """A configuration file or command-line override is invalid."""


class OutputError(VideoFerError, OSError):
    """An output could not be written (no space left, file size limit, read-only, a file in the way).

    Also an ``OSError``, so code that tolerates an unwritable place (a read-only cache) still does.
    """


class CropMismatchError(ConfigError, CheckpointError):
    """Face crops differ from what an encoder was trained on (side or alignment): a setting or a saved model at fault."""
