"""Person ids that survive detection gaps: face tracks linked into people, short false faces dropped.

:class:`~video_fer.faces.tracking.FaceTracker` follows a face from frame to frame and ends its
track after ``max_gap`` frames without it; a person who turns away, is hidden or leaves for a
moment comes back as a new track. :class:`PersonTracker` runs the FaceTracker and gives each
track a *person id* when the track is confirmed (its ``min_frames``-th face), using only what
was seen up to then, so the ids can be final when written (``track`` streams its table):

- A track shorter than ``min_frames`` faces is dropped (one-to-few-frame false faces: a
  cartoon, a pattern on a T-shirt).
- A confirmed track continues a person whose last face came before the track's first face:
  - gone at most ``max_gap_seconds`` (2 s): the new face is near where the person was or where
    the person's motion would have taken them (within ``near_gap`` face sizes of the segment
    between the two), or it looks the same (:func:`face_descriptor` cosine >= ``min_similarity``);
  - gone longer, up to ``max_memory_seconds``: the new face is near where the person left
    (within ``near_memory`` face sizes) and looks the same;
  - and in both cases the face sizes agree within ``max_size_ratio``.
  Among several people who qualify, the nearest one. Otherwise the track is a new person.
- Two tracks that overlap in time are two people: a person's face ids never swap to another
  person who is on screen at the same time. (When a track continues a person whose own track
  is still open in the FaceTracker, that track is closed.)

The descriptor is cheap (~0.1 ms a face): a hue-saturation histogram (8 x 4 bins) and a 4 x 4
grid of mean colours of the face's box (its inner 80 %), L2-normalised; a person's descriptor is
the mean over a few of their recent faces.

Delay: a face's person id is known once its track is confirmed or ended, at most
``(min_frames - 1) * (max_gap + 1)`` processed frames after the face (24 with the defaults);
``track`` holds its batches until then (:mod:`video_fer.track.stages`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from video_fer.faces.tracking import FaceTracker

DEFAULT_MIN_FRAMES = 5
CONFIRMATION_SECONDS = 0.2  # [ours] a track is kept once it has lasted about this long (at least 2 faces, at most 5)
DESCRIPTOR_EVERY = 5  # a track's descriptor is refreshed every this many faces
DESCRIPTORS_KEPT = 4  # a person's look: the mean of this many recent descriptors
FORGET_FRAMES = 1000  # an ended track's person id is kept this many processed frames for late questions


def face_descriptor(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """float32 ``(48,)`` unit-length colour descriptor of the face in ``box`` (x0, y0, x1, y1) of an RGB uint8 frame."""
    import cv2

    x0, y0, x1, y1 = np.asarray(box, np.float64)
    dx, dy = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
    height, width = frame.shape[:2]
    a0, b0 = int(np.clip(x0 + dx, 0, width - 1)), int(np.clip(y0 + dy, 0, height - 1))
    a1, b1 = int(np.clip(x1 - dx, a0 + 1, width)), int(np.clip(y1 - dy, b0 + 1, height))
    patch = cv2.resize(np.ascontiguousarray(frame[b0:b1, a0:a1]), (32, 32), interpolation=cv2.INTER_AREA)
    histogram = cv2.calcHist([cv2.cvtColor(patch, cv2.COLOR_RGB2HSV)], [0, 1], None, [8, 4], [0, 180, 0, 256])
    histogram = histogram.reshape(-1) / max(float(histogram.sum()), 1.0)
    grid = cv2.resize(patch, (4, 4), interpolation=cv2.INTER_AREA).reshape(-1).astype(np.float32) / 255.0
    grid = (grid - grid.mean()) / 2.0  # the pattern of the face, not its brightness
    descriptor = np.concatenate([np.sqrt(histogram), grid[:16]]).astype(np.float32)
    return descriptor / max(float(np.linalg.norm(descriptor)), 1e-9)


def confirmation_frames(processed_fps: float) -> int:
    """Faces a track needs to be kept at a processed frame rate: ``CONFIRMATION_SECONDS`` of frames, 2 to 5."""
    return int(np.clip(round(CONFIRMATION_SECONDS * float(processed_fps or 25.0)), 2, DEFAULT_MIN_FRAMES))


def _unit(vectors: Sequence[np.ndarray]) -> np.ndarray:
    mean = np.mean(vectors, axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-9)


def _size(box: np.ndarray) -> float:
    return float(np.sqrt(max(box[2] - box[0], 1.0) * max(box[3] - box[1], 1.0)))


def _centre(box: np.ndarray) -> np.ndarray:
    return (np.asarray(box[:2], np.float64) + np.asarray(box[2:], np.float64)) / 2


def _distance_to_segment(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    direction = end - start
    length = float(direction @ direction)
    along = 0.0 if length == 0 else float(np.clip((point - start) @ direction / length, 0.0, 1.0))
    return float(np.linalg.norm(point - (start + along * direction)))


@dataclass
class _Track:
    """What the linker keeps of one FaceTracker track."""

    track_id: int
    first_frame: int
    first_box: np.ndarray
    count: int = 0
    descriptors: deque = field(default_factory=lambda: deque(maxlen=DESCRIPTORS_KEPT))
    person: int | None = None  # decided person id


@dataclass
class _Person:
    person_id: int
    track_id: int  # its latest track
    last_frame: int
    last_box: np.ndarray
    recent: deque  # (frame index, centre (2,)) of its last few faces: its velocity
    descriptors: deque  # recent descriptors
    faces: int = 0


class PersonTracker:
    """FaceTracker + person ids across gaps (see the module doc).

    Args:
        fps: processed frames per second (the gaps are in seconds).
        tracker_options: :class:`~video_fer.faces.tracking.FaceTracker` options (``min_track_frames`` is ignored).
        min_frames: faces a track needs to be kept (confirmed); shorter tracks are dropped.
        max_gap_seconds, max_memory_seconds, near_gap, near_memory, max_size_ratio, min_similarity: linking rules.
        link: link tracks into people; ``link=False, min_frames=1`` gives the FaceTracker's own tracks (each its
            own person, nothing dropped): the behaviour before person linking, one setting away. [ours]

    Use: :meth:`update` each processed frame in order (with the frame, for the descriptors), then
    :meth:`person_of` for the ids it returned once :meth:`decided`; :meth:`finish` at the end decides all.
    """

    def __init__(self, fps: float, tracker_options: dict[str, Any] | None = None,
                 min_frames: int = DEFAULT_MIN_FRAMES, max_gap_seconds: float = 2.0,
                 max_memory_seconds: float = 10.0, near_gap: float = 1.5, near_memory: float = 1.0,
                 max_size_ratio: float = 1.5, min_similarity: float = 0.95, link: bool = True):
        options = {**(tracker_options or {}), "min_track_frames": 1}
        self.tracker = FaceTracker(**options)
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.min_frames = max(1, int(min_frames))
        self.max_gap, self.max_memory = max_gap_seconds * self.fps, max_memory_seconds * self.fps
        self.near_gap, self.near_memory = float(near_gap), float(near_memory)
        self.max_size_ratio, self.min_similarity = float(max_size_ratio), float(min_similarity)
        self.link = bool(link)
        self._tracks: dict[int, _Track] = {}
        self._closed_at: dict[int, int] = {}  # frame where each ended, confirmed track ended
        self._people: list[_Person] = []
        self._ended_people: list[int] = []
        self._open_people: set[int] = set()
        self._frame = -1

    # ------------------------------------------------------------------ streaming
    def update(self, frame_index: int, faces: Sequence[Any], frame: np.ndarray | None = None) -> list[int]:
        """Add the faces of the next processed frame; returns each face's track id (ask :meth:`person_of` later).

        ``frame``: uint8 ``(H, W, 3)``, for the look of the faces (without it only place and size link tracks).
        """
        track_ids = self.tracker.update(frame_index, faces)
        self._frame = int(frame_index)
        for face, track_id in zip(faces, track_ids):
            box = np.asarray(face.box, np.float64)
            track = self._tracks.get(track_id)
            if track is None:
                track = self._tracks[track_id] = _Track(track_id, self._frame, box)
            track.count += 1
            descriptor = None
            if frame is not None and (track.count - 1) % DESCRIPTOR_EVERY == 0:
                descriptor = face_descriptor(frame, box)
                track.descriptors.append(descriptor)
            if track.person is None and track.count >= self.min_frames:
                self._confirm(track)
                descriptor = None  # the person took all of the track's descriptors
            if track.person is not None:
                self._observe(self._people[track.person], box, descriptor)
        for closed in self.tracker.pop_closed_tracks():  # an ended track that never reached min_frames: dropped
            if self._tracks[closed.track_id].person is None:
                del self._tracks[closed.track_id]
            else:
                self._closed_at[closed.track_id] = self._frame
        # ended tracks are forgotten long after anyone can still ask for them (a batch waits ~24 frames): bounded memory
        for track_id in [t for t, frame in self._closed_at.items() if self._frame - frame > FORGET_FRAMES]:
            del self._closed_at[track_id], self._tracks[track_id]
        self._end_people(self._frame)
        return track_ids

    def decided(self, track_id: int) -> bool:
        """Whether the track is confirmed (a person id) or dropped."""
        track = self._tracks.get(track_id)
        return track is None or track.person is not None

    def person_of(self, track_id: int) -> int | None:
        """The person id of a decided track; None when it was dropped (too short)."""
        track = self._tracks.get(track_id)
        return None if track is None else track.person

    def finish(self) -> list[int]:
        """End of the clip: every track is decided (short ones dropped); returns the people not yet ended."""
        self.tracker.finish()
        for track_id in [t for t, track in self._tracks.items() if track.person is None]:
            del self._tracks[track_id]
        remaining = sorted(self._open_people)
        self._open_people.clear()
        return remaining

    def pop_ended_people(self) -> list[int]:
        """People who can no longer continue (unseen longer than ``max_memory_seconds``), once each."""
        ended, self._ended_people = self._ended_people, []
        return ended

    @property
    def people(self) -> int:
        return len(self._people)

    # ------------------------------------------------------------------ linking
    def _confirm(self, track: _Track) -> None:
        person = self._link(track) if self.link else None
        if person is None:
            person = _Person(len(self._people), track.track_id, track.first_frame, track.first_box, deque(maxlen=5),
                             deque(maxlen=DESCRIPTORS_KEPT))
            self._people.append(person)
            self._open_people.add(person.person_id)
        elif person.track_id in self.tracker.active_track_ids():
            self.tracker.close_track(person.track_id)  # the person's face is in this track now
        person.track_id = track.track_id
        person.descriptors.extend(track.descriptors)
        track.person = person.person_id

    def _observe(self, person: _Person, box: np.ndarray, descriptor: np.ndarray | None) -> None:
        person.last_frame, person.last_box = self._frame, box
        person.recent.append((self._frame, _centre(box)))
        person.faces += 1
        if descriptor is not None:
            person.descriptors.append(descriptor)

    def _link(self, track: _Track) -> _Person | None:
        """The ended person this confirmed track continues, or None."""
        best, best_distance = None, np.inf
        look = _unit(track.descriptors) if track.descriptors else None
        for person in self._people:
            gap = track.first_frame - person.last_frame
            if gap <= 0 or gap > self.max_memory or person.person_id not in self._open_people:
                continue  # on screen together: another person; or forgotten
            size_old, size_new = _size(person.last_box), _size(track.first_box)
            if max(size_old, size_new) / min(size_old, size_new) > self.max_size_ratio:
                continue
            centre_new = _centre(track.first_box)
            left = _centre(person.last_box)
            similar = look is not None and bool(person.descriptors) and \
                float(look @ _unit(person.descriptors)) >= self.min_similarity
            if gap <= self.max_gap:
                (first_frame, first_centre), (last_frame, last_centre) = person.recent[0], person.recent[-1]
                velocity = (last_centre - first_centre) / max(last_frame - first_frame, 1)
                velocity = np.clip(velocity, -size_old / 4, size_old / 4)  # at most a quarter face a frame
                distance = _distance_to_segment(centre_new, left, left + velocity * gap) / size_old
                if distance > self.near_gap and not similar:
                    continue
            else:
                distance = float(np.linalg.norm(centre_new - left)) / size_old
                if distance > self.near_memory or not similar:
                    continue
            if distance < best_distance:
                best, best_distance = person, distance
        return best

    def _end_people(self, frame_index: int) -> None:
        for person_id in list(self._open_people):
            person = self._people[person_id]
            if frame_index - person.last_frame > self.max_memory and \
                    person.track_id not in self.tracker.active_track_ids():
                self._open_people.discard(person_id)
                self._ended_people.append(person_id)


def link_people(per_frame_faces: Sequence[Sequence[Any]], frame_indices: Sequence[int], frames=None, fps: float = 25.0,
                **options) -> list[list[int | None]]:
    """Whole-clip helper: each face's person id (None: dropped as too short). ``frames[i]`` is frame i's image, or None."""
    people = PersonTracker(fps, **options)
    track_ids = [people.update(int(index), faces, None if frames is None else frames[position])
                 for position, (index, faces) in enumerate(zip(frame_indices, per_frame_faces))]
    people.finish()
    return [[people.person_of(track_id) for track_id in ids] for ids in track_ids]
