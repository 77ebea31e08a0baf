"""Reading video: frame count, fps, per-frame timestamps, batched random access, streaming.

decord gives the metadata and random access; streaming (:meth:`VideoReader.iter_batches`) decodes
sequentially with PyAV (the same ffmpeg, pixel-identical RGB), because decord decodes ahead in a
thread of its own without bound while a slow caller (landmarks, a network) is busy with a batch.

Every problem with the input (missing, empty, a directory, not a video, truncated or
corrupt data) is raised as :class:`~video_fer.errors.VideoReadError` naming the file.
Decoded frames are ``torch.uint8`` tensors ``(T, H, W, 3)`` in RGB, in *display* orientation:
a phone clip stored sideways with a rotation in its header comes out upright on every path
(decord applies the rotation itself; PyAV's frames are turned by their own ``frame.rotation``).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from video_fer.errors import VideoReadError

if TYPE_CHECKING:
    import av

# Suffixes `prepare` treats as videos when it scans a folder (lower case, with the dot).
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts",
)

_ERROR_MESSAGE_CHARS = 240  # decoder errors can carry a C++ stack trace; keep the useful head only
_FORWARD_CHUNK = 32  # frames decoded per step when a file must be read forward (bounded memory)


def _short_error_message(error: BaseException) -> str:
    """First line of a decord/PyAV error, trimmed (decord appends a C++ trace)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:_ERROR_MESSAGE_CHARS]


def _frames_to_tensor(frames) -> torch.Tensor:
    """decord output (native NDArray, or a torch tensor if someone set the torch bridge) -> uint8 tensor."""
    if isinstance(frames, torch.Tensor):
        return frames
    if hasattr(frames, "asnumpy"):
        return torch.from_numpy(frames.asnumpy())
    return torch.from_numpy(np.asarray(frames))


class StreamEndedError(VideoReadError):
    """Streaming stopped before the frames the container lists: ``last_frame`` is the last one delivered (-1: none)."""

    def __init__(self, message: str, last_frame: int):
        super().__init__(message)
        self.last_frame = last_frame


def _display_pixels(frame: "av.VideoFrame") -> np.ndarray:
    """A PyAV frame as uint8 ``(H, W, 3)`` RGB in display orientation (its display matrix's quarter turns applied)."""
    pixels = frame.to_ndarray(format="rgb24")
    quarter_turns = int(round(getattr(frame, "rotation", 0) / 90.0)) % 4  # counter-clockwise, as decord turns
    return np.rot90(pixels, quarter_turns) if quarter_turns else pixels


def _trailing_hidden(path: Path, displayed_starts: np.ndarray, fps: float) -> int:
    """Frames after the end of an mp4/mov edit list (a trimmed clip): decord counts them, players and PyAV do not.

    The mov demuxer reports the edit list's length as the stream duration (without an edit list, the
    media's): frames starting at or after it are not shown.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if "mov" not in container.format.name or stream.duration is None or stream.time_base is None:
                return 0
            shown_until = float(stream.duration * stream.time_base)
    except (av.error.FFmpegError, IndexError):
        return 0  # decord read it; PyAV's view of the header is only a refinement
    return int(np.count_nonzero(displayed_starts > shown_until - 0.5 / fps))


def _check_path(path: Path) -> None:
    """Raise VideoReadError for problems visible before decord is asked (clearer than ffmpeg's words)."""
    if not path.exists():
        raise VideoReadError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise VideoReadError(f"{path}: is a directory, not a video file; pass a video file inside it")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes); re-copy or re-download it")
    if not os.access(path, os.R_OK):
        raise VideoReadError(f"{path}: file is not readable (permission denied)")


class VideoReader:
    """The frames of one video file: random access (decord) and streaming (PyAV), CPU.

    Attributes:
        path: the video file.
        num_frames: number of frames (also ``len(reader)``).
        fps: average frame rate reported by the container (frames per second).
        height, width: frame size in pixels.
        timestamps: float64 ``(num_frames,)`` start time of each frame in seconds, frame 0 at 0
            (containers with an edit list report a negative first time; it is shifted to 0).

    The last frame is decoded on open: a file that is truncated or corrupt after its header
    fails here with :class:`VideoReadError` instead of later in the middle of a job.

    Files whose edit list hides leading frames (decord reports negative start times) count only
    the displayed frames, and streams without frame times (H.264 with B-frames in AVI) take
    their times from the frame rate; decord's seeks are wrong on both, so they are decoded by
    reading forward, and random access on them costs a read from the start. Streaming
    (:meth:`iter_batches`) numbers PyAV's frames the same way and gives the same pixels.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 0):
        import decord  # imported here: decord loads ffmpeg, not needed by every caller of the package

        self.path = Path(path)
        _check_path(self.path)
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=num_threads)
            num_frames = len(self._reader)
            start_end = np.asarray(self._reader.get_frame_timestamp(np.arange(num_frames)), dtype=np.float64)
            fps = float(self._reader.get_avg_fps())
        except (RuntimeError, AssertionError, decord.DECORDError) as error:
            raise VideoReadError(
                f"{self.path}: not a readable video (decord: {_short_error_message(error)}); "
                "check that the file is complete and is a video ffmpeg can decode"
            ) from error
        if num_frames <= 0:
            raise VideoReadError(f"{self.path}: video stream has no frames")
        # An edit list that hides pre-roll frames (negative start times, e.g. a stream-copied cut):
        # decord counts the hidden frames and its seeks land that many frames early, while reading
        # forward from the start is right. Such files are served by forward reading only.
        # Streams without presentation times (e.g. H.264 with B-frames in AVI) report a huge negative
        # sentinel for every frame and decord's seeks land on wrong frames there: time comes from the
        # frame rate and frames are read forward.
        has_timestamps = bool(np.all(np.isfinite(start_end)) and start_end[:, 0].min() > -1e6)
        hidden = int(np.count_nonzero(start_end[:, 0] < -1e-6)) if has_timestamps else 0
        self._forward_only = hidden > 0 or not has_timestamps
        self._next_forward_index = 0  # the frame decord delivers next when reading forward
        self.num_frames = int(num_frames) - hidden
        if self.num_frames <= 0:
            raise VideoReadError(f"{self.path}: every frame is hidden by the container's edit list")
        self._stream_starts = None  # container times (s) of the displayed frames: where streaming seeks to
        if has_timestamps:
            displayed_starts = start_end[hidden:, 0]
            self.timestamps = displayed_starts - displayed_starts[0]
            self.fps = fps if np.isfinite(fps) and fps > 0 else self._fps_from_timestamps()
            trailing = _trailing_hidden(self.path, displayed_starts, self.fps)
            if 0 < trailing < self.num_frames:
                self.num_frames -= trailing
                displayed_starts = displayed_starts[:self.num_frames]
                self.timestamps = self.timestamps[:self.num_frames]
            self._stream_starts = displayed_starts
        else:
            if not (np.isfinite(fps) and fps > 0):
                raise VideoReadError(f"{self.path}: the stream has neither frame times nor a frame rate")
            self.fps = fps
            self.timestamps = np.arange(self.num_frames, dtype=np.float64) / fps
        # Decoding the last frame too proves the packet data is there to the end (decord opens some
        # corrupt files fine and fails only there); forward-only files would need a full read, so not them.
        probe = [0] if self._forward_only else [0, self.num_frames - 1]
        self._pyav_only = False
        try:
            probe_frames = self._decode(np.array(probe))
        except VideoReadError:
            if not self._decord_misreads_channels():
                raise
            # decord 0.6 takes the row stride for the channel count on narrow frames (1, 2, 8, 16, 24, 48 px
            # wide...) and cannot copy them out: valid files, served by PyAV reading forward.
            self._pyav_only = self._forward_only = True
            probe_frames = self._decode(np.array([0]))
        self.height, self.width = int(probe_frames.shape[1]), int(probe_frames.shape[2])

    def _decord_misreads_channels(self) -> bool:
        import decord

        try:
            return int(self._reader[0].shape[-1]) != 3
        except (RuntimeError, decord.DECORDError):
            return False

    def _fps_from_timestamps(self) -> float:
        """Frame rate from the median frame spacing (for containers that report no rate)."""
        spacing = np.diff(self.timestamps)
        spacing = spacing[spacing > 0]
        if spacing.size == 0:
            raise VideoReadError(f"{self.path}: frame rate unknown (no rate in the container, one frame only)")
        return float(1.0 / np.median(spacing))

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (f"VideoReader({str(self.path)!r}, num_frames={self.num_frames}, fps={self.fps:.3f}, "
                f"size={self.width}x{self.height})")

    def _normalise_indices(self, indices) -> np.ndarray:
        """int / sequence / array / tensor of frame indices -> int64 ``(T,)``; negatives count from the end."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        array = np.atleast_1d(np.asarray(indices))
        if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f"{self.path}: frame indices must be a 1-D sequence of integers, got {indices!r}")
        array = array.astype(np.int64)
        array = np.where(array < 0, array + self.num_frames, array)
        bad = array[(array < 0) | (array >= self.num_frames)]
        if bad.size:
            raise IndexError(f"{self.path}: frame indices {bad[:5].tolist()} out of range [0, {self.num_frames})")
        return array

    def _decode(self, indices: np.ndarray) -> torch.Tensor:
        """Decode already-checked indices -> uint8 ``(T, H, W, 3)``; decoder failures become VideoReadError."""
        import decord

        if self._reader is None:
            raise VideoReadError(f"{self.path}: this VideoReader was closed; open the file again")
        if self._pyav_only:
            return self._decode_with_pyav(indices)
        try:
            if self._forward_only:
                return self._decode_reading_forward(indices)
            return _frames_to_tensor(self._reader.get_batch(indices))
        except (RuntimeError, decord.DECORDError) as error:
            shown = indices[:5].tolist() + (["..."] if indices.size > 5 else [])
            raise VideoReadError(
                f"{self.path}: cannot decode frames {shown} (decord: {_short_error_message(error)}); "
                "the file is probably truncated or corrupt: re-copy or re-encode it"
            ) from error

    def _decode_reading_forward(self, indices: np.ndarray) -> torch.Tensor:
        """Decode by reading consecutive frames only (no seek), restarting at frame 0 when going back.

        Cost grows with the distance read, so random access on such files is slow but correct.
        """
        wanted, positions = np.unique(indices, return_inverse=True)
        if self._next_forward_index > wanted[0]:
            self._reader.seek(0)
            self._next_forward_index = 0
        kept: list[torch.Tensor] = []
        while self._next_forward_index <= wanted[-1]:
            chunk = np.arange(self._next_forward_index,
                              min(self._next_forward_index + _FORWARD_CHUNK, wanted[-1] + 1))
            frames = _frames_to_tensor(self._reader.get_batch(chunk))
            self._next_forward_index = int(chunk[-1]) + 1
            in_chunk = wanted[(wanted >= chunk[0]) & (wanted <= chunk[-1])]
            kept.append(frames[torch.from_numpy(in_chunk - chunk[0])])
        return torch.cat(kept)[torch.from_numpy(positions.reshape(-1))]

    def _decode_with_pyav(self, indices: np.ndarray) -> torch.Tensor:
        """Decode by streaming with PyAV from the first frame to the last index wanted (files decord misreads)."""
        wanted, positions = np.unique(indices, return_inverse=True)
        wanted_set, kept = set(wanted.tolist()), {}
        for index, frame in self._stream(0, int(wanted[-1]) + 1):
            if index in wanted_set:
                kept[index] = _display_pixels(frame)
        missing = [int(index) for index in wanted if index not in kept]
        if missing:
            raise VideoReadError(f"{self.path}: the stream ended before frame {missing[0]}; the file is probably "
                                 "truncated: re-copy or re-encode it")
        frames = torch.from_numpy(np.stack([kept[int(index)] for index in wanted]))
        return frames[torch.from_numpy(positions.reshape(-1))]

    def get(self, indices: int | Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) -> uint8 ``(T, H, W, 3)`` RGB."""
        array = self._normalise_indices(indices)
        if array.size == 0:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        return self._decode(array)

    def iter_batches(
        self, batch_size: int = 64, start: int = 0, end: int | None = None, step: int = 1
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Walk frames ``start, start+step, ... < end`` in batches; memory stays at one batch.

        Frames are decoded sequentially and synchronously (PyAV): nothing is decoded before it is
        asked for, however slow the caller. Frames between ``step``-th ones are decoded but not converted.

        Yields:
            ``(indices int64 (T,), frames uint8 (T, H, W, 3))`` with ``T <= batch_size``.

        Raises:
            StreamEndedError: the stream stopped before ``end`` (truncated, or damaged data the decoder
                refuses), after every frame decoded before that point was yielded.
        """
        if batch_size < 1 or step < 1:
            raise ValueError(f"{self.path}: batch_size and step must be >= 1 (got {batch_size}, {step})")
        end = self.num_frames if end is None else min(int(end), self.num_frames)
        if start < 0 or start > self.num_frames:
            raise IndexError(f"{self.path}: start={start} out of range [0, {self.num_frames}]")
        wanted = np.arange(start, end, step, dtype=np.int64)
        if self._reader is None:
            raise VideoReadError(f"{self.path}: this VideoReader was closed; open the file again")
        if wanted.size == 0:
            return
        delivered = 0
        pending: list[np.ndarray] = []
        failure: VideoReadError | None = None
        try:
            for index, frame in self._stream(start, end):
                if (index - start) % step:
                    continue
                pixels = _display_pixels(frame)
                if pixels.shape[:2] != (self.height, self.width):  # e.g. a PyAV too old to report rotations
                    raise VideoReadError(f"{self.path}: PyAV decodes {pixels.shape[1]}x{pixels.shape[0]} frames but "
                                         f"the display is {self.width}x{self.height}; update PyAV (pip install -U av)")
                pending.append(pixels)
                if len(pending) == batch_size:
                    yield wanted[delivered:delivered + batch_size], torch.from_numpy(np.stack(pending))
                    delivered, pending = delivered + batch_size, []
        except VideoReadError as error:  # damaged data mid-stream: the frames decoded before it still count
            failure = error
        if pending:
            yield wanted[delivered:delivered + len(pending)], torch.from_numpy(np.stack(pending))
            delivered += len(pending)
        if failure is not None or delivered < wanted.size:
            last = int(wanted[delivered - 1]) if delivered else start - 1
            if failure is not None:
                raise StreamEndedError(f"{failure}; decoding stopped after frame {last} of {self.num_frames}", last) \
                    from failure
            raise StreamEndedError(
                f"{self.path}: the stream ended after frame {last} although the container lists {self.num_frames} "
                "frames; the file is probably truncated: re-copy or re-encode it", last)

    def _stream(self, start: int, end: int) -> Iterator[tuple[int, "av.VideoFrame"]]:
        """``(index, av.VideoFrame)`` for frames ``start .. end - 1`` in order, decoded with PyAV.

        Seeks to the keyframe before ``start`` and numbers frames from the first one's time; files
        decord cannot seek in (edit lists, no frame times), or whose times do not match, are read
        from the first frame and counted (PyAV honours edit lists, so it counts displayed frames).
        """
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"  # frame threads: a few frames in flight, no unbounded queue
                index, frames = self._first_frame_at_or_before(container, stream, start)
                for frame in frames:
                    if index >= end:
                        return
                    if index >= start:
                        yield index, frame
                    index += 1
        except av.error.FFmpegError as error:
            raise VideoReadError(
                f"{self.path}: cannot decode the stream (PyAV: {_short_error_message(error)}); "
                "the file is probably truncated or corrupt: re-copy or re-encode it"
            ) from error

    def _first_frame_at_or_before(self, container, stream, start: int):
        """-> ``(index of the next decoded frame, frame iterator)``, positioned at or before ``start``."""
        if start == 0 or self._forward_only or stream.time_base is None:
            return 0, container.decode(stream)
        container.seek(int(self._stream_starts[start] / stream.time_base), backward=True, any_frame=False,
                       stream=stream)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is not None and first.time is not None:
            index = int(np.abs(self._stream_starts - first.time).argmin())
            tolerance = 0.5 / self.fps
            if abs(self._stream_starts[index] - first.time) < tolerance and index <= start:
                return index, itertools.chain([first], frames)
        container.seek(0, backward=True, any_frame=False, stream=stream)  # times unusable: count from frame 0
        return 0, container.decode(stream)

    def close(self) -> None:
        """Release the decoder (also done when the reader is garbage-collected)."""
        self._reader = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def is_video_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS
