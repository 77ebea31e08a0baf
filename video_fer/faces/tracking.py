"""Face tracks: follow each face from frame to frame.

Faces of consecutive processed frames are matched by a minimum-cost assignment
(:func:`min_cost_assignment`) on a cost that adds the box overlap
(``1 - IoU``) to the mean landmark distance divided by the face size, both measured
against a constant-velocity prediction of each track. A pair is only allowed when the
boxes overlap enough, the landmarks moved less than a fraction of the face size and the
face size changed by less than ``max_size_change``, so a cut (the face jumps across the
image, or a shot change zooms it) ends the track and starts a new one. A face missing
for up to ``max_gap`` processed frames (a missed detection, a hand passing in front)
continues its track; a longer absence closes it.

Track ids are integers in order of first appearance; faces that appear in the same
frame get ids from left to right (then top to bottom), so ids do not depend on the
order a detector lists faces in.

``max_gap`` counts processed frames (calls to :meth:`FaceTracker.update`), not frame
indices, so it means the same thing whatever step the video was sampled with.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from video_fer.errors import VideoFerError
from video_fer.faces.boxes import box_iou, box_size


# up to this many tracks and faces, assignments are enumerated in numpy (at most 5! = 120); scipy's import
# (~0.3 s, most of what `track` adds to start-up besides MediaPipe) is then never paid on clips of a few faces
ENUMERATED_ASSIGNMENT = 5


class TrackingInputError(VideoFerError, ValueError):
    """Faces or frame indices given to the tracker are malformed or out of order."""


@functools.lru_cache(maxsize=None)
def _matchings(rows: int, columns: int) -> np.ndarray:
    """Every one-to-one matching of ``rows <= columns`` rows: ``(M, rows)`` column of each row."""
    return np.array(list(itertools.permutations(range(columns), rows)), np.int64).reshape(-1, rows)


def min_cost_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching of rows and columns with the least total cost, as
    :func:`scipy.optimize.linear_sum_assignment` (``min(R, C)`` pairs; rows increasing).

    Args:
        cost: ``(R, C)`` float.

    Returns:
        ``(rows, columns)`` int64 ``(min(R, C),)``.
    """
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {cost.shape}")
    if max(cost.shape) > ENUMERATED_ASSIGNMENT:
        from scipy.optimize import linear_sum_assignment

        rows, columns = linear_sum_assignment(cost)
        return rows.astype(np.int64), columns.astype(np.int64)
    flipped = cost.shape[0] > cost.shape[1]
    short = cost.T if flipped else cost  # one row per item of the short side
    if short.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    matchings = _matchings(*short.shape)
    best = matchings[np.argmin(short[np.arange(short.shape[0]), matchings].sum(1))]
    rows, columns = np.arange(short.shape[0], dtype=np.int64), best
    if flipped:
        order = np.argsort(best)
        rows, columns = best[order], rows[order]
    return rows, columns


@dataclass
class FaceTrack:
    """One face followed through a clip.

    Attributes:
        track_id: id, in order of first appearance.
        frame_indices: int64 ``(n,)`` increasing frame indices where the face was seen.
        boxes: float32 ``(n, 4)`` x0, y0, x1, y1 pixels.
        scores: float32 ``(n,)`` detection scores.
        landmarks: float32 ``(n, 68, 2)`` iBUG-68 landmarks in pixels.
        blendshapes: float32 ``(n, 52)`` or None when the landmarker gives none
            (NaN rows where a frame of the track lacked them).
    """

    track_id: int
    frame_indices: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    blendshapes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.frame_indices.shape[0])

    @property
    def first_frame(self) -> int:
        return int(self.frame_indices[0])

    @property
    def last_frame(self) -> int:
        return int(self.frame_indices[-1])


@dataclass
class TrackingResult:
    """Output of :func:`track_faces`.

    Attributes:
        tracks: the kept tracks, ids ``0..K-1`` in order of first appearance.
        frame_tracks: frame index -> ids of the tracks present in that frame, for every
            frame given, in frame order; ``[]`` for a frame with no (kept) face.
        face_track_ids: for each frame given, the track id of each input face in the
            input order, ``-1`` for a face whose track was dropped as too short.
    """

    tracks: list[FaceTrack]
    frame_tracks: dict[int, list[int]]
    face_track_ids: list[list[int]]

    @property
    def frames_without_face(self) -> list[int]:
        """Frame indices where no kept track is present."""
        return [frame for frame, ids in self.frame_tracks.items() if not ids]


@dataclass
class _TrackState:
    """A track being built: per-observation lists plus what matching needs."""

    track_id: int
    frame_indices: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # update-call number of each observation
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    blendshapes: list[np.ndarray | None] = field(default_factory=list)

    def append(self, frame_index: int, step: int, face: "_FaceArrays") -> None:
        self.frame_indices.append(frame_index)
        self.steps.append(step)
        self.boxes.append(face.box)
        self.scores.append(face.score)
        self.landmarks.append(face.landmarks)
        self.blendshapes.append(face.blendshapes)

    def predicted(self, step: int, predict_motion: bool) -> tuple[np.ndarray, np.ndarray]:
        """Box ``(4,)`` and landmarks ``(68, 2)`` expected at update-call ``step`` (constant velocity)."""
        box, landmarks = self.boxes[-1], self.landmarks[-1]
        if not predict_motion or len(self.steps) < 2:
            return box, landmarks
        elapsed = step - self.steps[-1]
        span = self.steps[-1] - self.steps[-2]
        box_velocity = (self.boxes[-1] - self.boxes[-2]) / span
        landmark_velocity = (self.landmarks[-1] - self.landmarks[-2]) / span
        return box + box_velocity * elapsed, landmarks + landmark_velocity * elapsed

    def to_track(self) -> FaceTrack:
        blendshapes = None
        present = [b for b in self.blendshapes if b is not None]
        if present:
            width = present[0].shape[-1]
            blendshapes = np.stack(
                [b if b is not None else np.full(width, np.nan, np.float32) for b in self.blendshapes]
            ).astype(np.float32)
        return FaceTrack(
            track_id=self.track_id,
            frame_indices=np.asarray(self.frame_indices, dtype=np.int64),
            boxes=np.stack(self.boxes).astype(np.float32),
            scores=np.asarray(self.scores, dtype=np.float32),
            landmarks=np.stack(self.landmarks).astype(np.float32),
            blendshapes=blendshapes,
        )


@dataclass
class _FaceArrays:
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    blendshapes: np.ndarray | None


def _face_arrays(face: Any, frame_index: int, position: int) -> _FaceArrays:
    """Read a ``Face`` (or any object with box/score/landmarks[/blendshapes]) into checked arrays."""
    try:
        box = np.asarray(face.box, dtype=np.float64).reshape(4)
        landmarks = np.asarray(face.landmarks, dtype=np.float64)
        score = float(face.score)
    except (AttributeError, ValueError, TypeError) as error:
        raise TrackingInputError(
            f"frame {frame_index}, face {position}: expected a Face with box (4,), score and landmarks (68, 2) ({error})"
        ) from None
    if landmarks.shape != (68, 2):
        raise TrackingInputError(
            f"frame {frame_index}, face {position}: landmarks must have shape (68, 2), got {landmarks.shape}"
        )
    if not (np.isfinite(box).all() and np.isfinite(landmarks).all()):
        raise TrackingInputError(f"frame {frame_index}, face {position}: box or landmarks are not finite")
    blendshapes = getattr(face, "blendshapes", None)
    if blendshapes is not None:
        blendshapes = np.asarray(blendshapes, dtype=np.float32).reshape(-1)
    return _FaceArrays(box, score, landmarks, blendshapes)


def normalised_landmark_distance(landmarks_a: np.ndarray, boxes_a: np.ndarray, landmarks_b: np.ndarray) -> np.ndarray:
    """Mean point distance between every pair of faces over the size of face a.

    Args:
        landmarks_a: ``(A, 68, 2)``; boxes_a: ``(A, 4)`` giving face a's size ``sqrt(w * h)``.
        landmarks_b: ``(B, 68, 2)``.

    Returns:
        ``(A, B)`` distances in face sizes (0.5 = moved by half a face).
    """
    distance = np.linalg.norm(landmarks_a[:, None] - landmarks_b[None], axis=-1).mean(-1)
    return distance / box_size(boxes_a)[:, None]


class FaceTracker:
    """Incremental tracker: call :meth:`update` frame by frame, then :meth:`finish`.

    Args:
        max_gap: a face missing for up to this many processed frames continues its track.
        min_iou: smallest overlap between a track's (predicted) box and a face's box
            for them to be matched; below it the face is a new track (a cut).
        max_landmark_distance: largest mean landmark motion, in face sizes, for a match.
        max_size_change: largest ratio between the face sizes (``sqrt(w * h)``) of a track
            and a face for a match; a sudden zoom (a cut to a close-up) starts a new track.
        landmark_weight: weight of the landmark distance against ``1 - IoU`` in the cost.
        min_track_frames: tracks with fewer observations are dropped by :meth:`finish`.
        predict_motion: match against a constant-velocity prediction of each track
            (keeps crossing faces apart) instead of its last observation.
    """

    def __init__(self, max_gap: int = 5, min_iou: float = 0.2, max_landmark_distance: float = 0.5,
                 max_size_change: float = 1.5, landmark_weight: float = 1.0, min_track_frames: int = 1,
                 predict_motion: bool = True) -> None:
        if max_gap < 0 or min_track_frames < 1 or not 0.0 <= min_iou <= 1.0 or max_landmark_distance <= 0 \
                or max_size_change < 1:
            raise TrackingInputError(
                f"FaceTracker: need max_gap >= 0, min_track_frames >= 1, 0 <= min_iou <= 1 and "
                f"max_landmark_distance > 0, max_size_change >= 1; got max_gap={max_gap}, "
                f"min_track_frames={min_track_frames}, min_iou={min_iou}, "
                f"max_landmark_distance={max_landmark_distance}, max_size_change={max_size_change}"
            )
        self.max_gap = int(max_gap)
        self.min_iou = float(min_iou)
        self.max_landmark_distance = float(max_landmark_distance)
        self.max_size_change = float(max_size_change)
        self.landmark_weight = float(landmark_weight)
        self.min_track_frames = int(min_track_frames)
        self.predict_motion = bool(predict_motion)
        self._active: list[_TrackState] = []
        self._closed: list[_TrackState] = []
        self._next_id = 0
        self._step = -1
        self._last_frame_index: int | None = None

    def update(self, frame_index: int, faces: Sequence[Any]) -> list[int]:
        """Add the faces of the next processed frame; returns the track id of each face.

        Args:
            frame_index: strictly larger than the previous call's.
            faces: ``Face`` objects (box, score, landmarks, optional blendshapes); may be empty.
        """
        frame_index = int(frame_index)
        if self._last_frame_index is not None and frame_index <= self._last_frame_index:
            raise TrackingInputError(
                f"frame_index {frame_index}: frames must come in increasing order (previous was {self._last_frame_index})"
            )
        self._last_frame_index = frame_index
        self._step += 1
        observed = [_face_arrays(face, frame_index, i) for i, face in enumerate(faces)]
        track_of_face = self._match(observed)

        new_faces = [i for i, track in enumerate(track_of_face) if track is None]
        # Left to right, so new ids do not depend on the order the detector lists faces in.
        new_faces.sort(key=lambda i: (observed[i].box[0], observed[i].box[1]))
        for i in new_faces:
            track_of_face[i] = _TrackState(self._next_id)
            self._next_id += 1
            self._active.append(track_of_face[i])
        for face, track in zip(observed, track_of_face):
            track.append(frame_index, self._step, face)
        self._close_stale_tracks()
        return [track.track_id for track in track_of_face]

    def _match(self, observed: list[_FaceArrays]) -> list[_TrackState | None]:
        """Hungarian assignment of faces to active tracks under the overlap and motion gates."""
        matched: list[_TrackState | None] = [None] * len(observed)
        if not observed or not self._active:
            return matched
        predictions = [track.predicted(self._step, self.predict_motion) for track in self._active]
        track_boxes = np.stack([box for box, _ in predictions])
        track_landmarks = np.stack([landmarks for _, landmarks in predictions])
        face_boxes = np.stack([face.box for face in observed])
        face_landmarks = np.stack([face.landmarks for face in observed])

        iou = box_iou(track_boxes, face_boxes)
        motion = normalised_landmark_distance(track_landmarks, track_boxes, face_landmarks)
        size_change = np.exp(np.abs(np.log(box_size(track_boxes)[:, None] / box_size(face_boxes)[None, :])))
        allowed = (iou >= self.min_iou) & (motion <= self.max_landmark_distance) & (size_change <= self.max_size_change)
        cost = (1.0 - iou) + self.landmark_weight * motion
        # Forbidden pairs get a cost no allowed assignment can reach, and are discarded below.
        cost = np.where(allowed, cost, 1e6)
        rows, cols = min_cost_assignment(cost)
        for row, col in zip(rows, cols):
            if allowed[row, col]:
                matched[col] = self._active[row]
        return matched

    def _close_stale_tracks(self) -> None:
        still_active = []
        for track in self._active:
            missed = self._step - track.steps[-1]
            (still_active if missed <= self.max_gap else self._closed).append(track)
        self._active = still_active

    def active_track_ids(self) -> list[int]:
        """Ids of the tracks that can still continue."""
        return [track.track_id for track in self._active]

    def close_track(self, track_id: int) -> None:
        """End an active track now (e.g. its face was found to continue in another track)."""
        for track in self._active:
            if track.track_id == track_id:
                self._active.remove(track)
                self._closed.append(track)
                return

    def _export(self, states: list[_TrackState]) -> list[FaceTrack]:
        kept = [state for state in states if len(state.frame_indices) >= self.min_track_frames]
        return [state.to_track() for state in sorted(kept, key=lambda state: state.track_id)]

    def pop_closed_tracks(self) -> list[FaceTrack]:
        """Tracks that can no longer continue (kept ones only), forgotten afterwards: bounded memory when streaming."""
        closed, self._closed = self._closed, []
        return self._export(closed)

    def finish(self) -> list[FaceTrack]:
        """All tracks not yet popped, with at least ``min_track_frames`` observations, by id; resets the tracker."""
        states = self._closed + self._active
        self._closed, self._active = [], []
        return self._export(states)


def track_faces(per_frame_faces: Sequence[Sequence[Any]], frame_indices: Sequence[int] | np.ndarray,
                **options: Any) -> TrackingResult:
    """Track faces through a whole clip.

    Args:
        per_frame_faces: for each processed frame, its list of ``Face`` (possibly empty).
        frame_indices: ``(T,)`` increasing frame index of each entry of ``per_frame_faces``.
        **options: :class:`FaceTracker` arguments (``max_gap``, ``min_iou``,
            ``max_landmark_distance``, ``max_size_change``, ``landmark_weight``, ``min_track_frames``,
            ``predict_motion``).

    Returns:
        :class:`TrackingResult`; kept tracks are renumbered ``0..K-1`` in order of
        first appearance (ties: left to right).
    """
    frame_indices = [int(i) for i in np.asarray(frame_indices).reshape(-1)]
    if len(frame_indices) != len(per_frame_faces):
        raise TrackingInputError(
            f"frame_indices: {len(frame_indices)} indices for {len(per_frame_faces)} frames of faces; give one per frame"
        )
    tracker = FaceTracker(**options)
    raw_ids = [tracker.update(frame, faces) for frame, faces in zip(frame_indices, per_frame_faces)]
    kept = tracker.finish()
    renumber = {track.track_id: new_id for new_id, track in enumerate(kept)}
    tracks = [replace(track, track_id=renumber[track.track_id]) for track in kept]
    face_track_ids = [[renumber.get(track_id, -1) for track_id in ids] for ids in raw_ids]
    frame_tracks = {frame: sorted(i for i in ids if i >= 0) for frame, ids in zip(frame_indices, face_track_ids)}
    return TrackingResult(tracks=tracks, frame_tracks=frame_tracks, face_track_ids=face_track_ids)
