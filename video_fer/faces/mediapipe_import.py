"""Import MediaPipe's Tasks API without the modules its package imports only for drawing and audio.

``import mediapipe`` imports all of ``mediapipe.tasks.python``: its drawing helpers import
``matplotlib.pyplot`` (~0.26 s) and its audio recorder ``sounddevice`` (~0.13 s), 0.3 s of
MediaPipe's 0.4 s import on this machine, paid at every ``video-fer track`` start-up for modules
the project never calls. :func:`import_mediapipe_without_plotting` imports MediaPipe while those
two (when not imported yet) are stood in for, and takes the stand-ins out of ``sys.modules`` right
after: a later ``import matplotlib`` or ``import sounddevice`` gets the real module. What no longer
works in that process is MediaPipe's own ``drawing_utils.plot_landmarks`` and ``AudioRecord``.

``importlib.util.LazyLoader`` would not do: the next ``import`` statement of a lazily loaded module
loads it at once (checked). Only ``video-fer track``'s entry point uses this, before it starts any
thread, so no other thread can import matplotlib while the stand-ins are in place.
"""
from __future__ import annotations

import sys
import types

_STOOD_IN = ("matplotlib", "matplotlib.pyplot", "sounddevice")


def import_mediapipe_without_plotting() -> None:
    """Import ``mediapipe`` and its Tasks API (once per process; nothing to do if it is imported already)."""
    if "mediapipe" in sys.modules:
        return
    pyplot = types.ModuleType("matplotlib.pyplot", "stand-in: matplotlib was not imported for MediaPipe")
    matplotlib = types.ModuleType("matplotlib", "stand-in: matplotlib was not imported for MediaPipe")
    matplotlib.pyplot = pyplot
    # None in sys.modules makes `import sounddevice` raise ImportError, which mediapipe's audio module catches
    stand_ins = {"matplotlib": matplotlib, "matplotlib.pyplot": pyplot, "sounddevice": None}
    placed = [name for name in _STOOD_IN if name not in sys.modules and not _has_parent_loaded(name)]
    sys.modules.update({name: stand_ins[name] for name in placed})
    try:
        import mediapipe  # noqa: F401
        from mediapipe.tasks.python import vision  # noqa: F401
    finally:
        for name in placed:
            if sys.modules.get(name) is stand_ins[name]:
                del sys.modules[name]


def _has_parent_loaded(name: str) -> bool:
    """``matplotlib.pyplot`` is not stood in for when the real matplotlib is loaded (its attribute would be wrong)."""
    parent = name.rpartition(".")[0]
    return bool(parent) and parent in sys.modules


__all__ = ["import_mediapipe_without_plotting"]
