"""Linear probes (video_fer.evaluate.probes) and the disentanglement measurements (video_fer.evaluate.disentangle)."""
import numpy as np
import pytest
import torch

from video_fer.data.synthetic import AU_NAMES, demo_faces
from video_fer.evaluate.disentangle import PIXELS_PER_GRID_UNIT_256, endpoint_error, make_probe_pairs, measure_pairs
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder
from video_fer.evaluate.probes import ProbeInputError, f1_per_column, logistic_probe, r2_per_column, ridge_probe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def linear_data(rows: int, seed: int, noise: float = 0.05):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 10, generator=generator)
    weights = torch.linspace(-1, 1, 30).reshape(10, 3)
    y = x @ weights + noise * torch.randn(rows, 3, generator=generator)
    return x, y


def test_ridge_probe_recovers_a_linear_relation_and_scores_noise_near_zero():
    x, y = linear_data(200, 0)
    x_test, y_test = linear_data(100, 1)
    scores, prediction = ridge_probe(x, y, x_test, y_test)
    assert prediction.shape == (100, 3)
    assert scores.r2.min() > 0.98 and scores.pearson.min() > 0.99
    noise = torch.randn(100, 3, generator=torch.Generator().manual_seed(2))
    scores, _ = ridge_probe(x, torch.randn(200, 3), x_test, noise)
    assert abs(scores.pearson).max() < 0.35 and scores.r2.max() < 0.1


def test_logistic_probe_separates_linearly_separable_labels():
    x, y = linear_data(300, 3, noise=0.0)
    x_test, y_test = linear_data(200, 4, noise=0.0)
    scores, probability = logistic_probe(x, y > 0, x_test, y_test > 0)
    assert probability.shape == (200, 3) and 0 <= probability.min() and probability.max() <= 1
    assert scores.f1.min() > 0.9


def test_f1_and_r2_on_hand_made_numbers():
    predicted = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    truth = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=torch.bool)
    # column 0: tp 1, fp 1, fn 1 -> F1 = 2 / 4; column 1: nothing to find, nothing predicted -> 0
    assert f1_per_column(predicted, truth).tolist() == [0.5, 0.0]
    truth_values = torch.tensor([[1.0], [2.0], [3.0]])
    assert r2_per_column(truth_values, truth_values)[0] == pytest.approx(1.0)
    assert r2_per_column(torch.full((3, 1), 2.0), truth_values)[0] == pytest.approx(0.0)


def test_probes_reject_mismatched_rows_and_bad_validation_masks():
    x, y = linear_data(20, 0)
    with pytest.raises(ProbeInputError, match="same N"):
        ridge_probe(x, y[:10], x, y)
    with pytest.raises(ProbeInputError, match="val_groups"):
        ridge_probe(x, y, x, y, val_groups=np.zeros(20, bool))


def test_endpoint_error_is_in_pixels_of_a_256_crop():
    truth = torch.zeros(2, 2, 16, 16)
    predicted = truth.clone()
    predicted[0, 0] = 2.0 / 255.0  # 1 px at 256 px, everywhere, for sample 0
    assert endpoint_error(predicted, truth).tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[0, :, :4] = True
    masked = endpoint_error(predicted, truth, mask)
    assert masked[0] == pytest.approx(1.0, abs=1e-5) and torch.isnan(masked[1])
    assert PIXELS_PER_GRID_UNIT_256 == 127.5


def test_measure_pairs_gives_embedding_changes_and_the_zero_baseline():
    faces = demo_faces(64, mirrored=False)
    pairs = make_probe_pairs(faces.crops, faces.landmarks, faces.identities, pairs_per_face=3, seed=0)
    assert len(pairs.identities) == 6 and pairs.pairs.au_intensities.shape == (6, len(AU_NAMES))
    again = make_probe_pairs(faces.crops, faces.landmarks, faces.identities, pairs_per_face=3, seed=0)
    assert torch.equal(pairs.pairs.target, again.pairs.target)  # deterministic in the seed
    torch.manual_seed(0)
    model = TwinCycleAutoencoder(TAEConfig(image_size=64, width=4, embedding_dim=8, attention_streams=2,
                                           stream_width=4, zero_init_flow=True))
    measured = measure_pairs(model, pairs, batch_size=4, keep_rows=(1, 5))  # rows in two batches
    assert measured.action_change.shape == (6, 8) and measured.pose_change.shape == (6, 8)
    # A zero-initialised decoder predicts exactly the zero field: its errors are the baseline's.
    for name in ("action", "pose", "fused"):
        assert torch.allclose(measured.epe[name], measured.epe["zero_" + name])
    assert (measured.epe["zero_pose"] > 0).all()
    assert measured.predicted["action"].shape == (2, 2, 64, 64)
