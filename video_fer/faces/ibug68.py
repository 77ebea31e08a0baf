"""The iBUG-68 landmark scheme: index groups, the left/right mirror, and MediaPipe's mesh -> iBUG-68.

Every table of iBUG-68 indices lives here (0-based). Groups are named by the side of the
*image* they sit on for an unmirrored frontal face: ``LEFT_EYE`` (36-41) is on the image's
left, which is the subject's right eye.

MediaPipe mesh -> iBUG-68: each iBUG point is one mesh vertex or the mean of two neighbouring
vertices (where no single vertex sits where the iBUG annotation puts the point). In the comments
of that table "right"/"left" are the subject's: on an unmirrored frontal image the subject's
right side is on the image left. Checked visually on
shared/data/images/single_face.jpg and 0-f15-hao-ph.jpg (numbers drawn on the points).
"""
from __future__ import annotations

import numpy as np
import torch

# ---------------------------------------------------------------------------------- index groups
JAW = tuple(range(0, 17))
LEFT_BROW = tuple(range(17, 22))  # on the image's left (the subject's right)
RIGHT_BROW = tuple(range(22, 27))
NOSE = tuple(range(27, 36))  # bridge 27-30 (tip at 30) and nostrils 31-35
LEFT_EYE = tuple(range(36, 42))  # on the image's left (the subject's right eye)
RIGHT_EYE = tuple(range(42, 48))
MOUTH = tuple(range(48, 68))  # outer lips 48-59, inner lips 60-67
NOSE_TIP = 30
MOUTH_LEFT = 48  # mouth corner on the image's left
MOUTH_RIGHT = 54

# Left/right mirror permutation: point i of a face is point MIRROR_68[i] of its mirror image
# (jaw, brows, nose bridge, nostrils, eyes, outer lips, inner lips).
MIRROR_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)


def span(group: tuple[int, ...]) -> slice:
    """A contiguous group as a slice (indexing with it gives a view, not a copy): ``LEFT_EYE`` -> ``slice(36, 42)``."""
    if list(group) != list(range(group[0], group[-1] + 1)):
        raise ValueError(f"span: {group} is not contiguous")
    return slice(group[0], group[-1] + 1)


# ---------------------------------------------------------------------------------- MediaPipe mesh -> iBUG-68
# fmt: off
MEDIAPIPE_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0-16: from the subject's right ear (image left) down the jawline, chin at 8, up to the left ear;
    # pairs resample the face-oval vertices to the roughly even spacing of the iBUG jaw points
    (127,), (234,), (93, 132), (132, 58), (58, 172), (136,), (150, 149), (176, 148), (152,),
    (377, 400), (378, 379), (365,), (397, 288), (288, 361), (361, 323), (454,), (356,),
    # right brow 17-21 (outer -> inner), upper contour
    (70,), (63,), (105,), (66,), (107,),
    # left brow 22-26 (inner -> outer)
    (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30 (nasion -> tip at 30)
    (168,), (197,), (5,), (1,),
    # nostrils 31-35 (subject's right wing -> under the tip -> left wing)
    (98,), (97,), (2,), (326,), (327,),
    # right eye 36-41: outer corner 36, upper lid 37-38, inner corner 39, lower lid 40-41
    (33,), (160,), (158,), (133,), (153,), (144,),
    # left eye 42-47: inner corner 42, upper lid 43-44, outer corner 45, lower lid 46-47
    (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59: right corner 48, upper lip (cupid's bow peaks 50, 52) to the left corner 54,
    # lower lip back to 59
    (61,), (40,), (37,), (0,), (267,), (270,), (291,), (321,), (405, 314), (17,), (84, 181), (91,),
    # inner lips 60-67: right inner corner 60, upper inner 61-63, left inner corner 64, lower inner 65-67
    (78,), (80, 81), (13,), (311, 310), (308,), (318, 402), (14,), (178, 88),
)
# fmt: on

NUM_MEDIAPIPE_VERTICES = 478


def _gather_table(table: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Table -> padded vertex indices ``(68, K)`` and averaging weights ``(68, K)`` (rows sum to 1)."""
    width = max(len(entry) for entry in table)
    indices = np.zeros((len(table), width), dtype=np.int64)
    weights = np.zeros((len(table), width), dtype=np.float32)
    for row, entry in enumerate(table):
        indices[row, : len(entry)] = entry
        weights[row, : len(entry)] = 1.0 / len(entry)
    return indices, weights


_INDICES, _WEIGHTS = _gather_table(MEDIAPIPE_TO_IBUG68)


def mediapipe_to_ibug68(mesh: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Mesh points ``(..., 478, D)`` -> iBUG-68 points ``(..., 68, D)`` (gather, then mean of each group).

    Works on numpy arrays and torch tensors (same type out); any leading batch dimensions.
    """
    if mesh.shape[-2] < NUM_MEDIAPIPE_VERTICES - 10:  # 468 (no iris) meshes are fine too
        raise ValueError(f"expected MediaPipe mesh points (..., 478, D), got shape {tuple(mesh.shape)}")
    if isinstance(mesh, torch.Tensor):
        indices = torch.from_numpy(_INDICES).to(mesh.device)
        weights = torch.from_numpy(_WEIGHTS).to(mesh.device, mesh.dtype)
        gathered = mesh[..., indices, :]  # (..., 68, K, D)
        return (gathered * weights[..., None]).sum(dim=-2)
    gathered = np.asarray(mesh)[..., _INDICES, :]
    return (gathered * _WEIGHTS[..., None]).sum(axis=-2).astype(np.float32 if mesh.dtype != np.float64 else np.float64)
