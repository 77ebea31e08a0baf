"""Disentanglement benchmark with ground truth: does pretraining separate facial actions from head motion?

    python tools/bench_disentangle.py   # the last reported run: 1000 steps, 16-19 CPU min per model, ~35 min in all
    python tools/bench_disentangle.py --steps 20 --quick     # a smoke run of the whole pipeline

One run does everything, resuming where a previous run of the same ``--out`` stopped:

1. **faces**: real aligned faces of several identities (video_fer.data.face_images.build_face_bank):
   the embedded demo photos, every face of ``<shared>/data/images`` and frames of two shared videos,
   through the MediaPipe front end, with their mirror images. Identities are split: the test
   identities are never seen by pretraining nor by the probes' fitting.
2. **pretraining cache**: the training identities animated with smooth AU activations and head
   motion (video_fer.data.synthetic.build_animated_cache, the demo cache's code), written like a
   ``video-fer prepare`` output.
3. **pretraining**: ``recipes/pretrain_video.py`` unchanged, one process per model (``--jobs`` at
   once, one torch thread each), the same steps, batch, data and seed for every model:
   ``tcae`` (K=0), ``tae`` (K attention streams) and ``no_cycles`` (the TAE net trained with the
   reconstruction and sparsity terms only: the same-size autoencoder without the twin cycles);
   ``untrained`` is the TAE's initial weights. CPU minutes of each run are measured.
4. **measurements** on fresh animated pairs (random AUs in [0, 1], random head motion): endpoint
   errors of the fields against the true ones on the test identities, and linear probes fitted on
   the training identities' pairs and scored on the test identities' pairs (video_fer.evaluate.probes):
   action change -> AU presence (F1 at 0.5, labels = intensity >= ``--au-threshold``) and AU
   intensity (Pearson r), pose change -> the same, pose change -> head-motion parameters (R²),
   action change -> head motion (R²).

Written to ``<out>``: ``bench_disentangle.json`` (every number, per AU and per motion parameter),
``bench_disentangle.md`` (the tables), ``fields.png`` (true and predicted fields of test pairs).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from video_fer.data.synthetic import AU_NAMES, HEAD_MOTION_NAMES, animate_faces, build_animated_cache, flow_to_color
from video_fer.evaluate.disentangle import make_probe_pairs, measure_pairs, nanmean
from video_fer.io import atomic_write
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder
from video_fer.evaluate.pretrain_runs import model_variants, parse_extra, run_pretraining
from video_fer.evaluate.probes import f1_per_column, logistic_probe, ridge_probe
from video_fer.evaluate.tables import markdown_table
from video_fer.train.checkpoints import latest_checkpoint, list_checkpoints, step_of_checkpoint

ROOT = Path(__file__).resolve().parents[1]

def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as handle:  # a rerun never finds half a file
        handle.write(text)


def safe_name(identity: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", identity)


def collect_faces(shared: Path, size: int, frames_per_video: int, cache_dir: Path):
    """The face bank and a description of where the faces came from."""
    from video_fer.data.face_images import build_face_bank
    from video_fer.faces.alignment import AlignmentSpec

    alignment = AlignmentSpec(size=size)
    images = sorted((shared / "data" / "images").glob("*.jpg"))
    videos = [shared / "data" / "videos" / name for name in ("single_face.mp4", "WolfgangLanger_Pexels.mp4")]
    model = shared / "models" / "mediapipe" / "face_landmarker.task"
    if images and model.is_file() and all(video.is_file() for video in videos):
        bank = build_face_bank(alignment, images, videos, frames_per_video, {"model_path": str(model)},
                               cache_dir=cache_dir)
        description = f"demo photos + {len(images)} photos + {frames_per_video} frames of {len(videos)} videos"
    else:
        bank = build_face_bank(alignment)
        description = f"{shared} not found: the 2 demo photos only"
    bank.identities = [safe_name(name) for name in bank.identities]
    return bank, description


def split_identities(identities: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    names = sorted(set(identities))
    order = np.random.default_rng(seed).permutation(len(names))
    count = min(max(1, round(test_fraction * len(names))), len(names) - 1)
    test = sorted(names[i] for i in order[:count])
    return [n for n in names if n not in test], test


def load_pretrained(name: str, config: TAEConfig, out: Path, checkpoint: Path | None = None) -> TwinCycleAutoencoder:
    from safetensors.torch import load_file

    checkpoint = checkpoint or latest_checkpoint(out / "models" / name)
    model = TwinCycleAutoencoder(config)
    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    return model


def probe_scores(train, test, train_pairs, test_pairs, val_rows: np.ndarray, au_threshold: float) -> dict:
    """All probes of one model: name -> {mean, per-target values}."""
    au_train, au_test = train_pairs.pairs.au_intensities, test_pairs.pairs.au_intensities
    motion_train, motion_test = train_pairs.pairs.head_motion, test_pairs.pairs.head_motion
    results = {}
    for embedding in ("action", "pose"):
        x_train, x_test = getattr(train, f"{embedding}_change"), getattr(test, f"{embedding}_change")
        presence, _ = logistic_probe(x_train, au_train >= au_threshold, x_test, au_test >= au_threshold, val_rows)
        intensity, _ = ridge_probe(x_train, au_train, x_test, au_test, val_rows)
        motion, _ = ridge_probe(x_train, motion_train, x_test, motion_test, val_rows)
        results[f"{embedding}_au_f1"] = {"mean": nanmean(presence.f1), "per_au": dict(zip(AU_NAMES, presence.f1.tolist())),
                                         "penalty": presence.penalty}
        results[f"{embedding}_au_pearson"] = {"mean": nanmean(intensity.pearson),
                                              "per_au": dict(zip(AU_NAMES, intensity.pearson.tolist()))}
        results[f"{embedding}_motion_r2"] = {"mean": nanmean(motion.r2),
                                             "per_parameter": dict(zip(HEAD_MOTION_NAMES, motion.r2.tolist()))}
    return results


def save_field_sheet(path: Path, test_pairs, shown: list[int], fields: dict[str, dict[str, torch.Tensor]]) -> None:
    """PNG: per shown test pair, source, target, true action field, each model's, true pose field, each model's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, names, rows = test_pairs.pairs, list(fields), len(shown)
    columns = [("source", test_pairs.source[shown]), ("target", pairs.target[shown].clamp(0, 1))]
    for kind in ("action", "pose"):
        truth = getattr(pairs, f"{kind}_field")[shown]
        scale = float(truth.norm(dim=1).amax().clamp_min(1e-6))  # one colour scale per field kind
        columns.append((f"true {kind}", flow_to_color(truth, scale)))
        columns += [(f"{name} {kind}", flow_to_color(fields[name][kind], scale)) for name in names]
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.7 * rows), squeeze=False)
    for row in range(rows):
        for column, (title, images) in enumerate(columns):
            axis = axes[row, column]
            axis.imshow(images[row].permute(1, 2, 0).numpy().clip(0, 1))
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=7)
    figure.suptitle("Held-out faces: true and predicted fields (hue = direction, saturation = length; white = still)",
                    fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def generator_speed(bank, size: int, seconds: float = 5.0, batch: int = 32) -> float:
    """Animated pairs per minute at ``size`` px (faces resized from the bank), generating for about ``seconds``."""
    faces = torch.nn.functional.interpolate(bank.crops[:batch], size=(size, size), mode="bilinear", align_corners=False)
    points = bank.landmarks[:batch] * (size / bank.crops.shape[-1])
    generator, made, started = torch.Generator().manual_seed(0), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        animate_faces(faces, generator, landmarks=points)
        made += len(faces)
    return 60 * made / (time.perf_counter() - started)


def report(results: dict) -> str:
    models = results["models"]
    settings = results["settings"]
    rows = []
    for name, result in models.items():
        probes, epe, spent = result["probes"], result["epe"], result.get("pretraining", {})
        rows.append([name, *(f"{probes[key]['mean']:.3f}" for key in (
            "action_au_f1", "action_au_pearson", "pose_motion_r2", "pose_au_f1", "pose_au_pearson", "action_motion_r2")),
            *(f"{epe[key]:.2f}" for key in ("action", "action_moving", "pose", "fused")),
            f"{spent['cpu_minutes']:.1f}" if spent else "-"])
    for name, probes in results.get("baselines", {}).items():  # feature change of the pair, no fields
        rows.append([f"{name} (baseline)", *(f"{probes[key]['mean']:.3f}" for key in (
            "action_au_f1", "action_au_pearson", "action_motion_r2")), *["-"] * 8])
    zero = next(iter(models.values()))["epe"]
    rows.append(["always 'present' / zero field", f"{results['data']['all_present_f1']:.3f}", *["-"] * 5, *(f"{zero['zero_' + key]:.2f}" for key in ("action", "action_moving", "pose",
                                                                                     "fused")), "-"])
    table = markdown_table(["model", "action→AU F1", "action→AU r", "pose→motion R²", "pose→AU F1 (cross)",
                            "pose→AU r (cross)", "action→motion R² (cross)", "EPE action", "EPE action (moving px)",
                            "EPE pose", "EPE fused", "pretraining CPU min"], rows)
    data = results["data"]
    lines = [
        f"Faces: {data['description']}; {data['train_faces']} training views of {len(data['train_identities'])} "
        f"identities, {data['test_faces']} test views of {len(data['test_identities'])} held-out identities "
        f"({', '.join(data['test_identities'])}).",
        f"Pretraining: recipes/pretrain_video.py, {settings['steps']} steps x batch {settings['batch_size']} at "
        f"{settings['size']} px, width {settings['width']}, D {settings['embedding_dim']}, K {settings['streams']} "
        f"(tae, no_cycles), seed {settings['seed']}, on {data['cache_tracks']} animated tracks of the training identities.",
        "Generator speed (one thread, batches of 32): " + ", ".join(
            f"{rate:,.0f} pairs/min at {size}" for size, rate in results["generator_pairs_per_minute"].items()) + ".",
        f"Probes: fitted on {data['probe_train_pairs']} pairs of the training identities, scored on "
        f"{data['probe_test_pairs']} pairs of the held-out identities; features = change of the embedding "
        f"(target - source); AU presence = intensity >= {settings['au_threshold']}. EPE: mean endpoint error in px of "
        f"a 256 px crop on the held-out pairs; 'moving' = only pixels the true action field moves by > 0.5 px.",
        "", table]
    curve_rows = [[name, str(p["step"]), str(p["pairs_seen"]), f"{p['action_au_f1']:.3f}", f"{p['action_au_pearson']:.3f}",
                   f"{p['pose_motion_r2']:.3f}", f"{p['pose_au_f1']:.3f}", f"{p['epe_action_moving']:.2f}",
                   f"{p['epe_pose']:.2f}"] for name, points in results.get("curves", {}).items() for p in points]
    if curve_rows:
        lines += ["", "Learning curves (the same measurements at each kept checkpoint):", "", markdown_table(
            ["model", "step", "pairs seen", "action→AU F1", "action→AU r", "pose→motion R²", "pose→AU F1 (cross)",
             "EPE action (moving px)", "EPE pose"], curve_rows)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_disentangle")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared test assets folder")
    parser.add_argument("--steps", type=int, default=1000, help="pretraining steps of every model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--streams", type=int, default=4, help="TAE attention streams K")
    parser.add_argument("--stream-width", type=int, default=32, help="channels inside each attention stream")
    parser.add_argument("--models", nargs="*", default=["tcae", "tae", "no_cycles", "tae_landmarks"],
                        choices=["tcae", "tae", "no_cycles", "tae_landmarks"])
    parser.add_argument("--extra", nargs="*", default=[], help="more rows: NAME=key=value,key=value (recipe overrides)")
    parser.add_argument("--landmark-weight", type=float, default=10.0, help="tae_landmarks: weight of both terms")
    parser.add_argument("--curve-points", type=int, default=4, help="checkpoints kept (and measured) per model")
    parser.add_argument("--jobs", type=int, default=3, help="pretraining processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per pretraining process")
    parser.add_argument("--frames-per-video", type=int, default=6)
    parser.add_argument("--test-fraction", type=float, default=0.35, help="share of identities held out")
    parser.add_argument("--tracks-per-identity", type=int, default=6)
    parser.add_argument("--frames-per-track", type=int, default=32)
    parser.add_argument("--probe-pairs-per-face", type=int, default=24)
    parser.add_argument("--au-threshold", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smaller data for a smoke run")
    parser.add_argument("--recipe-override", nargs="*", default=[], help="extra recipe overrides for every model")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames_per_video, args.tracks_per_identity, args.frames_per_track, args.probe_pairs_per_face = 2, 2, 8, 6
    torch.set_num_threads(max(1, args.threads))
    torch.set_flush_denormal(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # ---------------------------------------------------------------- faces and split
    bank, description = collect_faces(Path(args.shared), args.size, args.frames_per_video, out / "faces")
    train_ids, test_ids = split_identities(bank.identities, args.test_fraction, args.seed)
    is_test = np.array([name in test_ids for name in bank.identities])
    train_rows, test_rows = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    print(f"faces: {description}: {len(bank.identities)} views, {len(train_ids)} training identities, "
          f"{len(test_ids)} held out ({', '.join(test_ids)})", flush=True)

    speed = {f"{size}px": generator_speed(bank, size, 1.0 if args.quick else 5.0) for size in (128, 256)}
    print("generator: " + ", ".join(f"{rate:,.0f} pairs/min at {size}" for size, rate in speed.items())
          + f" ({torch.get_num_threads()} torch thread)", flush=True)

    # ---------------------------------------------------------------- pretraining
    cache = build_animated_cache(out / "pretrain_cache", bank.crops[train_rows], bank.landmarks[train_rows],
                                 [bank.identities[i] for i in train_rows], args.frames_per_track,
                                 args.tracks_per_identity, args.seed,
                                 settings={"faces": description, "identities": train_ids})
    model_overrides = [f"data.cache={out / 'pretrain_cache'}", f"train.max_steps={args.steps}",
                       f"train.batch_size={args.batch_size}", f"train.seed={args.seed}", f"model.image_size={args.size}",
                       "data.val_fraction=0", "train.validate=false", "data.num_workers=0", "train.log_every=10",
                       f"train.save_every={max(args.steps // args.curve_points, 1)}", "train.keep_checkpoints=0",
                       f"train.image_every={max(args.steps // 4, 1)}", f"data.pairs_per_epoch={args.batch_size * 100}",
                       *args.recipe_override, f"model.width={args.width}", f"model.embedding_dim={args.embedding_dim}",
                       f"model.stream_width={args.stream_width}"]
    variants = {name: model_overrides + extra for name, extra in model_variants(args.streams, args.landmark_weight).items()
                if name in args.models}
    variants.update({name: model_overrides + extra for name, extra in parse_extra(args.extra).items()})
    spent = run_pretraining(variants, out, args.steps, args.jobs, args.threads)

    # ---------------------------------------------------------------- measurements
    def pairs_of(rows, seed):
        return make_probe_pairs(bank.crops[rows], bank.landmarks[rows], [bank.identities[i] for i in rows],
                                args.probe_pairs_per_face, seed)

    train_pairs, test_pairs = pairs_of(train_rows, args.seed + 1), pairs_of(test_rows, args.seed + 2)
    # The probes choose their penalty on a quarter of the training identities (every 4th row with only one).
    order = np.random.default_rng(args.seed + 3).permutation(len(train_ids))
    val_ids = {train_ids[i] for i in order[:max(1, len(train_ids) // 4)]}
    val_rows = np.array([name in val_ids for name in train_pairs.identities]) if len(train_ids) > 1 else None

    config = TAEConfig(image_size=args.size, width=args.width, embedding_dim=args.embedding_dim,
                       attention_streams=args.streams, stream_width=args.stream_width, zero_init_flow=True)
    configs = {name: TAEConfig(**json.loads((out / "models" / name / "config.json").read_text())["model"])
               for name in variants}
    torch.manual_seed(args.seed)  # the recipe's seed: the untrained model is the TAE's starting point
    models = {"untrained": TwinCycleAutoencoder(config)}
    models.update({name: load_pretrained(name, configs[name], out) for name in variants})
    present = test_pairs.pairs.au_intensities >= args.au_threshold
    results = {"settings": vars(args), "generator_pairs_per_minute": speed, "data": {
        "description": description, "train_identities": train_ids, "test_identities": test_ids,
        "train_faces": int(len(train_rows)), "test_faces": int(len(test_rows)), "cache_tracks": len(cache.tracks),
        "probe_train_pairs": len(train_pairs.identities), "probe_test_pairs": len(test_pairs.identities),
        # F1 of predicting every AU present: what a probe that learned nothing but the base rate can reach.
        "all_present_f1": nanmean(f1_per_column(torch.ones_like(present), present))},
        "models": {}}
    fields, shown = {}, list(range(0, len(test_pairs.identities), args.probe_pairs_per_face))[:4]  # 4 faces
    for name, model in models.items():
        measured_train, measured_test = measure_pairs(model, train_pairs), measure_pairs(model, test_pairs, keep_rows=shown)
        fields[name] = measured_test.predicted
        results["models"][name] = {
            "probes": probe_scores(measured_train, measured_test, train_pairs, test_pairs, val_rows, args.au_threshold),
            "epe": {key: nanmean(values.numpy()) for key, values in measured_test.epe.items()},
            "pretraining": spent.get(name, {})}
        print(f"measured {name}", flush=True)
    # Baseline without any pretraining: the change of the HOG of the aligned crop (one feature for both columns).
    from types import SimpleNamespace

    from video_fer.evaluate.real_probes import hog_features

    def hog_change(probe_pairs):
        def as_uint8(images):
            return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        change = hog_features(as_uint8(probe_pairs.pairs.target)) - hog_features(as_uint8(probe_pairs.source))
        return SimpleNamespace(action_change=change, pose_change=change)

    hog = probe_scores(hog_change(train_pairs), hog_change(test_pairs), train_pairs, test_pairs, val_rows,
                       args.au_threshold)
    results["baselines"] = {"hog": {key: hog[key] for key in ("action_au_f1", "action_au_pearson", "pose_motion_r2")}}
    results["baselines"]["hog"]["action_motion_r2"] = hog["pose_motion_r2"]
    print("measured the HOG baseline", flush=True)

    # What the landmarks themselves say (the signal the landmark-guided fields pass on): the change of the 68 points,
    # and its facial-action part (what the rigid3d head-motion fit leaves).
    from video_fer.train.losses.landmarks import split_landmark_motion

    def landmark_change(probe_pairs, rows, residual_only):
        source = bank.landmarks[rows].repeat_interleave(args.probe_pairs_per_face, 0).float()
        target = probe_pairs.pairs.landmarks.float()
        change = split_landmark_motion(source, target)[1] if residual_only else target - source
        return SimpleNamespace(action_change=change.flatten(1), pose_change=change.flatten(1))

    for name, residual_only in (("landmarks", False), ("landmark residual (rigid3d)", True)):
        scores = probe_scores(landmark_change(train_pairs, train_rows, residual_only),
                              landmark_change(test_pairs, test_rows, residual_only), train_pairs, test_pairs,
                              val_rows, args.au_threshold)
        results["baselines"][name] = {key: scores[key] for key in ("action_au_f1", "action_au_pearson")}
        results["baselines"][name]["action_motion_r2"] = scores["pose_motion_r2"]
    print("measured the landmark baselines", flush=True)
    results["curves"] = {}
    for name in variants:  # the same measurements at every kept checkpoint: probe scores against pairs seen
        points = []
        for checkpoint in list_checkpoints(out / "models" / name):
            step = step_of_checkpoint(checkpoint)
            if step > args.steps:
                continue
            model = load_pretrained(name, configs[name], out, checkpoint)
            measured_train, measured_test = measure_pairs(model, train_pairs), measure_pairs(model, test_pairs)
            probes = probe_scores(measured_train, measured_test, train_pairs, test_pairs, val_rows, args.au_threshold)
            points.append({"step": step, "pairs_seen": step * args.batch_size,
                           **{key: value["mean"] for key, value in probes.items()},
                           **{f"epe_{key}": nanmean(values.numpy()) for key, values in measured_test.epe.items()}})
        results["curves"][name] = points
    results["minutes_total"] = (time.perf_counter() - started) / 60

    text = report(results)
    print("\n" + text)
    write_text(out / "bench_disentangle.json", json.dumps(results, indent=2, default=str))
    write_text(out / "bench_disentangle.md", text + "\n")
    save_field_sheet(out / "fields.png", test_pairs, shown, {k: v for k, v in fields.items() if k != "untrained"})
    print(f"\nwritten: {out / 'bench_disentangle.json'}, {out / 'bench_disentangle.md'}, {out / 'fields.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
