"""Metrics checked against values worked out by hand on small arrays (the working is in the comments)."""
import math

import numpy as np
import pytest
import torch

from video_fer.evaluate import metrics

# Three AUs over five frames.
# AU a: labels 1 1 0 0 1, scores .9 .4 .6 .1 .5 -> predicted 1 0 1 0 1 (0.5 >= 0.5 is positive)
#        TP = 2 (frames 0, 4), FP = 1 (frame 2), FN = 1 (frame 1) -> F1 = 4 / (4 + 1 + 1) = 2/3
# AU b: labels 1 -1 0 1 0, scores .2 .9 .1 .7 .8 -> frame 1 not coded (masked)
#        predicted 0 . 0 1 1: TP = 1 (frame 3), FP = 1 (frame 4), FN = 1 (frame 0) -> F1 = 2 / 4 = 1/2
#        (were frame 1 counted negative it would add a FP: 2 / 5 = 0.4)
# AU c: all negative, nothing predicted -> 0/0 -> F1 = 0 by convention
LABELS = np.array([[1, 1, 0], [1, -1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]])
SCORES = np.array([[0.9, 0.2, 0.1], [0.4, 0.9, 0.1], [0.6, 0.1, 0.1], [0.1, 0.7, 0.1], [0.5, 0.8, 0.1]])


def test_f1_per_au_matches_hand_computation_with_not_coded_masked():
    np.testing.assert_allclose(metrics.f1_per_au(LABELS, SCORES), [2 / 3, 0.5, 0.0])
    # mean over AUs: (2/3 + 1/2 + 0) / 3 = 7/18
    assert metrics.mean_f1(LABELS, SCORES) == pytest.approx(7 / 18)


def test_f1_explicit_mask_and_threshold():
    mask = np.ones_like(LABELS, dtype=bool)
    mask[2, 0] = False  # AU a without frame 2: TP = 2, FP = 0, FN = 1 -> 4 / 5
    assert metrics.f1_per_au(LABELS, SCORES, mask=mask)[0] == pytest.approx(0.8)
    # AU a at threshold 0.55: predicted 1 0 1 0 0 -> TP = 1, FP = 1, FN = 2 -> 2 / 5
    assert metrics.f1_per_au(LABELS[:, 0], SCORES[:, 0], threshold=0.55) == pytest.approx(0.4)


def test_f1_all_negative_au_with_false_positives_is_zero_and_perfect_is_one():
    assert metrics.f1_per_au(np.zeros(4), np.array([0.9, 0.1, 0.1, 0.1])) == 0.0
    assert metrics.f1_per_au(np.array([1, 0, 1, 0]), np.array([1, 0, 1, 0])) == 1.0


def test_f1_accepts_torch_tensors_and_returns_floats_for_one_column():
    per_au = metrics.f1_per_au(torch.tensor(LABELS), torch.tensor(SCORES, dtype=torch.float32))
    assert isinstance(per_au, np.ndarray) and per_au.shape == (3,)
    np.testing.assert_allclose(per_au, [2 / 3, 0.5, 0.0])
    assert isinstance(metrics.f1_per_au(LABELS[:, 0], SCORES[:, 0]), float)


def test_f1_rejects_intensity_labels_and_shape_mismatch():
    with pytest.raises(ValueError, match=r"labels\[0, 0\] = 3.*threshold intensities"):
        metrics.f1_per_au(np.array([[3], [0]]), np.array([[0.1], [0.2]]))
    with pytest.raises(ValueError, match="must match frame for frame"):
        metrics.f1_per_au(LABELS, SCORES[:4])


def test_auc_rank_formula_with_ties_single_class_nan_and_mask():
    # column 0: labels 1 0 1 0, scores .8 .8 .6 .2; positive/negative pairs:
    #   (.8,.8) tie = 1/2, (.8,.2) = 1, (.6,.8) = 0, (.6,.2) = 1 -> 2.5 / 4 = 0.625
    # column 1: only positives -> NaN
    # column 2: labels 1 0 -1 0 (frame 2 masked), scores .3 .1 .0 .5 -> (.3,.1) = 1, (.3,.5) = 0 -> 1/2
    labels = np.array([[1, 1, 1], [0, 1, 0], [1, 1, -1], [0, 1, 0]])
    scores = np.array([[0.8, 0.1, 0.3], [0.8, 0.2, 0.1], [0.6, 0.3, 0.0], [0.2, 0.4, 0.5]])
    auc = metrics.auc_per_au(labels, scores)
    assert auc[0] == pytest.approx(0.625)
    assert math.isnan(auc[1])
    assert auc[2] == pytest.approx(0.5)


def test_summarize_folds_means_and_nan_handling():
    # per-fold means: (.5+.7)/2 = .6, (.3+.9)/2 = .6, (.4+.2)/2 = .3 -> mean .5; per AU: .4, .6
    summary = metrics.summarize_folds([[0.5, 0.7], [0.3, 0.9], [0.4, 0.2]])
    assert summary.mean == pytest.approx(0.5)
    np.testing.assert_allclose(summary.per_au, [0.4, 0.6])
    np.testing.assert_allclose(summary.per_fold, [0.6, 0.6, 0.3])
    # with a NaN (one-class AUC): ignored -> folds .5 and (.3+.9)/2 = .6, mean .55; per AU .4 and .9
    with_nan = [[0.5, np.nan], [0.3, 0.9]]
    ignored = metrics.summarize_folds(with_nan, ignore_nan=True)
    assert ignored.mean == pytest.approx(0.55)
    np.testing.assert_allclose(ignored.per_au, [0.4, 0.9])
    assert math.isnan(metrics.summarize_folds(with_nan).mean)


# Intensity pair used below: truth x = 1 2 3 4, prediction y = 2 3 3 6.
TRUTH = np.array([1.0, 2.0, 3.0, 4.0])
PREDICTION = np.array([2.0, 3.0, 3.0, 6.0])


def test_icc_3_1_matches_two_way_anova_by_hand():
    # grand mean 24/8 = 3; frame means 1.5 2.5 3 5 -> SS_frames = 2 (2.25 + .25 + 0 + 4) = 13
    # rater means 2.5 3.5 -> SS_raters = 4 (.25 + .25) = 2; SS_total = 4+1+0+1 + 1+0+0+9 = 16
    # SS_error = 16 - 13 - 2 = 1; BMS = 13/3, EMS = 1/(3*1) = 1/3
    # ICC(3,1) = (13/3 - 1/3) / (13/3 + 1/3) = 12/14 = 6/7
    assert metrics.icc_3_1(TRUTH, PREDICTION) == pytest.approx(6 / 7)
    assert metrics.icc_3_1(TRUTH, TRUTH) == pytest.approx(1.0)
    # consistency form: a constant offset between the two raters does not lower ICC(3,1)
    assert metrics.icc_3_1(TRUTH, TRUTH + 2) == pytest.approx(1.0)
    assert math.isnan(metrics.icc_3_1(np.ones(4), np.ones(4)))


def test_pcc_ccc_mae_rmse_by_hand():
    # dx = -1.5 -.5 .5 1.5, dy = -1.5 -.5 -.5 2.5: sum dx dy = 6, sum dx^2 = 5, sum dy^2 = 9
    assert metrics.pearson_correlation(TRUTH, PREDICTION) == pytest.approx(6 / math.sqrt(45))
    # population: cov = 6/4, var x = 5/4, var y = 9/4, (mean x - mean y)^2 = 1 -> CCC = 3 / 4.5 = 2/3
    assert metrics.concordance_correlation(TRUTH, PREDICTION) == pytest.approx(2 / 3)
    # |errors| = 1 1 0 2 -> MAE = 1; squared 1 1 0 4 -> RMSE = sqrt(6/4)
    assert metrics.mean_absolute_error(TRUTH, PREDICTION) == pytest.approx(1.0)
    assert metrics.root_mean_square_error(TRUTH, PREDICTION) == pytest.approx(math.sqrt(1.5))


def test_ccc_of_shifted_copy_is_below_one_while_pcc_is_one():
    assert metrics.concordance_correlation(TRUTH, TRUTH) == pytest.approx(1.0)
    # y = x + 1: cov = var = 5/4 -> CCC = 2.5 / (1.25 + 1.25 + 1) = 5/7
    assert metrics.concordance_correlation(TRUTH, TRUTH + 1) == pytest.approx(5 / 7)
    assert metrics.pearson_correlation(TRUTH, TRUTH + 1) == pytest.approx(1.0)


def test_continuous_metrics_ignore_not_coded_truth_and_work_per_column():
    truth = np.append(TRUTH, np.nan)  # a fifth, not coded frame with a wild prediction
    prediction = np.append(PREDICTION, 100.0)
    assert metrics.concordance_correlation(truth, prediction) == pytest.approx(2 / 3)
    assert metrics.icc_3_1(truth, prediction) == pytest.approx(6 / 7)
    mask = np.array([True, True, True, True, False])
    assert metrics.mean_absolute_error(np.append(TRUTH, 0.0), prediction, mask=mask) == pytest.approx(1.0)
    both = metrics.concordance_correlation(np.stack([TRUTH, TRUTH], 1), np.stack([PREDICTION, TRUTH + 1], 1))
    np.testing.assert_allclose(both, [2 / 3, 5 / 7])
    with pytest.raises(ValueError, match="prediction contains NaN"):
        metrics.root_mean_square_error(TRUTH, np.array([1.0, np.nan, 3.0, 4.0]))


# Expression: labels 0 0 1 1 2 2 2, predicted 0 1 1 1 2 0 2
EXPRESSION_LABELS = np.array([0, 0, 1, 1, 2, 2, 2])
EXPRESSION_PREDICTIONS = np.array([0, 1, 1, 1, 2, 0, 2])


def test_confusion_accuracy_and_class_balanced_accuracy_by_hand():
    matrix = metrics.confusion_matrix(EXPRESSION_LABELS, EXPRESSION_PREDICTIONS)
    # row = true class: class 0 -> one 0, one 1; class 1 -> two 1; class 2 -> one 0, two 2
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    np.testing.assert_allclose(metrics.normalize_confusion_rows(matrix),
                               [[0.5, 0.5, 0], [0, 1, 0], [1 / 3, 0, 2 / 3]])
    assert metrics.accuracy(EXPRESSION_LABELS, EXPRESSION_PREDICTIONS) == pytest.approx(5 / 7)
    # recalls .5, 1, 2/3 -> mean 13/18
    assert metrics.mean_class_accuracy(EXPRESSION_LABELS, EXPRESSION_PREDICTIONS) == pytest.approx(13 / 18)


def test_expression_metrics_take_scores_and_absent_classes():
    scores = np.eye(4)[EXPRESSION_PREDICTIONS]  # one-hot scores over 4 classes; class 3 never occurs
    matrix = metrics.confusion_matrix(EXPRESSION_LABELS, torch.tensor(scores))
    assert matrix.shape == (4, 4) and matrix[3].sum() == 0
    np.testing.assert_array_equal(metrics.normalize_confusion_rows(matrix)[3], np.zeros(4))
    assert metrics.mean_class_accuracy(EXPRESSION_LABELS, scores) == pytest.approx(13 / 18)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 2\)"):
        metrics.confusion_matrix(EXPRESSION_LABELS, EXPRESSION_PREDICTIONS, num_classes=2)


def test_plot_confusion_matrix_writes_a_png(tmp_path):
    import matplotlib.image

    path = tmp_path / "confusion.png"
    metrics.plot_confusion_matrix(metrics.confusion_matrix(EXPRESSION_LABELS, EXPRESSION_PREDICTIONS), path,
                                  class_names=["neutral", "happy", "sad"], title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert not list(tmp_path.glob(".*partial*"))  # the temporary file was renamed away
    with pytest.raises(ValueError, match="class_names has 2 names for a 3-class matrix"):
        metrics.plot_confusion_matrix(np.eye(3), tmp_path / "bad.png", class_names=["a", "b"])


def test_masked_metrics_equal_the_metrics_of_the_kept_rows_on_random_data():
    # reference: the same metric computed column by column on the coded rows only, and
    # PCC / AUC by independent formulas (np.corrcoef, counting every positive/negative pair)
    generator = np.random.default_rng(0)
    truth = generator.normal(size=(40, 3))
    prediction = truth + generator.normal(scale=0.7, size=(40, 3))
    mask = generator.random((40, 3)) > 0.3
    icc = metrics.icc_3_1(truth, prediction, mask=mask)
    pcc = metrics.pearson_correlation(truth, prediction, mask=mask)
    ccc = metrics.concordance_correlation(truth, prediction, mask=mask)
    for column in range(3):
        keep = mask[:, column]
        assert icc[column] == pytest.approx(metrics.icc_3_1(truth[keep, column], prediction[keep, column]))
        kept_ccc = metrics.concordance_correlation(truth[keep, column], prediction[keep, column])
        assert ccc[column] == pytest.approx(kept_ccc)
        assert pcc[column] == pytest.approx(np.corrcoef(truth[keep, column], prediction[keep, column])[0, 1])

    labels = (generator.random((30, 2)) > 0.5).astype(int)
    scores = np.round(generator.random((30, 2)), 1)  # one decimal: many ties
    auc = metrics.auc_per_au(labels, scores)
    for column in range(2):
        positive, negative = scores[labels[:, column] == 1, column], scores[labels[:, column] == 0, column]
        pairs = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
        assert auc[column] == pytest.approx(pairs.mean())
