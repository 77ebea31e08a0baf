"""Benchmark `video-fer track`: end-to-end frames per second, ratio to decode-only, peak memory.

Every track run is a whole process (``python -m video_fer.cli track CLIP --model BUNDLE``:
interpreter start, imports, model loading, MediaPipe start-up, tracking, writing the CSV, exit),
timed from outside; its peak resident memory and CPU time come from ``os.wait4``. Decode-only
speed (the same clip, every frame, through the reader ``track`` uses) is measured in the same
run, so the ratio compares like with like on however busy the machine is at that moment; the
load average is printed before and after (wall-clock fps on a loaded 2-core machine mostly
measures the other processes: the CPU seconds per frame are the steadier figure).

The bundle is built with random weights (outputs mean nothing; speed does not depend on the
weights): a TAE encoder (``--width``, ``--image-size``, K attention streams), the papers' linear
AU probe (12 BP4D AUs), an expression head (``--expression-head``) and the two-level attention
VA head.

``--long-repeats N [N ...]`` also writes long clips (all shared videos, resized to 640x360,
repeated N times; 88 is about an hour) and tracks each, sampling the process's resident memory:
peak memory must not grow with the clip's length.
``--landmark-error`` measures what landmarks on keyframes cost in accuracy (see
:func:`keyframe_landmark_error`).

    python tools/bench_track.py                         # reference widths at 128 px, 3 runs each
    python tools/bench_track.py --width 16 --embedding-dim 128 --streams 4 --stream-width 32   # the recipe's demo size
    python tools/bench_track.py --variants              # also: bfloat16, landmarks on every frame, no pipelining ...
    python tools/bench_track.py --runs 0 --stages       # CPU cost of each stage, in process
    python tools/bench_track.py --landmark-error        # keyframe landmarks vs every frame, shared videos
    python tools/bench_track.py --runs 0 --long-repeats 1 12 88   # memory over a 41 s, an 8 min and an hour clip
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CLIP = PROJECT_ROOT.parent / "shared" / "data" / "videos" / "WolfgangLanger_Pexels.mp4"
DEFAULT_MODEL = PROJECT_ROOT.parent / "shared" / "models" / "mediapipe" / "face_landmarker.task"


def run_process(command: list[str]) -> tuple[float, float, int, float]:
    """Run a command; ``(wall seconds, peak RSS MiB, exit code, CPU seconds user + system)``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        print(errors[-2000:], file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024.0, process.returncode, usage.ru_utime + usage.ru_stime


def stage_costs(clip: Path, landmarker_model: Path, bundle_dir: Path, landmark_every: int, frames_limit: int = 240
                ) -> dict[str, float]:
    """CPU milliseconds per processed frame of each stage, run one after the other (no pipelining),
    torch on one thread, as ``track`` runs them by default.

    Process CPU time, because MediaPipe and decord compute in threads of their own.
    """
    import numpy as np
    import torch

    from video_fer.track.bundle import load_bundle
    from video_fer.data.prepare import align_in_regions
    from video_fer.faces import create_landmarker
    from video_fer.faces.keyframes import KeyframeLandmarks, image_mode_twin
    from video_fer.faces.tracking import FaceTracker
    from video_fer.faces.head_pose import estimate_head_pose
    from video_fer.faces.crops import shrink_then_align
    from video_fer.faces.detection import SparseDetectorConfidence
    from video_fer.track.run import inference_bundle
    from video_fer.track.settings import TrackSettings, default_landmarker_options
    from video_fer.video import VideoReader

    torch.set_num_threads(1)
    bundle = inference_bundle(load_bundle(bundle_dir), TrackSettings())  # BatchNorms folded, channels-last
    landmarks_name = f"landmarks (MediaPipe on every {landmark_every}. frame + interpolation)"
    names = ("decode", "landmarks (MediaPipe on every frame)", landmarks_name, "tracker",
             "confidence (detector every 8th frame)", "align (fast)", "align (exact, as prepare)", "network", "head pose")
    costs = dict.fromkeys(names, 0.0)
    options = {**default_landmarker_options("mediapipe"), "model_path": str(landmarker_model)}
    every_frame = create_landmarker("mediapipe", **options)
    landmarker = create_landmarker("mediapipe", **options)
    keyframes = KeyframeLandmarks(landmarker, landmark_every, image_mode_twin(landmarker))
    confidence = SparseDetectorConfidence(landmarker_model, 8)
    tracker = FaceTracker()

    def timed(name, function, *arguments):
        clock = time.process_time()
        value = function(*arguments)
        costs[name] += time.process_time() - clock
        return value

    def network_stages(chunk):
        from video_fer.track.stages import FaceBatch

        ids = [i for index, faces in zip(chunk.frame_indices, chunk.faces)
               for i in timed("tracker", tracker.update, int(index), faces)]
        positions = np.array([p for p, faces in enumerate(chunk.faces) for _ in faces], np.int64)
        landmarks = np.array([f.landmarks for faces in chunk.faces for f in faces], np.float32).reshape(-1, 68, 2)
        batch = FaceBatch(chunk.frame_indices, chunk.timestamps, chunk.frames, positions, landmarks,
                          np.full(len(positions), 0.5, np.float32), np.asarray(ids, np.int64))
        timed("confidence (detector every 8th frame)", confidence, batch.frames, batch.positions, batch.face_ids,
              batch.landmarks)
        if not len(positions):
            return
        landmarks, positions = torch.from_numpy(landmarks), torch.from_numpy(positions)
        crops, crop_landmarks = timed("align (fast)", shrink_then_align, chunk.frames, landmarks, positions,
                                      bundle.alignment)
        timed("align (exact, as prepare)", align_in_regions, chunk.frames, landmarks, positions, bundle.alignment)
        images = crops.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            timed("network", bundle, images, crop_landmarks)
        timed("head pose", estimate_head_pose, landmarks)

    count = 0
    with VideoReader(clip) as reader:
        every_frame.start_clip(str(clip), reader.fps)
        keyframes.start_clip(str(clip), reader.fps)
        for first in range(0, min(frames_limit, len(reader)), 32):
            indices = np.arange(first, min(first + 32, frames_limit, len(reader)))
            frames = timed("decode", reader.get, indices)
            timestamps = reader.timestamps[indices]
            timed("landmarks (MediaPipe on every frame)", every_frame, frames, indices, timestamps)
            chunk = timed(landmarks_name, keyframes.push, indices, timestamps, frames)
            count += len(indices)
            if chunk is not None:
                network_stages(chunk)
        chunk = timed(landmarks_name, keyframes.finish)
        if chunk is not None:
            network_stages(chunk)
    for closing in (keyframes, landmarker, every_frame, confidence):
        closing.close()
    return {name: 1000.0 * value / count for name, value in costs.items()}


def keyframe_landmark_error(videos: list[Path], landmarker_model: Path, steps=(2, 3, 4, 6)) -> dict[int, dict[str, float]]:
    """Landmarks on keyframes + interpolation vs MediaPipe on every frame (both VIDEO mode, as ``track``).

    Per ``landmark_every`` k: mean point distance over the 68 landmarks in % of the inter-ocular
    distance (outer eye corners 36-45 of the per-frame landmarks, the 300-W convention), over
    faces present in both runs (matched by box IoU > 0.3), on all frames and on the interpolated
    frames only; plus the frames whose face count differs, and those landmarked one by one
    because their keyframes disagreed.
    """
    import numpy as np

    from video_fer.faces import create_landmarker
    from video_fer.faces.keyframes import INTERPOLATED, KeyframeLandmarks, image_mode_twin
    from video_fer.faces.boxes import box_iou
    from video_fer.video import VideoReader

    def run(video: Path, every: int):
        landmarker = create_landmarker("mediapipe", model_path=str(landmarker_model), blendshapes=False,
                                       detector_scores=False, num_faces=4)
        keyframes = KeyframeLandmarks(landmarker, every, image_mode_twin(landmarker))
        faces, source = [], []
        with VideoReader(video) as reader:
            keyframes.start_clip(str(video), reader.fps)
            chunks = [keyframes.push(indices, reader.timestamps[indices], frames)
                      for indices, frames in reader.iter_batches(32)] + [keyframes.finish()]
        for chunk in chunks:
            if chunk is not None:
                faces += chunk.faces
                source.append(chunk.source)
        keyframes.close()
        landmarker.close()
        return faces, np.concatenate(source), keyframes.gap_filled

    results = {}
    reference = {video: run(video, 1)[0] for video in videos}
    for every in steps:
        errors, interpolated_errors, count_mismatch, gap_filled, frames = [], [], 0, 0, 0
        for video in videos:
            faces, source, filled = run(video, every)
            gap_filled += filled
            frames += len(faces)
            for truth, found, how in zip(reference[video], faces, source):
                count_mismatch += len(truth) != len(found)
                if not truth or not found:
                    continue
                overlap = box_iou(np.stack([f.box for f in truth]), np.stack([f.box for f in found]))
                for t, face in enumerate(truth):
                    best = int(overlap[t].argmax())
                    if overlap[t, best] <= 0.3:
                        continue
                    inter_ocular = np.linalg.norm(face.landmarks[36] - face.landmarks[45])
                    error = 100.0 * np.linalg.norm(found[best].landmarks - face.landmarks, axis=1).mean() / inter_ocular
                    errors.append(error)
                    if how == INTERPOLATED:
                        interpolated_errors.append(error)
        results[every] = {"mean % IOD, all frames": float(np.mean(errors)),
                          "mean % IOD, interpolated frames": float(np.mean(interpolated_errors)),
                          "p95 % IOD, interpolated frames": float(np.percentile(interpolated_errors, 95)),
                          "frames with another face count": count_mismatch, "frames landmarked in gaps": gap_filled,
                          "frames": frames}
    return results


def decode_only_fps(clip: Path, batch_size: int = 32) -> tuple[float, int]:
    from video_fer.video import VideoReader

    started = time.perf_counter()
    with VideoReader(clip) as reader:
        frames = sum(len(indices) for indices, _ in reader.iter_batches(batch_size))
    return frames / (time.perf_counter() - started), frames


def build_bundle(directory: Path, args) -> None:
    from video_fer.track.bundle import random_bundle, save_bundle

    bundle = random_bundle(image_size=args.image_size, width=args.width, embedding_dim=args.embedding_dim,
                           attention_streams=args.streams, stream_width=args.stream_width,
                           expression_head=args.expression_head, va=True)
    save_bundle(bundle, directory)


def write_long_clip(path: Path, repeats: int) -> int:
    """All shared videos at 640x360 (the 960x540 ones resized), repeated; returns the frame count.

    The videos are encoded once (x264, a keyframe at the start of each pass) and the packets of
    that pass are then copied ``repeats`` times with shifted times, so an hour-long clip is cheap.
    """
    from fractions import Fraction

    import av
    import torch
    import torch.nn.functional as F

    from video_fer.video import VideoReader

    one_pass = path.with_name(path.stem + "_once.mp4")
    with av.open(str(one_pass), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        count = 0
        for video in sorted(DEFAULT_CLIP.parent.iterdir()):
            with VideoReader(video) as reader:
                for _, frames in reader.iter_batches(32):
                    if frames.shape[1:3] != (360, 640):
                        frames = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(360, 640), mode="bilinear",
                                               antialias=True, align_corners=False)
                        frames = frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
                    for frame in frames.numpy():
                        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                        count += 1
        container.mux(stream.encode())
    with av.open(str(one_pass)) as source, av.open(str(path), mode="w") as target:
        source_stream = source.streams.video[0]
        stream = target.add_stream_from_template(source_stream)
        pass_duration = count * int(round(1 / (24 * source_stream.time_base)))  # in time-base units
        for repeat in range(repeats):
            source.seek(0, stream=source_stream)
            for packet in source.demux(source_stream):
                if packet.dts is None:  # the demuxer's final empty packet
                    continue
                packet.pts += repeat * pass_duration
                packet.dts += repeat * pass_duration
                packet.stream = stream
                target.mux(packet)
    one_pass.unlink()
    return count * repeats


def memory_trace(command: list[str], interval: float = 0.5) -> tuple[float, int, list[tuple[float, float]]]:
    """Run a command, sampling its resident memory; ``(wall seconds, exit code, [(seconds, RSS MiB)])``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, )
    samples = []
    while process.poll() is None:
        try:
            pages = int(Path(f"/proc/{process.pid}/statm").read_text().split()[1])
            samples.append((time.perf_counter() - started, pages * os.sysconf("SC_PAGE_SIZE") / 2**20))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            break
        time.sleep(interval)
    process.wait()
    return time.perf_counter() - started, process.returncode, samples


def print_memory_over_time(samples: list[tuple[float, float]], parts: int = 10) -> None:
    """Peak RSS in each tenth of the run: a flat row means memory does not grow with the clip."""
    if not samples:
        return
    seconds = samples[-1][0]
    peaks = [max((mib for t, mib in samples if k * seconds / parts <= t <= (k + 1) * seconds / parts), default=0.0)
             for k in range(parts)]
    print(f"  peak RSS per tenth of the run (MiB): {' '.join(f'{p:.0f}' for p in peaks)}")
    half = parts // 2
    print(f"  peak in the second half / peak in the first half: {max(peaks[half:]) / max(max(peaks[:half]), 1e-9):.2f}"
          " (1.00 = no growth)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--landmarker-model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--runs", type=int, default=3, help="track runs per variant (median reported; 0 = none)")
    parser.add_argument("--landmark-every", type=int, default=None,
                        help="track's --landmark-every (default: track's default)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--stream-width", type=int, default=64)
    parser.add_argument("--expression-head", default="linear", choices=("linear", "acnn"))
    parser.add_argument("--variants", action="store_true",
                        help="also time bfloat16, other --landmark-every, --no-pipeline, detector variants, "
                             "--exact-alignment")
    parser.add_argument("--long-repeats", type=int, nargs="*", default=[],
                        help="also track long clips: the shared videos (977 frames) concatenated N times, "
                             "one clip per N given (88 is about an hour at 24 fps)")
    parser.add_argument("--stages", action="store_true", help="also print the CPU cost of each stage (in process)")
    parser.add_argument("--landmark-error", action="store_true",
                        help="also measure the keyframe landmarks' error against MediaPipe on every frame "
                             "(all shared videos) and exit")
    args = parser.parse_args(argv)

    if args.landmark_error:
        videos = sorted(DEFAULT_CLIP.parent.iterdir())
        print(f"keyframe landmarks vs every frame, {len(videos)} shared videos ({', '.join(v.name for v in videos)}):")
        for every, numbers in keyframe_landmark_error(videos, args.landmarker_model).items():
            print(f"  --landmark-every {every}: " + ", ".join(
                f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}" for name, value in numbers.items()))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_track_"))
    try:
        return run_benchmarks(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # bundle, tables and the long clip


def run_benchmarks(args, work: Path) -> int:
    bundle = work / "bundle"
    build_bundle(bundle, args)
    print(f"bundle: random weights, {args.image_size} px, width {args.width}, D {args.embedding_dim}, "
          f"K {args.streams}x{args.stream_width}, heads: AU linear (12), expression {args.expression_head}, VA two-level")
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")

    base = [sys.executable, "-m", "video_fer.cli", "track", "--model", str(bundle),
            "--landmarker-model", str(args.landmarker_model), "--no-progress"]
    from video_fer.faces.keyframes import DEFAULT_LANDMARK_EVERY

    args.landmark_every = args.landmark_every or DEFAULT_LANDMARK_EVERY
    base += ["--landmark-every", str(args.landmark_every)]
    variants = {f"default (pipelined, landmarks every {args.landmark_every}. frame, detector confidence every 8th "
                "frame)": []}
    if args.variants:
        variants["--precision bfloat16"] = ["--precision", "bfloat16"]
        variants["landmarks on every frame (--landmark-every 1)"] = ["--landmark-every", "1"]
        variants["landmarks every 4th frame (--landmark-every 4)"] = ["--landmark-every", "4"]
        variants["--no-pipeline"] = ["--no-pipeline"]
        variants["detector on every frame (detector_scores=true)"] = ["--landmarker-option", "detector_scores=true"]
        variants["no detector (--confidence-every 0: confidence 0.5)"] = ["--confidence-every", "0"]
        variants["--exact-alignment"] = ["--exact-alignment"]

    decode_fps, frames = decode_only_fps(args.clip)
    print(f"clip: {args.clip.name}, {frames} frames; decode only (VideoReader.iter_batches, in process): {decode_fps:.0f} frames/s")
    for name, extra in (variants.items() if args.runs > 0 else ()):
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
    load = os.getloadavg()
    print(f"load average now {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(f"fixed cost (same command, one frame): {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU "
          "(interpreter, imports, bundle and MediaPipe loading)")
    if args.stages:
        costs = stage_costs(args.clip, args.landmarker_model, bundle, args.landmark_every)
        print("CPU per frame, one thread, by stage: " + ", ".join(f"{k} {v:.2f} ms" for k, v in costs.items()))
    for repeats in args.long_repeats:
        long_clip = work / "long.mp4"
        long_frames = write_long_clip(long_clip, repeats)
        seconds, code, samples = memory_trace(base + [str(long_clip), "-o", str(work / "long.csv")])
        peak = max((mib for _, mib in samples), default=float("nan"))
        print(f"long clip, shared videos x{repeats}: {long_frames} frames ({long_frames / 24 / 60:.1f} min at 24 fps): "
              f"{seconds:.1f} s, {long_frames / seconds:.1f} frames/s, peak RSS {peak:.0f} MiB (sampled every 0.5 s), "
              f"exit {code}")
        print_memory_over_time(samples)
        long_clip.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
