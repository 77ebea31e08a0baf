"""Still images (and single video frames) through the face front end: landmarks, alignment, cache.

The same landmarker and :class:`~video_fer.faces.alignment.AlignmentSpec` as
``video-fer prepare`` crop every labelled image, so a head fine-tuned on images sees
faces cropped exactly as the tracks it will be run on.

- :func:`align_face_arrays`: decoded images (uint8 ``(H, W, 3)``) -> :class:`AlignedFaceImages`;
  the landmarker runs in IMAGE mode, or landmarks given with the dataset (AffectNet) are used.
- :func:`align_image_files`: the same for files, with an ``.npz`` cache keyed by the
  files (path, size, mtime) and the settings, so a second run skips the landmarker.
- :func:`video_frames`: a few frames of a video as images (for fixtures built from clips).

Images without a face are reported in ``missing`` (never silently dropped).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from video_fer.errors import LabelFileError
from video_fer.faces.ibug68 import MIRROR_68
from video_fer.faces.alignment import AlignmentSpec, align_faces
from video_fer.io import atomic_path

__all__ = ["AlignedFaceImages", "FaceBank", "align_face_arrays", "align_image_files", "build_face_bank", "load_image",
           "video_frames"]

CACHE_VERSION = 1


@dataclass
class AlignedFaceImages:
    """Aligned faces found in a list of images.

    Attributes:
        crops: ``(N, 3, S, S)`` uint8 aligned faces.
        landmarks: ``(N, 68, 2)`` float32 landmarks in crop pixels.
        image_index: ``(N,)`` int64, the input image each face came from.
        face_index: ``(N,)`` int64, the face's rank in its image (0 = largest).
        names: the input names (paths), one per input image.
        missing: indices of the input images where no face was found.
    """

    crops: torch.Tensor
    landmarks: torch.Tensor
    image_index: np.ndarray
    face_index: np.ndarray
    names: list[str]
    missing: list[int]

    def __len__(self) -> int:
        return self.crops.shape[0]

    def float_crops(self) -> torch.Tensor:
        """``(N, 3, S, S)`` float in [0, 1]."""
        return self.crops.float() / 255.0


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)``; unreadable files raise :class:`LabelFileError` naming them."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise LabelFileError(f"{path}: image not found; check the dataset root") from None
    except (UnidentifiedImageError, OSError) as error:
        raise LabelFileError(f"{path}: not a readable image ({error})") from None


def video_frames(path: str | os.PathLike, frame_indices: Sequence[int]) -> list[np.ndarray]:
    """Frames of a video as uint8 RGB ``(H, W, 3)`` arrays (decoded by :class:`~video_fer.video.VideoReader`)."""
    from video_fer.video import VideoReader

    reader = VideoReader(path)
    frames = reader.get(np.asarray(frame_indices, dtype=np.int64))
    return [frame.numpy() if hasattr(frame, "numpy") else np.asarray(frame) for frame in frames]


def _box_area(points: np.ndarray) -> float:
    extent = points.max(axis=0) - points.min(axis=0)
    return float(extent[0] * extent[1])


def align_face_arrays(images: Sequence[np.ndarray], names: Sequence[str], spec: AlignmentSpec | None = None,
                      landmarker=None, landmarks: Sequence[np.ndarray | None] | None = None,
                      all_faces: bool = False) -> AlignedFaceImages:
    """Find, landmark and align the faces of decoded images.

    Args:
        images: uint8 RGB ``(H, W, 3)`` arrays (sizes may differ).
        names: one name per image (used in messages and ``AlignedFaceImages.names``).
        spec: alignment (default :class:`AlignmentSpec` at 256 px).
        landmarker: a :class:`~video_fer.faces.types.Landmarker` (IMAGE mode) for images
            without given landmarks.
        landmarks: optional per-image ``(68, 2)`` image-pixel landmarks (NaN or None = detect).
        all_faces: keep every face found (group photos); default only the largest.

    Returns:
        :class:`AlignedFaceImages`, faces in input order.
    """
    spec = spec or AlignmentSpec()
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    given = list(landmarks) if landmarks is not None else [None] * len(images)
    crops, points, image_index, face_index, missing = [], [], [], [], []
    for number, (image, name, known) in enumerate(zip(images, names, given)):
        image = np.ascontiguousarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise LabelFileError(f"{name}: expected a uint8 RGB (H, W, 3) image, got {image.dtype} {image.shape}")
        if known is not None and np.isfinite(known).all():
            found = [np.asarray(known, np.float32)]
        else:
            if landmarker is None:
                raise LabelFileError(f"{name}: no landmarks given and no landmarker; pass landmarker= "
                                     "(e.g. create_landmarker('mediapipe', mode='image'))")
            faces = landmarker(image[None], [0], [0.0])[0]
            found = sorted((face.landmarks for face in faces), key=_box_area, reverse=True)
            found = found if all_faces else found[:1]
        if not found:
            missing.append(number)
            continue
        # One kornia warp per image: all its faces at once (sizes differ between images).
        aligned = align_faces(torch.from_numpy(image.copy())[None].permute(0, 3, 1, 2), torch.from_numpy(np.stack(found)),
                              spec, frame_index=torch.zeros(len(found), dtype=torch.long), padding_mode="reflection")
        crops.append(aligned.crops)
        points.append(aligned.landmarks)
        image_index += [number] * len(found)
        face_index += list(range(len(found)))
    size = spec.size
    return AlignedFaceImages(
        crops=torch.cat(crops) if crops else torch.zeros(0, 3, size, size, dtype=torch.uint8),
        landmarks=torch.cat(points).float() if points else torch.zeros(0, 68, 2),
        image_index=np.asarray(image_index, np.int64), face_index=np.asarray(face_index, np.int64),
        names=[str(name) for name in names], missing=missing)


def _cache_key(paths: Sequence[str], settings: Mapping[str, Any], landmarks) -> str:
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "settings": settings}, sort_keys=True).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    if landmarks is not None:
        digest.update(np.ascontiguousarray(np.asarray(landmarks, np.float32)).tobytes())
    return digest.hexdigest()[:24]


def align_image_files(paths: Sequence[str | os.PathLike], spec: AlignmentSpec | None = None,
                      landmarker: str = "mediapipe", landmarker_options: Mapping[str, Any] | None = None,
                      landmarks: np.ndarray | None = None, all_faces: bool = False,
                      cache_dir: str | os.PathLike | None = None) -> AlignedFaceImages:
    """Align the faces of image files, cached.

    Args:
        paths: image files.
        spec: alignment (default 256 px).
        landmarker: backend name for :func:`video_fer.faces.create_landmarker` (IMAGE mode; only
            created when some image has no given landmarks).
        landmarker_options: its options (e.g. ``{"model_path": ..., "tiles": True}``).
        landmarks: optional ``(N, 68, 2)`` image-pixel landmarks (rows of NaN = detect).
        cache_dir: where ``faces_<key>.npz`` is kept (None: no cache). The key covers the
            files' paths, sizes and mtimes, the landmarks given and the settings.
    """
    spec = spec or AlignmentSpec()
    paths = [str(path) for path in paths]
    for path in paths:
        if not os.path.isfile(path):
            raise LabelFileError(f"{path}: image not found; check the dataset root")
    settings = {"alignment": spec.to_dict(), "landmarker": landmarker, "all_faces": bool(all_faces),
                "options": {k: str(v) for k, v in sorted((landmarker_options or {}).items()) if k != "model_path"}}
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"faces_{_cache_key(paths, settings, landmarks)}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as stored:
                return AlignedFaceImages(torch.from_numpy(stored["crops"]), torch.from_numpy(stored["landmarks"]),
                                         stored["image_index"], stored["face_index"], paths,
                                         stored["missing"].tolist())
    per_image = [None] * len(paths) if landmarks is None else list(np.asarray(landmarks, np.float32))
    detector = None
    if any(points is None or not np.isfinite(points).all() for points in per_image):
        from video_fer.faces import create_landmarker

        options = {"mode": "image", **dict(landmarker_options or {})} if landmarker == "mediapipe" \
            else dict(landmarker_options or {})
        detector = create_landmarker(landmarker, **options)
    try:
        result = align_face_arrays([load_image(path) for path in paths], paths, spec, detector, per_image, all_faces)
    finally:
        if detector is not None:
            detector.close()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as temp:
            np.savez(temp, crops=result.crops.numpy(), landmarks=result.landmarks.numpy(),
                     image_index=result.image_index, face_index=result.face_index,
                     missing=np.asarray(result.missing, np.int64))
    return result


@dataclass
class FaceBank:
    """Aligned faces with their identities (the raw material of the synthetic expression set).

    Attributes:
        crops: ``(N, 3, S, S)`` float in [0, 1].
        landmarks: ``(N, 68, 2)`` crop pixels.
        identities: ``N`` names; views of one person (mirror image, other video frames) share one.
    """

    crops: torch.Tensor
    landmarks: torch.Tensor
    identities: list[str]


def build_face_bank(alignment: AlignmentSpec, image_paths: Sequence[str | os.PathLike] = (),
                    video_paths: Sequence[str | os.PathLike] = (), frames_per_video: int = 4,
                    landmarker_options: Mapping[str, Any] | None = None, demo_photos: bool = True,
                    mirrored: bool = True, cache_dir: str | os.PathLike | None = None) -> FaceBank:
    """Real aligned faces of several identities, prepared through the face front end.

    - the embedded demo photos (:func:`video_fer.data.synthetic.demo_faces`, no model needed);
    - every face of ``image_paths`` (group photos give one identity per face: ``<stem>#<k>``);
    - ``frames_per_video`` evenly spaced frames of each video (identity = the file stem;
      only the largest face of each frame).

    ``mirrored`` adds the mirror image of every face (same identity). Images and frames go
    through MediaPipe in IMAGE mode (``landmarker_options``, e.g. ``{"model_path": ...}``) and are
    aligned with ``alignment`` (an :class:`~video_fer.faces.alignment.AlignmentSpec`).
    """
    from video_fer.data.synthetic import demo_faces

    spec, size = alignment, alignment.size
    crops, points, identities = [], [], []
    if demo_photos:
        demo = demo_faces(size, mirrored=mirrored, alignment=spec)
        crops.append(demo.crops)
        points.append(demo.landmarks)
        identities += demo.identities
    if image_paths:
        found = align_image_files(image_paths, spec, "mediapipe", {"tiles": True, "num_faces": 8,
                                                                   **dict(landmarker_options or {})},
                                  all_faces=True, cache_dir=cache_dir)
        crops.append(found.float_crops())
        points.append(found.landmarks)
        faces_in = np.bincount(found.image_index, minlength=len(image_paths))
        # One face: the file stem (a video of that name may show the same person); a group: stem#k.
        identities += [Path(image_paths[i]).stem + (f"#{k}" if faces_in[i] > 1 else "")
                       for i, k in zip(found.image_index, found.face_index)]
    if video_paths:
        from video_fer.faces import create_landmarker
        from video_fer.video import VideoReader

        detector = create_landmarker("mediapipe", **{"mode": "image", **dict(landmarker_options or {})})
        try:
            for video in video_paths:
                count = VideoReader(video).num_frames
                indices = np.linspace(0, count - 1, frames_per_video + 2)[1:-1].round().astype(np.int64)
                frames = video_frames(video, indices)
                found = align_face_arrays(frames, [f"{video}#{i}" for i in indices], spec, detector)
                crops.append(found.float_crops())
                points.append(found.landmarks)
                identities += [Path(video).stem] * len(found)
        finally:
            detector.close()
    crops, points = torch.cat(crops), torch.cat(points).float()
    if mirrored and (image_paths or video_paths):  # the demo faces are mirrored already
        first = len(demo.identities) if demo_photos else 0
        flipped = points[first:, torch.from_numpy(MIRROR_68)].clone()
        flipped[..., 0] = size - 1 - flipped[..., 0]
        crops = torch.cat([crops, crops[first:].flip(-1)])
        points = torch.cat([points, flipped])
        identities = identities + identities[first:]
    return FaceBank(crops, points, identities)
