"""AU benchmark evaluation: per-fold scores worked out by hand, the mean over folds, JSON/Markdown, the CLI."""
import argparse
import json

import numpy as np
import pytest

from video_fer.evaluate import au_report as evaluation
from video_fer.data.folds import BP4D_AUS
from video_fer.errors import VideoFerError
from video_fer.evaluate.au_report import FoldPredictions
from video_fer.evaluate.metrics import icc_3_1, mean_absolute_error, pearson_correlation

# 4 frames x 2 AUs; -1 = not coded. Worked out by hand at threshold 0.5:
# AU1: predicted rows 0, 2; true rows 0, 1 -> TP 1, FP 1, FN 1 -> F1 = 2/4 = 0.5;
#      AUC: positives (.9, .4) vs negatives (.6, .1): 3 of 4 pairs ordered -> 0.75.
# AU2 (row 2 masked): predicted row 1; true rows 1, 3 -> TP 1, FN 1 -> F1 = 2/3; AUC (.8, .3) vs (.2) -> 1.
LABELS = np.array([[1, 0], [1, 1], [0, -1], [0, 1]], np.int8)
SCORES = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.9], [0.1, 0.3]], np.float32)


def predictions(labels=LABELS, scores=SCORES, au_numbers=(1, 2), subject="S1"):
    count = len(labels)
    return FoldPredictions(tuple(au_numbers), scores, labels, np.full(count, subject), np.full(count, "v.avi"),
                           np.arange(count))


def test_occurrence_scores_match_hand_computed_f1_and_auc():
    scores = evaluation.occurrence_scores((1, 2), LABELS, SCORES)
    assert scores["f1"] == pytest.approx({"AU01": 0.5, "AU02": 2 / 3})
    assert scores["mean_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert scores["auc"] == pytest.approx({"AU01": 0.75, "AU02": 1.0})
    assert scores["coded_frames"] == {"AU01": 4, "AU02": 3}
    assert scores["positive_frames"] == {"AU01": 2, "AU02": 2}
    # at threshold 0.35 AU1 also predicts row 1: TP 2, FP 1 -> F1 = 4/5
    assert evaluation.occurrence_scores((1, 2), LABELS, SCORES, threshold=0.35)["f1"]["AU01"] == pytest.approx(0.8)


def test_aggregate_is_the_mean_over_folds_of_the_mean_over_aus():
    folds = {1: {"f1": {"AU01": 0.2, "AU02": 0.4}, "mean_f1": 0.3, "auc": {"AU01": 0.5, "AU02": None}, "frames": 10},
             2: {"f1": {"AU01": 0.6, "AU02": 0.0}, "mean_f1": 0.3, "auc": {"AU01": 0.7, "AU02": 0.9}, "frames": 5},
             3: {"f1": {"AU01": 1.0, "AU02": 0.8}, "mean_f1": 0.9, "auc": {"AU01": 0.9, "AU02": 0.5}, "frames": 7}}
    aggregate = evaluation.aggregate_folds(folds, (1, 2))
    assert aggregate["mean_f1"] == pytest.approx(0.5)  # (0.3 + 0.3 + 0.9) / 3
    assert aggregate["f1"] == pytest.approx({"AU01": 0.6, "AU02": 0.4})
    assert aggregate["f1_per_fold"] == pytest.approx([0.3, 0.3, 0.9])
    assert aggregate["auc"] == pytest.approx({"AU01": 0.7, "AU02": 0.7})  # an undefined AUC is skipped, not zero
    assert aggregate["complete"] is True and aggregate["frames"] == 22
    partial = evaluation.aggregate_folds({2: folds[2]}, (1, 2))
    assert partial["complete"] is False and partial["folds"] == [2] and partial["mean_f1"] == pytest.approx(0.3)
    with pytest.raises(VideoFerError, match="no finished fold"):
        evaluation.aggregate_folds({}, (1, 2))


def test_markdown_table_has_the_papers_layout_with_the_published_anchor():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (40, len(BP4D_AUS))).astype(np.int8)
    fold_results = {fold: evaluation.evaluate_fold(predictions(labels, rng.random(labels.shape), BP4D_AUS))
                    for fold in (1, 2, 3)}
    report = evaluation.build_report(fold_results, BP4D_AUS, "bp4d", method="my encoder, linear probe")
    text = evaluation.markdown_table(report)
    lines = text.splitlines()
    header = "| Method | AU1 | AU2 | AU4 | AU6 | AU7 | AU10 | AU12 | AU14 | AU15 | AU17 | AU23 | AU24 | Avg. |"
    assert lines[lines.index(header) + 1].count("---:") == 13  # numbers right-aligned, 12 AUs + mean
    ours = lines[lines.index(header) + 2]
    cells = [cell.strip() for cell in ours.strip("|").split("|")]
    assert cells[0] == "my encoder, linear probe (mean of folds 1-3)"
    assert cells[1:] == [f"{100 * report['aggregate']['f1'][f'AU{au:02d}']:.1f}" for au in BP4D_AUS] + \
        [f"{100 * report['aggregate']['mean_f1']:.1f}"]
    anchor = lines[lines.index(header) + 3]
    assert anchor.startswith("| TCAE linear probe (Li et al., CVPR 2019, published) |")
    assert anchor.endswith("| 56.1 |") and anchor.count("–") == 12  # per-AU values unknown: not invented
    assert "| fold 2 |" in text and "### AUC (%)" in text


def test_intensity_fold_scores_icc_pcc_mae_and_f1_from_intensity_two():
    truth = np.array([[0, 1], [2, 3], [4, np.nan], [1, 5]], np.float32)
    predicted = np.array([[0.5, 1.0], [2.5, 2.0], [3.0, 1.0], [1.0, 4.0]], np.float32)
    occurrence = np.where(np.isnan(truth), -1, truth >= 2).astype(np.int8)
    fold = FoldPredictions((1, 2), None, occurrence, np.full(4, "S"), np.full(4, "v"), np.arange(4), predicted, truth)
    result = evaluation.evaluate_fold(fold)
    assert result["task"] == "intensity"
    assert result["icc"]["AU01"] == pytest.approx(icc_3_1(truth[:, 0], predicted[:, 0]))
    assert result["pcc"]["AU02"] == pytest.approx(pearson_correlation([1, 3, 5], [1.0, 2.0, 4.0]))  # row 2 masked
    assert result["mae"]["AU02"] == pytest.approx(mean_absolute_error([1, 3, 5], [1.0, 2.0, 4.0]))  # = 2/3
    # AU1 present where intensity >= 2: true rows 1, 2; predicted rows 1, 2 -> F1 = 1
    assert result["f1"]["AU01"] == pytest.approx(1.0)
    # AU2 coded rows 0, 1, 3: true rows 1, 3; predicted >= 2 rows 1, 3 -> F1 = 1
    assert result["f1"]["AU02"] == pytest.approx(1.0)


def test_predictions_round_trip_and_shape_errors(tmp_path):
    fold = predictions()
    path = fold.save(tmp_path / "fold_1" / "predictions.npz")
    loaded = FoldPredictions.load(path)
    assert loaded.au_numbers == (1, 2) and loaded.task == "occurrence"
    np.testing.assert_array_equal(loaded.scores, SCORES)
    np.testing.assert_array_equal(loaded.occurrence, LABELS)
    with pytest.raises(VideoFerError, match=r"scores has shape \(3, 2\), expected \(4, 2\)"):
        FoldPredictions((1, 2), SCORES[:3], LABELS, np.full(4, "S"), np.full(4, "v"), np.arange(4))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(VideoFerError, match="bad.npz: cannot read predictions"):
        FoldPredictions.load(tmp_path / "bad.npz")


def write_run(run_dir, folds=(1, 2, 3)):
    """Fold k: the hand-worked arrays with the scores shifted so F1 differs per fold."""
    for fold in folds:
        scores = np.clip(SCORES + 0.1 * (fold - 2), 0, 1)
        predictions(scores=scores, subject=f"S{fold}").save(run_dir / f"fold_{fold}" / "predictions.npz")
    (run_dir / "run.json").write_text(json.dumps({"dataset": "bp4d", "method": "probe",
                                                  "faces": {"labelled": 14, "without_face": 2}}))


def test_evaluate_run_recomputes_every_fold_and_writes_json_and_markdown(tmp_path):
    write_run(tmp_path)
    report = evaluation.evaluate_run(tmp_path)
    expected = [evaluation.occurrence_scores((1, 2), LABELS, np.clip(SCORES + 0.1 * (k - 2), 0, 1))["mean_f1"]
                for k in (1, 2, 3)]
    assert len(set(np.round(expected, 6))) > 1  # the folds really differ
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["aggregate"]["mean_f1"] == pytest.approx(np.mean(expected))
    assert saved["aggregate"]["f1_per_fold"] == pytest.approx(expected)
    assert saved["published"][0]["mean_f1"] == pytest.approx(0.561) and report["dataset"] == "bp4d"
    markdown = (tmp_path / "results.md").read_text()
    assert "| probe (mean of folds 1-3) | " in markdown and f"{100 * np.mean(expected):.1f} |" in markdown
    assert "2 of 14 labelled frames had no face" in markdown


def test_cli_evaluate_writes_the_report_and_names_a_bad_folder(tmp_path, capsys):
    from video_fer.cli.evaluate import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    write_run(tmp_path / "run", folds=(1,))
    args = parser.parse_args(["evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "report")])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "fold 1 only (incomplete)" in printed and "| TCAE linear probe" in printed
    assert json.loads((tmp_path / "report" / "results.json").read_text())["aggregate"]["folds"] == [1]
    (tmp_path / "empty").mkdir()
    args = parser.parse_args(["evaluate", str(tmp_path / "empty")])
    with pytest.raises(VideoFerError, match=r"empty: no fold_<k>/predictions.npz"):
        args.handler(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", str(tmp_path), "--threshold", "1.5"])


def test_the_benchmarks_markdown_table_lines_up_and_refuses_a_short_row():
    from video_fer.evaluate.tables import markdown_table

    text = markdown_table(["features", "r"], [["hog", ".398"], ["untrained", ".127"]])
    assert text.splitlines() == ["| features | r |", "|---|---|", "| hog | .398 |", "| untrained | .127 |"]
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        markdown_table(["features", "r"], [["hog"]])
