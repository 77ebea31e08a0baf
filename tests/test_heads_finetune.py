"""The recipes' fine-tuned models (video_fer.models.task_models) and the shared fine-tuning loop pieces."""
from types import SimpleNamespace

import pytest
import torch

from video_fer.models.checkpoint import load_model, registered_architectures, save_model
from video_fer.errors import ConfigError
from video_fer.faces.alignment import AlignmentSpec, check_encoder_crops
from video_fer.models.checkpoint import load_encoder, save_encoder
from video_fer.models.task_models import (ExpressionModel, ExpressionModelConfig, ValenceArousalModel,
                                          ValenceArousalModelConfig, load_encoder_weights)
from video_fer.models.tae import FaceActionEncoder, TAEConfig
from video_fer.train.loop import StepProgress, epoch_batches, evaluation_due, finetune_learning_rate, make_optimizer

TINY_ENCODER = {"width": 8, "embedding_dim": 32, "attention_streams": 2, "stream_width": 8}
SIZE = 64
HEAD_OPTIONS = {"acnn": {"fc_dim": 32}, "pacnn": {"fc_dim": 32}, "ran": {"crop_size": 64},
                "prior": {"channels": [8, 16]}, "aha": {}, "linear": {}}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def faces_and_landmarks(batch: int = 3):
    torch.manual_seed(0)
    return torch.rand(batch, 3, SIZE, SIZE), torch.rand(batch, 68, 2) * 36 + 14


def test_recipe_models_are_registered_architectures():
    known = registered_architectures()
    assert known["expression_model"] is ExpressionModel and known["valence_arousal_model"] is ValenceArousalModel


@pytest.mark.parametrize("head", sorted(HEAD_OPTIONS))
def test_expression_model_round_trips_through_load_model(tmp_path, head):
    model = ExpressionModel(ExpressionModelConfig(head=head, num_classes=5, image_size=SIZE, encoder=TINY_ENCODER,
                                                  head_options=HEAD_OPTIONS[head], class_names=list("abcde"))).eval()
    images, landmarks = faces_and_landmarks()
    with torch.no_grad():
        expected = model(images, landmarks).logits
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is ExpressionModel and loaded.config.head == head and loaded.config.class_names == list("abcde")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, landmarks).logits, expected)
    assert expected.shape == (3, 5)
    assert (loaded.encoder is None) == (head in ("ran", "prior"))
    pretrained = FaceActionEncoder(TAEConfig(image_size=SIZE, **TINY_ENCODER))
    assert load_encoder_weights(loaded, pretrained) == (head not in ("ran", "prior"))  # own crop CNNs: nothing copied


def test_ran_on_the_shared_encoder_round_trips_and_copies_pretrained_weights(tmp_path):
    config = ExpressionModelConfig(head="ran", num_classes=7, image_size=SIZE, encoder=TINY_ENCODER,
                                   head_options={"region_encoder": "backbone"})
    model = ExpressionModel(config).eval()
    pretrained = FaceActionEncoder(TAEConfig(image_size=SIZE, **TINY_ENCODER))
    with torch.no_grad():
        for parameter in pretrained.parameters():
            parameter.add_(0.01)
    assert load_encoder_weights(model, pretrained)
    crop_encoder = model.head.region_encoder.backbone
    torch.testing.assert_close(crop_encoder.trunk[0][0].weight, pretrained.trunk[0][0].weight)
    save_model(model, tmp_path / "ran")
    images, landmarks = faces_and_landmarks(2)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "ran")(images, landmarks).logits, model(images, landmarks).logits)


def test_valence_arousal_model_reads_every_depth_and_the_embedding(tmp_path):
    model = ValenceArousalModel(ValenceArousalModelConfig(image_size=SIZE, num_expressions=7,
                                                          encoder=TINY_ENCODER)).eval()
    images, _ = faces_and_landmarks()
    output = model(images)
    assert model.head.strides == (4, 8)  # a 64 px trunk of width 8 has strides 2, 4, 8
    # Two pooled maps + the action embedding: the depth attention runs over 3 elements and sums to 1.
    assert output.attention["depth"].shape == (3, 3)
    torch.testing.assert_close(output.attention["depth"].sum(1), torch.ones(3))
    assert output.valence_arousal.abs().max() <= 1 and output.logits.shape == (3, 7)
    save_model(model, tmp_path / "va")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "va")(images).valence_arousal, output.valence_arousal)


def test_frozen_encoder_gets_no_gradient_and_keeps_its_statistics():
    model = ExpressionModel(ExpressionModelConfig(head="acnn", image_size=SIZE, encoder=TINY_ENCODER,
                                                  head_options={"fc_dim": 16}, freeze_encoder=True)).train()
    running_mean = model.encoder.trunk[0][1].running_mean.clone()
    images, landmarks = faces_and_landmarks()
    model(images, landmarks).logits.sum().backward()
    assert all(parameter.grad is None for parameter in model.encoder.parameters())
    assert all(parameter.grad is not None for parameter in model.head.parameters() if parameter.requires_grad)
    assert torch.equal(model.encoder.trunk[0][1].running_mean, running_mean)
    optimizer = make_optimizer(model, SimpleNamespace(name="adamw", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0))
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.head.parameters()}


def test_ran_crop_encoders_are_selectable_and_checked():
    def ran(**options):
        return ExpressionModel(ExpressionModelConfig(head="ran", image_size=SIZE, encoder=TINY_ENCODER,
                                                     head_options=options))
    assert ran().head.region_encoder.backbone.config.image_size == 64  # default: a TAE encoder on 64 px crops
    assert type(ran(region_encoder="small", crop_size=32).head.region_encoder).__name__ == "SmallRegionEncoder"
    with pytest.raises(ConfigError, match="crop_size=32: the TAE crop encoder needs 64 px"):
        ran(crop_size=32)
    with pytest.raises(ConfigError, match="region_encoder='vgg'"):
        ran(region_encoder="vgg")


def test_pretrained_encoder_of_another_size_is_refused_with_the_fix(tmp_path):
    save_model(FaceActionEncoder(TAEConfig(image_size=SIZE, **TINY_ENCODER)), tmp_path / "encoder")
    export = load_encoder(tmp_path / "encoder")  # an export without a recorded alignment: its side is checked
    assert export.encoder.config.embedding_dim == 32 and export.alignment is None and export.crops == SIZE
    check_encoder_crops(SIZE, export.crops, "model.image_size")
    with pytest.raises(ConfigError, match="model.image_size: crops of 128 px but the encoder takes 64 px; .*"
                                          "model.image_size=64"):
        check_encoder_crops(128, export.crops, "model.image_size")


def test_encoder_export_carries_its_alignment_and_crops_are_checked_against_it(tmp_path):
    encoder = FaceActionEncoder(TAEConfig(image_size=SIZE, **TINY_ENCODER))
    spec = AlignmentSpec(size=SIZE, point_weights=(4.0, 4.0, 1.0, 1.0, 1.0))
    save_encoder(encoder, tmp_path / "encoder", spec, extra={"step": 3})
    export = load_encoder(tmp_path / "encoder")
    assert export.alignment == spec and export.image_size == SIZE and export.crops == spec
    check_encoder_crops(spec, export.crops, "data.cache")
    with pytest.raises(ConfigError, match="data.cache: crops aligned differently from the encoder's"):
        check_encoder_crops(AlignmentSpec(size=SIZE), export.crops, "data.cache")
    with pytest.raises(ConfigError, match="crops of 128 px but the encoder takes 64 px"):
        save_encoder(encoder, tmp_path / "other", AlignmentSpec(size=128))


def test_make_optimizer_names_the_bad_setting():
    with pytest.raises(ConfigError, match="optim.name='lamb'"):
        make_optimizer(torch.nn.Linear(2, 2), SimpleNamespace(name="lamb"))
    sgd = make_optimizer(torch.nn.Linear(2, 2), SimpleNamespace(name="sgd", lr=0.1, momentum=0.5, weight_decay=0.0))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5


def test_finetune_learning_rate_warms_up_then_follows_the_schedule():
    cosine = SimpleNamespace(schedule="cosine", lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert finetune_learning_rate(cosine, 0, 104) == pytest.approx(0.25)
    assert finetune_learning_rate(cosine, 4, 104) == pytest.approx(1.0)
    assert finetune_learning_rate(cosine, 54, 104) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert finetune_learning_rate(cosine, 104, 104) == pytest.approx(0.1)
    constant = SimpleNamespace(schedule="constant", lr=2.0, warmup_steps=2, min_lr_ratio=0.0)
    assert [finetune_learning_rate(constant, s, 10) for s in (0, 1, 9)] == [1.0, 2.0, 2.0]
    with pytest.raises(ConfigError, match="optim.schedule='step'"):
        finetune_learning_rate(SimpleNamespace(schedule="step"), 0, 10)


def run_batches(progress: StepProgress, total: int, stop_after: int | None = None) -> list[tuple[int, list[int]]]:
    seen = []
    for epoch, batch_index, rows in epoch_batches(progress, total, steps_per_epoch=3, count=10, batch_size=3, seed=5):
        seen.append((epoch, rows.tolist()))
        progress.advance(batch_index)
        if stop_after is not None and progress.step == stop_after:
            break
    return seen


def test_epoch_batches_cover_each_epoch_once_and_resume_exactly():
    straight = run_batches(StepProgress(), 7)
    assert [epoch for epoch, _ in straight] == [0, 0, 0, 1, 1, 1, 2]
    first_epoch = sum((rows for epoch, rows in straight if epoch == 0), [])
    assert len(set(first_epoch)) == 9  # 3 batches of 3 distinct items out of 10
    assert sorted(straight[0][1] + straight[1][1]) != sorted(straight[3][1] + straight[4][1])  # reshuffled
    interrupted = StepProgress()
    head = run_batches(interrupted, 7, stop_after=4)
    resumed = StepProgress()
    resumed.load_state_dict(interrupted.state_dict())  # what accelerate's checkpoint restores
    assert head + run_batches(resumed, 7) == straight
    assert resumed.state_dict() == {"step": 7, "epoch": 2, "batch_in_epoch": 1}


def test_evaluation_due_every_n_steps_or_each_epoch_and_at_the_end():
    progress = StepProgress()
    progress.step, progress.batch_in_epoch = 6, 2
    assert evaluation_due(progress, every=3, steps_per_epoch=4, total_steps=20)
    assert not evaluation_due(progress, every=4, steps_per_epoch=4, total_steps=20)
    assert not evaluation_due(progress, every=0, steps_per_epoch=4, total_steps=20)
    progress.batch_in_epoch = 4
    assert evaluation_due(progress, every=0, steps_per_epoch=4, total_steps=20)
    progress.step, progress.batch_in_epoch = 20, 1
    assert evaluation_due(progress, every=7, steps_per_epoch=4, total_steps=20)


def test_with_coordinates_appends_x_then_y_in_minus_one_to_one():
    from video_fer.models.heads.common import with_coordinates

    maps = torch.rand(2, 3, 4, 5)
    out = with_coordinates(maps)
    assert out.shape == (2, 5, 4, 5) and torch.equal(out[:, :3], maps)
    torch.testing.assert_close(out[1, 3, 2], torch.linspace(-1, 1, 5))  # x varies along a row
    torch.testing.assert_close(out[0, 4, :, 0], torch.linspace(-1, 1, 4))  # y varies down a column


def test_pooled_attention_tells_where_a_pattern_is():
    # The same pattern at two places of an otherwise blank map: a plain attention pool gives the
    # same vector; the coordinate-aware pool of the VA head does not.
    from video_fer.models.heads.common import softmax_spatial_pool
    from video_fer.models.heads.va import SpatialAttentionPool

    left, right = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    left[..., 3, 1], right[..., 3, 6] = 1.0, 1.0
    maps = torch.cat([left, right])
    plain, _ = softmax_spatial_pool(maps, maps[:, :1] * 5)
    torch.testing.assert_close(plain[0], plain[1])
    torch.manual_seed(0)
    pooled, attention = SpatialAttentionPool(4, 16)(maps)
    assert (pooled[0] - pooled[1]).abs().max() > 1e-3
    torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(2))
