"""Argument types shared by the ``video-fer`` subcommands."""
from __future__ import annotations

import argparse
from typing import Sequence

from video_fer.errors import ConfigError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value


def parse_option_value(value: str):
    """``3`` -> int, ``0.5`` -> float, ``true``/``false`` -> bool, else the string."""
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def landmarker_options(pairs: Sequence[tuple[str, str]]) -> dict:
    """``[("num_faces", "2"), ("detector_options.path", "x")]`` -> ``{"num_faces": 2, "detector_options": {"path": "x"}}``."""
    options: dict = {}
    for key, value in pairs:
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--landmarker-option {key}={value}: {parent!r} was already given a plain value")
        target[leaf] = parse_option_value(value)
    return options
