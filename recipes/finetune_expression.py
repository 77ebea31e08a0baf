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
(``--resume``), ``model/`` (``encoder/`` via ``video_fer.load_model``, ``head.safetensors`` +
``head.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from video_fer import metrics  # noqa: E402
from video_fer.checkpoint import load_model, save_model  # noqa: E402
from video_fer.config import OptimConfig, config_to_dict, load_config  # noqa: E402
from video_fer.data.expression_datasets import (FaceLabelDataConfig, load_face_label_data,  # noqa: E402
                                               mask_face_half, photometric_jitter)
from video_fer.errors import ConfigError  # noqa: E402
from video_fer.head_losses import aha_loss, ran_loss  # noqa: E402
from video_fer.io_utils import atomic_write  # noqa: E402
from video_fer.models.heads import BackboneEmbedding, backbone_channels, create_head  # noqa: E402
from video_fer.models.tae import FaceActionEncoder, TAEConfig  # noqa: E402
from video_fer.training import CsvLog, cosine_with_warmup, latest_checkpoint, save_checkpoint  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_expression.yaml"
HEAD_NAMES = {"acnn": "acnn", "pacnn": "pacnn", "ran": "ran", "prior": "prior_attention", "aha": "aha",
              "linear": "linear"}
IMAGE_HEADS = {"ran", "prior"}  # heads that encode crops of the image themselves (no backbone maps)
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
class ExpressionModel(nn.Module):
    """Encoder (absent for heads that read the image) + head: ``(images, landmarks) -> HeadOutput``."""

    def __init__(self, encoder: nn.Module | None, head: nn.Module, freeze_encoder: bool):
        super().__init__()
        self.encoder, self.head, self.freeze_encoder = encoder, head, freeze_encoder
        if encoder is not None and freeze_encoder:
            encoder.requires_grad_(False)

    def forward(self, images, landmarks, labels=None):
        features = None
        if self.encoder is not None:
            if self.freeze_encoder:
                self.encoder.eval()  # frozen: BatchNorm statistics stay those of pretraining
                with torch.no_grad():
                    features = self.encoder.forward_features(images)
            else:
                features = self.encoder.forward_features(images)
        return self.head(features, images=images, landmarks=landmarks, labels=labels)


def build_model(model_config: ModelConfig, head_key: str, num_classes: int, image_size: int) -> ExpressionModel:
    """The encoder (loaded or fresh) and the named head sized to its feature maps."""
    if model_config.encoder:
        encoder = load_model(model_config.encoder)
        if encoder.config.image_size != image_size:
            raise ConfigError(f"model.encoder={model_config.encoder}: trained on {encoder.config.image_size} px faces "
                              f"but model.image_size={image_size}; set model.image_size={encoder.config.image_size}")
    else:
        encoder = FaceActionEncoder(TAEConfig(**{**model_config.backbone, "image_size": image_size}))
    channels = backbone_channels(encoder, image_size)  # {stride: channels}
    options = dict(model_config.head_options)
    deepest = max(channels)
    if head_key == "linear":
        head = create_head("linear", num_outputs=num_classes, embedding_dim=encoder.config.embedding_dim, **options)
    elif head_key in ("acnn", "pacnn"):
        stride = options.pop("stride", 8)
        head = create_head(HEAD_NAMES[head_key], num_classes=num_classes, stride=stride, in_channels=channels[stride],
                           image_size=image_size, **options)
    elif head_key == "aha":
        local, global_ = options.pop("local_stride", 8), options.pop("global_stride", deepest)
        head = create_head("aha", num_classes=num_classes, local_stride=local, global_stride=global_,
                           local_channels=channels[local], global_channels=channels[global_], image_size=image_size,
                           **options)
    elif head_key == "ran":
        if options.pop("region_encoder", "small") == "backbone":  # RAN re-encodes its crops with the shared encoder
            options.update(region_encoder=BackboneEmbedding(encoder, encoder.config.embedding_dim),
                           feature_dim=encoder.config.embedding_dim, crop_size=image_size)
            return ExpressionModel(None, create_head("ran", num_classes=num_classes, **options), False)
        head = create_head("ran", num_classes=num_classes, **options)
    elif head_key == "prior":
        head = create_head("prior_attention", num_classes=num_classes, **options)
    else:
        raise ConfigError(f"model.head={head_key!r}: choose one of {sorted(HEAD_NAMES)}")
    return ExpressionModel(None if head_key in IMAGE_HEADS else encoder, head, model_config.freeze_encoder)


def head_loss(head_key: str, output, labels, loss_config: LossConfig) -> dict[str, torch.Tensor]:
    """Each paper's training loss: CE (+ RAN's region biased loss, + AHA's per-region CE)."""
    if head_key == "ran":
        return ran_loss(output, labels, loss_config.ran_alpha, loss_config.ran_weight)
    if head_key == "aha":
        return aha_loss(output, labels, loss_config.aha_region_weight)
    terms = {"cross_entropy": F.cross_entropy(output.logits, labels, label_smoothing=loss_config.label_smoothing)}
    terms["total"] = terms["cross_entropy"]
    return terms


def learning_rate(optim: OptimConfig, step: int, total_steps: int) -> float:
    """Warmup then cosine (``cosine``) or warmup then constant (``constant``)."""
    if optim.schedule == "cosine":
        return optim.lr * cosine_with_warmup(step, total_steps, optim.warmup_steps, optim.min_lr_ratio)
    if optim.schedule == "constant":
        return optim.lr * min((step + 1) / max(optim.warmup_steps, 1), 1.0)
    raise ConfigError(f"optim.schedule={optim.schedule!r}: choose 'cosine' or 'constant' for fine-tuning")


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
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = np.arange(len(faces))[rank::world]
    results = {}
    for occlusion in OCCLUSIONS if eval_config.occlusion else ("none",):
        scores = predict(accelerator.unwrap_model(model), faces, shard, eval_config.batch_size, accelerator.device,
                         occlusion)
        gathered = gather_object([(shard, scores)])
        order = np.concatenate([part[0] for part in gathered])
        all_scores = np.concatenate([part[1] for part in gathered])[np.argsort(order)]
        labels = faces.labels.numpy()
        suffix = "" if occlusion == "none" else f"_{occlusion}_masked"
        results[f"accuracy{suffix}"] = metrics.accuracy(labels, all_scores)
        results[f"mean_class_accuracy{suffix}"] = metrics.mean_class_accuracy(labels, all_scores,
                                                                              len(faces.class_names))
        if out is not None and occlusion == "none" and accelerator.is_main_process:
            matrix = metrics.confusion_matrix(labels, all_scores, len(faces.class_names))
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
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # The TAE encoder's pose branch takes no part in an expression loss: DDP must allow unused parameters.
    accelerator = Accelerator(mixed_precision=train.mixed_precision, cpu=cpu_processes,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(train.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))

    # ---------------------------------------------------------------- data (main process aligns, the rest read its cache)
    size = model_config.image_size
    with accelerator.main_process_first():
        loaded = load_face_label_data(data, size, out, train.seed)
    train_faces, test_faces, info = loaded.train, loaded.test, loaded.info
    classified = lambda faces: faces.select(np.flatnonzero((faces.labels >= 0).numpy()))  # noqa: E731 (VA-only rows out)
    train_faces, test_faces = classified(train_faces), classified(test_faces)
    num_classes = len(train_faces.class_names)
    if len(train_faces) < train.batch_size * world:
        raise ConfigError(f"{len(train_faces)} training faces: fewer than train.batch_size x processes "
                          f"({train.batch_size} x {world}); lower train.batch_size")
    steps_per_epoch = len(train_faces) // (train.batch_size * world)
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    accelerator.print(f"{head_key}: {len(train_faces)} training and {len(test_faces)} test faces, {num_classes} "
                      f"classes ({', '.join(train_faces.class_names)}); {json.dumps(info)[:400]}")

    # ---------------------------------------------------------------- model, optimiser, prepare
    model = build_model(model_config, head_key, num_classes, size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    elif optim.name == "adamw":
        optimizer = torch.optim.AdamW(trainable, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    else:
        raise ConfigError(f"optim.name={optim.name!r}: choose 'adamw' or 'sgd'")
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0}

    class Progress:  # accelerate checkpoints objects with state_dict / load_state_dict
        def state_dict(self):
            return dict(progress)

        def load_state_dict(self, state):
            progress.update(state)

    accelerator.register_for_checkpointing(Progress())
    resumed_from = None
    if args.resume:
        resumed_from = latest_checkpoint(out) if args.resume == "auto" else Path(args.resume)
        if resumed_from is None:
            accelerator.print(f"--resume: no checkpoint in {out / 'checkpoints'} yet; starting from scratch")
        else:
            accelerator.load_state(str(resumed_from))
            accelerator.print(f"resumed from {resumed_from} (step {progress['step']})")
    after = progress["step"] if resumed_from else None
    loss_log = CsvLog(out / "losses.csv", resume_after_step=after) if accelerator.is_main_process else None
    eval_log = CsvLog(out / "evaluation.csv", resume_after_step=after) if accelerator.is_main_process else None

    # ---------------------------------------------------------------- loop
    bar = tqdm(total=total_steps, initial=progress["step"], disable=not accelerator.is_main_process, desc=head_key)
    results, last_checkpoint = {}, resumed_from
    model.train()
    while progress["step"] < total_steps:
        if loaded.redraw_train is not None and train.redraw_synthetic and progress["epoch"] > 0:
            train_faces = classified(loaded.redraw_train(progress["epoch"]))  # same size: steps_per_epoch holds
        # One permutation per epoch from (seed, epoch): every rank agrees, resume continues exactly.
        order = torch.randperm(len(train_faces), generator=torch.Generator().manual_seed(train.seed * 7919 + progress["epoch"]))
        mine = order[rank::world][:steps_per_epoch * train.batch_size].view(steps_per_epoch, train.batch_size)
        for batch_index in range(progress["batch_in_epoch"], steps_per_epoch):
            if progress["step"] >= total_steps:
                break
            rows = mine[batch_index]
            images = train_faces.images[rows].to(accelerator.device).float() / 255.0
            landmarks = train_faces.landmarks[rows].to(accelerator.device)
            labels = train_faces.labels[rows].to(accelerator.device)
            generator = torch.Generator().manual_seed(train.seed * 1_000_003 + progress["step"] * 31 + rank)
            if train.flip:
                images, landmarks = flip_faces(images, landmarks, (torch.rand(len(rows), generator=generator) < 0.5)
                                               .to(accelerator.device))
            images = photometric_jitter(images, train.color_jitter, generator)
            with accelerator.autocast():
                output = model(images, landmarks, labels)
                terms = head_loss(head_key, output, labels, config.loss)
            lr = learning_rate(optim, progress["step"], total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(terms["total"])
            if optim.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
            optimizer.step()
            progress["step"] += 1
            progress["batch_in_epoch"] = batch_index + 1
            bar.update(1)
            if progress["step"] % train.log_every == 0 or progress["step"] == total_steps:
                values = {name: float(accelerator.reduce(value.detach().float(), "mean")) for name, value in terms.items()}
                accuracy = float(accelerator.reduce((output.logits.argmax(1) == labels).float().mean(), "mean"))
                if accelerator.is_main_process:
                    loss_log.write({"step": progress["step"], "epoch": progress["epoch"], "lr": lr, **values,
                                    "train_accuracy": accuracy})
                    bar.set_postfix(loss=f"{values['total']:.3f}", acc=f"{accuracy:.2f}")
            every = config.eval.every
            due = progress["step"] % every == 0 if every else progress["batch_in_epoch"] == steps_per_epoch
            if (due or progress["step"] == total_steps) and len(test_faces):
                results = evaluate(model, test_faces, accelerator, config.eval, out, progress["step"])
                if accelerator.is_main_process:
                    eval_log.write({"step": progress["step"], "epoch": progress["epoch"],
                                    **{k: v for k, v in results.items() if k != "confusion"}})
                    bar.write(f"step {progress['step']}: test accuracy {results['accuracy']:.3f}"
                              + (f" (upper masked {results['accuracy_upper_masked']:.3f}, lower masked "
                                 f"{results['accuracy_lower_masked']:.3f})" if config.eval.occlusion else ""))
            if train.save_every and progress["step"] % train.save_every == 0:
                last_checkpoint = save_checkpoint(accelerator, out, progress["step"], train.keep_checkpoints)
        if progress["batch_in_epoch"] >= steps_per_epoch:
            progress["epoch"] += 1
            progress["batch_in_epoch"] = 0
    bar.close()

    # ---------------------------------------------------------------- checkpoint and export
    if last_checkpoint is None or not str(last_checkpoint).endswith(f"step_{progress['step']:08d}"):
        save_checkpoint(accelerator, out, progress["step"], train.keep_checkpoints)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        export = out / "model"
        if unwrapped.encoder is not None:
            save_model(unwrapped.encoder, export / "encoder", extra={"step": progress["step"]})
        state = {k: v.detach().contiguous().cpu() for k, v in unwrapped.head.state_dict().items()}
        export.mkdir(parents=True, exist_ok=True)
        save_file(state, str(export / "head.safetensors"))
        with atomic_write(export / "head.json") as handle:
            json.dump({"head": head_key, "num_classes": num_classes, "class_names": list(train_faces.class_names),
                       "image_size": size, "head_options": model_config.head_options}, handle, indent=2)
        summary = {"head": head_key, "steps": progress["step"], "train_faces": len(train_faces),
                   "test_faces": len(test_faces), "chance": 1.0 / num_classes,
                   "majority_class_share": float(np.bincount(test_faces.labels.numpy(), minlength=num_classes).max()
                                                 / max(len(test_faces), 1)),
                   "class_names": list(train_faces.class_names), "data": info, **results}
        with atomic_write(out / "metrics.json") as handle:
            json.dump(summary, handle, indent=2)
        accelerator.print(f"outputs in {out.resolve()}: metrics.json, evaluation.csv, losses.csv, confusion_test.png, "
                          "model/, checkpoints/")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
