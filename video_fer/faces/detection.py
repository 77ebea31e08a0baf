"""Face detection scores: how sure a detector is that each tracked face is a face (the ``confidence`` column).

MediaPipe's landmarker tracks faces between frames and does not expose a presence score;
the face detector inside its model bundle gives one. :class:`SparseDetectorConfidence` runs
that detector on a few frames only and carries each face track's latest score in between.
"""
from __future__ import annotations

import zipfile

import numpy as np
import torch

from video_fer.errors import ModelFileError
from video_fer.faces.boxes import box_iou, boxes_from_points
from video_fer.faces.model_files import MEDIAPIPE_FACE_LANDMARKER, resolve_model_file


class SparseDetectorConfidence:
    """Per-face confidence from MediaPipe's own face detector, run on a few frames only.

    MediaPipe's landmarker tracks faces between frames and does not expose a presence score;
    its bundle's face detector gives one but costs ~30 % of the landmark stage per frame. So the
    detector runs on every ``every``-th processed frame and on any frame where a new face id
    appears; each face keeps the score of its track's latest detection. As in the MediaPipe
    backend, a face takes the detector's score when a detection overlaps its landmark box
    (IoU > 0.3), floored at ``default`` (the presence threshold every returned face passed), and
    ``default`` when no detection matches.
    """

    def __init__(self, model_path=None, every: int = 8, default: float = 0.5, match_iou: float = 0.3):
        from mediapipe.tasks.python import BaseOptions, vision

        path = resolve_model_file(MEDIAPIPE_FACE_LANDMARKER, model_path)
        try:
            with zipfile.ZipFile(path) as bundle:
                detector_model = bundle.read("face_detector.tflite")
        except (zipfile.BadZipFile, KeyError, OSError) as error:
            raise ModelFileError(f"{path}: no face_detector.tflite inside ({error}); download the model again") from error
        options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=detector_model),
                                             running_mode=vision.RunningMode.IMAGE, min_detection_confidence=0.3)
        self._detector = vision.FaceDetector.create_from_options(options)
        self.every, self.default, self.match_iou = int(every), float(default), float(match_iou)
        self._scores: dict[int, float] = {}
        self._processed = 0

    def start_clip(self) -> None:
        self._scores.clear()
        self._processed = 0

    def _detections(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import mediapipe as mp

        found = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
        boxes = np.array([[d.bounding_box.origin_x, d.bounding_box.origin_y,
                           d.bounding_box.origin_x + d.bounding_box.width,
                           d.bounding_box.origin_y + d.bounding_box.height] for d in found.detections],
                         np.float32).reshape(-1, 4)
        return boxes, np.array([d.categories[0].score for d in found.detections], np.float32)

    def __call__(self, frames: torch.Tensor | np.ndarray, positions: np.ndarray, face_ids: np.ndarray,
                 landmarks: np.ndarray) -> np.ndarray:
        """Confidence of each face of a batch of frames.

        Args:
            frames: uint8 ``(T, H, W, 3)``; positions: int64 ``(F,)`` frame of each face;
            face_ids: int64 ``(F,)`` tracker ids; landmarks: float32 ``(F, 68, 2)`` pixels.

        Returns:
            float32 ``(F,)``.
        """
        frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        confidence = np.full(len(face_ids), self.default, np.float32)
        for position in range(len(frames)):
            faces = np.flatnonzero(positions == position)
            due = self._processed % self.every == 0
            self._processed += 1
            ids = face_ids[faces].tolist()
            if faces.size and (due or any(face_id not in self._scores for face_id in ids)):
                boxes, scores = self._detections(frames[position])
                overlap = box_iou(boxes_from_points(landmarks[faces]), boxes) if len(boxes) else None
                for row, face_id in enumerate(ids):
                    best = int(overlap[row].argmax()) if overlap is not None else -1
                    matched = best >= 0 and overlap[row, best] > self.match_iou
                    self._scores[face_id] = max(float(scores[best]), self.default) if matched else self.default
            confidence[faces] = [self._scores[face_id] for face_id in ids]  # the track's latest detection
        return confidence

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None
