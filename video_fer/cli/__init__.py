"""The ``video-fer`` command.

Each subcommand lives in its own module (``cli/prepare.py``, ``cli/track.py`` with ``bundle``,
``cli/evaluate.py``) as one ``register(subparsers)`` function that builds its parser and sets
``handler``; :data:`COMMANDS` lists them. Heavy imports happen inside the handlers. Errors
that video_fer raises on purpose (:class:`~video_fer.errors.VideoFerError`) and failed file
operations (``OSError``: read-only output, a file where a folder should be, disk full) end the
program with a one-line message naming the path and exit code 2 (``--debug``, anywhere on the
line: the traceback); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from video_fer.cli import evaluate, prepare, track
from video_fer.errors import EXIT_ERROR, VideoFerError
from video_fer.io import describe_os_error
from video_fer.version import __version__

COMMANDS: list[Callable] = [prepare.register, track.register, evaluate.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="video-fer", description="Self-supervised facial action learning from video.")
    parser.add_argument("--version", action="version", version=f"video-fer {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of the one-line message")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``video-fer``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # also after the subcommand
    parser = build_parser()
    args = parser.parse_args([arg for arg in argv if arg != "--debug"])
    try:
        return int(args.handler(args) or 0)
    except (VideoFerError, OSError) as error:
        if debug:
            raise
        text = str(error) if isinstance(error, VideoFerError) else describe_os_error(error)
        print(f"video-fer {args.command}: error: {text}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"video-fer {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
