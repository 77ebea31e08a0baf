"""Learnability and occlusion benchmark of the expression heads and the valence/arousal head.

    python tools/bench_heads.py --jobs 3                          # every head + VA, 3 runs at a time
    python tools/bench_heads.py --heads acnn aha --steps 200      # a quicker look
    python tools/bench_heads.py --encoder runs/pretrain_tae/encoder --freeze-encoder   # on a pretrained encoder

The controlled set (video_fer.data.expression_datasets.make_synthetic_expressions): real
aligned faces (the embedded demo photos, plus every face of ../shared/data/images and
frames of ../shared/data/videos prepared through the MediaPipe face front end when that
folder is there), each animated with the 7 expressions as AU combinations and a small
head motion; valence/arousal a fixed linear function of the AU intensities. Identities
are split: the heads are scored on faces they never saw. Each head is trained by
``recipes/finetune_expression.py`` (a fresh narrow TAE encoder trained with the head, or
the head's own crop encoders for RAN / prior attention; ``--encoder`` starts every head
from a saved encoder instead) with the same data, seed and number of steps; the VA head
by ``recipes/finetune_va.py``, once with a fresh encoder and, when the linear head ran
(and no ``--encoder``), once more from the encoder the linear expression run fine-tuned
(a transfer protocol: expression labels of the training identities only).

Printed: accuracy per head vs chance (1/7, the test set is balanced) and the majority
class share; the occlusion table (upper or lower half of the face masked at test time,
the change of accuracy per head); the VA runs' CCC / PCC / RMSE; the machine load. Written
to ``<out>/bench_heads.json`` and ``<out>/bench_heads.md``.
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from video_fer.evaluate.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]

HEADS = ("acnn", "ran", "prior", "aha", "linear")


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_recipe(recipe: str, argv: list[str], output_dir: str) -> dict:
    """Run one recipe (in this process or a worker) and return its metrics.json plus wall minutes."""
    import torch

    start = time.perf_counter()
    load_recipe(recipe).main(argv)
    summary = json.loads((Path(output_dir) / "metrics.json").read_text())
    summary["minutes"] = (time.perf_counter() - start) / 60
    summary["threads"] = torch.get_num_threads()
    return summary


def data_overrides(shared: Path, frames_per_video: int) -> tuple[list[str], str]:
    """Overrides adding the shared photos and videos as identities (if present) and a description."""
    images = sorted((shared / "data" / "images").glob("*.jpg"))
    videos = [shared / "data" / "videos" / name for name in ("single_face.mp4", "WolfgangLanger_Pexels.mp4")]
    model = shared / "models" / "mediapipe" / "face_landmarker.task"
    if not (images and model.is_file() and all(video.is_file() for video in videos)):
        return [], f"{shared} not found: demo photos only (2 identities)"
    return ([f"data.synthetic_images=[{','.join(map(str, images))}]",
             f"data.synthetic_videos=[{','.join(map(str, videos))}]", f"data.frames_per_video={frames_per_video}",
             f"data.landmarker_model={model}"],
            f"demo photos + {len(images)} photos + {len(videos)} videos from {shared}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="*", choices=HEADS, default=list(HEADS), help="expression heads (none: VA only)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per expression head")
    parser.add_argument("--va-steps", type=int, default=400, help="training steps of the VA head (0: skip)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--samples-per-face", type=int, default=56)
    parser.add_argument("--frames-per-video", type=int, default=3)
    parser.add_argument("--ran-crop-size", type=int, default=64,
                        help="RAN crop side (the face and 5 crops per image, each encoded by a TAE encoder of this "
                             "size; 64 is its minimum)")
    parser.add_argument("--va-expression-weight", type=float, default=1.0,
                        help="weight of the VA head's auxiliary expression task (the multi-task design; 0: VA only)")
    parser.add_argument("--head-option", nargs=2, action="append", default=[], metavar=("HEAD", "KEY=VALUE"),
                        help="an extra recipe override for one head, e.g. --head-option prior model.head_options.dropout=0.2")
    parser.add_argument("--encoder", default=None,
                        help="a pretrained encoder folder (recipes/pretrain_video.py's <run>/encoder) for every head "
                             "(model.encoder); default: a fresh encoder trained with each head")
    parser.add_argument("--freeze-encoder", action="store_true",
                        help="with --encoder: train the heads only (the linear-evaluation protocol of the papers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (worker processes, each --threads threads); the per-run minutes then "
                             "share the CPU")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared test assets folder")
    parser.add_argument("--out", default="runs/bench_heads")
    args = parser.parse_args(argv)

    out = Path(args.out)
    extra, description = data_overrides(Path(args.shared), args.frames_per_video)
    common = [f"model.image_size={args.image_size}", f"data.samples_per_face={args.samples_per_face}",
              f"data.cache_dir={out / 'faces'}", f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
              f"train.threads={args.threads}", "train.save_every=0", "train.log_every=10", *extra]
    if args.freeze_encoder and not args.encoder:
        parser.error("--freeze-encoder needs --encoder (a fresh encoder would stay random)")
    if args.encoder:
        common += [f"model.encoder={args.encoder}", f"model.freeze_encoder={str(args.freeze_encoder).lower()}"]
    encoder_note = (f"encoder {args.encoder} ({'frozen' if args.freeze_encoder else 'fine-tuned'})" if args.encoder
                    else "a fresh encoder per head")
    load_before = os.getloadavg()
    print(f"faces: {description}; {args.steps} steps per head, batch {args.batch_size}, {args.image_size} px, "
          f"{encoder_note}; load average {load_before[0]:.1f}")

    head_overrides = {"ran": [f"model.head_options.crop_size={args.ran_crop_size}"]}
    for head, override in args.head_option:
        head_overrides.setdefault(head, []).append(override)
    results: dict = {"settings": vars(args), "faces": description, "heads": {}, "va": {}}
    # (name, recipe, arguments, output folder) of every run
    runs = [(head, "finetune_expression", ["--head", head, f"train.output_dir={out / head}",
                                           f"train.max_steps={args.steps}", f"eval.every={args.steps}", *common,
                                           *head_overrides.get(head, [])], str(out / head)) for head in args.heads]

    def va_run(name: str, extra: list[str]):
        return (name, "finetune_va", [f"train.output_dir={out / name}", f"train.max_steps={args.va_steps}",
                                      f"eval.every={args.va_steps}",
                                      f"loss.expression_weight={args.va_expression_weight}", *common,
                                      *head_overrides.get("va", []), *extra], str(out / name))

    if args.va_steps:
        runs.append(va_run("va", []))
    # Transfer protocol: the VA head on the encoder the linear expression run fine-tuned (train identities only).
    transfer = va_run("va_from_expression", [f"model.encoder={out / 'linear' / 'encoder'}"]) \
        if args.va_steps and "linear" in args.heads and not args.encoder else None
    wall_start = time.perf_counter()
    with ProcessPoolExecutor(max(args.jobs, 1), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(run_recipe, recipe, argv, output) for name, recipe, argv, output in runs}
        if transfer is not None:
            futures["linear"].result()  # its encoder must be written first
            futures[transfer[0]] = pool.submit(run_recipe, *transfer[1:])
        summaries = {name: future.result() for name, future in futures.items()}
    wall_minutes = (time.perf_counter() - wall_start) / 60
    for name, summary in summaries.items():
        results["va" if name.startswith("va") else "heads"][name] = summary

    # ---------------------------------------------------------------- tables
    heads = results["heads"]
    any_head = next(iter(heads.values()), None)
    load_after = os.getloadavg()
    sections = [f"Faces: {description}. Encoder: {encoder_note}. Machine load average (1 min) {load_before[0]:.1f} "
                f"at the start, {load_after[0]:.1f} at the end ({os.cpu_count()} CPUs, {args.threads} torch thread(s) "
                f"per run, {args.jobs} run(s) at once); {wall_minutes:.1f} wall minutes in all."]
    if any_head:
        data = any_head["data"]
        sections.append(f"Train identities ({len(data['train_identities'])}): {', '.join(data['train_identities'])}; "
                        f"held-out test identities ({len(data['test_identities'])}): "
                        f"{', '.join(data['test_identities'])}; {any_head['train_faces']} training images per "
                        f"epoch (re-animated every epoch), {any_head['test_faces']} test images.")
        rows = [[head, f"{s['accuracy']:.3f}", f"{s['mean_class_accuracy']:.3f}", f"{s['chance']:.3f}",
                 f"{s['majority_class_share']:.3f}", f"{s['accuracy'] / s['chance']:.2f}x", f"{s['minutes']:.1f}"]
                for head, s in heads.items()]
        sections.append("Learnability (held-out identities, 7 expressions):\n" + markdown_table(
            ["head", "accuracy", "mean class acc.", "chance", "majority share", "acc. / chance", "minutes"], rows))
        rows = [[head, f"{s['accuracy']:.3f}",
                 f"{s['accuracy_upper_masked']:.3f} ({s['accuracy_upper_masked'] - s['accuracy']:+.3f})",
                 f"{s['accuracy_lower_masked']:.3f} ({s['accuracy_lower_masked'] - s['accuracy']:+.3f})"]
                for head, s in heads.items()]
        sections.append("Occlusion at test time (grey mask above / below the nose bridge; trained unmasked):\n"
                        + markdown_table(["head", "no mask", "upper half masked (change)", "lower half masked (change)"],
                                         rows))
    if results["va"]:
        va_encoders = {"va": "encoder trained from scratch with the head",
                       "va_from_expression": "encoder of the linear expression run (fine-tuned on the training "
                                             "identities' expression labels), then trained with the head"}
        rows = [[run, target, f"{v[target + '_ccc']:.3f}", f"{v[target + '_pcc']:.3f}", f"{v[target + '_rmse']:.3f}",
                 f"{v['minutes']:.1f}"] for run, v in results["va"].items() for target in ("valence", "arousal")]
        any_va = next(iter(results["va"].values()))
        sections.append(f"Valence/arousal (two-level attention head, auxiliary expression weight "
                        f"{args.va_expression_weight:g}, {args.va_steps} steps, held-out identities, "
                        f"{any_va['test_faces']} test images; "
                        + "; ".join(f"{run}: {va_encoders.get(run, run)}" for run in results["va"]) + "):\n"
                        + markdown_table(["run", "target", "CCC", "PCC", "RMSE", "minutes"], rows))
    report = "\n\n".join(sections)
    print("\n" + report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_heads.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "bench_heads.md").write_text(report + "\n")
    print(f"\nwritten: {out / 'bench_heads.json'}, {out / 'bench_heads.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
