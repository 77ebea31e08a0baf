"""``video-fer prepare``: videos -> face-track cache (registered into the main parser by :func:`register`)."""
from __future__ import annotations

import argparse
import sys

from video_fer.cli.args import key_value, landmarker_options, positive_float, positive_int
from video_fer.faces import LANDMARKER_NAMES
from video_fer.errors import ConfigError


def _shard(text: str) -> tuple[int, int]:
    from video_fer.data.inputs import parse_shard

    try:
        return parse_shard(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers) -> None:
    """Add ``prepare`` to the ``video-fer`` subcommands."""
    parser = subparsers.add_parser(
        "prepare", help="videos -> face-track cache (landmarks, tracks, aligned H.264 crops)",
        description="Find, track and align the faces of videos into a face-track cache. Resumable: "
                    "rerun the same command after an interruption; split big lists with --shard i/n.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="video files, folders (searched recursively) or .txt lists of paths")
    parser.add_argument("--out", required=True, metavar="CACHE", help="cache directory (created or resumed)")
    parser.add_argument("--landmarker", choices=LANDMARKER_NAMES, default="mediapipe-zoom",
                        help="face landmark backend (default mediapipe-zoom: MediaPipe plus a search for the small "
                             "and turned faces it misses; mediapipe: MediaPipe alone)")
    parser.add_argument("--landmarker-model", metavar="PATH",
                        help="local model file (MediaPipe face_landmarker.task, or FAN weights)")
    parser.add_argument("--landmarks-dir", metavar="DIR",
                        help="precomputed landmarks (OpenFace CSV or npz per video), for --landmarker precomputed")
    parser.add_argument("--landmarker-option", type=key_value, action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="extra landmarker options; a dotted key fills a dict option, e.g. "
                             "num_faces=2 or detector_options.path_to_detector=blazeface.pth")
    parser.add_argument("--size", type=positive_int, default=256, help="crop side in pixels (default 256)")
    parser.add_argument("--min-track-frames", type=positive_int, default=None,
                        help="drop tracks with fewer processed frames (default: half a second's worth, at least 2)")
    parser.add_argument("--fps", type=positive_float, default=None,
                        help="process this many frames per second (e.g. 1 as in the TAE reference); default every frame")
    parser.add_argument("--workers", type=positive_int, default=1, help="processes over videos")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/n",
                        help="do every n-th video of the sorted list, starting at i (0-based)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="frames decoded at once")
    parser.add_argument("--retry-skipped", action="store_true",
                        help="redo videos skipped before (by default only those whose file changed since)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from video_fer.data.prepare import DEFAULT_BATCH_SIZE, prepare_videos

    options = landmarker_options(args.landmarker_option)
    if args.landmarker_model:
        options["model_path"] = args.landmarker_model
    if args.landmarks_dir:
        options["landmarks_dir"] = args.landmarks_dir
    if args.landmarker == "precomputed" and "landmarks_dir" not in options:
        raise ConfigError("--landmarker precomputed needs --landmarks-dir DIR (the folder of landmark files)")
    summary = prepare_videos(
        args.inputs, args.out, landmarker=args.landmarker, landmarker_options=options, size=args.size, fps=args.fps,
        min_track_frames=args.min_track_frames, workers=args.workers, shard=args.shard,
        batch_size=args.batch_size or DEFAULT_BATCH_SIZE, progress=not args.no_progress,
        retry_skipped=args.retry_skipped, report=lambda line: print(line, flush=True))
    rate = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    print(f"{args.out}: {summary.processed} video(s) processed ({summary.ok} with tracks, {summary.skipped} skipped), "
          f"{summary.already_done} already done, {summary.tracks} new track(s), {summary.frames} frames "
          f"in {summary.seconds:.1f} s ({rate:.1f} frames/s)")
    if summary.unreadable:  # the others are in the cache; exit 1 so that scripts notice, as track does
        which = (f"none of the {summary.processed} video(s) could be read" if summary.unreadable == summary.processed
                 else f"{summary.unreadable} of the {summary.processed} video(s) could not be read")
        print(f"video-fer prepare: {which} (reasons above, also in {args.out}/skipped.csv); fix or replace them and "
              f"rerun: changed files are retried", file=sys.stderr)
        return 1
    return 0
