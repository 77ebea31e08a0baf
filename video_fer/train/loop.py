"""The loop pieces every recipe shares: optimiser and LR schedule, where the run is, batches per epoch,
seeds, the non-finite-loss guard, values averaged or gathered over processes. No trainer class.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from video_fer.errors import ConfigError, VideoFerError


class TrainingDivergedError(VideoFerError):
    """The loss stayed non-finite for too many steps in a row."""


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


def all_finite(values: Iterable[torch.Tensor]) -> bool:
    """True when every tensor is finite everywhere."""
    return all(bool(torch.isfinite(value).all()) for value in values)


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine down to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module | Iterable[torch.nn.Parameter], optim) -> torch.optim.Optimizer:
    """SGD with momentum (the reference) or AdamW (ours) over the trainable parameters.

    ``optim`` is a :class:`video_fer.train.sections.OptimConfig`-like object (``name``, ``lr``,
    ``momentum``, ``betas``, ``weight_decay``). Frozen parameters (``requires_grad=False``) are left out.
    """
    parameters = model.parameters() if isinstance(model, torch.nn.Module) else model
    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    if optim.name == "sgd":
        return torch.optim.SGD(trainable, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(trainable, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    raise ConfigError(f"optim.name={optim.name!r}: choose 'adamw' or 'sgd'")


def finetune_learning_rate(optim, step: int, total_steps: int) -> float:
    """Warmup then cosine down to ``min_lr_ratio`` (``optim.schedule="cosine"``) or warmup then constant."""
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
        order = torch.randperm(count, generator=seeded_generator(seed, progress.epoch))
        mine = order[rank::world][:steps_per_epoch * batch_size].view(steps_per_epoch, batch_size)
        for batch_index in range(progress.batch_in_epoch, steps_per_epoch):
            if progress.step >= total_steps:
                break
            yield progress.epoch, batch_index, mine[batch_index]
        if progress.batch_in_epoch >= steps_per_epoch:
            progress.epoch += 1
            progress.batch_in_epoch = 0


def seeded_generator(seed: int, *position: int) -> torch.Generator:
    """The random generator of one place in a run: ``(seed, *position)`` -> a generator, the same on every rerun.

    The one seed formula of the recipes: ``position`` says where the draw happens (e.g.
    ``(rank, epoch, batch)`` for augmentation, ``(epoch,)`` for an epoch's order), so a resumed
    run draws what the uninterrupted run drew, and ranks and places never share a stream.
    """
    state = np.random.SeedSequence([int(seed), *(int(value) for value in position)]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


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


def mean_over_processes(accelerator, values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors (e.g. loss terms) averaged over processes, as floats."""
    return {name: float(accelerator.reduce(value.detach().float(), "mean")) for name, value in values.items()}


def gather_in_order(accelerator, count: int, predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``predict(rows)`` on this process's shard of ``range(count)``, gathered from all processes in row order."""
    from accelerate.utils import gather_object

    shard = np.arange(count)[accelerator.process_index::accelerator.num_processes]
    gathered = gather_object([(shard, predict(shard))])
    order = np.concatenate([part[0] for part in gathered])
    return np.concatenate([part[1] for part in gathered])[np.argsort(order)]


@torch.no_grad()
def predict_in_batches(model: torch.nn.Module, rows: np.ndarray, batch_size: int,
                       predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor], width: int) -> np.ndarray:
    """``predict(model, rows)`` over ``rows`` in batches, in eval mode (the mode is restored after).

    Returns:
        float32 ``(len(rows), width)`` on the CPU.
    """
    was_training = model.training
    model.eval()
    outputs = [predict(model, torch.from_numpy(np.asarray(rows[start:start + batch_size]))).float().cpu()
               for start in range(0, len(rows), batch_size)]
    model.train(was_training)
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, width), np.float32)
