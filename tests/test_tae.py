"""The twin-cycle autoencoder: layout, shapes, gradients, and overfitting one real pair."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from video_fer.train.losses.tae import reduce_terms, tae_loss_terms
from video_fer.models.tae import (EncoderFeatures, FaceActionEncoder, FlowDecoder, TAEConfig, TAEOutput,
                                  TwinCycleAutoencoder)

REFERENCE_TCAE_PARAMETERS = 14.7e6  # TCAE, 256 px (issue / papers' code)
SMALL = dict(image_size=64, width=8, embedding_dim=32, stream_width=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def conv_shapes(module: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_tcae_layout_and_parameter_count_match_the_reference():
    model = TwinCycleAutoencoder(TAEConfig(image_size=256, attention_streams=0))
    total = count(model)
    assert abs(total - REFERENCE_TCAE_PARAMETERS) / REFERENCE_TCAE_PARAMETERS < 0.01, total
    assert conv_shapes(model.encoder.trunk) == [(32, 3, 4, 4), (64, 32, 4, 4), (128, 64, 4, 4),
                                                (256, 128, 4, 4), (256, 256, 4, 4)]
    assert conv_shapes(model.encoder.pose_branch) == [(256, 256, 4, 4)] * 3
    assert conv_shapes(model.encoder.action_branch) == conv_shapes(model.encoder.pose_branch)
    decoder_out = [shape[0] for shape in conv_shapes(model.action_decoder)]
    assert conv_shapes(model.action_decoder)[0] == (256, 512, 3, 3)
    assert decoder_out == [256, 256, 256, 256, 128, 64, 32, 3]
    last_block = model.action_decoder.blocks[-1]
    assert isinstance(last_block[-1], torch.nn.Tanh) and not any(
        isinstance(layer, torch.nn.BatchNorm2d) for layer in last_block)


def test_128_px_trunk_ends_at_8x8_and_decoder_has_7_blocks():
    config = TAEConfig(image_size=128, width=8, embedding_dim=32, attention_streams=4, stream_width=8)
    assert config.trunk_channels == [8, 16, 32, 64]
    assert config.decoder_channels == [64, 64, 64, 64, 32, 16, 8, 3]
    encoder = FaceActionEncoder(config).eval()
    features = encoder(torch.rand(2, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in features.feature_maps] == [(8, 64, 64), (16, 32, 32), (32, 16, 16),
                                                                   (64, 8, 8)]
    assert features.attention_maps.shape == (2, 4, 16, 16)
    assert FlowDecoder(config)(torch.randn(2, 64)).shape == (2, 3, 128, 128)


@pytest.mark.parametrize("streams", [0, 4])
def test_encoder_outputs_shapes_and_attention_maps(streams):
    encoder = FaceActionEncoder(TAEConfig(attention_streams=streams, **SMALL))
    features = encoder.forward_features(torch.rand(3, 3, 64, 64))
    assert isinstance(features, EncoderFeatures)
    assert features.action_embedding.shape == (3, 32) and features.pose_embedding.shape == (3, 32)
    assert [f.shape[-1] for f in features.feature_maps] == [32, 16, 8]
    if streams:
        maps = features.attention_maps
        assert maps.shape == (3, 4, 16, 16) and maps.min() >= 0 and maps.max() <= 1
    else:
        assert features.attention_maps is None


def test_attention_streams_have_their_own_weights_and_split_the_embedding():
    config = TAEConfig(attention_streams=4, **SMALL)
    branch = FaceActionEncoder(config).action_branch
    assert branch.attention.out_channels == 4  # one map per stream
    grouped = [m for m in branch.streams_stack.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.groups == 4 for conv in grouped)
    assert grouped[0].in_channels == 4 * 8 * config.width and grouped[-1].out_channels == 32  # 4 x (32 / 4)


def test_forward_returns_every_tensor_with_its_shape():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=4, **SMALL))
    output = model(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    assert isinstance(output, TAEOutput)
    assert output.landmark_readouts is output.frame_readouts is output.pose_frame_readouts is None  # only with the readouts
    shapes = {field.name: tuple(getattr(output, field.name).shape) for field in dataclasses.fields(output)
              if field.name not in ("landmark_readouts", "frame_readouts", "pose_frame_readouts")}
    for name, shape in shapes.items():
        if name.endswith("embedding"):
            assert shape == (2, 32), name
        elif name.endswith("flow"):
            assert shape == (2, 2, 64, 64), name
        elif name.endswith("weight"):
            assert shape == (2, 1, 64, 64), name
    for name in ("generated_target", "action_changed", "pose_changed", "action_cycle_reconstruction",
                 "pose_cycle_reconstruction"):
        assert shapes[name] == (2, 3, 64, 64), name
    assert shapes["source_attention_maps"] == (2, 4, 16, 16)
    assert output.fused_flow.abs().max() <= 1.0  # tanh-bounded fields


def test_batched_passes_match_encoding_each_set_alone_in_eval_mode():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=4, **SMALL)).eval()
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        output = model(source, target)
        alone_target = model.encode(target)
        alone_pose_changed = model.encode(output.pose_changed)
        alone_source = model.encode(source)
    assert torch.allclose(output.target_action_embedding, alone_target.action_embedding, atol=1e-5)
    assert torch.allclose(output.pose_changed_pose_embedding, alone_pose_changed.pose_embedding, atol=1e-5)
    assert torch.allclose(output.source_attention_maps, alone_source.attention_maps, atol=1e-6)


def test_gradients_reach_all_modules_but_not_the_warped_pixels():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=4, **SMALL))
    source = torch.rand(2, 3, 64, 64, requires_grad=True)
    target = torch.rand(2, 3, 64, 64)
    output = model(source, target)
    total, _ = reduce_terms(tae_loss_terms(output, source, target))
    total.backward(retain_graph=True)
    for part in (model.encoder.trunk, model.encoder.pose_branch, model.encoder.action_branch,
                 model.action_decoder, model.pose_decoder):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0

    # d(generated)/d(source) must equal the path through the fused field alone: no direct pixel path.
    objective = (output.generated_target * torch.rand_like(output.generated_target)).sum()
    through_everything, = torch.autograd.grad(objective, source, retain_graph=True)
    flow_grad, = torch.autograd.grad(objective, output.fused_flow, retain_graph=True)
    through_flow, = torch.autograd.grad(output.fused_flow, source, grad_outputs=flow_grad)
    assert through_everything.abs().sum() > 0
    assert torch.allclose(through_everything, through_flow, atol=1e-6)


def test_wrong_image_size_names_the_config():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=0, **SMALL))
    with pytest.raises(ValueError, match=r"`source` must be \(B, 3, 64, 64\).*image_size=64.*got shape \(1, 3, 32, 32\)"):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=100), "power of two"),
    (dict(embedding_dim=30, attention_streams=8), "divisible by attention_streams"),
    (dict(attention_streams=-1), "attention_streams=-1"),
])
def test_invalid_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TAEConfig(**kwargs)


def test_channels_last_gives_the_same_outputs():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=4, **SMALL)).eval()
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(source, target)
        model = model.to(memory_format=torch.channels_last)
        fast = model(source.contiguous(memory_format=torch.channels_last),
                     target.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(reference.generated_target, fast.generated_target, atol=1e-4)
    assert torch.allclose(reference.source_action_embedding, fast.source_action_embedding, atol=1e-4)


def load_smile_pair(videos, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames 0 (neutral) and 60 (smiling) of single_face.mp4, a 240 px square around the face."""
    import decord

    reader = decord.VideoReader(str(videos / "single_face.mp4"))
    frames = torch.from_numpy(reader.get_batch([0, 60]).asnumpy()).permute(0, 3, 1, 2).float() / 255
    faces = frames[:, :, 50:290, 180:420]  # the face sits at x 220-380, y 60-300 in both frames
    faces = F.interpolate(faces, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return faces[0:1], faces[1:2]


def test_overfitting_one_real_pair_halves_the_reconstruction_error(shared_videos):
    torch.manual_seed(0)
    source, target = load_smile_pair(shared_videos, 128)
    # Zero-initialised fields: the first reconstruction is the source itself, so halving the
    # error means the model learnt real motion, not just to undo a random initial warp.
    config = TAEConfig(image_size=128, width=8, embedding_dim=64, attention_streams=2, stream_width=8,
                       zero_init_flow=True)
    model = TwinCycleAutoencoder(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(60):
        terms = tae_loss_terms(model(source, target), source, target)
        total, reduced = reduce_terms(terms)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        history.append(reduced["reconstruction"].item())
    unchanged = (source - target).abs().mean().item()
    assert history[0] == pytest.approx(unchanged, rel=1e-4)
    assert min(history[-5:]) < 0.5 * history[0], history[::10]


def test_difference_decoder_input_sees_only_the_change_of_the_embeddings():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=4, decoder_input="difference", **SMALL)).eval()
    first, second = torch.randn(3, 32), torch.randn(3, 32)
    offset = torch.randn(1, 32)  # what stays constant along a track (identity, lighting)
    pair = model.embedding_pair(first, second)
    assert torch.equal(pair, torch.cat((second - first, first - second), dim=1))
    assert torch.allclose(model.embedding_pair(first + offset, second + offset), pair, atol=1e-6)
    assert torch.equal(model.embedding_pair(first, first), torch.zeros(3, 64))
    with torch.no_grad():  # the decoder cannot tell an offset pair from the original one
        assert torch.allclose(model.action_decoder(model.embedding_pair(first + offset, second + offset)),
                              model.action_decoder(pair), atol=1e-5)
    reference = TwinCycleAutoencoder(TAEConfig(attention_streams=4, **SMALL))
    assert torch.equal(reference.embedding_pair(first, second), torch.cat((first, second), dim=1))
    with pytest.raises(ValueError, match="decoder_input='sum'.*concat"):
        TAEConfig(decoder_input="sum")


def test_difference_decoder_input_trains_the_whole_model():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=4, decoder_input="difference", **SMALL))
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    total, _ = reduce_terms(tae_loss_terms(model(source, target), source, target))
    total.backward()
    for part in (model.encoder.pose_branch, model.encoder.action_branch, model.action_decoder, model.pose_decoder):
        assert sum(p.grad.abs().sum() for p in part.parameters() if p.grad is not None) > 0


def test_landmark_readouts_read_the_embedding_changes_and_stay_out_of_the_encoder():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=4, landmark_readout=True, **SMALL))
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    output = model(source, target)
    action, pose = output.landmark_readouts
    assert action.shape == pose.shape == (2, 68, 2)
    expected = model.action_readout(output.source_action_embedding - output.target_action_embedding)
    assert torch.allclose(action.flatten(1), expected)
    assert action.abs().max() == 0 and pose.abs().max() == 0  # they start at "no motion"
    with torch.no_grad():
        model.action_readout.weight.normal_()
    action = model(source, target).landmark_readouts[0]
    same = model(source, source).landmark_readouts[0]  # no change: the readout's bias alone
    assert torch.allclose(same.flatten(1), model.action_readout.bias.expand(2, -1), atol=1e-5)
    action.sum().backward()
    assert model.encoder.action_branch.attention.weight.grad.abs().sum() > 0
    assert not any("readout" in name for name in model.encoder.state_dict())
    assert TwinCycleAutoencoder(TAEConfig(**SMALL))(source, target).landmark_readouts is None


def test_the_frame_readouts_read_each_frame_and_stay_out_of_the_encoder():
    model = TwinCycleAutoencoder(TAEConfig(attention_streams=4, frame_readout=True, pose_frame_readout=True, **SMALL))
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    output = model(source, target)
    assert output.frame_readouts.shape == output.pose_frame_readouts.shape == (2, 2, 68, 2)
    assert output.landmark_readouts is None
    assert output.frame_readouts.abs().max() == output.pose_frame_readouts.abs().max() == 0  # the track's mean face
    with torch.no_grad():
        model.frame_readout.weight.normal_()
        model.pose_frame_readout.weight.normal_()
    output = model(source, target)
    readouts = {"frame_readouts": (model.frame_readout, output.source_action_embedding, output.target_action_embedding),
                "pose_frame_readouts": (model.pose_frame_readout, output.source_pose_embedding,
                                        output.target_pose_embedding)}
    for name, (readout, *embeddings) in readouts.items():
        for frame, embedding in enumerate(embeddings):
            assert torch.allclose(getattr(output, name)[:, frame].flatten(1), readout(embedding), atol=1e-6)
    output.frame_readouts.sum().backward()
    assert model.encoder.action_branch.attention.weight.grad.abs().sum() > 0
    model.zero_grad()
    model(source, target).pose_frame_readouts.sum().backward()
    assert all(parameter.grad.abs().sum() > 0 for parameter in model.encoder.pose_branch.parameters())
    assert model.encoder.action_branch.attention.weight.grad is None  # psi's readout does not train phi's branch
    assert not any("readout" in name for name in model.encoder.state_dict())
