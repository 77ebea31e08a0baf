"""``video-fer evaluate``: recompute an AU fine-tuning run's scores and table from its predictions.

    video-fer evaluate runs/finetune_au_bp4d                 # -> results.json, results.md in that folder
    video-fer evaluate runs/finetune_au_bp4d --out report/ --threshold 0.5 --dataset bp4d

Reads ``fold_<k>/predictions.npz`` of every finished fold (written by recipes/finetune_au.py),
scores each fold (F1 per AU at the threshold over all its frames, AUC; ICC(3,1), PCC and MAE
for intensity), averages over folds, and writes the JSON and the Markdown table with the
published anchors. Wired into ``video_fer.cli`` by ``register(subparsers)``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from video_fer.errors import ConfigError

__all__ = ["register", "run_evaluate"]


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability threshold in (0, 1), got {text}")
    return value


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand to a ``video-fer`` subparsers object."""
    parser = subparsers.add_parser(
        "evaluate", help="AU benchmark scores and table (F1 per AU, mean over folds) of a fine-tuning run",
        description="Score every finished fold of a recipes/finetune_au.py run from its saved predictions and "
                    "write results.json and results.md (the papers' table: AUs as columns, mean last, with "
                    "published anchors).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="train.output_dir of recipes/finetune_au.py")
    parser.add_argument("--out", metavar="DIR", default=None, help="where to write the report (default: RUN_DIR)")
    parser.add_argument("--threshold", type=_threshold, default=0.5,
                        help="presence probability from which an AU counts as predicted (default 0.5)")
    parser.add_argument("--dataset", choices=("bp4d", "disfa"), default=None,
                        help="which published anchors to print (default: the run's dataset)")
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from video_fer.evaluate.au_report import RESULTS_JSON, RESULTS_MARKDOWN, evaluate_run, markdown_table

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder; give the train.output_dir of a recipes/finetune_au.py run")
    report = evaluate_run(run_dir, dataset=args.dataset, threshold=args.threshold, out_dir=args.out)
    print(markdown_table(report), end="")
    out = Path(args.out or run_dir)
    print(f"wrote {out / RESULTS_JSON} and {out / RESULTS_MARKDOWN}")
    return 0
