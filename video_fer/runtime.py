"""Process set-up shared by every verb: garbage-collector pausing at start-up, torch's thread count,
workers that end with their parent.

No torch import at module level: ``video-fer track`` imports this before it decides what to load.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def long_lived_allocations() -> Iterator[None]:
    """Pause the cyclic garbage collector while start-up allocates objects that live to the end.

    Importing torch and MediaPipe and building the model create about a million objects that
    are never garbage; the collector would traverse them again and again while they are made
    (~15 % of the imports' time, measured on torch + mediapipe) and at every later full
    collection. They are moved to the permanent generation afterwards (:func:`gc.freeze`), so
    later collections skip them. Nested uses leave the work to the outermost one.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run torch ops with ``count`` intra-op threads (None or 0: leave the setting), restoring it afterwards."""
    import torch

    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """Set how long a thread may hold the GIL while another waits for it (``sys.setswitchinterval``),
    restoring the previous value afterwards. The interval is process-wide.

    Why ``track`` shortens it: MediaPipe computes without the GIL, but each call ends in Python (its
    dispatcher thread, our worker, the result objects); with the default 5 ms, each of those hand-overs can
    wait up to 5 ms while the landmarks thread runs Python, so a ~8 ms landmarker call took ~12 ms.
    """
    import sys

    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> str:
    """End this process when its parent ends (call first in a worker process's initialiser).

    A spawned pool worker waits on its task pipe for ever when the parent is killed (``kill -9``),
    holding its memory. On Linux the kernel kills it (``prctl(PR_SET_PDEATHSIG, SIGKILL)``: when the
    thread that started it exits; a pool's workers are started by the thread that submits to it);
    elsewhere a daemon thread checks every ``poll_seconds`` whether the parent is still there.
    ``parent_pid``: the parent's ``os.getpid()`` (a parent that died before this call ends us at once).

    Returns:
        ``"prctl"`` or ``"watchdog"``: how the worker is tied to its parent.
    """
    import ctypes
    import os
    import signal
    import sys
    import threading

    mechanism = "watchdog"
    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                mechanism = "prctl"
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the tie was made
        os._exit(128 + signal.SIGKILL)
    if mechanism == "watchdog":
        def watch() -> None:
            while not threading.Event().wait(poll_seconds):
                if os.getppid() != parent_pid:
                    os._exit(128 + signal.SIGKILL)  # nobody reads our results; temp files are removed by the next run

        threading.Thread(target=watch, name="video-fer-parent-watchdog", daemon=True).start()
    return mechanism
