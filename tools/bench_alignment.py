"""Alignment cost per face against the face's size: prepare's crops with and without shrinking first.

A real face (``single_face.mp4``, frame 0) is scaled so that it is FACE px tall (landmark
extent, as the face sizes elsewhere in the project) in a frame big enough to hold it, and ``--faces`` copies of it are aligned in one call by
``align_in_regions`` (prepare's path) with ``shrink_first=True`` (default: each window resized by the exact
factor that leaves the warp at most a 1.5x shrink) and ``False`` (the full-resolution Gaussian before), and by
``shrink_then_align`` (track's path, the same crops as floats).
Prints CPU ms per face (the best of ``--repeat`` paired runs, one torch thread) and how far the
crops of the two prepare paths are apart (grey levels of 255); the matrices are the same (tested).

    python tools/bench_alignment.py [--size 256] [--faces 8] [--repeat 5] [--face-sizes 60 120 200 300 440 600]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, AlignmentSpec
from video_fer.faces.crops import align_in_regions, shrink_then_align
from video_fer.video import VideoReader

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FACE_HEIGHT = 191  # single_face.mp4's mesh box: x 217-368, y 100-291


def scene(face_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(1, H, W, 3)`` frame with the face ``face_px`` tall, and landmarks ``(68, 2)`` of that extent there."""
    with VideoReader(SHARED / "data/videos/single_face.mp4") as reader:
        frame = reader.get([0]).permute(0, 3, 1, 2).float()
    scale = face_px / FACE_HEIGHT
    big = F.interpolate(frame, scale_factor=scale, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    centre = torch.tensor([292.0, 195.0]) * scale
    canonical = torch.from_numpy(CANONICAL_LANDMARKS_68.copy())
    landmarks = (canonical - 0.5) * face_px / float(canonical[:, 1].max() - canonical[:, 1].min()) + centre
    return big.permute(0, 2, 3, 1).contiguous(), landmarks.float()


def cpu_ms(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return best * 1000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="crop side (prepare's default 256)")
    parser.add_argument("--faces", type=int, default=8, help="faces aligned per call")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--face-sizes", type=int, nargs="+", default=[60, 120, 200, 300, 440, 600])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = AlignmentSpec(size=args.size)
    print(f"crop {args.size} px, {args.faces} faces per call, CPU ms per face (best of {args.repeat}), one thread\n")
    print("| face px | shrink first (prepare now) | full-resolution Gaussian (before) | track's shrink_then_align "
          "| crops apart: mean / max grey levels |")
    print("|---|---|---|---|---|")
    for face_px in args.face_sizes:
        frames, landmarks = scene(face_px)
        batch = landmarks[None].repeat(args.faces, 1, 1)
        positions = torch.zeros(args.faces, dtype=torch.long)
        new = cpu_ms(lambda: align_in_regions(frames, batch, positions, spec), args.repeat) / args.faces
        old = cpu_ms(lambda: align_in_regions(frames, batch, positions, spec, shrink_first=False), args.repeat)
        fast = cpu_ms(lambda: shrink_then_align(frames, batch, positions, spec), args.repeat) / args.faces
        crops = align_in_regions(frames, batch[:1], positions[:1], spec)[0].int()
        full = align_in_regions(frames, batch[:1], positions[:1], spec, shrink_first=False)[0].int()
        apart = (crops - full).abs().float()
        print(f"| {face_px} | {new:.1f} | {old / args.faces:.1f} | {fast:.1f} | {apart.mean():.2f} / {apart.max():.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
