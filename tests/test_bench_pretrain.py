"""tools/bench_pretrain.py: the recipe's step it times is the recipe's, with the config's loss terms."""
import pytest

from scripts import PROJECT_ROOT, TOOLS, load_script
from video_fer.data.synthetic import build_demo_cache

TINY = ["model.width=4", "model.embedding_dim=16", "model.attention_streams=2", "model.stream_width=4"]
CONFIGS = PROJECT_ROOT / "recipes" / "configs"


@pytest.fixture(scope="module")
def tool():
    return load_script(TOOLS / "bench_pretrain.py", "bench_pretrain")


def test_the_real_video_config_is_timed_with_its_landmark_terms_and_the_demo_without(tool, tmp_path):
    cache = tmp_path / "cache"
    build_demo_cache(cache, size=64, frames_per_track=6, tracks_per_identity=2, seed=0)
    real = tool.recipe_step_breakdown(64, 2, 1, str(CONFIGS / "pretrain_tae_real.yaml"), False, str(cache), TINY)
    assert real["landmark_terms"] and {"landmark_pose_field", "landmark_action_embedding", "landmark_action_frame",
                                       "landmark_pose_frame", "landmark_attention"} <= set(real["loss_terms"])
    assert set(real["phase_seconds"]) == {*tool.PHASES, "bare_forward", "bare_backward"}
    assert real["flops_per_pair"] > 0 and real["model"]["pose_frame_readout"] is True
    demo = tool.recipe_step_breakdown(64, 2, 1, str(CONFIGS / "pretrain_tae.yaml"), False, str(cache), TINY)
    assert not demo["landmark_terms"] and not any(name.startswith("landmark") for name in demo["loss_terms"])
    assert "reconstruction" in demo["loss_terms"] and "action_cycle" in demo["loss_terms"]
