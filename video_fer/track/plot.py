"""Pictures of a track table: ``--plot`` (PNG over time) and ``--video-out`` (annotated mp4).

- :func:`plot_tracks`: for the face seen in most frames, an AU heat map (AUs x time: intensities
  ``_r`` when the table has them, else presences ``_c``), the expression probabilities, the
  valence/arousal curves and head pose / gaze angles, one panel per kind of column the table has.
- :class:`VideoAnnotator`: the processed frames with each face's 68 landmarks, its id, the
  three strongest AUs and the top expression, encoded with PyAV (libx264, yuv420p).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from video_fer.errors import VideoFerError
from video_fer.io import atomic_path
from video_fer.track.table import column_names

TOP_AUS_SHOWN = 3
_FACE_COLOURS = ((0, 220, 0), (255, 170, 0), (0, 170, 255), (255, 0, 200))


def au_display_columns(columns) -> tuple[list[str], float]:
    """The AU columns a picture shows and their top value: intensities ``AUxx_r`` (0-5) if any, else presences."""
    intensity = [name for name in columns if name.startswith("AU") and name.endswith("_r")]
    if intensity:
        return intensity, 5.0
    return [name for name in columns if name.startswith("AU") and name.endswith("_c")], 1.0


def main_face_rows(table: Mapping[str, np.ndarray]) -> np.ndarray:
    """Row mask of the face id present in most rows (all rows False if no face was found)."""
    ids = table["face_id"][table["success"] == 1]
    if ids.size == 0:
        return np.zeros(len(table["face_id"]), bool)
    values, counts = np.unique(ids, return_counts=True)
    return table["face_id"] == values[counts.argmax()]


def plot_tracks(table: Mapping[str, np.ndarray], bundle, path: str | os.PathLike, title: str = "") -> Path:
    """Write a PNG of the main face's tracks over time; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = column_names(bundle)
    rows = main_face_rows(table)
    time = table["timestamp"][rows]
    au_names, au_max = au_display_columns(columns)
    expressions = [name for name in columns if name.startswith("expression_")]
    panels = [kind for kind, present in (("au", au_names), ("expression", expressions), ("va", "valence" in columns),
                                         ("pose", "pose_Rx" in columns)) if present]
    figure, axes = plt.subplots(max(len(panels), 1), 1, figsize=(10, 2.6 * max(len(panels), 1)), squeeze=False,
                                sharex=True)
    axes = axes[:, 0]
    for axis, kind in zip(axes, panels):
        if kind == "au":
            heat = np.stack([table[name][rows] for name in au_names]) if rows.any() else np.zeros((len(au_names), 0))
            extent = (time[0], time[-1], len(au_names) - 0.5, -0.5) if time.size else None
            image = axis.imshow(heat, aspect="auto", cmap="magma", vmin=0, vmax=au_max, interpolation="nearest",
                                extent=extent)
            axis.set_yticks(range(len(au_names)), [name[:-2] for name in au_names])
            # above the panel, so it does not narrow it: every panel keeps the same time axis
            figure.colorbar(image, ax=axis, location="top", fraction=0.08, pad=0.04,
                            label="AU intensity (0-5)" if au_max > 1 else "AU presence")
        elif kind == "expression":
            for name in expressions:
                axis.plot(time, table[name][rows], label=name[len("expression_"):])
            axis.set_ylim(0, 1)
            axis.set_ylabel("probability")
            axis.legend(loc="upper right", fontsize=7, ncol=4)
        elif kind == "va":
            axis.plot(time, table["valence"][rows], label="valence")
            axis.plot(time, table["arousal"][rows], label="arousal")
            axis.axhline(0, color="grey", linewidth=0.5)
            axis.set_ylim(-1, 1)
            axis.legend(loc="upper right", fontsize=7)
        else:
            for name, label in (("pose_Rx", "pitch"), ("pose_Ry", "yaw"), ("pose_Rz", "roll"),
                                ("gaze_angle_x", "gaze x"), ("gaze_angle_y", "gaze y")):
                if name in columns:
                    axis.plot(time, np.degrees(table[name][rows]), label=label)
            axis.set_ylabel("degrees")
            axis.legend(loc="upper right", fontsize=7, ncol=5)
    axes[-1].set_xlabel("time (s)")
    face = int(table["face_id"][rows][0]) if rows.any() else -1
    figure.suptitle(f"{title}  face {face}" if title else f"face {face}")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path


class VideoAnnotator:
    """Write processed frames with landmarks and labels to an H.264 mp4 (PyAV), batch by batch.

    Args:
        path: the mp4 to write (temp file renamed on a successful close).
        fps: frame rate of the written video (the clip's fps / ``every``).
        size: ``(width, height)`` of the frames.
        bundle: the :class:`~video_fer.track.bundle.ModelBundle` (for the table's columns).
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], bundle, crf: int = 23):
        import av
        from fractions import Fraction

        self.path = Path(path)
        self._context = atomic_path(self.path)
        tmp = self._context.__enter__()
        self._container = av.open(str(tmp), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = size[0] // 2 * 2, size[1] // 2 * 2  # yuv420p needs even sides
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self._columns = column_names(bundle)
        self._au_names, _ = au_display_columns(self._columns)

    def _labels(self, rows: Mapping[str, np.ndarray], row: int) -> str:
        parts = [f"id {int(rows['face_id'][row])}"]
        if self._au_names:
            values = np.array([rows[name][row] for name in self._au_names])
            top = np.argsort(-values)[:TOP_AUS_SHOWN]
            parts.append(" ".join(f"{self._au_names[k][:-2]} {values[k]:.2f}" for k in top))
        if "expression" in self._columns:
            parts.append(str(rows["expression"][row]))
        if "valence" in self._columns:
            parts.append(f"V {rows['valence'][row]:+.2f} A {rows['arousal'][row]:+.2f}")
        return " | ".join(parts)

    def write(self, batch, predictions, rows: Mapping[str, np.ndarray]) -> None:
        """Draw the faces of one batch (:class:`~video_fer.track.stages.FaceBatch`) and encode its frames."""
        import av
        from PIL import Image, ImageDraw

        frames = batch.frames.numpy()
        face_row = {}  # (frame index, face id) -> row, for the labels
        for row in np.flatnonzero(rows["success"] == 1):
            face_row[(int(rows["frame"][row]), int(rows["face_id"][row]))] = row
        for position, frame in enumerate(frames):
            image = Image.fromarray(frame)
            draw = ImageDraw.Draw(image)
            frame_index = int(batch.frame_indices[position])
            for face in np.flatnonzero(batch.positions == position):
                face_id = int(batch.face_ids[face])
                colour = _FACE_COLOURS[face_id % len(_FACE_COLOURS)]
                for x, y in batch.landmarks[face]:
                    draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
                x0, y0 = batch.landmarks[face].min(0)
                row = face_row.get((frame_index, face_id))
                if row is not None:
                    draw.text((float(x0), max(float(y0) - 14, 0)), self._labels(rows, row), fill=colour)
            picture = np.asarray(image)[: self._stream.height, : self._stream.width]
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)

    def close(self, ok: bool = True) -> None:
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
        if ok:
            self._context.__exit__(None, None, None)
        else:
            self._context.__exit__(VideoFerError, VideoFerError("aborted"), None)
