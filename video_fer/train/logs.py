"""What a training run writes besides checkpoints: per-step CSV logs and PNG grids of image columns."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from video_fer.io import atomic_path, reporting_write_errors


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
        with reporting_write_errors(self.path), open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            if new_file:
                writer.writeheader()
            writer.writerow(values)


def read_csv_log(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a :class:`CsvLog` file."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


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
