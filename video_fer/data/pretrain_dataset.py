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
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from video_fer.data.pairs import FacePairSampler


class FacePairDataset(Dataset):
    """Decoded frame pairs of a face-track cache, indexed by ``(track_id, frame_a, frame_b)``.

    Args:
        cache: a :class:`~video_fer.data.cache.FaceTrackCache` (or anything with
            ``read_frames(track_id, indices) -> uint8 (T, S, S, 3)``).
        sampler: optional :class:`FacePairSampler`; only used for ``len()``.

    Items are dicts: ``source`` and ``target`` uint8 ``(S, S, 3)``, ``frames`` int64 ``(2,)``.
    """

    def __init__(self, cache: Any, sampler: FacePairSampler | None = None) -> None:
        self.cache = cache
        self.sampler = sampler

    def __len__(self) -> int:
        if self.sampler is None:
            raise TypeError("FacePairDataset has no length without a sampler; iterate it through a DataLoader sampler")
        return len(self.sampler)

    def __getitem__(self, key: tuple[str, int, int]) -> dict[str, torch.Tensor]:
        track_id, frame_a, frame_b = key
        frames = self.cache.read_frames(track_id, [frame_a, frame_b])  # one decoder call for both frames
        return {"source": frames[0], "target": frames[1], "frames": torch.tensor([frame_a, frame_b])}


def pair_loader(cache: Any, sampler: FacePairSampler, batch_size: int, num_workers: int = 1,
                drop_last: bool = True, pin_memory: bool = False,
                multiprocessing_context: str | None = "spawn") -> DataLoader:
    """A DataLoader of uint8 pair batches (``source``/``target`` ``(B, S, S, 3)``) driven by ``sampler``.

    The sampler already gives each rank its own pairs, so this loader must *not* be passed
    through ``accelerator.prepare`` (that would shard it a second time).

    Workers are spawned, not forked, by default: a process that has run x264 encoders
    (the demo cache), decord or OpenMP thread pools can leave a lock held in a forked
    child, and we saw such a worker hang. Workers are persistent, so the start-up cost
    (importing torch, ~seconds) is paid once per run.
    """
    workers = num_workers > 0
    return DataLoader(FacePairDataset(cache, sampler), batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
                      persistent_workers=workers, prefetch_factor=4 if workers else None,
                      multiprocessing_context=multiprocessing_context if workers else None)
