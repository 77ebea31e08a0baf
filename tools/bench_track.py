"""Benchmark `video-fer track`: end-to-end frames per second, ratio to decode-only, peak memory.

Every track run is a whole process (``python -m video_fer.cli_track track CLIP --model BUNDLE``:
interpreter start, imports, model loading, MediaPipe start-up, tracking, writing the CSV), timed
from outside; its peak resident memory comes from ``os.wait4``. Decode-only speed (decord, the
same clip, every frame, the reader ``track`` uses) is measured in the same run, so the ratio
compares like with like on however busy the machine is at that moment.

The bundle is built with random weights (outputs mean nothing; speed does not depend on the
weights): a TAE encoder (``--width``, ``--image-size``, K attention streams), the papers' linear
AU probe (12 BP4D AUs), an expression head (``--expression-head``) and the two-level attention
VA head.

``--long-repeats N`` also writes a long clip (all shared videos, resized to 640x360, repeated N
times) and tracks it, to show that peak memory does not grow with the clip's length.

    python tools/bench_track.py                         # reference widths at 128 px, 3 runs each
    python tools/bench_track.py --width 16 --embedding-dim 128 --streams 4 --stream-width 32   # the recipe's demo size
    python tools/bench_track.py --variants              # also: no pipelining, no detector scores
    python tools/bench_track.py --long-repeats 6
    python tools/bench_track.py --stages                # CPU cost of each stage, in process
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

DEFAULT_CLIP = PROJECT_ROOT.parent / "shared" / "data" / "videos" / "WolfgangLanger_Pexels.mp4"
DEFAULT_MODEL = PROJECT_ROOT.parent / "shared" / "models" / "mediapipe" / "face_landmarker.task"


def run_process(command: list[str]) -> tuple[float, float, int, float]:
    """Run a command; ``(wall seconds, peak RSS MiB, exit code, CPU seconds user + system)``."""
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        print(errors[-2000:], file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024.0, process.returncode, usage.ru_utime + usage.ru_stime


def stage_costs(clip: Path, landmarker_model: Path, bundle_dir: Path, frames_limit: int = 240) -> dict[str, float]:
    """CPU milliseconds per frame of each stage, run one after the other (no pipelining), torch on one thread.

    Process CPU time, because MediaPipe and decord compute in threads of their own.
    """
    import numpy as np
    import torch

    from video_fer.bundle import load_bundle
    from video_fer.data.prepare import align_in_regions
    from video_fer.faces import create_landmarker
    from video_fer.head_pose import estimate_head_pose
    from video_fer.tracks import shrink_then_align
    from video_fer.video import VideoReader

    torch.set_num_threads(1)
    bundle = load_bundle(bundle_dir).to(memory_format=torch.channels_last)
    names = ("decode", "landmarks + detector scores", "align (fast)", "align (exact, as prepare)", "network", "head pose")
    costs = dict.fromkeys(names, 0.0)
    landmarker = create_landmarker("mediapipe", model_path=str(landmarker_model), blendshapes=False)
    landmarker.start_clip(str(clip), 24.0)

    def timed(name, function, *arguments):
        clock = time.process_time()
        value = function(*arguments)
        costs[name] += time.process_time() - clock
        return value

    count = 0
    with VideoReader(clip) as reader:
        for first in range(0, min(frames_limit, len(reader)), 32):
            indices = np.arange(first, min(first + 32, frames_limit, len(reader)))
            frames = timed("decode", reader.get, indices)
            per_frame = timed("landmarks + detector scores", landmarker, frames, indices, reader.timestamps[indices])
            positions = torch.tensor([p for p, faces in enumerate(per_frame) for _ in faces], dtype=torch.long)
            landmarks = torch.from_numpy(
                np.array([f.landmarks for faces in per_frame for f in faces], np.float32).reshape(-1, 68, 2))
            count += len(indices)
            if not len(positions):
                continue
            crops, crop_landmarks = timed("align (fast)", shrink_then_align, frames, landmarks, positions,
                                          bundle.alignment)
            timed("align (exact, as prepare)", align_in_regions, frames, landmarks, positions, bundle.alignment)
            images = crops.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                timed("network", bundle, images, crop_landmarks)
            timed("head pose", estimate_head_pose, landmarks)
    landmarker.close()
    return {name: 1000.0 * value / count for name, value in costs.items()}


def decode_only_fps(clip: Path, batch_size: int = 32) -> tuple[float, int]:
    from video_fer.video import VideoReader

    started = time.perf_counter()
    with VideoReader(clip) as reader:
        frames = sum(len(indices) for indices, _ in reader.iter_batches(batch_size))
    return frames / (time.perf_counter() - started), frames


def build_bundle(directory: Path, args) -> None:
    from video_fer.bundle import random_bundle, save_bundle

    bundle = random_bundle(image_size=args.image_size, width=args.width, embedding_dim=args.embedding_dim,
                           attention_streams=args.streams, stream_width=args.stream_width,
                           expression_head=args.expression_head, va=True)
    save_bundle(bundle, directory)


def write_long_clip(path: Path, repeats: int) -> int:
    """All shared videos at 640x360 (the 960x540 ones resized), repeated; returns the frame count."""
    from fractions import Fraction

    import av
    import torch
    import torch.nn.functional as F

    from video_fer.video import VideoReader

    videos = sorted(DEFAULT_CLIP.parent.iterdir())
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=Fraction(24))
    stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
    stream.options = {"crf": "23", "preset": "veryfast"}
    count = 0
    for _ in range(repeats):
        for video in videos:
            with VideoReader(video) as reader:
                for _, frames in reader.iter_batches(32):
                    if frames.shape[1:3] != (360, 640):
                        frames = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(360, 640), mode="bilinear",
                                               antialias=True, align_corners=False)
                        frames = frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
                    for frame in frames.numpy():
                        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                            container.mux(packet)
                        count += 1
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--landmarker-model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--runs", type=int, default=3, help="track runs per variant (median reported)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--stream-width", type=int, default=64)
    parser.add_argument("--expression-head", default="linear", choices=("linear", "acnn"))
    parser.add_argument("--variants", action="store_true", help="also time --no-pipeline, detector_scores=false, --exact-alignment")
    parser.add_argument("--long-repeats", type=int, default=0, help="also track a long concatenated clip")
    parser.add_argument("--stages", action="store_true", help="also print the CPU cost of each stage (in process)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_track_"))
    bundle = work / "bundle"
    build_bundle(bundle, args)
    print(f"bundle: random weights, {args.image_size} px, width {args.width}, D {args.embedding_dim}, "
          f"K {args.streams}x{args.stream_width}, heads: AU linear (12), expression {args.expression_head}, VA two-level")
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")

    base = [sys.executable, "-m", "video_fer.cli_track", "track", "--model", str(bundle),
            "--landmarker-model", str(args.landmarker_model), "--no-progress"]
    variants = {"default (pipelined, detector confidence every 8th frame)": []}
    if args.variants:
        variants["--no-pipeline"] = ["--no-pipeline"]
        variants["detector on every frame (detector_scores=true)"] = ["--landmarker-option", "detector_scores=true"]
        variants["no detector (--confidence-every 0: confidence 0.5)"] = ["--confidence-every", "0"]
        variants["--exact-alignment"] = ["--exact-alignment"]

    decode_fps, frames = decode_only_fps(args.clip)
    print(f"clip: {args.clip.name}, {frames} frames; decode only (decord, in process): {decode_fps:.0f} frames/s")
    for name, extra in variants.items():
        timings, peaks, cpu = [], [], []
        for run in range(args.runs):
            seconds, peak, code, cpu_seconds = run_process(base + [str(args.clip), "-o", str(work / f"out_{run}.csv")] + extra)
            if code != 0:
                print(f"{name}: track failed (exit {code})")
                return 1
            timings.append(seconds)
            peaks.append(peak)
            cpu.append(cpu_seconds)
        wall = statistics.median(timings)
        fps = frames / wall
        print(f"track {name}: {wall:.2f} s end to end (median of {args.runs}: "
              f"{', '.join(f'{t:.2f}' for t in timings)}) = {fps:.1f} frames/s; "
              f"ratio to decode-only {fps / decode_fps:.3f}; peak RSS {max(peaks):.0f} MiB; "
              f"CPU {statistics.median(cpu):.1f} s ({1000 * statistics.median(cpu) / frames:.1f} ms/frame)")
    seconds, _, _, cpu_seconds = run_process(base + [str(args.clip), "-o", str(work / "startup.csv"), "--end", "1"])
    print(f"fixed cost (same command, one frame): {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU "
          "(interpreter, imports, bundle and MediaPipe loading)")
    if args.stages:
        costs = stage_costs(args.clip, args.landmarker_model, bundle)
        print("CPU per frame, one thread, by stage: " + ", ".join(f"{k} {v:.2f} ms" for k, v in costs.items()))
    if args.long_repeats:
        long_clip = work / "long.mp4"
        long_frames = write_long_clip(long_clip, args.long_repeats)
        seconds, peak, code, _ = run_process(base + [str(long_clip), "-o", str(work / "long.csv")])
        print(f"long clip: {long_frames} frames ({long_frames / 24 / 60:.1f} min at 24 fps): {seconds:.1f} s, "
              f"{long_frames / seconds:.1f} frames/s, peak RSS {peak:.0f} MiB, exit {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
