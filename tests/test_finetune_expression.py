"""The expression and valence/arousal recipes run end to end, write their outputs and resume."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from video_fer.models.checkpoint import load_model
from video_fer.data.synthetic import MIRROR_68
from video_fer.errors import ConfigError
from video_fer.train.logs import read_csv_log
from scripts import load_script

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str):
    return load_script(RECIPES / f"{name}.py", f"recipe_{name}")


@pytest.fixture(scope="module")
def expression_recipe():
    return load_recipe("finetune_expression")


@pytest.fixture(scope="module")
def va_recipe():
    return load_recipe("finetune_va")


# Tiny: the 2 demo photos (+ mirror images) at 64 px, 14 images per view, 4 steps.
TINY = ["model.image_size=64", "model.backbone.width=8", "model.backbone.embedding_dim=32",
        "model.backbone.attention_streams=2", "model.backbone.stream_width=8", "data.samples_per_face=14",
        "train.batch_size=8", "train.max_steps=4", "train.log_every=1", "train.threads=1", "eval.batch_size=32"]


@pytest.mark.parametrize("head", ["acnn", "ran", "prior", "aha", "linear"])
def test_expression_recipe_runs_each_head_and_writes_outputs(expression_recipe, tmp_path, head):
    out = tmp_path / head
    extra = {"ran": ["model.head_options.crop_size=64"], "prior": ["model.head_options.channels=[8,16]"],
             "acnn": ["model.head_options.fc_dim=64"]}.get(head, [])
    assert expression_recipe.main(["--head", head, f"train.output_dir={out}", *TINY, *extra]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["head"] == head and summary["steps"] == 4 and summary["chance"] == pytest.approx(1 / 7)
    assert summary["test_faces"] == 28 and summary["train_faces"] == 28  # one identity (2 views x 14) each side
    assert summary["data"]["train_identities"] != summary["data"]["test_identities"]
    for key in ("accuracy", "mean_class_accuracy", "accuracy_upper_masked", "accuracy_lower_masked"):
        assert 0.0 <= summary[key] <= 1.0
    assert np.asarray(summary["confusion"]).sum() == 28
    losses = read_csv_log(out / "losses.csv")
    assert [int(row["step"]) for row in losses] == [1, 2, 3, 4]
    assert all(np.isfinite(float(row["total"])) for row in losses)
    if head == "ran":
        assert "region_biased" in losses[0]
    if head == "aha":
        assert "region_cross_entropy" in losses[0]
    assert (out / "confusion_test.png").stat().st_size > 1000
    model = load_model(out / "model")  # the whole fine-tuned model, registered as "expression_model"
    assert model.config.head == head and model.config.num_classes == 7 and len(model.config.class_names) == 7
    faces = torch.rand(2, 3, 64, 64)
    assert model(faces, torch.rand(2, 68, 2) * 40 + 12).logits.shape == (2, 7)
    if head in ("ran", "prior"):  # these heads encode crops of the image themselves
        assert model.encoder is None and not (out / "encoder").exists()
    else:
        encoder = load_model(out / "encoder")
        assert encoder.config.image_size == 64 and encoder.config.width == 8
        torch.testing.assert_close(encoder.forward_features(faces).action_embedding,
                                   model.encoder.forward_features(faces).action_embedding)


def test_expression_recipe_resumes_where_it_stopped(expression_recipe, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--head", "linear", f"train.output_dir={out}", *TINY, "train.save_every=2"]
    assert expression_recipe.main([*common, "train.max_steps=2"]) == 0
    first = read_csv_log(out / "losses.csv")
    assert expression_recipe.main([*common, "train.max_steps=5", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    rows = read_csv_log(out / "losses.csv")
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4, 5]
    assert rows[:2] == first  # the resumed run appends; it does not redo steps 1-2
    assert json.loads((out / "metrics.json").read_text())["steps"] == 5
    # Epoch 0 has 3 batches of 8 from 28 faces: steps 4-5 are epoch 1 (its faces animated afresh).
    assert [int(row["epoch"]) for row in rows] == [0, 0, 0, 1, 1]


def test_expression_recipe_rejects_bad_settings(expression_recipe, tmp_path):
    with pytest.raises(ConfigError, match="unknown"):
        expression_recipe.main([f"train.output_dir={tmp_path}", "train.no_such_key=1"])
    with pytest.raises(ConfigError, match="model.head='vgg'"):
        expression_recipe.main([f"train.output_dir={tmp_path}", "model.head=vgg", *TINY])
    with pytest.raises(ConfigError, match="fewer than train.batch_size"):
        expression_recipe.main([f"train.output_dir={tmp_path}", *TINY, "train.batch_size=64"])


def test_flip_faces_mirrors_images_and_relabels_landmarks(expression_recipe):
    images = torch.rand(2, 3, 8, 8)
    landmarks = torch.rand(2, 68, 2) * 7
    flipped, points = expression_recipe.flip_faces(images, landmarks, torch.tensor([True, False]))
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])
    # The image-left eye corner (36) of the mirror image is the old image-right corner (45), x reflected.
    torch.testing.assert_close(points[0, 36], torch.stack([7 - landmarks[0, 45, 0], landmarks[0, 45, 1]]))
    assert torch.equal(points[1], landmarks[1])
    twice, back = expression_recipe.flip_faces(flipped, points, torch.tensor([True, False]))
    torch.testing.assert_close(back, landmarks) and torch.testing.assert_close(twice, images)
    assert sorted(MIRROR_68.tolist()) == list(range(68))


def test_va_recipe_runs_and_reports_rmse_pcc_ccc(va_recipe, tmp_path):
    out = tmp_path / "va"
    assert va_recipe.main([f"train.output_dir={out}", *TINY, "loss.expression_weight=0.5"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    for target in ("valence", "arousal"):
        assert summary[f"{target}_rmse"] >= 0 and -1 <= summary[f"{target}_ccc"] <= 1
        assert -1 <= summary[f"{target}_pcc"] <= 1
    assert summary["mean_ccc"] == pytest.approx((summary["valence_ccc"] + summary["arousal_ccc"]) / 2)
    losses = read_csv_log(out / "losses.csv")
    assert {"mse", "ccc", "expression_cross_entropy", "total"} <= set(losses[0])
    assert (out / "va_scatter.png").stat().st_size > 1000
    assert summary["strides"] == [4, 8]  # 64 px trunk: strides 2, 4, 8; the head reads 4 and 8
    model = load_model(out / "model")  # registered as "valence_arousal_model"
    assert model.config.num_expressions == 7 and model.head.strides == (4, 8)
    output = model(torch.rand(3, 3, 64, 64))
    assert output.valence_arousal.shape == (3, 2) and output.logits.shape == (3, 7)
    assert load_model(out / "encoder").config.image_size == 64
