"""face-alignment's FAN (2-D, 68 points) as a :class:`~video_fer.faces.types.Landmarker`, batched.

Pipeline per batch of frames: the face-alignment detector (``sfd``, ``blazeface``, ``dlib``, ...)
on the whole batch (``detect_from_batch``), then one batched crop of every detected face
(``affine_grid`` + ``grid_sample``), one FAN forward pass, and a batched heatmap decode.

It uses face-alignment's own pieces (detector classes, the ``FAN`` network and its weights,
the crop geometry: centre = box centre moved up by 0.12 x box height, crop side =
200 x (w + h) / detector.reference_scale) instead of ``FaceAlignment`` itself because that
class only loads weights from its download URL, crops and decodes one face at a time in
numpy, and returns integer coordinates.

Coordinates: face-alignment works in continuous coordinates whose integer values are pixel
*edges* (a heatmap cell ``k`` is decoded to ``k + 0.5``, the crop maps ``[c - h/2, c + h/2]``) and
then truncates the result to ``int``, i.e. it returns the index of the pixel containing the
point. We keep the continuous value and subtract 0.5 to put the origin at the top-left pixel
centre (the package convention); so ``round(ours) == face-alignment's int`` up to its own
one-pixel crop truncation. Boxes get the same -0.5 shift.

Detector notes: face-alignment's ``blazeface`` looks only at the central square of each frame
(it centre-crops to the short side before its 128x128 pass), so faces near the long edges of a
wide frame are missed; ``sfd`` searches the whole frame. Their weights download from the
authors' servers unless local paths are given in ``detector_options``.

FAN weights (``2DFAN4-11f355bf06.pth.tar``): ``model_path`` argument, ``$VIDEO_FER_FAN_MODEL``, the
video_fer cache or torch hub's checkpoints folder (where face-alignment caches it), else a
download; missing -> :class:`ModelFileError` saying where to put it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from video_fer.errors import ModelFileError
from video_fer.faces.model_files import FAN_2D, resolve_model_file
from video_fer.faces.types import Face

CROP_SIZE = 256  # FAN input side
HEATMAP_SIZE = 64  # FAN output side
CROP_SCALE_FACTOR = 200.0  # face-alignment: crop side = 200 * scale
CENTER_Y_OFFSET = 0.12  # face-alignment: crop centre moved up by this fraction of the box height
# iBUG-68 point order after a left-right flip (face-alignment's shuffle_lr pairs)
FLIPPED_POINT_ORDER = (
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
    27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65,
)


def crop_centres_and_sides(boxes: torch.Tensor, reference_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Detector boxes ``(N, 4)`` (edge coordinates) -> crop centres ``(N, 2)`` and crop sides ``(N,)`` in pixels."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    centres = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - height * CENTER_Y_OFFSET], 1)
    sides = CROP_SCALE_FACTOR * (width + height) / reference_scale
    return centres, sides


def crop_faces(images: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor, size: int = CROP_SIZE) -> torch.Tensor:
    """Square crops, bilinear, zero outside: images float ``(N, 3, H, W)``, centres ``(N, 2)``, sides ``(N,)`` -> ``(N, 3, size, size)``.

    Crop pixel ``j`` (0-based) samples the image at edge coordinate ``c - side/2 + (j + 0.5) * side / size``.
    """
    height, width = images.shape[-2:]
    theta = torch.zeros(len(images), 2, 3, dtype=images.dtype, device=images.device)
    # normalised output coords (-1..1, align_corners=False) -> normalised input coords
    theta[:, 0, 0] = sides / width
    theta[:, 1, 1] = sides / height
    theta[:, 0, 2] = 2 * centres[:, 0] / width - 1
    theta[:, 1, 2] = 2 * centres[:, 1] / height - 1
    grid = F.affine_grid(theta, [len(images), 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def decode_heatmaps(heatmaps: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FAN heatmaps ``(N, 68, R, R)`` -> points ``(N, 68, 2)`` (pixel-centre origin) and peak values ``(N, 68)``.

    Like face-alignment: the arg-max cell, moved a quarter cell towards the larger neighbour
    (interior cells only), read as continuous coordinate ``cell + 0.5``; mapped back through the crop.
    """
    count, points, rows, columns = heatmaps.shape
    flat = heatmaps.reshape(count, points, rows * columns)
    peaks, index = flat.max(dim=-1)
    cell_x = (index % columns).long()
    cell_y = (index // columns).long()
    interior = (cell_x > 0) & (cell_x < columns - 1) & (cell_y > 0) & (cell_y < rows - 1)
    left = flat.gather(-1, (index - 1).clamp(min=0)[..., None])[..., 0]
    right = flat.gather(-1, (index + 1).clamp(max=rows * columns - 1)[..., None])[..., 0]
    up = flat.gather(-1, (index - columns).clamp(min=0)[..., None])[..., 0]
    down = flat.gather(-1, (index + columns).clamp(max=rows * columns - 1)[..., None])[..., 0]
    shift = torch.stack([torch.sign(right - left), torch.sign(down - up)], -1) * 0.25 * interior[..., None]
    in_heatmap = torch.stack([cell_x, cell_y], -1).to(heatmaps.dtype) + 0.5 + shift  # continuous, edge-based
    scale = (sides / columns)[:, None, None]
    edge_based = centres[:, None, :] + (in_heatmap - columns / 2) * scale
    return edge_based - 0.5, peaks


def load_fan_network(model_path: str | Path | None = None, download: bool = True, device: str = "cpu") -> torch.nn.Module:
    """face-alignment's 2-D FAN with its weights (see module doc for where the file is looked for)."""
    from face_alignment.models import FAN

    path = resolve_model_file(FAN_2D, model_path, download=download)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        network = FAN(4)
        network.load_state_dict(state)
    except Exception as error:  # corrupt / wrong file: say which and what to do
        raise ModelFileError(f"{path}: not a face-alignment 2DFAN-4 weight file ({error}); download it again") from error
    return network.to(device).eval()


def create_face_detector(name: str, device: str, options: dict[str, Any] | None) -> Any:
    """face-alignment detector by name (``sfd``, ``blazeface``, ``dlib``, ...); weight problems -> ModelFileError."""
    import importlib

    options = dict(options or {})
    try:
        module = importlib.import_module(f"face_alignment.detection.{name}")
    except ImportError as error:
        raise ValueError(f"face-alignment has no face detector {name!r} ({error})") from error
    try:
        return module.FaceDetector(device=device, **options)
    except (OSError, RuntimeError, ValueError) as error:  # includes failed downloads and bad local paths
        given = {key: value for key, value in options.items() if key.startswith("path")}
        raise ModelFileError(
            f"face-alignment detector {name!r} could not load its weights ({type(error).__name__}: {error}); "
            f"paths given: {given or 'none'}. Pass local files via detector_options "
            "(e.g. {'path_to_detector': ..., 'path_to_anchor': ...} for blazeface, {'path_to_detector': ...} for sfd) "
            "or put the downloads in torch hub's checkpoints folder"
        ) from error


class FANLandmarker:
    """Face detector + FAN landmarks (face-alignment), on batches of frames.

    Args:
        detector: face-alignment detector name: ``"sfd"``, ``"blazeface"``, ``"dlib"``, ...
        detector_options: keyword arguments for the detector (local weight paths, thresholds).
        model_path: FAN weight file; default: ``$VIDEO_FER_FAN_MODEL``, caches, download.
        landmark_network: a module ``(N, 3, 256, 256) [0, 1] -> (N, 68, 64, 64)`` heatmaps (or a list whose
            last item is) to use instead of FAN (tests, other heatmap models).
        device: torch device for both networks.
        min_score: drop detections scoring below this.
        flip_input: average with the heatmaps of the mirrored crop (face-alignment's test-time flip).
        max_faces_per_forward: faces per network call (bounds memory).
        download: allow downloading missing weights.
    """

    name = "fan"

    def __init__(
        self,
        detector: str = "sfd",
        detector_options: dict[str, Any] | None = None,
        model_path: str | Path | None = None,
        landmark_network: torch.nn.Module | None = None,
        device: str = "cpu",
        min_score: float = 0.5,
        flip_input: bool = False,
        max_faces_per_forward: int = 16,
        download: bool = True,
    ):
        self.device = torch.device(device)
        self.min_score = float(min_score)
        self.flip_input = bool(flip_input)
        self.max_faces_per_forward = int(max_faces_per_forward)
        # load the landmark network first: its missing weights are the most likely failure offline
        self.network = (landmark_network if landmark_network is not None
                        else load_fan_network(model_path, download, str(self.device))).to(self.device).eval()
        self.detector = create_face_detector(detector, str(self.device), detector_options)
        self._flip_order = torch.tensor(FLIPPED_POINT_ORDER, device=self.device)

    def start_clip(self, source: str | None = None, fps: float | None = None) -> None:
        """Nothing to reset: every frame is processed on its own."""

    def close(self) -> None:
        self.network = None
        self.detector = None

    def detect(self, frames: torch.Tensor) -> list[np.ndarray]:
        """uint8 ``(T, H, W, 3)`` -> per frame float32 ``(n, 5)`` x0, y0, x1, y1 (edge coordinates), score."""
        batch = frames.permute(0, 3, 1, 2).to(self.device, torch.float32)  # detectors take RGB 0..255 (B, 3, H, W)
        with torch.no_grad():
            per_frame = self.detector.detect_from_batch(batch)
        kept = []
        for boxes in per_frame:
            boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
            kept.append(boxes[boxes[:, 4] >= self.min_score])
        return kept

    @torch.no_grad()
    def _heatmaps(self, crops: torch.Tensor) -> torch.Tensor:
        output = self.network(crops)
        heatmaps = output[-1] if isinstance(output, (list, tuple)) else output
        if self.flip_input:
            mirrored = self.network(crops.flip(-1))
            mirrored = mirrored[-1] if isinstance(mirrored, (list, tuple)) else mirrored
            heatmaps = (heatmaps + mirrored[:, self._flip_order].flip(-1)) / 2  # un-mirror, swap left/right points
        return heatmaps.float()

    def __call__(self, frames, frame_indices: Sequence[int], timestamps: Sequence[float]) -> list[list[Face]]:
        """``frames`` uint8 ``(T, H, W, 3)`` RGB -> faces per frame (box/landmarks in pixel-centre coordinates)."""
        if self.network is None:
            raise RuntimeError("FANLandmarker is closed; create a new one")
        frames = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {tuple(frames.shape)}")
        detections = self.detect(frames)
        counts = [len(boxes) for boxes in detections]
        results: list[list[Face]] = [[] for _ in range(len(frames))]
        if sum(counts) == 0:
            return results
        all_boxes = torch.from_numpy(np.concatenate(detections)).to(self.device)
        frame_of_face = torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(counts))
        centres, sides = crop_centres_and_sides(all_boxes[:, :4], float(self.detector.reference_scale))
        landmarks, peaks = [], []
        for start in range(0, len(all_boxes), self.max_faces_per_forward):
            part = slice(start, start + self.max_faces_per_forward)
            images = frames[frame_of_face[part]].to(self.device).permute(0, 3, 1, 2).float() / 255.0
            crops = crop_faces(images, centres[part], sides[part])
            points, values = decode_heatmaps(self._heatmaps(crops), centres[part], sides[part])
            landmarks.append(points)
            peaks.append(values)
        landmarks_np = torch.cat(landmarks).cpu().numpy().astype(np.float32)
        boxes_np = all_boxes.cpu().numpy()
        boxes_np[:, :4] -= 0.5  # edge coordinates -> pixel-centre origin, like the landmarks
        for face_number, frame_number in enumerate(frame_of_face.tolist()):
            results[frame_number].append(
                Face(box=boxes_np[face_number, :4], score=float(boxes_np[face_number, 4]), landmarks=landmarks_np[face_number])
            )
        return results
