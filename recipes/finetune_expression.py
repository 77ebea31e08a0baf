"""Fine-tune an expression head on a face encoder (METHOD.md §2: ACNN, RAN, prior attention, AHA, linear).

    python recipes/finetune_expression.py --head acnn                    # synthetic demo: a few minutes on a CPU
    accelerate launch recipes/finetune_expression.py --head ran data.kind=rafdb data.root=RAF-DB/basic \\
        data.landmarker_model=face_landmarker.task model.image_size=256 model.encoder=runs/pretrain_tae/encoder
    python recipes/finetune_expression.py --head aha --resume            # continue from the latest checkpoint

Settings: recipes/configs/finetune_expression.yaml, every key overridable as ``key.sub=value``.
Data: ``data.kind`` synthetic (real faces animated with AU combinations, held-out identities),
rafdb, affectnet, ferplus, folder or csv (video_fer.data.expression_datasets); images are
aligned by the face front end and cached. The encoder is a TAE encoder, fresh or loaded
from ``model.encoder`` (``video_fer.load_model``), frozen with ``model.freeze_encoder``.
Outputs (``train.output_dir``): ``losses.csv``, ``evaluation.csv`` (accuracy, mean class
accuracy; with ``eval.occlusion`` also with the upper / lower half of the face masked),
``confusion_<split>.png``, ``metrics.json`` (final numbers), ``checkpoints/step_*``
(``--resume``), ``model/`` (the whole fine-tuned model: ``video_fer.load_model(<out>/model)``
returns a :class:`video_fer.models.task_models.ExpressionModel`) and ``encoder/`` (the
fine-tuned encoder alone, an encoder export, absent for RAN / prior attention on their own crop CNNs).
Faces are aligned as the pretrained encoder's export records (``model.image_size`` must be its side).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from video_fer.config import load_config
from video_fer.data.expression_datasets import load_face_label_data, mask_face_half, photometric_jitter
from video_fer.errors import ConfigError
from video_fer.evaluate import metrics
from video_fer.faces.ibug68 import MIRROR_68
from video_fer.models.checkpoint import encoder_for_crops
from video_fer.models.task_models import (EXPRESSION_HEADS, ExpressionModel, ExpressionModelConfig, encoder_settings,
                                          load_encoder_weights)
from video_fer.train.loop import gather_in_order, make_optimizer, predict_in_batches
from video_fer.train.losses.heads import aha_loss, ran_loss
from video_fer.train.run import StepLoop, finish_task_run, recipe_parser, run_recipe, start_run
from video_fer.train.sections import FinetuneModelConfig, FinetuneTrainConfig, head_recipe_schema

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_expression.yaml"
OCCLUSIONS = ("none", "upper", "lower")


# ---------------------------------------------------------------------------- config schema
@dataclass
class ModelConfig(FinetuneModelConfig):
    """Encoder and head (``image_size``, ``encoder``, ``freeze_encoder``, ``backbone``, ``head_options``: the
    shared fields of :class:`~video_fer.train.sections.FinetuneModelConfig`)."""

    head: str = "acnn"  # acnn | pacnn | ran | prior | aha | linear (or --head)


@dataclass
class LossConfig:
    ran_alpha: float = 0.02  # RAN region biased loss margin (paper: 0.02 .. 0.1)
    ran_weight: float = 1.0
    aha_region_weight: float = 1.0  # AHA: weight of the per-region cross-entropies
    label_smoothing: float = 0.0


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations (0: at the end of each epoch)
    occlusion: bool = True  # also evaluate with the upper / lower half of the face masked
    batch_size: int = 64


@dataclass
class TrainConfig(FinetuneTrainConfig):
    output_dir: str = "runs/finetune_expression"


FinetuneExpressionConfig = head_recipe_schema("FinetuneExpressionConfig", ModelConfig, LossConfig, EvalConfig, TrainConfig)


# ---------------------------------------------------------------------------- model, loss, evaluation
def build_model(model_config: ModelConfig, pretrained, class_names, image_size: int) -> ExpressionModel:
    """The registered expression model: a fresh encoder, or the pretrained one of ``model.encoder`` copied in."""
    config = ExpressionModelConfig(
        head=model_config.head, num_classes=len(class_names), image_size=image_size,
        **encoder_settings(pretrained, model_config.backbone), head_options=dict(model_config.head_options),
        freeze_encoder=model_config.freeze_encoder, class_names=list(class_names))
    model = ExpressionModel(config)
    if pretrained is not None and not load_encoder_weights(model, pretrained):
        print(f"model.encoder={model_config.encoder}: not used by the {model_config.head} head (it encodes its crops "
              "with its own CNN; model.head_options.region_encoder=backbone makes RAN use the encoder)")
    return model


def head_loss(head_key: str, output, labels, loss_config: LossConfig) -> dict[str, torch.Tensor]:
    """Each paper's training loss: CE (+ RAN's region biased loss, + AHA's per-region CE)."""
    if head_key == "ran":
        return ran_loss(output, labels, loss_config.ran_alpha, loss_config.ran_weight)
    if head_key == "aha":
        return aha_loss(output, labels, loss_config.aha_region_weight)
    terms = {"cross_entropy": F.cross_entropy(output.logits, labels, label_smoothing=loss_config.label_smoothing)}
    terms["total"] = terms["cross_entropy"]
    return terms


def flip_faces(images: torch.Tensor, landmarks: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the faces where ``flip (B,)`` is True: image columns reversed, landmarks mirrored and re-indexed."""
    mirrored_points = landmarks[:, torch.from_numpy(MIRROR_68).to(landmarks.device)].clone()
    mirrored_points[..., 0] = images.shape[-1] - 1 - mirrored_points[..., 0]
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images, torch.where(flip[:, None, None], mirrored_points, landmarks)


def evaluate(model, faces, accelerator, eval_config: EvalConfig, out: Path, step: int) -> dict[str, float]:
    """Accuracy and mean class accuracy on ``faces`` (sharded over processes), per occlusion."""
    results, labels, classes = {}, faces.labels.numpy(), len(faces.class_names)

    def scores_of(occlusion: str):
        def forward(network, rows):
            images = faces.images[rows].to(accelerator.device).float() / 255.0
            landmarks = faces.landmarks[rows].to(accelerator.device)
            return network(mask_face_half(images, landmarks, occlusion), landmarks).logits
        return lambda rows: predict_in_batches(accelerator.unwrap_model(model), rows, eval_config.batch_size, forward,
                                               classes)

    for occlusion in OCCLUSIONS if eval_config.occlusion else ("none",):
        scores = gather_in_order(accelerator, len(faces), scores_of(occlusion))
        suffix = "" if occlusion == "none" else f"_{occlusion}_masked"
        results[f"accuracy{suffix}"] = metrics.accuracy(labels, scores)
        results[f"mean_class_accuracy{suffix}"] = metrics.mean_class_accuracy(labels, scores, classes)
        if occlusion == "none" and accelerator.is_main_process:
            matrix = metrics.confusion_matrix(labels, scores, classes)
            metrics.plot_confusion_matrix(matrix, out / "confusion_test.png", faces.class_names,
                                          title=f"test, step {step}: accuracy {results['accuracy']:.3f}")
            results["confusion"] = matrix.tolist()
    return results


def evaluation_message(results: dict, step: int, occlusion: bool) -> str:
    masked = (f" (upper masked {results['accuracy_upper_masked']:.3f}, lower masked "
              f"{results['accuracy_lower_masked']:.3f})") if occlusion else ""
    return f"step {step}: test accuracy {results['accuracy']:.3f}{masked}"


# ---------------------------------------------------------------------------- the recipe
def main(argv=None) -> int:
    # ---------------------------------------------------------------- config
    parser = recipe_parser(__doc__, DEFAULT_CONFIG)
    parser.add_argument("--head", choices=sorted(EXPRESSION_HEADS), help="the head (overrides model.head)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"model.head={args.head}"] if args.head else [])
    config = load_config(args.config, overrides, schema=FinetuneExpressionConfig)
    model_config, train = config.model, config.train
    if model_config.head not in EXPRESSION_HEADS:
        raise ConfigError(f"model.head={model_config.head!r}: choose one of {sorted(EXPRESSION_HEADS)}")
    run = start_run(config, train.output_dir, train.seed, train.mixed_precision, threads=train.threads,
                    find_unused_parameters=True)
    accelerator = run.accelerator

    # ---------------------------------------------------------------- data: aligned as the encoder was trained
    pretrained, alignment = encoder_for_crops(model_config.encoder, model_config.image_size)
    with accelerator.main_process_first():  # the main process aligns, the others read its cache
        loaded = load_face_label_data(config.data, alignment, run.out, train.seed).keep(
            lambda faces: np.flatnonzero((faces.labels >= 0).numpy()))  # rows with valence/arousal only: out
    test_faces, class_names = loaded.test, loaded.train.class_names
    accelerator.print(f"{model_config.head}: {len(loaded.train)} training and {len(test_faces)} test faces, "
                      f"{len(class_names)} classes ({', '.join(class_names)}); {json.dumps(loaded.info)[:400]}")

    # ---------------------------------------------------------------- model, optimiser, prepare, resume
    model = build_model(model_config, pretrained.encoder if pretrained else None, class_names, alignment.size)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, config.optim))
    loop = StepLoop(run, model, optimizer, config.optim, train, len(loaded.train), args.resume, model_config.head)

    # ---------------------------------------------------------------- loop
    results = {}
    model.train()
    for epoch, rows, generator in loop.batches():
        faces = loaded.train_for_epoch(epoch, train.redraw_synthetic)  # synthetic: animated afresh each epoch
        images = faces.images[rows].to(accelerator.device).float() / 255.0
        landmarks, labels = faces.landmarks[rows].to(accelerator.device), faces.labels[rows].to(accelerator.device)
        if train.flip:
            images, landmarks = flip_faces(images, landmarks, (torch.rand(len(rows), generator=generator) < 0.5)
                                           .to(accelerator.device))
        images = photometric_jitter(images, train.color_jitter, generator)
        with accelerator.autocast():
            output = model(images, landmarks, labels)
            terms = head_loss(model_config.head, output, labels, config.loss)
        accuracy = (output.logits.argmax(1) == labels).float().mean()
        loop.step(terms, lambda: {"train_accuracy": float(accelerator.reduce(accuracy, "mean"))})
        if loop.evaluation_due(config.eval.every) and len(test_faces):
            results = evaluate(model, test_faces, accelerator, config.eval, run.out, loop.progress.step)
            loop.log_evaluation(results, evaluation_message(results, loop.progress.step, config.eval.occlusion))
        loop.save_if_due()
    steps = loop.finish()

    # ---------------------------------------------------------------- export
    majority = np.bincount(test_faces.labels.numpy(), minlength=len(class_names)).max() / max(len(test_faces), 1)
    summary = {"head": model_config.head, "steps": steps, "train_faces": len(loaded.train),
               "test_faces": len(test_faces), "chance": 1.0 / len(class_names), "majority_class_share": float(majority),
               "class_names": list(class_names), "data": loaded.info, **results}
    finish_task_run(run, model, alignment, summary, "confusion_test.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main, "finetune_expression"))
