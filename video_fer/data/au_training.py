"""AU fine-tuning data and model: labelled face crops from a face-track cache, weights, sampling.

The benchmark readers (:mod:`video_fer.data.au_datasets`) give one row per labelled frame;
``video-fer prepare`` gives aligned crops of the same videos. This module joins the two
(reporting, never silently dropping, the frames whose face was not found), serves the crops
with their labels, and holds what BCE training on them needs:

* :class:`LabelledFaces`: the labelled frames that have a face, with where each crop lives;
* :func:`read_face_crops`: crops of many frames with one decoder call per track;
* :class:`AUFaceDataset`: a map-style dataset with batched ``__getitems__``;
* :func:`positive_weights`: per-AU ``pos_weight`` of ``BCEWithLogits`` from the training fold;
* :func:`balanced_sampling_weights`: per-frame weights that lift rare AUs (``WeightedRandomSampler``);
* :func:`compute_embeddings`: the frozen encoder's action embeddings of every frame, once;
* :class:`AUClassifier`: encoder + linear probe, saved and loaded with ``video_fer.load_model``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from video_fer.checkpoint import register_architecture
from video_fer.data.au_datasets import AUFrameTable, FaceCacheJoin, join_with_face_cache
from video_fer.errors import ConfigError
from video_fer.models.heads import LinearProbeHead
from video_fer.models.tae import FaceActionEncoder, TAEConfig

__all__ = [
    "LabelledFaces", "match_labelled_faces", "faces_report", "read_face_crops", "AUFaceDataset",
    "positive_weights", "balanced_sampling_weights", "masked_bce_loss", "masked_mse_loss", "compute_embeddings",
    "AUClassifierConfig", "AUClassifier", "EmbeddingFeatures", "sequence_video_path", "remap_to_sequence_videos",
    "write_sequence_videos",
]


# ----------------------------------------------------------------------------- labelled faces
@dataclass
class LabelledFaces:
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
            raise ValueError(f"LabelledFaces: {len(self.table)} label rows, {len(self.track_ids)} track ids and "
                             f"{len(self.positions)} positions must match")
        if (self.positions < 0).any():
            raise ValueError("LabelledFaces: a row has no face (position -1); keep only join.matched rows")

    def __len__(self) -> int:
        return len(self.table)

    def select(self, rows) -> "LabelledFaces":
        """The rows picked by a bool mask ``(N,)`` or integer indices."""
        rows = np.asarray(rows)
        return LabelledFaces(self.table.select(rows), self.track_ids[rows], self.positions[rows])

    def for_subjects(self, subjects: Iterable[str]) -> "LabelledFaces":
        return self.select(np.isin(self.table.subjects, list(subjects)))

    @property
    def subjects(self) -> list[str]:
        """Subjects present, sorted."""
        return sorted({str(subject) for subject in self.table.subjects})


def match_labelled_faces(table: AUFrameTable, cache) -> tuple[LabelledFaces, FaceCacheJoin]:
    """Join label rows with a face-track cache; returns the rows with a face and the join report.

    The report (``join.summary()``, :func:`faces_report`) lists per subject the labelled
    frames without a face: callers print and save it, so nothing is dropped silently.
    """
    join = join_with_face_cache(table, cache)
    matched = join.matched
    return LabelledFaces(table.select(matched), join.track_ids[matched], join.track_positions[matched]), join


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

    def __init__(self, cache, faces: LabelledFaces) -> None:
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
def positive_weights(occurrence: np.ndarray, max_weight: float | None = None) -> np.ndarray:
    """``pos_weight`` of each AU for ``BCEWithLogits``: negatives / positives among its coded frames.

    Args:
        occurrence: ``(N, A)`` in {0, 1, -1 = not coded} (the training fold).
        max_weight: optional cap (a very rare AU can otherwise get weights in the hundreds).

    Returns:
        float32 ``(A,)``; 1 for an AU without positive (or without negative) frames: no
        ratio exists, and 1 leaves its loss unweighted.
    """
    occurrence = np.asarray(occurrence)
    positives = (occurrence == 1).sum(axis=0).astype(np.float64)
    negatives = (occurrence == 0).sum(axis=0).astype(np.float64)
    weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    return weights.astype(np.float32)


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


# ----------------------------------------------------------------------------- losses
def masked_bce_loss(logits: torch.Tensor, occurrence: torch.Tensor, pos_weight: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """BCE with logits over coded entries only (``occurrence`` -1 = not coded is masked, not negative).

    Args:
        logits, occurrence: ``(B, A)``; pos_weight: ``(A,)`` or None.

    Returns:
        scalar: the sum over coded entries divided by their count (0 when none is coded).
    """
    coded = (occurrence >= 0).to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(logits, occurrence.clamp(min=0).to(logits.dtype),
                                                   pos_weight=pos_weight, reduction="none")
    return (per_entry * coded).sum() / coded.sum().clamp(min=1)


def masked_mse_loss(prediction: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """MSE over entries whose intensity is coded (NaN masked); ``(B, A)`` in, scalar out."""
    coded = torch.isfinite(intensity)
    squared = (prediction - torch.nan_to_num(intensity)) ** 2
    return (squared * coded).sum() / coded.sum().clamp(min=1)


# ----------------------------------------------------------------------------- model
@dataclass
class EmbeddingFeatures:
    """The part of ``EncoderFeatures`` a linear probe reads, for precomputed embeddings ``(B, D)``."""

    action_embedding: torch.Tensor
    feature_maps: list = field(default_factory=list)


@dataclass
class AUClassifierConfig:
    """An encoder with a linear probe per AU.

    Attributes:
        au_numbers: the AUs, output column order.
        encoder: :class:`~video_fer.models.tae.TAEConfig` fields of the encoder.
        task: ``"occurrence"`` (outputs are logits) or ``"intensity"`` (outputs are intensities).
    """

    au_numbers: list = field(default_factory=list)
    encoder: dict = field(default_factory=dict)
    task: str = "occurrence"

    def __post_init__(self) -> None:
        if self.task not in ("occurrence", "intensity"):
            raise ValueError(f"AUClassifierConfig.task={self.task!r}: choose 'occurrence' or 'intensity'")
        if not self.au_numbers:
            raise ValueError("AUClassifierConfig.au_numbers: give at least one AU")


@register_architecture("au_classifier")
class AUClassifier(nn.Module):
    """Face crops ``(B, 3, S, S)`` in [0, 1] -> per-AU outputs ``(B, A)``.

    The papers' probe (METHOD.md §2): BatchNorm1d(D) -> Linear(D, A, bias=False) on the
    action embedding ``phi``; BCE with logits for occurrence, MSE for intensity (the
    BatchNorm shift gives the regression its offset).
    """

    config_class = AUClassifierConfig

    def __init__(self, config: AUClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = FaceActionEncoder(TAEConfig(**config.encoder))
        self.head = LinearProbeHead(len(config.au_numbers), self.encoder.config.embedding_dim)

    def forward_embedding(self, action_embedding: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` action embeddings -> ``(B, A)`` outputs (the probe alone)."""
        return self.head(EmbeddingFeatures(action_embedding)).logits

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` face crops, or ``(B, D)`` precomputed action embeddings -> ``(B, A)`` outputs.

        Taking embeddings through ``forward`` lets a DDP-wrapped model train the probe on
        embeddings computed once by the frozen encoder (the linear protocol).
        """
        if inputs.ndim == 2:
            return self.forward_embedding(inputs)
        return self.forward_embedding(self.encoder.forward_features(inputs).action_embedding)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Presence probabilities (occurrence) or intensities ``(B, A)`` of crops or embeddings."""
        outputs = self(inputs)
        return torch.sigmoid(outputs) if self.config.task == "occurrence" else outputs


@torch.no_grad()
def compute_embeddings(encoder: nn.Module, cache, faces: LabelledFaces, batch_size: int = 64,
                       device: torch.device | str = "cpu", progress: bool = False) -> torch.Tensor:
    """The encoder's action embedding of every labelled face, in eval mode (frozen BatchNorm).

    Frames are visited track by track so each decoder reads consecutive positions.

    Returns:
        float32 ``(N, D)`` in the row order of ``faces``.
    """
    from tqdm.auto import tqdm

    from video_fer.data.augment import as_float_images

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
    from video_fer.io_utils import atomic_path
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
