"""Checkpoints: config.json + model.safetensors round trips and clear errors (video_fer.models.checkpoint)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import video_fer
from video_fer.models.checkpoint import load_model, register_architecture, save_model
from video_fer.errors import CheckpointError
from video_fer.models.tae import FaceActionEncoder, TAEConfig, TwinCycleAutoencoder

SMALL = TAEConfig(image_size=64, width=4, embedding_dim=16, attention_streams=2, stream_width=4)


def trained_a_little(model: torch.nn.Module) -> torch.nn.Module:
    """Move weights and BatchNorm running stats away from their initial values."""
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64))
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model.eval()


def test_round_trip_gives_identical_outputs(tmp_path):
    model = trained_a_little(TwinCycleAutoencoder(SMALL))
    save_model(model, tmp_path / "tae", extra={"step": 12})
    document = json.loads((tmp_path / "tae" / "config.json").read_text())
    assert document["architecture"] == "twin_cycle_autoencoder" and document["format_version"] == 1
    assert document["config"]["embedding_dim"] == 16 and document["extra"] == {"step": 12}
    assert document["video_fer_version"] == video_fer.__version__

    loaded = video_fer.load_model(tmp_path / "tae")
    assert isinstance(loaded, TwinCycleAutoencoder) and not loaded.training
    assert loaded.config == SMALL
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before, after = model(source, target), loaded(source, target)
    assert torch.equal(before.generated_target, after.generated_target)
    assert torch.equal(before.source_action_embedding, after.source_action_embedding)


def test_encoder_round_trip_and_file_paths_are_accepted(tmp_path):
    encoder = trained_a_little(TwinCycleAutoencoder(SMALL)).encoder
    save_model(encoder, tmp_path / "encoder")
    assert json.loads((tmp_path / "encoder" / "config.json").read_text())["architecture"] == "tae_encoder"
    loaded = load_model(tmp_path / "encoder" / "model.safetensors")
    assert isinstance(loaded, FaceActionEncoder)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(images).action_embedding, loaded(images).action_embedding)
    assert sorted(p.name for p in (tmp_path / "encoder").iterdir()) == ["config.json", "model.safetensors"]


def test_mismatching_config_names_directory_and_keys(tmp_path):
    save_model(TwinCycleAutoencoder(SMALL), tmp_path / "tae")
    config_path = tmp_path / "tae" / "config.json"
    document = json.loads(config_path.read_text())
    document["config"]["embedding_dim"] = 32
    config_path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "tae")
    message = str(error.value)
    assert str(tmp_path / "tae") in message and "does not match config.json" in message
    assert "encoder.pose_branch.2.0.weight" in message and "save the model again" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    save_model(TwinCycleAutoencoder(SMALL), tmp_path / "tae")
    weights = tmp_path / "tae" / "model.safetensors"
    state = load_file(str(weights))
    state["encoder.extra_layer.weight"] = state.pop("pose_decoder.blocks.0.1.weight")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"missing \['pose_decoder.blocks.0.1.weight'\]; "
                                              r"unexpected \['encoder.extra_layer.weight'\]"):
        load_model(tmp_path / "tae")


@pytest.mark.parametrize("damage, message", [
    ("no_weights", "no model.safetensors beside config.json"),
    ("no_config", "no config.json"),
    ("corrupt_weights", "unreadable safetensors file"),
    ("bad_json", "not valid JSON"),
    ("unknown_architecture", "unknown architecture 'resnet9000'"),
    ("unknown_config_key", "cannot build 'twin_cycle_autoencoder' from its config"),
])
def test_broken_checkpoints_raise_checkpoint_error(tmp_path, damage, message):
    directory = save_model(TwinCycleAutoencoder(SMALL), tmp_path / "tae")
    config_path, weights = directory / "config.json", directory / "model.safetensors"
    document = json.loads(config_path.read_text())
    if damage == "no_weights":
        weights.unlink()
    elif damage == "no_config":
        config_path.unlink()
    elif damage == "corrupt_weights":
        weights.write_bytes(b"not a safetensors file at all")
    elif damage == "bad_json":
        config_path.write_text("{architecture:")
    elif damage == "unknown_architecture":
        config_path.write_text(json.dumps({**document, "architecture": "resnet9000"}))
    elif damage == "unknown_config_key":
        config_path.write_text(json.dumps({**document, "config": {**document["config"], "depth": 3}}))
    with pytest.raises(CheckpointError, match=message):
        load_model(directory)


def test_missing_directory_and_unregistered_model(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a registered architecture"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "linear")
    assert not (tmp_path / "linear").exists()


def test_a_newly_registered_architecture_round_trips(tmp_path):
    @register_architecture("test_tiny_linear")
    class TinyLinear(torch.nn.Module):
        def __init__(self, features: int = 3) -> None:
            super().__init__()
            self.config = {"features": features}
            self.linear = torch.nn.Linear(features, 1)

    model = TinyLinear(features=5)
    save_model(model, tmp_path / "tiny")
    loaded = load_model(tmp_path / "tiny")
    assert loaded.config == {"features": 5}
    assert torch.equal(loaded.linear.weight, model.linear.weight)
