"""Do pretrained embeddings predict OpenFace's AUs and head pose? A check that MediaPipe plays no part in.

    python tools/bench_openface_probes.py --out runs/bench_openface_probes \\
        --encoder tae_real=runs/pretrain_tae_real/encoder no_readouts=runs/no_readouts/encoder

The shared clips with OpenFace 2.0.2 output (default: WolfgangLanger_Pexels, single_face) are prepared
once into ``<out>/cache`` (MediaPipe, every frame, at the encoders' crop side) and matched to OpenFace's
rows by frame number. Rows: each ``--encoder`` (action and pose embeddings), the untrained encoder of
the same architecture (``--seed``), HOG of the crop, raw pixels reduced by PCA to the embedding size
(fitted on every frame, no labels), and two references: the aligned landmark geometry and MediaPipe's
own blendshape scores. Probes: ridge, leave-one-time-block-out within the clips
(:mod:`video_fer.evaluate.openface_probes`); Pearson r per OpenFace AU intensity and head angle.
Written to ``<out>``: ``bench_openface_probes.md`` and ``.json``. The cache is reused by a rerun.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from video_fer.data.cache import FaceTrackCache
from video_fer.data.prepare import prepare_videos
from video_fer.evaluate import openface_probes as op
from video_fer.evaluate import real_probes as rp
from video_fer.evaluate.openface import read_openface_csv
from video_fer.evaluate.pretrain_runs import parse_encoders
from video_fer.evaluate.tables import markdown_table
from video_fer.faces.alignment import check_encoder_crops
from video_fer.io import atomic_write
from video_fer.models.checkpoint import load_encoder
from video_fer.models.tae import TAEConfig, TwinCycleAutoencoder

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("WolfgangLanger_Pexels", "single_face")
BASELINE_ROWS = ("untrained", "hog", "pixels_pca", "landmarks (reference)", "mediapipe_blendshapes (reference)")


def report(results: dict) -> str:
    def f(value):
        return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"

    header = ["features", "action→AU r", "pose→angles r", "pose→yaw r", "pose→AU r (cross)", "action→angles r (cross)"]
    rows = []
    for name, result in results["encoders"].items():
        action, pose = result["action"], result["pose"]
        rows.append([name, f(action["au_r"]), f(pose["angles_r"]), f(pose["per_angle"]["yaw"]), f(pose["au_r"]),
                     f(action["angles_r"])])
    for name, result in results["baselines"].items():
        rows.append([name, f(result["au_r"]), f(result["angles_r"]), f(result["per_angle"]["yaw"]), "", ""])
    data = results["data"]
    lines = [f"Clips: {', '.join(f'{k} ({v} frames)' for k, v in data['frames'].items())}; OpenFace AUs scored "
             f"(vary in every clip): {', '.join(data['active_aus'])}. Ridge, {data['blocks']} time blocks per clip, "
             f"gap {data['gap']} frames; Pearson r within each predicted block, mean over the blocks. Within-person scores.",
             "", markdown_table(header, rows)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_openface_probes")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared assets folder")
    parser.add_argument("--clips", nargs="+", default=list(CLIPS),
                        help="video keys: <shared>/data/videos/KEY.mp4 with <shared>/data/openface/KEY.openface.csv")
    parser.add_argument("--encoder", nargs="*", default=[], metavar="NAME=PATH", help="encoder/ folders to probe")
    parser.add_argument("--size", type=int, default=None, help="crop side (default: the first encoder's, else 128)")
    parser.add_argument("--landmarker-model", default=None,
                        help="MediaPipe face_landmarker.task (default <shared>/models/mediapipe/face_landmarker.task)")
    parser.add_argument("--blocks", type=int, default=4, help="time blocks per clip (leave-one-out)")
    parser.add_argument("--gap", type=int, default=12, help="frames beside a predicted block left out of its fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained encoder")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    shared, out = Path(args.shared), Path(args.out)
    started = time.perf_counter()

    encoders = {name: load_encoder(path) for name, path in parse_encoders(args.encoder, set(BASELINE_ROWS)).items()}
    first = next(iter(encoders.values()), None)
    size = args.size or (first.encoder.config.image_size if first else 128)
    videos = [shared / "data" / "videos" / f"{key}.mp4" for key in args.clips]
    csvs = [shared / "data" / "openface" / f"{key}.openface.csv" for key in args.clips]
    missing = [str(path) for path in videos + csvs if not path.is_file()]
    if missing:
        raise SystemExit(f"{missing}: not found; give --shared or --clips with a video and an OpenFace CSV each")
    tables = {key: read_openface_csv(path) for key, path in zip(args.clips, csvs)}
    model = args.landmarker_model or shared / "models" / "mediapipe" / "face_landmarker.task"
    prepare_videos(videos, out / "cache", landmarker="mediapipe", landmarker_options={"model_path": str(model)},
                   size=size)
    cache = FaceTrackCache(out / "cache")
    frames = op.load_openface_frames(cache, tables)
    folds = op.block_folds(frames.clips, frames.positions, args.blocks, args.gap)
    active = op.active_aus(frames)
    counts = {key: int((frames.clips == key).sum()) for key in args.clips}
    active_names = [name for name, keep in zip(frames.au_names, active) if keep]
    print(f"{len(frames)} frames matched to OpenFace ({counts}); AUs that vary in every clip: {active_names}",
          flush=True)

    torch.manual_seed(args.seed)
    config = first.encoder.config if first else TAEConfig(image_size=size, width=16, embedding_dim=128,
                                                           attention_streams=4, stream_width=32)
    models = {"untrained": TwinCycleAutoencoder(config).encoder}
    for name, export in encoders.items():
        check_encoder_crops(cache.alignment, export.crops, f"--encoder {name}={export.path}")
        models[name] = export.encoder
    results = {"data": {"frames": counts, "active_aus": active_names,
                        "blocks": args.blocks, "gap": args.gap, "size": size,
                        "encoders": {name: str(export.path.resolve()) for name, export in encoders.items()}},
               "encoders": {}, "baselines": {}}
    for name, encoder in models.items():
        features = rp.encoder_features(encoder, frames.images)
        results["encoders"][name] = {part: op.score(features[part], frames, folds, active) for part in ("action", "pose")}
        print(f"probed {name}: action→AU {results['encoders'][name]['action']['au_r']:.3f}", flush=True)
    baselines = {"hog": rp.hog_features(frames.images),
                 "pixels_pca": rp.pixel_pca_features(frames.images, np.arange(len(frames)), config.embedding_dim),
                 "landmarks (reference)": rp.landmark_features(frames.landmarks, size)}
    if frames.blendshapes is not None:
        baselines["mediapipe_blendshapes (reference)"] = torch.from_numpy(frames.blendshapes).float()
    for name, features in baselines.items():
        results["baselines"][name] = op.score(features, frames, folds, active)
    results["seconds"] = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "bench_openface_probes.json") as handle:
        handle.write(json.dumps(results, indent=1))
    table = report(results)
    with atomic_write(out / "bench_openface_probes.md") as handle:
        handle.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
