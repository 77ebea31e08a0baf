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
:class:`video_fer.models.task_models.ValenceArousalModel`) and ``encoder/`` (the encoder alone,
an encoder export). Faces are aligned as the pretrained encoder's export records.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from video_fer.config import load_config
from video_fer.data.expression_datasets import load_face_label_data, photometric_jitter
from video_fer.errors import ConfigError
from video_fer.evaluate import metrics
from video_fer.io import atomic_path
from video_fer.models.checkpoint import encoder_for_crops
from video_fer.models.task_models import (ValenceArousalModel, ValenceArousalModelConfig, encoder_settings,
                                          load_encoder_weights)
from video_fer.train.loop import gather_in_order, make_optimizer, predict_in_batches
from video_fer.train.losses.heads import va_multitask_loss
from video_fer.train.run import StepLoop, finish_task_run, recipe_parser, run_recipe, start_run
from video_fer.train.sections import FinetuneModelConfig, FinetuneTrainConfig, head_recipe_schema

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_va.yaml"
TARGETS = ("valence", "arousal")


# ---------------------------------------------------------------------------- config schema
@dataclass
class ModelConfig(FinetuneModelConfig):
    """Encoder and the two-level attention head (shared fields: :class:`~video_fer.train.sections.FinetuneModelConfig`;
    ``head_options`` e.g. ``rnn: lstm``)."""

    strides: list | None = None  # encoder maps read, shallow to deep (null: every map from stride 4 on)


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
class TrainConfig(FinetuneTrainConfig):
    output_dir: str = "runs/finetune_va"
    epochs: int = 8  # a mirror image has the same valence and arousal: `flip` mirrors the faces


FinetuneVAConfig = head_recipe_schema("FinetuneVAConfig", ModelConfig, LossConfig, EvalConfig, TrainConfig)


# ---------------------------------------------------------------------------- model and evaluation
def build_model(model_config: ModelConfig, pretrained, image_size: int, num_expressions: int) -> ValenceArousalModel:
    """The registered VA model: a fresh encoder, or the pretrained one of ``model.encoder`` copied in."""
    config = ValenceArousalModelConfig(
        image_size=image_size, strides=list(model_config.strides or []), num_expressions=num_expressions,
        **encoder_settings(pretrained, model_config.backbone), head_options=dict(model_config.head_options),
        freeze_encoder=model_config.freeze_encoder)
    model = ValenceArousalModel(config)
    if pretrained is not None:
        load_encoder_weights(model, pretrained)
    return model


def evaluate(model, faces, accelerator, batch_size: int) -> tuple[dict[str, float], np.ndarray]:
    """RMSE, PCC, CCC of valence and arousal on ``faces`` (sharded over processes)."""
    def forward(network, rows):
        return network(faces.images[rows].to(accelerator.device).float() / 255.0).valence_arousal

    prediction = gather_in_order(accelerator, len(faces), lambda rows: predict_in_batches(
        accelerator.unwrap_model(model), rows, batch_size, forward, len(TARGETS)))
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


# ---------------------------------------------------------------------------- the recipe
def main(argv=None) -> int:
    # ---------------------------------------------------------------- config
    args = recipe_parser(__doc__, DEFAULT_CONFIG).parse_args(argv)
    config = load_config(args.config, args.overrides, schema=FinetuneVAConfig)
    train, auxiliary = config.train, config.loss.expression_weight > 0
    run = start_run(config, train.output_dir, train.seed, train.mixed_precision, threads=train.threads,
                    find_unused_parameters=True)
    accelerator = run.accelerator

    # ---------------------------------------------------------------- data: aligned as the encoder was trained
    pretrained, alignment = encoder_for_crops(config.model.encoder, config.model.image_size)
    with accelerator.main_process_first():
        loaded = load_face_label_data(config.data, alignment, run.out, train.seed).keep(
            lambda faces: np.flatnonzero(np.isfinite(faces.valence_arousal.numpy()).all(1)))
    if auxiliary and (loaded.train.labels < 0).any():
        raise ConfigError("loss.expression_weight > 0 needs a class label on every training face; set it to 0")
    test_faces = loaded.test
    accelerator.print(f"valence/arousal: {len(loaded.train)} training and {len(test_faces)} test faces; "
                      f"{json.dumps(loaded.info)[:400]}")

    # ---------------------------------------------------------------- model, optimiser, prepare, resume
    expressions = len(loaded.train.class_names) if auxiliary else 0
    model = build_model(config.model, pretrained.encoder if pretrained else None, alignment.size, expressions)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, config.optim))
    loop = StepLoop(run, model, optimizer, config.optim, train, len(loaded.train), args.resume, "va",
                    what="training faces with valence/arousal")

    # ---------------------------------------------------------------- loop
    results, prediction = {}, None
    model.train()
    for epoch, rows, generator in loop.batches():
        faces = loaded.train_for_epoch(epoch, train.redraw_synthetic)
        images = faces.images[rows].to(accelerator.device).float() / 255.0
        if train.flip:  # a mirror image has the same valence and arousal
            flip = (torch.rand(len(rows), generator=generator) < 0.5).to(accelerator.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        images = photometric_jitter(images, train.color_jitter, generator)
        labels = faces.labels[rows].to(accelerator.device) if auxiliary else None
        with accelerator.autocast():
            terms = va_multitask_loss(model(images), faces.valence_arousal[rows].to(accelerator.device),
                                      config.loss.mse_weight, config.loss.ccc_weight, labels,
                                      config.loss.expression_weight)
        loop.step(terms)
        if loop.evaluation_due(config.eval.every) and len(test_faces) > 1:
            results, prediction = evaluate(model, test_faces, accelerator, config.eval.batch_size)
            loop.log_evaluation(results, f"step {loop.progress.step}: test CCC valence {results['valence_ccc']:.3f}, "
                                         f"arousal {results['arousal_ccc']:.3f}")
        loop.save_if_due()
    steps = loop.finish()

    # ---------------------------------------------------------------- export
    if run.is_main and prediction is not None:
        plot_scatter(run.out / "va_scatter.png", test_faces.valence_arousal.numpy(), prediction, results)
    summary = {"steps": steps, "train_faces": len(loaded.train), "test_faces": len(test_faces),
               "strides": list(accelerator.unwrap_model(model).head.strides), "data": loaded.info, **results}
    finish_task_run(run, model, alignment, summary, "va_scatter.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main, "finetune_va"))
