"""MediaPipe Tasks face landmarker as a :class:`~video_fer.faces.types.Landmarker`.

- VIDEO mode (default, for clips): MediaPipe tracks faces between frames and re-runs its
  detector only when it loses them, so it is fast; the task is recreated in ``start_clip``
  because its timestamps (ms) must increase strictly within one task.
- IMAGE mode (unrelated still images): every frame is processed on its own; ``tiles=True``
  also runs overlapping square tiles, which finds the small faces of group photos that the
  short-range detector (128x128 input) misses on the whole image.

Outputs per face: the 478 mesh points in pixels (``native_landmarks`` ``(478, 3)``, z in the
same pixel scale as x), their iBUG-68 subset (:mod:`video_fer.faces.ibug68`), the box =
landmark extent (optionally padded), the 52 blendshape scores, and a score (see
:meth:`MediaPipeLandmarker._face_scores`).

Coordinates: MediaPipe's normalised x in [0, 1] spans the image edges, so a pixel centre
``i`` is at ``(i + 0.5) / W``; we return ``x * W - 0.5`` (origin at the top-left pixel centre).

Working ahead (:meth:`MediaPipeLandmarker.prefetch`): a VIDEO-mode landmarker can be handed the
frames of its next calls early; a worker thread landmarks them while the caller does other work
(MediaPipe computes without the GIL), and the calls then return those results. Same results, in
the same order, as calling directly.
"""
from __future__ import annotations

import collections
import weakref
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from video_fer.errors import ModelFileError
from video_fer.faces.ibug68 import mediapipe_to_ibug68
from video_fer.faces.model_files import MEDIAPIPE_FACE_LANDMARKER, resolve_model_file
from video_fer.faces.boxes import box_iou, boxes_from_points
from video_fer.faces.types import Face

_DETECTOR_IN_BUNDLE = "face_detector.tflite"  # the .task bundle is a zip; its detector gives per-face scores
_SCORE_MATCH_IOU = 0.3  # detection box vs landmark box overlap to take the detection's score
_TILE_FRACTION = 0.75  # tile side as a fraction of the image's short side (IMAGE mode tiling)
_TILE_NMS_IOU = 0.4  # landmark boxes overlapping more than this across tiles are the same face


def _close_tasks(tasks: list) -> None:
    """Close MediaPipe tasks (run by weakref.finalize at exit, before interpreter teardown)."""
    while tasks:
        tasks.pop().close()


class MediaPipeLandmarker:
    """Faces and landmarks from MediaPipe's face landmarker bundle (``face_landmarker.task``).

    Args:
        model_path: the ``.task`` file; default: ``$VIDEO_FER_MEDIAPIPE_MODEL``, the user cache,
            else downloaded (see :mod:`video_fer.faces.model_files`).
        mode: ``"video"`` (clips, tracking) or ``"image"`` (independent stills).
        num_faces: most faces returned per frame.
        min_detection_confidence, min_presence_confidence, min_tracking_confidence: MediaPipe thresholds.
        blendshapes: also return the 52 blendshape scores.
        box_padding: grow the landmark-extent box by this fraction of its size on each side.
        detector_scores: run the bundle's face detector too, to give each face a real confidence
            (costs one 128x128 detector pass per frame); if False every face gets
            ``min_presence_confidence``, the bound MediaPipe guarantees.
        tiles: IMAGE mode only: also search overlapping tiles (group photos with small faces).
        download: allow downloading the model when it is not found locally.
    """

    name = "mediapipe"

    def __init__(
        self,
        model_path: str | Path | None = None,
        mode: str = "video",
        num_faces: int = 4,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        blendshapes: bool = True,
        box_padding: float = 0.0,
        detector_scores: bool = True,
        tiles: bool = False,
        download: bool = True,
    ):
        if mode not in ("video", "image"):
            raise ValueError(f"MediaPipeLandmarker mode must be 'video' or 'image', got {mode!r}")
        if tiles and mode != "image":
            raise ValueError("MediaPipeLandmarker tiles=True needs mode='image' (VIDEO mode tracks whole frames)")
        self.model_path = resolve_model_file(MEDIAPIPE_FACE_LANDMARKER, model_path, download=download)
        self.mode = mode
        self.num_faces = int(num_faces)
        self.min_detection_confidence = float(min_detection_confidence)
        self.min_presence_confidence = float(min_presence_confidence)
        self.min_tracking_confidence = float(min_tracking_confidence)
        self.blendshapes = bool(blendshapes)
        self.box_padding = float(box_padding)
        self.detector_scores = bool(detector_scores)
        self.tiles = bool(tiles)
        self._detector_model = self._read_detector_model() if detector_scores else None
        self._tasks: list = []  # open MediaPipe tasks, closed by close() or at exit
        self._finalizer = weakref.finalize(self, _close_tasks, self._tasks)
        self._landmarker = None
        self._detector = None
        self._last_timestamp_ms = -1
        self._ahead: collections.deque[tuple[np.ndarray, Future]] = collections.deque()  # (frame indices, result)
        self._worker: ThreadPoolExecutor | None = None
        self._open_tasks()

    # ----------------------------------------------------------------- task lifetime
    def _read_detector_model(self) -> bytes:
        try:
            with zipfile.ZipFile(self.model_path) as bundle:
                return bundle.read(_DETECTOR_IN_BUNDLE)
        except (zipfile.BadZipFile, KeyError, OSError) as error:
            raise ModelFileError(
                f"{self.model_path}: not a MediaPipe face_landmarker.task bundle (no {_DETECTOR_IN_BUNDLE}: {error}); "
                "download it again"
            ) from error

    def _open_tasks(self) -> None:
        """(Re)create the landmarker (and detector) task in the configured running mode."""
        from mediapipe.tasks.python import BaseOptions, vision

        self._drain()
        _close_tasks(self._tasks)
        running_mode = vision.RunningMode.VIDEO if self.mode == "video" else vision.RunningMode.IMAGE
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=running_mode,
            num_faces=self.num_faces,
            min_face_detection_confidence=self.min_detection_confidence,
            min_face_presence_confidence=self.min_presence_confidence,
            min_tracking_confidence=self.min_tracking_confidence,
            output_face_blendshapes=self.blendshapes,
        )
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except Exception as error:  # mediapipe raises RuntimeError/ValueError with its own text
            raise ModelFileError(f"{self.model_path}: MediaPipe cannot load this model ({error}); download it again") from error
        self._tasks.append(self._landmarker)
        if self._detector_model is not None:
            detector_options = vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_buffer=self._detector_model),
                running_mode=running_mode,
                min_detection_confidence=min(self.min_detection_confidence, 0.3),  # low: we only read scores
            )
            self._detector = vision.FaceDetector.create_from_options(detector_options)
            self._tasks.append(self._detector)
        self._last_timestamp_ms = -1

    def start_clip(self, source: str | None = None, fps: float | None = None) -> None:
        """New clip: forget tracking state and restart the timestamp clock (recreates the VIDEO task,
        unless it has not seen a frame yet: a fresh task has no state to forget)."""
        if self.mode == "video" and (self._last_timestamp_ms >= 0 or self._landmarker is None):
            self._open_tasks()

    def close(self) -> None:
        """Close the MediaPipe tasks and the worker of :meth:`prefetch` (safe to call twice)."""
        self._drain()
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None
        _close_tasks(self._tasks)
        self._landmarker = self._detector = None

    def __enter__(self) -> "MediaPipeLandmarker":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ----------------------------------------------------------------- running
    def __call__(self, frames, frame_indices: Sequence[int], timestamps: Sequence[float]) -> list[list[Face]]:
        """``frames`` uint8 ``(T, H, W, 3)`` RGB (numpy or torch), ``timestamps`` seconds ``(T,)`` -> faces per frame.

        Frames handed to :meth:`prefetch` before come back from its worker (calls in the order of the prefetches)."""
        if self._ahead:
            indices, result = self._ahead[0]
            if np.array_equal(indices, np.asarray(frame_indices, np.int64)):
                self._ahead.popleft()
                return result.result()
            self._drain()  # not the frames announced: their results are dropped, these are landmarked now
        frames = self._checked(frames)
        return self._landmark(frames, self._timestamps_ms(np.asarray(timestamps, dtype=np.float64), len(frames)))

    def prefetch(self, frames, frame_indices: Sequence[int], timestamps: Sequence[float]) -> None:
        """Start landmarking the frames of a coming call in a worker thread (VIDEO mode; IMAGE mode ignores it).

        The call with the same ``frame_indices`` returns the result; prefetches and calls must come in the same
        order. A call with other frames first waits for and drops the prefetched ones."""
        if self.mode != "video" or self.tiles:
            return
        frames = self._checked(frames)
        timestamps_ms = self._timestamps_ms(np.asarray(timestamps, dtype=np.float64), len(frames))
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-fer-mediapipe")
        self._ahead.append((np.asarray(frame_indices, np.int64).copy(),
                            self._worker.submit(self._landmark, frames, timestamps_ms)))

    def _drain(self) -> None:
        """Wait for prefetched work and drop it (errors included: nobody asked for those frames)."""
        while self._ahead:
            self._ahead.popleft()[1].exception()

    def _checked(self, frames) -> np.ndarray:
        if self._landmarker is None:
            raise RuntimeError("MediaPipeLandmarker is closed; create a new one")
        frames = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
        return frames

    def _landmark(self, frames: np.ndarray, timestamps_ms: np.ndarray) -> list[list[Face]]:
        import mediapipe as mp

        results = []
        for frame, timestamp_ms in zip(frames, timestamps_ms):
            if self.tiles:
                results.append(self._faces_tiled(frame))
                continue
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
            results.append(self._faces_in_image(image, int(timestamp_ms)))
        return results

    def _timestamps_ms(self, timestamps: np.ndarray, count: int) -> np.ndarray:
        """Seconds -> strictly increasing integer ms for VIDEO mode (ties and rounding bumped by 1 ms)."""
        if self.mode != "video":
            return np.zeros(count, dtype=np.int64)
        if timestamps.shape != (count,):
            raise ValueError(f"timestamps must have shape ({count},) like frames, got {timestamps.shape}")
        wanted = np.round(timestamps * 1000.0).astype(np.int64)
        # each stamp must exceed the previous one: running max of (wanted - position) restores order
        position = np.arange(count, dtype=np.int64)
        floor = self._last_timestamp_ms + 1 + position
        stamps = np.maximum.accumulate(np.maximum(wanted, floor) - position) + position
        self._last_timestamp_ms = int(stamps[-1]) if count else self._last_timestamp_ms
        return stamps

    def _run(self, image, timestamp_ms: int):
        if self.mode == "video":
            landmarks = self._landmarker.detect_for_video(image, timestamp_ms)
            detections = self._detector.detect_for_video(image, timestamp_ms) if self._detector else None
        else:
            landmarks = self._landmarker.detect(image)
            detections = self._detector.detect(image) if self._detector else None
        return landmarks, detections

    def _faces_in_image(self, image, timestamp_ms: int) -> list[Face]:
        """One MediaPipe image -> list of Face (pixel coordinates of that image)."""
        result, detections = self._run(image, timestamp_ms)
        if not result.face_landmarks:
            return []
        width, height = image.width, image.height
        normalised = np.array([[(p.x, p.y, p.z) for p in face] for face in result.face_landmarks], dtype=np.float32)
        mesh = normalised * np.array([width, height, width], dtype=np.float32)  # z shares x's scale
        mesh[..., :2] -= 0.5  # MediaPipe's [0, 1] spans pixel edges; ours starts at the first pixel centre
        landmarks68 = mediapipe_to_ibug68(mesh[..., :2])
        boxes = boxes_from_points(mesh[..., :2], self.box_padding)
        scores = self._face_scores(boxes_from_points(mesh[..., :2]), detections)
        blendshapes = (
            np.array([[c.score for c in categories] for categories in result.face_blendshapes], dtype=np.float32)
            if self.blendshapes and result.face_blendshapes else [None] * len(mesh)
        )
        return [
            Face(box=boxes[i], score=float(scores[i]), landmarks=landmarks68[i],
                 native_landmarks=mesh[i], blendshapes=blendshapes[i])
            for i in range(len(mesh))
        ]

    def _face_scores(self, landmark_boxes: np.ndarray, detections) -> np.ndarray:
        """Confidence per face ``(F,)``.

        The Tasks API does not expose the landmarker's face-presence score, so each face takes the
        score of the bundle's own face detector on the same frame when a detection overlaps its
        landmark box (IoU > 0.3); otherwise (detector off, or the landmarker tracked a face the
        detector misses in this frame) ``min_presence_confidence``, the bound every returned face passed.
        """
        scores = np.full(len(landmark_boxes), self.min_presence_confidence, dtype=np.float32)
        if not detections or not detections.detections:
            return scores
        detection_boxes = np.array(
            [[d.bounding_box.origin_x, d.bounding_box.origin_y,
              d.bounding_box.origin_x + d.bounding_box.width, d.bounding_box.origin_y + d.bounding_box.height]
             for d in detections.detections], dtype=np.float32)
        detection_scores = np.array([d.categories[0].score for d in detections.detections], dtype=np.float32)
        overlap = box_iou(landmark_boxes, detection_boxes)
        best = overlap.argmax(axis=1)
        matched = overlap[np.arange(len(landmark_boxes)), best] > _SCORE_MATCH_IOU
        scores[matched] = np.maximum(detection_scores[best[matched]], scores[matched])
        return scores

    def _faces_tiled(self, frame: np.ndarray) -> list[Face]:
        """IMAGE mode: whole frame + overlapping square tiles, merged by non-maximum suppression."""
        import mediapipe as mp

        height, width = frame.shape[:2]
        side = int(min(height, width) * _TILE_FRACTION)
        offsets = [(0, 0, frame)]
        columns = int(np.ceil((width - side) / (side / 2))) + 1
        rows = int(np.ceil((height - side) / (side / 2))) + 1
        for top in np.linspace(0, height - side, rows).astype(int):
            for left in np.linspace(0, width - side, columns).astype(int):
                offsets.append((left, top, frame[top:top + side, left:left + side]))
        candidates: list[Face] = []
        for left, top, tile in offsets:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(tile))
            shift = np.array([left, top], dtype=np.float32)
            for face in self._faces_in_image(image, 0):
                face.box = face.box + np.tile(shift, 2)
                face.landmarks = face.landmarks + shift
                face.native_landmarks[:, :2] += shift
                candidates.append(face)
        return _non_maximum_suppression(candidates, _TILE_NMS_IOU)[: self.num_faces]


def _non_maximum_suppression(faces: list[Face], iou_threshold: float) -> list[Face]:
    """Keep the best-scoring (then largest) face of each overlapping group."""
    if not faces:
        return []
    boxes = np.stack([face.box for face in faces])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((-areas, -np.array([face.score for face in faces])))
    overlap = box_iou(boxes, boxes)
    kept: list[int] = []
    for candidate in order:
        if all(overlap[candidate, k] <= iou_threshold for k in kept):
            kept.append(int(candidate))
    return [faces[k] for k in kept]
