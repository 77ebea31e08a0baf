"""Silence MediaPipe's native log lines (absl/glog ``W0000 ...``, TFLite/LiteRT ``INFO: ...``) unless asked for.

Why file descriptors: those lines are written by C++ (absl logging, TFLite/LiteRT's logger)
straight to file descriptor 2, outside Python's ``logging``; neither ``GLOG_minloglevel`` nor
``TF_CPP_MIN_LOG_LEVEL`` reaches them in mediapipe 1.2.3 (checked: both leave every line), and
the Python package offers no log-level call. When they appear (mediapipe 1.2.3):
``FaceLandmarker.create_from_options`` writes 4-5 lines; ``FaceDetector`` writes lines when it is
created, a LiteRT "Input tensor memory is not aligned" warning on its first ``detect`` and
"INFO: ... DestroyAccelerator" when it is closed.

:class:`NativeLogFilter` replaces fd 2 with a pipe for a whole run; a thread copies what arrives
to the real stderr, dropping only lines that look like absl/glog ``I``/``W`` lines or TFLite/LiteRT
``INFO:`` lines. Python's own warnings and errors, progress bars (``\\r`` updates pass at once)
and MediaPipe's ``E``/``F`` lines pass through. ``video-fer track`` runs inside one unless
``--verbose``.
"""
from __future__ import annotations

import os
import re
import sys
import threading

# absl/glog info and warning lines ("I0000 00:00:1733.. 123 file.cc:42] ..."), absl's pre-init notices, and
# TFLite/LiteRT's "INFO: [file.cc:36] ..." / "INFO: Created TensorFlow Lite ..." lines. E and F lines pass.
NATIVE_LOG_LINE = re.compile(
    rb"(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] "
    rb"|INFO: (?:\[[\w./-]+:\d+\] |Created TensorFlow Lite)"
    rb"|WARNING: Logging before InitGoogle\(\)|WARNING: All log messages before absl::InitializeLog\(\))")
_SEGMENT_END = re.compile(rb"[\r\n]")


class NativeLogFilter:
    """Context manager: while inside, lines written to file descriptor 2 that look like
    MediaPipe/absl/TFLite info or warning logs are dropped; everything else passes (see the module doc).

    Args:
        enabled: False = do nothing (``--verbose``).

    Attributes:
        dropped: how many lines were dropped (after the block ends).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.dropped = 0
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "NativeLogFilter":
        if not self.enabled:
            return self
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._copy, args=(read_end,), name="native-log-filter", daemon=True)
        self._thread.start()
        return self

    def _forward(self, segment: bytes) -> None:
        """Write a segment on, without the native log line it ends with, if any. A log line can follow
        a progress bar's text in one segment: the bar's text has no line end until its next ``\\r``."""
        line = NATIVE_LOG_LINE.search(segment)
        if line is not None:
            self.dropped += 1
            segment = segment[:line.start()]
        if segment:
            os.write(self._saved, segment)

    def _copy(self, read_end: int) -> None:
        """Copy the pipe to the saved stderr segment by segment (a segment ends with ``\\n`` or ``\\r``)."""
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                start = 0
                for end in _SEGMENT_END.finditer(pending):
                    self._forward(pending[start:end.end()])
                    start = end.end()
                pending = pending[start:]
        self._forward(pending)  # a last line without its newline

    def __exit__(self, *exc_info) -> None:
        if not self.enabled or self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the copying thread sees the end
        self._thread.join(timeout=5.0)
        os.close(self._saved)
        self._saved = None


__all__ = ["NATIVE_LOG_LINE", "NativeLogFilter"]
