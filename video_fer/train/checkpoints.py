"""Training checkpoints: ``accelerator.save_state`` written atomically, the last K kept, the one to resume from.

A checkpoint is ``<output_dir>/checkpoints/step_00000042`` (model, optimiser, RNG and every object
registered with ``accelerator.register_for_checkpointing``), so ``--resume`` continues exactly.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from video_fer.errors import ConfigError, VideoFerError

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")


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


def save_final_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, keep: int,
                          last_checkpoint: Path | None) -> Path:
    """Save the step-``step`` checkpoint unless ``last_checkpoint`` already is that step."""
    if last_checkpoint is not None and Path(last_checkpoint).name == checkpoint_dir(output_dir, step).name:
        return Path(last_checkpoint)
    return save_checkpoint(accelerator, output_dir, step, keep)


def find_resume_checkpoint(resume: str | os.PathLike | bool | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``--resume`` asks for: ``"auto"`` / True the latest of ``output_dir``, else that folder.

    Returns None when nothing is asked or nothing was saved yet.

    Raises:
        ConfigError: the folder given is not a finished checkpoint.
    """
    if not resume:
        return None
    if resume is True or resume == "auto":
        return latest_checkpoint(output_dir)
    found = Path(resume)
    if not (found.is_dir() and CHECKPOINT_PATTERN.match(found.name)):
        raise ConfigError(f"--resume {found}: not a finished checkpoint folder; give one of "
                          f"{Path(output_dir) / 'checkpoints'}/step_* or --resume alone for the latest")
    return found
