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
returns a :class:`video_fer.models.heads_finetune.ExpressionModel`) and ``encoder/`` (the
fine-tuned encoder alone, absent for RAN / prior attention on their own crop CNNs).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from accelerate.utils import set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from video_fer import metrics  # noqa: E402
from video_fer.checkpoint import save_model  # noqa: E402
from video_fer.config import OptimConfig, config_to_dict, load_config  # noqa: E402
from video_fer.data.expression_datasets import (FaceLabelDataConfig, load_face_label_data,  # noqa: E402
                                               mask_face_half, photometric_jitter)
from video_fer.errors import ConfigError  # noqa: E402
from video_fer.head_losses import aha_loss, ran_loss  # noqa: E402
from video_fer.io_utils import atomic_write  # noqa: E402
from video_fer.models.heads_finetune import (EXPRESSION_HEADS, ExpressionModel, ExpressionModelConfig,  # noqa: E402
                                             encoder_config_dict, load_encoder_weights, load_pretrained_encoder)
from video_fer.training import (StepProgress, epoch_batches, evaluation_due, finetune_learning_rate,  # noqa: E402
                                gather_in_order, make_finetune_accelerator, make_optimizer, optimizer_step,
                                reduce_terms, resume_run, run_logs, save_checkpoint, save_final_checkpoint,
                                step_generator)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_expression.yaml"
HEAD_NAMES = EXPRESSION_HEADS
OCCLUSIONS = ("none", "upper", "lower")


# ---------------------------------------------------------------------------- config schema
@dataclass
class ModelConfig:
    """Encoder and head. ``backbone`` takes TAEConfig keys (ignored when ``encoder`` is given)."""

    head: str = "acnn"  # acnn | pacnn | ran | prior | aha | linear (or --head)
    image_size: int = 128
    encoder: str | None = None  # a saved encoder folder (video_fer.load_model); null = a fresh TAE encoder
    freeze_encoder: bool = False  # linear-probe protocol: train the head only
    backbone: dict = field(default_factory=dict, metadata={"schema": "video_fer.models.tae:TAEConfig"})
    head_options: dict = field(default_factory=dict, metadata={"free_keys": True})  # extra create_head() arguments


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
class TrainConfig:
    output_dir: str = "runs/finetune_expression"
    seed: int = 0
    batch_size: int = 32
    epochs: int = 6
    max_steps: int = 0  # 0: epochs decide
    mixed_precision: str = "no"
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 5
    redraw_synthetic: bool = True  # synthetic data: animate the training faces afresh every epoch
    color_jitter: float = 0.2  # brightness / contrast / channel gains drawn in [1 - x, 1 + x] (0: off)
    flip: bool = True  # random horizontal flips (landmarks mirrored)
    threads: int = 0  # torch threads per process (0: torch's default)


@dataclass
class FinetuneExpressionConfig:
    data: FaceLabelDataConfig = field(default_factory=FaceLabelDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------- model
def build_model(model_config: ModelConfig, head_key: str, class_names, image_size: int) -> ExpressionModel:
    """The registered expression model: a fresh encoder, or the pretrained one of ``model.encoder`` copied in."""
    if head_key not in HEAD_NAMES:
        raise ConfigError(f"model.head={head_key!r}: choose one of {sorted(HEAD_NAMES)}")
    pretrained = load_pretrained_encoder(model_config.encoder, image_size)
    encoder_config = pretrained.config if pretrained is not None else {**model_config.backbone}
    config = ExpressionModelConfig(
        head=head_key, num_classes=len(class_names), image_size=image_size,
        encoder_architecture=getattr(type(pretrained), "architecture_name", "tae_encoder"),
        encoder=encoder_config_dict(encoder_config), head_options=dict(model_config.head_options),
        freeze_encoder=model_config.freeze_encoder, class_names=list(class_names))
    model = ExpressionModel(config)
    if pretrained is not None and not load_encoder_weights(model, pretrained):
        print(f"model.encoder={model_config.encoder}: not used by the {head_key} head (it encodes its crops with its "
              "own CNN; model.head_options.region_encoder=backbone makes RAN use the encoder)")
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
    from video_fer.data.synthetic import MIRROR_68

    mirrored_points = landmarks[:, torch.from_numpy(MIRROR_68).to(landmarks.device)].clone()
    mirrored_points[..., 0] = images.shape[-1] - 1 - mirrored_points[..., 0]
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images, torch.where(flip[:, None, None], mirrored_points, landmarks)


@torch.no_grad()
def predict(model: ExpressionModel, faces, indices: np.ndarray, batch_size: int, device, occlusion: str) -> np.ndarray:
    """Class scores ``(len(indices), C)`` of the faces at ``indices``, optionally half-masked."""
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(indices), batch_size):
        rows = torch.from_numpy(indices[start:start + batch_size])
        images = faces.images[rows].to(device).float() / 255.0
        landmarks = faces.landmarks[rows].to(device)
        scores.append(model(mask_face_half(images, landmarks, occlusion), landmarks).logits.float().cpu())
    model.train(was_training)
    return torch.cat(scores).numpy() if scores else np.zeros((0, len(faces.class_names)), np.float32)


def evaluate(model, faces, accelerator, eval_config: EvalConfig, out: Path | None, step: int) -> dict[str, float]:
    """Accuracy and mean class accuracy on ``faces`` (sharded over processes), per occlusion."""
    results, labels, classes = {}, faces.labels.numpy(), len(faces.class_names)
    for occlusion in OCCLUSIONS if eval_config.occlusion else ("none",):
        scores = gather_in_order(accelerator, len(faces), lambda rows: predict(
            accelerator.unwrap_model(model), faces, rows, eval_config.batch_size, accelerator.device, occlusion))
        suffix = "" if occlusion == "none" else f"_{occlusion}_masked"
        results[f"accuracy{suffix}"] = metrics.accuracy(labels, scores)
        results[f"mean_class_accuracy{suffix}"] = metrics.mean_class_accuracy(labels, scores, classes)
        if out is not None and occlusion == "none" and accelerator.is_main_process:
            matrix = metrics.confusion_matrix(labels, scores, classes)
            metrics.plot_confusion_matrix(matrix, out / "confusion_test.png", faces.class_names,
                                          title=f"test, step {step}: accuracy {results['accuracy']:.3f}")
            results["confusion"] = matrix.tolist()
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    parser.add_argument("--head", choices=sorted(HEAD_NAMES), help="the head (overrides model.head)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint folder; without a value: the latest in train.output_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. optim.lr=3e-4")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    # ---------------------------------------------------------------- config
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"model.head={args.head}"] if args.head else [])
    config = load_config(args.config, overrides, schema=FinetuneExpressionConfig)
    data, model_config, train, optim = config.data, config.model, config.train, config.optim
    head_key = model_config.head
    if head_key not in HEAD_NAMES:
        raise ConfigError(f"model.head={head_key!r}: choose one of {sorted(HEAD_NAMES)}")
    if train.threads:
        torch.set_num_threads(train.threads)
    out = Path(train.output_dir)
    accelerator = make_finetune_accelerator(train.mixed_precision)
    set_seed(train.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))

    # ---------------------------------------------------------------- data (main process aligns, the rest read its cache)
    size = model_config.image_size
    with accelerator.main_process_first():
        loaded = load_face_label_data(data, size, out, train.seed)
    classified = lambda faces: faces.select(np.flatnonzero((faces.labels >= 0).numpy()))  # noqa: E731 (VA-only rows out)
    train_faces, test_faces, info = classified(loaded.train), classified(loaded.test), loaded.info
    num_classes = len(train_faces.class_names)
    if len(train_faces) < train.batch_size * world:
        raise ConfigError(f"{len(train_faces)} training faces: fewer than train.batch_size x processes "
                          f"({train.batch_size} x {world}); lower train.batch_size")
    steps_per_epoch = len(train_faces) // (train.batch_size * world)
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    accelerator.print(f"{head_key}: {len(train_faces)} training and {len(test_faces)} test faces, {num_classes} "
                      f"classes ({', '.join(train_faces.class_names)}); {json.dumps(info)[:400]}")

    # ---------------------------------------------------------------- model, optimiser, prepare, resume
    model = build_model(model_config, head_key, train_faces.class_names, size)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, optim))
    progress = StepProgress()
    accelerator.register_for_checkpointing(progress)
    resumed_from = resume_run(accelerator, args.resume, out)
    if resumed_from is not None:
        accelerator.print(f"resumed from {resumed_from} (step {progress.step})")
    loss_log, eval_log = run_logs(accelerator, out, progress.step if resumed_from else None)

    # ---------------------------------------------------------------- loop
    bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_main_process, desc=head_key)
    results, last_checkpoint, faces_epoch = {}, resumed_from, 0
    model.train()
    for epoch, batch_index, rows in epoch_batches(progress, total_steps, steps_per_epoch, len(train_faces),
                                                  train.batch_size, train.seed, rank, world):
        if epoch != faces_epoch and loaded.redraw_train is not None and train.redraw_synthetic:
            train_faces = classified(loaded.redraw_train(epoch))  # fresh animation, same faces and size
        faces_epoch = epoch
        images = train_faces.images[rows].to(accelerator.device).float() / 255.0
        landmarks = train_faces.landmarks[rows].to(accelerator.device)
        labels = train_faces.labels[rows].to(accelerator.device)
        generator = step_generator(train.seed, progress.step, rank)
        if train.flip:
            images, landmarks = flip_faces(images, landmarks, (torch.rand(len(rows), generator=generator) < 0.5)
                                           .to(accelerator.device))
        images = photometric_jitter(images, train.color_jitter, generator)
        with accelerator.autocast():
            output = model(images, landmarks, labels)
            terms = head_loss(head_key, output, labels, config.loss)
        lr = finetune_learning_rate(optim, progress.step, total_steps)
        optimizer_step(accelerator, model, optimizer, terms["total"], lr, optim.grad_clip)
        progress.advance(batch_index)
        bar.update(1)
        if progress.step % train.log_every == 0 or progress.step == total_steps:
            values = reduce_terms(accelerator, terms)
            accuracy = float(accelerator.reduce((output.logits.argmax(1) == labels).float().mean(), "mean"))
            if accelerator.is_main_process:
                loss_log.write({"step": progress.step, "epoch": progress.epoch, "lr": lr, **values,
                                "train_accuracy": accuracy})
                bar.set_postfix(loss=f"{values['total']:.3f}", acc=f"{accuracy:.2f}")
        if evaluation_due(progress, config.eval.every, steps_per_epoch, total_steps) and len(test_faces):
            results = evaluate(model, test_faces, accelerator, config.eval, out, progress.step)
            if accelerator.is_main_process:
                eval_log.write({"step": progress.step, "epoch": progress.epoch,
                                **{k: v for k, v in results.items() if k != "confusion"}})
                bar.write(f"step {progress.step}: test accuracy {results['accuracy']:.3f}"
                          + (f" (upper masked {results['accuracy_upper_masked']:.3f}, lower masked "
                             f"{results['accuracy_lower_masked']:.3f})" if config.eval.occlusion else ""))
        if train.save_every and progress.step % train.save_every == 0:
            last_checkpoint = save_checkpoint(accelerator, out, progress.step, train.keep_checkpoints)
    bar.close()

    # ---------------------------------------------------------------- checkpoint and export
    save_final_checkpoint(accelerator, out, progress.step, train.keep_checkpoints, last_checkpoint)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_model(unwrapped, out / "model", extra={"step": progress.step})  # video_fer.load_model(out / "model")
        if unwrapped.encoder is not None:
            save_model(unwrapped.encoder, out / "encoder", extra={"step": progress.step})
        summary = {"head": head_key, "steps": progress.step, "train_faces": len(train_faces),
                   "test_faces": len(test_faces), "chance": 1.0 / num_classes,
                   "majority_class_share": float(np.bincount(test_faces.labels.numpy(), minlength=num_classes).max()
                                                 / max(len(test_faces), 1)),
                   "class_names": list(train_faces.class_names), "data": info, **results}
        with atomic_write(out / "metrics.json") as handle:
            json.dump(summary, handle, indent=2)
        accelerator.print(f"outputs in {out.resolve()}: metrics.json, evaluation.csv, losses.csv, confusion_test.png, "
                          "model/ (video_fer.load_model), encoder/, checkpoints/")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
