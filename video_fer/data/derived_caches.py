"""Caches made from another cache: a smaller crop size, and a subset of its videos.

- :func:`downscale_cache`: every track of a cache re-encoded at a smaller crop side (e.g. the
  128 px training cache from a 256 px ``video-fer prepare`` output), landmarks and matrices moved
  to the new pixel grid, so the faces, tracks and track ids stay exactly those of the source.
  Resumes: videos already committed are skipped.
- :func:`subset_cache`: a cache folder that lists only some videos of another (its manifests;
  the track files are reached through a symlink, nothing is copied), optionally with other
  identity names (e.g. two clips of one speaker grouped under one identity).

Pixel convention (:mod:`video_fer.faces.alignment`): ``pixel = u * size - 0.5`` for a normalised
coordinate ``u``, so a point moves from size ``S`` to ``s`` by ``p' = (p + 0.5) s / S - 0.5``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from video_fer.data.cache import SETTINGS_FILE, CacheWriter, FaceTrackCache, read_manifests, read_settings
from video_fer.errors import CacheError


def rescale_points(points: np.ndarray, factor: float) -> np.ndarray:
    """Crop pixels at one size -> at ``factor`` times that size."""
    return ((np.asarray(points, np.float64) + 0.5) * factor - 0.5).astype(np.float32)


def rescale_matrices(matrices: np.ndarray, factor: float) -> np.ndarray:
    """Affine maps source -> crop ``(n, 2, 3)`` -> source -> rescaled crop."""
    matrices = np.asarray(matrices, np.float64) * factor
    matrices[..., 2] += 0.5 * factor - 0.5
    return matrices.astype(np.float32)


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(n, S, S, 3)`` -> uint8 ``(n, size, size, 3)`` (area averaging: pixel centres stay aligned)."""
    images = frames.permute(0, 3, 1, 2).float()
    resized = F.interpolate(images, size=(size, size), mode="area")
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def downscale_cache(source: FaceTrackCache | str | os.PathLike, out: str | os.PathLike, size: int,
                    progress: bool = True) -> FaceTrackCache:
    """Write the tracks of ``source`` at crop side ``size`` into ``out`` (resumable) and open it."""
    from video_fer.faces.alignment import AlignmentSpec

    source = source if isinstance(source, FaceTrackCache) else FaceTrackCache(source)
    if size > source.size or size % 2:
        raise CacheError(f"downscale_cache: size {size} must be even and at most the source's {source.size}")
    if (Path(out) / SETTINGS_FILE).is_file():  # resuming: the folder must hold this source's downscaled crops
        made_from = read_settings(out).get("derived_from")
        if made_from is None or Path(made_from).resolve() != source.root.resolve():
            made = "was prepared from videos" if made_from is None else f"was downscaled from {made_from}"
            raise CacheError(f"{out}: this cache {made}, not from {source.root}; its crops would differ from "
                             "the source's: give another folder, or delete this one to rebuild it")
    factor = size / source.size
    settings = dict(source.settings)
    alignment = dict(settings["alignment"], size=size)
    AlignmentSpec.from_dict(alignment)  # still a valid spec
    writer = CacheWriter(out)
    writer.begin({**settings, "size": size, "alignment": alignment, "derived_from": str(source.root)})
    for manifest in read_manifests(source.root):
        key = manifest["video_key"]
        if writer.has_manifest(key):
            continue
        writer.remove_partial_outputs(key)
        rows = []
        for row in manifest.get("tracks", []):
            track_id = row["track_id"]
            frames = source.read_frames(track_id, np.arange(int(row["num_frames"])))
            arrays = dict(source.track_arrays(track_id))
            landmarker = str(arrays.pop("landmarker", settings.get("landmarker", "unknown")))
            arrays["landmarks_aligned"] = rescale_points(arrays["landmarks_aligned"], factor)
            if "matrices" in arrays:
                arrays["matrices"] = rescale_matrices(arrays["matrices"], factor)
            rows.append(writer.write_track(track_id, resize_frames(frames, size), arrays, source=row["source"],
                                           identity=row["identity"], fps=float(row["fps"]), video_key=key,
                                           landmarker=landmarker))
        writer.commit_video(key, {**manifest, "tracks": rows})
        if progress:
            print(f"downscaled {key}: {len(rows)} track(s)", flush=True)
    writer.rebuild_index()
    return FaceTrackCache(out)


def subset_cache(source: str | os.PathLike, out: str | os.PathLike, video_keys: Sequence[str],
                 identities: Mapping[str, str] | None = None) -> FaceTrackCache:
    """A cache at ``out`` that holds only ``video_keys`` of ``source`` (tracks linked, not copied).

    Args:
        identities: optional ``video_key -> identity`` names written into the subset's manifests.
    """
    source, out = Path(source), Path(out)
    manifests = {m["video_key"]: m for m in read_manifests(source)}
    missing = sorted(set(video_keys) - set(manifests))
    if missing:
        raise CacheError(f"{source}: no video {missing[:5]} in this cache; prepare it first")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifests").mkdir(exist_ok=True)
    link = out / "tracks"
    if not link.exists():
        link.symlink_to((source / "tracks").resolve(), target_is_directory=True)
    for stale in (out / "manifests").glob("*.json"):  # a changed subset must not keep old videos
        if stale.stem not in video_keys:
            stale.unlink()
    writer = CacheWriter(out)
    writer.begin({**read_settings(source), "subset_of": str(source)})
    for key in video_keys:
        manifest = json.loads(json.dumps(manifests[key]))
        if identities and key in identities:
            manifest["identity"] = identities[key]
            for row in manifest.get("tracks", []):
                row["identity"] = identities[key]
        writer.commit_video(key, manifest)
    writer.rebuild_index()
    return FaceTrackCache(out)


__all__ = ["downscale_cache", "rescale_matrices", "rescale_points", "resize_frames", "subset_cache"]
