"""TAE training losses (METHOD.md §1, "Losses") and the hard-sample curriculum.

Every term is a per-sample vector ``(B,)`` (mean over that sample's pixels or embedding
dims), so the recipe can log each term and the curriculum can rank samples.

Curriculum reading (METHOD.md: "each per-sample loss vector is sorted within the batch"):
the window is applied **term by term** — each term's ``(B,)`` vector is sorted and its
``[lo, hi)`` slice averaged, then the weighted sum of the reduced terms is the loss
(:func:`reduce_terms`). A sample can thus be "easy" for one term and "hard" for another.
:func:`weighted_total` gives the per-sample weighted sum for logging or for a caller who
prefers ranking samples by their total.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from video_fer.errors import ConfigError


@dataclass
class TAELossWeights:
    """Weight of each loss term; field names are the keys of :func:`tae_loss_terms`. Defaults: the reference."""

    reconstruction: float = 10.0  # L1(Î_t, I_t)
    pose_changed_keeps_action: float = 1.0  # MSE(phi(I^P), phi_s)
    pose_changed_has_target_pose: float = 1.0  # MSE(psi(I^P), psi_t)
    action_changed_keeps_pose: float = 1.0  # MSE(psi(I^A), psi_s)
    action_changed_has_target_action: float = 1.0  # MSE(phi(I^A), phi_t)
    generated_has_target_pose: float = 1.0  # MSE(psi(Î_t), psi_t)
    generated_has_target_action: float = 1.0  # MSE(phi(Î_t), phi_t)
    action_cycle: float = 1.0  # L1(warp(I^A, D_A([phi(I^A); phi_s])), I_s)
    pose_cycle: float = 1.0  # L1(warp(I^P, D_P([psi(I^P); psi_s])), I_s)
    action_sparsity: float = 0.1  # mean |T_A|
    # [ours] landmark-guided fields (video_fer.train.losses.landmarks); 0 = the reference objective
    landmark_pose_field: float = 0.0  # pose field at the target landmarks vs their head motion
    landmark_action_field: float = 0.0  # action field at the moved landmarks vs what the head motion leaves
    # [ours] the same two parts read linearly from the embedding changes (needs model.landmark_readout: true)
    landmark_pose_embedding: float = 0.0  # pose_readout(psi_s - psi_t) vs the head motion at the landmarks
    landmark_action_embedding: float = 0.0  # action_readout(phi_s - phi_t) vs what the head motion leaves
    # [ours] one frame's phi read against its track's mean landmarks (needs model.frame_readout: true)
    landmark_action_frame: float = 0.0  # frame_readout(phi) vs what the head pose leaves against the track mean
    landmark_pose_frame: float = 0.0  # pose_frame_readout(psi) vs the head motion from the track mean (model.pose_frame_readout)
    # [ours] the action branch's attention vs where the source frame's landmarks act (needs model.attention_streams > 0)
    landmark_attention: float = 0.0  # KL(action heat map of the landmarks || mean attention map)

    def as_dict(self) -> dict[str, float]:
        """Term name -> weight."""
        return dataclasses.asdict(self)


# The six terms that compare embeddings of generated faces with those of the real frames. At the identity
# warp (where training starts) I^A = I^P = Î_t = I_s, so four of them reduce to ||psi_s - psi_t||^2 and
# ||phi_s - phi_t||^2: with the encoder trained on both sides they erase the source/target difference the
# decoders need, and the fields stay at identity (diagnosed on the animated benchmark faces).
CONSISTENCY_TERMS = ("pose_changed_keeps_action", "pose_changed_has_target_pose", "action_changed_keeps_pose",
                     "action_changed_has_target_action", "generated_has_target_pose", "generated_has_target_action")


def consistency_ramp(step: int, start: int, steps: int) -> float:
    """**[ours]** Factor in [0, 1] on the :data:`CONSISTENCY_TERMS` weights at optimiser step ``step``.

    0 before ``start``, then linear up to 1 over ``steps`` steps (``start = steps = 0``: always 1, the
    reference). Lets the reconstruction term move the fields off the identity warp before the embedding
    terms are switched on; after the ramp the objective is the reference one.
    """
    if steps <= 0:
        return 1.0 if step >= start else 0.0
    return min(max((step - start) / steps, 0.0), 1.0)


def ramped_weights(weights: "TAELossWeights", factor: float) -> "TAELossWeights":
    """``weights`` with the :data:`CONSISTENCY_TERMS` multiplied by ``factor``."""
    table = weights.as_dict()
    for name in CONSISTENCY_TERMS:
        table[name] *= factor
    return TAELossWeights(**table)


LANDMARK_TERMS = ("landmark_pose_field", "landmark_action_field", "landmark_pose_embedding",
                  "landmark_action_embedding", "landmark_action_frame", "landmark_pose_frame", "landmark_attention")
READOUT_TERMS = LANDMARK_TERMS[2:4]


def uses_landmarks(weights: "TAELossWeights") -> bool:
    """True when a landmark-guidance term has a weight (the pairs must then carry landmarks)."""
    return any(getattr(weights, name) != 0 for name in LANDMARK_TERMS)


def check_landmark_readout(weights: "TAELossWeights", readout: bool, frame_readout: bool = False,
                           pose_frame_readout: bool = False, attention_maps: bool = True) -> None:
    """The embedding readout terms have weights exactly when the model has the readouts (``model.landmark_readout``
    for the pair terms, ``model.frame_readout`` for ``landmark_action_frame``, ``model.pose_frame_readout`` for
    ``landmark_pose_frame``), and ``landmark_attention`` only when it has attention maps (``attention_maps``:
    ``model.attention_streams > 0``).

    Raises:
        ConfigError: a readout term is weighted without its readout, or a readout is on with its term at 0
            (a parameter no loss reaches, which distributed training refuses), or the attention term is weighted
            for a model without attention maps (TCAE).
    """
    if weights.landmark_attention and not attention_maps:
        raise ConfigError(f"loss.weights.landmark_attention={weights.landmark_attention} needs attention maps: "
                          "set model.attention_streams > 0 (the TAE branch) or the weight to 0")
    for key, on, term in (("frame_readout", frame_readout, "landmark_action_frame"),
                          ("pose_frame_readout", pose_frame_readout, "landmark_pose_frame")):
        if (getattr(weights, term) != 0) != on:
            raise ConfigError(f"model.{key}: {str(on).lower()} with loss.weights.{term}={getattr(weights, term)}: "
                              "the frame readout and its term go together (both on or both off)")
    weighted = [name for name in READOUT_TERMS if getattr(weights, name) != 0]
    if weighted and not readout:
        raise ConfigError(f"loss.weights.{weighted[0]} > 0 needs model.landmark_readout: true (the readout it trains)")
    if readout and len(weighted) < len(READOUT_TERMS):
        raise ConfigError(f"model.landmark_readout: true needs loss.weights.{' and '.join(READOUT_TERMS)} > 0 "
                          f"(got {', '.join(f'{n}={getattr(weights, n)}' for n in READOUT_TERMS)})")


def _per_sample_l1(prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` x2 -> ``(B,)`` mean absolute difference per sample (float32 even under autocast)."""
    return (prediction.float() - reference.float()).abs().flatten(1).mean(dim=1)


def _per_sample_mse(prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` x2 -> ``(B,)`` mean squared difference per sample (float32 even under autocast)."""
    return (prediction.float() - reference.float()).pow(2).flatten(1).mean(dim=1)


def tae_loss_terms(output: Any, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ten TAE loss terms of METHOD.md §1, each per sample.

    Args:
        output: a :class:`video_fer.models.tae.TAEOutput` for ``(source, target)``.
        source: ``(B, 3, S, S)`` the source frames ``I_s``.
        target: ``(B, 3, S, S)`` the target frames ``I_t``.

    Returns:
        term name (the fields of :class:`TAELossWeights`) -> ``(B,)`` tensor. Embedding targets
        (``phi_s``, ``psi_t``, ...) are not detached: as in the formulas, both sides are trained.
    """
    if source.shape != output.generated_target.shape or target.shape != source.shape:
        raise ValueError(f"tae_loss_terms: `source` {tuple(source.shape)} and `target` {tuple(target.shape)} must "
                         f"match the model output images {tuple(output.generated_target.shape)}")
    return {
        "reconstruction": _per_sample_l1(output.generated_target, target),
        "pose_changed_keeps_action": _per_sample_mse(output.pose_changed_action_embedding,
                                                     output.source_action_embedding),
        "pose_changed_has_target_pose": _per_sample_mse(output.pose_changed_pose_embedding,
                                                        output.target_pose_embedding),
        "action_changed_keeps_pose": _per_sample_mse(output.action_changed_pose_embedding,
                                                     output.source_pose_embedding),
        "action_changed_has_target_action": _per_sample_mse(output.action_changed_action_embedding,
                                                            output.target_action_embedding),
        "generated_has_target_pose": _per_sample_mse(output.generated_pose_embedding, output.target_pose_embedding),
        "generated_has_target_action": _per_sample_mse(output.generated_action_embedding,
                                                       output.target_action_embedding),
        "action_cycle": _per_sample_l1(output.action_cycle_reconstruction, source),
        "pose_cycle": _per_sample_l1(output.pose_cycle_reconstruction, source),
        "action_sparsity": output.action_flow.float().abs().flatten(1).mean(dim=1),
    }


def _weights_dict(weights: TAELossWeights | Mapping[str, float] | None, terms: Mapping[str, torch.Tensor]
                  ) -> dict[str, float]:
    table = TAELossWeights().as_dict() if weights is None else (
        weights.as_dict() if isinstance(weights, TAELossWeights) else dict(weights))
    missing = [name for name in terms if name not in table]
    if missing:
        raise ConfigError(f"loss weights: no weight for terms {missing}; valid names: {sorted(TAELossWeights().as_dict())}")
    return table


def weighted_total(terms: Mapping[str, torch.Tensor],
                   weights: TAELossWeights | Mapping[str, float] | None = None) -> torch.Tensor:
    """``sum_k weight_k * term_k`` per sample: ``{name: (B,)}`` -> ``(B,)``."""
    table = _weights_dict(weights, terms)
    return torch.stack([table[name] * value for name, value in terms.items()]).sum(dim=0)


class HardSampleCurriculum:
    """Average only the ``[lo, hi)`` slice of a batch's sorted per-sample losses (FAb-Net / TCAE).

    The window starts at ``start``; each time :meth:`step` sees ``patience`` epochs without a
    better validation loss it moves up by ``step``, until it reaches ``end`` (then
    :attr:`exhausted` is True and the recipe switches to reducing the LR on plateau).
    After a move the best validation loss is forgotten (the first epoch on the new window
    sets it), so each window gets at least ``patience`` epochs of its own.
    """

    def __init__(self, start: tuple[float, float] = (0.0, 0.5), step: float = 0.1,
                 end: tuple[float, float] = (0.4, 0.9), patience: int = 15) -> None:
        if not (0.0 <= start[0] < start[1] <= 1.0 and 0.0 <= end[0] < end[1] <= 1.0):
            raise ConfigError(f"HardSampleCurriculum: windows must satisfy 0 <= lo < hi <= 1, got start={start} end={end}")
        if step <= 0 or patience < 1:
            raise ConfigError(f"HardSampleCurriculum: step={step} must be > 0 and patience={patience} >= 1")
        moves = (end[0] - start[0]) / step
        if abs(moves - round(moves)) > 1e-6 or abs((end[1] - start[1]) - (end[0] - start[0])) > 1e-6 or moves < 0:
            raise ConfigError(f"HardSampleCurriculum: end={end} must be start={start} moved up by a whole number "
                              f"of steps of {step}")
        self.start, self.step_size, self.end, self.patience = tuple(start), step, tuple(end), patience
        self.total_moves = round(moves)
        self.moves = 0
        self.best: float | None = None
        self.epochs_without_improvement = 0

    @property
    def window(self) -> tuple[float, float]:
        """The current ``(lo, hi)`` fractions of the sorted batch."""
        shift = self.moves * self.step_size
        return round(self.start[0] + shift, 10), round(self.start[1] + shift, 10)

    @property
    def exhausted(self) -> bool:
        """True once the window has reached ``end`` (no move left)."""
        return self.moves >= self.total_moves

    def slice_indices(self, batch_size: int) -> tuple[int, int]:
        """``[first, stop)`` positions in the ascending sort, at least one sample."""
        lo, hi = self.window
        first = min(math.floor(lo * batch_size + 1e-9), batch_size - 1)
        stop = max(math.floor(hi * batch_size + 1e-9), first + 1)
        return first, stop

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        """``(B,)`` per-sample losses -> scalar: mean of the ``[lo, hi)`` slice of the ascending sort."""
        if per_sample.dim() != 1 or per_sample.numel() == 0:
            raise ValueError(f"HardSampleCurriculum.reduce: expects a non-empty (B,) vector, got {tuple(per_sample.shape)}")
        first, stop = self.slice_indices(per_sample.numel())
        return per_sample.sort().values[first:stop].mean()

    def step(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when the window moved."""
        val_loss = float(val_loss)
        if self.best is None or val_loss < self.best:
            self.best, self.epochs_without_improvement = val_loss, 0
            return False
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement < self.patience or self.exhausted:
            return False
        self.moves += 1
        self.best, self.epochs_without_improvement = None, 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"start": list(self.start), "step": self.step_size, "end": list(self.end), "patience": self.patience,
                "moves": self.moves, "best": self.best, "epochs_without_improvement": self.epochs_without_improvement}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.__init__(tuple(state["start"]), state["step"], tuple(state["end"]), state["patience"])
        self.moves = int(state["moves"])
        self.best = state["best"]
        self.epochs_without_improvement = int(state["epochs_without_improvement"])


def reduce_terms(terms: Mapping[str, torch.Tensor], weights: TAELossWeights | Mapping[str, float] | None = None,
                 curriculum: HardSampleCurriculum | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch loss: each term reduced to a scalar (batch mean, or the curriculum's slice), then weighted.

    Returns:
        ``(total, reduced)``: the scalar loss to backpropagate and ``{name: scalar}`` unweighted
        reduced terms (for logging).
    """
    table = _weights_dict(weights, terms)
    reduce = curriculum.reduce if curriculum is not None else torch.mean
    reduced = {name: reduce(value) for name, value in terms.items()}
    total = torch.stack([table[name] * value for name, value in reduced.items()]).sum()
    return total, reduced


__all__ = ["CONSISTENCY_TERMS", "HardSampleCurriculum", "LANDMARK_TERMS", "READOUT_TERMS", "check_landmark_readout",
           "uses_landmarks", "TAELossWeights", "consistency_ramp", "ramped_weights",
           "reduce_terms", "tae_loss_terms", "weighted_total"]
