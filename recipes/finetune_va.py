"""Fine-tune the two-level attention, multi-task valence/arousal head on a face encoder (METHOD.md §2).

    python recipes/finetune_va.py                                       # synthetic demo: a few minutes on a CPU
    accelerate launch recipes/finetune_va.py data.kind=affectnet data.root=AffectNet/training.csv \\
        data.val_root=AffectNet/validation.csv model.image_size=256 model.encoder=runs/pretrain_tae/encoder
    python recipes/finetune_va.py --resume                              # continue from the latest checkpoint

Settings: recipes/configs/finetune_va.yaml, every key overridable as ``key.sub=value``.
Targets: valence and arousal in [-1, 1] (rows without them are left out); with
``loss.expression_weight > 0`` and class labels, the auxiliary expression task is trained too.
Loss: ``mse_weight * MSE + ccc_weight * (1 - CCC)`` (+ expression CE). Metrics on the test
split: RMSE, PCC and CCC of valence and arousal. Outputs (``train.output_dir``):
``losses.csv``, ``evaluation.csv``, ``va_scatter.png``, ``metrics.json``, ``checkpoints/step_*``
(``--resume``), ``model/`` (``encoder/`` via ``video_fer.load_model``, ``head.safetensors`` + ``head.json``).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from video_fer import metrics  # noqa: E402
from video_fer.checkpoint import load_model, save_model  # noqa: E402
from video_fer.config import OptimConfig, config_to_dict, load_config  # noqa: E402
from video_fer.data.expression_datasets import FaceLabelDataConfig, load_face_label_data, photometric_jitter  # noqa: E402
from video_fer.errors import ConfigError  # noqa: E402
from video_fer.head_losses import va_multitask_loss  # noqa: E402
from video_fer.io_utils import atomic_path, atomic_write  # noqa: E402
from video_fer.models.heads import backbone_channels, create_head  # noqa: E402
from video_fer.models.tae import FaceActionEncoder, TAEConfig  # noqa: E402
from video_fer.training import CsvLog, cosine_with_warmup, latest_checkpoint, save_checkpoint  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_va.yaml"
TARGETS = ("valence", "arousal")


# ---------------------------------------------------------------------------- config schema
@dataclass
class ModelConfig:
    """Encoder and the two-level attention head. ``backbone`` takes TAEConfig keys (fresh encoder only)."""

    image_size: int = 128
    encoder: str | None = None  # a saved encoder folder (video_fer.load_model); null = a fresh TAE encoder
    freeze_encoder: bool = False
    backbone: dict = field(default_factory=dict, metadata={"schema": "video_fer.models.tae:TAEConfig"})
    strides: list | None = None  # encoder maps read, shallow to deep (null: every map from stride 4 on)
    head_options: dict = field(default_factory=dict, metadata={"free_keys": True})  # e.g. rnn: lstm


@dataclass
class LossConfig:
    mse_weight: float = 1.0
    ccc_weight: float = 1.0
    expression_weight: float = 0.0  # > 0: auxiliary expression classification (needs class labels)


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations (0: end of each epoch)
    batch_size: int = 64


@dataclass
class TrainConfig:
    output_dir: str = "runs/finetune_va"
    seed: int = 0
    batch_size: int = 32
    epochs: int = 8
    max_steps: int = 0
    mixed_precision: str = "no"
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 5
    redraw_synthetic: bool = True  # synthetic data: animate the training faces afresh every epoch
    color_jitter: float = 0.2  # brightness / contrast / channel gains drawn in [1 - x, 1 + x] (0: off)
    flip: bool = True  # horizontal flips (valence and arousal do not change with a mirror image)
    threads: int = 0


@dataclass
class FinetuneVAConfig:
    data: FaceLabelDataConfig = field(default_factory=FaceLabelDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------- model
class ValenceArousalModel(nn.Module):
    """Encoder + two-level attention head: ``images -> HeadOutput(valence_arousal (B, 2), logits?)``."""

    def __init__(self, encoder: nn.Module, head: nn.Module, freeze_encoder: bool):
        super().__init__()
        self.encoder, self.head, self.freeze_encoder = encoder, head, freeze_encoder
        if freeze_encoder:
            encoder.requires_grad_(False)

    def forward(self, images):
        if self.freeze_encoder:
            self.encoder.eval()
            with torch.no_grad():
                return self.head(self.encoder.forward_features(images))
        return self.head(self.encoder.forward_features(images))


def build_model(model_config: ModelConfig, image_size: int, num_expressions: int) -> ValenceArousalModel:
    if model_config.encoder:
        encoder = load_model(model_config.encoder)
        if encoder.config.image_size != image_size:
            raise ConfigError(f"model.encoder={model_config.encoder}: trained on {encoder.config.image_size} px faces "
                              f"but model.image_size={image_size}; set model.image_size={encoder.config.image_size}")
    else:
        encoder = FaceActionEncoder(TAEConfig(**{**model_config.backbone, "image_size": image_size}))
    channels = backbone_channels(encoder, image_size)
    strides = list(model_config.strides) if model_config.strides else [s for s in sorted(channels) if s >= 4]
    missing = [s for s in strides if s not in channels]
    if missing:
        raise ConfigError(f"model.strides: {missing} are not strides of the encoder ({sorted(channels)})")
    head = create_head("two_level_va", strides=strides, channels=[channels[s] for s in strides],
                       num_expressions=num_expressions, image_size=image_size, **model_config.head_options)
    return ValenceArousalModel(encoder, head, model_config.freeze_encoder)


@torch.no_grad()
def predict(model, faces, indices: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Valence/arousal ``(len(indices), 2)`` of the faces at ``indices``."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(indices), batch_size):
        rows = torch.from_numpy(indices[start:start + batch_size])
        outputs.append(model(faces.images[rows].to(device).float() / 255.0).valence_arousal.float().cpu())
    model.train(was_training)
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 2), np.float32)


def evaluate(model, faces, accelerator, batch_size: int) -> tuple[dict[str, float], np.ndarray]:
    """RMSE, PCC, CCC of valence and arousal on ``faces`` (sharded over processes)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = np.arange(len(faces))[rank::world]
    gathered = gather_object([(shard, predict(accelerator.unwrap_model(model), faces, shard, batch_size,
                                              accelerator.device))])
    order = np.concatenate([part[0] for part in gathered])
    prediction = np.concatenate([part[1] for part in gathered])[np.argsort(order)]
    truth = faces.valence_arousal.numpy()
    rmse = metrics.root_mean_square_error(truth, prediction)
    pcc = metrics.pearson_correlation(truth, prediction)
    ccc = metrics.concordance_correlation(truth, prediction)
    results = {}
    for column, name in enumerate(TARGETS):
        results.update({f"{name}_rmse": float(rmse[column]), f"{name}_pcc": float(pcc[column]),
                        f"{name}_ccc": float(ccc[column])})
    results["mean_ccc"] = float(np.mean(ccc))
    return results, prediction


def plot_scatter(path: Path, truth: np.ndarray, prediction: np.ndarray, results: dict) -> None:
    """Predicted vs true valence and arousal (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4))
    FigureCanvasAgg(figure)
    for column, name in enumerate(TARGETS):
        axes = figure.add_subplot(1, 2, column + 1)
        axes.scatter(truth[:, column], prediction[:, column], s=6, alpha=0.5)
        axes.plot([-1, 1], [-1, 1], color="grey", linewidth=1)
        axes.set(xlim=(-1, 1), ylim=(-1, 1), xlabel=f"true {name}", ylabel=f"predicted {name}",
                 title=f"{name}: CCC {results[f'{name}_ccc']:.3f}, RMSE {results[f'{name}_rmse']:.3f}")
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=90)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint folder; without a value: the latest in train.output_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. optim.lr=3e-4")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    # ---------------------------------------------------------------- config
    args = parse_args(argv)
    config = load_config(args.config, args.overrides, schema=FinetuneVAConfig)
    data, model_config, train, optim = config.data, config.model, config.train, config.optim
    if train.threads:
        torch.set_num_threads(train.threads)
    out = Path(train.output_dir)
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # The encoder's pose branch takes no part in the VA loss: DDP must allow unused parameters.
    accelerator = Accelerator(mixed_precision=train.mixed_precision, cpu=cpu_processes,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(train.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))

    # ---------------------------------------------------------------- data
    size = model_config.image_size
    with accelerator.main_process_first():
        loaded = load_face_label_data(data, size, out, train.seed)
    train_faces, test_faces, info = loaded.train, loaded.test, loaded.info
    annotated = lambda faces: faces.select(np.flatnonzero(np.isfinite(faces.valence_arousal.numpy()).all(1)))  # noqa: E731
    train_faces, test_faces = annotated(train_faces), annotated(test_faces)
    auxiliary = config.loss.expression_weight > 0
    if auxiliary and (train_faces.labels < 0).any():
        raise ConfigError("loss.expression_weight > 0 needs a class label on every training face; set it to 0")
    if len(train_faces) < train.batch_size * world:
        raise ConfigError(f"{len(train_faces)} training faces with valence/arousal: fewer than train.batch_size x "
                          f"processes ({train.batch_size} x {world}); lower train.batch_size")
    steps_per_epoch = len(train_faces) // (train.batch_size * world)
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    accelerator.print(f"valence/arousal: {len(train_faces)} training and {len(test_faces)} test faces; "
                      f"{json.dumps(info)[:400]}")

    # ---------------------------------------------------------------- model, optimiser, prepare
    model = build_model(model_config, size, len(train_faces.class_names) if auxiliary else 0)
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
    bar = tqdm(total=total_steps, initial=progress["step"], disable=not accelerator.is_main_process, desc="va")
    results, prediction, last_checkpoint = {}, None, resumed_from
    model.train()
    while progress["step"] < total_steps:
        if loaded.redraw_train is not None and train.redraw_synthetic and progress["epoch"] > 0:
            train_faces = annotated(loaded.redraw_train(progress["epoch"]))  # fresh animation, same faces and size
        # One permutation per epoch from (seed, epoch): every rank agrees, resume continues exactly.
        order = torch.randperm(len(train_faces), generator=torch.Generator().manual_seed(train.seed * 7919 + progress["epoch"]))
        mine = order[rank::world][:steps_per_epoch * train.batch_size].view(steps_per_epoch, train.batch_size)
        for batch_index in range(progress["batch_in_epoch"], steps_per_epoch):
            if progress["step"] >= total_steps:
                break
            rows = mine[batch_index]
            images = train_faces.images[rows].to(accelerator.device).float() / 255.0
            targets = train_faces.valence_arousal[rows].to(accelerator.device)
            generator = torch.Generator().manual_seed(train.seed * 1_000_003 + progress["step"] * 31 + rank)
            if train.flip:  # a mirror image has the same valence and arousal
                flip = (torch.rand(len(rows), generator=generator) < 0.5).to(accelerator.device)
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            images = photometric_jitter(images, train.color_jitter, generator)
            with accelerator.autocast():
                output = model(images)
                terms = va_multitask_loss(output, targets, config.loss.mse_weight, config.loss.ccc_weight,
                                          train_faces.labels[rows].to(accelerator.device) if auxiliary else None,
                                          config.loss.expression_weight)
            if optim.schedule == "cosine":
                lr = optim.lr * cosine_with_warmup(progress["step"], total_steps, optim.warmup_steps, optim.min_lr_ratio)
            elif optim.schedule == "constant":
                lr = optim.lr * min((progress["step"] + 1) / max(optim.warmup_steps, 1), 1.0)
            else:
                raise ConfigError(f"optim.schedule={optim.schedule!r}: choose 'cosine' or 'constant' for fine-tuning")
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
                if accelerator.is_main_process:
                    loss_log.write({"step": progress["step"], "epoch": progress["epoch"], "lr": lr, **values})
                    bar.set_postfix(loss=f"{values['total']:.3f}", ccc_loss=f"{values['ccc']:.3f}")
            every = config.eval.every
            due = progress["step"] % every == 0 if every else progress["batch_in_epoch"] == steps_per_epoch
            if (due or progress["step"] == total_steps) and len(test_faces) > 1:
                results, prediction = evaluate(model, test_faces, accelerator, config.eval.batch_size)
                if accelerator.is_main_process:
                    eval_log.write({"step": progress["step"], "epoch": progress["epoch"], **results})
                    bar.write(f"step {progress['step']}: test CCC valence {results['valence_ccc']:.3f}, "
                              f"arousal {results['arousal_ccc']:.3f}")
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
        save_model(unwrapped.encoder, export / "encoder", extra={"step": progress["step"]})
        save_file({k: v.detach().contiguous().cpu() for k, v in unwrapped.head.state_dict().items()},
                  str(export / "head.safetensors"))
        with atomic_write(export / "head.json") as handle:
            json.dump({"head": "two_level_va", "image_size": size, "strides": list(unwrapped.head.strides),
                       "num_expressions": len(train_faces.class_names) if auxiliary else 0,
                       "head_options": model_config.head_options}, handle, indent=2)
        if prediction is not None:
            plot_scatter(out / "va_scatter.png", test_faces.valence_arousal.numpy(), prediction, results)
        summary = {"steps": progress["step"], "train_faces": len(train_faces), "test_faces": len(test_faces),
                   "data": info, **results}
        with atomic_write(out / "metrics.json") as handle:
            json.dump(summary, handle, indent=2)
        accelerator.print(f"outputs in {out.resolve()}: metrics.json, evaluation.csv, losses.csv, va_scatter.png, "
                          "model/, checkpoints/")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
