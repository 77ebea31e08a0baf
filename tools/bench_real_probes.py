"""Real-video benchmark without human labels: do pretrained embeddings predict facial actions and head pose?

    python tools/bench_real_probes.py --out runs/bench_real_probes            # prepare, pretrain, measure
    python tools/bench_real_probes.py --out runs/bench_real_probes --steps 2000   # continue every row further

One run does everything and resumes where a previous run of the same ``--out`` stopped
(the cache, the reference signals, each pretraining row and its checkpoints are kept):

1. **cache**: ``<shared>/data/pretrain`` (31 clips, ~7.6k frames) through ``video-fer prepare``'s code
   (MediaPipe, every frame, 256 px) into ``--cache``, then re-encoded at ``--size`` (``<cache>_<size>``).
2. **references** (video_fer.evaluate.real_references), once per frame: MediaPipe blendshapes mapped to
   AU intensities (``--au-map``; default the raw action blendshapes) and head pitch/yaw/roll from
   MediaPipe's facial transformation matrix on the source frames.
3. **split** by clip (:data:`TEST_CLIPS`, identity-disjoint): pretraining and the probes' fitting use
   the other clips only.
4. **pretraining**: ``recipes/pretrain_video.py`` per row (``--models``, ``--extra``), the same steps,
   batch, seed and data; a checkpoint every ``steps / --curve-points`` steps for the learning curves.
5. **probes** (video_fer.evaluate.real_probes) on single frames: each model's action and pose
   embeddings, the untrained encoder, HOG, PCA of raw pixels, aligned landmarks; ridge fitted on the
   fit clips, Pearson r on the test clips; the pair version on changes between two frames of a track.
   ``--encoder NAME=PATH`` adds an encoder already trained (an ``encoder/`` export) as a row; the
   report says which videos its pretraining left out, so a row trained on test people shows as such.
   When the export sits in its ``recipes/pretrain_video.py`` run folder, the picture shows that run's
   checkpoint of the same step too.

Written to ``<out>``: ``bench_real_probes.md`` (tables), ``bench_real_probes.json`` (every number, per
AU, per angle, per checkpoint), ``attention_fields.png`` (attention maps and both fields of test faces),
``curves.png`` (probe scores against pairs seen).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from video_fer.data.cache import FaceTrackCache
from video_fer.data.derived_caches import downscale_cache, subset_cache
from video_fer.evaluate import real_probes as rp
from video_fer.evaluate.real_probes import SAME_SPEAKER, TEST_CLIPS
from video_fer.evaluate.pretrain_runs import (checkpoint_models, model_variants, parse_encoders, parse_extra,
                                              run_pretraining)
from video_fer.evaluate.tables import markdown_table
from video_fer.evaluate.real_references import compute_references, load_au_mapping
from video_fer.faces.alignment import check_encoder_crops
from video_fer.io import atomic_write
from video_fer.models.checkpoint import WEIGHTS_FILE, load_encoder, read_config
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder

ROOT = Path(__file__).resolve().parents[1]

HELD_OUT = {False: "test clips held out", True: "PRETRAINED ON TEST CLIPS", None: "test clips perhaps seen (not recorded)"}


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def prepare_data(args) -> tuple[FaceTrackCache, Path, Path]:
    """The source-size cache with references, the model-size cache, and the pretraining view (fit clips)."""
    from video_fer.data.prepare import prepare_videos

    cache_root = Path(args.cache)
    model_file = Path(args.shared) / "models" / "mediapipe" / "face_landmarker.task"
    prepare_videos(Path(args.shared) / "data" / "pretrain", cache_root, landmarker=args.landmarker,
                   landmarker_options={"model_path": str(model_file)}, size=args.source_size, progress=False)
    source = FaceTrackCache(cache_root)
    counts = compute_references(source, model_file)
    print(f"references: {counts}", flush=True)
    model_cache = cache_root if args.size == source.size else Path(f"{cache_root}_{args.size}")
    if model_cache != cache_root:
        downscale_cache(source, model_cache, args.size, progress=False)
    keys = sorted({track["video_key"] for track in source.tracks})
    missing = sorted(set(args.test_clips) - set(keys))
    if missing:
        raise SystemExit(f"{cache_root}: test clips {missing} are not in the cache; check {args.shared}/data/pretrain")
    fit_keys = [key for key in keys if key not in args.test_clips]
    view = Path(f"{model_cache}_pretrain_view")
    subset_cache(model_cache, view, fit_keys, {key: SAME_SPEAKER.get(key, key) for key in fit_keys})
    return source, model_cache, view


def common_overrides(args, view: Path) -> list[str]:
    save_every = max(args.steps // args.curve_points, 1)
    return [f"data.cache={view}", f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
            f"train.seed={args.seed}", f"model.image_size={args.size}", f"model.width={args.width}",
            f"model.embedding_dim={args.embedding_dim}", f"model.stream_width={args.stream_width}",
            "data.val_fraction=0", "train.validate=false", "data.num_workers=0", "data.preload=true", "train.log_every=10",
            f"train.save_every={save_every}", "train.keep_checkpoints=0", f"train.image_every={max(args.steps // 4, 1)}",
            f"data.pairs_per_epoch={args.batch_size * 100}", "data.augment=true", *args.recipe_override]


def baseline_features(frames, split, args) -> dict[str, torch.Tensor]:
    started = time.process_time()
    features = {"hog": rp.hog_features(frames.images),
                "pixels_pca": rp.pixel_pca_features(frames.images, split.fit, args.embedding_dim),
                "landmarks": rp.landmark_features(frames.landmarks, args.size)}
    print(f"baseline features: {(time.process_time() - started) / 60:.1f} CPU min", flush=True)
    return features


def diagnostics(model, frames, pairs, args) -> dict:
    """Within-clip variance share of both embeddings, and the fields at landmarks of test pairs (px at 256)."""
    features = rp.encoder_features(model.encoder, frames.images)
    test_pairs = (pairs.test[0][:args.field_pairs], pairs.test[1][:args.field_pairs])
    return {"within_clip_share_action": rp.within_clip_share(features["action"], frames.clips),
            "within_clip_share_pose": rp.within_clip_share(features["pose"], frames.clips),
            "landmark_epe": rp.landmark_field_errors(model, frames, test_pairs)}


def probe_key(args, with_diagnostics: bool) -> dict:
    """What a checkpoint's probe scores depend on besides its weights (a stored result is reused only if equal)."""
    return {"frame_step": args.frame_step, "pairs_per_track": args.pairs_per_track, "au_map": args.au_map,
            "seed": args.seed, "test_clips": list(args.test_clips), "size": args.size, "min_std": rp.MIN_TEST_STD,
            "field_pairs": args.field_pairs, "diagnostics": with_diagnostics, "version": 1}


def cached(path: Path, key: dict, compute):
    """``compute()`` once per checkpoint and settings: a rerun reads the stored result (JSON, written atomically)."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["value"]
    value = json.loads(json.dumps(compute(), default=float))  # as it will read back
    write_text(path, json.dumps({"key": key, "value": value}))
    return value


def saw_test_clips(extra: dict, test_clips) -> bool | None:
    """Whether an encoder export was pretrained on any test clip, from the cache and the excluded videos it
    recorded (None: not recorded, or its cache is not at hand)."""
    excluded = extra.get("excluded_videos")
    if excluded is not None and set(test_clips) <= set(excluded):
        return False
    if excluded is None or not extra.get("cache") or not Path(extra["cache"]).is_dir():
        return None
    keys = {track["video_key"] for track in FaceTrackCache(extra["cache"]).tracks}
    return bool((set(test_clips) & keys) - set(excluded))


def encoder_row(name: str, path: Path, cache: FaceTrackCache, frames, split, pairs, active, args, out: Path) -> dict:
    """Probe scores and within-clip shares of a trained encoder folder (stored per weights: a rerun reads them),
    and what its pretraining saw: ``{"scores", "diagnostics", "trained"}``."""
    export = load_encoder(path)
    check_encoder_crops(cache.alignment, export.crops, f"--encoder {name}={path}")
    extra = read_config(export.path).get("extra") or {}
    trained = {"path": str(export.path.resolve()), "step": extra.get("step"), "cache": extra.get("cache"),
               "excluded_videos": extra.get("excluded_videos"), "saw_test_clips": saw_test_clips(extra, args.test_clips)}
    weights = hashlib.sha256((export.path / WEIGHTS_FILE).read_bytes()).hexdigest()

    def compute():
        features = rp.encoder_features(export.encoder, frames.images)
        return {"scores": rp.score_encoder(features, frames, split, pairs, active), "diagnostics": {
            "within_clip_share_action": rp.within_clip_share(features["action"], frames.clips),
            "within_clip_share_pose": rp.within_clip_share(features["pose"], frames.clips)}}

    stored = cached(out / "encoders" / name / "probes.json", {**probe_key(args, False), "weights": weights}, compute)
    return {**stored, "trained": trained}


def final_model(encoder_path: Path, step: int | None):
    """The whole TAE behind an ``encoder/`` export, for the picture: the checkpoint of the export's step in
    the ``recipes/pretrain_video.py`` run folder it sits in, or None (an export on its own has no decoders)."""
    run_dir = Path(encoder_path).parent
    if step is None or not (run_dir / "checkpoints").is_dir() or not (run_dir / "config.json").is_file():
        return None
    return next((model for saved, model in checkpoint_models(run_dir) if saved == step), None)


def figure_pairs(frames, split, count: int = 4) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One pair per test track (up to ``count``): its calmest frame -> its most active frame (AU sum)."""
    first, second, titles = [], [], []
    activity = np.nan_to_num(frames.aus).sum(1)
    for track in sorted(set(frames.tracks[split.test]))[:: max(1, len(set(frames.tracks[split.test])) // count)][:count]:
        rows = split.test[frames.tracks[split.test] == track]
        first.append(rows[np.argmin(activity[rows])])
        second.append(rows[np.argmax(activity[rows])])
        titles.append(str(frames.clips[rows[0]]))
    return np.array(first), np.array(second), titles


def save_curves(path: Path, curves: dict, baselines: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [("action → AU r", "action", "au_r"), ("pose → yaw r", "pose", "yaw_r"),
              ("pair: action Δ → AU Δ r", "action", "pair_au_r")]
    for axis, (title, embedding, key) in zip(axes, panels):
        for name, points in curves.items():
            axis.plot([p["pairs_seen"] for p in points], [p[embedding][key] for p in points], marker="o", label=name)
        if key != "yaw_r":
            for name in ("hog", "untrained"):
                value = baselines[name][key]
                axis.axhline(value, linestyle="--", linewidth=0.8, color="grey" if name == "hog" else "black")
                axis.text(0, value, name, fontsize=6)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("pairs seen")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(results: dict) -> str:
    def f(value):
        return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"

    rows = []
    given = results.get("given_encoders", {})
    for name, result in results["encoders"].items():
        action, pose = result["action"]["summary"], result["pose"]["summary"]
        spent = results["pretraining"].get(name)
        if name in given:
            name = f"{name} (given; {HELD_OUT[given[name]['saw_test_clips']]})"
        rows.append([name, f(action["au_r"]), f(pose["yaw_r"]), f(pose["angles_r"]), f(pose["au_r"]),
                     f(action["angles_r"]), f(action["pair_au_r"]), f(pose["pair_angles_r"]), f(pose["pair_au_r"]),
                     f(action["pair_angles_r"]), f"{spent['cpu_minutes']:.1f}" if spent else "-"])
    for name, result in results["baselines"].items():
        summary = result["summary"]
        rows.append([f"{name} (baseline)", f(summary["au_r"]), f(summary["yaw_r"]), f(summary["angles_r"]), "-", "-",
                     f(summary["pair_au_r"]), f(summary["pair_angles_r"]), "-", "-", "-"])
    table = markdown_table(["features", "action→AU r", "pose→yaw r", "pose→angles r", "pose→AU r (cross)",
                            "action→angles r (cross)", "pair: action→AU r", "pair: pose→angles r",
                            "pair: pose→AU r (cross)", "pair: action→angles r (cross)", "pretraining CPU min"], rows)
    curve_rows = []
    for name, points in results["curves"].items():
        for point in points:
            curve_rows.append([name, str(point["step"]), str(point["pairs_seen"]), f(point["action"]["au_r"]),
                               f(point["pose"]["yaw_r"]), f(point["pose"]["au_r"]), f(point["action"]["angles_r"]),
                               f(point["action"]["pair_au_r"])])
    curves = markdown_table(["model", "step", "pairs seen", "action→AU r", "pose→yaw r", "pose→AU r (cross)",
                             "action→angles r (cross)", "pair: action→AU r"], curve_rows)
    diagnostic_rows = []
    for name, values in results.get("diagnostics", {}).items():
        epe = values.get("landmark_epe", {})
        scores = results["encoders"].get(name, {}).get("action") or results["baselines"].get(name, {})
        diagnostic_rows.append([name, f(scores.get("summary", {}).get("centred_au_r")),
                                f(values.get("within_clip_share_action", values.get("within_clip_share"))),
                                f(values.get("within_clip_share_pose")), f(epe.get("pose")), f(epe.get("zero_pose")),
                                f(epe.get("action")), f(epe.get("zero_action"))])
    diagnostic_table = markdown_table(["features", "action→AU r, per-clip centred", "within-clip variance share (action / HOG)",
                                       "within-clip share (pose)",
                                       "pose field EPE at landmarks (px@256)", "zero field", "action field EPE at landmarks",
                                       "zero field"], diagnostic_rows)
    data, settings = results["data"], results["settings"]
    lines = [
        f"Data: {data['frames']} frames (every {settings['frame_step']}th) of {data['clips']} clips; probe-fit "
        f"{data['fit_frames']} frames of {data['fit_clips']} clips, probe-test {data['test_frames']} frames of the "
        f"clips {', '.join(data['test_clips'])} (other people).",
        f"References: {data['au_mapping']}; mean AU r over the {len(data['active_aus'])} AUs that vary "
        f"(std >= {rp.MIN_TEST_STD}) in both fit and test frames; head angles from MediaPipe's transformation matrix.",
        f"Pretraining: recipes/pretrain_video.py, {settings['steps']} steps x batch {settings['batch_size']} at "
        f"{settings['size']} px, width {settings['width']}, D {settings['embedding_dim']}, K {settings['streams']}, "
        f"seed {settings['seed']}, on the fit clips only ({data['pretrain_tracks']} tracks); one seed.",
        "Probes: ridge (penalty chosen on a quarter of the fit clips), Pearson r on the test clips. Pair version: "
        f"{settings['pairs_per_track']} random frame pairs per track, feature change -> reference change.",
        *[f"Given encoder {name}: {row['path']}, step {row['step']}, pretrained on {row['cache']} without the videos "
          f"{row['excluded_videos']}: {HELD_OUT[row['saw_test_clips']]}." for name, row in given.items()],
        "", table, "", "Diagnostics on the test clips: the AU probe with features and references centred per clip "
        "(actions within a person), how much of each embedding's variance lies within clips (the rest "
        "tells people apart), and the fields of test pairs at their landmarks against the landmarks' rigid/residual split "
        "(video_fer.train.losses.landmarks; EPE in px of a 256 px crop):", "", diagnostic_table]
    if curve_rows:  # pretrained rows only: given encoders have no checkpoints
        lines += ["", "Learning curves (the same probes at each kept checkpoint):", "", curves]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_real_probes")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared assets folder")
    parser.add_argument("--cache", default=None, help="source-size cache folder (default <out>/real_cache)")
    parser.add_argument("--source-size", type=int, default=256, help="crop side of the prepared cache")
    parser.add_argument("--size", type=int, default=128, help="crop side the models see")
    # One talking head per clip, face large in the frame: the whole-frame landmarker finds every face, and the
    # published tables were made with it (a cache made with another front end is refused by prepare).
    parser.add_argument("--landmarker", default="mediapipe", help="prepare's front end for the cache")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--stream-width", type=int, default=32)
    parser.add_argument("--landmark-weight", type=float, default=10.0, help="tae_landmarks: weight of both terms")
    parser.add_argument("--models", nargs="*", default=["tcae", "tae", "no_cycles", "tae_landmarks"])
    parser.add_argument("--extra", nargs="*", default=[], help="more rows: NAME=key=value,key=value (recipe overrides)")
    parser.add_argument("--encoder", nargs="*", default=[], metavar="NAME=PATH",
                        help="more rows: encoder/ folders already trained (probed as they are; no pretraining)")
    parser.add_argument("--curve-points", type=int, default=5, help="checkpoints kept (and probed) per row")
    parser.add_argument("--jobs", type=int, default=1, help="pretraining processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per pretraining process")
    parser.add_argument("--frame-step", type=int, default=2, help="probe every n-th frame of each track")
    parser.add_argument("--pairs-per-track", type=int, default=100)
    parser.add_argument("--field-pairs", type=int, default=256, help="test pairs for the landmark field errors")
    parser.add_argument("--au-map", default=None, help="a .py file with AU_NAMES and blendshapes_to_aus(scores, names)")
    parser.add_argument("--test-clips", nargs="+", default=list(TEST_CLIPS),
                        help="probe-test clips (video keys); default: the fixed identity-disjoint split above")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-curves", action="store_true", help="probe only the last checkpoint of each row")
    parser.add_argument("--recipe-override", nargs="*", default=[], help="extra recipe overrides for every row")
    args = parser.parse_args(argv)
    args.cache = args.cache or str(Path(args.out) / "real_cache")
    torch.set_num_threads(max(1, args.threads))
    torch.set_flush_denormal(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # ---------------------------------------------------------------- data, split, pretraining
    source, model_cache, view = prepare_data(args)
    print(f"test clips: {', '.join(args.test_clips)}; same-speaker groups on the pretraining side: {SAME_SPEAKER}", flush=True)
    standard = model_variants(args.streams, args.landmark_weight)
    unknown = set(args.models) - set(standard)
    if unknown:
        raise SystemExit(f"--models {sorted(unknown)}: unknown; use --extra NAME=overrides for new rows")
    variants = {name: standard[name] for name in args.models}  # pretrained in this order
    variants.update(parse_extra(args.extra))
    given = parse_encoders(args.encoder, set(variants) | {"untrained"})
    common = common_overrides(args, view)
    spent = run_pretraining({name: common + extra for name, extra in variants.items()}, out, args.steps, args.jobs,
                            args.threads)

    # ---------------------------------------------------------------- frames, baselines
    cache = FaceTrackCache(model_cache)
    frames = rp.load_real_frames(cache, source.root, lambda names: load_au_mapping(args.au_map, names), args.frame_step)
    split = rp.split_rows(frames.clips, args.test_clips)
    pairs = rp.split_pairs(frames, split, args.pairs_per_track, args.seed)
    active = rp.active_targets(frames.aus, split)
    print(f"frames: {len(frames)} ({len(split.fit)} fit, {len(split.test)} test); {int(active.sum())} of "
          f"{len(frames.au_names)} AUs vary in both", flush=True)
    results = {"settings": vars(args), "pretraining": {k: v for k, v in spent.items() if k in variants}, "data": {
        "frames": len(frames), "clips": int(len(set(frames.clips))), "fit_frames": int(len(split.fit)),
        "test_frames": int(len(split.test)), "fit_clips": int(len(set(frames.clips[split.fit]))),
        "test_clips": list(args.test_clips), "same_speaker": SAME_SPEAKER, "au_mapping": frames.mapping,
        "active_aus": [n for n, keep in zip(frames.au_names, active) if keep],
        "pretrain_tracks": len(FaceTrackCache(view).tracks),
        "reference_std_test": {"aus": dict(zip(frames.au_names, frames.aus[split.test].std(0).tolist())),
                               "angles": dict(zip(("pitch", "yaw", "roll"), frames.angles[split.test].std(0).tolist()))}},
        "baselines": {}, "encoders": {}, "curves": {}}
    for name, features in baseline_features(frames, split, args).items():
        results["baselines"][name] = rp.score_features(features, frames, split, pairs, active).to_dict()
        print(f"probed {name}: {results['baselines'][name]['summary']}", flush=True)

    # ---------------------------------------------------------------- encoders and curves
    config = TAEConfig(image_size=args.size, width=args.width, embedding_dim=args.embedding_dim,
                       attention_streams=args.streams, stream_width=args.stream_width, zero_init_flow=True)
    torch.manual_seed(args.seed)  # the recipe's seed: the untrained model is the TAE's starting point
    untrained = TwinCycleAutoencoder(config)
    results["encoders"]["untrained"] = rp.score_encoder(rp.encoder_features(untrained.encoder, frames.images),
                                                        frames, split, pairs, active)
    results["diagnostics"] = {"untrained": diagnostics(untrained, frames, pairs, args)}
    hog = rp.hog_features(frames.images)
    results["diagnostics"]["hog"] = {"within_clip_share": rp.within_clip_share(hog, frames.clips)}
    results["baselines"]["untrained"] = results["encoders"]["untrained"]["action"]  # for the curves' reference lines
    first, second, titles = figure_pairs(frames, split)
    shown = {}
    for name in variants:
        points = []
        checkpoints = list(checkpoint_models(out / "models" / name, args.steps))
        for step, model in (checkpoints[-1:] if args.skip_curves else checkpoints):
            last = step == checkpoints[-1][0]
            scored = cached(out / "models" / name / "probes" / f"step_{step:08d}.json", probe_key(args, last), lambda: {
                "scores": rp.score_encoder(rp.encoder_features(model.encoder, frames.images), frames, split, pairs,
                                           active),
                "diagnostics": diagnostics(model, frames, pairs, args) if last else None})
            points.append({"step": step, "pairs_seen": step * args.batch_size,
                           **{emb: scored["scores"][emb]["summary"] for emb in scored["scores"]}})
            if last:
                results["encoders"][name] = scored["scores"]
                shown[name] = rp.attention_and_fields(model, frames.images[first], frames.images[second])
                results["diagnostics"][name] = scored["diagnostics"]
        results["curves"][name] = points
        print(f"probed {name}: action {results['encoders'][name]['action']['summary']}, "
              f"pose {results['encoders'][name]['pose']['summary']}", flush=True)
    results["given_encoders"] = {}
    for name, path in given.items():
        row = encoder_row(name, path, cache, frames, split, pairs, active, args, out)
        results["encoders"][name], results["diagnostics"][name] = row["scores"], row["diagnostics"]
        model = final_model(path, row["trained"]["step"])
        if model is not None:
            shown[name] = rp.attention_and_fields(model, frames.images[first], frames.images[second])
        results["given_encoders"][name] = {**row["trained"], "drawn": model is not None}
        print(f"probed {name} ({path}): action {row['scores']['action']['summary']}, "
              f"pose {row['scores']['pose']['summary']}", flush=True)
    del results["baselines"]["untrained"]
    results["minutes_total"] = (time.perf_counter() - started) / 60

    text = report(results)
    print("\n" + text)
    write_text(out / "bench_real_probes.json", json.dumps(results, indent=2, default=str))
    write_text(out / "bench_real_probes.md", text + "\n")
    if shown:
        rp.save_attention_sheet(out / "attention_fields.png", frames.images[first], frames.images[second], shown, titles)
    if results["curves"]:  # pretrained rows only: given encoders have no checkpoints to draw a curve from
        save_curves(out / "curves.png", results["curves"], {
            "hog": results["baselines"]["hog"]["summary"], "untrained": results["encoders"]["untrained"]["action"]["summary"]})
    written = ["bench_real_probes.md", "bench_real_probes.json"] + ["attention_fields.png"] * bool(shown) \
        + ["curves.png"] * bool(results["curves"])
    print(f"\nwritten: {', '.join(str(out / name) for name in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
