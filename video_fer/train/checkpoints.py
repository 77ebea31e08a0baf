"""Training checkpoints: ``accelerator.save_state`` written atomically, the last K kept, the one to resume from.

A checkpoint is ``<output_dir>/checkpoints/step_00000042`` (model, optimiser, RNG and every object
registered with ``accelerator.register_for_checkpointing``), so ``--resume`` continues exactly.
A save that fails (no space left, file size limit) says so with the path and leaves no half
checkpoint; a checkpoint whose files are damaged is found before loading (:func:`damage_of`),
set aside as ``.step_*.damaged`` (:func:`set_aside`) and ``--resume`` takes the previous one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Mapping

from video_fer.errors import ConfigError, VideoFerError
from video_fer.io import atomic_write, give_default_mode_tree, reporting_write_errors

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


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, keep: int = 2,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """``accelerator.save_state`` into a temp folder, renamed into place once every rank has written.

    Call on every rank. A crash mid-save leaves only a hidden ``.step_*.tmp`` folder that
    :func:`latest_checkpoint` ignores, so the last finished checkpoint stays the one to resume.
    ``extra``: JSON files written into the checkpoint before it is renamed (name -> document).
    Keeps the newest ``keep`` checkpoints (``keep <= 0`` keeps all). Files get the usual mode.

    Raises:
        OutputError: the save failed (e.g. "no space left on device", naming the folder and the
            last good checkpoint); the half-written temp folder is removed.
    """
    final = checkpoint_dir(output_dir, step)
    temp = final.with_name(f".{final.name}.tmp")
    with reporting_write_errors(temp.parent, f"checkpoint of step {step}"):
        if accelerator.is_main_process:
            if temp.exists():
                shutil.rmtree(temp)  # left by an interrupted save
            temp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        with reporting_write_errors(temp, f"checkpoint of step {step}"):
            accelerator.save_state(str(temp))
            if accelerator.is_main_process:
                for name, document in (extra or {}).items():
                    with atomic_write(temp / name) as handle:
                        json.dump(document, handle)
                give_default_mode_tree(temp)  # safetensors writes its files 0600
    except VideoFerError as error:
        shutil.rmtree(temp, ignore_errors=True)  # half a checkpoint would only take the last free bytes
        previous = list_checkpoints(output_dir)
        raise type(error)(f"{error}; the last good checkpoint is {previous[-1] if previous else 'none yet'}") \
            from error.__cause__
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


# Files accelerate writes with torch.save (zip archives: their CRCs prove them whole) and safetensors.
_ZIP_SUFFIXES = (".bin", ".pkl", ".pt")


def damage_of(checkpoint: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint's files, or None when every file reads whole.

    Checks the files alone, without loading anything into a model: each ``*.safetensors`` parses
    and covers its data, each torch archive (``*.bin``, ``*.pkl``, ``*.pt``) passes its CRC check,
    each ``*.json`` parses. A checkpoint that does not fit the model (other settings) is not
    "damaged": loading it fails with accelerate's own message.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(checkpoint)
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not files:
        return "it holds no file"
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):  # the header must cover the file's data
                    pass
            elif path.suffix in _ZIP_SUFFIXES:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{path.name}: member {bad} fails its checksum"
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except (SafetensorError, zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            return f"{path.name}: {' '.join(str(error).split())[:160]}"
    return None


def set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint to a hidden ``.step_*.damaged`` folder (kept for inspection, never resumed
    nor counted by the keep-last-K rotation, which would otherwise delete the good one before it)."""
    target = checkpoint.with_name(f".{checkpoint.name}.damaged")
    number = 1
    while target.exists():
        number += 1
        target = checkpoint.with_name(f".{checkpoint.name}.damaged{number}")
    os.replace(checkpoint, target)
    return target


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
