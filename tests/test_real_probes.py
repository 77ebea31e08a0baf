"""Pieces of the real-video benchmark: references, derived caches, probe splits and diagnostics."""
import numpy as np
import pytest
import torch

from video_fer.data.derived_caches import downscale_cache, rescale_points, subset_cache
from video_fer.data.synthetic import build_demo_cache
from video_fer.errors import CacheError, ConfigError
from video_fer.evaluate import real_probes as rp
from video_fer.evaluate.real_references import default_au_mapping, head_angles_from_transformation, load_au_mapping
from video_fer.faces.head_pose import rotation_from_euler

NAMES = ["_neutral", "browDownLeft", "eyeBlinkLeft", "eyeLookInLeft", "jawOpen", "eyeLookUpRight"]


def test_head_angles_come_back_from_a_mediapipe_style_matrix():
    angles = torch.tensor([[10.0, -25.0, 5.0], [-8.0, 30.0, -12.0], [0.0, 0.0, 0.0]])
    rotation = rotation_from_euler(torch.deg2rad(angles).double()).numpy()  # OpenFace axes (y down, z away)
    flip = np.diag([1.0, -1.0, -1.0])
    matrices = np.zeros((3, 4, 4))
    matrices[:, :3, :3] = 1.7 * (flip @ rotation @ flip)  # MediaPipe's axes (y up, z towards the viewer), scaled
    matrices[:, :3, 3], matrices[:, 3, 3] = [1.0, -2.0, -40.0], 1.0
    assert np.allclose(head_angles_from_transformation(matrices), angles.numpy(), atol=1e-4)


def test_the_default_mapping_drops_neutral_and_gaze_and_a_file_mapping_loads(tmp_path):
    mapping = default_au_mapping(NAMES)
    assert mapping.names == ["browDownLeft", "eyeBlinkLeft", "jawOpen"]
    scores = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert np.array_equal(mapping.apply(scores, NAMES), scores[:, [1, 2, 4]])
    table = tmp_path / "table.py"
    table.write_text("AU_NAMES = ['AU26']\n"
                     "def blendshapes_to_aus(scores, names):\n    return scores[:, [names.index('jawOpen')]] * 2\n")
    loaded = load_au_mapping(table, NAMES)
    assert loaded.names == ["AU26"] and np.array_equal(loaded.apply(scores, NAMES), scores[:, [4]] * 2)
    with pytest.raises(ConfigError, match="no such file"):
        load_au_mapping(tmp_path / "missing.py", NAMES)


def test_downscaled_cache_keeps_tracks_and_moves_landmarks(tmp_path):
    source = build_demo_cache(tmp_path / "demo", size=64, frames_per_track=4, tracks_per_identity=1)
    small = downscale_cache(source, tmp_path / "small", 32, progress=False)
    assert small.size == 32 and small.alignment.size == 32
    assert [t.track_id for t in small.tracks] == [t.track_id for t in source.tracks]
    track = source.tracks[0].track_id
    assert small.read_frames(track, [0, 3]).shape == (2, 32, 32, 3)
    assert np.allclose(small.landmarks(track), source.landmarks(track) / 2 - 0.25, atol=1e-5)
    assert np.allclose(rescale_points(np.array([[-0.5, 63.5]]), 0.5), [[-0.5, 31.5]])  # crop edges stay edges
    assert downscale_cache(source, tmp_path / "small", 32, progress=False).tracks  # a rerun resumes (nothing to do)
    # a folder holding another cache of the same size (prepared directly, or from another source) is not resumed
    other = build_demo_cache(tmp_path / "other", size=32, frames_per_track=4, tracks_per_identity=1)
    with pytest.raises(CacheError, match=f"{other.root}: this cache was prepared from videos, not from {source.root}"):
        downscale_cache(source, other.root, 32, progress=False)
    copy = build_demo_cache(tmp_path / "copy", size=64, frames_per_track=4, tracks_per_identity=1)
    with pytest.raises(CacheError, match="this cache was downscaled from .*demo, not from .*copy"):
        downscale_cache(copy, tmp_path / "small", 32, progress=False)


def test_subset_cache_lists_only_the_chosen_videos_with_new_identities(tmp_path):
    source = build_demo_cache(tmp_path / "demo", size=64, frames_per_track=4, tracks_per_identity=1)
    keys = sorted({t["video_key"] for t in source.tracks})
    subset = subset_cache(source.root, tmp_path / "subset", keys[:1], {keys[0]: "person"})
    assert {t["video_key"] for t in subset.tracks} == {keys[0]}
    assert {t["identity"] for t in subset.tracks} == {"person"}
    assert subset.read_frames(subset.tracks[0].track_id, [0]).shape == (1, 64, 64, 3)


def test_split_rows_and_pairs_stay_inside_their_clips_and_tracks():
    clips = np.array(["a"] * 6 + ["b"] * 6 + ["c"] * 6 + ["d"] * 6)
    tracks = np.array([f"{c}_t" for c in clips])
    split = rp.split_rows(clips, ["d"], val_every=2)
    assert set(clips[split.test]) == {"d"} and set(clips[split.fit]) == {"a", "b", "c"}
    assert set(clips[split.fit[split.val]]) == {"a", "c"}  # whole clips choose the penalty
    first, second = rp.pair_rows(tracks, split.test, 20, seed=0)
    assert (first != second).all() and (tracks[first] == tracks[second]).all() and set(clips[first]) == {"d"}


def test_a_linear_signal_is_found_and_clip_identity_is_not_within_clip_variance():
    rng = np.random.default_rng(0)
    clips = np.repeat(np.array(list("abcdefgh")), 30)
    features = torch.from_numpy(rng.normal(size=(240, 5)))
    targets = (features[:, :2].numpy() @ np.array([[1.0, 0.0], [0.5, 2.0]])).astype(np.float32)
    split = rp.split_rows(clips, ["g", "h"])
    assert (rp.probe(features, targets, split) > 0.99).all()
    one_hot = torch.from_numpy((clips[:, None] == np.array(list("abcdefgh"))[None]).astype(np.float64))
    assert rp.within_clip_share(one_hot, clips) < 1e-9
    assert rp.within_clip_share(features, clips) > 0.8


def test_centre_per_clip_removes_each_clips_mean():
    clips = np.array(["a", "a", "b", "b"])
    values = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [12.0, 2.0]])
    assert np.allclose(rp.centre_per_clip(values, clips), [[-1, -1], [1, 1], [-1, -1], [1, 1]])
    assert torch.allclose(rp.centre_per_clip(torch.from_numpy(values), clips), torch.tensor([[-1.0, -1], [1, 1], [-1, -1], [1, 1]]).double())


def test_baseline_features_have_their_sizes_and_the_pixel_pca_is_deterministic():
    images = torch.randint(0, 255, (12, 64, 64, 3), dtype=torch.uint8)
    fit_rows = np.arange(8)
    first, second = rp.pixel_pca_features(images, fit_rows, 4, side=16), rp.pixel_pca_features(images, fit_rows, 4, side=16)
    assert first.shape == (12, 4) and torch.equal(first, second)
    assert rp.hog_features(images).shape[0] == 12
    assert rp.landmark_features(np.zeros((12, 68, 2)), 64).shape == (12, 136)


def test_encoder_features_batch_the_frames_and_give_the_attention_maps_only_when_asked():
    from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder

    torch.manual_seed(0)
    images = torch.randint(0, 255, (5, 64, 64, 3), dtype=torch.uint8)
    encoder = TwinCycleAutoencoder(TAEConfig(image_size=64, width=4, embedding_dim=8, attention_streams=2)).encoder
    whole = rp.encoder_features(encoder, images, batch_size=5, attention=True)
    batched = rp.encoder_features(encoder, images, batch_size=2, attention=True)
    assert whole["action"].shape == (5, 8) and whole["pose"].shape == (5, 8)
    assert whole["attention"].shape[:2] == (5, 2)
    assert all(torch.allclose(whole[key], batched[key], atol=1e-5) for key in whole)
    assert set(rp.encoder_features(encoder, images)) == {"action", "pose"}
    tcae = TwinCycleAutoencoder(TAEConfig(image_size=64, width=4, embedding_dim=8, attention_streams=0)).encoder
    with pytest.raises(ValueError, match="without attention"):
        rp.encoder_features(tcae, images, attention=True)
