"""Model bundles: round trip, `video-fer bundle` from what the recipes write (encoder exports, head checkpoints,
task models, recipe folders), the no-training default and its column groups, errors."""
import json

import pytest
import torch

from video_fer.track.assemble import assemble_bundle
from video_fer.track.bundle import (HeadSpec, ModelBundle, build_head, load_bundle, load_head, random_bundle,
                                    save_bundle, save_head)
from video_fer.models.checkpoint import save_model
from video_fer.cli import main as cli_main
from video_fer.errors import CheckpointError
from video_fer.faces.alignment import AlignmentSpec
from video_fer.track.table import column_names

TINY = dict(image_size=64, width=8, embedding_dim=32, attention_streams=4, stream_width=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def run_bundle(bundle, seed=0):
    generator = torch.Generator().manual_seed(seed)
    crops = torch.rand(3, 3, 64, 64, generator=generator)
    landmarks = torch.rand(3, 68, 2, generator=generator) * 40 + 12
    with torch.inference_mode():
        return bundle(crops, landmarks)


def test_saved_bundle_loads_with_identical_outputs_and_ranges(tmp_path):
    bundle = random_bundle(**TINY, intensity_aus=(1, 2, 4), expression_head="acnn")
    save_bundle(bundle, tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bundle.json", "model.safetensors"]
    loaded = load_bundle(tmp_path / "b")
    before, after = run_bundle(bundle), run_bundle(loaded)
    for name in ("au_presence", "au_intensity", "expression", "valence_arousal"):
        torch.testing.assert_close(getattr(before, name), getattr(after, name))
    assert after.au_presence.shape == (3, 12) and after.au_intensity.shape == (3, 3)
    assert ((after.au_presence >= 0) & (after.au_presence <= 1)).all()
    assert ((after.au_intensity >= 0) & (after.au_intensity <= 5)).all()
    torch.testing.assert_close(after.expression.sum(1), torch.ones(3))
    assert after.valence_arousal.abs().max() <= 1
    assert loaded.alignment == AlignmentSpec(size=64)
    document = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert document["heads"]["expression"]["names"][3] == "happiness"
    assert document["alignment"]["size"] == 64


def export_encoder(tmp_path, alignment=True):
    bundle = random_bundle(**TINY, va=True)
    extra = {"alignment": bundle.alignment.to_dict()} if alignment else None
    save_model(bundle.encoder, tmp_path / "encoder", extra=extra)
    return bundle


def test_cli_bundle_assembles_the_given_heads_only_and_the_table_omits_the_rest(tmp_path, capsys):
    bundle = export_encoder(tmp_path)
    save_head(bundle.heads["au"], tmp_path / "au_head", "au", "linear", bundle.specs["au"].options,
              bundle.specs["au"].names, alignment=bundle.alignment.to_dict())
    save_head(bundle.heads["va"], tmp_path / "va_head", "va", "two_level_va", bundle.specs["va"].options)
    code = cli_main(["bundle", "--encoder", str(tmp_path / "encoder"), "--au", str(tmp_path / "au_head"),
                     "--va", str(tmp_path / "va_head"), "-o", str(tmp_path / "bundle")])
    assert code == 0, capsys.readouterr().err
    loaded = load_bundle(tmp_path / "bundle")
    assert sorted(loaded.specs) == ["au", "va"]
    columns = column_names(loaded)
    assert "AU12_c" in columns and "valence" in columns and "arousal" in columns
    assert not any(c.startswith("expression") or c.endswith("_r") for c in columns)
    # The assembled bundle computes what the parts compute.
    original, assembled = run_bundle(bundle), run_bundle(loaded)
    torch.testing.assert_close(original.au_presence, assembled.au_presence)
    torch.testing.assert_close(original.valence_arousal, assembled.valence_arousal)
    assert assembled.expression is None


def test_head_checkpoint_round_trip_keeps_spec_and_weights(tmp_path):
    spec = HeadSpec("expression", "linear", {"num_outputs": 3, "embedding_dim": 32}, ["a", "b", "c"])
    head = build_head(spec)
    torch.nn.init.normal_(head.linear.weight)
    save_head(head, tmp_path / "h", spec.task, spec.head, spec.options, spec.names)
    loaded, loaded_spec, alignment = load_head(tmp_path / "h")
    assert loaded_spec == spec and alignment is None
    torch.testing.assert_close(loaded.linear.weight, head.linear.weight)


def test_single_model_checkpoint_is_not_a_bundle(tmp_path):
    export_encoder(tmp_path)
    with pytest.raises(CheckpointError, match="single-model checkpoint, not a bundle.*video-fer bundle --encoder"):
        load_bundle(tmp_path / "encoder")
    with pytest.raises(CheckpointError, match="not a model bundle directory"):
        load_bundle(tmp_path / "missing")


def test_bundle_whose_weights_do_not_match_its_config_is_refused(tmp_path):
    save_bundle(random_bundle(**TINY, va=False), tmp_path / "b")
    document = json.loads((tmp_path / "b" / "bundle.json").read_text())
    document["heads"]["au"]["options"]["num_outputs"] = 5
    document["heads"]["au"]["names"] = [1, 2, 4, 6, 7]
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"do not match.*heads\.au\.linear\.weight"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "bundle.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bundle.json: not valid JSON"):
        load_bundle(tmp_path / "b")


def test_assembly_errors_name_the_faulty_input(tmp_path):
    bundle = export_encoder(tmp_path)
    au = bundle.specs["au"]
    save_head(bundle.heads["au"], tmp_path / "au_head", "au", "linear", au.options, au.names)
    with pytest.raises(CheckpointError, match=r"au_head: a 'au' head given as the 'expression' head; pass it with --au"):
        assemble_bundle(tmp_path / "out", encoder=tmp_path / "encoder", heads={"expression": tmp_path / "au_head"})
    other = AlignmentSpec(size=64, point_weights=(1.0, 1.0, 1.0, 1.0, 1.0)).to_dict()
    save_head(bundle.heads["au"], tmp_path / "au_other", "au", "linear", au.options, au.names, alignment=other)
    with pytest.raises(CheckpointError, match="au_other: trained on crops aligned differently"):
        assemble_bundle(tmp_path / "out", encoder=tmp_path / "encoder", heads={"au": tmp_path / "au_other"})
    save_head(bundle.heads["au"], tmp_path / "au_names", "au", "linear", au.options, [1, 2])
    with pytest.raises(CheckpointError, match=r"head 'au' gives 12 outputs but names 2"):
        assemble_bundle(tmp_path / "out", encoder=tmp_path / "encoder", heads={"au": tmp_path / "au_names"})
    with pytest.raises(CheckpointError, match="no head given"):
        assemble_bundle(tmp_path / "out", encoder=tmp_path / "encoder", heads={"au": None})
    assert not (tmp_path / "out").exists()


def test_encoder_export_without_alignment_needs_one_given(tmp_path, capsys):
    bundle = export_encoder(tmp_path, alignment=False)
    au = bundle.specs["au"]
    save_head(bundle.heads["au"], tmp_path / "au_head", "au", "linear", au.options, au.names)
    code = cli_main(["bundle", "--encoder", str(tmp_path / "encoder"), "--au", str(tmp_path / "au_head"),
                     "-o", str(tmp_path / "b")])
    assert code == 2 and "records no alignment" in capsys.readouterr().err
    (tmp_path / "align.json").write_text(json.dumps(AlignmentSpec(size=64).to_dict()))
    code = cli_main(["bundle", "--encoder", str(tmp_path / "encoder"), "--au", str(tmp_path / "au_head"),
                     "--alignment", str(tmp_path / "align.json"), "-o", str(tmp_path / "b")])
    assert code == 0 and load_bundle(tmp_path / "b").alignment.size == 64


def test_alignment_size_must_match_the_encoder():
    bundle = random_bundle(**TINY, va=False)
    with pytest.raises(CheckpointError, match="crops of 128 px but the encoder takes 64 px"):
        ModelBundle(bundle.encoder, {}, AlignmentSpec(size=128))


def test_folding_batch_norms_keeps_the_outputs_and_track_leaves_the_callers_bundle_alone():
    from video_fer.track.bundle import fuse_batch_norms
    from video_fer.track.run import inference_bundle
    from video_fer.track.settings import TrackSettings

    bundle = random_bundle(image_size=64, width=8, embedding_dim=32, attention_streams=4, stream_width=8,
                           expression_head="acnn", va=True)
    crops = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    landmarks = torch.rand(3, 68, 2) * 63
    keys = set(bundle.state_dict())
    prepared = inference_bundle(bundle, TrackSettings())
    assert set(bundle.state_dict()) == keys  # the caller's bundle is untouched
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.encoder.modules())
    assert inference_bundle(prepared, TrackSettings()) is prepared  # prepared once
    with torch.inference_mode():
        before, after = bundle(crops, landmarks), prepared(crops.contiguous(memory_format=torch.channels_last), landmarks)
    for name in ("au_presence", "expression", "valence_arousal"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), atol=1e-5, rtol=1e-4)
    assert fuse_batch_norms(prepared) == 0  # nothing left to fold
    with pytest.raises(CheckpointError, match="training mode"):
        fuse_batch_norms(bundle.train())


# ----------------------------------------------------------------------------- the default and its column groups
def test_the_mediapipe_default_is_a_bundle_without_a_network():
    from video_fer.track.bundle import default_columns_of

    default = load_bundle("mediapipe")
    assert not default.has_network and default.encoder is None and default.specs == {}
    assert default.default_columns == ("pose", "gaze", "au", "expression") == default_columns_of("mediapipe")
    columns = column_names(default)
    assert columns[5:11] == ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    assert "gaze_angle_y" in columns and "AU45_r" in columns and "AU28_c" in columns and "AU28_r" not in columns
    assert columns[-1] == "expression" and columns.index("AU01_r") < columns.index("AU01_c")
    assert all("no training" in source for source in default.describe()["columns"].values())


def test_default_groups_may_not_give_a_heads_columns_and_old_bundles_keep_their_pose(tmp_path):
    bundle = random_bundle(**TINY, va=False)  # an AU presence head and an expression head
    with pytest.raises(CheckpointError, match=r"default columns au.*learned au head"):
        ModelBundle(bundle.encoder, {t: (bundle.heads[t], s) for t, s in bundle.specs.items()}, bundle.alignment,
                    default_columns=("pose", "au"))
    with pytest.raises(CheckpointError, match="unknown"):
        ModelBundle(bundle.encoder, {}, bundle.alignment, default_columns=("gaze", "blinks"))
    combined = random_bundle(**TINY, aus=(), intensity_aus=(), expression_head=None, va=True,
                             default_columns=("pose", "gaze", "au", "expression"))  # learned VA + the default's rest
    save_bundle(combined, tmp_path / "combined")
    document = json.loads((tmp_path / "combined" / "bundle.json").read_text())
    assert document["default_columns"] == ["pose", "gaze", "au", "expression"]
    assert document["columns"]["va"].startswith("learned: va head") and "blendshapes" in document["columns"]["au"]
    columns = column_names(load_bundle(tmp_path / "combined"))
    assert "AU12_r" in columns and "valence" in columns and "gaze_angle_x" in columns
    save_bundle(random_bundle(**TINY, va=False), tmp_path / "old")
    del document  # a bundle written before the groups existed: head pose only
    old = json.loads((tmp_path / "old" / "bundle.json").read_text())
    for key in ("default_columns", "columns", "extra_encoders"):
        old.pop(key)
    for head in old["heads"].values():
        head.pop("encoder")
    (tmp_path / "old" / "bundle.json").write_text(json.dumps(old))
    loaded = load_bundle(tmp_path / "old")
    assert loaded.default_columns == ("pose",) and "gaze_angle_x" not in column_names(loaded)


# ----------------------------------------------------------------------------- what the recipes write -> a bundle
def tiny_task_models(tmp_path):
    """An encoder export and, on it, an AU linear probe (frozen encoder, a finetune_au fold layout), an expression
    model fine-tuned with its own encoder, and a VA model whose encoder stayed frozen."""
    from video_fer.models.checkpoint import save_encoder
    from video_fer.models.task_models import (AUClassifier, AUClassifierConfig, ExpressionModel,
                                              ExpressionModelConfig, ValenceArousalModel, ValenceArousalModelConfig)

    encoder_config = dict(width=8, embedding_dim=32, attention_streams=4, stream_width=8)
    alignment = AlignmentSpec(size=64)
    torch.manual_seed(0)
    au = AUClassifier(AUClassifierConfig([1, 2, 12], {**encoder_config, "image_size": 64}, "intensity")).eval()
    save_encoder(au.encoder, tmp_path / "pretrain" / "encoder", alignment)
    for fold, score in ((1, 0.2), (2, 0.5), (3, 0.1)):  # fold 2 is the best: its probe is the one bundled
        model = AUClassifier(au.config).eval()  # other folds: other (random) probes on the same frozen encoder
        model.encoder.load_state_dict(au.encoder.state_dict())
        if fold == 2:
            model.head.load_state_dict(au.head.state_dict())
        save_model(model, tmp_path / "au_run" / f"fold_{fold}" / "model", extra={"fold": fold})  # no alignment: old runs
        (tmp_path / "au_run" / f"fold_{fold}" / "result.json").write_text(json.dumps({"mean_icc": score, "mean_f1": 0}))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache.json").write_text(json.dumps({"alignment": alignment.to_dict(), "size": 64}))
    (tmp_path / "au_run" / "run.json").write_text(json.dumps({"config": {"data": {"cache": str(tmp_path / "cache")}}}))
    expression = ExpressionModel(ExpressionModelConfig(head="acnn", num_classes=7, image_size=64,
                                                       encoder=encoder_config, head_options={"fc_dim": 16},
                                                       class_names=list("abcdefg"))).eval()
    save_model(expression, tmp_path / "expression_run" / "model", extra={"alignment": alignment.to_dict()})
    va = ValenceArousalModel(ValenceArousalModelConfig(image_size=64, encoder=encoder_config)).eval()
    va.encoder.load_state_dict(au.encoder.state_dict())
    save_model(va, tmp_path / "va_run" / "model", extra={"alignment": alignment.to_dict()})
    return au, expression, va


def test_bundle_takes_the_recipes_outputs_and_computes_what_they_compute(tmp_path, capsys):
    au, expression, va = tiny_task_models(tmp_path)
    code = cli_main(["bundle", "--encoder", str(tmp_path / "pretrain" / "encoder"), "--au-intensity",
                     str(tmp_path / "au_run"), "--expression", str(tmp_path / "expression_run"),
                     "--va", str(tmp_path / "va_run" / "model"), "-o", str(tmp_path / "bundle")])
    assert code == 0, capsys.readouterr().err
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.specs["au_intensity"].encoder == "encoder" and bundle.specs["va"].encoder == "encoder"  # shared
    assert bundle.specs["expression"].encoder == "expression" and list(bundle.extra_encoders) == ["expression"]
    assert bundle.specs["expression"].names == list("abcdefg") and bundle.default_columns == ("pose", "gaze")
    columns = column_names(bundle)
    assert columns[5:11] == ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    assert ["AU01_r", "AU02_r", "AU12_r"] == [c for c in columns if c.startswith("AU")]
    crops = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    landmarks = torch.rand(3, 68, 2, generator=torch.Generator().manual_seed(3)) * 50 + 7
    with torch.inference_mode():
        output = bundle(crops, landmarks)
        torch.testing.assert_close(output.au_intensity, au(crops).clamp(0, 5))
        torch.testing.assert_close(output.expression, torch.softmax(expression(crops, landmarks).logits, -1))
        torch.testing.assert_close(output.valence_arousal, va(crops).valence_arousal.clamp(-1, 1))
    document = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert document["columns"]["au_r"] == "learned: au_intensity head (linear, au_classifier)"
    # no head reads the given encoder: the fine-tuned one becomes the bundle's, stored once
    alone = assemble_bundle(tmp_path / "alone", {"expression": tmp_path / "expression_run"},
                            encoder=tmp_path / "pretrain" / "encoder")
    assert not alone.extra_encoders and alone.specs["expression"].encoder == "encoder"
    theirs = expression.encoder.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in alone.encoder.state_dict().items())
    assert document["columns"]["pose"].startswith("mediapipe (no training)")


def test_bundle_without_an_encoder_takes_the_first_models_and_names_wrong_slots(tmp_path, capsys):
    tiny_task_models(tmp_path)
    bundle = assemble_bundle(tmp_path / "b", {"au_intensity": tmp_path / "au_run" / "fold_2" / "model",
                                              "va": tmp_path / "va_run"})
    assert not bundle.extra_encoders and bundle.specs["va"].encoder == "encoder"  # the AU model's encoder, shared
    with pytest.raises(CheckpointError, match="an AU intensity model given as the 'au' head; pass it with "
                                              "--au-intensity"):
        assemble_bundle(tmp_path / "c", {"au": tmp_path / "au_run"})
    with pytest.raises(CheckpointError, match="an encoder .* not a head; give it with --encoder"):
        assemble_bundle(tmp_path / "c", {"va": tmp_path / "pretrain" / "encoder"})
    with pytest.raises(CheckpointError, match="default columns au would give the columns of the learned au_intensity"):
        assemble_bundle(tmp_path / "c", {"au_intensity": tmp_path / "au_run"}, default_columns=("pose", "au"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: neither a head checkpoint"):
        assemble_bundle(tmp_path / "c", {"va": tmp_path / "empty"})
    assert not (tmp_path / "c").exists()
