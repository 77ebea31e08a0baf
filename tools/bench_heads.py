"""Learnability and occlusion benchmark of the expression heads and the valence/arousal head.

    python tools/bench_heads.py                                   # every head, ~3-5 min each on a busy 2-core CPU
    python tools/bench_heads.py --heads acnn aha --steps 200      # a quicker look

The controlled set (video_fer.data.expression_datasets.make_synthetic_expressions): real
aligned faces (the embedded demo photos, plus every face of ../shared/data/images and
frames of ../shared/data/videos prepared through the MediaPipe face front end when that
folder is there), each animated with the 7 expressions as AU combinations and a small
head motion; valence/arousal a fixed linear function of the AU intensities. Identities
are split: the heads are scored on faces they never saw. Each head is trained by
``recipes/finetune_expression.py`` (a fresh narrow TAE encoder trained with the head, or
the head's own crop encoders for RAN / prior attention) with the same data, seed and
number of steps; the VA head by ``recipes/finetune_va.py``.

Printed: accuracy per head vs chance (1/7, the test set is balanced) and the majority
class share; the occlusion table (upper or lower half of the face masked at test time,
the change of accuracy per head); the VA head's CCC / PCC / RMSE. Written to
``<out>/bench_heads.json`` and ``<out>/bench_heads.md``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADS = ("acnn", "ran", "prior", "aha", "linear")


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


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
                        help="RAN crop side (the face and 5 crops per image; 32 is ~4x faster but loses the 1-2 px "
                             "actions)")
    parser.add_argument("--va-expression-weight", type=float, default=1.0,
                        help="weight of the VA head's auxiliary expression task (the multi-task design; 0: VA only)")
    parser.add_argument("--head-option", nargs=2, action="append", default=[], metavar=("HEAD", "KEY=VALUE"),
                        help="an extra recipe override for one head, e.g. --head-option prior model.head_options.dropout=0.2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared test assets folder")
    parser.add_argument("--out", default="runs/bench_heads")
    args = parser.parse_args(argv)

    out = Path(args.out)
    extra, description = data_overrides(Path(args.shared), args.frames_per_video)
    common = [f"model.image_size={args.image_size}", f"data.samples_per_face={args.samples_per_face}",
              f"data.cache_dir={out / 'faces'}", f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
              f"train.threads={args.threads}", "train.save_every=0", "train.log_every=10", *extra]
    print(f"faces: {description}; {args.steps} steps per head, batch {args.batch_size}, {args.image_size} px")

    head_overrides = {"ran": [f"model.head_options.crop_size={args.ran_crop_size}"]}
    for head, override in args.head_option:
        head_overrides.setdefault(head, []).append(override)
    expression = load_recipe("finetune_expression")
    results: dict = {"settings": vars(args), "faces": description, "heads": {}}
    for head in args.heads:
        start = time.perf_counter()
        expression.main(["--head", head, f"train.output_dir={out / head}", f"train.max_steps={args.steps}",
                         f"eval.every={args.steps}", *common, *head_overrides.get(head, [])])
        summary = json.loads((out / head / "metrics.json").read_text())
        summary["minutes"] = (time.perf_counter() - start) / 60
        results["heads"][head] = summary
    if args.va_steps:
        va = load_recipe("finetune_va")
        start = time.perf_counter()
        va.main([f"train.output_dir={out / 'va'}", f"train.max_steps={args.va_steps}", f"eval.every={args.va_steps}",
                 f"loss.expression_weight={args.va_expression_weight}", *common, *head_overrides.get("va", [])])
        results["va"] = json.loads((out / "va" / "metrics.json").read_text())
        results["va"]["minutes"] = (time.perf_counter() - start) / 60

    # ---------------------------------------------------------------- tables
    heads = results["heads"]
    any_head = next(iter(heads.values()), None)
    sections = [f"Faces: {description}."]
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
    if "va" in results:
        v = results["va"]
        rows = [[name, f"{v[name + '_ccc']:.3f}", f"{v[name + '_pcc']:.3f}", f"{v[name + '_rmse']:.3f}"]
                for name in ("valence", "arousal")]
        sections.append(f"Valence/arousal (two-level attention head, auxiliary expression weight "
                        f"{args.va_expression_weight:g}, held-out identities, {v['test_faces']} test images, "
                        f"{v['minutes']:.1f} min):\n" + markdown_table(["target", "CCC", "PCC", "RMSE"], rows))
    report = "\n\n".join(sections)
    print("\n" + report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_heads.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "bench_heads.md").write_text(report + "\n")
    print(f"\nwritten: {out / 'bench_heads.json'}, {out / 'bench_heads.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
