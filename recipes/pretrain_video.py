"""Self-supervised TAE pretraining on frame pairs of face tracks (METHOD.md §1).

    accelerate launch recipes/pretrain_video.py                  # the embedded demo: a few minutes on a CPU
    accelerate launch recipes/pretrain_video.py data.cache=cache/ model.image_size=256 train.batch_size=64
    accelerate launch recipes/pretrain_video.py --resume         # continue from the latest checkpoint
    accelerate launch --multi_gpu --num_processes 2 recipes/pretrain_video.py   # 2 processes (DDP; gloo on a CPU)
    python recipes/pretrain_video.py train.max_steps=10          # one process, no launcher

Settings: recipes/configs/pretrain_tae.yaml, every key overridable as ``key.sub=value``.
Outputs (``train.output_dir``): ``losses.csv`` (per-step terms), ``validation.csv``,
``images/step_*.png`` (source, target, generated target, action- and pose-changed faces,
both fields, fusion mask, attention), ``checkpoints/step_*`` (accelerate state, for
``--resume``), ``encoder/`` (the action encoder, ``video_fer.load_model``).

The script reads top to bottom: config, data, model, accelerator.prepare, loop, export.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from video_fer.checkpoint import save_model  # noqa: E402
from video_fer.config import config_to_dict, load_config  # noqa: E402
from video_fer.data.augment import as_float_images, augment_pair  # noqa: E402
from video_fer.data.cache import FaceTrackCache  # noqa: E402
from video_fer.data.pairs import FacePairSampler, split_by_identity  # noqa: E402
from video_fer.data.pretrain_dataset import pair_loader  # noqa: E402
from video_fer.data.synthetic import build_demo_cache  # noqa: E402
from video_fer.errors import ConfigError  # noqa: E402
from video_fer.losses import (HardSampleCurriculum, TAELossWeights, consistency_ramp, ramped_weights,  # noqa: E402
                              reduce_terms, tae_loss_terms, weighted_total)
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder  # noqa: E402
from video_fer.training import (  # noqa: E402
    CsvLog,
    NonFiniteGuard,
    TrainingDivergedError,
    cosine_with_warmup,
    latest_checkpoint,
    make_optimizer,
    save_checkpoint,
    save_image_grid,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "pretrain_tae.yaml"


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint folder; without a value: the latest in train.output_dir")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. optim.lr=3e-4")
    return parser.parse_args(argv)


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


def main(argv=None) -> int:
    # ---------------------------------------------------------------- config
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    data, train, optim = config.data, config.train, config.optim
    out = Path(train.output_dir)
    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    # Several processes and no GPU (`accelerate launch --multi_gpu --num_processes 2` on a CPU machine):
    # accelerate only picks DDP over gloo when told it runs on the CPU.
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=train.mixed_precision, gradient_accumulation_steps=train.grad_accum_steps,
                              log_with=trackers, project_dir=str(out), cpu=cpu_processes)
    set_seed(train.seed)  # identical initial weights on every rank
    # Denormal floats (tiny activations/gradients of the warp decoders) make CPU float math ~10x slower
    # (tools/bench_pretrain.py measures it); GPUs flush them in their kernels anyway.
    torch.set_flush_denormal(True)
    rank, world = accelerator.process_index, accelerator.num_processes
    model_config = TAEConfig(**config.model)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))

    # ---------------------------------------------------------------- data
    if data.cache is None:  # the embedded demo: photos shipped with scikit-image / matplotlib, animated
        cache_root = Path(data.demo_dir) if data.demo_dir else out / "demo_cache"
        if accelerator.is_main_process:
            build_demo_cache(cache_root, size=model_config.image_size, frames_per_track=data.demo_frames_per_track,
                             tracks_per_identity=data.demo_tracks_per_identity, seed=train.seed)
        accelerator.wait_for_everyone()
    else:
        cache_root = Path(data.cache)
    cache = FaceTrackCache(cache_root)
    if cache.size != model_config.image_size:
        raise ConfigError(f"{cache_root}: crops are {cache.size} px but model.image_size={model_config.image_size}; "
                          f"set model.image_size={cache.size} or prepare the cache with --size {model_config.image_size}")
    train_tracks, val_tracks = split_by_identity(cache.tracks, data.val_fraction, train.seed)
    sampler = FacePairSampler(train_tracks, gap=data.gap, gap_unit=data.gap_unit, pairs_per_epoch=data.pairs_per_epoch,
                              seed=train.seed, rank=rank, world_size=world)
    loader = pair_loader(cache, sampler, train.batch_size, data.num_workers)
    val_loader = None
    if train.validate and val_tracks:  # fixed pairs of held-out identities (epoch 0 of their own sampler)
        val_sampler = FacePairSampler(val_tracks, gap=data.gap, gap_unit=data.gap_unit, pairs_per_epoch=data.val_pairs,
                                      seed=train.seed + 1, rank=rank, world_size=world)
        val_loader = pair_loader(cache, val_sampler, train.batch_size, 0, drop_last=False)
    batches_per_epoch = (len(sampler) // train.batch_size) // train.grad_accum_steps * train.grad_accum_steps
    if batches_per_epoch == 0:
        raise ConfigError(f"data.pairs_per_epoch={data.pairs_per_epoch}: fewer than train.batch_size x grad_accum_steps "
                          f"x processes ({train.batch_size} x {train.grad_accum_steps} x {world}) pairs; raise it")
    steps_per_epoch = batches_per_epoch // train.grad_accum_steps
    total_steps = train.max_steps or train.epochs * steps_per_epoch

    # ---------------------------------------------------------------- model, optimiser, prepare
    model = TwinCycleAutoencoder(model_config)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, optim)
    model, optimizer = accelerator.prepare(model, optimizer)  # the loader is not prepared: the sampler shards by rank
    weights = TAELossWeights(**config.loss.weights)
    curriculum = HardSampleCurriculum(patience=config.loss.curriculum_patience) if config.loss.curriculum else None
    guard = NonFiniteGuard(train.max_nonfinite_steps)
    progress = TrainingProgress(curriculum, guard)
    accelerator.register_for_checkpointing(progress)

    resumed_from = None
    if args.resume:
        resumed_from = latest_checkpoint(out) if args.resume == "auto" else Path(args.resume)
        if resumed_from is not None and not (resumed_from / "model.safetensors").exists():
            raise ConfigError(f"--resume {resumed_from}: not a finished checkpoint folder; give one of "
                              f"{out / 'checkpoints'}/step_* or --resume alone for the latest")
        if resumed_from is None:
            accelerator.print(f"--resume: no checkpoint in {out / 'checkpoints'} yet; starting from scratch")
        else:
            accelerator.load_state(str(resumed_from))
            accelerator.print(f"resumed from {resumed_from} (step {progress.step}, epoch {progress.epoch})")
    if trackers:
        flat = {k: str(v) for k, v in config_to_dict(config)["train"].items()}
        accelerator.init_trackers("pretrain_tae", config=flat)
    loss_log = CsvLog(out / "losses.csv", resume_after_step=progress.step if resumed_from else None) \
        if accelerator.is_main_process else None
    val_log = CsvLog(out / "validation.csv", resume_after_step=progress.step if resumed_from else None) \
        if accelerator.is_main_process else None
    accelerator.print(f"training {total_steps} steps ({steps_per_epoch} per epoch) on {len(train_tracks)} tracks "
                      f"({len(val_tracks)} held out), {world} process(es), batch {train.batch_size} per process")

    # ---------------------------------------------------------------- loop
    bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_main_process, desc="pretrain")
    pairs_trained, window_finite, last_checkpoint = 0, True, resumed_from
    interval_start, interval_pairs, data_wait, step_time = time.perf_counter(), 0, 0.0, 0.0
    model.train()
    try:
        while progress.step < total_steps:
            sampler.set_epoch(progress.epoch, skip=progress.batch_in_epoch * train.batch_size)
            fetch_start = time.perf_counter()
            for batch in loader:
                if progress.batch_in_epoch >= batches_per_epoch or progress.step >= total_steps:
                    break
                compute_start = time.perf_counter()
                data_wait += compute_start - fetch_start
                # Crops arrive as uint8; augmentation runs batched here, seeded by the data position.
                generator = torch.Generator().manual_seed(
                    train.seed * 1_000_003 + rank * 7_919 + progress.epoch * batches_per_epoch + progress.batch_in_epoch)
                source, target = (batch[k].to(accelerator.device, non_blocking=True) for k in ("source", "target"))
                if data.augment:
                    source, target = augment_pair(source, target, generator)
                else:
                    source, target = as_float_images(source), as_float_images(target)
                if train.channels_last:
                    source, target = (x.contiguous(memory_format=torch.channels_last) for x in (source, target))

                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        output = model(source, target)
                        terms = tae_loss_terms(output, source, target)
                        ramp = consistency_ramp(progress.step, config.loss.consistency_warmup_start,
                                                config.loss.consistency_warmup_steps)
                        loss, reduced = reduce_terms(terms, ramped_weights(weights, ramp), curriculum)
                    if 0 <= train.debug_nan_at_step <= progress.step:  # testing aid: simulate a diverging run
                        loss = loss * float("nan")
                    finite = bool(accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all())  # ranks agree
                    window_finite &= finite
                    if finite:
                        accelerator.backward(loss)
                    progress.batch_in_epoch += 1
                    pairs_trained += len(source)
                    interval_pairs += len(source) * world
                    if accelerator.sync_gradients:
                        lr = learning_rate(optim, progress, total_steps)
                        if window_finite:
                            if optim.grad_clip > 0:
                                accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
                            for group in optimizer.param_groups:
                                group["lr"] = lr
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)

                if not accelerator.sync_gradients:
                    step_time += time.perf_counter() - compute_start
                    fetch_start = time.perf_counter()
                    continue
                step_ok, window_finite = window_finite, True
                progress.step += 1
                if not step_ok:
                    accelerator.print(f"step {progress.step}: loss not finite, update skipped "
                                      f"({guard.in_row + 1} in a row)")
                guard.update(step_ok, progress.step, last_checkpoint)
                step_time += time.perf_counter() - compute_start

                if progress.step % train.log_every == 0 or progress.step == total_steps:
                    values = {name: float(accelerator.reduce(value.detach().float(), "mean")) for name, value in reduced.items()}
                    total = float(accelerator.reduce(loss.detach().float(), "mean"))
                    elapsed = time.perf_counter() - interval_start
                    unwarped = float(accelerator.reduce((source - target).abs().mean().detach(), "mean"))
                    row = {"step": progress.step, "epoch": progress.epoch, "lr": lr, "loss": total, **values,
                           "reconstruction_if_unwarped": unwarped,  # L1(I_s, I_t): what the identity warp scores
                           "finite": int(step_ok), "pairs_per_s": interval_pairs / max(elapsed, 1e-9),
                           "data_wait_share": data_wait / max(data_wait + step_time, 1e-9)}
                    if accelerator.is_main_process:
                        loss_log.write(row)
                        bar.set_postfix(loss=f"{total:.4f}", rec=f"{values['reconstruction']:.4f}",
                                        pairs_s=f"{row['pairs_per_s']:.1f}")
                    if trackers:
                        accelerator.log({k: v for k, v in row.items() if k != "step"}, step=progress.step)
                    interval_start, interval_pairs, data_wait, step_time = time.perf_counter(), 0, 0.0, 0.0
                bar.update(1)
                if train.image_every and progress.step % train.image_every == 0 and accelerator.is_main_process:
                    write_image_grid(out / "images" / f"step_{progress.step:08d}.png", source, target, output)
                if train.save_every and progress.step % train.save_every == 0 and step_ok:  # never mid-divergence
                    last_checkpoint = save_checkpoint(accelerator, out, progress.step, train.keep_checkpoints)
                fetch_start = time.perf_counter()

            if progress.batch_in_epoch >= batches_per_epoch:  # end of epoch: validation drives curriculum / plateau
                if val_loader is not None:
                    val_total, val_reconstruction, val_unwarped = validate(model, val_loader, weights, accelerator,
                                                                           train.channels_last)
                    improved = progress.best_val is None or val_total < progress.best_val
                    progress.best_val = val_total if improved else progress.best_val
                    progress.epochs_without_improvement = 0 if improved else progress.epochs_without_improvement + 1
                    window_moved = curriculum.step(val_total) if curriculum else False
                    if (optim.schedule == "plateau" and (curriculum is None or curriculum.exhausted)
                            and progress.epochs_without_improvement >= optim.plateau_patience):
                        progress.lr_scale *= optim.plateau_factor
                        progress.epochs_without_improvement = 0
                    if accelerator.is_main_process:
                        val_log.write({"step": progress.step, "epoch": progress.epoch, "val_loss": val_total,
                                       "val_reconstruction": val_reconstruction,
                                       "val_reconstruction_if_unwarped": val_unwarped, "lr_scale": progress.lr_scale,
                                       "curriculum_window": str(curriculum.window) if curriculum else ""})
                        bar.write(f"epoch {progress.epoch}: validation loss {val_total:.4f}, reconstruction "
                                  f"{val_reconstruction:.4f} (unwarped source: {val_unwarped:.4f})"
                                  + (" (curriculum window moved)" if window_moved else ""))
                progress.epoch += 1
                progress.batch_in_epoch = 0
    except TrainingDivergedError as error:
        bar.close()
        accelerator.print(f"error: {error}")
        accelerator.end_training()
        return 2
    bar.close()

    # ---------------------------------------------------------------- checkpoint and export
    if last_checkpoint is None or not str(last_checkpoint).endswith(f"step_{progress.step:08d}"):
        last_checkpoint = save_checkpoint(accelerator, out, progress.step, train.keep_checkpoints)
    if accelerator.is_main_process:
        encoder = accelerator.unwrap_model(model).encoder
        save_model(encoder, out / "encoder", extra={"step": progress.step, "alignment": cache.alignment.to_dict(),
                                                    "cache": str(cache_root)})
    sampler.set_epoch(0)
    summary = {"rank": rank, "pairs_trained": pairs_trained, "steps": progress.step, "nonfinite_steps": guard.total,
               "first_pairs_epoch0": [list(pair) for pair, _ in zip(sampler, range(4))]}  # ranks draw different pairs
    (out / f"rank_{rank}.json").write_text(json.dumps(summary))
    print(f"[rank {rank}] trained on {pairs_trained} pairs this run; at step {progress.step}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.print(f"outputs in {out.resolve()}: encoder/ (video_fer.load_model), checkpoints/, losses.csv, "
                      f"validation.csv, images/")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
