"""AU fine-tuning data: labelled face crops from a face-track cache, sampling, BP4D frames as videos.

The benchmark readers (:mod:`video_fer.data.au_datasets`) give one row per labelled frame;
``video-fer prepare`` gives aligned crops of the same videos. This module joins the two
(reporting, never silently dropping, the frames whose face was not found), serves the crops
with their labels:

* :class:`LabelledCacheFaces`: the labelled frames that have a face, with where each crop lives;
* :func:`read_face_crops`: crops of many frames with one decoder call per track;
* :class:`AUFaceDataset`: a map-style dataset with batched ``__getitems__``;
* :func:`balanced_sampling_weights`: per-frame weights that lift rare AUs (``WeightedRandomSampler``);
* :func:`compute_embeddings`: the frozen encoder's action embeddings of every frame, once.

The model is :class:`video_fer.models.task_models.AUClassifier`; its losses and positive
weights are in :mod:`video_fer.train.losses.au`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from video_fer.data.au_datasets import AUFrameTable, FaceCacheJoin, join_with_face_cache
from video_fer.data.augment import as_float_images
from video_fer.errors import ConfigError

__all__ = [
    "LabelledCacheFaces", "match_labelled_faces", "faces_report", "read_face_crops", "AUFaceDataset",
    "balanced_sampling_weights", "compute_embeddings", "sequence_video_path", "remap_to_sequence_videos",
    "write_sequence_videos",
]


# ----------------------------------------------------------------------------- labelled faces
@dataclass
class LabelledCacheFaces:
    """Labelled frames that have a face crop in the cache (N rows).

    Attributes:
        table: the label rows (:class:`~video_fer.data.au_datasets.AUFrameTable`).
        track_ids: ``(N,)`` str, the cache track holding each frame's crop.
        positions: ``(N,)`` int64, the crop's position inside that track.
    """

    table: AUFrameTable
    track_ids: np.ndarray
    positions: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.table) == len(self.track_ids) == len(self.positions)):
            raise ValueError(f"LabelledCacheFaces: {len(self.table)} label rows, {len(self.track_ids)} track ids and "
                             f"{len(self.positions)} positions must match")
        if (self.positions < 0).any():
            raise ValueError("LabelledCacheFaces: a row has no face (position -1); keep only join.matched rows")

    def __len__(self) -> int:
        return len(self.table)

    def select(self, rows) -> "LabelledCacheFaces":
        """The rows picked by a bool mask ``(N,)`` or integer indices."""
        rows = np.asarray(rows)
        return LabelledCacheFaces(self.table.select(rows), self.track_ids[rows], self.positions[rows])

    def for_subjects(self, subjects: Iterable[str]) -> "LabelledCacheFaces":
        return self.select(np.isin(self.table.subjects, list(subjects)))

    @property
    def subjects(self) -> list[str]:
        """Subjects present, sorted."""
        return sorted({str(subject) for subject in self.table.subjects})


def match_labelled_faces(table: AUFrameTable, cache) -> tuple[LabelledCacheFaces, FaceCacheJoin]:
    """Join label rows with a face-track cache; returns the rows with a face and the join report.

    The report (``join.summary()``, :func:`faces_report`) lists per subject the labelled
    frames without a face: callers print and save it, so nothing is dropped silently.
    """
    join = join_with_face_cache(table, cache)
    matched = join.matched
    return LabelledCacheFaces(table.select(matched), join.track_ids[matched], join.track_positions[matched]), join


def faces_report(join: FaceCacheJoin) -> dict:
    """The join report as JSON: labelled / without-face counts in total and per subject."""
    return {"labelled": int(sum(join.frames_per_subject.values())),
            "without_face": int(sum(join.unmatched_per_subject.values())),
            "frames_per_subject": dict(join.frames_per_subject),
            "without_face_per_subject": dict(join.unmatched_per_subject),
            "sources_without_tracks": list(join.sources_without_tracks),
            "frames_in_several_tracks": int(join.ambiguous_frames)}


def read_face_crops(cache, track_ids: Sequence[str], positions: Sequence[int]) -> torch.Tensor:
    """Crops of many frames, one decoder call per track, in the order asked.

    Args:
        cache: a :class:`~video_fer.data.cache.FaceTrackCache`.
        track_ids: ``(n,)`` track of each crop; positions: ``(n,)`` position inside it.

    Returns:
        uint8 ``(n, S, S, 3)`` RGB.
    """
    track_ids = np.asarray(track_ids, dtype=str)
    positions = np.asarray(positions, dtype=np.int64)
    crops = torch.empty((len(track_ids), cache.size, cache.size, 3), dtype=torch.uint8)
    unique_tracks, inverse = np.unique(track_ids, return_inverse=True)
    for number, track_id in enumerate(unique_tracks):  # decord decodes a track's frames in one batch
        rows = np.flatnonzero(inverse == number)
        crops[torch.from_numpy(rows)] = cache.read_frames(str(track_id), positions[rows])
    return crops


class AUFaceDataset(torch.utils.data.Dataset):
    """Aligned face crops with their AU labels.

    An item is ``{"image": uint8 (S, S, 3), "occurrence": float32 (A,) in {0, 1, -1},
    "intensity": float32 (A,) (NaN = not coded or no intensity), "index": int64}``.
    ``__getitems__`` reads a whole batch with :func:`read_face_crops` (the DataLoader uses it).
    """

    def __init__(self, cache, faces: LabelledCacheFaces) -> None:
        self.cache, self.faces = cache, faces
        table = faces.table
        self.occurrence = torch.from_numpy(table.occurrence.astype(np.float32))
        intensity = table.intensity if table.intensity is not None else np.full(table.occurrence.shape, np.nan)
        self.intensity = torch.from_numpy(np.asarray(intensity, np.float32))

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        rows = np.asarray(indices, dtype=np.int64)
        images = read_face_crops(self.cache, self.faces.track_ids[rows], self.faces.positions[rows])
        return [{"image": image, "occurrence": self.occurrence[row], "intensity": self.intensity[row],
                 "index": torch.tensor(row)} for image, row in zip(images, rows.tolist())]


# ----------------------------------------------------------------------------- class balance
def balanced_sampling_weights(occurrence: np.ndarray) -> np.ndarray:
    """Per-frame sampling weights that bring every AU's positive share towards one half **[ours]**.

    For AU ``a`` with positive rate ``p_a`` among coded frames, a frame weighs ``0.5 / p_a``
    if positive for it and ``0.5 / (1 - p_a)`` if negative (each class then carries half of
    that AU's mass); a frame's weight is the mean over its coded AUs. Frames with no coded
    AU get weight 0; AUs with one class only are left out of the mean.

    Args:
        occurrence: ``(N, A)`` in {0, 1, -1}.

    Returns:
        float64 ``(N,)`` summing to N (for ``torch.utils.data.WeightedRandomSampler``).
    """
    occurrence = np.asarray(occurrence)
    coded = occurrence >= 0
    positive_rate = (occurrence == 1).sum(axis=0) / np.maximum(coded.sum(axis=0), 1)
    usable = (positive_rate > 0) & (positive_rate < 1)
    rate = np.where(usable, positive_rate, 0.5)
    per_entry = np.where(occurrence == 1, 0.5 / rate, 0.5 / (1 - rate))
    counted = coded & usable[None, :]
    weights = (per_entry * counted).sum(axis=1) / np.maximum(counted.sum(axis=1), 1)
    total = weights.sum()
    if total <= 0:
        raise ConfigError("balanced sampling: no AU has both positive and negative coded frames in the training "
                          "fold; turn data.balanced_sampling off")
    return weights * (len(weights) / total)


@torch.no_grad()
def compute_embeddings(encoder: nn.Module, cache, faces: LabelledCacheFaces, batch_size: int = 64,
                       device: torch.device | str = "cpu", progress: bool = False) -> torch.Tensor:
    """The encoder's action embedding of every labelled face, in eval mode (frozen BatchNorm).

    Frames are visited track by track so each decoder reads consecutive positions.

    Returns:
        float32 ``(N, D)`` in the row order of ``faces``.
    """
    from tqdm.auto import tqdm

    was_training = encoder.training
    encoder.eval()
    order = np.lexsort((faces.positions, faces.track_ids))  # by track, then position
    chunks = []
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="embeddings", disable=not progress):
            rows = order[start:start + batch_size]
            crops = read_face_crops(cache, faces.track_ids[rows], faces.positions[rows])
            images = as_float_images(crops.to(device))
            chunks.append(encoder.forward_features(images).action_embedding.float().cpu())
    finally:
        encoder.train(was_training)
    if not chunks:
        return torch.empty(0, 0)
    embeddings = torch.empty((len(order), chunks[0].shape[1]), dtype=torch.float32)
    embeddings[torch.from_numpy(order)] = torch.cat(chunks)
    return embeddings


# ----------------------------------------------------------------------------- BP4D frames -> videos
def sequence_video_path(video_dir, subject: str, task: str):
    """``<video_dir>/<subject>/<subject>_<task>.mp4`` (the first folder is the identity ``prepare`` records)."""
    from pathlib import Path

    name = f"{subject}_{task}" if task else subject
    return Path(video_dir) / subject / f"{name}.mp4"


def remap_to_sequence_videos(table: AUFrameTable, video_dir) -> AUFrameTable:
    """The same labels, with each still image replaced by (its sequence video, its position in it).

    A sequence is the labelled frames of one (subject, task), sorted by frame number; frame
    ``i`` of that order is frame ``i`` of :func:`sequence_video_path`. Pure: writes nothing.
    """
    keys = np.char.add(np.char.add(table.subjects.astype(str), "\x00"), table.tasks.astype(str))
    order = np.lexsort((table.frames, keys))
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    run_start = np.repeat(starts, np.diff(np.concatenate([starts, [len(order)]])))
    positions = np.empty(len(order), np.int64)
    positions[order] = np.arange(len(order)) - run_start  # rank of each frame inside its sequence
    videos = np.array([str(sequence_video_path(video_dir, subject, task))
                       for subject, task in zip(table.subjects.tolist(), table.tasks.tolist())], dtype=str)
    return AUFrameTable(table.au_numbers, table.subjects, table.tasks, table.frames, videos, positions,
                        table.occurrence, table.intensity)


def write_sequence_videos(table: AUFrameTable, video_dir, fps: float = 25.0, crf: int = 12,
                          progress: bool = False) -> AUFrameTable:
    """Encode each (subject, task) image sequence of ``table`` as an H.264 mp4 so ``prepare`` can read it.

    ``video-fer prepare`` reads videos; BP4D is distributed as frames. This writes one video per
    sequence (frames in label order, the whole image; odd sizes are cropped by one pixel for
    yuv420p) and returns :func:`remap_to_sequence_videos` of ``table``. Existing videos with
    the right frame count are kept, so it can run again before every training run.

    Args:
        table: labels whose ``sources`` are image files (e.g. :func:`~video_fer.data.au_datasets.read_bp4d`).
        video_dir: output folder; fps: frame rate written (BP4D: 25); crf: x264 quality (lower = closer).

    Raises:
        LabelFileError: an existing video has another frame count than its sequence (stale).
    """
    import av
    from PIL import Image
    from tqdm.auto import tqdm

    from video_fer.errors import LabelFileError
    from video_fer.io import atomic_path
    from video_fer.video import VideoReader

    remapped = remap_to_sequence_videos(table, video_dir)
    videos, first_rows = np.unique(remapped.sources, return_index=True)
    for video, first in tqdm(list(zip(videos, first_rows)), desc="sequence videos", disable=not progress):
        rows = np.flatnonzero(remapped.sources == video)
        rows = rows[np.argsort(remapped.source_frames[rows])]
        path = sequence_video_path(video_dir, str(table.subjects[first]), str(table.tasks[first]))
        if path.is_file():
            count = VideoReader(path).num_frames
            if count != len(rows):
                raise LabelFileError(f"{path}: has {count} frames but {table.subjects[first]} {table.tasks[first]} "
                                     f"has {len(rows)} labelled frames; delete the video (and its cache tracks) "
                                     "and write it again")
            continue
        with atomic_path(path) as temporary, av.open(str(temporary), "w", format="mp4") as container:
            stream = None
            for image_path in table.sources[rows]:  # one image in memory at a time
                try:
                    image = np.asarray(Image.open(image_path).convert("RGB"))
                except OSError as error:
                    raise LabelFileError(f"{image_path}: cannot read the frame image ({error})") from None
                image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
                if stream is None:
                    stream = container.add_stream("libx264", rate=int(round(fps)))
                    stream.height, stream.width = image.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "bf": "0"}  # no B-frames: simple timestamps for every reader
                elif image.shape[:2] != (stream.height, stream.width):
                    raise LabelFileError(f"{image_path}: {image.shape[1]}x{image.shape[0]} px, the sequence's first "
                                         f"frame is {stream.width}x{stream.height}; frames of a sequence must match")
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return remapped
