"""Benchmark `video-fer track`: whole processes paired with decode-only, CPU per stage, peak memory.

Every run is a whole process timed from outside (interpreter start, imports, model loading,
MediaPipe start-up, tracking, writing the table, exit); its CPU time and peak resident memory
come from ``os.wait4``. Each round runs, one after the other: decode-only (the reader ``track``
uses, ``VideoReader.iter_batches`` over every frame, with its imports), ``video-fer track`` with
the no-training default (no ``--model``), and ``video-fer track --model BUNDLE``. The ratios are
taken within each round (so a busy machine slows both sides of a ratio alike) and their median
over the rounds is printed with every round's value and the load average before and after.

Targets (issue 13): the default <= 1.9x decode-only's time (OpenFace 2.0.2 with
``-aus -pose -gaze`` took 3.9x decode-only, paired, on WolfgangLanger_Pexels.mp4: the default
then runs at >= 2x OpenFace's frames per second), and a learned bundle <= 1.5x the default's time.

The bundle is ``--model BUNDLE`` or, without it, a random-weight bundle (outputs mean nothing;
speed does not depend on the weights): a TAE encoder (``--width``, ``--image-size``, K attention
streams), the papers' linear AU probe (12 BP4D AUs), an expression head (``--expression-head``),
the two-level attention VA head, and the default's pose and gaze columns.

``--stages``: the CPU milliseconds per frame of each stage, run one after the other in this
process. ``--long-repeats N [N ...]`` also writes long clips (all shared videos, resized to
640x360, repeated N times; 88 is about an hour) and tracks each, sampling the process's resident
memory: peak memory must not grow with the clip's length. ``--landmark-error`` measures what
landmarks on keyframes cost in accuracy (:func:`keyframe_landmark_error`).

    python tools/bench_track.py --rounds 5                   # default and random bundle vs decode-only
    python tools/bench_track.py --rounds 5 --model runs/distill_au/bundle
    python tools/bench_track.py --rounds 0 --stages          # CPU cost of each stage, in process
    python tools/bench_track.py --variants                   # also: landmarks every 1-4, bfloat16, --no-pipeline ...
    python tools/bench_track.py --rounds 7 --front-end-variants   # also: MediaPipe alone, less zoom search, every 2nd
    python tools/bench_track.py --landmark-error             # keyframe landmarks vs every frame, shared videos
    python tools/bench_track.py --rounds 0 --long-repeats 1 12 88   # memory over a 41 s, an 8 min and an hour clip
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

    Process CPU time, because MediaPipe and the decoder compute in threads of their own.
    """
    import numpy as np
    import torch

    from video_fer.data.prepare import align_in_regions
    from video_fer.faces import create_landmarker
    from video_fer.faces.crops import shrink_then_align
    from video_fer.faces.detection import SparseDetectorConfidence
    from video_fer.faces.identity import PersonTracker, confirmation_frames
    from video_fer.faces.keyframes import KeyframeLandmarks, image_mode_twin
    from video_fer.track.bundle import DEFAULT_COLUMN_GROUPS, load_bundle
    from video_fer.track.default_columns import DefaultColumns
    from video_fer.track.run import inference_bundle
    from video_fer.track.settings import TrackSettings, default_landmarker_options
    from video_fer.track.stages import FaceBatch, FacePredictions, batch_rows, stack_face_arrays
    from video_fer.track.table import CsvTableWriter, column_names
    from video_fer.video import VideoReader

    torch.set_num_threads(1)
    bundle = inference_bundle(load_bundle(bundle_dir), TrackSettings())  # BatchNorms folded, channels-last
    default = load_bundle("mediapipe")
    front_end = TrackSettings().landmarker  # track's default front end
    landmarks_name = f"landmarks ({front_end} on every {landmark_every}. frame + interpolation)"
    names = ("decode", "landmarks (MediaPipe alone on every frame)", f"landmarks ({front_end} on every frame)",
             landmarks_name, "person ids",
             "confidence (detector every 8th frame)", "default columns (pose, gaze, AUs, expression)",
             "rows + CSV", "align (fast)", "align (exact, reference)", "network (bundle)")
    costs = dict.fromkeys(names, 0.0)
    def front(name):
        return create_landmarker(name, **{**default_landmarker_options(name, blendshapes=True),
                                          "model_path": str(landmarker_model)})

    alone, every_frame, landmarker = front("mediapipe"), front(front_end), front(front_end)
    keyframes = KeyframeLandmarks(landmarker, landmark_every, image_mode_twin(landmarker))
    confidence = SparseDetectorConfidence(landmarker_model, 8)
    defaults = DefaultColumns(DEFAULT_COLUMN_GROUPS, landmarker)
    work = Path(tempfile.mkdtemp(prefix="bench_stages_"))
    writer = CsvTableWriter(work / "t.csv", column_names(default))

    def timed(name, function, *arguments, **options):
        clock = time.process_time()
        value = function(*arguments, **options)
        costs[name] += time.process_time() - clock
        return value

    def later_stages(chunk):
        found = [face for faces in chunk.faces for face in faces]
        ids = [i for position, (index, faces) in enumerate(zip(chunk.frame_indices, chunk.faces))
               for i in timed("person ids", people.update, int(index), faces, np.asarray(chunk.frames[position]))]
        positions = np.array([p for p, faces in enumerate(chunk.faces) for _ in faces], np.int64)
        landmarks = np.array([f.landmarks for f in found], np.float32).reshape(-1, 68, 2)
        batch = FaceBatch(chunk.frame_indices, chunk.timestamps, chunk.frames, positions, landmarks,
                          np.full(len(positions), 0.5, np.float32), np.asarray(ids, np.int64))
        timed("confidence (detector every 8th frame)", confidence, batch.frames, batch.positions, batch.face_ids,
              batch.landmarks)
        height, width = batch.frames.shape[1:3]

        def default_columns():
            batch.meshes = stack_face_arrays(found, "native_landmarks", (478, 3))
            batch.blendshapes = stack_face_arrays(found, "blendshapes", (52,))
            batch.columns = defaults(batch.landmarks, batch.meshes, batch.blendshapes, width, height)

        timed("default columns (pose, gaze, AUs, expression)", default_columns)
        timed("rows + CSV", lambda: writer.write(batch_rows(default, batch, FacePredictions())))
        if not len(positions):
            return
        landmarks, positions = torch.from_numpy(landmarks), torch.from_numpy(positions)
        crops, crop_landmarks = timed("align (fast)", shrink_then_align, chunk.frames, landmarks, positions,
                                      bundle.alignment)
        timed("align (exact, reference)", align_in_regions, chunk.frames, landmarks, positions, bundle.alignment,
              shrink_first=False)
        images = crops.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            timed("network (bundle)", bundle, images, crop_landmarks)

    count = 0
    with VideoReader(clip) as reader:
        people = PersonTracker(reader.fps, min_frames=confirmation_frames(reader.fps))
        alone.start_clip(str(clip), reader.fps)
        every_frame.start_clip(str(clip), reader.fps)
        keyframes.start_clip(str(clip), reader.fps)
        for first in range(0, min(frames_limit, len(reader)), 32):
            indices = np.arange(first, min(first + 32, frames_limit, len(reader)))
            frames = timed("decode", reader.get, indices)
            timestamps = reader.timestamps[indices]
            timed("landmarks (MediaPipe alone on every frame)", alone, frames, indices, timestamps)
            timed(f"landmarks ({front_end} on every frame)", every_frame, frames, indices, timestamps)
            chunk = timed(landmarks_name, keyframes.push, indices, timestamps, frames)
            count += len(indices)
            if chunk is not None:
                later_stages(chunk)
        chunk = timed(landmarks_name, keyframes.finish)
        if chunk is not None:
            later_stages(chunk)
    for closing in (keyframes, landmarker, every_frame, alone, confidence):
        closing.close()
    writer.close()
    shutil.rmtree(work, ignore_errors=True)
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


def decode_only(clip: Path, batch_size: int = 32) -> int:
    """What the decode-only process does: every frame through the reader ``track`` uses; returns the count."""
    from video_fer.video import VideoReader

    with VideoReader(clip) as reader:
        return sum(len(indices) for indices, _ in reader.iter_batches(batch_size))


def build_bundle(directory: Path, args) -> None:
    from video_fer.track.bundle import random_bundle, save_bundle

    bundle = random_bundle(image_size=args.image_size, width=args.width, embedding_dim=args.embedding_dim,
                           attention_streams=args.streams, stream_width=args.stream_width,
                           expression_head=args.expression_head, va=True, default_columns=("pose", "gaze"))
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
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (median reported; 0 = none)")
    parser.add_argument("--model", type=Path, default=None,
                        help="the learned bundle to time (default: a random-weight bundle of the sizes below)")
    parser.add_argument("--landmark-every", type=int, default=None,
                        help="track's --landmark-every (default: track's default)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--stream-width", type=int, default=64)
    parser.add_argument("--expression-head", default="linear", choices=("linear", "acnn"))
    parser.add_argument("--variants", action="store_true",
                        help="also time the default with landmarks every 1/2/3/4 frames, no pipelining, the "
                             "detector on every frame or none, and the bundle with bfloat16 and --exact-alignment")
    parser.add_argument("--front-end-variants", action="store_true",
                        help="also time the default with a cheaper front end: MediaPipe alone (--landmarker "
                             "mediapipe), the zoom finder's search on a quarter tile per frame or none after the first "
                             "frame (tiles_per_call=0.25 / 0), and landmarks every 2nd frame (every 3rd if not the default)")
    parser.add_argument("--long-repeats", type=int, nargs="*", default=[],
                        help="also track long clips: the shared videos (977 frames) concatenated N times, "
                             "one clip per N given (88 is about an hour at 24 fps)")
    parser.add_argument("--stages", action="store_true", help="also print the CPU cost of each stage (in process)")
    parser.add_argument("--landmark-error", action="store_true",
                        help="also measure the keyframe landmarks' error against MediaPipe on every frame "
                             "(all shared videos) and exit")
    parser.add_argument("--decode-only", type=Path, default=None, help=argparse.SUPPRESS)  # the decode-only process
    args = parser.parse_args(argv)

    if args.decode_only is not None:
        print(f"decoded {decode_only(args.decode_only)} frames")
        return 0
    from video_fer.faces.native_logs import NativeLogFilter

    if args.landmark_error:
        videos = sorted(DEFAULT_CLIP.parent.iterdir())
        print(f"keyframe landmarks vs every frame, {len(videos)} shared videos ({', '.join(v.name for v in videos)}):")
        with NativeLogFilter():
            errors = keyframe_landmark_error(videos, args.landmarker_model)
        for every, numbers in errors.items():
            print(f"  --landmark-every {every}: " + ", ".join(
                f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}" for name, value in numbers.items()))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_track_"))
    try:
        return run_benchmarks(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # bundle, tables and the long clip


def run_benchmarks(args, work: Path) -> int:
    from video_fer.faces.keyframes import DEFAULT_LANDMARK_EVERY
    from video_fer.track.settings import TrackSettings

    bundle = args.model
    if bundle is None:
        bundle = work / "bundle"
        build_bundle(bundle, args)
        print(f"bundle: random weights, {args.image_size} px, width {args.width}, D {args.embedding_dim}, "
              f"K {args.streams}x{args.stream_width}, heads: AU linear (12), expression {args.expression_head}, "
              "VA two-level; the default's pose and gaze")
    else:
        print(f"bundle: {bundle}")
    args.landmark_every = args.landmark_every or DEFAULT_LANDMARK_EVERY
    default_name = f"default ({TrackSettings().landmarker}, landmarks every {args.landmark_every}. frame)"
    frames = decode_only(args.clip)
    track = [sys.executable, "-m", "video_fer.cli", "track", str(args.clip), "--landmarker-model",
             str(args.landmarker_model), "--no-progress", "--landmark-every", str(args.landmark_every)]
    variants = {"decode-only": [sys.executable, str(Path(__file__).resolve()), "--decode-only", str(args.clip)],
                default_name: track,
                "bundle": track + ["--model", str(bundle)]}
    if args.front_end_variants:
        variants["default, --landmarker mediapipe (no zoom search or followers)"] = track + ["--landmarker", "mediapipe"]
        variants["default, tiles_per_call=0.25"] = track + ["--landmarker-option", "tiles_per_call=0.25"]
        variants["default, tiles_per_call=0 (search on the first frame only)"] = track + [
            "--landmarker-option", "tiles_per_call=0"]
        other = 2 if args.landmark_every == 3 else 3
        variants[f"default, landmarks every {other}. frame"] = track + ["--landmark-every", str(other)]
    if args.variants:
        for every in (1, 2, 3, 4):
            if every != args.landmark_every:
                variants[f"default, landmarks every {every}. frame"] = track + ["--landmark-every", str(every)]
        variants["default, --no-pipeline"] = track + ["--no-pipeline"]
        variants["default, detector on every frame"] = track + ["--landmarker-option", "detector_scores=true",
                                                                "--confidence-every", "0"]
        variants["default, no detector (confidence 0.5)"] = track + ["--confidence-every", "0"]
        variants["bundle, --precision bfloat16"] = variants["bundle"] + ["--precision", "bfloat16"]
        variants["bundle, --exact-alignment"] = variants["bundle"] + ["--exact-alignment"]
    if args.rounds > 0:
        load_before = os.getloadavg()
        walls: dict[str, list[float]] = {name: [] for name in variants}
        cpus: dict[str, list[float]] = {name: [] for name in variants}
        peaks: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, command in variants.items():
                extra = [] if name == "decode-only" else ["-o", str(work / f"out_{round_}.csv")]
                seconds, peak, code, cpu_seconds = run_process(command + extra)
                if code != 0:
                    print(f"{name}: failed (exit {code})")
                    return 1
                walls[name].append(seconds)
                cpus[name].append(cpu_seconds)
                peaks[name].append(peak)
        load_after = os.getloadavg()
        print(f"clip: {args.clip.name}, {frames} frames; {os.cpu_count()} cores; load average before "
              f"{load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f}, after {load_after[0]:.1f} / "
              f"{load_after[1]:.1f} / {load_after[2]:.1f} (1/5/15 min); {args.rounds} paired rounds\n")
        decode = walls["decode-only"]
        default = walls[default_name]
        print("| process | wall s (median) | / decode-only, median of rounds | per round | / default, median | per round | "
              "CPU s (median) | CPU ms/frame | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|")
        for name in variants:
            to_decode = [w / d for w, d in zip(walls[name], decode)]
            to_default = [w / d for w, d in zip(walls[name], default)]
            print(f"| {name} | {statistics.median(walls[name]):.2f} | {statistics.median(to_decode):.2f} | "
                  f"{', '.join(f'{r:.2f}' for r in to_decode)} | {statistics.median(to_default):.2f} | "
                  f"{', '.join(f'{r:.2f}' for r in to_default)} | "
                  f"{statistics.median(cpus[name]):.2f} | {1000 * statistics.median(cpus[name]) / frames:.1f} | "
                  f"{max(peaks[name]):.0f} |")
    if args.stages:
        from video_fer.faces.native_logs import NativeLogFilter

        with NativeLogFilter():
            costs = stage_costs(args.clip, args.landmarker_model, bundle, args.landmark_every)
        print("\nCPU ms per frame, one thread, stages one after the other: "
              + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    base = [sys.executable, "-m", "video_fer.cli", "track", "--model", str(bundle), "--landmarker-model",
            str(args.landmarker_model), "--no-progress", "--landmark-every", str(args.landmark_every)]
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
