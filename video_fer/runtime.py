"""Process set-up shared by every verb: garbage-collector pausing at start-up, torch's thread count.

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
