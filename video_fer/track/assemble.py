"""``video-fer bundle``: what the recipes write -> one model bundle for ``track``.

Accepted for a head (``--au``, ``--au-intensity``, ``--expression``, ``--va``):

- a head checkpoint (:func:`video_fer.track.bundle.save_head`);
- a task model (a ``save_model`` directory): ``finetune_au``'s ``fold_<k>/model``
  (:class:`~video_fer.models.task_models.AUClassifier`: occurrence -> ``--au``, intensity ->
  ``--au-intensity``), the ``model/`` of ``finetune_expression`` (ExpressionModel) and of
  ``finetune_va`` (ValenceArousalModel);
- a recipe's output folder: its ``model/``; for ``finetune_au``, the best fold (highest test
  ``mean_f1``, ``mean_icc`` for intensity, in ``fold_<k>/result.json``).

The encoder (``--encoder``): a pretraining ``encoder/`` export (or any encoder export); without it,
the first task model's own encoder. A task model whose encoder equals the bundle's (a frozen
encoder: the linear AU protocol, ``model.freeze_encoder``) reads the bundle's features; one
fine-tuned with its encoder keeps it (``extra_encoders``), and it runs once per batch too.
The crop alignment is the encoder export's (or ``--alignment``); every head must have been
trained on the same (a task model records it in ``extra.alignment``; an older ``finetune_au`` fold
is looked up through its run's ``run.json`` -> the face cache).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from video_fer.errors import CheckpointError
from video_fer.faces.alignment import AlignmentSpec
from video_fer.track.bundle import HEAD_FORMAT, MAIN_ENCODER, HeadSpec, ModelBundle, load_head, save_bundle

ENCODER_ARCHITECTURES = ("tae_encoder", "twin_cycle_autoencoder")
DEFAULT_BUNDLE_COLUMNS = ("pose", "gaze")  # the default's groups no learned head gives
AU_TASK = {"occurrence": "au", "intensity": "au_intensity"}


@dataclass
class HeadPart:
    """One head read from a recipe's output.

    Attributes:
        head: the head module; spec: its :class:`HeadSpec` (``encoder`` set by :func:`assemble_bundle`);
        encoder: the task model's own encoder (None for a head checkpoint or a head without one);
        alignment: the recorded crop alignment (dict) or None; source: the directory it came from.
    """

    head: nn.Module
    spec: HeadSpec
    encoder: nn.Module | None
    alignment: dict | None
    source: Path


def flag(task: str) -> str:
    return "--" + task.replace("_", "-")


def best_au_fold(run: Path) -> Path:
    """``finetune_au`` output folder -> the ``model/`` of its best finished fold (see the module doc; folds whose
    score is undefined rank last, ties go to the lower fold)."""
    import math

    scored = []
    for result_file in sorted(run.glob("fold_*/result.json")):
        result = json.loads(result_file.read_text())
        score = result.get("mean_icc") if result.get("mean_icc") is not None else result.get("mean_f1")
        if (result_file.parent / "model").is_dir():
            finite = score is not None and math.isfinite(float(score))
            scored.append(((finite, float(score) if finite else 0.0), -len(scored), result_file.parent / "model"))
    if not scored:
        raise CheckpointError(f"{run}: no finished fold (fold_<k>/result.json with model/); finish a fold of "
                              "recipes/finetune_au.py or give a fold's model/ folder")
    return max(scored)[2]


def is_checkpoint(path: Path) -> bool:
    """A head checkpoint or a ``save_model`` folder (a recipe's output folder has a ``config.json`` too: its settings)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        document = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(document, dict) and (document.get("kind") == HEAD_FORMAT or "architecture" in document)


def resolve_model_folder(path: Path) -> Path:
    """A checkpoint folder, or the folder a recipe's output points to (``model/``, the best AU fold)."""
    if is_checkpoint(path):
        return path
    if is_checkpoint(path / "model"):
        return path / "model"
    if any(path.glob("fold_*/result.json")):
        return best_au_fold(path)
    raise CheckpointError(f"{path}: neither a head checkpoint, a task model (config.json) nor a recipe output "
                          "(model/ or fold_<k>/); give the folder a fine-tuning recipe wrote")


def au_fold_alignment(model_dir: Path) -> dict | None:
    """The crop alignment of an older ``finetune_au`` fold (none recorded): its run's face cache."""
    run_file = model_dir.parent.parent / "run.json"
    if not run_file.is_file():
        return None
    cache = ((json.loads(run_file.read_text()).get("config") or {}).get("data") or {}).get("cache")
    cache_file = Path(cache) / "cache.json" if cache else None
    if cache_file is None or not cache_file.is_file():
        return None
    return json.loads(cache_file.read_text()).get("alignment")


def read_head_part(path: str | os.PathLike, task: str) -> HeadPart:
    """Read what was given for ``task`` (see the module doc); CheckpointError naming the folder and the fix."""
    from video_fer.models.checkpoint import load_model, read_config
    from video_fer.models.registry import config_dict
    from video_fer.models.task_models import EXPRESSION_HEADS

    folder = resolve_model_folder(Path(path))
    document = json.loads((folder / "config.json").read_text())
    if document.get("kind") == HEAD_FORMAT:
        head, spec, alignment = load_head(folder)
        if spec.task != task:
            raise CheckpointError(f"{folder}: a {spec.task!r} head given as the {task!r} head; pass it with "
                                  f"{flag(spec.task)}")
        return HeadPart(head, spec, None, alignment, folder)
    architecture = read_config(folder)["architecture"]
    if architecture in ENCODER_ARCHITECTURES:
        raise CheckpointError(f"{folder}: an encoder ({architecture}), not a head; give it with --encoder")
    model = load_model(folder)
    alignment = ((document.get("extra") or {}).get("alignment"))
    recorded = {"architecture": architecture, "config": config_dict(model)}
    if architecture == "au_classifier":
        given = AU_TASK[model.config.task]
        if given != task:
            raise CheckpointError(f"{folder}: an AU {model.config.task} model given as the {task!r} head; pass it "
                                  f"with {flag(given)}")
        spec = HeadSpec(task, "linear", {"num_outputs": len(model.config.au_numbers),
                                         "embedding_dim": model.encoder.config.embedding_dim},
                        list(model.config.au_numbers), model=recorded)
        return HeadPart(model.head, spec, model.encoder, alignment or au_fold_alignment(folder), folder)
    if architecture == "expression_model" and task == "expression":
        names = list(model.config.class_names) or [str(k) for k in range(model.config.num_classes)]
        spec = HeadSpec(task, EXPRESSION_HEADS[model.config.head], {}, names, model=recorded)
        return HeadPart(model.head, spec, model.encoder, alignment, folder)
    if architecture == "valence_arousal_model" and task == "va":
        spec = HeadSpec(task, "two_level_va", {}, [], model=recorded)
        return HeadPart(model.head, spec, model.encoder, alignment, folder)
    expected = {"au": "au_classifier (occurrence)", "au_intensity": "au_classifier (intensity)",
                "expression": "expression_model", "va": "valence_arousal_model"}[task]
    raise CheckpointError(f"{folder}: a {architecture} model given as the {task!r} head, which takes a head "
                          f"checkpoint or {expected}; pass it with the flag of its task")


def same_encoder(first: nn.Module, second: nn.Module) -> bool:
    """Same architecture, config and weights (then the bundle runs it once)."""
    from video_fer.models.registry import config_dict

    if type(first) is not type(second) or config_dict(first) != config_dict(second):
        return False
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def assemble_bundle(out: str | os.PathLike, heads: Mapping[str, str | os.PathLike | None],
                    encoder: str | os.PathLike | None = None, alignment: Mapping[str, Any] | None = None,
                    default_columns: Sequence[str] = DEFAULT_BUNDLE_COLUMNS) -> ModelBundle:
    """``video-fer bundle``: recipe outputs -> a bundle written to ``out`` (see the module doc).

    Args:
        out: the bundle directory to write.
        heads: task -> what a recipe wrote (None entries are skipped).
        encoder: an encoder export; default: the first task model's encoder.
        alignment: ``AlignmentSpec.to_dict()`` to record when the encoder export has none.
        default_columns: the default's groups to add (``pose``, ``gaze``, ``au``, ``expression``; none a head gives).

    Raises:
        CheckpointError: unreadable inputs, a head in the wrong slot, no encoder at all, alignments that
            differ, default columns a head gives, or heads that do not run on their encoder.
    """
    from video_fer.models.checkpoint import load_encoder

    parts = {task: read_head_part(path, task) for task, path in heads.items() if path is not None}
    if not parts:
        raise CheckpointError("video-fer bundle: no head given; pass at least one of --au, --au-intensity, "
                              "--expression, --va (or track with --model mediapipe, which needs no bundle)")
    main, spec = None, None
    if encoder is not None:
        export = load_encoder(encoder)
        main = export.encoder
        spec = export.alignment
    if alignment is not None:
        spec = AlignmentSpec.from_dict(alignment)
    if main is None:  # the first task model's encoder
        main = next((part.encoder for part in parts.values() if part.encoder is not None), None)
    for task, part in parts.items():
        if part.alignment is None:
            continue
        recorded = AlignmentSpec.from_dict(part.alignment)
        if spec is None:
            spec = recorded
        elif recorded != spec:
            raise CheckpointError(f"{part.source}: trained on crops aligned differently from the "
                                  f"{'encoder' if encoder else 'other heads'} ({part.alignment} vs {spec.to_dict()}); "
                                  "retrain the head on the same crops")
    if spec is None:
        raise CheckpointError(f"{encoder or next(iter(parts.values())).source}: the export records no alignment "
                              "(config.json extra.alignment), nor does any head; pass --alignment ALIGNMENT.json "
                              "(AlignmentSpec.to_dict())")
    extra: dict[str, nn.Module] = {}
    for task, part in parts.items():
        if part.encoder is None:
            part.spec.encoder = MAIN_ENCODER if part.spec.model is None else None  # RAN/prior encode the crops
            continue
        if main is not None and same_encoder(part.encoder, main):
            part.spec.encoder = MAIN_ENCODER
            continue
        known = next((name for name, module in extra.items() if same_encoder(part.encoder, module)), None)
        if known is None:
            known = task
            extra[task] = part.encoder
        part.spec.encoder = known
    if extra and not any(part.spec.encoder == MAIN_ENCODER for part in parts.values()):
        first = next(iter(extra))  # no head reads the given encoder: the first fine-tuned one becomes the bundle's
        main = extra.pop(first)
        for part in parts.values():
            if part.spec.encoder == first:
                part.spec.encoder = MAIN_ENCODER
    if any(part.spec.encoder == MAIN_ENCODER for part in parts.values()) and main is None:
        raise CheckpointError("video-fer bundle: a head reads the bundle's encoder but none was given; pass --encoder")
    if not any(part.spec.encoder == MAIN_ENCODER for part in parts.values()):
        main = None  # only heads that encode the images themselves
    bundle = ModelBundle(main, {task: (part.head, part.spec) for task, part in parts.items()}, spec,
                         default_columns, extra)
    save_bundle(bundle, out, {task: str(part.source) for task, part in parts.items()})
    return bundle.eval()


__all__ = ["DEFAULT_BUNDLE_COLUMNS", "HeadPart", "assemble_bundle", "best_au_fold", "read_head_part"]
