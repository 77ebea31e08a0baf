"""The seam end to end: tiny runs of every recipe -> `video-fer bundle` -> `video-fer track` on a shared clip.

pretrain_video (demo faces) writes encoder/; on that encoder, finetune_au distils the blendshape AUs
of a cache (data.dataset=blendshapes), finetune_expression and finetune_va train their heads; one
`video-fer bundle` takes the four outputs as the recipes wrote them, adds the default's head pose
and gaze, and `video-fer track` writes their columns for every frame of single_face.mp4.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from video_fer.cli import main as cli_main
from video_fer.track.table import metadata_path, read_table
from scripts import load_script

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPES = PROJECT_ROOT / "recipes"
ENCODER = ["model.width=4", "model.embedding_dim=16", "model.attention_streams=2", "model.stream_width=4"]
HEAD_RUN = ["model.image_size=64", "data.samples_per_face=14", "train.batch_size=8", "train.max_steps=3",
            "train.log_every=1", "train.threads=1", "eval.batch_size=32"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def load_recipe(name: str):
    return load_script(RECIPES / f"{name}.py", f"seam_recipe_{name}")


def test_recipes_to_bundle_to_track(tmp_path, shared_videos, mediapipe_model, capsys):
    from test_finetune_au import blendshape_cache
    from video_fer.data.synthetic import build_demo_cache
    from video_fer.models.checkpoint import load_encoder

    # 1. pretraining on the demo faces -> encoder/ (with the crops' alignment)
    build_demo_cache(tmp_path / "demo", size=64, frames_per_track=6, tracks_per_identity=2, seed=0)
    pretrain = subprocess.run(
        [sys.executable, str(RECIPES / "pretrain_video.py"), f"train.output_dir={tmp_path / 'pretrain'}",
         f"data.demo_dir={tmp_path / 'demo'}", "model.image_size=64", *ENCODER, "data.demo_frames_per_track=6",
         "data.demo_tracks_per_identity=2", "train.batch_size=4", "data.pairs_per_epoch=8", "data.val_pairs=4",
         "data.num_workers=0", "train.max_steps=2"],
        cwd=PROJECT_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    encoder = tmp_path / "pretrain" / "encoder"
    alignment = load_encoder(encoder).alignment

    # 2. the three heads on that encoder, each by its own recipe
    blendshape_cache(tmp_path / "cache", alignment=alignment)
    finetune_au = load_recipe("finetune_au")
    assert finetune_au.main(["--config", str(RECIPES / "configs" / "distill_au_blendshapes.yaml"),
                             f"data.cache={tmp_path / 'cache'}", f"model.encoder={encoder}", "train.epochs=2",
                             "train.mode=linear", "train.batch_size=8", "train.embedding_batch_size=16",
                             "train.bundle=false",
                             f"train.output_dir={tmp_path / 'au'}", "--fold", "1"]) == 0
    assert load_recipe("finetune_expression").main(
        ["--head", "acnn", f"model.encoder={encoder}", "model.head_options.fc_dim=16", *HEAD_RUN,
         f"train.output_dir={tmp_path / 'expression'}"]) == 0
    assert load_recipe("finetune_va").main([f"model.encoder={encoder}", *HEAD_RUN,
                                            f"train.output_dir={tmp_path / 'va'}"]) == 0
    capsys.readouterr()

    # 3. one bundle from the recipes' folders as they are
    code = cli_main(["bundle", "--encoder", str(encoder), "--au-intensity", str(tmp_path / "au"),
                     "--expression", str(tmp_path / "expression"), "--va", str(tmp_path / "va"),
                     "-o", str(tmp_path / "bundle")])
    assert code == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert sorted(document["heads"]) == ["au_intensity", "expression", "va"]
    assert document["heads"]["au_intensity"]["encoder"] == "encoder"  # the linear probe reads the frozen encoder
    assert set(document["extra_encoders"]) <= {"expression", "va"}  # fine-tuned encoders are kept, each once

    # 4. track a shared clip with it
    out = tmp_path / "single.csv"
    code = cli_main(["track", str(shared_videos / "single_face.mp4"), "--model", str(tmp_path / "bundle"), "-o",
                     str(out), "--landmarker-model", str(mediapipe_model), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    table = read_table(out)
    aus = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
    expected = (["frame", "timestamp", "face_id", "confidence", "success", "pose_Tx", "pose_Ty", "pose_Tz",
                 "pose_Rx", "pose_Ry", "pose_Rz", "gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y",
                 "gaze_1_z", "gaze_angle_x", "gaze_angle_y"] + [f"AU{au:02d}_r" for au in aus]
                + [f"expression_{e}" for e in ("surprise", "fear", "disgust", "happiness", "sadness", "anger",
                                               "neutral")] + ["expression", "valence", "arousal"])
    assert list(table) == expected
    assert np.array_equal(table["frame"], np.arange(72)) and (table["success"] == 1).all()
    for name in expected[5:]:
        if name != "expression":
            assert np.isfinite(table[name]).all(), name
    intensity = np.stack([table[f"AU{au:02d}_r"] for au in aus])
    assert ((intensity >= 0) & (intensity <= 5)).all()
    meta = json.loads(metadata_path(out).read_text())
    assert meta["columns"]["au_r"].startswith("learned: au_intensity head")
    assert meta["columns"]["pose"].startswith("mediapipe (no training)") and "gaze" in meta["columns"]
    assert meta["learned_heads"]["va"]["model"] == "valence_arousal_model"
