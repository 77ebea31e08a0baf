"""Exceptions raised by video_fer. Every message names the input at fault and what to do."""


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
