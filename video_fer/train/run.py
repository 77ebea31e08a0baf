"""The start and finish every recipe shares, and the step loop of the fine-tuning recipes.

A recipe (``recipes/*.py``) reads top to bottom::

    config = load_config(args.config, args.overrides, schema=MyRecipeConfig)
    run = start_run(config, config.train.output_dir, config.train.seed, config.train.mixed_precision)
    ... data, model, optimiser, accelerator.prepare ...
    resumed = resume_state(run, args.resume)          # exact: every registered object comes back
    ... the loop ...
    finish_run(run)

and its ``__main__`` is ``sys.exit(run_recipe(main, "name"))``: video_fer's own errors and failed
file operations end it with one line and exit code 2, like ``video-fer`` (``--debug``: the traceback). Pieces, not a trainer class: the recipe
keeps its loop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from video_fer.config import config_to_dict
from video_fer.errors import EXIT_ERROR, CheckpointError, ConfigError, VideoFerError
from video_fer.train.checkpoints import (damage_of, find_resume_checkpoint, latest_checkpoint, save_checkpoint,
                                         save_final_checkpoint, set_aside)
from video_fer.train.logs import CsvLog
from video_fer.train.loop import (StepProgress, epoch_batches, evaluation_due, finetune_learning_rate,
                                  mean_over_processes, optimizer_step, seeded_generator)

PRECISIONS = ("no", "fp16", "bf16", "fp8")  # accelerate's mixed_precision values


class RecipeArgumentParser(argparse.ArgumentParser):
    """Overrides anywhere on the line (``a=1 --config x.yaml b=2``), and ``--resume key=value`` keeps the override
    an override (``--resume`` alone then means the latest checkpoint)."""

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return self.parse_intermixed_args(_resume_before_override(args), namespace)


def _resume_before_override(argv: list[str]) -> list[str]:
    """``--resume key=value`` -> ``--resume=auto key=value`` unless ``key=value`` is an existing folder."""
    fixed = list(argv)
    for k, token in enumerate(fixed[:-1]):
        following = fixed[k + 1]
        if token == "--resume" and "=" in following and not following.startswith("-") and not Path(following).is_dir():
            fixed[k] = "--resume=auto"
    return fixed


def recipe_parser(description: str, default_config: str | os.PathLike, resume_help: str | None = None
                  ) -> argparse.ArgumentParser:
    """The command line every recipe takes: ``--config YAML``, ``--resume [CHECKPOINT]``, ``--debug``,
    ``key.sub=value`` overrides (anywhere on the line)."""
    parser = RecipeArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(default_config), help="YAML config (default: %(default)s)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help=resume_help or "continue from a checkpoint folder; without a value: the latest in "
                                            "train.output_dir")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of the one-line message")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. optim.lr=3e-4")
    return parser


def make_accelerator(mixed_precision: str = "no", *, find_unused_parameters: bool = False,
                     gradient_accumulation_steps: int = 1, log_with=None, project_dir: str | None = None):
    """The ``Accelerator`` of every recipe.

    Several processes without a GPU (``accelerate launch --multi_gpu --num_processes 2`` on a CPU
    machine) run DDP over gloo: accelerate only picks that when told it runs on the CPU.
    ``find_unused_parameters``: DDP must allow parameters that take no part in the loss (the TAE
    encoder's pose branch under a head).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if mixed_precision not in PRECISIONS:
        raise ConfigError(f"train.mixed_precision={mixed_precision!r}: choose one of {', '.join(PRECISIONS)}")
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu_processes, kwargs_handlers=handlers,
                       gradient_accumulation_steps=gradient_accumulation_steps, log_with=log_with,
                       project_dir=project_dir)


@dataclass
class RecipeRun:
    """A started run: its accelerator, output folder and seed; ``rank`` / ``world`` of this process.

    ``config``: the config document :meth:`record_config` writes as ``config.json`` (None: the recipe
    records it itself).
    """

    accelerator: Any
    out: Path
    seed: int
    config: dict | None = None
    config_recorded: bool = False

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def record_config(self) -> None:
        """Write ``config.json`` into the output folder (main process, atomic, once).

        Called by :func:`run_logs`, i.e. once the data and the model were built: a run that fails
        before (a bad value, a missing input) leaves no output folder behind.
        """
        if self.config is None or self.config_recorded or not self.is_main:
            return
        from video_fer.io import atomic_write

        with atomic_write(self.out / "config.json") as handle:
            json.dump(self.config, handle, indent=2)
        self.config_recorded = True


def start_run(config, output_dir: str | os.PathLike, seed: int, mixed_precision: str = "no", *, threads: int = 0,
              record_config: bool = True, **accelerator_options) -> RecipeRun:
    """Accelerator and seed (identical initial weights on every rank); nothing is written yet.

    ``threads``: torch intra-op threads per process (0: torch's default); ``record_config``: write
    ``config.json`` with the first logs (:meth:`RecipeRun.record_config`); False: the recipe records
    its config itself; ``accelerator_options`` go to :func:`make_accelerator`.
    """
    if threads:
        torch.set_num_threads(threads)
    accelerator = make_accelerator(mixed_precision, **accelerator_options)
    reseed(seed)
    return RecipeRun(accelerator, Path(output_dir), seed, config_to_dict(config) if record_config else None)


def reseed(seed: int) -> None:
    """Seed python, numpy and torch (every device) alike: the same initial weights on every rank."""
    from accelerate.utils import set_seed

    set_seed(seed)


def resume_state(run: RecipeRun, resume: str | os.PathLike | bool | None, output_dir: str | os.PathLike | None = None
                 ) -> Path | None:
    """Load the accelerate state ``--resume`` asks for (``"auto"``/True: the latest of the output folder).

    Returns the checkpoint loaded, or None (no ``--resume``, or nothing saved yet: a message says so).
    A damaged latest checkpoint (:func:`~video_fer.train.checkpoints.damage_of`) is reported, set
    aside as ``.step_*.damaged`` and the previous one is loaded.

    Raises:
        CheckpointError: the checkpoint given by name is damaged, or every checkpoint is.
    """
    output_dir = Path(output_dir or run.out)
    found = find_resume_checkpoint(resume, output_dir)
    if resume and found is None:
        run.accelerator.print(f"--resume: no checkpoint in {output_dir / 'checkpoints'} yet; starting from scratch")
    while found is not None:
        damage = damage_of(found)
        if damage is None:
            run.accelerator.load_state(str(found))
            return found
        if not (resume is True or resume == "auto"):
            raise CheckpointError(f"--resume {found}: the checkpoint is damaged ({damage}); give an earlier "
                                  "checkpoint folder, or --resume alone for the latest good one")
        run.accelerator.wait_for_everyone()  # every rank has judged it before the main one moves it
        aside = set_aside(found) if run.is_main else found.with_name(f".{found.name}.damaged")
        run.accelerator.wait_for_everyone()
        previous = latest_checkpoint(output_dir)
        run.accelerator.print(f"--resume: {found} is damaged ({damage}); set aside as {aside.name}; "
                              + (f"resuming from {previous}" if previous else "no earlier checkpoint"))
        if previous is None:
            raise CheckpointError(f"--resume: every checkpoint in {output_dir / 'checkpoints'} is damaged (set aside "
                                  "as .step_*.damaged); rerun without --resume to start again")
        found = previous
    return None


def run_logs(run: RecipeRun, resumed_step: int | None, names: Sequence[str] = ("losses.csv", "evaluation.csv"),
             output_dir: str | os.PathLike | None = None) -> list[CsvLog | None]:
    """One :class:`CsvLog` per name on the main process (None elsewhere), cut after ``resumed_step``;
    the run's ``config.json`` is written first (:meth:`RecipeRun.record_config`)."""
    if not run.is_main:
        return [None for _ in names]
    run.record_config()
    return [CsvLog(Path(output_dir or run.out) / name, resume_after_step=resumed_step) for name in names]


def finish_run(run: RecipeRun) -> None:
    """Wait for every process, then close accelerate's trackers."""
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()


def run_recipe(main: Callable[[Sequence[str] | None], int], name: str, argv: Sequence[str] | None = None) -> int:
    """``main(argv)`` with video_fer's errors and failed file operations as one line on stderr, exit code 2.

    The line names the input or path at fault and what to do (``OSError``: :func:`video_fer.io.describe_os_error`).
    ``--debug`` on the command line keeps the traceback instead. With several processes each
    process that fails prints its line, tagged with its rank.
    """
    from video_fer.io import describe_os_error

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(argv) or 0)
    except (VideoFerError, OSError) as error:
        if "--debug" in argv:
            raise
        text = str(error) if isinstance(error, VideoFerError) else describe_os_error(error)
        if "\nOriginal Traceback" in text:  # re-raised from a DataLoader worker: its message is the last line
            text = text.strip().splitlines()[-1].split(": ", 1)[-1]
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("RANK", "0")
        print(f"{name}{f' [rank {rank}]' if world > 1 else ''}: error: {text}", file=sys.stderr, flush=True)
        return EXIT_ERROR


class StepLoop:
    """The optimiser-step loop of the fine-tuning recipes, in pieces their own flat loop calls.

    Per step: the LR of the schedule, one optimiser step, the step's log row (every
    ``log_every`` steps), evaluations when due, a checkpoint every ``save_every`` steps. Where
    the run is (:class:`StepProgress`) is checkpointed, so ``--resume`` continues exactly.

    Args:
        run: the started run; model, optimizer: already prepared by accelerate.
        optim: the ``optim`` section (``lr``, ``schedule``, ``warmup_steps``, ``grad_clip``, ...).
        train: the ``train`` section (``batch_size``, ``epochs``, ``max_steps``, ``save_every``,
            ``keep_checkpoints``, ``log_every``).
        count: training items; what: their name in the error when they are fewer than a batch.
        resume: ``--resume`` (None, "auto" or a checkpoint folder).
    """

    def __init__(self, run: RecipeRun, model, optimizer, optim, train, count: int, resume, desc: str,
                 what: str = "training faces") -> None:
        from tqdm.auto import tqdm

        if count < train.batch_size * run.world:
            raise ConfigError(f"{count} {what}: fewer than train.batch_size x processes "
                              f"({train.batch_size} x {run.world}); lower train.batch_size")
        self.run, self.model, self.optimizer, self.optim, self.train, self.count = run, model, optimizer, optim, train, count
        self.steps_per_epoch = count // (train.batch_size * run.world)
        self.total_steps = train.max_steps or train.epochs * self.steps_per_epoch
        self.progress = StepProgress()
        run.accelerator.register_for_checkpointing(self.progress)
        self.resumed_from = self.last_checkpoint = resume_state(run, resume)
        if self.resumed_from is not None:
            run.accelerator.print(f"resumed from {self.resumed_from} (step {self.progress.step})")
        self.loss_log, self.eval_log = run_logs(run, self.progress.step if self.resumed_from else None)
        self.bar = tqdm(total=self.total_steps, initial=self.progress.step, disable=not run.is_main, desc=desc)
        self._batch_index = 0

    def batches(self) -> Iterator[tuple[int, torch.Tensor, torch.Generator]]:
        """``(epoch, rows (batch_size,), augmentation generator)`` of every step left; see :func:`epoch_batches`."""
        for epoch, batch_index, rows in epoch_batches(self.progress, self.total_steps, self.steps_per_epoch,
                                                      self.count, self.train.batch_size, self.run.seed,
                                                      self.run.rank, self.run.world):
            self._batch_index = batch_index
            yield epoch, rows, seeded_generator(self.run.seed, self.run.rank, self.progress.step)

    def step(self, terms: Mapping[str, torch.Tensor], extra: Callable[[], dict] | None = None) -> None:
        """Optimise ``terms["total"]``; on log steps write the terms averaged over processes and ``extra()``
        (called on every process: it may reduce over them)."""
        progress, train = self.progress, self.train
        lr = finetune_learning_rate(self.optim, progress.step, self.total_steps)
        optimizer_step(self.run.accelerator, self.model, self.optimizer, terms["total"], lr, self.optim.grad_clip)
        progress.advance(self._batch_index)
        self.bar.update(1)
        if progress.step % train.log_every and progress.step != self.total_steps:
            return
        values = {**mean_over_processes(self.run.accelerator, terms), **(extra() if extra else {})}
        if self.run.is_main:
            self.loss_log.write({"step": progress.step, "epoch": progress.epoch, "lr": lr, **values})
            self.bar.set_postfix({name: f"{value:.3f}" for name, value in values.items() if name != "lr"})

    def evaluation_due(self, every: int) -> bool:
        """Every ``every`` steps (0: at the end of each epoch), and always at the last step."""
        return evaluation_due(self.progress, every, self.steps_per_epoch, self.total_steps)

    def log_evaluation(self, results: Mapping[str, Any], message: str) -> None:
        """One ``evaluation.csv`` row of the scalar results, and ``message`` under the progress bar."""
        if self.run.is_main:
            scalars = {key: value for key, value in results.items() if isinstance(value, (int, float, str))}
            self.eval_log.write({"step": self.progress.step, "epoch": self.progress.epoch, **scalars})
            self.bar.write(message)

    def save_if_due(self) -> None:
        """A checkpoint every ``train.save_every`` steps (0: only at the end)."""
        if self.train.save_every and self.progress.step % self.train.save_every == 0:
            self.last_checkpoint = save_checkpoint(self.run.accelerator, self.run.out, self.progress.step,
                                                   self.train.keep_checkpoints)

    def finish(self) -> int:
        """Close the bar and save the final checkpoint (unless the last save was this step); returns the step."""
        self.bar.close()
        save_final_checkpoint(self.run.accelerator, self.run.out, self.progress.step, self.train.keep_checkpoints,
                              self.last_checkpoint)
        return self.progress.step


def finish_task_run(run: RecipeRun, model, alignment, summary: Mapping[str, Any], pictures: str) -> None:
    """The end of a head recipe: ``model/`` (the whole task model, ``video_fer.load_model``) and, when it has
    one, ``encoder/`` (an encoder export), both recording the crop alignment they were trained on;
    ``metrics.json`` (``summary``); a line listing the outputs; :func:`finish_run`."""
    from video_fer.io import atomic_write
    from video_fer.models.checkpoint import save_encoder, save_model

    if run.is_main:
        unwrapped = run.accelerator.unwrap_model(model)
        save_model(unwrapped, run.out / "model", extra={"step": summary["steps"], "alignment": alignment.to_dict()})
        if getattr(unwrapped, "encoder", None) is not None:
            save_encoder(unwrapped.encoder, run.out / "encoder", alignment, extra={"step": summary["steps"]})
        with atomic_write(run.out / "metrics.json") as handle:
            json.dump(dict(summary), handle, indent=2)
        run.accelerator.print(f"outputs in {run.out.resolve()}: metrics.json, evaluation.csv, losses.csv, {pictures}, "
                              "model/ (video_fer.load_model), encoder/, checkpoints/")
    finish_run(run)
