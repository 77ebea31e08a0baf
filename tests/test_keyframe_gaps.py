"""Keyframes never lose a face that every-frame landmarking finds (video_fer.faces.keyframes with a landmarker that
follows faces, probes and landmarks crops: the mediapipe-zoom front end)."""
import numpy as np
import pytest
import torch

from video_fer.evaluate.face_clips import build_clip
from video_fer.evaluate.face_finding import find_faces_in_frames, find_faces_with_keyframes, match_faces
from video_fer.faces.boxes import boxes_from_points
from video_fer.faces.keyframes import (DEFAULT_LANDMARK_EVERY, GAP_FILLED, INTERPOLATED, KeyframeLandmarks,
                                       match_keyframe_faces)
from video_fer.faces.types import Face

BASE = np.random.default_rng(1).uniform(0, 40, (68, 2)).astype(np.float32)


def face_at(x, y, follow_id=None) -> Face:
    landmarks = BASE + np.array([x, y], np.float32)
    return Face(box=boxes_from_points(landmarks[None])[0], score=0.9, landmarks=landmarks, follow_id=follow_id)


class Following:
    """Fake zoom-like landmarker: ``script(index)`` gives a frame's faces; ``probe`` and ``landmark_at`` look up the
    same script (``hidden`` frames: the keyframe call misses the face, as MediaPipe on a keyframe can)."""

    name = "following"

    def __init__(self, script, hidden=()):
        self.script, self.hidden = script, set(hidden)
        self.keyframes, self.probed, self.at = [], [], []

    def start_clip(self, source=None, fps=None):
        pass

    def __call__(self, frames, frame_indices, timestamps):
        self.keyframes += [int(i) for i in frame_indices]
        return [[] if int(i) in self.hidden else self.script(int(i)) for i in frame_indices]

    def probe(self, frame):
        index = int(frame[0, 0, 0])
        self.probed.append(index)
        return [face.box for face in self.script(index)]

    def landmark_at(self, frame, boxes):
        index = int(frame[0, 0, 0])
        self.at.append(index)
        return self.script(index)

    def close(self):
        pass


def push_clip(landmarker, every, count=12, batch_size=5):
    keyframes = KeyframeLandmarks(landmarker, every)
    keyframes.start_clip()
    pixels = torch.from_numpy(np.broadcast_to(np.arange(count)[:, None, None, None], (count, 2, 2, 3)).astype(np.uint8).copy())
    chunks = [keyframes.push(np.arange(i, min(i + batch_size, count)), np.arange(i, min(i + batch_size, count)) / 25.0,
                             pixels[i:i + batch_size]) for i in range(0, count, batch_size)] + [keyframes.finish()]
    chunks = [c for c in chunks if c is not None]
    return [f for c in chunks for f in c.faces], np.concatenate([c.source for c in chunks]), keyframes


def test_faces_of_one_follow_id_pair_however_far_they_moved():
    a, b = face_at(0, 0, follow_id=7), face_at(300, 0, follow_id=7)
    assert match_keyframe_faces([a], [b]) == [(0, 0)]
    assert match_keyframe_faces([face_at(0, 0)], [face_at(300, 0)]) is None  # without ids: no overlap, a cut
    two = [face_at(0, 0, 1), face_at(500, 0, 2)]
    assert match_keyframe_faces(two, [face_at(510, 0, 2), face_at(10, 0, 1)]) == [(0, 1), (1, 0)]
    faces, source, _ = push_clip(Following(lambda i: [face_at(40 * i, 0, follow_id=3)]), 3)
    assert (source[[1, 2, 4, 5]] == INTERPOLATED).all()
    assert all(f[0].follow_id == 3 for f in faces)  # interpolated faces keep the id
    np.testing.assert_allclose(faces[1][0].box, face_at(40, 0).box, atol=1e-4)


def test_a_face_seen_only_between_empty_keyframes_is_found():
    script = lambda i: [face_at(10, 10, 1)] if i % 3 else []  # noqa: E731  (absent on every keyframe)
    landmarker = Following(script)
    faces, source, keyframes = push_clip(landmarker, 3)
    assert [len(f) for f in faces] == [len(script(i)) for i in range(12)]
    assert keyframes.probes >= 3 and set(landmarker.at) == {i for i in range(11) if i % 3}
    assert (source[[1, 2]] == GAP_FILLED).all()


def test_empty_keyframes_with_nothing_between_cost_one_probe_and_no_landmarks():
    landmarker = Following(lambda i: [])
    faces, _, keyframes = push_clip(landmarker, 3)
    assert all(f == [] for f in faces) and landmarker.at == [] and keyframes.probes == 4


def test_a_keyframe_that_misses_the_face_is_filled_around_the_faces():
    landmarker = Following(lambda i: [face_at(5 * i, 0, 1)], hidden={6})
    faces, source, _ = push_clip(landmarker, 3)
    assert all(len(f) == 1 for i, f in enumerate(faces) if i != 6)  # frames 4, 5, 7, 8 landmarked on crops
    assert {4, 5, 7, 8} <= set(landmarker.at)


# ---------------------------------------------------------------- the zoom front end on generated clips
def found_frames(clip, faces) -> set[int]:
    return {t for t, (truth, found) in enumerate(zip(clip.truth, faces))
            if truth and len(match_faces(truth, np.array([f.box for f in found]))[0]) == len(truth)}


@pytest.mark.parametrize("every", sorted({2, DEFAULT_LANDMARK_EVERY}))
def test_face_found_only_between_keyframes_is_not_lost(shared_media, zoom, every):
    clip = build_clip("between_keyframes", shared_media, key_every=every, length=60)
    faces, _ = find_faces_with_keyframes(zoom, clip.frames, clip.timestamps, every)
    expected = {t for t, truth in enumerate(clip.truth) if truth}
    assert len(expected) >= 30 and found_frames(clip, faces) == expected


@pytest.fixture(scope="module")
def small_moving(shared_media, zoom):
    """The small_moving clip (small and fast: ~1/4 of its height a frame) and the frames every-frame landmarking finds."""
    clip = build_clip("small_moving", shared_media, length=90)
    every_frame, _ = find_faces_in_frames(zoom, clip.frames, clip.timestamps)
    return clip, found_frames(clip, every_frame)


@pytest.mark.parametrize("every", sorted({2, DEFAULT_LANDMARK_EVERY}))
def test_keyframes_lose_no_face_every_frame_landmarking_finds(small_moving, zoom, every):
    clip, found_every_frame = small_moving
    keyframed, _ = find_faces_with_keyframes(zoom, clip.frames, clip.timestamps, every)
    assert len(found_every_frame) >= 86
    assert found_every_frame <= found_frames(clip, keyframed)


def test_keyframes_tell_a_searching_landmarker_how_far_apart_its_calls_are():
    class Searching(Following):
        def start_clip(self, source=None, fps=None):
            self.spacing = 1  # as ZoomFaceFinder: a new clip starts at one call a frame

        def keyframe_every(self, every):
            self.spacing = every

    landmarker = Searching(lambda i: [])
    for every in (1, 3):
        push_clip(landmarker, every)
        assert landmarker.spacing == every


@pytest.mark.parametrize("every", sorted({2, DEFAULT_LANDMARK_EVERY}))
def test_a_face_returning_between_keyframes_is_found_as_on_every_frame(shared_media, zoom, every):
    """cutout_long: the face is gone 3 s and comes back where it left, a 100 px face in 1280x720 that only the tile
    search finds; on keyframes the search keeps its rate per frame, so the face is found as soon as on every frame
    (it was found ~2 s late at every 3: the search advanced one step per keyframe)."""
    clip = build_clip("cutout_long", shared_media, length=165)
    every_frame, _ = find_faces_in_frames(zoom, clip.frames, clip.timestamps)
    keyframed, _ = find_faces_with_keyframes(zoom, clip.frames, clip.timestamps, every)
    returned = {t for t in found_frames(clip, every_frame) if t >= 130}
    assert len(returned) >= 25  # the face is back from frame 130 and every-frame landmarking refinds it
    assert found_frames(clip, every_frame) <= found_frames(clip, keyframed)
