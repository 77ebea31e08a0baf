"""Export every kept checkpoint of a pretraining run as an encoder: the points of your own run's learning curve.

    python tools/export_checkpoints.py runs/pretrain_tae_real        # -> runs/pretrain_tae_real/curve/step_N/
    python tools/bench_real_probes.py --out runs/bench_real_probes --models \\
        --encoder s300=runs/pretrain_tae_real/curve/step_300 s600=runs/pretrain_tae_real/curve/step_600 ...

Each ``checkpoints/step_*`` folder of ``recipes/pretrain_video.py`` is loaded into the run's TwinCycleAutoencoder
(its ``config.json``) and its encoder exported as the recipe exports its last one
(:func:`video_fer.models.checkpoint.save_encoder`, ``extra.step``), with the crop alignment of the run's own
export (``encoder/``) or, before the run has one, of its cache (``data.cache``; ``--cache`` for a cache that
moved). Keep the checkpoints with ``train.keep_checkpoints=0`` (all) or a count, and space them with
``train.save_every``. An export already there is left as it is, so a rerun adds the new checkpoints only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from video_fer.evaluate.pretrain_runs import checkpoint_models, run_config
from video_fer.faces.alignment import AlignmentSpec
from video_fer.models.checkpoint import read_config, save_encoder


def run_alignment(run_dir: Path, cache: str | None) -> AlignmentSpec:
    """The crops the run trained on: its encoder export's record, else its (or the given) cache's settings."""
    export = run_dir / "encoder"
    recorded = None
    if (export / "config.json").is_file():
        recorded = (read_config(export).get("extra") or {}).get("alignment")
    if recorded and cache is None:
        return AlignmentSpec.from_dict(recorded)
    from video_fer.data.cache import FaceTrackCache

    cache = cache or run_config(run_dir)["data"].get("cache")
    if not cache or not Path(cache).is_dir():
        raise SystemExit(f"{run_dir}: the crop alignment comes from its encoder/ export or its cache, and the cache "
                         f"{cache!r} is not a folder; give --cache, the face-track cache the run trained on")
    return FaceTrackCache(cache).alignment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a recipes/pretrain_video.py output folder (config.json, checkpoints/)")
    parser.add_argument("--out", help="where the exports go (default <run>/curve)")
    parser.add_argument("--cache", help="the run's face-track cache, if it moved (its crop alignment)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run)
    if not (run_dir / "config.json").is_file():
        raise SystemExit(f"{run_dir}: not a pretraining run (no config.json); give the folder train.output_dir named")
    out = Path(args.out) if args.out else run_dir / "curve"
    alignment = run_alignment(run_dir, args.cache)
    written = 0
    for step, model in checkpoint_models(run_dir):
        target = out / f"step_{step}"
        if (target / "config.json").is_file():
            continue
        save_encoder(model.encoder, target, alignment, extra={"step": step, "run": str(run_dir)})
        written += 1
        print(target, flush=True)
    exported = sorted(out.glob("step_*")) if out.is_dir() else []
    if not exported:
        raise SystemExit(f"{run_dir}: no checkpoints/step_* to export")
    print(f"{written} new, {len(exported)} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
