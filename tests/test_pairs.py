"""Frame-pair sampler and identity split (video_fer.data.pairs)."""
from collections import Counter

import numpy as np
import pytest

from video_fer.data.pairs import FacePairSampler, PairSamplingError, split_by_identity
from video_fer.errors import ConfigError


def make_tracks():
    lengths = [40, 10, 100, 3, 25, 60]
    return [
        {"track_id": f"t{i}", "source": f"video{i // 2}.mp4", "identity": f"id{i // 2}", "num_frames": n, "fps": 25.0}
        for i, n in enumerate(lengths)
    ]


def test_deterministic_per_seed_epoch_rank():
    tracks = make_tracks()
    first = list(FacePairSampler(tracks, pairs_per_epoch=200, seed=3))
    again = list(FacePairSampler(tracks, pairs_per_epoch=200, seed=3))
    assert first == again
    other_seed = list(FacePairSampler(tracks, pairs_per_epoch=200, seed=4))
    assert first != other_seed
    sampler = FacePairSampler(tracks, pairs_per_epoch=200, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_ranks_draw_different_pairs_of_equal_count():
    tracks = make_tracks()
    rank0 = list(FacePairSampler(tracks, pairs_per_epoch=101, seed=0, rank=0, world_size=2))
    rank1 = list(FacePairSampler(tracks, pairs_per_epoch=101, seed=0, rank=1, world_size=2))
    assert len(rank0) == len(rank1) == 51
    assert rank0 != rank1


def test_resume_skip_continues_the_same_stream():
    tracks = make_tracks()
    sampler = FacePairSampler(tracks, pairs_per_epoch=64, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, skip=40)
    assert list(sampler) == full[40:] and len(sampler) == 24


def test_pairs_stay_in_their_track_and_gap_range():
    tracks = make_tracks()
    lengths = {t["track_id"]: t["num_frames"] for t in tracks}
    sampler = FacePairSampler(tracks, gap=(2, 5), pairs_per_epoch=2000, seed=0)
    gaps = []
    for track_id, a, b in sampler:
        assert 0 <= a < lengths[track_id] and 0 <= b < lengths[track_id]
        gaps.append(abs(b - a))
    assert min(gaps) == 2 and max(gaps) == 5  # both ends of the inclusive range are reached
    drawn = sampler.pairs()
    assert (drawn.frame_b > drawn.frame_a).any() and (drawn.frame_b < drawn.frame_a).any()  # both orders


def test_default_gap_is_any_distinct_frame_pair_and_weighting_follows_length():
    tracks = make_tracks()
    drawn = FacePairSampler(tracks, pairs_per_epoch=20000, seed=0).pairs()
    assert (drawn.frame_a != drawn.frame_b).all()
    counts = np.bincount(drawn.track_row, minlength=len(tracks)) / len(drawn)
    lengths = np.array([t["num_frames"] for t in tracks], dtype=float)
    np.testing.assert_allclose(counts, lengths / lengths.sum(), atol=0.01)
    long_track = drawn.frame_a[drawn.track_row == 2]
    assert long_track.max() - long_track.min() > 90  # the whole track is reachable


def test_gap_in_seconds_uses_each_track_fps():
    tracks = [{"track_id": "slow", "num_frames": 50, "fps": 5.0}, {"track_id": "fast", "num_frames": 50, "fps": 20.0}]
    sampler = FacePairSampler(tracks, gap=(0.5, 1.0), gap_unit="seconds", pairs_per_epoch=2000, seed=0)
    by_track = {"slow": set(), "fast": set()}
    for track_id, a, b in sampler:
        by_track[track_id].add(abs(a - b))
    assert by_track["slow"] == {3, 4, 5}  # ceil(0.5 * 5) .. floor(1.0 * 5)
    assert by_track["fast"] == set(range(10, 21))


def test_short_tracks_are_skipped_and_impossible_gaps_are_errors():
    tracks = make_tracks()
    drawn = FacePairSampler(tracks, gap=(20, None), pairs_per_epoch=500, seed=0).pairs()
    assert not np.isin(drawn.track_row, [1, 3]).any()  # 10 and 3 frames cannot hold a gap of 20
    with pytest.raises(PairSamplingError, match="no track is long enough"):
        FacePairSampler(tracks, gap=(200, 300))
    with pytest.raises(ConfigError, match="gap"):
        FacePairSampler(tracks, gap=(5, 2))
    with pytest.raises(PairSamplingError, match="index is empty"):
        FacePairSampler([])


def test_split_by_identity_is_disjoint_and_complete():
    tracks = make_tracks() + [{"track_id": "anon", "source": "video0.mp4", "identity": None, "num_frames": 9}]
    train, val = split_by_identity(tracks, val_fraction=0.34, seed=5)
    train_ids = {t["identity"] or t["source"] for t in train}
    val_ids = {t["identity"] or t["source"] for t in val}
    assert train_ids.isdisjoint(val_ids)
    assert len(train) + len(val) == len(tracks) and len(val) > 0 and len(train) > 0
    identity_counts = Counter(t["identity"] for t in val)
    assert all(count == 2 for name, count in identity_counts.items() if name)  # whole identities move
    assert split_by_identity(tracks, 0.34, seed=5) == (train, val)
    assert split_by_identity(tracks, 0.0, seed=5) == (tracks, [])


def test_pair_dataset_decodes_the_sampled_frames(tmp_path):
    import torch

    from video_fer.data.pretrain_dataset import FacePairDataset, pair_loader
    from video_fer.data.synthetic import build_demo_cache

    cache = build_demo_cache(tmp_path / "demo", size=64, frames_per_track=6, tracks_per_identity=1, seed=0)
    sampler = FacePairSampler(cache.tracks, pairs_per_epoch=6, seed=0)
    dataset = FacePairDataset(cache, sampler)
    track_id, a, b = next(iter(sampler))
    item = dataset[(track_id, a, b)]
    expected = cache.read_frames(track_id, [a, b])
    assert torch.equal(item["source"], expected[0]) and torch.equal(item["target"], expected[1])
    assert item["frames"].tolist() == [a, b] and len(dataset) == 6
    batches = list(pair_loader(cache, sampler, batch_size=3, num_workers=1))  # decoded in a worker process
    assert len(batches) == 2 and batches[0]["source"].shape == (3, 64, 64, 3) and batches[0]["source"].dtype == torch.uint8
    assert batches[0]["frames"].tolist() == [[a, b] for _, a, b in list(sampler)[:3]]  # in the sampler's order
