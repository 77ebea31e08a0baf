"""Benchmark pretraining runs: ``recipes/pretrain_video.py`` as subprocesses, resumable, with CPU time.

A benchmark names its rows (``name -> recipe overrides``); :func:`run_pretraining` runs each one
that has not reached ``steps`` yet (``--resume``: a rerun continues where the last stopped, and a
larger ``steps`` extends a finished run), ``jobs`` at once, and records CPU and wall minutes per
row in ``<out>/pretraining.json`` (summed over resumed runs). :func:`checkpoint_models` loads the
model at every kept checkpoint of a row, for learning curves.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from video_fer.io import atomic_write

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "pretrain_video.py"

CYCLE_TERMS = ("pose_changed_keeps_action", "pose_changed_has_target_pose", "action_changed_keeps_pose",
               "action_changed_has_target_action", "generated_has_target_pose", "generated_has_target_action",
               "action_cycle", "pose_cycle")


def model_variants(streams: int, landmark_weight: float = 10.0) -> dict[str, list[str]]:
    """The standard rows of the pretraining benchmarks: name -> recipe overrides."""
    tae = [f"model.attention_streams={streams}"]
    return {"tcae": ["model.attention_streams=0"], "tae": tae,
            "no_cycles": tae + [f"loss.weights.{term}=0" for term in CYCLE_TERMS],
            "tae_landmarks": tae + [f"loss.weights.landmark_pose_field={landmark_weight}",
                                    f"loss.weights.landmark_action_field={landmark_weight}"]}


def parse_extra(items: list[str]) -> dict[str, list[str]]:
    """``NAME=key=value,key=value`` -> {NAME: [key=value, ...]} (rows the diagnosis adds)."""
    rows = {}
    for item in items:
        name, _, overrides = item.partition("=")
        if not name or not overrides:
            raise SystemExit(f"--extra {item!r}: expected NAME=key=value[,key=value...]")
        rows[name] = [o for o in overrides.split(",") if o]
    return rows


def parse_encoders(items: list[str], taken: set[str]) -> dict[str, Path]:
    """``NAME=PATH`` -> {NAME: encoder folder} (trained encoders a benchmark probes as rows); a name must be new,
    not one of ``taken`` (the benchmark's own rows)."""
    rows = {}
    for item in items:
        name, _, path = item.partition("=")
        if not name or not path:
            raise SystemExit(f"--encoder {item!r}: expected NAME=PATH (an encoder/ folder of recipes/pretrain_video.py)")
        if name in taken or name in rows:
            raise SystemExit(f"--encoder {item!r}: the row name {name!r} is taken; choose another")
        rows[name] = Path(path)
    return rows



def pretrain_command(run_dir: Path, overrides: Sequence[str]) -> list[str]:
    """The recipe's command line for one row (``--resume`` last: it takes an optional value)."""
    return [sys.executable, str(RECIPE), f"train.output_dir={run_dir}", *overrides, "--resume"]


def run_pretraining(variants: Mapping[str, Sequence[str]], out: Path, steps: int, jobs: int = 1,
                    threads: int = 1) -> dict[str, dict]:
    """Pretrain every row (``<out>/models/<name>``) up to ``steps``; returns ``name -> {steps, cpu_minutes, wall_minutes}``.

    ``variants`` values are complete recipe overrides (they must include ``train.max_steps={steps}``).
    A failing row stops the others (their checkpoints stay for a rerun) and raises SystemExit naming its log.
    """
    stats_path = out / "pretraining.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    waiting = [name for name in variants if stats.get(name, {}).get("steps", 0) < steps]
    running: dict[int, tuple[str, subprocess.Popen, float, object]] = {}
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                   "PYTHONPATH": str(RECIPE.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            run_dir = out / "models" / name
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "pretrain.log", "a")
            process = subprocess.Popen(pretrain_command(run_dir, variants[name]), stdout=log, stderr=subprocess.STDOUT,
                                       env=environment)
            running[process.pid] = (name, process, time.perf_counter(), log)
            print(f"pretraining {name} (pid {process.pid}), log: {run_dir / 'pretrain.log'}", flush=True)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, process, started, log = running.pop(pid)
        log.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            for _, other, _, _ in running.values():
                other.terminate()
            raise SystemExit(f"pretraining {name} failed (exit {code}); see {out / 'models' / name / 'pretrain.log'}")
        previous = stats.get(name, {})
        stats[name] = {"steps": steps,
                       "cpu_minutes": previous.get("cpu_minutes", 0.0) + (usage.ru_utime + usage.ru_stime) / 60,
                       "wall_minutes": previous.get("wall_minutes", 0.0) + (time.perf_counter() - started) / 60}
        with atomic_write(stats_path) as handle:
            handle.write(json.dumps(stats, indent=2))
        print(f"pretrained {name}: {stats[name]['cpu_minutes']:.1f} CPU min, {stats[name]['wall_minutes']:.1f} min",
              flush=True)
    return stats


def run_config(run_dir: Path) -> dict:
    """The recipe's resolved config of a run (``config.json``)."""
    return json.loads((Path(run_dir) / "config.json").read_text())


def checkpoint_models(run_dir: Path, max_step: int | None = None) -> Iterator[tuple[int, object]]:
    """``(step, TwinCycleAutoencoder)`` for every finished checkpoint of a run (ascending, up to ``max_step``)."""
    from safetensors.torch import load_file

    from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder
    from video_fer.train.checkpoints import list_checkpoints, step_of_checkpoint

    config = TAEConfig(**run_config(run_dir)["model"])
    for checkpoint in list_checkpoints(run_dir):
        step = step_of_checkpoint(checkpoint)
        if max_step is not None and step > max_step:
            continue
        model = TwinCycleAutoencoder(config)
        model.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
        yield step, model


__all__ = ["checkpoint_models", "parse_encoders", "parse_extra", "pretrain_command", "run_config", "run_pretraining"]
