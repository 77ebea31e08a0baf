"""Self-supervised TAE pretraining on frame pairs of face tracks (METHOD.md §1).

    accelerate launch recipes/pretrain_video.py                  # the embedded demo: a few minutes on a CPU
    accelerate launch recipes/pretrain_video.py data.cache=cache/ model.image_size=256 train.batch_size=64
    accelerate launch recipes/pretrain_video.py --resume         # continue from the latest checkpoint
    accelerate launch --multi_gpu --num_processes 2 recipes/pretrain_video.py   # 2 processes (DDP; gloo on a CPU)
    python recipes/pretrain_video.py train.max_steps=10          # one process, no launcher
    accelerate launch recipes/pretrain_video.py --config recipes/configs/pretrain_tae_real.yaml data.cache=cache_128/

Settings: recipes/configs/pretrain_tae.yaml (the demo), every key overridable as ``key.sub=value``;
recipes/configs/pretrain_tae_real.yaml is the setting measured on real video at 128 px (its header: the
commands that rebuild the encoder of the learned AU bundle).
Outputs (``train.output_dir``): ``losses.csv`` (per-step terms), ``validation.csv``,
``images/step_*.png`` (source, target, generated target, action- and pose-changed faces,
both fields, fusion mask, attention), ``checkpoints/step_*`` (accelerate state, for
``--resume``), ``encoder/`` (the action encoder, ``video_fer.load_model``).

The script reads top to bottom: its config schema, then config, data, model, accelerator.prepare,
resume, loop, export (the start and finish shared with the other recipes: video_fer.train.run).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from video_fer.config import config_to_dict, load_config
from video_fer.data.augment import as_float_images, augment_pair, augment_pair_and_points
from video_fer.data.cache import FaceTrackCache
from video_fer.data.pairs import FacePairSampler, split_by_identity
from video_fer.data.pretrain_dataset import InMemoryFrames, pair_loader
from video_fer.data.synthetic import build_demo_cache
from video_fer.errors import ConfigError
from video_fer.faces.alignment import check_encoder_crops
from video_fer.models.checkpoint import save_encoder
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder
from video_fer.train.checkpoints import save_checkpoint, save_final_checkpoint
from video_fer.train.logs import save_image_grid
from video_fer.train.loop import NonFiniteGuard, cosine_with_warmup, make_optimizer, mean_over_processes, seeded_generator
from video_fer.train.losses.landmarks import landmark_field_terms
from video_fer.train.losses.tae import (HardSampleCurriculum, TAELossWeights, check_landmark_readout,
                                        consistency_ramp, ramped_weights, reduce_terms, tae_loss_terms,
                                        uses_landmarks, weighted_total)
from video_fer.train.run import RecipeRun, finish_run, recipe_parser, resume_state, run_logs, run_recipe, start_run
from video_fer.train.sections import OptimConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "pretrain_tae.yaml"


# ---------------------------------------------------------------------------------- config schema
@dataclass
class DataConfig:
    """Where pairs come from. ``cache: null`` builds the embedded demo cache in the output dir."""

    cache: str | None = None
    gap: list | None = None  # [min, max] gap between the two frames; null = any gap inside the track
    gap_unit: str = "frames"  # "frames" or "seconds"
    pairs_per_epoch: int = 1024
    val_fraction: float = 0.2  # share of identities held out for the validation loss
    val_pairs: int = 64
    num_workers: int = 1
    preload: bool = False  # decode the training tracks once into memory (small corpora; loads in the main process)
    augment: bool = True
    augment_same_crop: bool = False  # [ours] one crop per pair: the crops then add no relative motion (reference: independent)
    demo_dir: str | None = None  # where the demo cache is built; null = <train.output_dir>/demo_cache
    demo_frames_per_track: int = 24
    demo_tracks_per_identity: int = 3
    # [ours] a track mp4 that cannot be decoded gives its pairs from the next track instead of stopping the
    # run (each bad file is reported); false: stop with the file named (the reference has no such case)
    skip_bad_tracks: bool = False
    # [ours] video keys (index.csv's video_key) whose tracks are left out, e.g. the people a benchmark tests on;
    # a key the cache does not hold is an error (the reference trains on the whole corpus: [])
    exclude_videos: list = field(default_factory=list)


@dataclass
class LossConfig:
    """Loss weights (keys of TAELossWeights) and the hard-sample curriculum."""

    weights: dict = field(default_factory=dict, metadata={"schema": TAELossWeights})
    curriculum: bool = False
    curriculum_patience: int = 15  # epochs without validation improvement before the window moves
    # [ours] the six embedding-consistency terms are off until this optimiser step, then ramp linearly to
    # their weight over consistency_warmup_steps (0 and 0: the reference, always on); see video_fer.train.losses.tae.consistency_ramp
    consistency_warmup_start: int = 0
    consistency_warmup_steps: int = 0
    # [ours] landmark-guided fields (weights loss.weights.landmark_pose_field / landmark_action_field, 0 = off):
    # the head-motion model fitted on the rigid landmarks, and the penalty (delta in normalised grid units)
    landmark_fit: str = "rigid3d"  # "rigid3d" (a 3-D head turn of the mean face), "similarity" or "affine"
    landmark_penalty: str = "huber"  # "huber" (smooth L1) or "l1"
    landmark_huber_delta: float = 0.01


@dataclass
class TrainConfig:
    """The loop: size, precision, checkpoints, logging."""

    output_dir: str = "runs/pretrain_tae"
    seed: int = 0
    batch_size: int = 16
    epochs: int = 4
    max_steps: int = 0  # 0: epochs decide
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # "no", "bf16", "fp16" (accelerate)
    channels_last: bool = False
    save_every: int = 50  # optimiser steps between accelerator.save_state
    keep_checkpoints: int = 2
    log_every: int = 5
    image_every: int = 100  # steps between PNG grids (0 disables)
    max_nonfinite_steps: int = 5
    debug_nan_at_step: int = -1  # testing aid: make the loss NaN from this step on (-1 = never)
    validate: bool = True


@dataclass
class PretrainConfig:
    """Everything ``recipes/pretrain_video.py`` reads."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=lambda: {"image_size": 128},
                        metadata={"schema": TAEConfig})
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------- pieces of the loop
class TrainingProgress:
    """Where the run is (saved in every checkpoint, so ``--resume`` continues exactly)."""

    def __init__(self, curriculum: HardSampleCurriculum | None, guard: NonFiniteGuard) -> None:
        self.step = 0  # optimiser steps done (skipped non-finite ones included)
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches of this epoch already consumed
        self.best_val: float | None = None
        self.epochs_without_improvement = 0
        self.lr_scale = 1.0  # reduced on plateau
        self.curriculum, self.guard = curriculum, guard

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best_val": self.best_val, "epochs_without_improvement": self.epochs_without_improvement,
                "lr_scale": self.lr_scale, "guard": self.guard.state_dict(),
                "curriculum": self.curriculum.state_dict() if self.curriculum else None}

    def load_state_dict(self, state: dict) -> None:
        for key in ("step", "epoch", "batch_in_epoch", "best_val", "epochs_without_improvement", "lr_scale"):
            setattr(self, key, state[key])
        self.guard.load_state_dict(state["guard"])
        if self.curriculum is not None and state["curriculum"] is not None:
            self.curriculum.load_state_dict(state["curriculum"])


def learning_rate(optim, progress: TrainingProgress, total_steps: int) -> float:
    """Warmup then cosine ("cosine"), or warmup then constant with drops on plateau ("plateau", "constant")."""
    if optim.schedule == "cosine":
        return optim.lr * cosine_with_warmup(progress.step, total_steps, optim.warmup_steps, optim.min_lr_ratio)
    if optim.schedule in ("plateau", "constant"):
        return optim.lr * min((progress.step + 1) / max(optim.warmup_steps, 1), 1.0) * progress.lr_scale
    raise ConfigError(f"optim.schedule={optim.schedule!r}: choose 'cosine', 'plateau' or 'constant'")


def to_model_input(frames: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    images = as_float_images(frames.to(device, non_blocking=True))
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def training_pair(batch: dict, run: RecipeRun, progress: TrainingProgress, data: DataConfig, channels_last: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    """Source and target faces of one micro-batch on the device: uint8 crops -> float, batched augmentation
    seeded by the data position (the same draws after a resume); and, when the batch carries landmarks
    (landmark-guided fields), ``(source points, target points, track mean points)``, the pair's moved with the
    same crops, else None."""
    device = run.accelerator.device
    source, target = (batch[key].to(device, non_blocking=True) for key in ("source", "target"))
    points = (batch["source_landmarks"].to(device), batch["target_landmarks"].to(device)) \
        if "source_landmarks" in batch else None
    generator = seeded_generator(run.seed, run.rank, progress.epoch, progress.batch_in_epoch) if data.augment else None
    if data.augment and points is not None:
        source, target, *points = augment_pair_and_points(source, target, *points, generator, data.augment_same_crop)
    elif data.augment:
        source, target = augment_pair(source, target, generator, data.augment_same_crop)
    else:
        source, target = as_float_images(source), as_float_images(target)
    if points is not None:  # the track's mean stays in the prepared crop's pixels (the action part's fit absorbs the crop; the head motion keeps it)
        points = (*points, batch["track_landmarks"].to(device))
    if channels_last:
        source, target = (x.contiguous(memory_format=torch.channels_last) for x in (source, target))
    return source, target, points


@torch.no_grad()
def validate(model, loader, weights, accelerator, channels_last: bool) -> tuple[float, float, float]:
    """Mean weighted loss, reconstruction L1 and L1(source, target) on the held-out identities (no augmentation)."""
    model.eval()
    totals, reconstructions, unwarped = [], [], []
    for batch in loader:
        source = to_model_input(batch["source"], accelerator.device, channels_last)
        target = to_model_input(batch["target"], accelerator.device, channels_last)
        with accelerator.autocast():
            terms = tae_loss_terms(model(source, target), source, target)
        totals.append(accelerator.gather(weighted_total(terms, weights).float()))
        reconstructions.append(accelerator.gather(terms["reconstruction"].float()))
        unwarped.append(accelerator.gather((source - target).abs().flatten(1).mean(1).float()))
    model.train()
    return float(torch.cat(totals).mean()), float(torch.cat(reconstructions).mean()), float(torch.cat(unwarped).mean())


def write_image_grid(path: Path, source, target, output) -> None:
    """source, target, Î_t, I^A, I^P, T_A, T_P (one colour scale), A_A, mean attention map."""
    scale = float(torch.cat([output.action_flow[:4], output.pose_flow[:4]]).detach().norm(dim=1).max().clamp_min(1e-6))
    flows = [output.action_flow / scale, output.pose_flow / scale]
    columns = [("source", source, "image"), ("target", target, "image"),
               ("generated", output.generated_target, "image"), ("action-changed", output.action_changed, "image"),
               ("pose-changed", output.pose_changed, "image"),
               ("action field", flows[0].clamp(-1, 1), "flow"), ("pose field", flows[1].clamp(-1, 1), "flow"),
               ("action mask", output.action_weight, "map")]
    if output.source_attention_maps is not None:
        columns.append(("attention", output.source_attention_maps.mean(1, keepdim=True), "map"))
    save_image_grid(path, columns)


def open_cache(run: RecipeRun, data: DataConfig, image_size: int) -> tuple[FaceTrackCache, Path]:
    """The face-track cache to train on (``data.cache: null``: the embedded demo, built on the main process)."""
    if data.cache is not None:
        return FaceTrackCache(data.cache), Path(data.cache)
    root = Path(data.demo_dir) if data.demo_dir else run.out / "demo_cache"
    if run.is_main:  # photos shipped with scikit-image / matplotlib, animated
        build_demo_cache(root, size=image_size, frames_per_track=data.demo_frames_per_track,
                         tracks_per_identity=data.demo_tracks_per_identity, seed=run.seed)
    run.accelerator.wait_for_everyone()
    return FaceTrackCache(root), root


def kept_tracks(cache: FaceTrackCache, exclude: list, cache_root: Path) -> list:
    """The cache's tracks without those of the videos ``data.exclude_videos`` names (each must be in the cache)."""
    keys, excluded = {track["video_key"] for track in cache.tracks}, set(map(str, exclude))
    if excluded - keys:
        raise ConfigError(f"data.exclude_videos: {sorted(excluded - keys)} not in {cache_root} (its video keys: "
                          f"{', '.join(sorted(keys)[:8])}{' ...' if len(keys) > 8 else ''}); give keys of index.csv")
    tracks = [track for track in cache.tracks if track["video_key"] not in excluded]
    if not tracks:
        raise ConfigError(f"data.exclude_videos leaves no track of {cache_root} to train on")
    return tracks


def loss_terms(output, source, target, points, weights, loss_config) -> dict[str, torch.Tensor]:
    """Every per-sample loss term of one micro-batch: the TAE's, and the landmark terms with ``points`` (the pair's
    landmarks and its track's mean landmarks, :func:`training_pair`)."""
    terms = tae_loss_terms(output, source, target)
    if points is not None:
        source_points, target_points, track_points = points
        terms.update(landmark_field_terms(output.action_flow, output.pose_flow, source_points, target_points,
                                          loss_config.landmark_fit, loss_config.landmark_penalty,
                                          loss_config.landmark_huber_delta, output.landmark_readouts,
                                          output.frame_readouts, track_points, output.pose_frame_readouts,
                                          output.source_attention_maps if weights.landmark_attention else None))
    return terms


def train_micro_batch(model, source, target, points, weights, curriculum, config: PretrainConfig,
                      progress: TrainingProgress, accelerator):
    """Forward, loss, backward of one micro-batch (call inside ``accelerator.accumulate``); ``points``: the
    pair's landmarks and its track's mean landmarks for the landmark terms (:func:`training_pair`), or None.

    Returns ``(output, loss, reduced terms, finite)``; a non-finite loss (every rank agrees) is not
    backpropagated.
    """
    with accelerator.autocast():
        output = model(source, target)
        terms = loss_terms(output, source, target, points, weights, config.loss)
        ramp = consistency_ramp(progress.step, config.loss.consistency_warmup_start,
                                config.loss.consistency_warmup_steps)
        loss, reduced = reduce_terms(terms, ramped_weights(weights, ramp), curriculum)
    if 0 <= config.train.debug_nan_at_step <= progress.step:  # testing aid: simulate a diverging run
        loss = loss * float("nan")
    finite = bool(accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all())  # ranks agree
    if finite:
        accelerator.backward(loss)
    return output, loss, reduced, finite


def apply_update(model, optimizer, optim: OptimConfig, lr: float, finite_window: bool, accelerator) -> None:
    """At a gradient-sync step (else nothing): clip, set the LR and step, unless a micro-batch of the window
    was not finite; then clear the gradients."""
    if not accelerator.sync_gradients:
        return
    if finite_window:
        if optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class Throughput:
    """Pairs per second and the share of time spent waiting for data, over the steps since the last log row."""

    def __init__(self) -> None:
        self.reset()
        self.fetch_start = time.perf_counter()

    def reset(self) -> None:
        self.start, self.pairs, self.data_wait, self.step_time = time.perf_counter(), 0, 0.0, 0.0

    def batch_arrived(self) -> float:
        now = time.perf_counter()
        self.data_wait += now - self.fetch_start
        return now

    def batch_done(self, compute_start: float, pairs: int) -> None:
        self.pairs += pairs
        self.step_time += time.perf_counter() - compute_start
        self.fetch_start = time.perf_counter()

    def values(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        return {"pairs_per_s": self.pairs / max(elapsed, 1e-9),
                "data_wait_share": self.data_wait / max(self.data_wait + self.step_time, 1e-9)}


def epoch_pair_batches(loader, sampler: FacePairSampler, progress: TrainingProgress, batch_size: int,
                       batches_per_epoch: int, total_steps: int):
    """The micro-batches left in the current epoch (a resumed run skips the pairs it already trained on)."""
    sampler.set_epoch(progress.epoch, skip=progress.batch_in_epoch * batch_size)
    for batch in loader:
        if progress.batch_in_epoch >= batches_per_epoch or progress.step >= total_steps:
            return
        yield batch


def log_step(run: RecipeRun, progress: TrainingProgress, lr: float, loss, reduced, source, target, step_ok: bool,
             throughput: Throughput, loss_log, bar, trackers) -> None:
    """One losses.csv row: the terms averaged over processes, what the identity warp scores, throughput."""
    accelerator = run.accelerator
    values = mean_over_processes(accelerator, reduced)
    total = float(accelerator.reduce(loss.detach().float(), "mean"))
    unwarped = float(accelerator.reduce((source - target).abs().mean().detach(), "mean"))
    row = {"step": progress.step, "epoch": progress.epoch, "lr": lr, "loss": total, **values,
           "reconstruction_if_unwarped": unwarped,  # L1(I_s, I_t): what the identity warp scores
           "finite": int(step_ok), **throughput.values()}
    if run.is_main:
        loss_log.write(row)
        bar.set_postfix(loss=f"{total:.4f}", rec=f"{values['reconstruction']:.4f}", pairs_s=f"{row['pairs_per_s']:.1f}")
    if trackers:
        accelerator.log({k: v for k, v in row.items() if k != "step"}, step=progress.step)
    throughput.reset()


def end_epoch(run: RecipeRun, model, val_loader, weights, curriculum, optim: OptimConfig, progress: TrainingProgress,
              channels_last: bool, val_log, bar) -> None:
    """Validation on the held-out identities drives the curriculum and the plateau schedule; next epoch."""
    if val_loader is not None:
        val_total, val_reconstruction, val_unwarped = validate(model, val_loader, weights, run.accelerator,
                                                               channels_last)
        improved = progress.best_val is None or val_total < progress.best_val
        progress.best_val = val_total if improved else progress.best_val
        progress.epochs_without_improvement = 0 if improved else progress.epochs_without_improvement + 1
        window_moved = curriculum.step(val_total) if curriculum else False
        if (optim.schedule == "plateau" and (curriculum is None or curriculum.exhausted)
                and progress.epochs_without_improvement >= optim.plateau_patience):
            progress.lr_scale *= optim.plateau_factor
            progress.epochs_without_improvement = 0
        if run.is_main:
            val_log.write({"step": progress.step, "epoch": progress.epoch, "val_loss": val_total,
                           "val_reconstruction": val_reconstruction, "val_reconstruction_if_unwarped": val_unwarped,
                           "lr_scale": progress.lr_scale,
                           "curriculum_window": str(curriculum.window) if curriculum else ""})
            bar.write(f"epoch {progress.epoch}: validation loss {val_total:.4f}, reconstruction "
                      f"{val_reconstruction:.4f} (unwarped source: {val_unwarped:.4f})"
                      + (" (curriculum window moved)" if window_moved else ""))
    progress.epoch += 1
    progress.batch_in_epoch = 0


# ---------------------------------------------------------------------------------- the recipe
def main(argv=None) -> int:
    # ---------------------------------------------------------------- config
    args = recipe_parser(__doc__, DEFAULT_CONFIG).parse_args(argv)
    config = load_config(args.config, args.overrides, schema=PretrainConfig)
    data, train, optim = config.data, config.train, config.optim
    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    run = start_run(config, train.output_dir, train.seed, train.mixed_precision,
                    gradient_accumulation_steps=train.grad_accum_steps, log_with=trackers,
                    project_dir=train.output_dir)
    accelerator, out, rank, world = run.accelerator, run.out, run.rank, run.world
    # Denormal floats (tiny activations/gradients of the warp decoders) make CPU float math ~10x slower
    # (tools/bench_pretrain.py measures it); GPUs flush them in their kernels anyway.
    torch.set_flush_denormal(True)
    model_config = TAEConfig(**config.model)

    # ---------------------------------------------------------------- data
    cache, cache_root = open_cache(run, data, model_config.image_size)
    check_encoder_crops(cache.alignment, model_config.image_size, f"{cache_root} (model.image_size)")
    train_tracks, val_tracks = split_by_identity(kept_tracks(cache, data.exclude_videos, cache_root),
                                                 data.val_fraction, train.seed)
    sampler = FacePairSampler(train_tracks, gap=data.gap, gap_unit=data.gap_unit, pairs_per_epoch=data.pairs_per_epoch,
                              seed=train.seed, rank=rank, world_size=world)
    weights = TAELossWeights(**config.loss.weights)
    check_landmark_readout(weights, model_config.landmark_readout, model_config.frame_readout,
                           model_config.pose_frame_readout, attention_maps=model_config.attention_streams > 0)
    guided = uses_landmarks(weights)  # [ours] landmark-guided fields: the pairs carry their landmarks
    if data.preload:  # decoded once; no worker processes (they would each get a copy of every frame)
        loader = pair_loader(InMemoryFrames(cache, train_tracks), sampler, train.batch_size, 0, landmarks=guided)
    else:
        loader = pair_loader(cache, sampler, train.batch_size, data.num_workers, skip_bad_tracks=data.skip_bad_tracks,
                             landmarks=guided)
    val_loader = None
    if train.validate and val_tracks:  # fixed pairs of held-out identities (epoch 0 of their own sampler)
        val_sampler = FacePairSampler(val_tracks, gap=data.gap, gap_unit=data.gap_unit, pairs_per_epoch=data.val_pairs,
                                      seed=train.seed + 1, rank=rank, world_size=world)
        val_loader = pair_loader(cache, val_sampler, train.batch_size, 0, drop_last=False,
                                 skip_bad_tracks=data.skip_bad_tracks)
    batches_per_epoch = (len(sampler) // train.batch_size) // train.grad_accum_steps * train.grad_accum_steps
    if batches_per_epoch == 0:
        raise ConfigError(f"data.pairs_per_epoch={data.pairs_per_epoch}: fewer than train.batch_size x grad_accum_steps "
                          f"x processes ({train.batch_size} x {train.grad_accum_steps} x {world}) pairs; raise it")
    steps_per_epoch = batches_per_epoch // train.grad_accum_steps
    total_steps = train.max_steps or train.epochs * steps_per_epoch

    # ---------------------------------------------------------------- model, optimiser, prepare, resume
    model = TwinCycleAutoencoder(model_config)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, optim))  # loader not prepared: the sampler shards
    curriculum = HardSampleCurriculum(patience=config.loss.curriculum_patience) if config.loss.curriculum else None
    guard = NonFiniteGuard(train.max_nonfinite_steps)
    progress = TrainingProgress(curriculum, guard)
    accelerator.register_for_checkpointing(progress)
    resumed_from = resume_state(run, args.resume)
    if resumed_from is not None:
        accelerator.print(f"resumed from {resumed_from} (step {progress.step}, epoch {progress.epoch})")
    if trackers:
        accelerator.init_trackers("pretrain_tae", config={k: str(v) for k, v in config_to_dict(config)["train"].items()})
    resumed_step = progress.step if resumed_from else None
    # a checkpoint saved at an epoch's last step precedes that epoch's validation, which the resumed run redoes
    redo_validation = resumed_from is not None and progress.batch_in_epoch >= batches_per_epoch \
        and progress.step < total_steps
    loss_log, = run_logs(run, resumed_step, ("losses.csv",))
    val_log, = run_logs(run, resumed_step - 1 if redo_validation else resumed_step, ("validation.csv",))
    accelerator.print(f"training {total_steps} steps ({steps_per_epoch} per epoch) on {len(train_tracks)} tracks "
                      f"({len(val_tracks)} held out), {world} process(es), batch {train.batch_size} per process")

    # ---------------------------------------------------------------- loop
    bar = tqdm(total=total_steps, initial=progress.step, disable=not run.is_main, desc="pretrain")
    pairs_trained, window_finite, last_checkpoint, throughput = 0, True, resumed_from, Throughput()
    model.train()
    while progress.step < total_steps:
        for batch in epoch_pair_batches(loader, sampler, progress, train.batch_size, batches_per_epoch, total_steps):
            compute_start = throughput.batch_arrived()
            source, target, points = training_pair(batch, run, progress, data, train.channels_last)
            with accelerator.accumulate(model):
                output, loss, reduced, finite = train_micro_batch(model, source, target, points, weights, curriculum,
                                                                  config, progress, accelerator)
                window_finite &= finite
                progress.batch_in_epoch += 1
                lr = learning_rate(optim, progress, total_steps)
                apply_update(model, optimizer, optim, lr, window_finite, accelerator)
            pairs_trained += len(source)
            throughput.batch_done(compute_start, len(source) * world)
            if not accelerator.sync_gradients:
                continue
            step_ok, window_finite = window_finite, True
            progress.step += 1
            if not step_ok:
                accelerator.print(f"step {progress.step}: loss not finite, update skipped ({guard.in_row + 1} in a row)")
            guard.update(step_ok, progress.step, last_checkpoint)  # raises TrainingDivergedError at the limit
            if progress.step % train.log_every == 0 or progress.step == total_steps:
                log_step(run, progress, lr, loss, reduced, source, target, step_ok, throughput, loss_log, bar, trackers)
            bar.update(1)
            if train.image_every and progress.step % train.image_every == 0 and run.is_main:
                write_image_grid(out / "images" / f"step_{progress.step:08d}.png", source, target, output)
            if train.save_every and progress.step % train.save_every == 0 and step_ok:  # never mid-divergence
                last_checkpoint = save_checkpoint(accelerator, out, progress.step, train.keep_checkpoints)
        if progress.batch_in_epoch >= batches_per_epoch:
            end_epoch(run, model, val_loader, weights, curriculum, optim, progress, train.channels_last, val_log, bar)
    bar.close()

    # ---------------------------------------------------------------- checkpoint and export
    save_final_checkpoint(accelerator, out, progress.step, train.keep_checkpoints, last_checkpoint)
    if run.is_main:
        save_encoder(accelerator.unwrap_model(model).encoder, out / "encoder", cache.alignment,
                     extra={"step": progress.step, "cache": str(cache_root),
                            "excluded_videos": sorted(map(str, data.exclude_videos))})
    sampler.set_epoch(0)
    summary = {"rank": rank, "pairs_trained": pairs_trained, "steps": progress.step, "nonfinite_steps": guard.total,
               "first_pairs_epoch0": [list(pair) for pair, _ in zip(sampler, range(4))]}  # ranks draw different pairs
    (out / f"rank_{rank}.json").write_text(json.dumps(summary))
    print(f"[rank {rank}] trained on {pairs_trained} pairs this run; at step {progress.step}", flush=True)
    accelerator.print(f"outputs in {out.resolve()}: encoder/ (video_fer.load_model), checkpoints/, losses.csv, "
                      f"validation.csv, images/")
    finish_run(run)
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main, "pretrain_video"))
