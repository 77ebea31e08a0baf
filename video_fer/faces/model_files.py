"""Finding model weight files: explicit path, environment variable, user cache, then download.

Order for each file (first hit wins):
1. the path the caller gives (must exist);
2. the file's environment variable (e.g. ``VIDEO_FER_MEDIAPIPE_MODEL``);
3. the user cache: ``$VIDEO_FER_CACHE`` or ``~/.cache/video_fer/models/`` (plus any extra
   folder the file declares, e.g. torch hub's checkpoints folder for FAN);
4. a download from the official URL into the cache (atomic, sha256 checked when known).
When all fail, :class:`ModelFileError` names the file, the places searched and the env var.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from video_fer.errors import ModelFileError
from video_fer.io import atomic_path

CACHE_ENV = "VIDEO_FER_CACHE"
DOWNLOAD_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ModelFile:
    """A weight file the package can locate or fetch.

    Attributes:
        file_name: name in the cache folder.
        env_var: environment variable that may hold a full path to the file.
        url: official download address (None: cannot be downloaded by us).
        sha256: expected checksum of the download, or None when the publisher gives none.
        extra_folders: other folders to look in (callables so they follow the environment at call time).
    """

    file_name: str
    env_var: str
    url: str | None = None
    sha256: str | None = None
    extra_folders: tuple[Callable[[], Path], ...] = field(default=())


MEDIAPIPE_FACE_LANDMARKER = ModelFile(
    file_name="face_landmarker.task",
    env_var="VIDEO_FER_MEDIAPIPE_MODEL",
    url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/face_landmarker.task",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
)


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoints folder (``$TORCH_HOME/hub/checkpoints``), where face-alignment caches FAN."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


# face-alignment 1.4/1.5 download URL for the 2-D FAN (see face_alignment.api.models_urls); the
# name carries a hash prefix only, so no full sha256 is checked.
FAN_2D = ModelFile(
    file_name="2DFAN4-11f355bf06.pth.tar",
    env_var="VIDEO_FER_FAN_MODEL",
    url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    extra_folders=(torch_hub_checkpoints,),
)


def cache_dir() -> Path:
    """The user model cache: ``$VIDEO_FER_CACHE`` or ``~/.cache/video_fer/models``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "video_fer" / "models"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, destination: Path, timeout: float = DOWNLOAD_TIMEOUT_SECONDS) -> None:
    """Fetch ``url`` to ``destination`` (the caller makes it atomic); raises OSError on any failure."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as handle:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            handle.write(chunk)


def _where_to_put(model: ModelFile) -> str:
    places = [str(cache_dir() / model.file_name)] + [str(folder() / model.file_name) for folder in model.extra_folders]
    return " or ".join(places) + f", or set {model.env_var}=/path/to/{model.file_name}"


def _verified(model: ModelFile, path: Path) -> Path:
    """Return ``path`` when its checksum matches (or none is known); else ModelFileError."""
    if model.sha256 is not None:
        actual = sha256_of(path)
        if actual != model.sha256:
            raise ModelFileError(
                f"{path}: sha256 {actual} does not match the expected {model.sha256} for {model.file_name}; "
                f"delete it and download it again from {model.url}"
            )
    return path


def resolve_model_file(
    model: ModelFile,
    explicit: str | os.PathLike | None = None,
    download: bool = True,
    downloader: Callable[[str, Path], None] = download_file,
) -> Path:
    """Locate ``model`` on disk (see module doc for the order); download it into the cache if allowed.

    Returns:
        the path of an existing file.
    Raises:
        ModelFileError: explicit/env path missing, checksum mismatch, or not found and not downloadable.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ModelFileError(f"{path}: model file {model.file_name} given explicitly does not exist")
        return path
    from_env = os.environ.get(model.env_var)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise ModelFileError(f"{path}: ${model.env_var} points to a file that does not exist; fix or unset it")
        return path
    cached = cache_dir() / model.file_name
    for candidate in [cached] + [folder() / model.file_name for folder in model.extra_folders]:
        if candidate.is_file():
            return _verified(model, candidate)
    if not download or model.url is None:
        raise ModelFileError(f"model file {model.file_name} not found; put it at {_where_to_put(model)}")
    try:
        with atomic_path(cached) as partial:
            downloader(model.url, partial)
            _verified(model, partial)  # a bad download never lands under the final name
    except ModelFileError:
        raise
    except Exception as error:  # any network / disk failure: tell the user where to put the file by hand
        raise ModelFileError(
            f"model file {model.file_name} not found and its download from {model.url} failed ({error}); "
            f"download it elsewhere and put it at {_where_to_put(model)}"
        ) from error
    return cached
