"""Small pieces shared by the training recipes (recipes/*.py): no trainer class, just helpers.

- :func:`save_checkpoint` / :func:`latest_checkpoint`: ``accelerator.save_state`` written
  atomically (into a hidden temp folder, renamed when every rank has written), keeping
  the last K;
- :class:`NonFiniteGuard`: skip steps whose loss is NaN/inf, stop after N in a row;
- :class:`CsvLog`: per-step values appended to a CSV (rows after a resumed step dropped);
- :func:`save_image_grid`: a PNG of image columns (images, flows as colour, maps).
"""
from __future__ import annotations

import csv
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from video_fer.errors import VideoFerError
from video_fer.io_utils import atomic_path

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")


class TrainingDivergedError(VideoFerError):
    """The loss stayed non-finite for too many steps in a row."""


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """``<output_dir>/checkpoints/step_00000042``."""
    return Path(output_dir) / "checkpoints" / f"step_{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Finished checkpoints of a run, oldest first (temp folders of interrupted saves are ignored)."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.match(path.name)]
    return sorted(found, key=lambda path: int(CHECKPOINT_PATTERN.match(path.name).group(1)))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest finished checkpoint of a run, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, keep: int = 2) -> Path:
    """``accelerator.save_state`` into a temp folder, renamed into place once every rank has written.

    Call on every rank. A crash mid-save leaves only a hidden ``.step_*.tmp`` folder that
    :func:`latest_checkpoint` ignores, so the last finished checkpoint stays the one to resume.
    Keeps the newest ``keep`` checkpoints (``keep <= 0`` keeps all).
    """
    final = checkpoint_dir(output_dir, step)
    temp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process and temp.exists():
        shutil.rmtree(temp)  # left by an interrupted save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
        if keep > 0:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def step_of_checkpoint(path: str | os.PathLike) -> int:
    """The step number in a checkpoint folder's name (``step_00000042`` -> 42)."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if not match:
        raise VideoFerError(f"{path}: not a checkpoint folder (expected a name like step_00000042)")
    return int(match.group(1))


# --------------------------------------------------------------------------------------
# Non-finite losses
# --------------------------------------------------------------------------------------


class NonFiniteGuard:
    """Counts non-finite steps in a row; :meth:`update` raises once there were ``max_in_row``.

    Args:
        max_in_row: how many consecutive non-finite steps to tolerate before stopping.
    """

    def __init__(self, max_in_row: int = 5) -> None:
        self.max_in_row = max(int(max_in_row), 1)
        self.in_row = 0
        self.total = 0

    def update(self, finite: bool, step: int, last_checkpoint: str | os.PathLike | None = None) -> bool:
        """Record one step; returns ``finite``. Raises :class:`TrainingDivergedError` at the limit."""
        if finite:
            self.in_row = 0
            return True
        self.in_row += 1
        self.total += 1
        if self.in_row >= self.max_in_row:
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
            raise TrainingDivergedError(
                f"stopping at step {step}: the loss was not finite for {self.in_row} steps in a row "
                f"(train.max_nonfinite_steps={self.max_in_row}); {where}. Lower optim.lr, enable optim.grad_clip "
                "or use mixed_precision=no, then resume with --resume"
            )
        return False

    def state_dict(self) -> dict[str, int]:
        return {"in_row": self.in_row, "total": self.total}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.in_row, self.total = int(state["in_row"]), int(state["total"])


# --------------------------------------------------------------------------------------
# CSV log
# --------------------------------------------------------------------------------------


class CsvLog:
    """Append rows of values to a CSV file; the header is fixed by the first row written.

    Args:
        path: the CSV file (created with its folder).
        resume_after_step: when resuming, rows with ``step`` greater than this are dropped
            first (they were written after the checkpoint and will be written again).
    """

    def __init__(self, path: str | os.PathLike, resume_after_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] | None = None
        if self.path.exists() and resume_after_step is not None:
            with open(self.path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or [])
                kept = [row for row in reader if int(float(row["step"])) <= resume_after_step]
            with atomic_path(self.path) as temp, open(temp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(kept)
        elif self.path.exists():
            self.path.unlink()

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (floats with 6 significant digits, everything else as text)."""
        values = {key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()}
        new_file = not self.path.exists()
        if self.columns is None:
            self.columns = list(values)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            if new_file:
                writer.writeheader()
            writer.writerow(values)


def read_csv_log(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a :class:`CsvLog` file."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------
# Image grid
# --------------------------------------------------------------------------------------


def _map_to_rgb(values: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` maps in [0, 1] -> RGB with matplotlib's viridis."""
    from matplotlib import colormaps

    table = torch.tensor(colormaps["viridis"](np.linspace(0, 1, 256))[:, :3], dtype=torch.float32)
    index = (values[:, 0].clamp(0, 1) * 255).round().long()
    return table[index].permute(0, 3, 1, 2)


def as_rgb_panel(images: torch.Tensor, size: int, kind: str = "image") -> torch.Tensor:
    """One grid column as RGB ``(B, 3, size, size)``.

    ``kind``: ``"image"`` (``(B, 3, H, W)`` in [0, 1]), ``"flow"`` (``(B, 2, H, W)``, HSV colour,
    white = still), ``"map"`` (``(B, 1, H, W)`` in [0, 1], viridis).
    """
    from video_fer.data.synthetic import flow_to_color

    images = images.detach().float().cpu()
    if kind == "flow":
        images = flow_to_color(images)
    elif kind == "map":
        images = _map_to_rgb(images)
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="nearest")
    return images.clamp(0, 1)


def save_image_grid(path: str | os.PathLike, columns: Sequence[tuple[str, torch.Tensor, str]],
                    max_rows: int = 4, tile: int = 128) -> Path:
    """Write a PNG grid: one row per sample, one column per ``(title, tensor (B, C, H, W), kind)``.

    Titles are drawn above the columns. Written atomically.
    """
    from PIL import Image, ImageDraw

    panels = [as_rgb_panel(tensor[:max_rows], tile, kind) for _, tensor, kind in columns]
    rows = min(len(panel) for panel in panels)
    header, gap = 16, 2
    width = len(panels) * (tile + gap)
    height = header + rows * (tile + gap)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for column, panel in enumerate(panels):
        for row in range(rows):
            y, x = header + row * (tile + gap), column * (tile + gap)
            canvas[y:y + tile, x:x + tile] = (panel[row].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for column, (title, _, _) in enumerate(columns):
        draw.text((column * (tile + gap) + 2, 2), title, fill=(0, 0, 0))
    path = Path(path)
    with atomic_path(path) as temp:
        picture.save(temp, format="PNG")
    return path


def all_finite(values: Iterable[torch.Tensor]) -> bool:
    """True when every tensor is finite everywhere."""
    return all(bool(torch.isfinite(value).all()) for value in values)


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine down to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
