"""Throughput of `video-fer prepare` against its parts, measured in one run.

Prints frames/s of
  1. decode only (VideoReader, the same frames prepare reads),
  2. decode + landmarker (what prepare can at best reach with this landmarker),
  3. prepare end to end (detection, tracking, alignment, H.264 encoding, writing), with
     the align/encode stage in a background thread (default) and in the main thread,
and their ratios, plus the time split per stage of each prepare run.

    python tools/bench_prepare.py [VIDEO ...] [--landmarker-model face_landmarker.task] [--fps F] [--repeat N]

Without videos it uses ../shared/data/videos. Numbers depend on the machine's load: compare
the ratios of one run, not numbers of different runs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from video_fer.data.inputs import expand_inputs
from video_fer.data.prepare import DEFAULT_BATCH_SIZE, STAGES, prepare_videos, sample_frame_indices
from video_fer.errors import VideoReadError
from video_fer.video import VideoReader

PROJECT_ROOT = Path(__file__).resolve().parents[1]

SHARED_VIDEOS = PROJECT_ROOT.parent / "shared" / "data" / "videos"
SHARED_MODEL = PROJECT_ROOT.parent / "shared" / "models" / "mediapipe" / "face_landmarker.task"


def readable_videos(paths: list[Path]) -> list[Path]:
    videos = []
    for video in expand_inputs(paths):
        try:
            VideoReader(video.path).close()
            videos.append(video.path)
        except VideoReadError as error:
            print(f"skipping {error}")
    return videos


def frames_of(reader: VideoReader, fps: float | None) -> np.ndarray:
    return sample_frame_indices(reader.timestamps, reader.fps, fps)


def decode_only(videos: list[Path], fps: float | None, batch_size: int) -> tuple[int, float]:
    """Frames decoded and seconds, reading exactly what prepare reads."""
    frames, started = 0, time.perf_counter()
    for path in videos:
        reader = VideoReader(path)
        indices = frames_of(reader, fps)
        if len(indices) == reader.num_frames:
            for batch_indices, _ in reader.iter_batches(batch_size=batch_size):
                frames += len(batch_indices)
        else:
            for first in range(0, len(indices), batch_size):
                frames += len(reader.get(indices[first:first + batch_size]))
    return frames, time.perf_counter() - started


def decode_and_landmarks(videos: list[Path], fps: float | None, batch_size: int, options: dict) -> tuple[int, float]:
    from video_fer.faces import create_landmarker

    landmarker = create_landmarker("mediapipe", **options)
    frames, started = 0, time.perf_counter()
    try:
        for path in videos:
            reader = VideoReader(path)
            indices = frames_of(reader, fps)
            landmarker.start_clip(str(path), reader.fps)
            for first in range(0, len(indices), batch_size):
                chunk = indices[first:first + batch_size]
                landmarker(reader.get(chunk), chunk, reader.timestamps[chunk])
                frames += len(chunk)
    finally:
        landmarker.close()
    return frames, time.perf_counter() - started


def prepare_run(videos: list[Path], fps: float | None, batch_size: int, options: dict, pipelined: bool):
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as out:
        summary = prepare_videos(videos, Path(out) / "cache", landmarker_options=options, fps=fps, batch_size=batch_size,
                                 progress=False, pipelined=pipelined)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", type=Path, help=f"videos or folders (default {SHARED_VIDEOS})")
    parser.add_argument("--landmarker-model", type=Path, default=SHARED_MODEL)
    parser.add_argument("--fps", type=float, default=None, help="subsample as prepare --fps does")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeat", type=int, default=1, help="repeat each measurement, keep the fastest")
    args = parser.parse_args()

    videos = readable_videos(args.videos or [SHARED_VIDEOS])
    options = {"model_path": str(args.landmarker_model)}
    print(f"{len(videos)} videos, fps={args.fps or 'all frames'}, batch size {args.batch_size}")

    def best(measure):
        runs = [measure() for _ in range(max(1, args.repeat))]
        return min(runs, key=lambda run: run[1])

    decoded, decode_seconds = best(lambda: decode_only(videos, args.fps, args.batch_size))
    searched, landmark_seconds = best(lambda: decode_and_landmarks(videos, args.fps, args.batch_size, options))
    results = {}
    for label, pipelined in (("prepare (one thread)", False), ("prepare (pipelined)", True)):
        runs = [prepare_run(videos, args.fps, args.batch_size, options, pipelined) for _ in range(max(1, args.repeat))]
        results[label] = min(runs, key=lambda summary: summary.seconds)

    rates = {"decode only": decoded / decode_seconds, "decode + landmarks": searched / landmark_seconds}
    rates.update({label: s.frames / s.seconds for label, s in results.items()})
    print(f"\n{'':24s}{'frames':>8s}{'seconds':>10s}{'frames/s':>10s}")
    print(f"{'decode only':24s}{decoded:8d}{decode_seconds:10.2f}{rates['decode only']:10.1f}")
    print(f"{'decode + landmarks':24s}{searched:8d}{landmark_seconds:10.2f}{rates['decode + landmarks']:10.1f}")
    for label, s in results.items():
        print(f"{label:24s}{s.frames:8d}{s.seconds:10.2f}{rates[label]:10.1f}   "
              f"({s.tracks} tracks, {s.skipped} skipped)")
    pipelined, sequential = rates["prepare (pipelined)"], rates["prepare (one thread)"]
    print("\nratios (prepare's default is one thread)")
    print(f"  prepare / decode only                      {sequential / rates['decode only']:.3f}")
    print(f"  prepare / decode + landmarks               {sequential / rates['decode + landmarks']:.3f}")
    print(f"  prepare pipelined / one thread             {pipelined / sequential:.3f}")
    print("\nstage seconds (stages of the pipelined run overlap, so they can sum to more than its wall time)")
    print(f"{'':24s}" + "".join(f"{stage:>11s}" for stage in STAGES) + f"{'wall':>11s}")
    for label, s in results.items():
        print(f"{label:24s}" + "".join(f"{s.stage_seconds.get(stage, 0.0):11.2f}" for stage in STAGES) + f"{s.seconds:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
