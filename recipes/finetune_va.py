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
(``--resume``), ``model/`` (``video_fer.load_model(<out>/model)`` returns a
:class:`video_fer.models.heads_finetune.ValenceArousalModel`) and ``encoder/`` (the encoder alone).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from accelerate.utils import set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from video_fer import metrics  # noqa: E402
from video_fer.checkpoint import save_model  # noqa: E402
from video_fer.config import OptimConfig, config_to_dict, load_config  # noqa: E402
from video_fer.data.expression_datasets import FaceLabelDataConfig, load_face_label_data, photometric_jitter  # noqa: E402
from video_fer.errors import ConfigError  # noqa: E402
from video_fer.head_losses import va_multitask_loss  # noqa: E402
from video_fer.io_utils import atomic_path, atomic_write  # noqa: E402
from video_fer.models.heads_finetune import (ValenceArousalModel, ValenceArousalModelConfig,  # noqa: E402
                                             encoder_config_dict, load_encoder_weights, load_pretrained_encoder)
from video_fer.training import (StepProgress, epoch_batches, evaluation_due, finetune_learning_rate,  # noqa: E402
                                gather_in_order, make_finetune_accelerator, make_optimizer, optimizer_step,
                                reduce_terms, resume_run, run_logs, save_checkpoint, save_final_checkpoint,
                                step_generator)

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
def build_model(model_config: ModelConfig, image_size: int, num_expressions: int) -> ValenceArousalModel:
    """The registered VA model: a fresh encoder, or the pretrained one of ``model.encoder`` copied in."""
    pretrained = load_pretrained_encoder(model_config.encoder, image_size)
    config = ValenceArousalModelConfig(
        image_size=image_size, strides=list(model_config.strides or []), num_expressions=num_expressions,
        encoder_architecture=getattr(type(pretrained), "architecture_name", "tae_encoder"),
        encoder=encoder_config_dict(pretrained.config if pretrained is not None else model_config.backbone),
        head_options=dict(model_config.head_options), freeze_encoder=model_config.freeze_encoder)
    model = ValenceArousalModel(config)
    if pretrained is not None:
        load_encoder_weights(model, pretrained)
    return model


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
    prediction = gather_in_order(accelerator, len(faces), lambda rows: predict(
        accelerator.unwrap_model(model), faces, rows, batch_size, accelerator.device))
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
    accelerator = make_finetune_accelerator(train.mixed_precision)
    set_seed(train.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))

    # ---------------------------------------------------------------- data
    size = model_config.image_size
    with accelerator.main_process_first():
        loaded = load_face_label_data(data, size, out, train.seed)
    annotated = lambda faces: faces.select(np.flatnonzero(np.isfinite(faces.valence_arousal.numpy()).all(1)))  # noqa: E731
    train_faces, test_faces, info = annotated(loaded.train), annotated(loaded.test), loaded.info
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

    # ---------------------------------------------------------------- model, optimiser, prepare, resume
    model = build_model(model_config, size, len(train_faces.class_names) if auxiliary else 0)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, optim))
    progress = StepProgress()
    accelerator.register_for_checkpointing(progress)
    resumed_from = resume_run(accelerator, args.resume, out)
    if resumed_from is not None:
        accelerator.print(f"resumed from {resumed_from} (step {progress.step})")
    loss_log, eval_log = run_logs(accelerator, out, progress.step if resumed_from else None)

    # ---------------------------------------------------------------- loop
    bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_main_process, desc="va")
    results, prediction, last_checkpoint, faces_epoch = {}, None, resumed_from, 0
    model.train()
    for epoch, batch_index, rows in epoch_batches(progress, total_steps, steps_per_epoch, len(train_faces),
                                                  train.batch_size, train.seed, rank, world):
        if epoch != faces_epoch and loaded.redraw_train is not None and train.redraw_synthetic:
            train_faces = annotated(loaded.redraw_train(epoch))  # fresh animation, same faces and size
        faces_epoch = epoch
        images = train_faces.images[rows].to(accelerator.device).float() / 255.0
        targets = train_faces.valence_arousal[rows].to(accelerator.device)
        generator = step_generator(train.seed, progress.step, rank)
        if train.flip:  # a mirror image has the same valence and arousal
            flip = (torch.rand(len(rows), generator=generator) < 0.5).to(accelerator.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        images = photometric_jitter(images, train.color_jitter, generator)
        with accelerator.autocast():
            output = model(images)
            terms = va_multitask_loss(output, targets, config.loss.mse_weight, config.loss.ccc_weight,
                                      train_faces.labels[rows].to(accelerator.device) if auxiliary else None,
                                      config.loss.expression_weight)
        lr = finetune_learning_rate(optim, progress.step, total_steps)
        optimizer_step(accelerator, model, optimizer, terms["total"], lr, optim.grad_clip)
        progress.advance(batch_index)
        bar.update(1)
        if progress.step % train.log_every == 0 or progress.step == total_steps:
            values = reduce_terms(accelerator, terms)
            if accelerator.is_main_process:
                loss_log.write({"step": progress.step, "epoch": progress.epoch, "lr": lr, **values})
                bar.set_postfix(loss=f"{values['total']:.3f}", ccc_loss=f"{values['ccc']:.3f}")
        if evaluation_due(progress, config.eval.every, steps_per_epoch, total_steps) and len(test_faces) > 1:
            results, prediction = evaluate(model, test_faces, accelerator, config.eval.batch_size)
            if accelerator.is_main_process:
                eval_log.write({"step": progress.step, "epoch": progress.epoch, **results})
                bar.write(f"step {progress.step}: test CCC valence {results['valence_ccc']:.3f}, "
                          f"arousal {results['arousal_ccc']:.3f}")
        if train.save_every and progress.step % train.save_every == 0:
            last_checkpoint = save_checkpoint(accelerator, out, progress.step, train.keep_checkpoints)
    bar.close()

    # ---------------------------------------------------------------- checkpoint and export
    save_final_checkpoint(accelerator, out, progress.step, train.keep_checkpoints, last_checkpoint)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_model(unwrapped, out / "model", extra={"step": progress.step})  # video_fer.load_model(out / "model")
        save_model(unwrapped.encoder, out / "encoder", extra={"step": progress.step})
        if prediction is not None:
            plot_scatter(out / "va_scatter.png", test_faces.valence_arousal.numpy(), prediction, results)
        summary = {"steps": progress.step, "train_faces": len(train_faces), "test_faces": len(test_faces),
                   "strides": list(unwrapped.head.strides), "data": info, **results}
        with atomic_write(out / "metrics.json") as handle:
            json.dump(summary, handle, indent=2)
        accelerator.print(f"outputs in {out.resolve()}: metrics.json, evaluation.csv, losses.csv, va_scatter.png, "
                          "model/ (video_fer.load_model), encoder/, checkpoints/")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
