"""End-to-end runs of recipes/pretrain_video.py on the embedded demo data at a tiny size."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import video_fer
from video_fer.data.synthetic import build_demo_cache
from video_fer.train.checkpoints import list_checkpoints
from video_fer.train.logs import read_csv_log

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPE = PROJECT_ROOT / "recipes" / "pretrain_video.py"
TINY = ["model.image_size=64", "model.width=4", "model.embedding_dim=16", "model.attention_streams=2",
        "model.stream_width=4", "data.demo_frames_per_track=6", "data.demo_tracks_per_identity=2",
        "train.batch_size=4", "data.pairs_per_epoch=16", "data.val_pairs=4", "train.image_every=2",
        "data.num_workers=0", "train.seed=0", "data.augment=true"]
LOSS_COLUMNS = ("lr", "loss", "reconstruction", "action_cycle", "pose_cycle", "action_sparsity")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One tiny demo cache for every run (the recipe reuses a cache made with the same settings)."""
    root = tmp_path_factory.mktemp("demo") / "cache"
    build_demo_cache(root, size=64, frames_per_track=6, tracks_per_identity=2, seed=0)
    return root


def run_recipe(output_dir, demo_dir, *extra, launcher=None):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = (launcher or [sys.executable]) + [str(RECIPE), f"train.output_dir={output_dir}",
                                                 f"data.demo_dir={demo_dir}", *TINY, *extra]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_two_processes_both_train_and_the_encoder_loads(tmp_path, demo_dir):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = run_recipe(tmp_path / "run", demo_dir, "train.max_steps=2", "train.save_every=2", launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    summaries = [json.loads((tmp_path / "run" / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert [s["pairs_trained"] for s in summaries] == [8, 8]  # 2 steps x batch 4 on each rank
    assert summaries[0]["first_pairs_epoch0"] != summaries[1]["first_pairs_epoch0"]  # ranks draw different pairs
    checkpoint = list_checkpoints(tmp_path / "run")[-1]
    assert {p.name for p in checkpoint.iterdir()} >= {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"}

    encoder = video_fer.load_model(tmp_path / "run" / "encoder")
    features = encoder.forward_features(torch.rand(2, 3, 64, 64))
    assert features.action_embedding.shape == (2, 16) and features.attention_maps.shape[1] == 2
    assert (tmp_path / "run" / "images" / "step_00000002.png").stat().st_size > 1000


def test_resume_continues_with_the_same_losses(tmp_path, demo_dir):
    settings = ("train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=0")
    uninterrupted = run_recipe(tmp_path / "full", demo_dir, *settings)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    full_rows = read_csv_log(tmp_path / "full" / "losses.csv")
    assert [int(r["step"]) for r in full_rows] == [1, 2, 3, 4]

    # A run that stopped after its step-2 checkpoint: the same folder holding only that checkpoint.
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002",
                    tmp_path / "resumed" / "checkpoints" / "step_00000002")
    resumed = run_recipe(tmp_path / "resumed", demo_dir, *settings, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step 2" in resumed.stdout
    resumed_rows = read_csv_log(tmp_path / "resumed" / "losses.csv")
    assert [int(r["step"]) for r in resumed_rows] == [3, 4]
    for before, after in zip(full_rows[2:], resumed_rows):
        assert {k: before[k] for k in LOSS_COLUMNS} == {k: after[k] for k in LOSS_COLUMNS}
    assert float(full_rows[2]["loss"]) != float(full_rows[3]["loss"])  # the losses compared do change step to step


def test_landmark_guided_fields_train_from_preloaded_frames_with_one_crop_per_pair(tmp_path, demo_dir):
    result = run_recipe(tmp_path / "guided", demo_dir, "train.max_steps=2", "loss.weights.landmark_pose_field=10",
                        "loss.weights.landmark_action_field=10", "data.preload=true", "data.augment_same_crop=true",
                        "loss.landmark_fit=similarity")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv_log(tmp_path / "guided" / "losses.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["landmark_pose_field"]) > 0 and float(r["landmark_action_field"]) >= 0 for r in rows)
    assert "landmark_pose_field" not in read_csv_log_columns(run_recipe, tmp_path, demo_dir)


def test_landmark_readouts_train_with_their_terms_and_refuse_a_term_without_them(tmp_path, demo_dir):
    readout = ("model.landmark_readout=true", "loss.weights.landmark_action_embedding=10",
               "loss.weights.landmark_pose_embedding=10", "model.decoder_input=difference")
    result = run_recipe(tmp_path / "readout", demo_dir, "train.max_steps=2", "data.preload=true", *readout)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv_log(tmp_path / "readout" / "losses.csv")
    assert all(float(r["landmark_action_embedding"]) > 0 and float(r["landmark_pose_embedding"]) > 0 for r in rows)
    exported = json.loads((tmp_path / "readout" / "encoder" / "config.json").read_text())
    assert exported["architecture"] == "tae_encoder"  # the readouts are not part of the export

    missing = run_recipe(tmp_path / "missing", demo_dir, "train.max_steps=1", *readout[1:])
    assert missing.returncode == 2 and "needs model.landmark_readout: true" in missing.stderr


def test_the_frame_readouts_train_with_their_terms_and_refuse_to_run_without_them(tmp_path, demo_dir):
    frame = ("model.frame_readout=true", "loss.weights.landmark_action_frame=10")
    pose_frame = ("model.pose_frame_readout=true", "loss.weights.landmark_pose_frame=10")
    result = run_recipe(tmp_path / "frame", demo_dir, "train.max_steps=2", "data.augment=false", *frame, *pose_frame)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv_log(tmp_path / "frame" / "losses.csv")
    assert all(float(r["landmark_action_frame"]) > 0 for r in rows)  # the demo's animated faces move their mouths
    assert all(float(r["landmark_pose_frame"]) > 0 for r in rows)  # ... and their heads
    exported = json.loads((tmp_path / "frame" / "encoder" / "config.json").read_text())
    assert exported["architecture"] == "tae_encoder"

    for alone in (frame[0], pose_frame[0]):
        missing = run_recipe(tmp_path / "missing", demo_dir, "train.max_steps=1", alone)
        assert missing.returncode == 2 and "frame readout and its term go together" in missing.stderr


def test_the_attention_term_trains_with_attention_maps_and_refuses_a_model_without_them(tmp_path, demo_dir):
    result = run_recipe(tmp_path / "attention", demo_dir, "train.max_steps=2", "model.attention_streams=4",
                        "loss.weights.landmark_attention=1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv_log(tmp_path / "attention" / "losses.csv")
    assert all(float(r["landmark_attention"]) > 0 for r in rows)  # untrained maps are not the landmarks' heat map

    tcae = run_recipe(tmp_path / "tcae", demo_dir, "train.max_steps=1", "model.attention_streams=0",
                      "loss.weights.landmark_attention=1")
    assert tcae.returncode == 2 and "model.attention_streams > 0" in tcae.stderr


def test_the_real_video_config_trains_without_the_excluded_videos_and_says_so(tmp_path, demo_dir):
    """recipes/configs/pretrain_tae_real.yaml (landmark guidance, readouts, the attention term, one crop per pair,
    preloaded frames) on the tiny demo cache with one of its two videos left out; a key the cache lacks is an
    error that names it."""
    config = ["--config", str(PROJECT_ROOT / "recipes" / "configs" / "pretrain_tae_real.yaml"), f"data.cache={demo_dir}"]
    result = run_recipe(tmp_path / "real", demo_dir, *config, "train.max_steps=2", "train.log_every=1",
                        "data.exclude_videos=[grace_hopper]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 tracks (0 held out)" in result.stdout  # astronaut's two tracks; grace_hopper's two left out
    rows = read_csv_log(tmp_path / "real" / "losses.csv")
    assert [int(r["step"]) for r in rows] == [1, 2] and all(
        float(r[term]) > 0 for r in rows for term in ("landmark_pose_field", "landmark_action_embedding",
                                                      "landmark_action_frame", "landmark_pose_frame", "landmark_attention"))
    exported = json.loads((tmp_path / "real" / "encoder" / "config.json").read_text())["extra"]
    assert exported["excluded_videos"] == ["grace_hopper"] and exported["alignment"]["size"] == 64

    wrong = run_recipe(tmp_path / "wrong", demo_dir, *config, "train.max_steps=1", "data.exclude_videos=[grace]")
    assert wrong.returncode == 2
    assert "data.exclude_videos: ['grace'] not in" in wrong.stderr and "astronaut, grace_hopper" in wrong.stderr
    everything = run_recipe(tmp_path / "none", demo_dir, *config, "train.max_steps=1",
                            "data.exclude_videos=[astronaut,grace_hopper]")
    assert everything.returncode == 2 and "leaves no track" in everything.stderr


def read_csv_log_columns(run, tmp_path, demo_dir) -> set[str]:
    """Columns of losses.csv of a run with the reference objective (no landmark terms computed)."""
    result = run(tmp_path / "reference", demo_dir, "train.max_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    return set(read_csv_log(tmp_path / "reference" / "losses.csv")[0])


def test_non_finite_loss_is_skipped_then_stops_with_the_last_good_checkpoint(tmp_path, demo_dir):
    result = run_recipe(tmp_path / "nan", demo_dir, "train.max_steps=8", "train.save_every=1",
                        "train.debug_nan_at_step=2", "train.max_nonfinite_steps=2")
    assert result.returncode == 2, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "step 3: loss not finite, update skipped" in output
    assert "not finite for 2 steps in a row" in output and "step_00000002" in output
    assert [p.name for p in list_checkpoints(tmp_path / "nan")] == ["step_00000001", "step_00000002"]
    rows = read_csv_log(tmp_path / "nan" / "losses.csv")
    assert rows[2]["finite"] == "0" and rows[1]["finite"] == "1"
    assert not (tmp_path / "nan" / "encoder").exists()  # a diverged run exports nothing


def test_csv_log_drops_rows_after_the_resumed_step(tmp_path):
    from video_fer.train.logs import CsvLog

    log = CsvLog(tmp_path / "losses.csv")
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step})
    resumed = CsvLog(tmp_path / "losses.csv", resume_after_step=3)
    resumed.write({"step": 4, "loss": 0.5})
    rows = read_csv_log(tmp_path / "losses.csv")
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "1"), ("2", "0.5"), ("3", "0.333333"), ("4", "0.5")]
    CsvLog(tmp_path / "losses.csv")  # a fresh (not resumed) run starts a new file
    assert not (tmp_path / "losses.csv").exists()


def test_guard_and_schedule():
    from video_fer.train.loop import NonFiniteGuard, TrainingDivergedError, cosine_with_warmup

    guard = NonFiniteGuard(max_in_row=2)
    assert guard.update(False, 1) is False and guard.update(True, 2) is True  # a finite step resets the count
    guard.update(False, 3)
    with pytest.raises(TrainingDivergedError, match="step 4.*2 steps in a row.*no checkpoint was saved yet"):
        guard.update(False, 4)
    assert [round(cosine_with_warmup(s, 10, 2, 0.1), 4) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.55, 0.1]
