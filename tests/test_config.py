"""YAML config + dotted command-line overrides (video_fer.config)."""
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from video_fer.config import config_to_dict, load_config, parse_override
from video_fer.errors import ConfigError
from scripts import load_script

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain_video.py"


def recipe_schema():
    """The pretraining schema, which sits at the top of recipes/pretrain_video.py."""
    return load_script(RECIPE, "pretrain_video_schema").PretrainConfig


PretrainConfig = recipe_schema()


@dataclass
class Inner:
    rate: float = 0.5
    steps: int = 10
    name: str = "a"
    flag: bool = False
    pair: list | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    extra: dict = field(default_factory=dict, metadata={"free_keys": True})
    seed: int = 0


def test_parse_override_types():
    assert parse_override("optim.lr=3e-4") == ("optim.lr", 3e-4)
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a=[1, 30]") == ("a", [1, 30])
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=runs/exp.1") == ("a", "runs/exp.1")
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        parse_override("novalue")


def test_file_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  rate: 1e-3\n  steps: 20\nseed: 3\n")
    config = load_config(path, ["inner.steps=7", "inner.pair=[2,5]", "extra.anything=1"], schema=Outer)
    assert config.inner.rate == pytest.approx(1e-3)  # "1e-3" in YAML 1.1 is a string: read as a number
    assert config.inner.steps == 7
    assert config.inner.pair == [2, 5]
    assert config.seed == 3
    assert config.inner.name == "a"  # untouched default
    assert config.extra == {"anything": 1}


def test_unknown_key_names_it_and_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["inner.rte=1"], schema=Outer)
    message = str(error.value)
    assert "'inner.rte'" in message and "flag, name, pair, rate, steps" in message
    path = tmp_path / "bad.yaml"
    path.write_text("innr:\n  rate: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'innr' is unknown; valid keys: extra, inner, seed"):
        load_config(path, schema=Outer)


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match="'inner.steps': expected an integer"):
        load_config(None, ["inner.steps=2.5"], schema=Outer)
    with pytest.raises(ConfigError, match="'inner.rate': expected a number"):
        load_config(None, ["inner.rate=fast"], schema=Outer)
    with pytest.raises(ConfigError, match="'inner' is a section"):
        load_config(None, ["inner=3"], schema=Outer)
    assert load_config(None, ["inner.rate=2"], schema=Outer).inner.rate == 2.0  # int is fine for a float


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml", schema=Outer)


def test_pretrain_schema_and_shipped_yaml_agree():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "pretrain_tae.yaml"
    config = load_config(path, ["train.batch_size=3", "optim.name=sgd"], schema=PretrainConfig)
    assert isinstance(config, PretrainConfig)
    assert config.train.batch_size == 3 and config.optim.name == "sgd"
    assert config.data.cache is None  # the default config trains on the embedded demo
    as_dict = config_to_dict(config)
    assert as_dict["train"]["batch_size"] == 3 and "image_size" in as_dict["model"]


def test_the_real_video_config_is_the_measured_setting():
    """pretrain_tae_real.yaml validates against the recipe's schema and holds the benchmark row it names."""
    from dataclasses import asdict
    from pathlib import Path

    from video_fer.train.losses.tae import TAELossWeights

    path = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "pretrain_tae_real.yaml"
    config = load_config(path, ["data.exclude_videos=[liveportrait_d3]"], schema=PretrainConfig)
    assert config.model == {"image_size": 128, "width": 16, "embedding_dim": 128, "attention_streams": 4,
                            "stream_width": 32, "zero_init_flow": True, "decoder_input": "concat",
                            "landmark_readout": True, "frame_readout": True, "pose_frame_readout": True}
    reference = asdict(TAELossWeights())  # the reference weights, every landmark term off
    guided = {"landmark_pose_field": 10, "landmark_action_field": 10, "landmark_pose_embedding": 30,
              "landmark_action_embedding": 30, "landmark_action_frame": 30, "landmark_pose_frame": 30,
              "landmark_attention": 1}
    assert config.loss.weights == {**reference, **guided}
    assert all(reference[name] == 0 for name in guided)
    assert config.loss.landmark_fit == "rigid3d"
    assert config.data.augment and config.data.augment_same_crop and config.data.preload
    assert (config.train.max_steps, config.train.epochs, config.train.batch_size) == (1800, 18, 16)
    assert (config.optim.name, config.optim.lr, config.optim.schedule) == ("adamw", 3e-4, "cosine")
    assert config.data.exclude_videos == ["liveportrait_d3"] and config.data.cache == "runs/real_cache_128"


def test_yes_no_stay_strings_but_true_false_are_booleans():
    assert parse_override("train.mixed_precision=no") == ("train.mixed_precision", "no")
    assert parse_override("train.validate=false") == ("train.validate", False)
    config = load_config(None, ["train.mixed_precision=no", "train.validate=false"], schema=PretrainConfig)
    assert config.train.mixed_precision == "no" and config.train.validate is False
