"""Does a TAE separate facial actions from head motion? Measurements on animated faces with ground truth.

Pairs come from :func:`video_fer.data.synthetic.animate_faces`: the source is a real aligned
face, the target is the same face moved by known AU intensities (action field) and a known
head motion (pose field). For a model we measure

- **endpoint error** of its action field against the true action field, of its pose field
  against the true pose field and of its fused field against their composition, in pixels of a
  256 px crop (fields are in normalised grid units, so this does not depend on the model's
  resolution), beside the zero-field baseline;
- **embeddings** of each pair for linear probes (:mod:`video_fer.evaluate.probes`): the change of the
  action embedding ``phi_t - phi_s`` and of the pose embedding ``psi_t - psi_s`` (labels are
  relative to the source face, so the probes read the change the pair shows).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from video_fer.data.synthetic import SyntheticPairs, animate_faces

PIXELS_PER_GRID_UNIT_256 = 255.0 / 2.0  # align_corners=True: [-1, 1] spans 255 px at 256 px


def endpoint_error(predicted: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean endpoint error per sample in pixels of a 256 px crop.

    Args:
        predicted, truth: ``(B, 2, S, S)`` fields in normalised grid units.
        mask: optional ``(B, 1, S, S)`` bool, the pixels to average over (a sample with an
            empty mask gets nan).

    Returns:
        ``(B,)``.
    """
    error = (predicted.float() - truth.float()).norm(dim=1, keepdim=True) * PIXELS_PER_GRID_UNIT_256
    if mask is None:
        return error.flatten(1).mean(1)
    weight = mask.float()
    count = weight.flatten(1).sum(1)
    return torch.where(count > 0, (error * weight).flatten(1).sum(1) / count.clamp_min(1), torch.full_like(count, float("nan")))


@dataclass
class ProbePairs:
    """Animated pairs of real faces with the labels of the probes.

    Attributes:
        source: ``(N, 3, S, S)`` the faces as they are.
        pairs: the animation (target, true fields, ``au_intensities (N, A)``, ``head_motion (N, 6)``).
        identities: ``N`` identity names (the probes split by these).
    """

    source: torch.Tensor
    pairs: SyntheticPairs
    identities: list[str]


def make_probe_pairs(crops: torch.Tensor, landmarks: torch.Tensor, identities: list[str], pairs_per_face: int,
                     seed: int) -> ProbePairs:
    """``pairs_per_face`` animations of every face (random AUs and head motion, deterministic in ``seed``).

    Args:
        crops: ``(F, 3, S, S)`` aligned faces in [0, 1]; landmarks ``(F, 68, 2)`` crop pixels.
    """
    repeat = torch.arange(len(crops)).repeat_interleave(pairs_per_face)
    generator = torch.Generator().manual_seed(seed)
    source = crops[repeat]
    pairs = animate_faces(source, generator, landmarks=landmarks[repeat])
    return ProbePairs(source, pairs, [identities[i] for i in repeat.tolist()])


@dataclass
class PairMeasurements:
    """What :func:`measure_pairs` gives for ``N`` pairs (all on the CPU).

    Attributes:
        action_change, pose_change: ``(N, D)`` ``phi_t - phi_s`` and ``psi_t - psi_s``.
        epe: name -> ``(N,)`` endpoint errors (px at 256): ``action``, ``action_moving`` (only
            where the true action moves more than 0.5 px), ``pose``, ``fused``, and the same
            names with ``zero_`` for the zero-field baseline.
        predicted: the predicted ``action`` and ``pose`` fields ``(n, 2, S, S)`` of the ``keep_rows`` pairs.
    """

    action_change: torch.Tensor
    pose_change: torch.Tensor
    epe: dict[str, torch.Tensor]
    predicted: dict[str, torch.Tensor]


@torch.no_grad()
def measure_pairs(model, probe_pairs: ProbePairs, batch_size: int = 64, keep_rows=(0, 1, 2, 3)) -> PairMeasurements:
    """Run a :class:`~video_fer.models.tae.TwinCycleAutoencoder` (eval mode) on the pairs, batch by batch.

    ``keep_rows``: the pairs whose predicted fields are kept (for figures).
    """
    model.eval()
    pairs = probe_pairs.pairs
    action_change, pose_change, kept = [], [], {"action": [], "pose": []}
    epe = {name: [] for name in ("action", "action_moving", "pose", "fused",
                                 "zero_action", "zero_action_moving", "zero_pose", "zero_fused")}
    for start in range(0, len(probe_pairs.source), batch_size):
        rows = slice(start, start + batch_size)
        source, target = probe_pairs.source[rows], pairs.target[rows].clamp(0, 1)
        output = model(source, target)
        action_change.append(output.target_action_embedding - output.source_action_embedding)
        pose_change.append(output.target_pose_embedding - output.source_pose_embedding)
        truths = {"action": pairs.action_field[rows], "pose": pairs.pose_field[rows], "fused": pairs.total_field[rows]}
        moving = truths["action"].norm(dim=1, keepdim=True) * PIXELS_PER_GRID_UNIT_256 > 0.5
        predictions = {"action": output.action_flow, "pose": output.pose_flow, "fused": output.fused_flow}
        for name, truth in truths.items():
            epe[name].append(endpoint_error(predictions[name], truth))
            epe["zero_" + name].append(endpoint_error(torch.zeros_like(truth), truth))
        epe["action_moving"].append(endpoint_error(output.action_flow, truths["action"], moving))
        epe["zero_action_moving"].append(endpoint_error(torch.zeros_like(truths["action"]), truths["action"], moving))
        in_batch = [row - start for row in keep_rows if start <= row < start + len(source)]
        for name in kept:
            kept[name].append(predictions[name][in_batch])
    return PairMeasurements(torch.cat(action_change).float(), torch.cat(pose_change).float(),
                            {name: torch.cat(values) for name, values in epe.items()},
                            {name: torch.cat(values) for name, values in kept.items()})


def nanmean(values) -> float:
    """Mean ignoring nan (nan when all are)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


__all__ = ["PIXELS_PER_GRID_UNIT_256", "PairMeasurements", "ProbePairs", "endpoint_error", "make_probe_pairs",
           "measure_pairs", "nanmean"]
