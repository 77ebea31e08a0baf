"""Does the TAE attention sit on brows, eyes and mouth? A number for the attention pictures, on unseen people.

    python tools/bench_attention.py --cache runs/bench_real_probes/real_cache_128 --out runs/bench_attention \\
        --encoder config=runs/pretrain_tae_real/encoder attention=runs/attention/encoder

Frames: every ``--frame-step``-th frame of the tracks of ``--clips`` (default: the real-video benchmark's
test clips, people no pretraining saw) in a face-track cache at the encoders' crop side. Per encoder and
for the untrained encoder of the first one's architecture (``--seed``): the share of the mean attention
(over the K streams) on the grid cells within one cell of a brow, eye or mouth landmark, and that share
over the cells' share of the grid (the lift: 1 = spread evenly; :func:`video_fer.evaluate.real_probes.
attention_on_features`), mean over the frames and the lowest and highest clip mean. Written to ``<out>``:
``bench_attention.md`` and ``bench_attention.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from video_fer.data.cache import FaceTrackCache
from video_fer.evaluate import real_probes as rp
from video_fer.evaluate.pretrain_runs import parse_encoders
from video_fer.evaluate.tables import markdown_table
from video_fer.io import atomic_write
from video_fer.models.checkpoint import load_encoder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="a face-track cache at the encoders' crop side")
    parser.add_argument("--encoder", nargs="+", required=True, metavar="NAME=PATH", help="encoder/ exports to score")
    parser.add_argument("--out", default="runs/bench_attention")
    parser.add_argument("--clips", nargs="+", default=list(rp.TEST_CLIPS), help="video keys of the frames to score")
    parser.add_argument("--frame-step", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained encoder")
    return parser.parse_args(argv)


def load_frames(cache: FaceTrackCache, clips: list[str], frame_step: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """uint8 crops ``(N, S, S, 3)``, their landmarks ``(N, 68, 2)`` and each frame's clip."""
    tracks = [track for track in cache.tracks if track["video_key"] in clips]
    missing = sorted(set(clips) - {track["video_key"] for track in tracks})
    if missing:
        raise SystemExit(f"--clips: {missing} have no track in {cache.root}; give video keys of its index.csv")
    images, landmarks, keys = [], [], []
    for track in tracks:
        chosen = np.arange(0, track.num_frames, frame_step)
        images.append(cache.read_frames(track.track_id, chosen))
        landmarks.append(torch.from_numpy(cache.landmarks(track.track_id)[chosen]))
        keys += [track["video_key"]] * len(chosen)
    return torch.cat(images), torch.cat(landmarks), np.array(keys)


def score(encoder, images: torch.Tensor, landmarks: torch.Tensor, clips: np.ndarray) -> dict:
    try:
        maps = rp.encoder_features(encoder, images, attention=True)["attention"]
    except ValueError as error:
        raise SystemExit(str(error)) from None
    share, lift = rp.attention_on_features(maps, landmarks, images.shape[1])
    per_clip = {clip: float(lift[torch.from_numpy(clips == clip)].mean()) for clip in sorted(set(clips))}
    return {"share": float(share.mean()), "lift": float(lift.mean()), "lift_per_clip": per_clip}


def main(argv=None) -> int:
    args = parse_args(argv)
    cache = FaceTrackCache(args.cache)
    encoders = {name: load_encoder(path).encoder for name, path in parse_encoders(args.encoder, {"untrained"}).items()}
    sizes = {name: int(encoder.config.image_size) for name, encoder in encoders.items()}
    if set(sizes.values()) != {cache.size}:
        raise SystemExit(f"--cache {args.cache} holds {cache.size} px crops; the encoders take {sizes}")
    images, landmarks, clips = load_frames(cache, args.clips, args.frame_step)
    first = next(iter(encoders.values()))
    torch.manual_seed(args.seed)
    rows = {"untrained": score(type(first)(first.config), images, landmarks, clips)}
    rows.update({name: score(encoder, images, landmarks, clips) for name, encoder in encoders.items()})
    table = [[name, f"{row['share']:.3f}", f"{row['lift']:.2f}", f"{min(row['lift_per_clip'].values()):.2f}",
              f"{max(row['lift_per_clip'].values()):.2f}"] for name, row in rows.items()]
    text = (f"Attention on brows, eyes and mouth: {len(images)} frames of {len(set(clips))} clips "
            f"({', '.join(sorted(set(clips)))}).\n\n"
            + markdown_table(["encoder", "share on brows/eyes/mouth", "lift (1 = even)", "lowest clip", "highest clip"], table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "bench_attention.md") as handle:
        handle.write(text + "\n")
    with atomic_write(out / "bench_attention.json") as handle:
        json.dump({"frames": len(images), "clips": sorted(set(clips)), "rows": rows}, handle, indent=2)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
