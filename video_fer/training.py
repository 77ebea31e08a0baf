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
from typing import Any, Callable, Iterable, Mapping, Sequence

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


# --------------------------------------------------------------------------------------
# Fine-tuning recipes (finetune_expression.py, finetune_va.py): the shared loop pieces
# --------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module | Iterable[torch.nn.Parameter], optim) -> torch.optim.Optimizer:
    """SGD with momentum (the reference) or AdamW (ours) over the trainable parameters.

    ``optim`` is a :class:`video_fer.config.OptimConfig`-like object (``name``, ``lr``,
    ``momentum``, ``betas``, ``weight_decay``). Frozen parameters (``requires_grad=False``) are left out.
    """
    from video_fer.errors import ConfigError

    parameters = model.parameters() if isinstance(model, torch.nn.Module) else model
    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    if optim.name == "sgd":
        return torch.optim.SGD(trainable, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(trainable, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    raise ConfigError(f"optim.name={optim.name!r}: choose 'adamw' or 'sgd'")


def finetune_learning_rate(optim, step: int, total_steps: int) -> float:
    """Warmup then cosine down to ``min_lr_ratio`` (``optim.schedule="cosine"``) or warmup then constant."""
    from video_fer.errors import ConfigError

    if optim.schedule == "cosine":
        return optim.lr * cosine_with_warmup(step, total_steps, optim.warmup_steps, optim.min_lr_ratio)
    if optim.schedule == "constant":
        return optim.lr * min((step + 1) / max(optim.warmup_steps, 1), 1.0)
    raise ConfigError(f"optim.schedule={optim.schedule!r}: choose 'cosine' or 'constant' for fine-tuning")


class StepProgress:
    """Where a fine-tuning run is: ``step``, ``epoch``, ``batch_in_epoch`` (checkpointed by accelerate)."""

    def __init__(self) -> None:
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0

    def advance(self, batch_index: int) -> None:
        """One optimiser step done on batch ``batch_index`` of the current epoch."""
        self.step += 1
        self.batch_in_epoch = batch_index + 1

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])


def epoch_batches(progress: StepProgress, total_steps: int, steps_per_epoch: int, count: int, batch_size: int,
                  seed: int, rank: int = 0, world: int = 1):
    """Yield ``(epoch, batch_index, rows (batch_size,))`` until ``progress.step == total_steps``.

    One permutation of ``count`` items per epoch from ``(seed, epoch)``, so every rank agrees
    and a resumed run continues exactly; rank ``r`` takes every ``world``-th item. The caller
    calls ``progress.advance(batch_index)`` after each optimiser step; epochs roll over here.
    """
    while progress.step < total_steps:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 7919 + progress.epoch))
        mine = order[rank::world][:steps_per_epoch * batch_size].view(steps_per_epoch, batch_size)
        for batch_index in range(progress.batch_in_epoch, steps_per_epoch):
            if progress.step >= total_steps:
                break
            yield progress.epoch, batch_index, mine[batch_index]
        if progress.batch_in_epoch >= steps_per_epoch:
            progress.epoch += 1
            progress.batch_in_epoch = 0


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The augmentation generator of one step on one rank (reproducible, resumable)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 31 + rank)


def optimizer_step(accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   lr: float, grad_clip: float = 0.0) -> None:
    """Set ``lr`` on every group, backpropagate ``loss``, clip the gradient norm (if > 0), step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def evaluation_due(progress: StepProgress, every: int, steps_per_epoch: int, total_steps: int) -> bool:
    """Every ``every`` steps (0: at the end of each epoch), and always at the last step."""
    due = progress.step % every == 0 if every else progress.batch_in_epoch == steps_per_epoch
    return due or progress.step == total_steps


def reduce_terms(accelerator, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Scalar loss terms averaged over processes, as floats."""
    return {name: float(accelerator.reduce(value.detach().float(), "mean")) for name, value in terms.items()}


def make_finetune_accelerator(mixed_precision: str = "no"):
    """An ``Accelerator`` for the fine-tuning recipes.

    DDP must allow unused parameters (the TAE encoder's pose branch takes no part in a head's
    loss); several processes without a GPU run on the CPU (gloo).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu_processes,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def resume_run(accelerator, resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """Load the accelerate state of ``--resume`` (``"auto"``: the latest checkpoint of ``output_dir``).

    Returns the checkpoint loaded, or None (no ``--resume``, or nothing saved yet: a message says so).
    """
    if not resume:
        return None
    found = latest_checkpoint(output_dir) if resume == "auto" else Path(resume)
    if found is None:
        accelerator.print(f"--resume: no checkpoint in {Path(output_dir) / 'checkpoints'} yet; starting from scratch")
        return None
    accelerator.load_state(str(found))
    return found


def run_logs(accelerator, output_dir: str | os.PathLike, resumed_step: int | None,
             names: Sequence[str] = ("losses.csv", "evaluation.csv")) -> list[CsvLog | None]:
    """One :class:`CsvLog` per name on the main process (None elsewhere), cut after ``resumed_step``."""
    if not accelerator.is_main_process:
        return [None for _ in names]
    return [CsvLog(Path(output_dir) / name, resume_after_step=resumed_step) for name in names]


def gather_in_order(accelerator, count: int, predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``predict(rows)`` on this process's shard of ``range(count)``, gathered from all processes in row order."""
    from accelerate.utils import gather_object

    shard = np.arange(count)[accelerator.process_index::accelerator.num_processes]
    gathered = gather_object([(shard, predict(shard))])
    order = np.concatenate([part[0] for part in gathered])
    return np.concatenate([part[1] for part in gathered])[np.argsort(order)]


def save_final_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, keep: int,
                          last_checkpoint: Path | None) -> Path:
    """Save the step-``step`` checkpoint unless ``last_checkpoint`` already is that step."""
    if last_checkpoint is not None and Path(last_checkpoint).name == checkpoint_dir(output_dir, step).name:
        return Path(last_checkpoint)
    return save_checkpoint(accelerator, output_dir, step, keep)
