"""TAE loss terms, weighting and the hard-sample curriculum (video_fer.train.losses.tae)."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from video_fer.errors import ConfigError
from video_fer.train.losses.tae import (LANDMARK_TERMS, HardSampleCurriculum, TAELossWeights, reduce_terms, tae_loss_terms,
                                        weighted_total)
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder

B, S, D = 2, 4, 3


def hand_made_output(source: torch.Tensor, target: torch.Tensor) -> SimpleNamespace:
    """A TAEOutput look-alike whose every term has a known per-sample value."""
    offsets = torch.tensor([0.25, 0.5]).view(B, 1, 1, 1)
    zeros = torch.zeros(B, D)
    ones = torch.ones(B, D)
    return SimpleNamespace(
        generated_target=target + offsets,  # L1 = [0.25, 0.5]
        source_action_embedding=zeros, target_action_embedding=zeros,
        source_pose_embedding=zeros, target_pose_embedding=zeros,
        pose_changed_action_embedding=2 * ones,  # MSE 4
        pose_changed_pose_embedding=torch.tensor([[1.0, 1, 1], [0, 0, 0]]),  # MSE [1, 0]
        action_changed_pose_embedding=3 * ones,  # MSE 9
        action_changed_action_embedding=torch.tensor([[0.0, 0, 3], [0, 0, 0]]),  # MSE [3, 0]
        generated_pose_embedding=-ones,  # MSE 1
        generated_action_embedding=torch.zeros(B, D),  # MSE 0
        action_cycle_reconstruction=source - 0.1,  # L1 0.1
        pose_cycle_reconstruction=source + 0.2,  # L1 0.2
        action_flow=torch.cat((torch.full((1, 2, S, S), -0.3), torch.full((1, 2, S, S), 0.7))),  # |T_A| [0.3, 0.7]
    )


def test_terms_are_per_sample_with_the_formulas_values():
    source, target = torch.rand(B, 3, S, S), torch.rand(B, 3, S, S)
    terms = tae_loss_terms(hand_made_output(source, target), source, target)
    assert set(terms) == {field.name for field in dataclasses.fields(TAELossWeights)} - set(LANDMARK_TERMS)
    expected = {
        "reconstruction": [0.25, 0.5], "pose_changed_keeps_action": [4, 4],
        "pose_changed_has_target_pose": [1, 0], "action_changed_keeps_pose": [9, 9],
        "action_changed_has_target_action": [3, 0], "generated_has_target_pose": [1, 1],
        "generated_has_target_action": [0, 0], "action_cycle": [0.1, 0.1], "pose_cycle": [0.2, 0.2],
        "action_sparsity": [0.3, 0.7],
    }
    for name, values in expected.items():
        assert terms[name].shape == (B,), name
        assert torch.allclose(terms[name], torch.tensor(values, dtype=torch.float32), atol=1e-6), name


def test_reference_weights():
    weights = TAELossWeights().as_dict()
    assert weights.pop("reconstruction") == 10 and weights.pop("action_sparsity") == 0.1
    assert all(weights.pop(name) == 0 for name in LANDMARK_TERMS)  # [ours], off
    assert set(weights.values()) == {1.0} and len(weights) == 8  # six consistency MSEs + two cycles


def test_weighted_total_applies_each_weight():
    terms = {"reconstruction": torch.tensor([1.0, 2.0]), "action_sparsity": torch.tensor([10.0, 0.0])}
    total = weighted_total(terms, TAELossWeights())
    assert torch.allclose(total, torch.tensor([10 * 1 + 0.1 * 10, 10 * 2 + 0.0]))
    custom = weighted_total(terms, TAELossWeights(reconstruction=0.0, action_sparsity=2.0))
    assert torch.allclose(custom, torch.tensor([20.0, 0.0]))


def test_unknown_term_is_a_config_error_listing_valid_names():
    with pytest.raises(ConfigError, match="no weight for terms \\['bogus'\\].*reconstruction"):
        weighted_total({"bogus": torch.ones(2)}, {"reconstruction": 1.0})


def test_terms_of_a_real_model_output_backpropagate():
    model = TwinCycleAutoencoder(TAEConfig(image_size=64, width=4, embedding_dim=16, attention_streams=2,
                                           stream_width=4))
    source, target = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    terms = tae_loss_terms(model(source, target), source, target)
    assert all(value.shape == (3,) and torch.isfinite(value).all() for value in terms.values())
    total, reduced = reduce_terms(terms)
    expected = sum(TAELossWeights().as_dict()[name] * value.mean() for name, value in terms.items())
    assert torch.allclose(total, expected)
    total.backward()
    assert model.pose_decoder.blocks[0][1].weight.grad.abs().sum() > 0


def test_curriculum_window_averages_the_sorted_slice():
    losses = torch.tensor([9.0, 3.0, 7.0, 0.0, 5.0, 1.0, 8.0, 2.0, 6.0, 4.0])  # 0..9 shuffled
    curriculum = HardSampleCurriculum()
    assert curriculum.window == (0.0, 0.5)
    assert curriculum.reduce(losses).item() == pytest.approx(2.0)  # mean of 0..4
    curriculum.moves = curriculum.total_moves
    assert curriculum.window == (0.4, 0.9)
    assert curriculum.reduce(losses).item() == pytest.approx(6.0)  # mean of 4..8


def test_curriculum_keeps_at_least_one_sample():
    curriculum = HardSampleCurriculum(start=(0.4, 0.9), end=(0.4, 0.9))
    assert curriculum.reduce(torch.tensor([5.0])).item() == 5.0
    assert curriculum.slice_indices(3) == (1, 2)  # floor(1.2), floor(2.7)
    assert curriculum.reduce(torch.tensor([3.0, 1.0, 2.0])).item() == 2.0
    assert HardSampleCurriculum(start=(0.0, 0.1), end=(0.0, 0.1)).slice_indices(4) == (0, 1)


def test_curriculum_gradient_reaches_only_the_selected_samples():
    losses = torch.tensor([4.0, 1.0, 3.0, 2.0], requires_grad=True)
    HardSampleCurriculum().reduce(losses).backward()  # window [0, 0.5): samples with 1 and 2
    assert losses.grad.tolist() == [0.0, 0.5, 0.0, 0.5]


def test_curriculum_moves_after_patience_and_stops_at_the_end():
    curriculum = HardSampleCurriculum(patience=3)
    assert curriculum.total_moves == 4 and not curriculum.exhausted
    assert [curriculum.step(loss) for loss in (5.0, 4.0, 3.0)] == [False, False, False]  # improving
    assert [curriculum.step(loss) for loss in (3.0, 3.5, 3.2)] == [False, False, True]
    assert curriculum.window == (0.1, 0.6)
    assert curriculum.step(10.0) is False  # first value after a move becomes the new best
    assert curriculum.step(9.0) is False  # 9 improves on 10: the count restarts
    assert [curriculum.step(11.0), curriculum.step(9.0), curriculum.step(9.5)] == [False, False, True]
    assert curriculum.window == (0.2, 0.7)
    for _ in range(2):
        moved = [curriculum.step(1.0) for _ in range(4)]
        assert moved == [False, False, False, True]
    assert curriculum.window == (0.4, 0.9) and curriculum.exhausted
    assert not any(curriculum.step(1.0) for _ in range(10))
    assert curriculum.window == (0.4, 0.9)


def test_curriculum_state_dict_round_trip():
    curriculum = HardSampleCurriculum(patience=2)
    for loss in (3.0, 3.0, 3.0, 2.0, 2.5):
        curriculum.step(loss)
    restored = HardSampleCurriculum()
    restored.load_state_dict(curriculum.state_dict())
    assert restored.window == curriculum.window == (0.1, 0.6)
    assert (restored.best, restored.epochs_without_improvement, restored.patience) == (2.0, 1, 2)
    assert restored.step(2.7) is True and restored.window == (0.2, 0.7)


def test_curriculum_rejects_an_unreachable_end():
    with pytest.raises(ConfigError, match="whole number of steps"):
        HardSampleCurriculum(start=(0.0, 0.5), step=0.3, end=(0.4, 0.9))


def test_reduce_terms_with_curriculum_weights_each_reduced_term():
    terms = {"reconstruction": torch.tensor([4.0, 1.0, 3.0, 2.0]), "action_cycle": torch.tensor([0.0, 8.0, 8.0, 8.0])}
    total, reduced = reduce_terms(terms, TAELossWeights(), HardSampleCurriculum())
    assert reduced["reconstruction"].item() == pytest.approx(1.5)  # term by term: its own two easiest
    assert reduced["action_cycle"].item() == pytest.approx(4.0)
    assert total.item() == pytest.approx(10 * 1.5 + 4.0)


def test_consistency_ramp_and_ramped_weights():
    from video_fer.train.losses.tae import CONSISTENCY_TERMS, consistency_ramp, ramped_weights

    assert consistency_ramp(0, 0, 0) == 1.0  # the reference: always on
    assert [consistency_ramp(step, 150, 150) for step in (0, 150, 225, 300, 10_000)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert consistency_ramp(9, 10, 0) == 0.0 and consistency_ramp(10, 10, 0) == 1.0
    reference, ramped = TAELossWeights().as_dict(), ramped_weights(TAELossWeights(), 0.25).as_dict()
    for name, weight in reference.items():
        assert ramped[name] == pytest.approx(weight * (0.25 if name in CONSISTENCY_TERMS else 1.0))
    assert len(CONSISTENCY_TERMS) == 6 and "reconstruction" not in CONSISTENCY_TERMS
