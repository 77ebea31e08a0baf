"""Pretraining throughput on this machine: step speed, data waiting, memory, decoding.

First, per crop size, **the recipe's step against the bare network** (issue 12): the training
step of ``recipes/pretrain_video.py`` under ``--config`` (loader, augmentation, forward, the recipe's loss
terms, the finite-loss check, backward, gradient clipping, AdamW) timed phase by phase, interleaved step by
step with a bare forward + backward of the same network on the same batch (the loss = a plain sum
of its outputs; no optimiser). pairs/s of both, their ratio (the target is >= 80 %), and where the
rest of the step goes. FLOPs of one bare step are counted with ``torch.utils.flop_counter``; on a
GPU the model FLOPs utilisation (MFU) is printed against ``--peak-tflops`` (bf16 dense peak of the card).

Then, for each crop size (128 and 256 px by default; each size in its own process so the peak
RSS is that size's), on the embedded demo cache built at that size:

- training pairs/s of the batched TAE step (denormal floats flushed, as the recipe does) (two encoder passes: [source; target] and
  [generated; action-changed; pose-changed]) against a naive reference-style step (six
  separate encoder calls, one per image set), channels_last on/off and denormal flushing
  off (``torch.set_flush_denormal(False)``: ~10x slower here); ``--compile``
  adds ``torch.compile`` (slow to compile on a CPU);
- decoding pairs/s of one loader worker (FacePairDataset in the main process, no model);
- the share of step time spent waiting for data in a real loop with one loader worker;
- peak resident memory (RSS) of the process.

Ratios are measured within one run (same load on the machine), e.g.::

    python tools/bench_pretrain.py --sizes 128 256 --batch 8 --steps 3
    python tools/bench_pretrain.py --breakdown-only --sizes 128 --batch 16 \
        --config recipes/configs/pretrain_tae_real.yaml --cache runs/real_cache_128   # the real-video config's step
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import numpy as np

from video_fer.data.augment import augment_pair
from video_fer.data.pairs import FacePairSampler
from video_fer.data.pretrain_dataset import FacePairDataset, pair_loader
from video_fer.data.synthetic import build_demo_cache
from video_fer.train.losses.tae import reduce_terms, tae_loss_terms
from video_fer.models.tae import TAEConfig, TAEOutput, TwinCycleAutoencoder
from video_fer.models.warp import fuse_flows, warp

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def naive_forward(model: TwinCycleAutoencoder, source: torch.Tensor, target: torch.Tensor) -> TAEOutput:
    """The reference's call pattern: every image set encoded by its own encoder call (six calls)."""
    encode = model.encoder.forward_features
    real_s, real_t = encode(source), encode(target)
    phi_s, psi_s, phi_t, psi_t = real_s.action_embedding, real_s.pose_embedding, real_t.action_embedding, real_t.pose_embedding
    action_out = model.action_decoder(model.embedding_pair(phi_s, phi_t))
    pose_out = model.pose_decoder(model.embedding_pair(psi_s, psi_t))
    fused, action_weight, pose_weight = fuse_flows(action_out, pose_out)
    generated, action_changed, pose_changed = warp(source, fused), warp(source, action_out[:, :2]), warp(source, pose_out[:, :2])
    enc_g, enc_a, enc_p = encode(generated), encode(action_changed), encode(pose_changed)
    action_cycle = model.action_decoder(model.embedding_pair(enc_a.action_embedding, phi_s))[:, :2]
    pose_cycle = model.pose_decoder(model.embedding_pair(enc_p.pose_embedding, psi_s))[:, :2]
    return TAEOutput(
        source_action_embedding=phi_s, source_pose_embedding=psi_s, target_action_embedding=phi_t,
        target_pose_embedding=psi_t, action_flow=action_out[:, :2], pose_flow=pose_out[:, :2], fused_flow=fused,
        action_weight=action_weight, pose_weight=pose_weight, generated_target=generated,
        action_changed=action_changed, pose_changed=pose_changed,
        generated_action_embedding=enc_g.action_embedding, generated_pose_embedding=enc_g.pose_embedding,
        action_changed_action_embedding=enc_a.action_embedding, action_changed_pose_embedding=enc_a.pose_embedding,
        pose_changed_action_embedding=enc_p.action_embedding, pose_changed_pose_embedding=enc_p.pose_embedding,
        action_cycle_flow=action_cycle, pose_cycle_flow=pose_cycle,
        action_cycle_reconstruction=warp(action_changed, action_cycle),
        pose_cycle_reconstruction=warp(pose_changed, pose_cycle), source_attention_maps=real_s.attention_maps)


def one_step(model, forward, optimizer, source, target) -> float:
    """Seconds for one optimiser step: forward, loss, backward, AdamW."""
    start = time.perf_counter()
    output = forward(source, target)
    loss, _ = reduce_terms(tae_loss_terms(output, source, target))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def time_variants(variants: dict, steps: int) -> dict[str, float]:
    """Median seconds per step of each variant, measured round-robin (one step of each in turn).

    Interleaving puts every variant under the same background load (other jobs on the
    machine come and go); one warm-up step each first.
    """
    optimizers = {name: torch.optim.AdamW(v[0].parameters(), lr=1e-4) for name, v in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(steps + 1):
        for name, (model, forward, source, target) in variants.items():
            torch.set_flush_denormal(name != "denormals_kept")
            seconds = one_step(model, forward, optimizers[name], source, target)
            if index:
                times[name].append(seconds)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def decode_rate(cache, tracks, batch: int, batches: int) -> float:
    """Pairs/s decoded by FacePairDataset in this process (= one loader worker's rate)."""
    dataset = FacePairDataset(cache)
    pairs = list(FacePairSampler(tracks, pairs_per_epoch=batch * batches, seed=1))
    dataset[pairs[0]]  # open the readers first
    start = time.perf_counter()
    for pair in pairs:
        dataset[pair]
    return len(pairs) / (time.perf_counter() - start)


def data_wait_share(model, cache, tracks, batch: int, steps: int, workers: int) -> float:
    """Share of a real loop's time spent waiting for the next batch (loader with ``workers`` workers)."""
    sampler = FacePairSampler(tracks, pairs_per_epoch=batch * (steps + 1), seed=2)
    loader = pair_loader(cache, sampler, batch, num_workers=workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    waiting = computing = 0.0
    iterator = iter(loader)
    next(iterator)  # worker start-up is not steady-state waiting
    for _ in range(steps):
        start = time.perf_counter()
        batch_data = next(iterator)
        fetched = time.perf_counter()
        source, target = augment_pair(batch_data["source"], batch_data["target"], generator)
        loss, _ = reduce_terms(tae_loss_terms(model(source, target), source, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        waiting += fetched - start
        computing += time.perf_counter() - fetched
    return waiting / (waiting + computing)


PHASES = ("data", "augment", "forward", "loss_terms", "finite_check", "backward", "optimiser")


def bare_step(model, source, target) -> dict[str, float]:
    """Seconds of a bare forward and backward (loss = sum of the means of every output tensor)."""
    start = time.perf_counter()
    output = model(source, target)
    loss = sum(value.float().mean() for value in vars(output).values() if isinstance(value, torch.Tensor))
    forward = time.perf_counter()
    loss.backward()
    end = time.perf_counter()
    model.zero_grad(set_to_none=True)
    return {"forward": forward - start, "backward": end - forward}


def recipe_step_breakdown(size: int, batch: int, steps: int, recipe_config: str, channels_last: bool,
                          cache_root: str | None, config_overrides: list[str]) -> dict:
    """The recipe's step phase by phase, interleaved with the bare step on the same batch (median seconds).

    The loss terms are the recipe's own (``loss_terms`` of ``recipes/pretrain_video.py``) under ``recipe_config``:
    with landmark weights, the landmark terms, readouts and attention term, on the track's landmarks."""
    import importlib.util

    from accelerate import Accelerator

    from video_fer.config import load_config
    from video_fer.data.augment import augment_pair_and_points
    from video_fer.data.cache import FaceTrackCache
    from video_fer.data.pretrain_dataset import InMemoryFrames
    from video_fer.train.loop import make_optimizer
    from video_fer.train.losses.tae import TAELossWeights, uses_landmarks

    spec = importlib.util.spec_from_file_location("pretrain_video_schema", PROJECT_ROOT / "recipes" / "pretrain_video.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # its dataclasses look their module up while being built
    spec.loader.exec_module(recipe)
    config = load_config(recipe_config, [f"model.image_size={size}", *config_overrides], schema=recipe.PretrainConfig)
    weights = TAELossWeights(**config.loss.weights)
    guided = uses_landmarks(weights)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.train.mixed_precision)
    torch.manual_seed(0)
    model = TwinCycleAutoencoder(TAEConfig(**config.model)).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    with tempfile.TemporaryDirectory() as folder:
        cache = FaceTrackCache(cache_root) if cache_root else build_demo_cache(Path(folder) / "demo", size=size)
        if cache.size != size:
            raise SystemExit(f"--cache {cache_root}: crops are {cache.size} px, not {size}")
        sampler = FacePairSampler(cache.tracks, pairs_per_epoch=batch * (steps + 2), seed=3)
        loader = pair_loader(InMemoryFrames(cache), sampler, batch, 0, landmarks=guided)
        iterator = iter(loader)
        times = {name: [] for name in (*PHASES, "bare_forward", "bare_backward")}
        generator = torch.Generator().manual_seed(0)
        for index in range(steps + 1):
            marks = [time.perf_counter()]
            data = next(iterator)
            marks.append(time.perf_counter())
            if guided:
                source, target, *points = augment_pair_and_points(
                    data["source"], data["target"], data["source_landmarks"], data["target_landmarks"], generator,
                    config.data.augment_same_crop)
                points = tuple(p.to(accelerator.device) for p in (*points, data["track_landmarks"]))
            else:
                source, target = augment_pair(data["source"], data["target"], generator, config.data.augment_same_crop)
                points = None
            source, target = (x.to(accelerator.device) for x in (source, target))
            if channels_last:
                source, target = (x.contiguous(memory_format=torch.channels_last) for x in (source, target))
            marks.append(time.perf_counter())
            with accelerator.accumulate(model), accelerator.autocast():
                output = model(source, target)
                marks.append(time.perf_counter())
                terms = recipe.loss_terms(output, source, target, points, weights, config.loss)
                loss, _ = reduce_terms(terms, weights)
                marks.append(time.perf_counter())
                finite = bool(accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all())
                marks.append(time.perf_counter())
                if finite:
                    accelerator.backward(loss)
                marks.append(time.perf_counter())
                accelerator.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                marks.append(time.perf_counter())
            bare = bare_step(accelerator.unwrap_model(model), source, target)
            if index:  # the first step of each warms up
                for name, seconds in zip(PHASES, np.diff(marks)):
                    times[name].append(seconds)
                times["bare_forward"].append(bare["forward"])
                times["bare_backward"].append(bare["backward"])
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            bare_step(accelerator.unwrap_model(model), source, target)
        flops = counter.get_total_flops()
    median = {name: float(np.median(values)) for name, values in times.items()}
    step = sum(median[name] for name in PHASES)
    bare = median["bare_forward"] + median["bare_backward"]
    return {"size": size, "batch": batch, "config": str(recipe_config), "landmark_terms": guided,
            "loss_terms": sorted(terms), "phase_seconds": median,
            "recipe_pairs_per_s": batch / step, "bare_pairs_per_s": batch / bare, "recipe_over_bare": bare / step,
            "flops_per_pair": flops / batch, "achieved_tflops_bare": flops / bare / 1e12,
            "device": str(accelerator.device), "model": dict(config.model)}


def print_breakdown(result: dict, peak_tflops: float | None) -> None:
    phases, step = result["phase_seconds"], sum(result["phase_seconds"][name] for name in PHASES)
    print(f"\n== the recipe's step vs the bare network, {result['size']} px, batch {result['batch']}, "
          f"{result['device']}, {Path(result['config']).name}, landmark terms {'on' if result['landmark_terms'] else 'off'} ==")
    print(f"recipe step:            {result['recipe_pairs_per_s']:.2f} pairs/s ({1000 * step:.0f} ms)")
    print(f"bare forward+backward:  {result['bare_pairs_per_s']:.2f} pairs/s "
          f"({1000 * (phases['bare_forward'] + phases['bare_backward']):.0f} ms: forward "
          f"{1000 * phases['bare_forward']:.0f}, backward {1000 * phases['bare_backward']:.0f})")
    print(f"recipe / bare:          {100 * result['recipe_over_bare']:.0f} % (target >= 80 %)")
    print(f"loss terms:             {len(result['loss_terms'])} ({', '.join(result['loss_terms'])})")
    print("where the recipe's step goes (median ms, share):")
    for name in PHASES:
        print(f"  {name:<14}{1000 * phases[name]:8.1f}  {100 * phases[name] / step:5.1f} %")
    print(f"FLOPs per pair (forward+backward, flop_counter): {result['flops_per_pair'] / 1e9:.2f} GFLOP; "
          f"bare step achieves {1000 * result['achieved_tflops_bare']:.1f} GFLOP/s")
    if result["device"].startswith("cuda"):
        if peak_tflops:
            print(f"model FLOPs utilisation (bare step): {100 * result['achieved_tflops_bare'] / peak_tflops:.1f} % of "
                  f"{peak_tflops} TFLOP/s (target >= 40 % in bf16)")
        else:
            print("model FLOPs utilisation: give --peak-tflops (the card's dense bf16 peak) to print it")


def measure_size(size: int, batch: int, steps: int, compile_model: bool, skip_denormals: bool = False) -> dict:
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as the recipe does; "denormals_kept" measures the difference
    config = TAEConfig(image_size=size)  # the reference widths
    results: dict = {"size": size, "batch": batch, "threads": torch.get_num_threads()}
    source, target = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)

    model = TwinCycleAutoencoder(config).train()
    model_cl = TwinCycleAutoencoder(config).train().to(memory_format=torch.channels_last)
    source_cl, target_cl = (x.contiguous(memory_format=torch.channels_last) for x in (source, target))
    variants = {"batched": (model, model, source, target),
                "naive": (model, lambda s, t: naive_forward(model, s, t), source, target),
                "channels_last": (model_cl, model_cl, source_cl, target_cl)}
    if not skip_denormals:
        model_dn = TwinCycleAutoencoder(config).train()
        variants["denormals_kept"] = (model_dn, model_dn, source, target)  # the default without flushing
    if compile_model:
        start = time.perf_counter()
        compiled = torch.compile(model)
        one_step(model, compiled, torch.optim.AdamW(model.parameters(), lr=1e-4), source, target)  # compiles
        results["compile_seconds"] = time.perf_counter() - start
        variants["compiled"] = (model, compiled, source, target)
    seconds = time_variants(variants, steps)
    torch.set_flush_denormal(True)
    if "denormals_kept" in seconds:
        results.update(denormals_kept_pairs_per_s=batch / seconds["denormals_kept"],
                       flush_denormal_speedup=seconds["denormals_kept"] / seconds["batched"])
    results.update(batched_pairs_per_s=batch / seconds["batched"], naive_pairs_per_s=batch / seconds["naive"],
                   batched_over_naive=seconds["naive"] / seconds["batched"],
                   channels_last_pairs_per_s=batch / seconds["channels_last"],
                   channels_last_over_default=seconds["batched"] / seconds["channels_last"])
    if compile_model:
        results.update(compiled_pairs_per_s=batch / seconds["compiled"],
                       compiled_over_default=seconds["batched"] / seconds["compiled"])

    with tempfile.TemporaryDirectory() as folder:
        cache = build_demo_cache(Path(folder) / "demo", size=size, frames_per_track=24, tracks_per_identity=2)
        tracks = cache.tracks
        results["decode_pairs_per_s_one_worker"] = decode_rate(cache, tracks, batch, 8)
        results["data_wait_share_one_worker"] = data_wait_share(model, cache, tracks, batch, steps, workers=1)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (median reported)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling on a CPU)")
    parser.add_argument("--skip-denormals", action="store_true",
                        help="do not time the (slow) step without flushing denormal floats")
    parser.add_argument("--breakdown-only", action="store_true", help="only the recipe-vs-bare step comparison")
    parser.add_argument("--breakdown-steps", type=int, default=10, help="interleaved steps of the comparison")
    parser.add_argument("--config", default=str(PROJECT_ROOT / "recipes" / "configs" / "pretrain_tae.yaml"),
                        help="the recipe config whose step is timed (its loss terms; e.g. recipes/configs/pretrain_tae_real.yaml "
                             "with --cache, a cache with landmarks, for the landmark terms)")
    parser.add_argument("--cache", default=None, help="a face-track cache for the recipe step (default: the demo cache)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak, for the MFU line")
    parser.add_argument("--override", nargs="*", default=[], help="recipe config overrides (e.g. model.width=16)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--breakdown-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.breakdown_child:
        print(json.dumps(recipe_step_breakdown(args.breakdown_child, args.batch, args.breakdown_steps, args.config,
                                               args.channels_last, args.cache, args.override)))
        return
    for size in args.sizes:  # one process per size, like the measurements below
        command = [sys.executable, __file__, "--breakdown-child", str(size), "--batch", str(args.batch),
                   "--breakdown-steps", str(args.breakdown_steps), "--config", args.config]
        command += ["--channels-last"] if args.channels_last else []
        command += ["--cache", args.cache] if args.cache else []
        command += ["--override", *args.override] if args.override else []
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        print_breakdown(json.loads(done.stdout.strip().splitlines()[-1]), args.peak_tflops)
    if args.breakdown_only:
        return
    if args.child:
        print(json.dumps(measure_size(args.child, args.batch, args.steps, args.compile, args.skip_denormals)))
        return
    for size in args.sizes:  # one process per size: a clean peak-memory figure
        command = [sys.executable, __file__, "--child", str(size), "--batch", str(args.batch), "--steps", str(args.steps)]
        command += ["--compile"] if args.compile else []
        command += ["--skip-denormals"] if args.skip_denormals else []
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"\n== {size} px, batch {result['batch']}, {result['threads']} threads, reference widths ==")
        print(f"batched step (2 encoder passes): {result['batched_pairs_per_s']:.2f} pairs/s")
        print(f"naive step (6 encoder calls):    {result['naive_pairs_per_s']:.2f} pairs/s  -> batched is "
              f"{result['batched_over_naive']:.2f}x")
        print(f"channels_last:                   {result['channels_last_pairs_per_s']:.2f} pairs/s  -> "
              f"{result['channels_last_over_default']:.2f}x the default layout")
        if "denormals_kept_pairs_per_s" in result:
            print(f"denormals not flushed:           {result['denormals_kept_pairs_per_s']:.2f} pairs/s  -> flushing "
                  f"them (torch.set_flush_denormal) is {result['flush_denormal_speedup']:.1f}x faster")
        if "compiled_pairs_per_s" in result:
            print(f"torch.compile:                   {result['compiled_pairs_per_s']:.2f} pairs/s  -> "
                  f"{result['compiled_over_default']:.2f}x (compiling took {result['compile_seconds']:.0f} s)")
        print(f"decoding, one worker:            {result['decode_pairs_per_s_one_worker']:.1f} pairs/s "
              f"({result['decode_pairs_per_s_one_worker'] / result['batched_pairs_per_s']:.0f}x what training consumes)")
        print(f"data waiting, one worker:        {100 * result['data_wait_share_one_worker']:.1f}% of step time")
        print(f"peak RSS:                        {result['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
