"""Pretraining pairs: the sampler picks ``(track, frame_a, frame_b)``, the cache decodes them.

:class:`FacePairDataset` only glues :class:`~video_fer.data.pairs.FacePairSampler` and
:class:`~video_fer.data.cache.FaceTrackCache`: it is indexed by the sampler's tuples and
returns the two decoded crops as uint8 (4x less to move between processes than float).

Where augmentation happens (decided for speed): **not** in the workers. The crops go
through the loader as uint8 and the recipe applies
:func:`~video_fer.data.augment.augment_pair` to the whole collated batch on the training
device: one ``grid_sample`` over ``2B`` images (nearly free on a GPU, vectorised on a
CPU), while the workers do the one thing that must run in parallel, decoding.

Worker safety: the cache opens its decord readers lazily and per process (it drops
them when pickled and when it notices it was forked), so the dataset can be handed to
any number of DataLoader workers.

A track whose mp4 cannot be decoded stops the run with a :class:`~video_fer.errors.CacheError`
naming the file; with ``skip_bad_tracks`` its pairs are taken from the next track of the
sampler instead and each bad file is reported once per process.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from video_fer.data.pairs import FacePairSampler
from video_fer.errors import CacheError


class InMemoryFrames:
    """The crops of some tracks decoded once and held in memory, read like a FaceTrackCache.

    For corpora that fit in RAM (e.g. 7.6k frames at 128 px: 0.37 GB): a random pair then costs two
    tensor copies instead of two keyframe seeks and up to ``2 x GOP`` decoded frames (measured as
    ~27 % of a 128 px training step's time with decoding in the training process). Use it with
    ``num_workers=0``: handing it to worker processes would copy every frame into each of them.
    """

    def __init__(self, cache: Any, tracks=None) -> None:
        import numpy as np

        self.cache, self.size = cache, cache.size
        tracks = cache.tracks if tracks is None else tracks
        self.frames = {track.track_id: cache.read_frames(track.track_id, np.arange(track.num_frames)) for track in tracks}

    def read_frames(self, track_id: str, indices) -> torch.Tensor:
        """uint8 ``(T, S, S, 3)`` crops at ``indices`` of the track."""
        return self.frames[track_id][torch.as_tensor(indices, dtype=torch.long)]

    def landmarks(self, track_id: str):
        return self.cache.landmarks(track_id)


class FacePairDataset(Dataset):
    """Decoded frame pairs of a face-track cache, indexed by ``(track_id, frame_a, frame_b)``.

    Args:
        cache: a :class:`~video_fer.data.cache.FaceTrackCache` (or anything with
            ``read_frames(track_id, indices) -> uint8 (T, S, S, 3)``).
        sampler: optional :class:`FacePairSampler`; for ``len()``, and the tracks that stand in for bad ones.
        skip_bad_tracks: [ours] a track that cannot be decoded gives its pairs from the next decodable
            track of the sampler (same positions, clipped to its length) instead of stopping the run.
        landmarks: also return the two frames' landmarks (crop pixels, the cache's ``landmarks_aligned``),
            for the landmark-guided fields, and their track's mean landmarks (over its frames with landmarks).

    Items are dicts: ``source`` and ``target`` uint8 ``(S, S, 3)``, ``frames`` int64 ``(2,)``; with
    ``landmarks``, ``source_landmarks``, ``target_landmarks`` and ``track_landmarks`` float32 ``(68, 2)``.
    """

    def __init__(self, cache: Any, sampler: FacePairSampler | None = None, skip_bad_tracks: bool = False,
                 landmarks: bool = False) -> None:
        self.cache = cache
        self.sampler = sampler
        self.skip_bad_tracks = skip_bad_tracks
        self.landmarks = landmarks
        self.bad_tracks: set[str] = set()  # found in this process
        self._row_of: dict[str, int] | None = None  # sampler row of each track, made on first need
        self._track_means: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        if self.sampler is None:
            raise TypeError("FacePairDataset has no length without a sampler; iterate it through a DataLoader sampler")
        return len(self.sampler)

    def __getitem__(self, key: tuple[str, int, int]) -> dict[str, torch.Tensor]:
        track_id, frame_a, frame_b = key
        frames, track_id, frame_a, frame_b = self._read_pair(track_id, frame_a, frame_b)
        item = {"source": frames[0], "target": frames[1], "frames": torch.tensor([frame_a, frame_b])}
        if self.landmarks:
            track_points = torch.from_numpy(self.cache.landmarks(track_id)).float()
            if track_id not in self._track_means:  # NaN where no frame of the track has the point
                self._track_means[track_id] = track_points.nanmean(0)
            item.update(source_landmarks=track_points[frame_a], target_landmarks=track_points[frame_b],
                        track_landmarks=self._track_means[track_id])
        return item

    def _read_pair(self, track_id: str, frame_a: int, frame_b: int) -> tuple[torch.Tensor, str, int, int]:
        """Both crops in one decoder call, and the track and frames read (a bad track stands down for the
        next good one when allowed)."""
        if not self.skip_bad_tracks or self.sampler is None:
            return self.cache.read_frames(track_id, [frame_a, frame_b]), track_id, frame_a, frame_b
        ids, lengths = self.sampler.track_ids, self.sampler.num_frames
        if self._row_of is None:
            self._row_of = {track: row for row, track in enumerate(ids)}
        start = self._row_of[track_id]
        for step in range(len(ids)):
            row = (start + step) % len(ids)
            candidate, last = ids[row], int(lengths[row]) - 1
            if candidate in self.bad_tracks or last < 1:
                continue
            a, b = min(frame_a, last), min(frame_b, last)
            try:
                return self.cache.read_frames(candidate, [a, b]), candidate, a, b
            except CacheError as error:
                self.bad_tracks.add(candidate)
                print(f"pretraining: skipping a track (data.skip_bad_tracks=true): {error}", file=sys.stderr,
                      flush=True)
        raise CacheError(f"{getattr(self.cache, 'root', 'the cache')}: no track of the sampler can be decoded; "
                         "rerun prepare into a fresh cache")


def pair_loader(cache: Any, sampler: FacePairSampler, batch_size: int, num_workers: int = 1,
                drop_last: bool = True, pin_memory: bool = False,
                multiprocessing_context: str | None = "spawn", skip_bad_tracks: bool = False,
                landmarks: bool = False) -> DataLoader:
    """A DataLoader of uint8 pair batches (``source``/``target`` ``(B, S, S, 3)``) driven by ``sampler``.

    The sampler already gives each rank its own pairs, so this loader must *not* be passed
    through ``accelerator.prepare`` (that would shard it a second time).

    Workers are spawned, not forked, by default: a process that has run x264 encoders
    (the demo cache), decord or OpenMP thread pools can leave a lock held in a forked
    child, and we saw such a worker hang. Workers are persistent, so the start-up cost
    (importing torch, ~seconds) is paid once per run. ``skip_bad_tracks``: see :class:`FacePairDataset`.
    """
    workers = num_workers > 0
    return DataLoader(FacePairDataset(cache, sampler, skip_bad_tracks, landmarks), batch_size=batch_size,
                      sampler=sampler, num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
                      persistent_workers=workers, prefetch_factor=4 if workers else None,
                      multiprocessing_context=multiprocessing_context if workers else None)
