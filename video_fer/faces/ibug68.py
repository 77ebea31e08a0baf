"""MediaPipe face mesh (478 vertices) -> iBUG-68 landmarks.

Each iBUG point is one mesh vertex or the mean of two neighbouring vertices (where no single
vertex sits where the iBUG annotation puts the point). "Right"/"left" are the subject's: on an
unmirrored frontal image the subject's right side is on the image left. Checked visually on
shared/data/images/single_face.jpg and 0-f15-hao-ph.jpg (numbers drawn on the points).
"""
from __future__ import annotations

import numpy as np
import torch

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
