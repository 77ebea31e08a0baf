"""Face front ends compared: recall, false faces and CPU ms per frame on generated clips and the shared videos.

    python tools/bench_faces.py [--clips NAME ...] [--videos PATH ...] [--front-ends mediapipe-zoom mediapipe]
                                [--repeat 2] [--min-track 5] [--landmark-every 1] [--markdown]

Rows: each generated clip (video_fer.evaluate.face_clips: small, turned, many, crossing, cut-out
faces, with box truth), each shared video (one face per frame except the known no-face frames),
and the no-face frames of the shared clips as they are and mirrored (a stress set).
Columns: recall (faces found / expected), false faces, CPU ms per frame (process CPU time, all
threads; MediaPipe runs its own), and each front end's CPU over the first one's. Faces of tracks
shorter than ``--min-track`` frames are removed first, as ``prepare`` and ``track`` drop them.
The front ends run alternately on each clip, ``--repeat`` times, and the smallest CPU of each
counts: the machine is shared, so compare the ratios of one run.

Front ends: ``mediapipe-zoom`` (the default of prepare and track) and ``mediapipe`` (MediaPipe's
landmarker alone, VIDEO mode), both with 8 faces, no blendshapes and no per-frame detector scores.
With ``--landmark-every K`` each runs through :class:`video_fer.faces.keyframes.KeyframeLandmarks`
(landmarks on every K-th frame, as ``track``).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from video_fer.evaluate.face_clips import CLIP_NAMES, NO_FACE_FRAMES, SharedMedia, build_clip, no_face_clips
from video_fer.evaluate.face_finding import (FindingScore, drop_short_tracks, find_faces_in_frames,
                                             find_faces_with_keyframes, score_clip, score_video)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "mediapipe" / "face_landmarker.task"
DEFAULT_VIDEOS = sorted(str(p.relative_to(SHARED)) for folder in ("data/videos", "data/pretrain")
                        for p in (SHARED / folder).glob("*") if p.suffix in (".mp4", ".mov"))


def make_front_end(name: str):
    from video_fer.faces import create_landmarker

    options = dict(model_path=MODEL, num_faces=8, blendshapes=False, detector_scores=False, download=False)
    return create_landmarker(name, **options)


def run_clip(front_ends: dict, frames: np.ndarray, timestamps: np.ndarray, repeat: int, min_track: int, every: int):
    """Faces (of the last run), the least CPU ms per frame and the keyframe counters of each front end, alternating
    runs."""
    faces, cpu, counters = {}, {name: float("inf") for name in front_ends}, {name: {} for name in front_ends}
    for _ in range(repeat):
        for name, front in front_ends.items():
            if every > 1:
                found, ms = find_faces_with_keyframes(front, frames, timestamps, every, counters=counters[name])
            else:
                found, ms = find_faces_in_frames(front, frames, timestamps)
            faces[name], cpu[name] = drop_short_tracks(found, min_track), min(cpu[name], ms)
    return faces, cpu, counters


def row(score: FindingScore, name: str, ratio: float | None, counters: dict) -> str:
    recall = f"{100 * score.recall:.1f}% ({score.found}/{score.expected})" if score.expected else "-"
    ratio_text = "" if ratio is None else f"{ratio:.2f}"
    gaps = f" {counters['gap_filled']} / {counters['probes']} |" if counters else ""
    return f"| {score.name} | {name} | {score.frames} | {recall} | {score.false} | {score.cpu_ms:.1f} | {ratio_text} |" + gaps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="*", default=list(CLIP_NAMES))
    parser.add_argument("--videos", nargs="*", default=DEFAULT_VIDEOS, help="paths, or relative to the shared folder")
    parser.add_argument("--front-ends", nargs="+", default=["mediapipe", "mediapipe-zoom"])
    parser.add_argument("--no-face", choices=("both", "plain", "none"), default="both",
                        help="no-face frames of the shared clips: as they are and mirrored (both), as they are, none")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--min-track", type=int, default=5)
    parser.add_argument("--landmark-every", type=int, default=1)
    args = parser.parse_args(argv)
    if not MODEL.exists():
        raise SystemExit(f"needs the shared folder {SHARED} (MediaPipe bundle, videos)")

    import torch

    torch.set_num_threads(1)
    media = SharedMedia(SHARED)
    suffix = f" (every {args.landmark_every})" if args.landmark_every > 1 else ""
    fronts = {name + suffix: make_front_end(name) for name in args.front_ends}
    first = next(iter(fronts))
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; repeat {args.repeat}, "
          f"tracks under {args.min_track} frames dropped\n")
    gaps = " gap-filled frames / probes |" if args.landmark_every > 1 else ""
    print("| clip | front end | frames | recall | false faces | CPU ms/frame | CPU / " + first + " |" + gaps)
    print("|---|---|---|---|---|---|---|" + ("---|" if gaps else ""))
    totals: dict[str, list[FindingScore]] = {name: [] for name in fronts}

    def report(label: str, frames, timestamps, score_of) -> None:
        faces, cpu, counters = run_clip(fronts, frames, timestamps, args.repeat, args.min_track, args.landmark_every)
        for name in fronts:
            score = score_of(label, faces[name], cpu[name])
            totals[name].append(score)
            print(row(score, name, cpu[name] / cpu[first] if name != first else None, counters[name]), flush=True)

    started = time.perf_counter()
    for name in args.clips:
        clip = build_clip(name, media, key_every=max(args.landmark_every, 2))
        report(name, clip.frames, clip.timestamps, lambda label, faces, cpu: score_clip(label, clip.truth, faces, cpu))
    for video in args.videos:  # decoded one at a time and let go (the shared folder holds ~8,000 frames)
        from video_fer.video import VideoReader

        path = Path(video) if Path(video).is_absolute() else SHARED / video
        with VideoReader(path) as reader:
            frames = reader.get(np.arange(len(reader))).numpy()
        no_face = np.zeros(len(frames), bool)
        if path.name in NO_FACE_FRAMES:
            no_face[NO_FACE_FRAMES[path.name](len(frames))] = True
        report(path.name, frames, np.arange(len(frames)) / 25.0,
               lambda label, faces, cpu: score_video(label, faces, no_face, cpu))
        del frames
    for mirrored in {"both": (False, True), "plain": (False,), "none": ()}[args.no_face]:
        for name, frames in no_face_clips(media, mirrored):
            label = f"{name} no-face frames" + (" mirrored" if mirrored else "")
            report(label, frames, np.arange(len(frames)) / 25.0,
                   lambda label, faces, cpu: score_video(label, faces, np.ones(len(faces), bool), cpu))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s")
    for name, scores in totals.items():
        clips = [s for s in scores if s.name in args.clips and s.expected]
        no_face = [s for s in scores if "no-face" in s.name]
        frames = sum(s.frames for s in scores)
        print(f"{name}: lowest recall on the generated clips {100 * min((s.recall for s in clips), default=np.nan):.1f}%, "
              f"false faces on the no-face frames {sum(s.false for s in no_face if 'mirrored' not in s.name)} "
              f"(mirrored {sum(s.false for s in no_face if 'mirrored' in s.name)}) in "
              f"{sum(s.frames for s in no_face if 'mirrored' not in s.name)} frames each, "
              f"mean CPU {sum(s.cpu_ms * s.frames for s in scores) / max(frames, 1):.1f} ms/frame")
    for front in fronts.values():
        front.close()


if __name__ == "__main__":
    main()
