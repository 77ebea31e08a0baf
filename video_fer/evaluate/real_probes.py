"""Label-free linear probes on real video (METHOD.md §1, "Judging a representation without human labels").

Frames of a face-track cache, each with reference signals that no part of the TAE produced
(:mod:`video_fer.evaluate.real_references`: AU intensities mapped from MediaPipe blendshapes,
head pitch/yaw/roll from MediaPipe's transformation matrix). Features of single frames, as in
the TAE papers' linear evaluation:

- a TAE/TCAE encoder: the action embedding ``phi`` and the pose embedding ``psi``;
- baselines: HOG of the aligned crop (scikit-image), raw pixels reduced by PCA to the embedding
  size, the aligned landmark geometry (a geometric reference: MediaPipe's own points).

Ridge probes (:func:`video_fer.evaluate.probes.ridge_probe`) are fitted on the frames of the probe-fit
clips and scored on the frames of other clips (other people): Pearson r per AU (mean over the
AUs that vary in the test clips) and per head angle. The cross scores (pose embedding -> AUs,
action embedding -> pose) say how well the two embeddings are separated. The pair version fits
the change of a feature between two frames of one track to the change of the references.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from video_fer.evaluate.real_references import HEAD_ANGLE_NAMES, AUMapping, read_references
from video_fer.evaluate.probes import ridge_probe
from video_fer.train.losses.landmarks import FEATURE_POINTS_68, grid_cell_centres

# The split, by clip. Every clip was looked at (three frames of each rendered side by side): two pairs of
# voxstyle clips show one speaker each (voxstyle_00002 = voxstyle_517600055, a woman with long dark hair;
# voxstyle_741400104 = voxstyle_741400163, a man with a goatee); every other clip shows a different person
# (29 people). Both same-speaker pairs stay on the pretraining side. The test clips hold ~27 % of the frames
# of each source (liveportrait 1191 of 4412, voxstyle 648 of 2474, retalking 199 of 706) and span what the
# probes must read: strong deliberate actions (liveportrait d3 frowns, d9 cheek puffs and eye closure, d19
# grimaces), interview speech (voxstyle) and a talking head (retalking); glasses on two test people
# (and on four pretraining people). liveportrait_d6, the richest in actions, is kept for pretraining.
TEST_CLIPS = ("liveportrait_d3", "liveportrait_d9", "liveportrait_d19",
              "voxstyle_00098", "voxstyle_00473", "voxstyle_681100216", "retalking_4")
SAME_SPEAKER = {"voxstyle_00002": "voxstyle_speaker_a", "voxstyle_517600055": "voxstyle_speaker_a",
                "voxstyle_741400104": "voxstyle_speaker_b", "voxstyle_741400163": "voxstyle_speaker_b"}
MIN_TEST_STD = 0.02  # an AU whose reference barely varies in the test clips has no meaningful r
HOG_OPTIONS = {"orientations": 9, "pixels_per_cell": (16, 16), "cells_per_block": (2, 2)}  # 1764 dims at 128 px


@dataclass
class RealFrames:
    """The probe frames: crops, landmarks, clip of origin and reference signals (``N`` frames).

    Attributes:
        images: uint8 ``(N, S, S, 3)``.
        landmarks: ``(N, 68, 2)`` crop pixels.
        clips: ``(N,)`` video key of each frame; tracks: ``(N,)`` track id; positions: ``(N,)`` in the track.
        aus: ``(N, A)`` mapped AU intensities; au_names: their ``A`` names.
        angles: ``(N, 3)`` pitch, yaw, roll in degrees.
    """

    images: torch.Tensor
    landmarks: np.ndarray
    clips: np.ndarray
    tracks: np.ndarray
    positions: np.ndarray
    aus: np.ndarray
    au_names: list[str]
    angles: np.ndarray
    mapping: str = ""

    def __len__(self) -> int:
        return len(self.clips)


def load_real_frames(cache, reference_root, mapping_factory, frame_step: int = 2) -> RealFrames:
    """Every ``frame_step``-th frame of every track that has references.

    Args:
        cache: :class:`~video_fer.data.cache.FaceTrackCache` (the crops at the model's size).
        reference_root: the cache folder holding ``references/`` (the source-size cache).
        mapping_factory: ``blendshape_names -> AUMapping`` (e.g. ``lambda names: load_au_mapping(spec, names)``).
    """
    images, landmarks, clips, tracks, positions, blendshapes, angles = [], [], [], [], [], [], []
    names = None
    for track in cache.tracks:
        references = read_references(reference_root, track.track_id)
        chosen = np.arange(0, track.num_frames, frame_step)
        chosen = chosen[references.found[chosen]]
        if chosen.size == 0:
            continue
        names = names or references.blendshape_names
        images.append(cache.read_frames(track.track_id, chosen))
        landmarks.append(cache.landmarks(track.track_id)[chosen])
        clips += [track["video_key"]] * len(chosen)
        tracks += [track.track_id] * len(chosen)
        positions.append(chosen)
        blendshapes.append(references.blendshapes[chosen])
        angles.append(references.head_angles[chosen])
    mapping: AUMapping = mapping_factory(names)
    scores = np.concatenate(blendshapes)
    return RealFrames(torch.cat(images), np.concatenate(landmarks), np.array(clips), np.array(tracks),
                      np.concatenate(positions), np.asarray(mapping.apply(scores, names), np.float32), mapping.names,
                      np.concatenate(angles).astype(np.float32), mapping.description)


# ----------------------------------------------------------------------------- features
def as_model_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, S, S, 3)`` -> float ``(B, 3, S, S)`` in [0, 1]."""
    return frames.permute(0, 3, 1, 2).float().div(255.0)


@torch.no_grad()
def encoder_features(encoder, images: torch.Tensor, batch_size: int = 128,
                     attention: bool = False) -> dict[str, torch.Tensor]:
    """``{"action": phi (N, D), "pose": psi (N, D)}`` of single frames (eval mode), and with ``attention`` the
    action branch's maps ``"attention": (N, K, h, w)`` (an error for TCAE, K = 0, which has none)."""
    encoder.eval()
    parts = {"action": [], "pose": [], "attention": []}
    for start in range(0, len(images), batch_size):
        features = encoder.forward_features(as_model_images(images[start:start + batch_size]))
        parts["action"].append(features.action_embedding.float())
        parts["pose"].append(features.pose_embedding.float())
        if attention:
            if features.attention_maps is None:
                raise ValueError("an encoder without attention (model.attention_streams=0, TCAE) has no maps to score")
            parts["attention"].append(features.attention_maps.float())
    return {name: torch.cat(values) for name, values in parts.items() if values}


def hog_features(images: torch.Tensor) -> torch.Tensor:
    """HOG of the grey aligned crops (scikit-image) ``(N, F)``."""
    from skimage.feature import hog

    grey = (images.float() @ torch.tensor([0.299, 0.587, 0.114])).numpy() / 255.0
    return torch.from_numpy(np.stack([hog(image, **HOG_OPTIONS) for image in grey])).float()


def pixel_pca_features(images: torch.Tensor, fit_rows: np.ndarray, dim: int, side: int = 64) -> torch.Tensor:
    """Raw RGB pixels (resized to ``side``) projected on the top ``dim`` principal axes of the fit rows."""
    pixels = F.interpolate(as_model_images(images), size=(side, side), mode="area").flatten(1)
    fit = pixels[torch.from_numpy(fit_rows)]
    mean = fit.mean(0)
    _, _, axes = torch.linalg.svd(fit - mean, full_matrices=False)  # exact (a randomised PCA differs run to run)
    return (pixels - mean) @ axes[:dim].T


def landmark_features(landmarks: np.ndarray, size: int) -> torch.Tensor:
    """Aligned iBUG-68 points as fractions of the crop ``(N, 136)``."""
    return torch.from_numpy((np.asarray(landmarks, np.float32) + 0.5) / size - 0.5).flatten(1)


# ----------------------------------------------------------------------------- probes
@dataclass
class ProbeSplit:
    """Rows of the probe-fit and probe-test clips; ``val`` = fit rows used to choose the ridge penalty."""

    fit: np.ndarray
    test: np.ndarray
    val: np.ndarray


def split_rows(clips: np.ndarray, test_clips: Iterable[str], val_every: int = 4) -> ProbeSplit:
    """Fit/test rows by clip; every ``val_every``-th fit clip (sorted) chooses the penalty."""
    test_set = set(test_clips)
    is_test = np.array([clip in test_set for clip in clips])
    fit_clips = sorted(set(clips[~is_test]))
    val_clips = set(fit_clips[::val_every])
    fit_rows = np.flatnonzero(~is_test)
    return ProbeSplit(fit_rows, np.flatnonzero(is_test), np.array([clips[i] in val_clips for i in fit_rows]))


def active_targets(values: np.ndarray, split: ProbeSplit, min_std: float = MIN_TEST_STD) -> np.ndarray:
    """Columns that vary in both the fit and the test rows (boolean ``(T,)``)."""
    return (values[split.fit].std(0) >= min_std) & (values[split.test].std(0) >= min_std)


def probe(features: torch.Tensor, targets: np.ndarray, split: ProbeSplit) -> np.ndarray:
    """Ridge probe fitted on the fit rows, Pearson r per target column on the test rows."""
    targets = torch.from_numpy(np.asarray(targets, np.float64))
    scores, _ = ridge_probe(features[split.fit], targets[split.fit], features[split.test], targets[split.test],
                            split.val)
    return scores.pearson


def pair_rows(tracks: np.ndarray, rows: np.ndarray, pairs_per_track: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ordered pairs of distinct frames inside each track among ``rows``: ``(first (P,), second (P,))``."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for track in sorted(set(tracks[rows])):
        members = rows[tracks[rows] == track]
        if len(members) < 2:
            continue
        a = rng.integers(0, len(members), pairs_per_track)
        b = (a + rng.integers(1, len(members), pairs_per_track)) % len(members)  # never the same frame
        first.append(members[a])
        second.append(members[b])
    return np.concatenate(first), np.concatenate(second)


@dataclass
class PairSplit:
    """Pairs of the fit and test clips (row indices into the frames)."""

    fit: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    val: np.ndarray  # over the fit pairs


def split_pairs(frames: RealFrames, split: ProbeSplit, pairs_per_track: int, seed: int) -> PairSplit:
    fit = pair_rows(frames.tracks, split.fit, pairs_per_track, seed)
    test = pair_rows(frames.tracks, split.test, pairs_per_track, seed + 1)
    val_clips = set(frames.clips[split.fit[split.val]])
    return PairSplit(fit, test, np.array([frames.clips[i] in val_clips for i in fit[0]]))


def pair_probe(features: torch.Tensor, targets: np.ndarray, pairs: PairSplit) -> np.ndarray:
    """Change of the features -> change of the targets: Pearson r per target on the test pairs."""
    targets = torch.from_numpy(np.asarray(targets, np.float64))

    def change(rows):
        return features[rows[1]] - features[rows[0]], targets[rows[1]] - targets[rows[0]]

    (x_fit, y_fit), (x_test, y_test) = change(pairs.fit), change(pairs.test)
    scores, _ = ridge_probe(x_fit, y_fit, x_test, y_test, pairs.val)
    return scores.pearson


@dataclass
class ProbeResult:
    """Scores of one feature set: r per AU and per head angle, single frames and pairs.

    ``centred_au_r``: the AU probe with features and references centred per clip (each person's mean
    removed): what the features say about actions within a person, whatever identity they also carry.
    """

    au_r: dict[str, float]
    angle_r: dict[str, float]
    pair_au_r: dict[str, float] = field(default_factory=dict)
    pair_angle_r: dict[str, float] = field(default_factory=dict)
    centred_au_r: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {"au_r": _mean(self.au_r), "yaw_r": self.angle_r.get("yaw", float("nan")),
                "angles_r": _mean(self.angle_r), "pair_au_r": _mean(self.pair_au_r),
                "pair_angles_r": _mean(self.pair_angle_r), "centred_au_r": _mean(self.centred_au_r)}

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "au_r": self.au_r, "angle_r": self.angle_r,
                "pair_au_r": self.pair_au_r, "pair_angle_r": self.pair_angle_r, "centred_au_r": self.centred_au_r}


def centre_per_clip(values, clips: np.ndarray):
    """Subtract each clip's mean row (numpy array or tensor ``(N, F)``)."""
    centred = values.clone() if isinstance(values, torch.Tensor) else np.array(values, copy=True)
    for clip in set(clips.tolist()):
        rows = np.flatnonzero(clips == clip)
        index = torch.from_numpy(rows) if isinstance(values, torch.Tensor) else rows
        centred[index] = centred[index] - centred[index].mean(0)
    return centred


def _mean(values: Mapping[str, float]) -> float:
    finite = [v for v in values.values() if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def score_features(features: torch.Tensor, frames: RealFrames, split: ProbeSplit, pairs: PairSplit | None,
                   active: np.ndarray) -> ProbeResult:
    """AU and head-angle probes (and their pair versions) of one ``(N, F)`` feature set."""
    au_names = [name for name, keep in zip(frames.au_names, active) if keep]
    aus = frames.aus[:, active]
    result = ProbeResult(dict(zip(au_names, probe(features, aus, split).tolist())),
                         dict(zip(HEAD_ANGLE_NAMES, probe(features, frames.angles, split).tolist())))
    result.centred_au_r = dict(zip(au_names, probe(centre_per_clip(features, frames.clips),
                                                   centre_per_clip(aus, frames.clips), split).tolist()))
    if pairs is not None:
        result.pair_au_r = dict(zip(au_names, pair_probe(features, aus, pairs).tolist()))
        result.pair_angle_r = dict(zip(HEAD_ANGLE_NAMES, pair_probe(features, frames.angles, pairs).tolist()))
    return result


def score_encoder(features: Mapping[str, torch.Tensor], frames: RealFrames, split: ProbeSplit,
                  pairs: PairSplit | None, active: np.ndarray) -> dict[str, dict]:
    """Both embeddings of an encoder: ``{"action": ProbeResult.to_dict(), "pose": ...}``.

    ``action``'s AU scores are the direct ones and its angle scores the cross ones; the other way for ``pose``.
    """
    return {name: score_features(values, frames, split, pairs, active).to_dict() for name, values in features.items()}


# ----------------------------------------------------------------------------- diagnostics
def within_clip_share(features: torch.Tensor, clips: np.ndarray) -> float:
    """Share of the standardised features' variance that lies within clips (1 - between-clip share).

    Low values mean the features mostly tell clips (people, lighting) apart, not frames of one clip.
    """
    x = features.double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
    within = 0.0
    for clip in set(clips.tolist()):
        rows = torch.from_numpy(np.flatnonzero(clips == clip))
        within += float((x[rows] - x[rows].mean(0)).pow(2).sum())
    return within / float(x.pow(2).sum())


@torch.no_grad()
def landmark_field_errors(model, frames: RealFrames, pairs: tuple[np.ndarray, np.ndarray], batch_size: int = 64,
                          kind: str = "similarity") -> dict[str, float]:
    """Fields of real pairs against their landmarks' split (:mod:`video_fer.train.losses.landmarks`), px of a 256 px crop.

    ``pose``: the pose field at the target landmarks against the rigid fit's displacement; ``action``: the
    action field at the rigidly moved landmarks against the fit's residual; ``zero_*``: the zero field.
    """
    from video_fer.train.losses.landmarks import pixels_to_grid, sample_field_at, split_landmark_motion

    model.eval()
    size = frames.images.shape[1]
    to_256 = 255.0 / (size - 1)  # crop pixels -> pixels of a 256 px crop
    sums = {"pose": [], "action": [], "zero_pose": [], "zero_action": []}
    for start in range(0, len(pairs[0]), batch_size):
        first, second = pairs[0][start:start + batch_size], pairs[1][start:start + batch_size]
        output = model(as_model_images(frames.images[first]), as_model_images(frames.images[second]))
        source_points = torch.from_numpy(frames.landmarks[first]).float()
        target_points = torch.from_numpy(frames.landmarks[second]).float()
        rigid, residual, moved = split_landmark_motion(source_points, target_points, kind)
        pose = sample_field_at(output.pose_flow.float(), pixels_to_grid(target_points, size)) * (size - 1) / 2
        action = sample_field_at(output.action_flow.float(), pixels_to_grid(moved, size)) * (size - 1) / 2
        sums["pose"].append((pose - rigid).norm(dim=-1).mean(1) * to_256)
        sums["action"].append((action - residual).norm(dim=-1).mean(1) * to_256)
        sums["zero_pose"].append(rigid.norm(dim=-1).mean(1) * to_256)
        sums["zero_action"].append(residual.norm(dim=-1).mean(1) * to_256)
    return {name: float(torch.cat(values).mean()) for name, values in sums.items()}


# ----------------------------------------------------------------------------- attention
def attention_on_features(attention: torch.Tensor, landmarks: torch.Tensor, image_size: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the TAE attention lies: per frame, the share of the mean attention (over the K streams, as a
    distribution over the grid) on the cells within one cell of a brow, eye or mouth landmark
    (:data:`~video_fer.train.losses.landmarks.FEATURE_POINTS_68`), and that share over the cells' share of
    the grid (the lift: 1 for attention spread evenly, above 1 when it sits on brows, eyes and mouth).

    Args:
        attention: ``(N, K, h, h)`` attention maps in [0, 1].
        landmarks: ``(N, 68, 2)`` the frames' landmarks in crop pixels.
        image_size: the crop side in pixels.

    Returns:
        ``(share (N,), lift (N,))``.
    """
    grid = attention.shape[-1]
    cell = image_size / grid
    centres = grid_cell_centres(image_size, grid)
    cells = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)  # (h*h, 2) as (x, y)
    points = landmarks[:, list(FEATURE_POINTS_68)].float()
    near = (torch.cdist(cells.expand(len(points), -1, -1), points.nan_to_num(-1e6)) <= cell).any(-1)  # (N, h*h)
    weights = attention.float().mean(1).flatten(1)
    share = (weights * near).sum(1) / weights.sum(1).clamp_min(1e-12)
    return share, share / near.float().mean(1).clamp_min(1e-12)


# ----------------------------------------------------------------------------- figure
@torch.no_grad()
def attention_and_fields(model, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model outputs to show for pairs of uint8 ``(B, S, S, 3)`` frames: attention ``(B, K, h, w)`` or None, fields."""
    model.eval()
    output = model(as_model_images(source), as_model_images(target))
    return {"attention": output.source_attention_maps, "action": output.action_flow, "pose": output.pose_flow,
            "action_weight": output.action_weight}


def save_attention_sheet(path, source: torch.Tensor, target: torch.Tensor, shown: Mapping[str, dict],
                         titles: Sequence[str] = ()) -> None:
    """PNG: per pair, source, target, then for each model its mean attention over the source, action and pose fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from video_fer.data.synthetic import flow_to_color

    rows = len(source)
    columns = 2 + 3 * len(shown)
    figure, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.6 * rows), squeeze=False)
    scale = max(float(torch.cat([v["action"], v["pose"]]).norm(dim=1).amax()) for v in shown.values())
    for row in range(rows):
        panels = [("source", source[row].numpy(), None), ("target", target[row].numpy(), None)]
        for name, values in shown.items():
            attention = values["attention"]
            if attention is None:
                panels.append((f"{name}: no attention", np.full((8, 8, 3), 255, np.uint8), None))
            else:
                heat = F.interpolate(attention[row:row + 1].mean(1, keepdim=True), size=source.shape[1:3],
                                     mode="bilinear", align_corners=False)[0, 0].numpy()
                panels.append((f"{name} attention", source[row].numpy(), heat))
            for kind in ("action", "pose"):
                colour = flow_to_color(values[kind][row:row + 1], scale)[0].permute(1, 2, 0).numpy()
                panels.append((f"{name} {kind}", colour, None))
        for column, (title, image, heat) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(image)
            if heat is not None:
                axis.imshow(heat, cmap="jet", alpha=0.5, vmin=float(heat.min()), vmax=float(heat.max()) + 1e-6)
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=6)
        if titles:
            axes[row, 0].set_ylabel(titles[row], fontsize=6)
    figure.suptitle("Held-out real faces: mean attention over the source (red = high), action and pose fields "
                    "(hue = direction, saturation = length, one scale; white = still)", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


__all__ = ["centre_per_clip", "landmark_field_errors", "within_clip_share", "ProbeResult", "ProbeSplit", "PairSplit", "RealFrames", "active_targets", "attention_and_fields",
           "encoder_features", "hog_features", "landmark_features", "load_real_frames", "pair_probe", "pair_rows",
           "pixel_pca_features", "probe", "save_attention_sheet", "score_encoder", "score_features", "split_pairs",
           "split_rows"]
