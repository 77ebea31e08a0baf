"""Input videos of ``prepare`` and ``track``: files, folders and ``.txt`` lists -> a sorted list with keys.

Folders are searched recursively for :data:`~video_fer.video.VIDEO_EXTENSIONS`; ``.txt`` lists
hold one path per line (``#`` comments). The list is sorted by relative path, so every
machine given the same inputs agrees on it, and ``--shard i/n`` takes every n-th video.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from video_fer.errors import ConfigError
from video_fer.video import VIDEO_EXTENSIONS

_MAX_KEY_CHARS = 160


@dataclass(frozen=True)
class VideoInput:
    """One input video.

    Attributes:
        path: the file as given (absolute or relative to the working directory).
        relative: its path relative to the input root that found it (the folder given, the
            folder of the ``.txt`` list, or just the file name).
        key: unique, file-name safe name of its manifest and the prefix of its track ids.
        identity: whose face it shows, from the folder layout (``<identity>/<video>`` or
            VoxCeleb's ``<identity>/<clip>/<video>``: the first folder level), else the file stem.
    """

    path: Path
    relative: Path
    key: str
    identity: str


def _video_suffixes() -> tuple[str, ...]:
    return tuple(suffix.lower() for suffix in VIDEO_EXTENSIONS)


def _read_list_file(list_file: Path) -> Iterator[tuple[Path, Path]]:
    """(path, relative) of each line of a ``.txt`` list; blank lines and ``#`` comments are ignored."""
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{list_file}: cannot read the list of videos ({error})") from None
    for line in lines:
        entry = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if entry:
            written = Path(entry).expanduser()
            path = written if written.is_absolute() else list_file.parent / written
            yield path, (Path(written.name) if written.is_absolute() else written)


def _found_videos(inputs: Sequence[str | os.PathLike]) -> Iterator[tuple[Path, Path]]:
    suffixes = _video_suffixes()
    for item in inputs:
        item = Path(item).expanduser()
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                relative = path.relative_to(item)
                hidden = any(part.startswith(".") for part in relative.parts)
                if path.suffix.lower() in suffixes and path.is_file() and not hidden:
                    yield path, relative
        elif item.suffix.lower() == ".txt" and item.is_file():
            yield from _read_list_file(item)
        elif item.is_file():
            yield item, Path(item.name)
        else:
            raise ConfigError(f"{item}: no such file or folder; give video files, folders of videos or a .txt list")


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text).lstrip(".") or "video"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def video_identity(relative: Path) -> str:
    """First folder of the path relative to its input root, else the file stem."""
    return relative.parts[0] if len(relative.parts) >= 2 else relative.stem


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[VideoInput]:
    """Files, folders and ``.txt`` lists -> sorted, de-duplicated :class:`VideoInput` list.

    Relative paths inside a ``.txt`` list are relative to the list's folder.

    Order is by relative path (identical on every machine given the same inputs), so
    shards agree. Keys are the relative path without suffix, ``/`` -> ``__``; clashes
    (``a.mp4`` and ``a.mov``) get the suffix, then a hash.

    Raises:
        ConfigError: an input does not exist, or no video was found.
    """
    seen: dict[str, tuple[Path, Path]] = {}
    for path, relative in _found_videos(inputs):
        seen.setdefault(str(path.resolve()), (path, relative))  # the same file given twice counts once
    if not seen:
        raise ConfigError(f"{', '.join(map(str, inputs)) or '(no input)'}: no video found; "
                          f"looked for files ending in {', '.join(_video_suffixes())}")
    # Order and clash hashes use the paths as given (not resolved), so every machine that runs
    # the same command agrees even when its mount points differ.
    ordered = sorted(((str(path), (path, relative)) for path, relative in seen.values()),
                     key=lambda item: (item[1][1].as_posix(), item[0]))

    def base_key(relative: Path) -> str:
        return "__".join(_sanitise(part) for part in relative.with_suffix("").parts)

    counts = defaultdict(int)
    for _, (_, relative) in ordered:
        counts[base_key(relative)] += 1
    keys_used: set[str] = set()
    videos = []
    for given, (path, relative) in ordered:
        key = base_key(relative)
        if counts[key] > 1:
            key = f"{key}_{_sanitise(relative.suffix.lstrip('.'))}"
        if key in keys_used or len(key) > _MAX_KEY_CHARS:
            key = f"{key[:_MAX_KEY_CHARS]}_{_digest(given)}"
        keys_used.add(key)
        videos.append(VideoInput(path=path, relative=relative, key=key, identity=video_identity(relative)))
    return videos


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ConfigError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4 for the first of 4 machines")
    return int(match.group(1)), int(match.group(2))


def select_shard(videos: Sequence[VideoInput], shard: tuple[int, int]) -> list[VideoInput]:
    """Every n-th video starting at i: shards 0..n-1 partition the sorted list."""
    index, count = shard
    if not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count}: need 0 <= i < n")
    return list(videos[index::count])
