"""``mediapipe-zoom``: MediaPipe's face landmarker, plus a search for the faces it misses.

Why: MediaPipe's landmarker finds faces with the short-range detector of its bundle, whose
128x128 input sees a face only when the face is at least ~0.17 of the image's long side
(measured: ~110 px in a 640x360 frame, ~220 px in 1280x720). In VIDEO mode it keeps a face it
found by tracking it from frame to frame, and loses it for good when tracking breaks on a face
the detector cannot see again (small, turned to profile, fast).

What runs on each call (frames in clip order, as MediaPipe's VIDEO mode):

1. **Whole frame**: the VIDEO-mode landmarker of :mod:`video_fer.faces.mediapipe_backend`,
   unchanged. Every face it returns is kept. On ordinary clips (faces large enough) only this
   and the low-rate search (3) run.
2. **Followers**: a face the whole-frame landmarker does not return is followed by a VIDEO-mode
   landmarker of its own (one face), fed a square crop of ``crop_scale`` x the face around the
   face's constant-velocity prediction, resized to 192-384 px; in the crop the face is large, so
   MediaPipe's tracking and its detector hold. A follower starts when the whole-frame
   landmarker loses a face it returned on the previous call (*handover*), or when the search
   finds a face that nobody covers; it stops when the whole-frame landmarker returns its face
   again, or after ``max_lost_calls`` calls without it. A follower that lost its face searches
   its crop with the faces already found in the frame painted out, so it cannot take over
   another person's face.
3. **Search**: the bundle's face detector on square tiles small enough to see ``min_face`` px
   faces (:class:`TilePlan`), ``tiles_per_call`` tiles per call in rotation (0.5: one tile every
   other call, ~+9 % of MediaPipe alone's CPU); every tile on the first call of a clip and after
   a cut (a large change of a thumbnail of the frame). Called on keyframes only
   (:meth:`ZoomFaceFinder.keyframe_every`), it scans as many tiles per frame as on every frame.

Every face carries ``follow_id``: the finder's number for it, the same on consecutive calls
as long as the finder follows the same face (across handovers). Keyframe interpolation pairs
faces by it (:mod:`video_fer.faces.keyframes`).

For frames seen out of order (between keyframes) :meth:`ZoomFaceFinder.probe` (one whole-frame
detector call) and :meth:`ZoomFaceFinder.landmark_at` (an IMAGE-mode landmarker on crops around
given boxes) answer without touching the VIDEO-mode state.

Crops are cut and resized with OpenCV, which mediapipe installs.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from video_fer.faces.boxes import box_iou
from video_fer.faces.ibug68 import mediapipe_to_ibug68
from video_fer.faces.mediapipe_backend import MediaPipeLandmarker
from video_fer.faces.types import Face

DETECTABLE_FRACTION = 0.16  # the bundle's detector finds faces (mesh box) >= ~0.17 of its input side (measured)
TILE_OVERLAP = 0.45  # share of a tile's side its neighbours overlap: a face up to 0.45 x the side lies whole in one
SAME_FACE_IOU = 0.5  # two results this much overlapped are one face
COVER_IOU = 0.2  # a detection overlapping a known face this much (or centred in it) is that face
DETECTION_TO_MESH = 1.25  # the detector's box spans brows to mouth; the mesh box is ~1.25x taller
CUT_DIFFERENCE = 40.0  # mean absolute change of the frame thumbnail (grey levels) that counts as a cut
THUMBNAIL_ROWS = 24
MIN_CROP, MAX_CROP = 192, 384  # crop sizes given to a follower (px)
REZOOM_RATIO = 1.3  # a follower's crop side changes only when its face's size changed this much
MAX_SIZE_CHANGE = 1.5  # a follower's face changing size more than this from one call to the next is not its face
TILE_CELLS = 8  # a tile's thumbnail is TILE_CELLS x TILE_CELLS cell means
# default tile_unchanged: an empty tile is searched again once a cell mean changed by this many grey levels (the
# detector on the same pixels gives the same answer, so the search costs little on still backgrounds)
TILE_UNCHANGED = 8.0


def _centre(box: np.ndarray) -> np.ndarray:
    return (np.asarray(box[:2], np.float64) + np.asarray(box[2:], np.float64)) / 2


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def covered(box: np.ndarray, known: Sequence[np.ndarray], min_iou: float = COVER_IOU) -> bool:
    """Whether ``box`` belongs to one of the ``known`` boxes: overlaps it (IoU > ``min_iou``) or has its centre inside it."""
    if not len(known):
        return False
    known = np.asarray(known, np.float32).reshape(-1, 4)
    x, y = _centre(box)
    inside = (known[:, 0] <= x) & (x <= known[:, 2]) & (known[:, 1] <= y) & (y <= known[:, 3])
    return bool(inside.any() or box_iou(np.asarray(box, np.float32)[None], known).max() > min_iou)


class TilePlan:
    """Square tiles ``(x0, y0, side)`` covering a frame at the sizes that let the detector see faces from ``min_face`` px.

    Level 0 tiles have side ``min_face / DETECTABLE_FRACTION``; each next level doubles it while it is
    under 0.75 of the frame's long side (the whole-frame landmarker's own detector covers the rest).
    :meth:`next_tiles` hands them out in rotation, the levels taking turns, so larger tiles (larger
    faces, fewer tiles) come round sooner.
    """

    def __init__(self, height: int, width: int, min_face: float):
        self.levels: list[list[tuple[int, int, int]]] = []
        side = int(np.ceil(min_face / DETECTABLE_FRACTION))
        while side < 0.75 * max(height, width):
            self.levels.append([(x0, y0, side) for y0 in self._starts(height, side) for x0 in self._starts(width, side)])
            side *= 2
        self._cursors = [0] * len(self.levels)
        self._turn = 0

    @property
    def tiles(self) -> list[tuple[int, int, int]]:
        return [tile for level in self.levels for tile in level]

    @staticmethod
    def _starts(length: int, side: int) -> list[int]:
        if side >= length:
            return [0]
        count = int(np.ceil((length - side) / (side * (1 - TILE_OVERLAP)))) + 1
        return np.linspace(0, length - side, count).round().astype(int).tolist()

    def next_tiles(self, count: int) -> list[tuple[int, int, int]]:
        chosen = []
        for _ in range(count if self.levels else 0):
            level = self._turn % len(self.levels)
            self._turn += 1
            chosen.append(self.levels[level][self._cursors[level] % len(self.levels[level])])
            self._cursors[level] += 1
        return chosen


def _tile_thumbnail(image: np.ndarray) -> np.ndarray:
    """float32 ``(TILE_CELLS, TILE_CELLS, 3)`` mean colours of a tile's cells (a 40 px face fills a cell or two)."""
    import cv2

    return cv2.resize(image, (TILE_CELLS, TILE_CELLS), interpolation=cv2.INTER_AREA).astype(np.float32)


def crop_square(frame: np.ndarray, centre, side: float, size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Square of ``side`` frame pixels around ``centre`` resized to ``size`` px; zeros outside the frame.

    Returns:
        ``(crop uint8 (size, size, 3), scale, offset (2,))`` with ``crop pixel = frame pixel * scale + offset``
        (pixel centres).
    """
    import cv2

    window = max(int(round(side)), 8)
    x0, y0 = int(round(centre[0] - window / 2)), int(round(centre[1] - window / 2))
    height, width = frame.shape[:2]
    a0, b0, a1, b1 = max(x0, 0), max(y0, 0), min(x0 + window, width), min(y0 + window, height)
    piece = np.zeros((window, window, 3), np.uint8)
    if a1 > a0 and b1 > b0:
        piece[b0 - y0:b1 - y0, a0 - x0:a1 - x0] = frame[b0:b1, a0:a1]
    crop = cv2.resize(piece, (size, size), interpolation=cv2.INTER_AREA if window > size else cv2.INTER_LINEAR)
    scale = size / window
    # cv2.resize maps output pixel j to input (j + 0.5) / scale - 0.5
    offset = np.array([(0.5 - x0) * scale - 0.5, (0.5 - y0) * scale - 0.5])
    return crop, scale, offset


def _crop_size(side: float) -> int:
    return int(np.clip(round(side / 32) * 32, MIN_CROP, MAX_CROP))


@dataclass
class _Follower:
    """One face followed on crops: its own VIDEO-mode landmarker and its latest observations."""

    follow_id: int
    landmarker: object
    boxes: list = field(default_factory=list)  # [(call number, box (4,) float64)], the last two observations
    lost: int = 0  # calls in a row without its face
    score: float = 0.5
    side: float = 0.0  # crop side in frame px, kept steady: MediaPipe tracks in the crop's coordinates
    tracking: bool = False  # its landmarker returned a face on its last call (it tracks it; else it detects)

    def predicted(self, call: int) -> np.ndarray:
        """Box ``(4,)`` at call number ``call``: the last box moved on at the centre's constant velocity (from the
        last two observations, at most a face a call, for at most 10 calls)."""
        last_call, last = self.boxes[-1]
        if len(self.boxes) < 2:
            return last
        before_call, before = self.boxes[-2]
        velocity = (_centre(last) - _centre(before)) / max(last_call - before_call, 1)
        size = _side(last)
        velocity = np.clip(velocity, -size, size)  # a jump is not a velocity
        shift = velocity * min(call - last_call, 10)
        return last + np.r_[shift, shift]

    def search_region(self, call: int) -> tuple[np.ndarray, float]:
        """Centre ``(2,)`` and side of the crop to look in: the crop moves with the predicted face (so the face stays
        where MediaPipe saw it in the crop); once lost, it grows 10 % a call."""
        return _centre(self.predicted(call)), self.side * (1.0 + 0.1 * min(self.lost, 10))


class ZoomFaceFinder:
    """MediaPipe's landmarker on whole frames, followers on crops for the faces it misses, and a tile search.

    A :class:`~video_fer.faces.types.Landmarker` (clips only: frames in increasing order). See the module doc.

    Args:
        model_path: the ``face_landmarker.task`` bundle (as :class:`~video_fer.faces.mediapipe_backend.MediaPipeLandmarker`).
        num_faces: most faces returned per frame (whole-frame faces and followers together).
        min_face: smallest face (px, mesh box height) the tile search must find.
        tiles_per_call: tiles searched per processed frame after the first (0.5 = one tile every other frame; 0 = no
            search except on the first call and after cuts); a call on keyframes ``every`` frames apart
            (:meth:`keyframe_every`) searches ``every`` times as many. Tiles with no face at their last scan are skipped
            while their content stays the same (``tile_unchanged``).
        crop_scale: a follower's crop side over its face's size.
        max_lost_calls: a follower that misses its face this many calls in a row stops.
        max_jump: a follower's new face must lie within this many face sizes (centre to centre) of the segment from
            its last face to its prediction, unless it was lost (another face in the crop is not its face).
        search_confidence: detector score for a tile detection to start a follower (also the probe's). [ours] 0.7:
            on the generated clips small, turned and group faces scored 0.85-0.96 in tiles, cartoon scenery up to 0.69.
        tile_unchanged: [ours] a tile with no face at its last scan is skipped while none of its 8x8 cell means
            changed by this many grey levels (8: a face walking in changes its cells by tens, video noise by 1-2);
            0 searches every tile when it comes round.
        min_detection_confidence: MediaPipe's, for the landmarkers' own detectors (whole frame and crops).
        min_presence_confidence, min_tracking_confidence, blendshapes, box_padding, detector_scores, download:
            as :class:`~video_fer.faces.mediapipe_backend.MediaPipeLandmarker` (the whole-frame landmarker).

    Counters since the start of the clip: ``calls`` (``{"whole": n, "follower": n, "detector": n, "skipped": n}``,
    skipped: unchanged empty tiles not searched).
    """

    name = "mediapipe-zoom"

    def __init__(self, model_path: str | Path | None = None, num_faces: int = 8, min_face: float = 40.0,
                 tiles_per_call: float = 0.5, crop_scale: float = 2.0, max_lost_calls: int = 15,
                 max_jump: float = 1.0, search_confidence: float = 0.7, tile_unchanged: float = TILE_UNCHANGED,
                 min_detection_confidence: float = 0.5,
                 min_presence_confidence: float = 0.5, min_tracking_confidence: float = 0.5, blendshapes: bool = True,
                 box_padding: float = 0.0, detector_scores: bool = True, download: bool = True):
        from mediapipe.tasks.python import BaseOptions, vision

        if (min_face <= 0 or tiles_per_call < 0 or crop_scale < 1 or max_lost_calls < 0 or num_faces < 1
                or tile_unchanged < 0):
            raise ValueError(f"ZoomFaceFinder: need min_face > 0, tiles_per_call >= 0, crop_scale >= 1, "
                             f"max_lost_calls >= 0, num_faces >= 1, tile_unchanged >= 0; got min_face={min_face}, "
                             f"tiles_per_call={tiles_per_call}, crop_scale={crop_scale}, "
                             f"max_lost_calls={max_lost_calls}, num_faces={num_faces}, tile_unchanged={tile_unchanged}")
        self.whole = MediaPipeLandmarker(
            model_path, mode="video", num_faces=num_faces, min_detection_confidence=min_detection_confidence,
            min_presence_confidence=min_presence_confidence, min_tracking_confidence=min_tracking_confidence,
            blendshapes=blendshapes, box_padding=box_padding, detector_scores=detector_scores, download=download)
        self.model_path = self.whole.model_path
        self.num_faces, self.min_face = int(num_faces), float(min_face)
        self.tiles_per_call, self.crop_scale = float(tiles_per_call), float(crop_scale)
        self.max_lost_calls, self.max_jump = int(max_lost_calls), float(max_jump)
        self.min_detection_confidence, self.search_confidence = float(min_detection_confidence), float(search_confidence)
        self.tile_unchanged = float(tile_unchanged)
        self.min_presence_confidence = float(min_presence_confidence)
        self.min_tracking_confidence = float(min_tracking_confidence)
        self.blendshapes, self.box_padding = bool(blendshapes), float(box_padding)
        self._tasks: list = []  # our own MediaPipe tasks (the whole-frame landmarker closes its own)
        self._finalizer = weakref.finalize(self, _close_tasks, self._tasks)
        self._detector = vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_buffer=self._read_detector()), running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=self.search_confidence))
        self._tasks.append(self._detector)
        self._still = None  # IMAGE-mode landmarker of landmark_at, made on first need
        self._idle: list = []  # follower landmarkers not in use (reset before reuse)
        self._last_ms: dict[int, int] = {}  # latest timestamp given to each follower landmarker
        self._followers: list[_Follower] = []
        self._reset_clip_state()

    def _read_detector(self) -> bytes:
        import zipfile

        with zipfile.ZipFile(self.model_path) as bundle:  # MediaPipeLandmarker checked it is a bundle with a detector
            return bundle.read("face_detector.tflite")

    # ------------------------------------------------------------------ lifetime
    def _reset_clip_state(self) -> None:
        for follower in self._followers:
            self._release(follower)
        self._followers = []
        self._plan: TilePlan | None = None
        self._call = 0
        self._next_id = 0
        self._frames_per_call = 1
        self._empty_tiles: dict[tuple[int, int, int], np.ndarray] = {}  # tile -> its thumbnail when it had no face
        self._thumbnail: np.ndarray | None = None
        self._previous: dict[int, list] = {}  # follow id -> [(call, box)] of faces the whole-frame landmarker returned
        self.calls = {"whole": 0, "follower": 0, "detector": 0, "skipped": 0}

    def start_clip(self, source: str | None = None, fps: float | None = None) -> None:
        """New clip: forget every face and restart the landmarkers' clocks."""
        self.whole.start_clip(source, fps)
        self._reset_clip_state()
        # follower landmarkers keep their timestamps: recreate them rather than reset their clocks
        for landmarker in self._idle:
            landmarker.close()
            self._tasks.remove(landmarker)
        self._idle = []
        self._last_ms = {}

    def keyframe_every(self, every: int) -> None:
        """The calls of this clip (until the next :meth:`start_clip`) come one every ``every`` processed frames, as
        :class:`~video_fer.faces.keyframes.KeyframeLandmarks` makes them: the search then scans ``every`` x
        ``tiles_per_call`` tiles a call, so it sweeps the frame in as many frames as on every frame, and a face that
        walks in is found on the first keyframe at or after the frame where every-frame landmarking finds it."""
        if int(every) != every or every < 1:
            raise ValueError(f"keyframe_every({every!r}): expected an integer >= 1")
        self._frames_per_call = int(every)

    def close(self) -> None:
        """Close every MediaPipe task (safe to call twice)."""
        self._followers, self._idle = [], []
        _close_tasks(self._tasks)
        self._still = None
        self.whole.close()

    def __enter__(self) -> "ZoomFaceFinder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _new_landmarker(self):
        from mediapipe.tasks.python import BaseOptions, vision

        if self._idle:
            return self._idle.pop()
        landmarker = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)), running_mode=vision.RunningMode.VIDEO,
            num_faces=1, min_face_detection_confidence=self.min_detection_confidence,
            min_face_presence_confidence=self.min_presence_confidence,
            min_tracking_confidence=self.min_tracking_confidence, output_face_blendshapes=self.blendshapes))
        self._tasks.append(landmarker)
        return landmarker

    def _release(self, follower: _Follower) -> None:
        """A stopped follower's landmarker waits for reuse; if it still tracks a face, it sees one blank frame first
        (it forgets the face)."""
        import mediapipe as mp

        if follower in self._followers:
            self._followers.remove(follower)
        if follower.tracking:
            blank = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((MIN_CROP, MIN_CROP, 3), np.uint8))
            follower.landmarker.detect_for_video(blank, self._stamp(follower.landmarker, 0))
        self._idle.append(follower.landmarker)

    def _stamp(self, landmarker, wanted_ms: int) -> int:
        """Timestamp of ``landmarker``'s next call: ``wanted_ms``, or 1 ms after its previous one if that is later."""
        stamp = max(int(wanted_ms), self._last_ms.get(id(landmarker), -1) + 1)
        self._last_ms[id(landmarker)] = stamp
        return stamp

    def prefetch(self, frames, frame_indices: Sequence[int], timestamps: Sequence[float]) -> None:
        """Start the whole-frame landmarker on the frames of a coming call in a worker thread
        (:meth:`MediaPipeLandmarker.prefetch <video_fer.faces.mediapipe_backend.MediaPipeLandmarker.prefetch>`);
        the followers and the search run at the call, as they depend on what it finds."""
        self.whole.prefetch(frames, frame_indices, timestamps)

    # ------------------------------------------------------------------ one call
    def __call__(self, frames, frame_indices: Sequence[int], timestamps: Sequence[float]) -> list[list[Face]]:
        """``frames`` uint8 ``(T, H, W, 3)`` RGB (numpy or torch), in clip order -> faces per frame."""
        frames = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
        whole = self.whole(frames, frame_indices, timestamps)
        self.calls["whole"] += len(frames)
        return [self._frame(frame, faces, float(t)) for frame, faces, t in zip(frames, whole, timestamps)]

    def _frame(self, frame: np.ndarray, whole: list[Face], timestamp: float) -> list[Face]:
        call = self._call
        self._call += 1
        if self._plan is None:
            self._plan = TilePlan(frame.shape[0], frame.shape[1], self.min_face)
        cut = self._is_cut(frame)
        if cut:
            for follower in list(self._followers):  # their faces were in the other shot
                self._release(follower)
            self._previous = {}
        found: list[Face] = self._whole_frame_ids(whole, call)
        # followers whose faces were not lost first: a lost one then searches with the found faces painted out
        for follower in sorted(self._followers, key=lambda f: f.lost):
            face = self._follow(follower, frame, call, timestamp, found)
            if face is not None:
                found.append(face)
        self._hand_over(frame, call, timestamp, found)
        self._search(frame, call, timestamp, found, everything=call == 0 or cut)
        self._previous = {face.follow_id: self._previous.get(face.follow_id, [])[-1:] + [(call, face.box)]
                          for face in found}
        return found[: self.num_faces]

    def _is_cut(self, frame: np.ndarray) -> bool:
        step = max(1, frame.shape[0] // THUMBNAIL_ROWS)
        thumbnail = frame[::step, ::step].mean(-1, dtype=np.float32)
        previous, self._thumbnail = self._thumbnail, thumbnail
        return previous is not None and float(np.abs(thumbnail - previous).mean()) > CUT_DIFFERENCE

    def _whole_frame_ids(self, whole: list[Face], call: int) -> list[Face]:
        """Give the whole-frame faces their follow ids: the id of the same face on the previous call (IoU >= 0.3,
        best pairs first), else a follower's whose prediction it covers (that follower stops: the whole-frame
        landmarker has its face again), else a new id."""
        previous_ids = list(self._previous)
        if whole and previous_ids:
            previous_boxes = np.stack([np.asarray(self._previous[i][-1][1], np.float32) for i in previous_ids])
            overlap = box_iou(np.stack([face.box for face in whole]), previous_boxes)
            taken: set[int] = set()
            for flat in np.argsort(-overlap, axis=None):
                row, column = np.unravel_index(flat, overlap.shape)
                if overlap[row, column] < 0.3:
                    break
                if whole[row].follow_id is None and previous_ids[column] not in taken:
                    whole[row].follow_id = previous_ids[column]
                    taken.add(previous_ids[column])
        for face in whole:
            if face.follow_id is None:
                owner = next((f for f in self._followers if covered(face.box, [f.predicted(call)], min_iou=0.3)), None)
                face.follow_id = self._new_id() if owner is None else owner.follow_id
            for follower in list(self._followers):  # a follower on a face the whole-frame landmarker returns stops
                if follower.follow_id == face.follow_id or covered(follower.predicted(call), [face.box], SAME_FACE_IOU):
                    self._release(follower)
        return list(whole)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _hand_over(self, frame: np.ndarray, call: int, timestamp: float, found: list[Face]) -> None:
        """Faces the whole-frame landmarker returned on the previous call and lost now get a follower."""
        present = {face.follow_id for face in found} | {f.follow_id for f in self._followers}
        for follow_id, observations in self._previous.items():
            if follow_id in present or len(found) >= self.num_faces:
                continue
            follower = _Follower(follow_id, self._new_landmarker(), [(c, np.asarray(b, np.float64))
                                                                     for c, b in observations])
            self._followers.append(follower)
            face = self._follow(follower, frame, call, timestamp, found, first=True)
            if face is None:
                self._release(follower)
            else:
                found.append(face)

    def _search(self, frame: np.ndarray, call: int, timestamp: float, found: list[Face], everything: bool) -> None:
        """Detector on this call's tiles; a face nobody covers gets a follower."""
        # The tiles due are those of the processed frames since the previous call, a fixed rotation keyed on the
        # frame's position: on keyframes the search scans, a few frames later, the tiles every frame would have.
        rate = self.tiles_per_call * self._frames_per_call
        due = int(np.floor(rate * call) - np.floor(rate * (call - 1))) if call else 0
        tiles = self._plan.next_tiles(due)
        if everything:  # the rotation moves on all the same, so that it stays in step with every-frame landmarking
            tiles, self._empty_tiles = self._plan.tiles, {}
        detections = []
        for tile in tiles:
            x0, y0, side = tile
            image = np.ascontiguousarray(frame[y0:y0 + side, x0:x0 + side])
            thumbnail = _tile_thumbnail(image)
            before = self._empty_tiles.pop(tile, None)
            if before is not None and float(np.abs(thumbnail - before).max()) < self.tile_unchanged:
                self._empty_tiles[tile] = before  # no face at its last scan and nothing moved in since: skip it
                self.calls["skipped"] += 1
                continue
            found_here = self._detect(image)
            if not found_here:
                self._empty_tiles[tile] = thumbnail
            for box, score in found_here:
                detections.append((box + np.array([x0, y0, x0, y0]), score))
        detections.sort(key=lambda item: -item[1])
        for box, score in detections:
            if covered(box, [face.box for face in found]) or len(found) >= self.num_faces:
                continue
            centre, size = _centre(box), DETECTION_TO_MESH * _side(box)
            start = np.r_[centre - size / 2, centre + size / 2]
            # a follower that lost its face and searches around here takes it (one id, no duplicate follower)
            follower = owner = self._lost_owner(centre, call)
            if follower is None:
                follower = _Follower(self._new_id(), self._new_landmarker(), score=score)
                self._followers.append(follower)
            lost, follower.lost, follower.boxes, follower.side = follower.lost, 0, [(call - 1, start)], 0.0
            face = self._follow(follower, frame, call, timestamp, found, first=True)
            if face is not None:
                follower.boxes = follower.boxes[-1:]  # the detector's box gives no velocity
                found.append(face)
            elif owner is None:  # a new follower whose detection the landmarker did not confirm
                self._release(follower)
            else:
                owner.lost = lost + 1

    def _lost_owner(self, centre: np.ndarray, call: int) -> _Follower | None:
        """The lost follower whose search region holds ``centre`` (the nearest), if any."""
        best, best_distance = None, np.inf
        for follower in self._followers:
            if not follower.lost:
                continue
            middle, side = follower.search_region(call)
            distance = float(np.abs(centre - middle).max())
            if distance <= side / 2 and distance < best_distance:
                best, best_distance = follower, distance
        return best

    def _detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """The bundle's detector on one image: ``[(box (4,) float64 image px, score)]``."""
        import mediapipe as mp

        result = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        self.calls["detector"] += 1
        out = []
        for detection in result.detections:
            b = detection.bounding_box
            out.append((np.array([b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height], np.float64),
                        float(detection.categories[0].score)))
        return out

    def _follow(self, follower: _Follower, frame: np.ndarray, call: int, timestamp: float, found: list[Face],
                first: bool = False) -> Face | None:
        """Landmark ``follower``'s face on its crop; updates the follower (stops it when lost too long)."""
        predicted = follower.predicted(call)
        if not follower.side:
            follower.side = self.crop_scale * _side(predicted)
        centre, side = follower.search_region(call)
        others = [face.box for face in found]
        face = None
        # MediaPipe tracks from its previous landmarks and detects only on its next call when that fails: a lost
        # track is retried at once on a wider crop (a detection around the prediction)
        for attempt in range(2 if follower.tracking else 1):
            used = side * (1.5 if attempt else 1.0)
            face = self._landmark_crop(follower, frame, centre, used, timestamp, others if (follower.lost or first) else [])
            if face is not None and not first and not follower.lost and (
                    self._jump(follower, face, predicted) > self.max_jump
                    or abs(np.log(_side(face.box) / _side(follower.boxes[-1][1]))) > np.log(MAX_SIZE_CHANGE)):
                face = None  # far from where the face was or was going, or another size: not its face (or a bad mesh)
            if face is not None and covered(face.box, others, min_iou=SAME_FACE_IOU):
                face = None  # a face someone else has
            if face is not None:
                break
        if face is None:
            follower.lost += 1
            if follower.lost > self.max_lost_calls:
                self._release(follower)
            return None
        follower.lost = 0
        follower.boxes = follower.boxes[-1:] + [(call, face.box.astype(np.float64))]
        # the crop keeps its side (MediaPipe tracks in the crop's coordinates) until the face's size changed a lot
        wanted = self.crop_scale * _side(face.box)
        if abs(np.log(wanted / follower.side)) > np.log(REZOOM_RATIO):
            follower.side = wanted
        face.follow_id, face.score = follower.follow_id, follower.score
        return face

    @staticmethod
    def _jump(follower: _Follower, face: Face, predicted: np.ndarray) -> float:
        """Distance, in face sizes, from the new face's centre to the segment from the last face to the prediction."""
        last = _centre(follower.boxes[-1][1])
        path = _centre(predicted) - last
        along = float(np.clip((_centre(face.box) - last) @ path / max(float(path @ path), 1e-9), 0.0, 1.0))
        return float(np.linalg.norm(_centre(face.box) - (last + along * path))) / max(_side(face.box), 1.0)

    def _landmark_crop(self, follower: _Follower, frame: np.ndarray, centre, side: float, timestamp: float,
                       painted_out: list) -> Face | None:
        """One VIDEO-mode landmarker call on the crop of ``side`` px around ``centre`` -> a Face in frame pixels."""
        import mediapipe as mp

        size = _crop_size(side)
        crop, scale, offset = crop_square(frame, centre, side, size)
        for box in painted_out:  # faces found already: not this follower's to take
            x0, y0 = np.floor(np.asarray(box[:2]) * scale + offset).astype(int).clip(0, size)
            x1, y1 = np.ceil(np.asarray(box[2:]) * scale + offset).astype(int).clip(0, size)
            crop[y0:y1, x0:x1] = 127
        result = follower.landmarker.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop),
                                                      self._stamp(follower.landmarker, round(timestamp * 1000)))
        self.calls["follower"] += 1
        follower.tracking = bool(result.face_landmarks)
        faces = self._faces_from_result(result, size, scale, offset)
        return faces[0] if faces else None

    def _faces_from_result(self, result, size: int, scale: float, offset: np.ndarray) -> list[Face]:
        """MediaPipe landmarker output on a crop -> Faces in frame pixels (as the MediaPipe backend's)."""
        faces = []
        for number, points in enumerate(result.face_landmarks):
            mesh = np.array([(p.x, p.y, p.z) for p in points], np.float64) * size  # z shares x's scale
            mesh[:, :2] -= 0.5  # MediaPipe's [0, 1] spans pixel edges; ours starts at the first pixel centre
            mesh[:, :2] = (mesh[:, :2] - offset) / scale
            mesh[:, 2] /= scale
            mesh = mesh.astype(np.float32)
            lower, upper = mesh[:, :2].min(0), mesh[:, :2].max(0)
            margin = (upper - lower) * self.box_padding
            blendshapes = None
            if self.blendshapes and result.face_blendshapes:
                blendshapes = np.array([c.score for c in result.face_blendshapes[number]], np.float32)
            faces.append(Face(box=np.r_[lower - margin, upper + margin], score=self.min_presence_confidence,
                              landmarks=mediapipe_to_ibug68(mesh[None, :, :2])[0], native_landmarks=mesh,
                              blendshapes=blendshapes))
        return faces

    # ------------------------------------------------------------------ frames out of order (keyframe gaps)
    def probe(self, frame: np.ndarray) -> list[np.ndarray]:
        """Face boxes ``(4,)`` (mesh-box sized) from one detector call on the whole frame; no state changes."""
        boxes = []
        for box, _ in self._detect(np.ascontiguousarray(frame)):
            centre, size = _centre(box), DETECTION_TO_MESH * _side(box)
            boxes.append(np.r_[centre - size / 2, centre + size / 2])
        return boxes

    def landmark_at(self, frame: np.ndarray, boxes: Sequence[np.ndarray]) -> list[Face]:
        """Faces near ``boxes`` (frame px) of a frame seen out of clip order: an IMAGE-mode landmarker (it detects
        inside the crop) on a crop of ``1.25 x crop_scale`` x each box around it; one face per box, duplicates
        removed; no state of the clip changes."""
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        if self._still is None:
            self._still = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(self.model_path)), running_mode=vision.RunningMode.IMAGE,
                num_faces=1, min_face_detection_confidence=self.min_detection_confidence,
                min_face_presence_confidence=self.min_presence_confidence, output_face_blendshapes=self.blendshapes))
            self._tasks.append(self._still)
        faces: list[Face] = []
        for box in boxes:
            side = DETECTION_TO_MESH * self.crop_scale * _side(np.asarray(box))
            size = _crop_size(side)
            crop, scale, offset = crop_square(frame, _centre(np.asarray(box)), side, size)
            result = self._still.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
            self.calls["follower"] += 1
            for face in self._faces_from_result(result, size, scale, offset):
                if not covered(face.box, [f.box for f in faces], min_iou=SAME_FACE_IOU):
                    faces.append(face)
        return faces


def _close_tasks(tasks: list) -> None:
    while tasks:
        tasks.pop().close()
