"""tools/export_checkpoints.py: every kept checkpoint of a pretraining run as an encoder export."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from scripts import TOOLS, load_script
from video_fer.data.cache import FaceTrackCache
from video_fer.data.synthetic import build_demo_cache
from video_fer.models.checkpoint import load_encoder
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder

CONFIG = TAEConfig(image_size=64, width=4, embedding_dim=8, attention_streams=2, stream_width=4)


def fake_run(run, cache, steps):
    """A run folder as recipes/pretrain_video.py leaves it mid-training: config.json and checkpoints, no encoder/."""
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": dataclasses.asdict(CONFIG), "data": {"cache": str(cache)}}))
    models = {}
    for step in steps:
        torch.manual_seed(step)
        models[step] = TwinCycleAutoencoder(CONFIG)
        folder = run / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        save_file(models[step].state_dict(), str(folder / "model.safetensors"))
    return models


def test_each_checkpoint_becomes_the_encoder_it_holds_and_a_rerun_adds_only_new_ones(tmp_path):
    cache = tmp_path / "cache"
    build_demo_cache(cache, size=64, frames_per_track=4, tracks_per_identity=1, seed=0)
    models = fake_run(tmp_path / "run", cache, [5, 10])
    tool = load_script(TOOLS / "export_checkpoints.py", "export_checkpoints")
    assert tool.main([str(tmp_path / "run")]) == 0
    for step, model in models.items():
        export = load_encoder(tmp_path / "run" / "curve" / f"step_{step}")
        assert export.alignment == FaceTrackCache(cache).alignment
        assert json.loads((export.path / "config.json").read_text())["extra"]["step"] == step
        expected, got = model.encoder.state_dict(), export.encoder.state_dict()
        assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
    first, second = (next(models[step].encoder.parameters()) for step in (5, 10))
    assert not torch.equal(first, second)  # the two checkpoints differ, so each export matched its own
    written = (tmp_path / "run" / "curve" / "step_5" / "config.json").stat().st_mtime_ns
    later = tmp_path / "run" / "checkpoints" / "step_00000015"
    later.mkdir()
    save_file(TwinCycleAutoencoder(CONFIG).state_dict(), str(later / "model.safetensors"))
    assert tool.main([str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "curve" / "step_15" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "curve" / "step_5" / "config.json").stat().st_mtime_ns == written


def test_a_folder_that_is_no_run_or_has_no_cache_is_named(tmp_path):
    tool = load_script(TOOLS / "export_checkpoints.py", "export_checkpoints")
    with pytest.raises(SystemExit, match="not a pretraining run"):
        tool.main([str(tmp_path)])
    fake_run(tmp_path / "run", tmp_path / "gone", [5])
    with pytest.raises(SystemExit, match="give --cache"):
        tool.main([str(tmp_path / "run")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
    cache = tmp_path / "cache"
    build_demo_cache(cache, size=64, frames_per_track=4, tracks_per_identity=1, seed=0)
    with pytest.raises(SystemExit, match="no checkpoints"):
        tool.main([str(tmp_path / "empty"), "--cache", str(cache)])
