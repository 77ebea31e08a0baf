"""``video-fer track`` and ``video-fer bundle`` (registered into the main parser by :func:`register`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from video_fer.cli.args import key_value, landmarker_options, non_negative_int, positive_int
from video_fer.faces import LANDMARKER_NAMES
from video_fer.faces.keyframes import DEFAULT_LANDMARK_EVERY


def add_track_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "track", help="clips -> per-frame AU / expression / head-pose / gaze (/ valence-arousal) tables",
        description="Track faces through clips and write one table per clip (a row per frame and face, "
                    "success=0 rows for frames without a face; OpenFace's column names and units) and its "
                    "<table>.meta.json. Inputs: files, folders, .txt lists. Without --model: the no-training "
                    "default (mediapipe).")
    parser.add_argument("inputs", nargs="+", metavar="CLIP", help="video files, folders or .txt lists of paths")
    parser.add_argument("--model", default="mediapipe", metavar="BUNDLE",
                        help="'mediapipe' (default: AUs from MediaPipe's blendshapes, prototype expression, head pose "
                             "and gaze, no training) or a model bundle directory (video-fer bundle)")
    parser.add_argument("-o", "--out", metavar="OUT",
                        help="output folder (default ./processed), or the table's file name for a single clip")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format (parquet needs pyarrow)")
    parser.add_argument("--every", type=positive_int, default=1, help="process every N-th frame")
    parser.add_argument("--start", type=non_negative_int, default=0, help="first frame")
    parser.add_argument("--end", type=positive_int, default=None, help="stop before this frame")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="frames per step (default 32)")
    parser.add_argument("--plot", action="store_true", help="also write <table>.png (AUs, expression, VA over time)")
    parser.add_argument("--video-out", action="store_true", help="also write <table>.annotated.mp4")
    parser.add_argument("--landmarker", choices=LANDMARKER_NAMES, default="mediapipe-zoom",
                        help="face landmark backend (default mediapipe-zoom: MediaPipe plus a search for the small "
                             "and turned faces it misses; mediapipe: MediaPipe alone)")
    parser.add_argument("--landmarker-model", metavar="PATH", help="local landmarker model file (face_landmarker.task)")
    parser.add_argument("--max-faces", type=positive_int, default=None, help="most faces per frame (default 8 with mediapipe-zoom, 4 with mediapipe)")
    parser.add_argument("--landmarker-option", type=key_value, action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE", help="extra landmarker options, e.g. detector_scores=false")
    parser.add_argument("--confidence-every", type=non_negative_int, default=8, metavar="N",
                        help="run MediaPipe's face detector for the confidence column on every N-th frame and where "
                             "a face appears (default 8); 0 = the landmarker's own scores "
                             "(--landmarker-option detector_scores=true: the detector on every frame)")
    parser.add_argument("--landmark-every", type=positive_int, default=DEFAULT_LANDMARK_EVERY, metavar="K",
                        help="run the landmarker on every K-th processed frame and interpolate the landmarks in "
                             f"between (default {DEFAULT_LANDMARK_EVERY}; frames between keyframes that disagree "
                             "on the faces are landmarked one by one); 1 = landmarks on every frame")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="network arithmetic: bfloat16 is ~2x faster on CPUs with native bfloat16 "
                             "(AVX512-BF16, AMX); outputs move by ~1e-3")
    parser.add_argument("--exact-alignment", action="store_true",
                        help="reference crops: full-resolution anti-aliasing (slower on large faces; "
                             "default: prepare's crops, shrunk first)")
    parser.add_argument("--no-pipeline", action="store_true", help="landmarks and network in one thread")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="keep MediaPipe's, absl's and TFLite's log lines")
    parser.set_defaults(handler=run_track)


def run_track(args: argparse.Namespace) -> int:
    import atexit
    import gc

    from video_fer.faces.native_logs import NativeLogFilter
    from video_fer.runtime import long_lived_allocations

    with long_lived_allocations():  # torch's import makes ~1M objects that live to the end
        from video_fer.track.run import track_files
        from video_fer.track.settings import DEFAULT_BATCH_SIZE, MEDIAPIPE_LANDMARKERS, TrackSettings

        if args.landmarker in MEDIAPIPE_LANDMARKERS:  # no thread runs yet (see the module's doc)
            from video_fer.faces.mediapipe_import import import_mediapipe_without_plotting

            import_mediapipe_without_plotting()
    # At exit, skip the collector's passes over everything still alive: the process is ending
    # (~0.7 s of interpreter teardown with torch loaded; the tables are closed before this).
    atexit.unregister(gc.freeze)  # once, however often run_track is called in one process
    atexit.register(gc.freeze)

    options = landmarker_options(args.landmarker_option)
    if args.landmarker_model:
        options["model_path"] = args.landmarker_model
    if args.max_faces:
        options["num_faces"] = args.max_faces
    settings = TrackSettings(every=args.every, start=args.start, end=args.end,
                             batch_size=args.batch_size or DEFAULT_BATCH_SIZE, landmarker=args.landmarker,
                             landmarker_options=options, pipelined=not args.no_pipeline,
                             exact_alignment=args.exact_alignment, confidence_every=args.confidence_every,
                             landmark_every=args.landmark_every, precision=args.precision)
    with NativeLogFilter(enabled=not args.verbose):  # MediaPipe's native log lines, unless --verbose
        summary = track_files(args.inputs, args.model, out=args.out, fmt=args.format, plot=args.plot,
                              video_out=args.video_out, settings=settings, progress=not args.no_progress,
                              report=lambda line: print(line, flush=True))
    done = len(summary.outputs)
    print(f"{done} clip(s) tracked, {len(summary.failures)} failed")
    for path, message in summary.failures:
        print(f"  failed: {path}: {message}", file=sys.stderr)
    return 1 if summary.failures else 0


def add_bundle_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bundle", help="what the recipes wrote -> one model bundle for `track`",
        description="Assemble a model bundle (bundle.json + model.safetensors) from what the recipes write: an "
                    "encoder export (pretrain_video's encoder/), finetune_au's output folder (its best fold) or a "
                    "fold's model/, the output folders (or model/) of finetune_expression and finetune_va, or head "
                    "checkpoints. Give any subset of heads; the table omits the columns of a missing one. The "
                    "no-training default's column groups (--default-columns) fill in what no head gives.")
    parser.add_argument("--encoder", metavar="DIR",
                        help="encoder export (e.g. runs/pretrain_tae/encoder); default: the first head's own encoder")
    parser.add_argument("--au", metavar="DIR", help="AU presence: finetune_au output (occurrence) or a head checkpoint")
    parser.add_argument("--au-intensity", metavar="DIR",
                        help="AU intensity: finetune_au output (train.task=intensity) or a head checkpoint")
    parser.add_argument("--expression", metavar="DIR", help="finetune_expression output or its model/, or a head")
    parser.add_argument("--va", metavar="DIR", help="finetune_va output or its model/, or a head checkpoint")
    parser.add_argument("--default-columns", type=column_groups, default=("pose", "gaze"), metavar="GROUPS",
                        help="comma-separated column groups of the no-training default to add: pose, gaze, au, "
                             "expression, or none (default: pose,gaze; a group a head gives is an error)")
    parser.add_argument("--alignment", metavar="JSON",
                        help="AlignmentSpec JSON to record when the encoder export has none")
    parser.add_argument("-o", "--out", required=True, metavar="BUNDLE", help="bundle directory to write")
    parser.set_defaults(handler=run_bundle)


def column_groups(text: str) -> tuple[str, ...]:
    """``"pose,gaze"`` -> ``("pose", "gaze")``; ``"none"`` -> ``()``."""
    groups = tuple(part.strip() for part in text.split(",") if part.strip())
    if groups == ("none",):
        return ()
    unknown = [group for group in groups if group not in ("pose", "gaze", "au", "expression")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown column group(s) {', '.join(unknown)}; choose from pose, gaze, au, "
                                         "expression, or none")
    return groups


def run_bundle(args: argparse.Namespace) -> int:
    from video_fer.errors import ConfigError
    from video_fer.track.assemble import assemble_bundle

    alignment = None
    if args.alignment:
        try:
            alignment = json.loads(Path(args.alignment).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"{args.alignment}: cannot read the alignment JSON ({error})") from error
    bundle = assemble_bundle(args.out, {"au": args.au, "au_intensity": args.au_intensity,
                                        "expression": args.expression, "va": args.va},
                             encoder=args.encoder, alignment=alignment, default_columns=args.default_columns)
    sources = ", ".join(f"{group}: {source}" for group, source in bundle.column_sources().items())
    print(f"{args.out}: bundle with heads {', '.join(bundle.specs)}; crops {bundle.image_size} px; columns {sources}")
    return 0


def register(subparsers) -> None:
    """Add ``track`` and ``bundle`` to the ``video-fer`` subcommands."""
    add_track_command(subparsers)
    add_bundle_command(subparsers)
