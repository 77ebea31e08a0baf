"""Landmarks on keyframes only, interpolated in between (the landmark stage of ``video-fer track``).

MediaPipe's face mesh costs ~8 ms per frame on one CPU core, more than the whole network of a
128 px TAE; faces move little within a few frames, so :class:`KeyframeLandmarks` runs the
landmarker on every ``every``-th processed frame (the *keyframes*) and gives each frame in
between the linear mix of the landmarks of the two keyframes around it::

    landmarks(t) = (1 - w) * landmarks(a) + w * landmarks(b),   w = (t - a) / (b - a)

(boxes and scores alike; positions ``t`` count processed frames). Every frame still gets its
own faces, so the network still runs on every frame's aligned face.

The keyframes must agree for a mix to make sense: the same number of faces, each face of ``a``
paired with one face of ``b``: the same ``follow_id`` (a landmarker that follows faces says
which is which, however far they moved), else a box overlap (IoU >= ``min_iou``) at a similar
size. Where they do not (a face appears, leaves, or the shot cuts) the frames in between are
landmarked one by one, so a face that appears between two keyframes is found on the frame where
the landmarker would find it, not up to ``every - 1`` frames late.

A landmarker that offers ``probe(frame) -> boxes`` (one detector call) and ``landmark_at(frame,
boxes) -> faces`` (landmarks on crops around the boxes, frames in any order), as
:class:`~video_fer.faces.zoom_finder.ZoomFaceFinder` does, also keeps the faces seen only between
keyframes (every-frame landmarking would find them; the keyframes alone would not):

- between two keyframes without a face, the middle frame is probed; when the probe finds a face,
  the frames in between are landmarked;
- the frames between keyframes that disagree are landmarked with ``landmark_at`` around the faces of
  both keyframes and the probe's detections (small and turned faces stay found: the crops zoom on
  them), instead of the ``gap_landmarker`` on whole frames.

Streaming: frames after the latest keyframe wait (at most ``every - 1`` frames plus one batch)
until the next keyframe arrives; :meth:`KeyframeLandmarks.finish` landmarks the clip's last
frame as a keyframe and releases the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from video_fer.errors import ConfigError
from video_fer.faces.boxes import box_iou
from video_fer.faces.types import Face

if TYPE_CHECKING:
    import torch

# measured (README; tools/bench_track.py, tools/bench_track_accuracy.py, tools/bench_faces.py): every 3rd frame is
# the one that keeps track under 1.9x decode-only on a quiet 2-core machine (every 2nd: 2.2x), with the same OpenFace
# agreement as 1 or 2 and keyframe recall equal to every-frame landmarking's; 2 gives landmarks closer to every frame's
DEFAULT_LANDMARK_EVERY = 3
DEFAULT_MIN_IOU = 0.3  # keyframes 2-3 frames apart: a tracked face overlaps itself far more than this
DEFAULT_MAX_SIZE_CHANGE = 1.5  # a bigger jump in face size between keyframes is a cut, not motion


@dataclass
class LandmarkedFrames:
    """Consecutive processed frames and the faces of each (one chunk of :class:`KeyframeLandmarks`' output).

    Attributes:
        frame_indices: int64 ``(T,)``; timestamps: float64 ``(T,)`` seconds; frames: uint8 ``(T, H, W, 3)``.
        faces: per frame, its list of :class:`~video_fer.faces.types.Face`.
        source: int8 ``(T,)`` where each frame's faces come from: :data:`KEYFRAME`,
            :data:`INTERPOLATED` or :data:`GAP_FILLED` (landmarked because its keyframes disagreed).
    """

    frame_indices: np.ndarray
    timestamps: np.ndarray
    frames: torch.Tensor
    faces: list[list[Face]]
    source: np.ndarray


KEYFRAME, INTERPOLATED, GAP_FILLED = 0, 1, 2


def match_keyframe_faces(faces_a: Sequence[Face], faces_b: Sequence[Face], min_iou: float = DEFAULT_MIN_IOU,
                         max_size_change: float = DEFAULT_MAX_SIZE_CHANGE) -> list[tuple[int, int]] | None:
    """Pair the faces of two keyframes one to one, or None when they disagree.

    Faces with the same ``follow_id`` pair first (the landmarker followed that face from one
    keyframe to the other); the others greedily by box overlap (a handful of faces at most):
    each such pair must overlap by ``min_iou`` and differ in size (``sqrt(w * h)``) by at most
    ``max_size_change`` times.

    Returns:
        ``[(index in a, index in b), ...]`` in the order of ``faces_a`` (empty when both have
        no face); None when the face counts differ or some face has no partner.
    """
    if len(faces_a) != len(faces_b):
        return None
    if not faces_a:
        return []
    pairs: dict[int, int] = {}
    ids_b = {face.follow_id: b for b, face in enumerate(faces_b) if face.follow_id is not None}
    for a, face in enumerate(faces_a):
        if face.follow_id is not None and face.follow_id in ids_b:
            pairs[a] = ids_b.pop(face.follow_id)
    rest_a = [a for a in range(len(faces_a)) if a not in pairs]
    rest_b = [b for b in range(len(faces_b)) if b not in pairs.values()]
    if not rest_a:
        return sorted(pairs.items())
    by_overlap = _match_by_overlap([faces_a[a] for a in rest_a], [faces_b[b] for b in rest_b], min_iou,
                                   max_size_change)
    if by_overlap is None:
        return None
    pairs.update({rest_a[a]: rest_b[b] for a, b in by_overlap})
    return sorted(pairs.items())


def _match_by_overlap(faces_a: Sequence[Face], faces_b: Sequence[Face], min_iou: float,
                      max_size_change: float) -> list[tuple[int, int]] | None:
    """Greedy one-to-one pairs by box overlap under the size gate (same counts, at least one face), or None."""
    boxes_a = np.stack([face.box for face in faces_a])
    boxes_b = np.stack([face.box for face in faces_b])
    overlap = box_iou(boxes_a, boxes_b)
    size_a = np.sqrt(np.clip(boxes_a[:, 2:] - boxes_a[:, :2], 1.0, None).prod(-1))
    size_b = np.sqrt(np.clip(boxes_b[:, 2:] - boxes_b[:, :2], 1.0, None).prod(-1))
    ratio = size_a[:, None] / size_b[None, :]
    allowed = (overlap >= min_iou) & (np.maximum(ratio, 1.0 / ratio) <= max_size_change)
    overlap = np.where(allowed, overlap, -1.0)
    pairs = {}
    for _ in range(len(faces_a)):
        a, b = np.unravel_index(int(overlap.argmax()), overlap.shape)
        if overlap[a, b] < 0:
            return None
        pairs[int(a)] = int(b)
        overlap[a, :] = -1.0
        overlap[:, b] = -1.0
    return sorted(pairs.items())


def _mix(value_a, value_b, weights: np.ndarray):
    """``(1 - w) a + w b`` for each weight: ``(M,)`` weights -> ``(M, *a.shape)``; None unless both exist alike."""
    if value_a is None or value_b is None or np.shape(value_a) != np.shape(value_b):
        return [None] * len(weights)
    a, b = np.asarray(value_a, np.float32), np.asarray(value_b, np.float32)
    w = weights.reshape((-1,) + (1,) * a.ndim).astype(np.float32)
    return a[None] + w * (b - a)[None]


def interpolate_faces(faces_a: Sequence[Face], faces_b: Sequence[Face], pairs: Sequence[tuple[int, int]],
                      weights: np.ndarray) -> list[list[Face]]:
    """Faces of the frames between two keyframes: each pair's box, score, landmarks (and native
    landmarks / blendshapes when both keyframes have them) mixed linearly.

    Args:
        pairs: from :func:`match_keyframe_faces`.
        weights: float ``(M,)`` position of each in-between frame, ``(t - a) / (b - a)`` in (0, 1).

    Returns:
        ``M`` lists of faces, in the order of ``pairs``.
    """
    weights = np.asarray(weights, np.float64)
    per_frame: list[list[Face]] = [[] for _ in weights]
    for a, b in pairs:
        face_a, face_b = faces_a[a], faces_b[b]
        boxes = _mix(face_a.box, face_b.box, weights)
        landmarks = _mix(face_a.landmarks, face_b.landmarks, weights)
        scores = (1.0 - weights) * face_a.score + weights * face_b.score
        native = _mix(face_a.native_landmarks, face_b.native_landmarks, weights)
        blendshapes = _mix(face_a.blendshapes, face_b.blendshapes, weights)
        for m in range(len(weights)):
            per_frame[m].append(Face(box=boxes[m], score=float(scores[m]), landmarks=landmarks[m],
                                     native_landmarks=native[m], blendshapes=blendshapes[m],
                                     follow_id=face_a.follow_id))
    return per_frame


class KeyframeLandmarks:
    """Streaming keyframe landmarker: push decoded batches in clip order, get landmarked chunks back.

    Args:
        landmarker: runs on the keyframes, always in increasing frame order (MediaPipe VIDEO
            mode tracks the face from keyframe to keyframe).
        every: a keyframe every ``every`` processed frames (1 = landmark every frame).
        gap_landmarker: landmarks the frames between two keyframes that disagree; frames reach it
            after the later keyframe, so it must not need increasing timestamps (an IMAGE-mode
            MediaPipe, FAN, precomputed files). A callable without arguments is called on first
            need to create it (and the created one is closed by :meth:`close`). Default: ``landmarker``.
        min_iou, max_size_change: when two keyframes' faces count as the same faces
            (:func:`match_keyframe_faces`).

    Counters (per clip): ``keyframes``, ``interpolated``, ``gap_filled`` frames, ``probes`` (detector calls
    between empty or disagreeing keyframes, for a landmarker with ``probe``).
    """

    def __init__(self, landmarker, every: int = DEFAULT_LANDMARK_EVERY, gap_landmarker=None,
                 min_iou: float = DEFAULT_MIN_IOU, max_size_change: float = DEFAULT_MAX_SIZE_CHANGE) -> None:
        if int(every) != every or every < 1:
            raise ConfigError(f"landmark_every={every!r}: expected an integer >= 1 (1 = landmarks on every frame)")
        self.landmarker = landmarker
        self.every = int(every)
        self.min_iou, self.max_size_change = float(min_iou), float(max_size_change)
        # a landmarker has start_clip; a factory is any other callable
        is_factory = callable(gap_landmarker) and not hasattr(gap_landmarker, "start_clip")
        self._gap_factory: Callable | None = gap_landmarker if is_factory else None
        self._gap = None if is_factory else gap_landmarker  # None: created on need, or the landmarker itself
        self._own_gap = False
        self._reset()

    def _reset(self) -> None:
        self._seen = 0  # processed frames pushed so far in this clip
        self._announced = 0  # processed frames handed to prefetch so far in this clip
        self._pending: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []  # frames after the latest keyframe
        self._last_key: tuple[int, list[Face]] | None = None  # (position, faces) of the latest keyframe
        self.keyframes = self.interpolated = self.gap_filled = self.probes = 0

    def start_clip(self, source: str | None = None, fps: float | None = None) -> None:
        """New clip: forget buffered frames and the previous keyframe; restart the landmarkers."""
        self._reset()
        self.landmarker.start_clip(source, fps)
        calls_every = getattr(self.landmarker, "keyframe_every", None)
        if calls_every is not None:  # a searching landmarker keeps its search rate per frame, not per call
            calls_every(self.every)
        if self._gap is not None and self._gap is not self.landmarker:
            self._gap.start_clip(source, fps)

    def _gap_landmarker(self):
        if self._gap is None and self._gap_factory is not None:
            self._gap, self._own_gap = self._gap_factory(), True
        return self._gap if self._gap is not None else self.landmarker

    def _keyframe_rows(self, first_position: int, count: int) -> np.ndarray:
        """Rows of a batch of ``count`` frames starting at clip position ``first_position`` that are keyframes."""
        return np.flatnonzero((first_position + np.arange(count)) % self.every == 0)

    def prefetch(self, frame_indices: np.ndarray, timestamps: np.ndarray, frames: torch.Tensor) -> None:
        """Announce the batch that will be pushed after the current one: a landmarker that can work ahead
        (``prefetch``, MediaPipe's VIDEO mode) starts on its keyframes in a worker thread. Optional; when used,
        every batch must be announced, in the order of the pushes."""
        import torch

        ahead = getattr(self.landmarker, "prefetch", None)
        frame_indices = np.asarray(frame_indices, np.int64)
        if ahead is None or len(frame_indices) == 0:
            return
        keys = self._keyframe_rows(self._announced, len(frame_indices))  # the keyframes push will ask for
        self._announced += len(frame_indices)
        if len(keys):
            ahead(torch.as_tensor(frames)[torch.from_numpy(keys)], frame_indices[keys],
                  np.asarray(timestamps, np.float64)[keys])

    def push(self, frame_indices: np.ndarray, timestamps: np.ndarray, frames: torch.Tensor) -> LandmarkedFrames | None:
        """Add the next decoded batch; returns the frames up to its last keyframe (None if it has none).

        Args:
            frame_indices: int ``(T,)`` increasing; timestamps: seconds ``(T,)``; frames: uint8 ``(T, H, W, 3)``.
        """
        import torch  # here, not at module level: the CLI imports this module for its defaults

        frame_indices = np.asarray(frame_indices, np.int64)
        if len(frame_indices) == 0:
            return None
        keys = self._keyframe_rows(self._seen, len(frame_indices))
        self._seen += len(frame_indices)
        self._pending.append((frame_indices, np.asarray(timestamps, np.float64), torch.as_tensor(frames)))
        return self._resolve(keys)

    def finish(self) -> LandmarkedFrames | None:
        """End of the clip: the last buffered frame becomes a keyframe; returns the remaining frames."""
        if not self._pending:
            return None
        last = len(self._pending[-1][0]) - 1  # the latest batch's last frame
        return self._resolve(np.array([last]))

    def _resolve(self, keys_in_latest: np.ndarray) -> LandmarkedFrames | None:
        """Landmark the keyframes of the latest pushed batch and fill the frames before each of them."""
        import torch

        if len(keys_in_latest) == 0:
            return None
        indices = np.concatenate([chunk[0] for chunk in self._pending])
        timestamps = np.concatenate([chunk[1] for chunk in self._pending])
        frames = self._pending[0][2] if len(self._pending) == 1 else torch.cat([chunk[2] for chunk in self._pending])
        offset = len(indices) - len(self._pending[-1][0])  # where the latest batch starts in the buffer
        keys = offset + keys_in_latest  # buffer rows of the keyframes
        key_faces = self.landmarker(frames[torch.from_numpy(keys)], indices[keys], timestamps[keys])
        first_position = self._seen - len(indices)  # clip position of buffer row 0
        faces: list[list[Face] | None] = [None] * (keys[-1] + 1)
        source = np.full(keys[-1] + 1, INTERPOLATED, np.int8)
        previous = self._last_key
        for key, found in zip(keys.tolist(), key_faces):
            faces[key], source[key] = list(found), KEYFRAME
            start = 0 if previous is None else previous[0] - first_position + 1
            if key > start:  # frames between the previous keyframe and this one
                self._fill(faces, source, previous, (key + first_position, faces[key]), first_position, start, key,
                           frames, indices, timestamps)
            previous = (key + first_position, faces[key])
        self._last_key = previous
        self.keyframes += len(keys)
        cut = keys[-1] + 1
        rest = (indices[cut:], timestamps[cut:], frames[cut:])
        self._pending = [rest] if len(rest[0]) else []
        return LandmarkedFrames(indices[:cut], timestamps[:cut], frames[:cut], faces, source)

    def _fill(self, faces, source, previous, current, first_position, start, stop, frames, indices, timestamps):
        """Faces of buffer rows ``start..stop-1``, between keyframes ``previous`` and ``current`` ((position, faces))."""
        import torch

        pairs = None
        if previous is not None:
            pairs = match_keyframe_faces(previous[1], current[1], self.min_iou, self.max_size_change)
        rows = np.arange(start, stop)
        probe = getattr(self.landmarker, "probe", None)
        around = [] if previous is None else [face.box for face in previous[1]]
        around += [face.box for face in current[1]]
        if probe is not None and (pairs is None or pairs == []):
            # a face seen only between these keyframes: one detector call on the middle frame looks for it
            self.probes += 1
            found = probe(np.asarray(frames[int(rows[len(rows) // 2])]))
            if pairs == [] and found:
                pairs = None  # both keyframes empty, yet a face in between: look at every frame
            around += list(found)
        if pairs is not None:
            weights = (rows + first_position - previous[0]) / (current[0] - previous[0])
            for row, found in zip(rows.tolist(), interpolate_faces(previous[1], current[1], pairs, weights)):
                faces[row] = found
            self.interpolated += len(rows)
            return
        landmark_at = getattr(self.landmarker, "landmark_at", None)
        if landmark_at is not None:  # crops around the faces and detections: small and turned faces are kept
            found = [landmark_at(np.asarray(frames[row]), around) for row in rows.tolist()]
        else:
            found = self._gap_landmarker()(frames[torch.from_numpy(rows)], indices[rows], timestamps[rows])
        for row, faces_of_row in zip(rows.tolist(), found):
            faces[row] = list(faces_of_row)
        source[rows] = GAP_FILLED
        self.gap_filled += len(rows)

    def close(self) -> None:
        """Close the gap landmarker if this object created it (the main landmarker belongs to the caller)."""
        if self._own_gap:
            self._gap.close()
            self._gap, self._own_gap = None, False


def image_mode_twin(landmarker) -> Callable | None:
    """A factory of an IMAGE-mode copy of a VIDEO-mode MediaPipe landmarker (for the gaps between
    keyframes, which arrive out of order); None when ``landmarker`` can take frames in any order."""
    if getattr(landmarker, "name", None) != "mediapipe" or getattr(landmarker, "mode", None) != "video":
        return None

    def create():
        from video_fer.faces.mediapipe_backend import MediaPipeLandmarker

        return MediaPipeLandmarker(
            model_path=landmarker.model_path, mode="image", num_faces=landmarker.num_faces,
            min_detection_confidence=landmarker.min_detection_confidence,
            min_presence_confidence=landmarker.min_presence_confidence,
            min_tracking_confidence=landmarker.min_tracking_confidence, blendshapes=landmarker.blendshapes,
            box_padding=landmarker.box_padding, detector_scores=landmarker.detector_scores, download=False)

    return create
