"""The face-track cache: one directory of aligned face tracks, written atomically, read anywhere.

Layout of a cache directory::

    cache.json                     settings every track was made with (alignment, landmarker, size, fps, ...)
    tracks/<track_id>.mp4          aligned RGB crops S x S, H.264 (yuv420p, short GOP, no B-frames)
    tracks/<track_id>.npz          per-frame arrays of the track (see TRACK_ARRAYS)
    manifests/<video_key>.json     one per input video: status ok|skipped, counts, its track rows
    index.csv                      one row per track, rebuilt from the manifests
    skipped.csv                    one row per skipped video (source, reason), rebuilt from the manifests

The manifests are the source of truth. A video's manifest is written (atomically) only
after every file of its tracks is in place, so a track that is not in a manifest does not
exist for readers; ``index.csv`` and ``skipped.csv`` are derived files, rebuilt at the end of
every run and by the reader whenever a manifest is newer than them, so shards writing into
one cache from many machines never corrupt them.

Writer API (stable; also used to write synthetic caches)::

    writer = CacheWriter("cache/")
    writer.begin({"alignment": AlignmentSpec(size=256).to_dict(), "landmarker": "synthetic",
                  "size": 256, "fps": None, "min_track_frames": 1})
    row = writer.write_track("face0__t0000", frames_uint8_nSS3,
                             {"frame_indices": np.arange(n), "landmarks_aligned": lm_n682},
                             source="synthetic://face0", identity="face0", fps=25.0)
    writer.commit_video("face0", {"source": "synthetic://face0", "status": "ok", "tracks": [row]})
    writer.rebuild_index()

Reader::

    cache = FaceTrackCache("cache/")
    cache.tracks[0].track_id, cache.tracks[0]["num_frames"]
    cache.read_frames(track_id, [0, 5, 9])   # uint8 (3, S, S, 3), positions inside the track
    cache.track_arrays(track_id)["landmarks_aligned"]
"""
from __future__ import annotations

import collections
import contextlib
import csv
import functools
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from video_fer.errors import CacheError
from video_fer.io import atomic_write
from video_fer.version import __version__

CACHE_FORMAT_VERSION = 1
SETTINGS_FILE = "cache.json"
INDEX_FILE = "index.csv"
SKIPPED_FILE = "skipped.csv"
TRACKS_DIR = "tracks"
MANIFESTS_DIR = "manifests"

# Settings that change what is in the cache: a second run must use the same values.
# (video_fer_version is recorded but not compared, so a package upgrade can resume a cache.)
COMPARED_SETTINGS = ("size", "landmarker", "fps", "min_track_frames", "alignment")  # simple ones first: clearer message

# Arrays of tracks/<track_id>.npz, first axis n = frames of the track.
TRACK_ARRAYS = {
    "frame_indices": "int64 (n,) source-video frame index of each crop",
    "timestamps": "float64 (n,) source-video time of each crop, seconds",
    "landmarks_source": "float32 (n, 68, 2) iBUG-68 landmarks in source pixels",
    "landmarks_aligned": "float32 (n, 68, 2) the same landmarks in crop pixels",
    "matrices": "float32 (n, 2, 3) affine map source pixels -> crop pixels",
    "scores": "float32 (n,) landmarker confidence",
    "boxes": "float32 (n, 4) face box x0, y0, x1, y1 in source pixels (optional)",
    "blendshapes": "float32 (n, 52) MediaPipe blendshape scores (optional)",
}
NPZ_BACKEND_KEY = "landmarker"  # 0-d string array naming the landmark backend

INDEX_COLUMNS = ("track_id", "video_key", "source", "identity", "first_frame", "last_frame", "num_frames",
                 "fps", "landmarker", "size", "path")
SKIPPED_COLUMNS = ("source", "video_key", "reason")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_+=-][A-Za-z0-9._+=-]*$")  # portable file names, never hidden
_INHERITED_DECODERS: list = []  # decoders a forked process inherited; kept alive on purpose (see _reader)
_READER_CACHE_SIZE = 8  # open decord readers kept per process (tracks are small; opening one costs ~1 ms)
_ARRAYS_CACHE_SIZE = 64


def _check_name(kind: str, name: str) -> str:
    """Track ids and video keys become file names: keep them portable."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name.startswith(".") or len(name) > 200:
        raise CacheError(
            f"{kind} {name!r}: use letters, digits and . _ + = - only (no path separators, not starting with '.'), "
            "at most 200 characters"
        )
    return name


def partial_path(final: Path) -> Path:
    """Temp name of a file being written: hidden, and tagged so a later run can find and remove it."""
    return final.with_name(f".{final.stem}.partial{final.suffix}")


def _as_uint8_frames(frames: Any, size: int | None, what: str) -> np.ndarray:
    """Tensor/array of crops -> contiguous uint8 numpy ``(n, S, S, 3)``, checked."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2]:
        raise CacheError(f"{what}: expected uint8 crops (n, S, S, 3), got {frames.dtype} {frames.shape}")
    if size is not None and frames.shape[1] != size:
        raise CacheError(f"{what}: crops are {frames.shape[1]} px but this track/cache is {size} px")
    return np.ascontiguousarray(frames)


@functools.lru_cache(maxsize=None)
def check_readable_size(size: int) -> None:
    """Refuse a crop side whose tracks decord (the cache's reader) cannot decode.

    decord 0.6 takes the row stride for the channel count on some frame widths (8, 12, 16, 24, 48,
    72 px among 8..128) and cannot copy such frames out: a cache of that size could be written but
    never read. A two-frame track of ``size`` is encoded like :class:`TrackVideoWriter` does and read
    back (a few ms, once per size and process).

    Raises:
        CacheError: naming the size and the nearest readable sizes.
    """
    if _decodes(size):
        return
    near = [other for step in range(2, 66, 2) for other in (size - step, size + step)
            if other >= 8 and _decodes(other)][:2]
    raise CacheError(f"--size {size}: the cache's reader (decord) cannot decode {size} px tracks (a decord bug with "
                     f"some frame widths); choose another size, e.g. {' or '.join(map(str, sorted(near)))}")


@functools.lru_cache(maxsize=None)
def _decodes(size: int) -> bool:
    """True when decord reads back a track of ``size`` px crops as written."""
    import tempfile

    import decord

    with tempfile.TemporaryDirectory(prefix="video_fer_size_") as folder:
        writer = TrackVideoWriter(folder, "probe", size, 25.0)
        crops = np.zeros((2, size, size, 3), np.uint8)
        crops[1] = 255
        writer.append(crops)
        writer.finish({"frame_indices": np.arange(2)}, "probe")
        try:
            frames = decord.VideoReader(str(writer.video_path), ctx=decord.cpu(0), num_threads=1).get_batch([0, 1])
        except (RuntimeError, decord.DECORDError):
            return False
        return tuple(frames.shape) == (2, size, size, 3)


class TrackVideoWriter:
    """Streams the crops of one track into a hidden temp mp4; :meth:`finish` puts mp4 + npz in place.

    H.264 via PyAV (libx264, yuv420p, constant quality ``crf``), a keyframe every ``gop``
    frames and no B-frames so decord can seek to any crop by decoding at most ``gop`` frames.

    Args:
        tracks_dir: the cache's ``tracks/`` folder.
        track_id: file name stem of the track.
        size: crop side S (even).
        fps: frame rate written in the mp4 (the rate the track was sampled at).
        crf, gop, preset, threads: x264 settings.
    """

    def __init__(self, tracks_dir: str | os.PathLike, track_id: str, size: int, fps: float, crf: int = 18,
                 gop: int = 12, preset: str = "veryfast", threads: int = 1):
        import av  # PyAV: only writers need it

        self.track_id = _check_name("track id", track_id)
        self.size = int(size)
        self.fps = float(fps)
        self.video_path = Path(tracks_dir) / f"{track_id}.mp4"
        self.arrays_path = Path(tracks_dir) / f"{track_id}.npz"
        self._temp_video = partial_path(self.video_path)
        self._temp_video.parent.mkdir(parents=True, exist_ok=True)
        self.num_frames = 0
        self._container = av.open(str(self._temp_video), mode="w", format="mp4")
        rate = Fraction(self.fps).limit_denominator(1001) if self.fps > 0 else Fraction(25)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width = self._stream.height = self.size
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.thread_count = int(threads)
        self._stream.options = {"crf": str(crf), "g": str(gop), "bf": "0", "preset": preset,
                                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        self._closed = False

    def append(self, crops: Any) -> None:
        """Encode crops uint8 ``(k, S, S, 3)`` RGB (numpy or tensor) at the end of the track."""
        import av

        crops = _as_uint8_frames(crops, self.size, f"track {self.track_id}")
        for crop in crops:
            frame = av.VideoFrame.from_ndarray(crop, format="rgb24")
            frame.pts = self.num_frames
            self._container.mux(self._stream.encode(frame))
            self.num_frames += 1

    def _close_container(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._container.mux(self._stream.encode(None))  # flush delayed frames
            finally:
                self._container.close()

    def finish(self, arrays: Mapping[str, Any], backend: str) -> None:
        """Flush the mp4, write the npz, rename both into place (mp4 first; the manifest comes later).

        Args:
            arrays: per-frame arrays (:data:`TRACK_ARRAYS`), each with first axis = frames appended.
            backend: landmark backend name stored in the npz.
        """
        try:
            self._close_container()
            if self.num_frames == 0:
                raise CacheError(f"track {self.track_id}: no frame was appended; drop empty tracks before finishing")
            checked = _check_track_arrays(arrays, self.num_frames, f"track {self.track_id}")
            temp_arrays = partial_path(self.arrays_path)
            with open(temp_arrays, "wb") as handle:  # a file object: np.savez must not append '.npz'
                np.savez(handle, **checked, **{NPZ_BACKEND_KEY: np.asarray(str(backend))})
            os.replace(self._temp_video, self.video_path)
            os.replace(temp_arrays, self.arrays_path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the temp files (a dropped or failed track leaves nothing behind)."""
        with contextlib.suppress(Exception):
            self._close_container()
        for path in (self._temp_video, partial_path(self.arrays_path)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _check_track_arrays(arrays: Mapping[str, Any], num_frames: int, what: str) -> dict[str, np.ndarray]:
    """Convert to numpy, check every per-frame array has ``num_frames`` rows; frame_indices is required."""
    if "frame_indices" not in arrays:
        raise CacheError(f"{what}: arrays need 'frame_indices' (n,) (source frame of each crop)")
    checked = {}
    for key, value in arrays.items():
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        if key in TRACK_ARRAYS and (value.ndim == 0 or value.shape[0] != num_frames):
            raise CacheError(f"{what}: array {key!r} has shape {value.shape}; expected {num_frames} rows (one per crop)")
        checked[key] = value
    checked["frame_indices"] = checked["frame_indices"].astype(np.int64)
    if np.any(np.diff(checked["frame_indices"]) <= 0):
        raise CacheError(f"{what}: frame_indices must be strictly increasing")
    return checked


def track_row(track_id: str, arrays: Mapping[str, np.ndarray], *, video_key: str, source: str, identity: str,
              fps: float, landmarker: str, size: int) -> dict[str, Any]:
    """The manifest/index row of a finished track."""
    frame_indices = np.asarray(arrays["frame_indices"])
    return {
        "track_id": track_id, "video_key": video_key, "source": str(source), "identity": str(identity),
        "first_frame": int(frame_indices[0]), "last_frame": int(frame_indices[-1]),
        "num_frames": int(frame_indices.shape[0]), "fps": float(fps), "landmarker": str(landmarker),
        "size": int(size), "path": f"{TRACKS_DIR}/{track_id}.mp4",
    }


class CacheWriter:
    """Writes tracks and per-video manifests into a cache directory (safe for concurrent shards).

    Args:
        root: cache directory (created).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.tracks_dir = self.root / TRACKS_DIR
        self.manifests_dir = self.root / MANIFESTS_DIR
        self.settings: dict[str, Any] | None = None

    # -- settings -------------------------------------------------------------------------
    def begin(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Create the cache or check it was made with the same settings; returns the stored settings.

        Args:
            settings: at least ``alignment`` (AlignmentSpec.to_dict()), ``landmarker`` (str), ``size`` (int);
                ``fps`` (None = every frame) and ``min_track_frames`` default to None / 1.

        Raises:
            CacheError: the cache holds tracks made with a different value of one of
                :data:`COMPARED_SETTINGS` (the message names it).
        """
        missing = [key for key in ("alignment", "landmarker", "size") if key not in settings]
        if missing:
            raise CacheError(f"{self.root}: cache settings need {missing}")
        size = int(settings["size"])
        if size < 8 or size % 2:
            raise CacheError(f"{self.root}: crop size {size} must be an even number >= 8 (H.264 yuv420p)")
        wanted = {"format_version": CACHE_FORMAT_VERSION, "video_fer_version": __version__,
                  "fps": None, "min_track_frames": 1, **dict(settings), "size": size}
        wanted = json.loads(json.dumps(wanted))  # tuples -> lists, so comparison with the file is exact
        for folder in (self.root, self.tracks_dir, self.manifests_dir):
            folder.mkdir(parents=True, exist_ok=True)
        settings_path = self.root / SETTINGS_FILE
        if settings_path.exists():
            existing = read_settings(self.root)
            for key in COMPARED_SETTINGS:
                if existing.get(key) != wanted.get(key):
                    raise CacheError(
                        f"{self.root}: this cache was made with {key}={_short(existing.get(key))}, this run asks for "
                        f"{key}={_short(wanted.get(key))}; use the same setting or another --out folder"
                    )
            self.settings = existing
        else:
            with atomic_write(settings_path) as handle:
                json.dump(wanted, handle, indent=2)
            self.settings = wanted
        return self.settings

    def require_settings(self) -> dict[str, Any]:
        """The cache's settings: those given to :meth:`begin`, else read from ``cache.json`` (worker processes)."""
        if self.settings is None:
            if not (self.root / SETTINGS_FILE).exists():
                raise CacheError(f"{self.root}: call CacheWriter.begin(settings) before writing tracks")
            self.settings = read_settings(self.root)
        return self.settings

    # -- tracks ---------------------------------------------------------------------------
    def open_track(self, track_id: str, fps: float, **encoder_options: Any) -> TrackVideoWriter:
        """Start streaming one track's crops (see :class:`TrackVideoWriter`)."""
        settings = self.require_settings()
        return TrackVideoWriter(self.tracks_dir, track_id, settings["size"], fps, **encoder_options)

    def write_track(self, track_id: str, frames: Any, arrays: Mapping[str, Any], *, source: str, identity: str,
                    fps: float, video_key: str | None = None, landmarker: str | None = None) -> dict[str, Any]:
        """Write one whole track at once (atomic mp4 + npz) and return its manifest row.

        Args:
            track_id: file stem (letters, digits, ``._+=-``).
            frames: uint8 ``(n, S, S, 3)`` RGB crops (S = the cache's size).
            arrays: per-frame arrays (:data:`TRACK_ARRAYS`), ``frame_indices (n,)`` required;
                ``timestamps`` default to ``frame_indices / fps``.
            source, identity: where the track comes from and whose face it is.
            fps: frame rate of the track (of ``frame_indices`` spacing 1).
            video_key: manifest the track will belong to (default: ``source``'s stem).
            landmarker: backend name (default: the cache's).

        Returns:
            dict row for ``commit_video(..., {"tracks": [row, ...]})``.
        """
        settings = self.require_settings()
        frames = _as_uint8_frames(frames, settings["size"], f"track {track_id}")
        arrays = dict(arrays)
        if "timestamps" not in arrays and "frame_indices" in arrays:
            arrays["timestamps"] = np.asarray(arrays["frame_indices"], dtype=np.float64) / float(fps)
        landmarker = landmarker or settings["landmarker"]
        writer = self.open_track(track_id, fps)
        try:
            writer.append(frames)
        except BaseException:
            writer.abort()
            raise
        writer.finish(arrays, landmarker)
        checked = {"frame_indices": np.asarray(arrays["frame_indices"])}
        return track_row(track_id, checked, video_key=video_key or Path(str(source)).stem, source=source,
                         identity=identity, fps=fps, landmarker=landmarker, size=settings["size"])

    # -- manifests ------------------------------------------------------------------------
    def manifest_path(self, video_key: str) -> Path:
        return self.manifests_dir / f"{_check_name('video key', video_key)}.json"

    def has_manifest(self, video_key: str) -> bool:
        """True when the video is done (its tracks are complete): a rerun skips it."""
        return self.manifest_path(video_key).exists()

    def remove_partial_outputs(self, video_key: str) -> int:
        """Delete what an interrupted run left for a video without manifest: temp files and orphan tracks.

        Track files of ``video_key`` are named ``<video_key>__t<number>``; returns how many files were removed.
        """
        pattern = re.compile(re.escape(video_key) + r"__t\d+(\.partial)?\.(mp4|npz)$")
        removed = 0
        candidates = list(self.tracks_dir.glob(f"{video_key}__t*")) + list(self.tracks_dir.glob(f".{video_key}__t*"))
        candidates += list(self.manifests_dir.glob(f".{video_key}.json.*.tmp"))
        for path in candidates:
            if path.parent == self.manifests_dir or pattern.match(path.name.lstrip(".")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def remove_all_partial_files(self) -> int:
        """Delete every temp file in the cache (only when no other run writes into it, e.g. an unsharded run)."""
        removed = 0
        for path in list(self.tracks_dir.glob(".*.partial.*")) + list(self.manifests_dir.glob(".*.tmp")) \
                + list(self.root.glob(".*.tmp")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    def commit_video(self, video_key: str, manifest: Mapping[str, Any]) -> Path:
        """Write ``manifests/<video_key>.json`` atomically: from now on the video's tracks exist.

        Args:
            video_key: unique name of the input video (file-name safe).
            manifest: at least ``source``; ``status`` ('ok' | 'skipped', default 'ok'), ``reason``
                (required when skipped), ``tracks`` (rows from :meth:`write_track` / :func:`track_row`),
                and any counts (fps, num_frames, frames_with_face, ...).

        Raises:
            CacheError: a listed track's mp4 or npz is missing, or the manifest is malformed.
        """
        self.require_settings()
        path = self.manifest_path(video_key)
        data = {"format_version": CACHE_FORMAT_VERSION, "video_key": video_key, "status": "ok", "reason": None,
                "tracks": [], **dict(manifest)}
        if "source" not in data:
            raise CacheError(f"manifest of {video_key}: needs 'source' (the input video path)")
        if data["status"] not in ("ok", "skipped"):
            raise CacheError(f"manifest of {video_key}: status must be 'ok' or 'skipped', got {data['status']!r}")
        if data["status"] == "skipped" and not data["reason"]:
            raise CacheError(f"manifest of {video_key}: a skipped video needs a 'reason'")
        for row in data["tracks"]:
            for suffix in (".mp4", ".npz"):
                if not (self.tracks_dir / f"{row['track_id']}{suffix}").exists():
                    raise CacheError(
                        f"manifest of {video_key}: track {row['track_id']} has no {TRACKS_DIR}/{row['track_id']}{suffix}; "
                        "finish every track before committing its video"
                    )
        with atomic_write(path) as handle:
            json.dump(data, handle, indent=1, default=_json_default)
        return path

    def rebuild_index(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Rebuild ``index.csv`` and ``skipped.csv`` from all manifests (atomic); returns (tracks, skipped)."""
        return rebuild_index(self.root)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def read_settings(root: str | os.PathLike) -> dict[str, Any]:
    """``cache.json`` of a cache, with a clear error when it is missing or damaged."""
    path = Path(root) / SETTINGS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{root}: not a face-track cache (no {SETTINGS_FILE}); create one with `video-fer prepare`") from None
    except json.JSONDecodeError as error:
        raise CacheError(f"{path}: damaged settings file ({error}); restore it or re-create the cache") from None


def read_manifests(root: str | os.PathLike) -> list[dict[str, Any]]:
    """All manifests of a cache, sorted by video key (damaged ones raise CacheError naming the file)."""
    manifests = []
    for path in sorted((Path(root) / MANIFESTS_DIR).glob("*.json")):
        try:
            manifests.append(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise CacheError(f"{path}: damaged manifest ({error}); delete it and rerun prepare to redo that video") from None
    return manifests


def _rows_from_manifests(manifests: Iterable[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
    tracks, skipped = [], []
    for manifest in manifests:
        if manifest.get("status") == "skipped":
            skipped.append({"source": manifest["source"], "video_key": manifest.get("video_key", ""),
                            "reason": manifest.get("reason", "")})
        tracks.extend(manifest.get("tracks", []))
    return tracks, skipped


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    with atomic_write(path, mode="w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def rebuild_index(root: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``index.csv`` and ``skipped.csv`` from the manifests; returns (track rows, skipped rows).

    The files get the manifests folder's modification time as read *before* listing it,
    so a manifest added meanwhile (another shard) makes them stale for the next reader.
    """
    root = Path(root)
    manifests_dir = root / MANIFESTS_DIR
    manifests_dir.mkdir(parents=True, exist_ok=True)
    listed_at = manifests_dir.stat().st_mtime_ns
    tracks, skipped = _rows_from_manifests(read_manifests(root))
    for path, columns, rows in ((root / INDEX_FILE, INDEX_COLUMNS, tracks), (root / SKIPPED_FILE, SKIPPED_COLUMNS, skipped)):
        _write_csv(path, columns, rows)
        os.utime(path, ns=(listed_at, listed_at))
    return tracks, skipped


def _index_is_fresh(root: Path) -> bool:
    index, skipped, manifests_dir = root / INDEX_FILE, root / SKIPPED_FILE, root / MANIFESTS_DIR
    if not (index.exists() and skipped.exists() and manifests_dir.exists()):
        return False
    newest_manifest_change = manifests_dir.stat().st_mtime_ns
    return min(index.stat().st_mtime_ns, skipped.stat().st_mtime_ns) >= newest_manifest_change


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class TrackInfo:
    """One row of the index: a face track of the cache. ``info["num_frames"]`` works as well as ``info.num_frames``."""

    track_id: str
    video_key: str
    source: str
    identity: str
    first_frame: int
    last_frame: int
    num_frames: int
    fps: float
    landmarker: str
    size: int
    path: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "TrackInfo":
        types = {"first_frame": int, "last_frame": int, "num_frames": int, "size": int, "fps": float}
        try:
            return cls(**{f.name: types.get(f.name, str)(row[f.name]) for f in fields(cls)})
        except (KeyError, ValueError) as error:
            raise CacheError(f"index row {dict(row)}: bad or missing field ({error}); rebuild the index") from None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaceTrackCache:
    """Read a face-track cache: index, settings, crops (decord) and per-frame arrays.

    Decoders are opened lazily and kept in a small per-process LRU, so one instance can be
    handed to DataLoader workers (it pickles without open readers; each worker opens its own).

    Attributes:
        root: the cache directory.
        settings: contents of ``cache.json``.
        alignment: :class:`~video_fer.faces.alignment.AlignmentSpec` the crops were made with.
        size: crop side S.
        tracks: list of :class:`TrackInfo`, sorted by (video key, track id).
        skipped: list of dicts ``{"source", "video_key", "reason"}``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CacheError(f"{self.root}: no such cache folder; create it with `video-fer prepare ... --out {self.root}`")
        self.settings = read_settings(self.root)
        self.size = int(self.settings["size"])
        if _index_is_fresh(self.root):
            track_rows, self.skipped = _read_csv(self.root / INDEX_FILE), _read_csv(self.root / SKIPPED_FILE)
        else:
            try:  # the index is derived: rebuild it; a read-only cache just uses the in-memory rows
                track_rows, self.skipped = rebuild_index(self.root)
            except OSError:
                track_rows, self.skipped = _rows_from_manifests(read_manifests(self.root))
        self.tracks = [TrackInfo.from_row(row) for row in track_rows]
        self._by_id = {track.track_id: track for track in self.tracks}
        self._readers: collections.OrderedDict = collections.OrderedDict()
        self._arrays: collections.OrderedDict = collections.OrderedDict()
        self._pid = os.getpid()

    @property
    def alignment(self):
        from video_fer.faces.alignment import AlignmentSpec

        return AlignmentSpec.from_dict(self.settings["alignment"])

    def __len__(self) -> int:
        return len(self.tracks)

    def __repr__(self) -> str:
        return f"FaceTrackCache({str(self.root)!r}, tracks={len(self.tracks)}, skipped={len(self.skipped)}, size={self.size})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_arrays"] = collections.OrderedDict(), collections.OrderedDict()
        return state

    def track(self, track_id: str) -> TrackInfo:
        """Index row of ``track_id`` (CacheError when unknown)."""
        try:
            return self._by_id[track_id]
        except KeyError:
            raise CacheError(f"{self.root}: no track {track_id!r} in the index ({len(self.tracks)} tracks)") from None

    def _reader(self, track_id: str):
        import decord

        if os.getpid() != self._pid:  # forked into a worker: decoders are not shareable across processes
            # Never destroy the inherited decoders here: their destructor waits for decoding
            # threads that do not exist after fork (the worker hangs). Keep them unreachable instead.
            _INHERITED_DECODERS.extend(self._readers.values())
            self._readers = collections.OrderedDict()
            self._pid = os.getpid()
        reader = self._readers.pop(track_id, None)
        if reader is None:
            info = self.track(track_id)
            path = self.root / info.path
            try:
                reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            except (RuntimeError, decord.DECORDError) as error:
                raise CacheError(f"{path}: cannot open track video ({' '.join(str(error).split())[:200]}); "
                                 "delete its manifest and rerun prepare") from None
        self._readers[track_id] = reader
        while len(self._readers) > _READER_CACHE_SIZE:
            self._readers.popitem(last=False)
        return reader

    def read_frames(self, track_id: str, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Crops at positions ``indices`` (0 .. num_frames-1 inside the track) -> uint8 ``(T, S, S, 3)`` RGB."""
        info = self.track(track_id)
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        indices = np.atleast_1d(np.asarray(indices)).astype(np.int64)
        bad = indices[(indices < 0) | (indices >= info.num_frames)]
        if bad.size:
            raise CacheError(f"track {track_id}: positions {bad[:5].tolist()} out of range [0, {info.num_frames})")
        if indices.size == 0:
            return torch.empty((0, self.size, self.size, 3), dtype=torch.uint8)
        import decord

        try:
            batch = self._reader(track_id).get_batch(indices)
        except (RuntimeError, decord.DECORDError) as error:  # data garbled after an intact header, a bad disk
            self._readers.pop(track_id, None)
            raise CacheError(f"{self.root / info.path}: cannot decode crops {indices[:5].tolist()} "
                             f"({' '.join(str(error).split())[:160]}); the track file is damaged: delete "
                             f"manifests/{info.video_key}.json and rerun prepare, or let training skip it "
                             "(data.skip_bad_tracks=true)") from None
        return batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch.asnumpy())

    def track_arrays(self, track_id: str) -> dict[str, np.ndarray]:
        """The per-frame arrays of a track (:data:`TRACK_ARRAYS` plus ``landmarker``), loaded from its npz."""
        arrays = self._arrays.pop(track_id, None)
        if arrays is None:
            path = self.root / TRACKS_DIR / f"{self.track(track_id).track_id}.npz"
            try:
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {key: npz[key] for key in npz.files}
            except (OSError, ValueError) as error:
                raise CacheError(f"{path}: cannot read track arrays ({error}); delete its manifest and rerun prepare") from None
        self._arrays[track_id] = arrays
        while len(self._arrays) > _ARRAYS_CACHE_SIZE:
            self._arrays.popitem(last=False)
        return arrays

    def landmarks(self, track_id: str) -> np.ndarray:
        """float32 ``(n, 68, 2)`` landmarks of a track in crop pixels."""
        return self.track_arrays(track_id)["landmarks_aligned"]

    def manifests(self) -> list[dict[str, Any]]:
        """Every per-video manifest (counts, skip reasons, track rows)."""
        return read_manifests(self.root)
