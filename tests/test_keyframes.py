"""Keyframe landmarks (video_fer.faces.keyframes) and track's kornia-free alignment (video_fer.faces.crops)."""
import numpy as np
import pytest
import torch

from video_fer.errors import ConfigError
from video_fer.faces import create_landmarker
from video_fer.faces.keyframes import (GAP_FILLED, INTERPOLATED, KEYFRAME, KeyframeLandmarks, image_mode_twin,
                                       match_keyframe_faces)
from video_fer.faces.boxes import boxes_from_points
from video_fer.faces.types import Face
from video_fer.video import VideoReader

BASE = np.random.default_rng(0).uniform(0, 40, (68, 2)).astype(np.float32)


def face_at(offset, scale: float = 1.0) -> Face:
    landmarks = BASE * scale + np.asarray(offset, np.float32)
    return Face(box=boxes_from_points(landmarks[None])[0], score=0.9, landmarks=landmarks)


class ScriptedLandmarker:
    """Order-independent fake landmarker: ``script(frame_index)`` gives the faces of a frame; records its calls."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.seen: list[int] = []

    def start_clip(self, source=None, fps=None):
        self.seen = []

    def __call__(self, frames, frame_indices, timestamps):
        # the frames handed over are the frames of those indices (each fake frame is filled with its index)
        assert [int(f[0, 0, 0]) for f in frames] == [int(i) for i in frame_indices]
        self.seen += [int(i) for i in frame_indices]
        return [self.script(int(i)) for i in frame_indices]

    def close(self):
        pass


def run_clip(landmarker, every, batch_size, frames=20, gap=None):
    """Push a fake clip of ``frames`` frames (pixel value = frame index) in batches; returns the concatenated output."""
    keyframes = KeyframeLandmarks(landmarker, every, gap)
    keyframes.start_clip("clip", 25.0)
    indices = np.arange(frames)
    pixels = torch.from_numpy(np.broadcast_to(indices[:, None, None, None], (frames, 2, 2, 3)).astype(np.uint8).copy())
    chunks = [keyframes.push(indices[i:i + batch_size], indices[i:i + batch_size] / 25.0, pixels[i:i + batch_size])
              for i in range(0, frames, batch_size)] + [keyframes.finish()]
    chunks = [chunk for chunk in chunks if chunk is not None]
    out_indices = np.concatenate([chunk.frame_indices for chunk in chunks])
    out_frames = torch.cat([chunk.frames for chunk in chunks])
    assert np.array_equal(out_frames[:, 0, 0, 0].numpy(), out_indices)  # each frame stays with its faces
    return (out_indices, [faces for chunk in chunks for faces in chunk.faces], np.concatenate([c.source for c in chunks]),
            keyframes)


class AnnouncedLandmarker(ScriptedLandmarker):
    """Records what is announced to ``prefetch`` too."""

    def start_clip(self, source=None, fps=None):
        super().start_clip(source, fps)
        self.announced: list[int] = []

    def prefetch(self, frames, frame_indices, timestamps):
        assert [int(f[0, 0, 0]) for f in frames] == [int(i) for i in frame_indices]
        self.announced += [int(i) for i in frame_indices]


@pytest.mark.parametrize("every,batch_size", [(1, 4), (2, 3), (3, 7), (4, 1), (2, 20)])
def test_announced_keyframes_are_the_keyframes_pushed_later(every, batch_size):
    """prefetch picks the keyframes push will ask for (the end-of-clip keyframe of finish is not announced)."""
    landmarker = AnnouncedLandmarker(lambda index: [face_at((index, 0))])
    keyframes = KeyframeLandmarks(landmarker, every)
    keyframes.start_clip("clip", 25.0)
    indices = np.arange(19)
    pixels = torch.from_numpy(np.broadcast_to(indices[:, None, None, None], (19, 2, 2, 3)).astype(np.uint8).copy())
    batches = [slice(start, start + batch_size) for start in range(0, 19, batch_size)]
    for number, batch in enumerate(batches):
        if number == 0:
            keyframes.prefetch(indices[batch], indices[batch] / 25.0, pixels[batch])
        if number + 1 < len(batches):
            following = batches[number + 1]
            keyframes.prefetch(indices[following], indices[following] / 25.0, pixels[following])
        keyframes.push(indices[batch], indices[batch] / 25.0, pixels[batch])
        assert landmarker.announced[:len(landmarker.seen)] == landmarker.seen  # announced first, asked in order
    keyframes.finish()
    assert landmarker.announced == list(range(0, 19, every))
    assert landmarker.seen == landmarker.announced + ([18] if 18 % every else [])


def moving_face(index):
    return [face_at((1.0 * index + 0.1 * index ** 2, 100 - 2.0 * index))]  # curved path: mixing is not exact


@pytest.mark.parametrize("batch_size", [1, 4, 7, 32])
def test_interpolated_landmarks_are_the_linear_mix_of_the_keyframes(batch_size):
    landmarker = ScriptedLandmarker(moving_face)
    indices, faces, source, keyframes = run_clip(landmarker, 3, batch_size)
    assert np.array_equal(indices, np.arange(20))
    assert landmarker.seen == [0, 3, 6, 9, 12, 15, 18, 19]  # every 3rd frame, and the clip's last frame
    assert np.flatnonzero(source == KEYFRAME).tolist() == landmarker.seen
    assert (source[[1, 2, 4, 5, 16, 17]] == INTERPOLATED).all()
    assert (keyframes.keyframes, keyframes.interpolated, keyframes.gap_filled) == (8, 12, 0)
    for index in range(20):
        if index in landmarker.seen:
            np.testing.assert_array_equal(faces[index][0].landmarks, moving_face(index)[0].landmarks)
            continue
        before = max(k for k in landmarker.seen if k < index)
        after = min(k for k in landmarker.seen if k > index)
        weight = (index - before) / (after - before)
        expected = (1 - weight) * moving_face(before)[0].landmarks + weight * moving_face(after)[0].landmarks
        np.testing.assert_allclose(faces[index][0].landmarks, expected, atol=1e-4)
        assert np.abs(faces[index][0].landmarks - moving_face(index)[0].landmarks).max() > 0.1  # really a mix


def meshed_face(index):
    """A moving face that also carries a 478-point mesh and 52 blendshapes, both changing with the frame."""
    face = moving_face(index)[0]
    mesh = np.zeros((478, 3), np.float32) + np.array([index, 2.0 * index, -0.5 * index ** 2], np.float32)
    shapes = np.linspace(0, 1, 52, dtype=np.float32) * (index / 20.0) ** 2
    return [Face(box=face.box, score=face.score, landmarks=face.landmarks, native_landmarks=mesh, blendshapes=shapes)]


def test_the_mesh_and_blendshapes_are_interpolated_with_the_landmarks():
    """The default's pose, gaze and AUs read the mesh and the blendshapes: between keyframes they are the same
    linear mix of the two keyframes' values as the landmarks."""
    landmarker = ScriptedLandmarker(meshed_face)
    indices, faces, source, _ = run_clip(landmarker, 3, 5)
    for index in np.flatnonzero(source == INTERPOLATED):
        before = max(k for k in landmarker.seen if k < index)
        after = min(k for k in landmarker.seen if k > index)
        weight = (index - before) / (after - before)
        for attribute in ("native_landmarks", "blendshapes"):
            expected = (1 - weight) * getattr(meshed_face(before)[0], attribute) \
                + weight * getattr(meshed_face(after)[0], attribute)
            np.testing.assert_allclose(getattr(faces[index][0], attribute), expected, atol=1e-5, err_msg=attribute)
        # a curved path: the mix differs from the frame's own values, so it was really interpolated
        assert np.abs(faces[index][0].blendshapes - meshed_face(index)[0].blendshapes).max() > 1e-4


def test_every_one_landmarks_every_frame_and_the_output_does_not_depend_on_the_batch_size():
    landmarker = ScriptedLandmarker(moving_face)
    _, faces, source, _ = run_clip(landmarker, 1, 5)
    assert landmarker.seen == list(range(20)) and (source == KEYFRAME).all()
    reference = run_clip(ScriptedLandmarker(moving_face), 4, 3)[1]
    for batch_size in (1, 8, 64):
        other = run_clip(ScriptedLandmarker(moving_face), 4, batch_size)[1]
        for a, b in zip(reference, other):
            np.testing.assert_array_equal(np.stack([f.landmarks for f in a]), np.stack([f.landmarks for f in b]))


def test_frames_between_disagreeing_keyframes_are_landmarked_one_by_one():
    """A face appears at frame 7 (keyframes 6 and 9 disagree), the shot cuts at frame 13 (the face jumps)."""

    def script(index):
        if index < 7:
            return []
        return [face_at((10, 10))] if index < 13 else [face_at((300, 10))]

    gap = ScriptedLandmarker(script)
    indices, faces, source, keyframes = run_clip(ScriptedLandmarker(script), 3, 5, gap=gap)
    assert [len(f) for f in faces] == [len(script(i)) for i in indices]  # the face is found from frame 7 on
    assert sorted(gap.seen) == [7, 8, 13, 14]  # only the frames between disagreeing keyframes
    assert np.flatnonzero(source == GAP_FILLED).tolist() == [7, 8, 13, 14]
    assert keyframes.gap_filled == 4
    np.testing.assert_array_equal(faces[13][0].landmarks, face_at((300, 10)).landmarks)  # no mix across the cut


def test_gap_landmarker_factory_is_created_on_first_need_and_closed():
    created = []

    def factory():
        created.append(ScriptedLandmarker(lambda index: [face_at((index, 0))] if index >= 4 else []))
        return created[-1]

    keyframes = KeyframeLandmarks(ScriptedLandmarker(lambda index: [face_at((index, 0))] if index >= 4 else []), 3,
                                  factory)
    keyframes.start_clip("clip", 25.0)
    frames = torch.from_numpy(np.broadcast_to(np.arange(4)[:, None, None, None], (4, 2, 2, 3)).astype(np.uint8).copy())
    keyframes.push(np.arange(4), np.arange(4) / 25.0, frames)
    assert created == []  # keyframes 0 and 3 agree (no face): nothing to fill
    more = torch.full((3, 2, 2, 3), 0, dtype=torch.uint8)
    more[:, 0, 0, 0] = torch.arange(4, 7)
    chunk = keyframes.push(np.arange(4, 7), np.arange(4, 7) / 25.0, more)
    assert len(created) == 1 and created[0].seen == [4, 5]
    assert [len(f) for f in chunk.faces] == [1, 1, 1] and chunk.frame_indices.tolist() == [4, 5, 6]
    keyframes.close()
    with pytest.raises(ConfigError, match="landmark_every=0"):
        KeyframeLandmarks(ScriptedLandmarker(moving_face), 0)


def test_keyframe_faces_are_matched_by_overlap_and_size():
    left, right = face_at((0, 0)), face_at((200, 0))
    assert match_keyframe_faces([left, right], [face_at((201, 1)), face_at((2, 1))]) == [(0, 1), (1, 0)]
    assert match_keyframe_faces([], []) == []
    assert match_keyframe_faces([left], []) is None
    assert match_keyframe_faces([left], [right]) is None  # no overlap: a cut
    assert match_keyframe_faces([left], [face_at((-20, -20), scale=2.0)]) is None  # zoomed 2x: a cut


def test_image_mode_twin_only_for_mediapipe_video_mode(mediapipe_model):
    video = create_landmarker("mediapipe", model_path=str(mediapipe_model), mode="video", detector_scores=False)
    image = create_landmarker("mediapipe", model_path=str(mediapipe_model), mode="image", detector_scores=False)
    try:
        assert image_mode_twin(image) is None and image_mode_twin(ScriptedLandmarker(moving_face)) is None
        twin = image_mode_twin(video)()
        assert (twin.mode, twin.num_faces, twin.model_path) == ("image", video.num_faces, video.model_path)
        twin.close()
    finally:
        video.close()
        image.close()


def _face_counts(video, model, every):
    landmarker = create_landmarker("mediapipe", model_path=str(model), blendshapes=False, detector_scores=False)
    keyframes = KeyframeLandmarks(landmarker, every, image_mode_twin(landmarker))
    counts = []
    with VideoReader(video) as reader:
        keyframes.start_clip(str(video), reader.fps)
        chunks = [keyframes.push(indices, reader.timestamps[indices], frames)
                  for indices, frames in reader.iter_batches(32)] + [keyframes.finish()]
    for chunk in chunks:
        if chunk is not None:
            counts += [len(faces) for faces in chunk.faces]
    keyframes.close()
    landmarker.close()
    return np.array(counts)


@pytest.mark.parametrize("name", ["face_noface.mov", "noface_face.mov"])
def test_face_appearing_or_leaving_between_keyframes_is_not_missed(shared_videos, mediapipe_model, name):
    """Success flags equal landmarks-on-every-frame except a face seen on fewer than 3 consecutive
    frames (a one-frame flicker of the per-frame run next to a transition)."""
    every_frame = _face_counts(shared_videos / name, mediapipe_model, 1) > 0
    keyframed = _face_counts(shared_videos / name, mediapipe_model, 3) > 0
    assert len(every_frame) == len(keyframed) == 169
    transitions = np.flatnonzero(np.diff(every_frame.astype(int)) != 0) + 1
    assert len(transitions) >= 1
    differ = np.flatnonzero(every_frame != keyframed)
    assert len(differ) <= 2, differ
    for frame in differ:  # only where the per-frame run flickers for a frame or two
        run_starts = transitions[transitions <= frame]
        run_ends = transitions[transitions > frame]
        assert len(run_starts) and len(run_ends) and run_ends[0] - run_starts[-1] < 3, (frame, transitions)


# ----------------------------------------------------------------------------- faces.crops (track)
def test_torch_warp_equals_kornia():
    kornia = pytest.importorskip("kornia")
    from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, AlignmentSpec, five_points, similarity_from_points
    from video_fer.faces.crops import warp_windows

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 40, 52, generator=generator)
    spec = AlignmentSpec(size=32)
    landmarks = torch.from_numpy(CANONICAL_LANDMARKS_68 * 40 + 5) + torch.randn(3, 68, 2, generator=generator)
    matrices = similarity_from_points(five_points(landmarks), spec.template_pixels(), torch.tensor(spec.point_weights))
    for padding_mode in ("zeros", "border"):
        expected = kornia.geometry.transform.warp_affine(images, matrices, (32, 32), align_corners=True,
                                                         padding_mode=padding_mode)
        torch.testing.assert_close(warp_windows(images, matrices, 32, padding_mode), expected, atol=1e-4, rtol=0)


def test_fast_alignment_keeps_align_faces_geometry(shared_videos, mediapipe_model):
    """faces.crops.shrink_then_align vs align_faces (kornia, full-resolution Gaussian) on each face's window:
    the same crop landmarks, crops a fraction of a grey level apart, and the same pixels where the face is at
    most 1.5x the crop (no resize: the warp alone)."""
    from video_fer.faces.alignment import AlignmentSpec, align_faces
    from video_fer.faces.crops import MAX_WARP_SHRINK, crop_regions, shrink_then_align

    with VideoReader(shared_videos / "WolfgangLanger_Pexels.mp4") as reader:
        indices = np.arange(0, 472, 94)
        frames = reader.get(indices)
    landmarker = create_landmarker("mediapipe", model_path=str(mediapipe_model), mode="image", detector_scores=False)
    landmarks = torch.from_numpy(np.stack([faces[0].landmarks for faces in landmarker(frames, indices, indices * 0.04)]))
    landmarker.close()
    resized = 0
    for size in (64, 256):
        spec = AlignmentSpec(size=size)
        crops, crop_landmarks = shrink_then_align(frames, landmarks, torch.arange(len(indices)), spec)
        for face, (x0, y0, x1, y1) in enumerate(crop_regions(spec, landmarks, frames.shape[1], frames.shape[2]).tolist()):
            window = frames[face, y0:y1, x0:x1].permute(2, 0, 1)[None].float()
            aligned = align_faces(window, landmarks[face:face + 1] - torch.tensor([x0, y0]), spec)
            expected = aligned.crops.round().clamp(0, 255) / 255.0
            difference = (crops[face:face + 1] - expected).abs()
            torch.testing.assert_close(crop_landmarks[face], aligned.landmarks[0], atol=1e-3, rtol=0)
            if 1.0 / float(aligned.matrices[0, :, 0].norm()) <= MAX_WARP_SHRINK:
                assert difference.max() <= 1 / 255 + 1e-6  # at most a rounding tie apart
            else:
                resized += 1
                assert difference.mean() < 1.5 / 255, (size, face, float(difference.mean() * 255))
    assert resized >= 5  # the 64 px crops shrink every face by more than 1.5x


