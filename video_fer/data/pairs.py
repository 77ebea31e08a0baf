"""Which two frames of which face track make a training pair (pure: indices in, indices out).

:class:`FacePairSampler` reads only the cache index (track id, identity, frame count,
fps) and yields ``(track_id, frame_a, frame_b)``; decoding is the dataset's job. It is
deterministic per ``(seed, epoch, rank)``: ranks draw different pairs, and a resumed
run draws exactly the pairs the interrupted one would have drawn (``set_epoch(e,
skip=k)`` drops the first ``k`` pairs already consumed).

Sampling:
- a track is chosen with probability proportional to its number of frames, so every
  frame of the cache is equally likely to be the source of a pair (a long track
  contributes in proportion to its length, a 2-frame track rarely);
- inside the track, ``(frame_a, frame_b)`` is uniform over the ordered pairs whose gap
  ``|frame_b - frame_a|`` lies in ``gap`` (both orders: the source may come after the
  target). The default ``gap=None`` allows any gap inside the track (1 .. n-1), as the
  reference code does (two random distinct frames of a track sampled at 1 fps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from video_fer.errors import ConfigError, VideoFerError


class PairSamplingError(VideoFerError, ValueError):
    """The track index or the gap settings cannot produce any pair."""


def track_field(row: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from an index row given as a mapping, a dataclass/namedtuple or a pandas row."""
    if isinstance(row, Mapping):
        return row.get(name, default)
    return getattr(row, name, default)


def identity_of(row: Any) -> str:
    """A track's identity; unknown identities fall back to the source video (tracks of one video stay together)."""
    identity = track_field(row, "identity")
    if identity is None or (isinstance(identity, float) and math.isnan(identity)) or str(identity) == "":
        return f"source:{track_field(row, 'source', track_field(row, 'track_id'))}"
    return str(identity)


@dataclass(frozen=True)
class PairIndices:
    """One epoch's pairs for one rank, as arrays of equal length ``(N,)``.

    Attributes:
        track_row: position of the track in the sampler's ``tracks``.
        frame_a, frame_b: frame indices inside the track (0-based, < num_frames).
    """

    track_row: np.ndarray
    frame_a: np.ndarray
    frame_b: np.ndarray

    def __len__(self) -> int:
        return len(self.track_row)


class FacePairSampler:
    """Frame pairs of the same face track, deterministic per (seed, epoch, rank).

    Args:
        tracks: index rows (mappings or objects) with ``track_id``, ``num_frames`` and,
            for ``gap_unit="seconds"``, ``fps``.
        gap: ``(min, max)`` gap between the two frames, inclusive; ``None`` = any gap
            inside the track (1 .. n-1). ``max`` may be ``None`` (no upper bound).
        gap_unit: ``"frames"`` or ``"seconds"`` (converted per track with its fps:
            ``ceil(min * fps)`` .. ``floor(max * fps)``).
        pairs_per_epoch: pairs in one epoch summed over all ranks; each rank draws
            ``ceil(pairs_per_epoch / world_size)`` (equal counts keep DDP ranks in step).
        seed, rank, world_size: the random stream is ``(seed, epoch, rank)``.

    Iterating yields ``(track_id, frame_a, frame_b)`` tuples (usable as a DataLoader
    ``sampler`` for :class:`~video_fer.data.pretrain_dataset.FacePairDataset`).
    """

    def __init__(self, tracks: Sequence[Any], gap: Sequence[float | None] | None = None, gap_unit: str = "frames",
                 pairs_per_epoch: int = 1024, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.tracks = list(tracks)
        if not self.tracks:
            raise PairSamplingError("tracks: the index is empty; prepare a cache with at least one face track")
        if gap_unit not in ("frames", "seconds"):
            raise ConfigError(f"gap_unit: expected 'frames' or 'seconds', got {gap_unit!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank/world_size: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if pairs_per_epoch < 1:
            raise ConfigError(f"pairs_per_epoch: expected >= 1, got {pairs_per_epoch}")
        self.track_ids = [track_field(row, "track_id") for row in self.tracks]
        self.num_frames = np.array([int(track_field(row, "num_frames")) for row in self.tracks], dtype=np.int64)
        self.min_gap, self.max_gap = self._gap_in_frames(gap, gap_unit)
        self.gap, self.gap_unit = gap, gap_unit
        self.pairs_per_epoch, self.seed, self.rank, self.world_size = int(pairs_per_epoch), int(seed), rank, world_size
        self.pairs_per_rank = -(-self.pairs_per_epoch // world_size)
        usable = self.max_gap >= np.maximum(self.min_gap, 0)
        self.track_weights = np.where(usable, self.num_frames, 0).astype(np.float64)
        if self.track_weights.sum() == 0:
            raise PairSamplingError(
                f"gap={gap} {gap_unit}: no track is long enough (longest has {self.num_frames.max()} frames); "
                "lower the minimum gap or use longer tracks"
            )
        self.track_weights /= self.track_weights.sum()
        self.epoch, self.skip = 0, 0

    def _gap_in_frames(self, gap, unit: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-track inclusive gap bounds in frames, ``(T,)`` each; max is clipped to n-1."""
        longest = self.num_frames - 1
        if gap is None:
            return np.ones_like(longest), longest
        if len(gap) != 2:
            raise ConfigError(f"gap: expected [min, max], got {gap!r}")
        low, high = gap
        low = 0 if low is None else low
        if low < 0 or (high is not None and high < low):
            raise ConfigError(f"gap: expected 0 <= min <= max, got {gap!r}")
        if unit == "seconds":
            fps = np.array([float(track_field(row, "fps") or np.nan) for row in self.tracks])
            if not np.isfinite(fps).all() or (fps <= 0).any():
                raise PairSamplingError("gap_unit='seconds' needs a positive fps for every track in the index")
            low_frames = np.ceil(low * fps - 1e-9).astype(np.int64)
            high_frames = longest if high is None else np.floor(high * fps + 1e-9).astype(np.int64)
        else:
            low_frames = np.full_like(longest, int(math.ceil(low)))
            high_frames = longest if high is None else np.full_like(longest, int(math.floor(high)))
        return low_frames, np.minimum(high_frames, longest)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch's random stream; ``skip`` drops the first pairs (resume mid-epoch)."""
        self.epoch, self.skip = int(epoch), int(skip)

    def pairs(self, epoch: int | None = None) -> PairIndices:
        """All pairs of this rank for ``epoch`` (default: the current one), drawn in one vectorised pass."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, self.rank, self.world_size]))
        count = self.pairs_per_rank
        track_row = rng.choice(len(self.tracks), size=count, p=self.track_weights)
        frame_a = np.empty(count, dtype=np.int64)
        frame_b = np.empty(count, dtype=np.int64)
        pending = np.arange(count)
        # Rejection sampling: a uniform first frame and a uniform signed gap, redrawn when the
        # second frame leaves the track, is uniform over the valid ordered pairs.
        while pending.size:
            rows = track_row[pending]
            n, low, high = self.num_frames[rows], self.min_gap[rows], self.max_gap[rows]
            first = rng.integers(0, n)
            gap = rng.integers(low, high + 1)
            second = first + np.where(rng.random(pending.size) < 0.5, -gap, gap)
            ok = (second >= 0) & (second < n)
            frame_a[pending[ok]], frame_b[pending[ok]] = first[ok], second[ok]
            pending = pending[~ok]
        return PairIndices(track_row, frame_a, frame_b)

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        drawn = self.pairs()
        for row, a, b in zip(drawn.track_row[self.skip:], drawn.frame_a[self.skip:], drawn.frame_b[self.skip:]):
            yield self.track_ids[row], int(a), int(b)

    def __len__(self) -> int:
        return max(self.pairs_per_rank - self.skip, 0)


def split_by_identity(tracks: Sequence[Any], val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Identity-level train/validation split: no identity has tracks on both sides.

    ``round(val_fraction * identities)`` identities (at least one when ``val_fraction >
    0`` and there are two or more identities; never all of them) go to validation,
    chosen by a permutation seeded with ``seed``. Tracks without an identity are
    grouped by their source video.

    Returns:
        ``(train_rows, val_rows)``, each in the order of ``tracks``.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction: expected 0 <= value < 1, got {val_fraction}")
    identities = sorted({identity_of(row) for row in tracks})
    count = round(val_fraction * len(identities))
    if val_fraction > 0 and len(identities) > 1:
        count = min(max(count, 1), len(identities) - 1)
    else:
        count = 0
    order = np.random.default_rng(np.random.SeedSequence([seed, 7919])).permutation(len(identities))
    held_out = {identities[i] for i in order[:count]}
    train = [row for row in tracks if identity_of(row) not in held_out]
    val = [row for row in tracks if identity_of(row) in held_out]
    return train, val
