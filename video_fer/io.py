"""Small file helpers shared by every part that writes results.

- :func:`atomic_write` / :func:`atomic_path`: a temp file beside the target, renamed over it on
  success, never a half file. Files get the usual permissions (``0o666`` minus the umask, e.g.
  0644 under umask 022), also those written by other libraries' writers (safetensors writes 0600).
- :func:`describe_os_error` and :func:`reporting_write_errors`: a failed write as one sentence
  naming the path and what to do (no space left, file too large, read-only, a file in the way).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import threading
from pathlib import Path
from typing import Iterator

from video_fer.errors import OutputError

_UMASK_LOCK = threading.Lock()
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")  # Rust (safetensors) and Python wordings
# What torch's C++ file writer says when a write fails (it carries no errno): "unexpected pos", ...
_TORCH_WRITER_FAILED = re.compile(r"unexpected pos|file write failed|PytorchStreamWriter|inline_container")
NEARLY_FULL_BYTES = 64 << 20  # less free than this after a write failed without an errno: the disk is full

_ADVICE = {
    errno.EACCES: "no permission to write there: choose another folder or fix its permissions",
    errno.EPERM: "not permitted (read-only or immutable): choose another folder",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.ENOTDIR: "a file is in the way where a folder is needed: move it or choose another path",
    errno.EEXIST: "something is in the way: move it or choose another path",
    errno.EISDIR: "a folder is in the way where a file is needed: move it or choose another path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOSPC: "free some space or write elsewhere, then rerun (with --resume for training)",
    errno.EDQUOT: "free some space or write elsewhere, then rerun (with --resume for training)",
    errno.EFBIG: "raise the file size limit (`ulimit -f`) or write elsewhere, then rerun",
}


# ------------------------------------------------------------------------------ permissions
def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``; else set-and-restore under a lock)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # no /proc (not Linux): the classic dance, briefly umask 0o077 for the whole process
        previous = os.umask(0o077)
        os.umask(previous)
    return previous


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` minus the umask."""
    return 0o666 & ~current_umask()


def give_default_mode(path: str | os.PathLike) -> None:
    """chmod a file another library wrote (safetensors and temp-file writers make 0600) to the usual mode."""
    os.chmod(path, default_file_mode())


def give_default_mode_tree(folder: str | os.PathLike) -> None:
    """:func:`give_default_mode` on every regular file under ``folder`` (e.g. an accelerate checkpoint)."""
    mode = default_file_mode()
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
                os.chmod(path, mode)


def _create_exclusive(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new file with a random name in ``folder``, created ``0o666`` so the kernel applies the umask (and
    a folder's default ACL); like ``mkstemp``, never an existing file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temp file", str(folder / f"{prefix}*{suffix}"))


def temp_names(path: str | os.PathLike) -> list[Path]:
    """Temp files :func:`atomic_write` and :func:`atomic_path` leave beside ``path`` when killed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(set(path.parent.glob(f".{path.name}.*.tmp")) | {p for p in [partial_name(path)] if p.exists()})


def partial_name(path: Path) -> Path:
    """The temp name :func:`atomic_path` writes ``path`` under."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


# ------------------------------------------------------------------------------ atomic writers
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temp file beside ``path``; on success rename it over ``path`` (never a half file).

    The file gets the usual mode (``0o666`` minus the umask). A failed write (no space, file size
    limit, read-only folder) is an :class:`~video_fer.errors.OutputError` naming ``path`` and what to do.
    """
    path = Path(path)
    with reporting_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = _create_exclusive(path.parent, f".{path.name}.", ".tmp")
    except OSError as error:  # named after the file wanted, not its hidden temp name
        raise OutputError(describe_os_error(error, path)) from error
    handle = os.fdopen(fd, mode)
    try:
        with _writing(path, tmp):
            yield handle
        with reporting_write_errors(path):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # after a failed write, closing retries the write and fails again
            handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for writers that want a filename (mp4, npz, safetensors).

    On success the temp file gets the usual mode (whatever the writer gave it) and replaces ``path``;
    a writer failing for want of space or permission is an :class:`~video_fer.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    with reporting_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        with _writing(path, tmp):
            yield tmp
        with reporting_write_errors(path):
            give_default_mode(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _writing(path: Path, tmp: Path) -> Iterator[None]:
    """Inside an atomic writer's block: write failures of the temp file (or without a file name) are ``path``'s;
    an OSError naming another file belongs to the caller and passes unchanged."""
    try:
        yield
    except OutputError:
        raise
    except Exception as error:
        filename = getattr(error, "filename", None)
        if not is_write_failure(error) or filename not in (None, str(tmp), tmp):
            raise
        raise OutputError(describe_os_error(error, path)) from error


# ------------------------------------------------------------------------------ failed writes in one line
def _errno_of(error: BaseException | None) -> int | None:
    """errno of ``error`` or of its causes, or one written in its text (Rust and C++ writers)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno
        match = _ERRNO_IN_TEXT.search(str(error))
        if match:
            return int(match.group(1) or match.group(2))
        error = error.__cause__ or error.__context__
    return None


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if limit == resource.RLIM_INFINITY else int(limit)


def describe_os_error(error: BaseException, path: str | os.PathLike | None = None) -> str:
    """``<path>: <what happened>; <what to do>`` for a failed file operation.

    ``path`` defaults to the error's own file name. Writers that give no errno (torch's C++ file
    writer says "unexpected pos") are judged by the disk: little free space means it is full, a
    file size limit (``ulimit -f``) means that limit.
    """
    if path is None:
        path = getattr(error, "filename", None)
        if path is not None and getattr(error, "filename2", None) is not None:
            path = f"{path} -> {error.filename2}"
    shown = path if path is not None else "(path not known)"
    code = _errno_of(error)
    free = None
    if path is not None and code in (None, errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(_existing_parent(Path(str(path).split(" -> ")[0]))).free
    if code is None:
        if free is not None and free < NEARLY_FULL_BYTES:
            code = errno.ENOSPC
        elif _file_size_limit() is not None:
            code = errno.EFBIG
    if code in (errno.ENOSPC, errno.EDQUOT):
        room = f" ({free / 2**20:.1f} MiB free there)" if free is not None else ""
        what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        return f"{shown}: {what}{room}; {_ADVICE[code]}"
    if code == errno.EFBIG:
        limit = _file_size_limit()
        return (f"{shown}: file too large (file size limit {'unlimited' if limit is None else f'{limit} bytes'}); "
                f"{_ADVICE[code]}")
    if code is not None:
        return f"{shown}: {os.strerror(code).lower()}; {_ADVICE.get(code, 'check the path and the disk')}"
    words = " ".join(str(error).split())[:160]
    return f"{shown}: could not write ({type(error).__name__}: {words}); check the folder and the disk"


def is_write_failure(error: BaseException) -> bool:
    """True for what writers raise when the file system refuses (OSError, safetensors', torch's writer).

    Network failures are OSErrors too (a download inside an atomic writer), but not the file's fault."""
    if isinstance(error, OSError):
        return not is_network_failure(error)
    if type(error).__name__ == "SafetensorError":
        return _errno_of(error) is not None
    return isinstance(error, RuntimeError) and bool(_TORCH_WRITER_FAILED.search(str(error)))


def is_network_failure(error: BaseException) -> bool:
    """An unreachable host, a refused or reset connection, a timeout (urllib wraps them in URLError)."""
    import socket
    import urllib.error

    return isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror))


@contextlib.contextmanager
def reporting_write_errors(path: str | os.PathLike, what: str | None = None) -> Iterator[None]:
    """Failed writes inside the block -> :class:`~video_fer.errors.OutputError` (``[what: ]<path>: <cause>; <advice>``).

    Catches OSError (an OSError of another path keeps its own name), safetensors' errors with an
    OS error inside, and torch's C++ writer's ``RuntimeError`` ("unexpected pos"); anything else
    passes unchanged.
    """
    try:
        yield
    except OutputError:
        raise
    except Exception as error:
        if not is_write_failure(error):
            raise
        own_name = isinstance(error, OSError) and error.filename is not None
        text = describe_os_error(error, None if own_name else path)
        raise OutputError(f"{what}: {text}" if what else text) from error


def remove_tree_quietly(folder: str | os.PathLike) -> None:
    """Delete a half-written folder (a failed checkpoint), ignoring what cannot be deleted."""
    shutil.rmtree(folder, ignore_errors=True)
