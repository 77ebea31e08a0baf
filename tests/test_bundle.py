"""Model bundles: round trip, `video-fer bundle` assembly from an encoder export and head checkpoints, errors."""
import json

import pytest
import torch

from video_fer.track.bundle import (HeadSpec, ModelBundle, assemble_bundle, build_head, load_bundle, load_head,
                                    random_bundle, save_bundle, save_head)
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
        assemble_bundle(tmp_path / "encoder", tmp_path / "out", {"expression": tmp_path / "au_head"})
    other = AlignmentSpec(size=64, point_weights=(1.0, 1.0, 1.0, 1.0, 1.0)).to_dict()
    save_head(bundle.heads["au"], tmp_path / "au_other", "au", "linear", au.options, au.names, alignment=other)
    with pytest.raises(CheckpointError, match="au_other: trained on crops aligned differently"):
        assemble_bundle(tmp_path / "encoder", tmp_path / "out", {"au": tmp_path / "au_other"})
    save_head(bundle.heads["au"], tmp_path / "au_names", "au", "linear", au.options, [1, 2])
    with pytest.raises(CheckpointError, match=r"head 'au' gives 12 outputs but names 2"):
        assemble_bundle(tmp_path / "encoder", tmp_path / "out", {"au": tmp_path / "au_names"})
    with pytest.raises(CheckpointError, match="no head given"):
        assemble_bundle(tmp_path / "encoder", tmp_path / "out", {"au": None})
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
