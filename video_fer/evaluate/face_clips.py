"""Generated test clips for face front ends, with per-frame ground truth, built from the shared assets.

Nothing is stored: each clip is made at call time by pasting a *face patch* (a square around
the face of a shared video or image, with a feathered round edge) onto frames of the shared
``no_face.mp4`` (cartoon scenery, no human face) stretched to the canvas, at a position and
size that follow a path. For each frame the generator knows each person's id, box and visible
fraction.

Face boxes are MediaPipe mesh extents (forehead to chin, ear to ear) of the source, measured
once at full resolution and written below (``Source.box``); within a source clip the face
moves by at most ~10 % of its size, so a found face is the true one when its box overlaps the
truth by IoU >= 0.3 (:func:`video_fer.evaluate.face_finding.match_faces`).

Clips (:data:`CLIP_NAMES`), 30 fps:

- ``small_moving``: single_face.mp4 (frontal man), face 48-64 px tall in 1280x720, visiting five
  places of the frame (~1/4 of the face's height per frame), 240 frames.
- ``small_profile``: voxstyle_00002.mp4 (head yaw 22-62 degrees), face 56 px in 1280x720, moving;
  mirrored from frame 63 on, so the yaw spans about -62..+62 degrees; 126 frames.
- ``yaw45_still``: 45-m7-di-ph.jpg (posed 45 degree yaw), face 56 px in 1280x720, moving,
  mirrored for the second half; 60 frames.
- ``multi_face``: multi_face.jpg (five people, faces ~90-115 px in 1000x667), 30 equal frames.
- ``between_keyframes``: single_face.mp4's face (190 px) in 640x360, absent on every frame whose
  position is a multiple of ``key_every``: a face found only between keyframes; 90 frames.
- ``small_zoomout``: single_face.mp4 in 640x360, the face shrinking from 160 to 55 px over 45
  frames, then drifting at 55 px (too small for MediaPipe's detector on the whole frame); 150 frames.
- ``cutout``: single_face.mp4's face, 100 px in 1280x720, moving slowly; gone on frames 50-94
  (1.5 s), back on its path; 150 frames.
- ``cutout_long``: as ``cutout``, gone 3 s (frames 40-129), back where it left; 180 frames.
- ``crossing``: two people (single_face.mp4's man, id 0; liveportrait_d0.mp4's woman, id 1), faces
  90 px, walking towards each other on one line in 1280x720 and crossing, the woman in front; 120 frames.

:func:`no_face_clips` gives the shared no-face frames (all of ``no_face.mp4``, the cartoon parts of
``face_noface.mov`` and ``noface_face.mov``) and, as a stress set, the same frames mirrored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLIP_NAMES = ("small_moving", "small_profile", "yaw45_still", "multi_face", "between_keyframes", "small_zoomout",
              "cutout", "cutout_long", "crossing")
FPS = 30.0
HD = (1280, 720)  # width, height


@dataclass(frozen=True)
class Source:
    """A shared asset (path relative to the shared folder) and its face's box ``x0, y0, x1, y1`` (source px)."""

    path: str
    box: tuple[float, float, float, float]


SOURCES = {
    "man": Source("data/videos/single_face.mp4", (217, 100, 368, 291)),
    "woman": Source("data/pretrain/liveportrait_d0.mp4", (142, 160, 372, 436)),
    "profile": Source("data/pretrain/voxstyle_00002.mp4", (61, 12, 185, 156)),
    "yaw45": Source("data/images/45-m7-di-ph.jpg", (57, 197, 312, 474)),
}
# multi_face.jpg's five faces (MediaPipe mesh boxes, IMAGE mode with tiles, full resolution), left to right
MULTI_FACE_BOXES = np.array([[213, 73, 307, 175], [313, 248, 410, 357], [436, 221, 517, 309],
                             [531, 322, 631, 434], [682, 304, 792, 421]], np.float32)
# Frames of the shared clips without a human face (cartoon scenery; black frames 72 of face_noface.mov)
NO_FACE_FRAMES = {
    "no_face.mp4": lambda count: np.arange(count),
    "face_noface.mov": lambda count: np.arange(72, count),
    "noface_face.mov": lambda count: np.arange(0, 96),
}


@dataclass
class Clip:
    """A generated clip.

    Attributes:
        name: one of :data:`CLIP_NAMES`.
        frames: uint8 ``(T, H, W, 3)`` RGB; fps: frames per second.
        truth: per frame, ``{person id: (box float32 (4,), visible fraction in [0, 1])}``.
    """

    name: str
    frames: np.ndarray
    fps: float
    truth: list[dict[int, tuple[np.ndarray, float]]]

    @property
    def timestamps(self) -> np.ndarray:
        return np.arange(len(self.frames)) / self.fps

    def people(self) -> list[int]:
        return sorted({person for frame in self.truth for person in frame})


class SharedMedia:
    """Decoded shared media, each read once. ``shared``: the shared folder (``../shared`` of the project)."""

    def __init__(self, shared: str | Path):
        self.shared = Path(shared)
        self._decoded: dict[str, np.ndarray] = {}

    def frames(self, relative: str) -> np.ndarray:
        """uint8 ``(T, H, W, 3)`` of a shared video, or ``(1, H, W, 3)`` of an image."""
        if relative not in self._decoded:
            path = self.shared / relative
            if not path.exists():
                raise FileNotFoundError(f"{path}: shared asset missing; the generated face clips need the shared folder")
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                from PIL import Image

                with Image.open(path) as image:
                    self._decoded[relative] = np.asarray(image.convert("RGB"))[None]
            else:
                from video_fer.video import VideoReader

                with VideoReader(path) as reader:
                    self._decoded[relative] = reader.get(np.arange(len(reader))).numpy()
        return self._decoded[relative]

    def background(self, t: int, width: int, height: int) -> np.ndarray:
        import cv2

        scenery = self.frames("data/videos/no_face.mp4")
        return cv2.resize(scenery[t % len(scenery)], (width, height), interpolation=cv2.INTER_LINEAR)


def _feather_mask(side: int) -> np.ndarray:
    """float32 ``(side, side)`` round alpha: 1 inside 80 % of the radius, falling to 0 at the edge."""
    axis = (np.arange(side) + 0.5) / side * 2 - 1
    radius = np.sqrt(axis[None, :] ** 2 + axis[:, None] ** 2)
    return np.clip((1.0 - radius) / 0.2, 0.0, 1.0).astype(np.float32)


def paste_face(canvas: np.ndarray, source: np.ndarray, box, face_height: float, centre, mirror: bool = False,
               patch_scale: float = 2.2) -> np.ndarray:
    """Paste the face in ``box`` of ``source`` onto ``canvas`` (in place), ``face_height`` px tall, centred at ``centre``.

    The patch is the square of ``patch_scale`` x the box's height around the box centre, with a feathered round
    edge. Returns the pasted face's box, float32 ``(4,)`` canvas px.
    """
    import cv2

    x0, y0, x1, y1 = box
    scale = face_height / (y1 - y0)
    side = int(round(patch_scale * face_height)) | 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if mirror:
        source = source[:, ::-1]
        cx = source.shape[1] - 1 - cx
    matrix = np.array([[scale, 0, (side - 1) / 2 - scale * cx], [0, scale, (side - 1) / 2 - scale * cy]], np.float32)
    patch = cv2.warpAffine(np.ascontiguousarray(source), matrix, (side, side), flags=cv2.INTER_AREA,
                           borderMode=cv2.BORDER_REFLECT)
    alpha = _feather_mask(side)[..., None]
    left, top = int(round(centre[0] - (side - 1) / 2)), int(round(centre[1] - (side - 1) / 2))
    height, width = canvas.shape[:2]
    a0, b0, a1, b1 = max(left, 0), max(top, 0), min(left + side, width), min(top + side, height)
    if a1 > a0 and b1 > b0:
        region = canvas[b0:b1, a0:a1].astype(np.float32)
        piece = patch[b0 - top:b1 - top, a0 - left:a1 - left].astype(np.float32)
        mask = alpha[b0 - top:b1 - top, a0 - left:a1 - left]
        canvas[b0:b1, a0:a1] = np.round(mask * piece + (1 - mask) * region).astype(np.uint8)
    half_width, half_height = (x1 - x0) * scale / 2, face_height / 2
    return np.array([centre[0] - half_width, centre[1] - half_height, centre[0] + half_width,
                     centre[1] + half_height], np.float32)


def along_path(waypoints, count: int) -> np.ndarray:
    """``(count, 2)`` points at constant speed along the polyline ``waypoints``."""
    points = np.asarray(waypoints, np.float64)
    along = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    wanted = np.linspace(0, along[-1], count)
    return np.stack([np.interp(wanted, along, points[:, 0]), np.interp(wanted, along, points[:, 1])], 1)


def _pingpong(length: int, count: int) -> np.ndarray:
    """Source frame of each output frame: 0..L-1, L-2..1, 0.. (a still image: all 0)."""
    if length < 2:
        return np.zeros(count, int)
    cycle = np.concatenate([np.arange(length), np.arange(length - 2, 0, -1)])
    return cycle[np.arange(count) % len(cycle)]


def _visible_fraction(box: np.ndarray, occluders: list[np.ndarray]) -> float:
    """Share of ``box`` not covered by any of ``occluders`` (16x16 grid estimate)."""
    gx, gy = np.meshgrid(np.linspace(box[0], box[2], 16), np.linspace(box[1], box[3], 16))
    hidden = np.zeros(gx.shape, bool)
    for other in occluders:
        hidden |= (gx >= other[0]) & (gx <= other[2]) & (gy >= other[1]) & (gy <= other[3])
    return float(1.0 - hidden.mean())


def _moving_clip(media: SharedMedia, name: str, person: str, size, heights, centres, present=None, mirror=None,
                 length=None) -> Clip:
    count = len(centres) if length is None else min(length, len(centres))
    source = SOURCES[person]
    faces = media.frames(source.path)
    order = _pingpong(len(faces), count)
    frames, truth = [], []
    for t in range(count):
        canvas = media.background(t, *size)
        entry = {}
        if present is None or present[t]:
            box = paste_face(canvas, faces[order[t]], source.box, heights[t], centres[t],
                             mirror=mirror is not None and bool(mirror[t]))
            entry[0] = (box, 1.0)
        frames.append(canvas)
        truth.append(entry)
    return Clip(name, np.stack(frames), FPS, truth)


def build_clip(name: str, shared: str | Path | SharedMedia, key_every: int = 3, length: int | None = None) -> Clip:
    """Make clip ``name`` (see the module doc) from the shared folder.

    Args:
        key_every: ``between_keyframes`` only: the face is absent on every ``key_every``-th frame.
        length: keep only the first ``length`` frames (same motion, shorter clip).
    """
    media = shared if isinstance(shared, SharedMedia) else SharedMedia(shared)
    if name == "small_moving":
        count = 240
        heights = 56 + 8 * np.sin(np.linspace(0, 4 * np.pi, count))
        centres = along_path([(120, 90), (1160, 100), (640, 360), (140, 640), (1150, 630)], count)
        return _moving_clip(media, name, "man", HD, heights, centres, length=length)
    if name == "small_profile":
        count = 126
        centres = along_path([(300, 250), (980, 470)], count)
        return _moving_clip(media, name, "profile", HD, np.full(count, 56.0), centres,
                            mirror=np.arange(count) >= 63, length=length)
    if name == "yaw45_still":
        count = 60
        centres = along_path([(900, 200), (400, 520)], count)
        return _moving_clip(media, name, "yaw45", HD, np.full(count, 56.0), centres,
                            mirror=np.arange(count) >= 30, length=length)
    if name == "multi_face":
        count = 30 if length is None else min(length, 30)
        image = media.frames("data/images/multi_face.jpg")[0]
        truth = [{i: (box.copy(), 1.0) for i, box in enumerate(MULTI_FACE_BOXES)} for _ in range(count)]
        return Clip(name, np.repeat(image[None], count, axis=0), FPS, truth)
    if name == "between_keyframes":
        count = 90
        return _moving_clip(media, name, "man", (640, 360), np.full(count, 190.0),
                            along_path([(260, 180), (380, 180)], count), present=np.arange(count) % key_every != 0,
                            length=length)
    if name == "small_zoomout":
        count = 150
        heights = np.concatenate([np.linspace(160, 55, 45), np.full(count - 45, 55.0)])
        centres = along_path([(320, 180), (320, 180), (150, 120), (480, 250)], count)
        return _moving_clip(media, name, "man", (640, 360), heights, centres, length=length)
    if name == "cutout":
        count = 150
        present = (np.arange(count) < 50) | (np.arange(count) >= 95)
        return _moving_clip(media, name, "man", HD, np.full(count, 100.0), along_path([(300, 360), (980, 360)], count),
                            present=present, length=length)
    if name == "cutout_long":
        count = 180
        present = (np.arange(count) < 40) | (np.arange(count) >= 130)
        return _moving_clip(media, name, "man", HD, np.full(count, 100.0), along_path([(500, 300), (560, 330)], count),
                            present=present, length=length)
    if name == "crossing":
        return _crossing(media, length)
    raise ValueError(f"unknown test clip {name!r}; choose one of {', '.join(CLIP_NAMES)}")


def _crossing(media: SharedMedia, length: int | None) -> Clip:
    count = 120 if length is None else min(length, 120)
    man, woman = SOURCES["man"], SOURCES["woman"]
    man_faces, woman_faces = media.frames(man.path), media.frames(woman.path)
    man_path = along_path([(260, 360), (1020, 380)], 120)
    woman_path = along_path([(1020, 370), (260, 350)], 120)
    man_order, woman_order = _pingpong(len(man_faces), count), _pingpong(len(woman_faces), count)
    frames, truth = [], []
    for t in range(count):
        canvas = media.background(t, *HD)
        man_box = paste_face(canvas, man_faces[man_order[t]], man.box, 90.0, man_path[t])
        woman_box = paste_face(canvas, woman_faces[woman_order[t]], woman.box, 90.0, woman_path[t])  # in front
        # her patch (2.2 x her face) hides what lies under its solid inner part (~80 % of its side)
        half = 2.2 * 90.0 * 0.8 / 2
        cover = np.array([woman_path[t][0] - half, woman_path[t][1] - half, woman_path[t][0] + half,
                          woman_path[t][1] + half], np.float32)
        truth.append({0: (man_box, _visible_fraction(man_box, [cover])), 1: (woman_box, 1.0)})
        frames.append(canvas)
    return Clip("crossing", np.stack(frames), FPS, truth)


def no_face_clips(shared: str | Path | SharedMedia, mirrored: bool = False) -> list[tuple[str, np.ndarray]]:
    """``[(video name, uint8 (N, H, W, 3))]``: the no-face frames of the shared clips (:data:`NO_FACE_FRAMES`), each
    its own clip; ``mirrored``: the same frames mirrored left-right (a stress set)."""
    media = shared if isinstance(shared, SharedMedia) else SharedMedia(shared)
    clips = []
    for name, frames_of in NO_FACE_FRAMES.items():
        frames = media.frames(f"data/videos/{name}")
        frames = frames[frames_of(len(frames))]
        clips.append((name, np.ascontiguousarray(frames[:, :, ::-1]) if mirrored else frames))
    return clips


def write_clip(clip: Clip, path: str | Path) -> Path:
    """Encode ``clip`` as an H.264 mp4 (near-lossless, crf 12) for the command line tools; returns the path."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(round(clip.fps)))
        stream.width, stream.height = clip.frames.shape[2], clip.frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for frame in clip.frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
