"""Probes against OpenFace's output (video_fer.evaluate.openface_probes, tools/bench_openface_probes.py)."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scripts import load_script
from video_fer.errors import LabelFileError
from video_fer.evaluate import openface_probes as op

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_openface_probes.py"


def two_clips():
    """Clip "a" of 40 frames and clip "b" of 12, rows shuffled; positions are source frame numbers."""
    rng = np.random.default_rng(0)
    clips = np.array(["a"] * 40 + ["b"] * 12)
    positions = np.concatenate([np.arange(100, 140), np.arange(12)])
    order = rng.permutation(len(clips))
    return clips[order], positions[order]


def test_time_blocks_are_contiguous_equal_runs_of_each_clip():
    clips, positions = two_clips()
    block = op.time_blocks(clips, positions, 4)
    for clip, size in (("a", 10), ("b", 3)):
        rows = clips == clip
        assert np.bincount(block[rows]).tolist() == [size] * 4
        for k in range(4):  # block k holds a run of consecutive frames, later blocks later frames
            span = np.sort(positions[rows & (block == k)])
            assert np.all(np.diff(span) == 1)
            if k:
                assert span.min() > positions[rows & (block == k - 1)].max()
    with pytest.raises(ValueError, match="clip b: 12 frames, fewer than the 20 time blocks"):
        op.time_blocks(clips, positions, 20)


def test_block_folds_predict_each_block_once_and_keep_its_neighbours_out_of_the_fit():
    clips, positions = two_clips()
    block = op.time_blocks(clips, positions, 4)
    folds = op.block_folds(clips, positions, blocks=4, gap=2)
    assert sorted(np.concatenate([fold.test for fold in folds]).tolist()) == list(range(len(clips)))
    for k, fold in enumerate(folds):
        assert np.all(block[fold.test] == k) and not set(fold.fit) & set(fold.test)
        for clip in ("a", "b"):
            span = positions[fold.test][clips[fold.test] == clip]
            fitted = positions[fold.fit][clips[fold.fit] == clip]
            assert np.all((fitted < span.min() - 2) | (fitted > span.max() + 2))
        assert np.all(block[fold.fit][fold.val] == (k + 1) % 4) and fold.val.any() and not fold.val.all()
    # block 1 of clip a is frames 110-119: with gap 2, frames 108, 109, 120 and 121 are not fitted on
    assert not {108, 109, 120, 121} & set(positions[folds[1].fit][clips[folds[1].fit] == "a"].tolist())
    with pytest.raises(ValueError, match="blocks=2"):
        op.block_folds(clips, positions, blocks=2)


def test_fold_mean_r_scores_informative_features_high_and_noise_near_zero():
    rng = np.random.default_rng(1)
    clips, positions = np.array(["a"] * 200), np.arange(200)
    folds = op.block_folds(clips, positions, blocks=4, gap=0)
    drift = np.repeat([0.0, 2.0, 4.0, 6.0], 50)  # every block has its own mean, as a clip's expressions do
    signal = rng.normal(size=(200, 3))
    targets = np.stack([signal[:, 0] + drift, signal[:, 1] - signal[:, 2]], 1)
    informative = torch.from_numpy(np.concatenate([signal, rng.normal(size=(200, 5))], 1)).float()
    noise = torch.from_numpy(rng.normal(size=(200, 8))).float()
    assert np.all(op.fold_mean_r(informative, targets, folds) > 0.9)
    # pooled over the folds, noise would score the block means' differences (strongly negative); per fold it is ~0
    assert np.all(np.abs(op.fold_mean_r(noise, targets, folds)) < 0.25)


def fake_cache(frame_indices, size=8):
    arrays = {"frame_indices": np.asarray(frame_indices), "landmarks_aligned": np.zeros((len(frame_indices), 68, 2),
                                                                                        np.float32),
              "blendshapes": np.tile(np.arange(len(frame_indices), dtype=np.float32)[:, None], (1, 52))}
    track = SimpleNamespace(track_id="clip__t0000", video_key="clip")
    return SimpleNamespace(tracks=[track], track_arrays=lambda _: arrays,
                           read_frames=lambda _, rows: torch.full((len(rows), size, size, 3), 0, dtype=torch.uint8)
                           + torch.as_tensor(rows, dtype=torch.uint8)[:, None, None, None])


def openface_table(frames, success):
    count = len(frames)
    table = {"frame": np.asarray(frames, float), "face_id": np.zeros(count), "success": np.asarray(success, float),
             "pose_Rx": np.zeros(count), "pose_Ry": np.full(count, np.pi / 2), "pose_Rz": np.zeros(count)}
    table.update({"AU12_r": np.arange(count, dtype=float), "AU01_r": np.ones(count)})
    return table


def test_cached_frames_meet_openface_rows_by_number_where_openface_found_the_face():
    cache = fake_cache([0, 1, 2, 4])  # the cache lost frame 3; OpenFace counts from 1
    table = openface_table([1, 2, 3, 4, 5], [1, 0, 1, 1, 1])  # OpenFace lost frame 1 (its row "2")
    frames = op.load_openface_frames(cache, {"clip": table})
    assert frames.positions.tolist() == [0, 2, 4] and frames.clips.tolist() == ["clip"] * 3
    assert frames.au_names == ["AU01_r", "AU12_r"] and frames.aus[:, 1].tolist() == [0, 2, 4]
    assert frames.images[:, 0, 0, 0].tolist() == [0, 2, 3]  # the cache rows of frames 0, 2 and 4
    assert frames.blendshapes[:, 0].tolist() == [0, 2, 3] and np.allclose(frames.angles[:, 1], 90)
    with pytest.raises(LabelFileError, match="missing \\['pose_Ry'\\]"):
        op.load_openface_frames(cache, {"clip": {k: v for k, v in table.items() if k != "pose_Ry"}})
    with pytest.raises(LabelFileError, match="no cached frame"):
        op.load_openface_frames(cache, {"clip": openface_table([1, 2], [0, 0])})


@pytest.mark.usefixtures("one_torch_thread")
def test_the_tool_probes_an_encoder_against_openface_on_a_shared_clip(tmp_path, shared_videos, mediapipe_model):
    from video_fer.errors import CheckpointError
    from video_fer.faces.alignment import AlignmentSpec
    from video_fer.models.checkpoint import save_encoder
    from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder

    shared = shared_videos.parents[1]
    if not (shared / "data" / "openface" / "single_face.openface.csv").is_file():
        pytest.skip(f"needs {shared}/data/openface/single_face.openface.csv")
    config = TAEConfig(image_size=64, width=4, embedding_dim=8, attention_streams=2, stream_width=4)
    save_encoder(TwinCycleAutoencoder(config).encoder, tmp_path / "encoder", AlignmentSpec(size=64))
    tool = load_script(TOOL, "bench_openface_probes")
    args = ["--out", str(tmp_path / "run"), "--shared", str(shared), "--clips", "single_face", "--blocks", "3",
            "--gap", "2", "--landmarker-model", str(mediapipe_model), "--encoder", f"tiny={tmp_path / 'encoder'}"]
    with pytest.raises(SystemExit, match="no_such_clip.mp4.*no_such_clip.openface.csv.*: not found"):
        tool.main(["--out", str(tmp_path / "none"), "--shared", str(shared), "--clips", "no_such_clip"])
    assert tool.main(args) == 0
    results = json.loads((tmp_path / "run" / "bench_openface_probes.json").read_text())
    assert results["data"]["frames"] == {"single_face": 72} and results["data"]["size"] == 64
    assert set(results["encoders"]) == {"untrained", "tiny"}
    assert set(results["baselines"]) == {"hog", "pixels_pca", "landmarks (reference)",
                                         "mediapipe_blendshapes (reference)"}
    assert "AU12_r" in results["data"]["active_aus"]  # he smiles
    assert set(results["encoders"]["tiny"]["pose"]["per_angle"]) == {"pitch", "yaw", "roll"}
    assert np.isfinite(results["baselines"]["landmarks (reference)"]["per_au"]["AU12_r"])
    assert "| tiny |" in (tmp_path / "run" / "bench_openface_probes.md").read_text()
    # an encoder of another crop side is refused by name (the cache holds 64 px crops)
    save_encoder(TwinCycleAutoencoder(TAEConfig(image_size=128, width=4, embedding_dim=8, attention_streams=2,
                                                stream_width=4)).encoder, tmp_path / "big", AlignmentSpec(size=128))
    with pytest.raises(CheckpointError, match="--encoder big="):
        tool.main(args[:-1] + [f"big={tmp_path / 'big'}", "--size", "64"])
