"""Where the TAE attention lies (video_fer.evaluate.real_probes.attention_on_features, tools/bench_attention.py)."""
import json

import pytest
import torch

from scripts import TOOLS, load_script
from video_fer.data.synthetic import build_demo_cache
from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, AlignmentSpec
from video_fer.evaluate.real_probes import attention_on_features
from video_fer.models.checkpoint import save_encoder
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder

SIZE, GRID = 128, 16


def face(batch: int = 1) -> torch.Tensor:
    return (torch.tensor(CANONICAL_LANDMARKS_68) * SIZE - 0.5).expand(batch, 68, 2).clone()


def test_even_attention_has_lift_one_and_attention_on_the_mouth_more():
    points = face()
    even = torch.full((1, 4, GRID, GRID), 0.3)
    share, lift = attention_on_features(even, points, SIZE)
    assert 0.05 < share.item() < 0.6 and torch.allclose(lift, torch.ones(1))
    cell = SIZE / GRID
    mouth = (points[0, 48:68].mean(0) / cell).long()  # (column, row) of the mouth's cell
    on_mouth = torch.full((1, 4, GRID, GRID), 0.001)
    on_mouth[..., mouth[1], mouth[0]] = 1.0
    on_corner = torch.full((1, 4, GRID, GRID), 0.001)
    on_corner[..., 0, 0] = 1.0
    assert attention_on_features(on_mouth, points, SIZE)[1] > 3 > attention_on_features(on_corner, points, SIZE)[1]
    hidden = points.clone()
    hidden[0, 17:] = float("nan")  # no brow, eye or mouth landmark: no cell near one, nothing on them
    assert attention_on_features(on_mouth, hidden, SIZE)[0] == 0


def test_the_tool_scores_an_encoder_and_the_untrained_one_on_a_cache(tmp_path):
    cache = tmp_path / "cache"
    build_demo_cache(cache, size=64, frames_per_track=4, tracks_per_identity=1, seed=0)
    config = TAEConfig(image_size=64, width=4, embedding_dim=8, attention_streams=2, stream_width=4)
    save_encoder(TwinCycleAutoencoder(config).encoder, tmp_path / "encoder", AlignmentSpec(size=64))
    tool = load_script(TOOLS / "bench_attention.py", "bench_attention")
    common = ["--cache", str(cache), "--out", str(tmp_path / "run"), "--frame-step", "1"]
    assert tool.main(common + ["--clips", "astronaut", "grace_hopper", "--encoder", f"tiny={tmp_path / 'encoder'}"]) == 0
    results = json.loads((tmp_path / "run" / "bench_attention.json").read_text())
    assert results["frames"] == 8 and results["clips"] == ["astronaut", "grace_hopper"]
    assert set(results["rows"]) == {"untrained", "tiny"}
    assert all(0 < row["share"] < 1 and row["lift"] > 0 for row in results["rows"].values())
    assert "| tiny |" in (tmp_path / "run" / "bench_attention.md").read_text()
    with pytest.raises(SystemExit, match="no_such_clip"):
        tool.main(common + ["--clips", "no_such_clip", "--encoder", f"tiny={tmp_path / 'encoder'}"])
    save_encoder(TwinCycleAutoencoder(TAEConfig(image_size=64, width=4, embedding_dim=8, attention_streams=0)).encoder,
                 tmp_path / "tcae", AlignmentSpec(size=64))
    with pytest.raises(SystemExit, match="without attention"):
        tool.main(common + ["--clips", "astronaut", "--encoder", f"tcae={tmp_path / 'tcae'}"])
