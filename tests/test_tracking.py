"""Face tracks on synthetic face sequences (boxes + iBUG-68 landmarks of a mean face)."""
import random

import numpy as np
import pytest

from video_fer.faces.alignment import CANONICAL_LANDMARKS_68
from video_fer.faces.boxes import box_iou
from video_fer.faces.tracking import FaceTracker, TrackingInputError, min_cost_assignment, track_faces

try:
    from video_fer.faces.types import Face
except ImportError:  # the Face dataclass is another part; the tracker only reads these fields
    from dataclasses import dataclass

    @dataclass
    class Face:
        box: np.ndarray
        score: float
        landmarks: np.ndarray
        native_landmarks: np.ndarray | None = None
        blendshapes: np.ndarray | None = None


def make_face(centre_x: float, centre_y: float, size: float = 80.0, score: float = 0.9, blendshapes=None) -> Face:
    """A face of side ``size`` centred at (centre_x, centre_y): box and landmarks of the mean face."""
    landmarks = (CANONICAL_LANDMARKS_68 - 0.5) * size * 1.4 + np.array([centre_x, centre_y], np.float32)
    box = np.array([centre_x - size / 2, centre_y - size / 2, centre_x + size / 2, centre_y + size / 2], np.float32)
    return Face(box=box, score=score, landmarks=landmarks.astype(np.float32), native_landmarks=None, blendshapes=blendshapes)


def test_box_iou_values():
    boxes_a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    boxes_b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(boxes_a, boxes_b), [[50 / 150, 0, 1], [50 / 150, 0, 1]], atol=1e-6)


@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_two_crossing_faces_keep_their_tracks(shuffle_seed):
    # A walks right, B walks left on nearly the same line; around frame 10 they cover each other, and
    # at frame 11 each face is nearer the other's last position: only their motion tells them apart.
    frames = []
    for t in range(21):
        faces = [make_face(100 + 15 * t, 200), make_face(407 - 15 * t, 203)]
        if shuffle_seed is not None:
            random.Random(shuffle_seed + t).shuffle(faces)
        frames.append(faces)
    result = track_faces(frames, np.arange(21), max_gap=2)

    assert [len(track) for track in result.tracks] == [21, 21]
    walking_right, walking_left = result.tracks  # id 0 = leftmost face at first appearance
    centres_right = walking_right.boxes[:, [0, 2]].mean(1)
    centres_left = walking_left.boxes[:, [0, 2]].mean(1)
    np.testing.assert_allclose(np.diff(centres_right), 15, atol=1e-4)
    np.testing.assert_allclose(np.diff(centres_left), -15, atol=1e-4)
    assert all(ids == [0, 1] for ids in result.frame_tracks.values())


def test_gap_within_max_gap_continues_the_track():
    frames = [[make_face(200, 200)] for _ in range(5)] + [[], []] + [[make_face(204, 201)] for _ in range(4)]
    result = track_faces(frames, np.arange(11), max_gap=2)
    assert len(result.tracks) == 1
    np.testing.assert_array_equal(result.tracks[0].frame_indices, [0, 1, 2, 3, 4, 7, 8, 9, 10])
    assert result.frame_tracks[5] == [] and result.frame_tracks[6] == [] and result.frame_tracks[7] == [0]
    assert result.frames_without_face == [5, 6]


def test_gap_longer_than_max_gap_splits_the_track():
    frames = [[make_face(200, 200)] for _ in range(5)] + [[], [], []] + [[make_face(204, 201)] for _ in range(4)]
    result = track_faces(frames, np.arange(12), max_gap=2)
    assert [track.track_id for track in result.tracks] == [0, 1]
    np.testing.assert_array_equal(result.tracks[0].frame_indices, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(result.tracks[1].frame_indices, [8, 9, 10, 11])


def test_cut_across_the_image_splits_the_track():
    frames = [[make_face(120, 200)] for _ in range(6)] + [[make_face(520, 180)] for _ in range(5)]
    result = track_faces(frames, np.arange(100, 111), max_gap=10)
    assert len(result.tracks) == 2
    np.testing.assert_array_equal(result.tracks[0].frame_indices, np.arange(100, 106))
    np.testing.assert_array_equal(result.tracks[1].frame_indices, np.arange(106, 111))
    assert result.face_track_ids[5] == [0] and result.face_track_ids[6] == [1]


def test_cut_to_a_close_up_splits_although_the_boxes_overlap():
    # Same centre, 2.5x larger face: boxes overlap (IoU 0.16) and landmarks move by ~0.5 face sizes;
    # only the sudden zoom gives the cut away.
    frames = [[make_face(300, 200, size=80)] for _ in range(4)] + [[make_face(300, 200, size=200)] for _ in range(4)]
    result = track_faces(frames, np.arange(8), max_gap=5, min_iou=0.1, max_landmark_distance=0.6)
    assert [len(track) for track in result.tracks] == [4, 4]


def test_empty_frames_are_recorded_not_dropped():
    frames = [[], [make_face(200, 200)], [], [], [make_face(202, 200)], []]
    indices = [0, 5, 10, 15, 20, 25]
    result = track_faces(frames, indices, max_gap=3)
    assert list(result.frame_tracks) == indices
    assert result.frame_tracks == {0: [], 5: [0], 10: [], 15: [], 20: [0], 25: []}
    assert result.face_track_ids == [[], [0], [], [], [0], []]
    assert track_faces([[], []], [0, 1]).tracks == []


def test_ids_follow_first_appearance_then_left_to_right():
    frame0 = [make_face(500, 100), make_face(100, 100), make_face(300, 100)]  # listed out of order
    frame1 = [make_face(300, 102), make_face(500, 102), make_face(100, 102), make_face(300, 320)]
    tracker = FaceTracker()
    assert tracker.update(0, frame0) == [2, 0, 1]
    assert tracker.update(1, frame1) == [1, 2, 0, 3]
    tracks = tracker.finish()
    assert [t.track_id for t in tracks] == [0, 1, 2, 3]
    np.testing.assert_allclose([t.boxes[0, 0] + 40 for t in tracks], [100, 300, 500, 300])


def test_short_tracks_are_dropped_and_ids_renumbered():
    frames = [[make_face(100, 100)] for _ in range(6)]
    frames[2] = frames[2] + [make_face(500, 300)]  # a one-frame false detection
    frames[3] = frames[3] + [make_face(300, 300)]  # another false detection, appearing later
    frames[4] = frames[4] + [make_face(301, 300)]
    result = track_faces(frames, np.arange(6), min_track_frames=2)
    assert [len(t) for t in result.tracks] == [6, 2]
    assert [t.track_id for t in result.tracks] == [0, 1]
    assert result.face_track_ids[2] == [0, -1]
    assert result.face_track_ids[3] == [0, 1]
    assert result.frame_tracks[2] == [0]


def test_jittery_static_face_stays_one_track():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(40):
        face = make_face(320, 180, size=120)
        face.landmarks = face.landmarks + rng.normal(0, 2.0, face.landmarks.shape).astype(np.float32)
        face.box = face.box + rng.normal(0, 2.0, 4).astype(np.float32)
        frames.append([face])
    frames[10] = frames[11] = frames[12] = []  # a short occlusion
    result = track_faces(frames, np.arange(40), max_gap=3)
    assert len(result.tracks) == 1 and len(result.tracks[0]) == 37


def test_track_arrays_and_blendshapes():
    shapes = np.linspace(0, 1, 52, dtype=np.float32)
    frames = [[make_face(200, 200, score=0.8, blendshapes=shapes)], [make_face(201, 200, score=0.7)]]
    (track,) = track_faces(frames, [3, 4]).tracks
    assert track.frame_indices.dtype == np.int64 and track.boxes.dtype == np.float32
    assert track.landmarks.shape == (2, 68, 2) and track.boxes.shape == (2, 4)
    np.testing.assert_allclose(track.scores, [0.8, 0.7])
    assert track.blendshapes.shape == (2, 52)
    np.testing.assert_allclose(track.blendshapes[0], shapes)
    assert np.isnan(track.blendshapes[1]).all()
    assert (track.first_frame, track.last_frame) == (3, 4)
    assert track_faces([[make_face(1, 1)]], [0]).tracks[0].blendshapes is None


def test_pop_closed_tracks_streams_finished_tracks():
    tracker = FaceTracker(max_gap=1)
    for frame in range(3):
        tracker.update(frame, [make_face(100, 100)])
    tracker.update(3, [])
    assert tracker.pop_closed_tracks() == []  # missing once: may still continue
    tracker.update(4, [make_face(400, 300)])
    (closed,) = tracker.pop_closed_tracks()
    np.testing.assert_array_equal(closed.frame_indices, [0, 1, 2])
    assert tracker.pop_closed_tracks() == []
    (remaining,) = tracker.finish()
    assert remaining.track_id == 1 and list(remaining.frame_indices) == [4]


def test_errors_name_the_input():
    tracker = FaceTracker()
    tracker.update(5, [make_face(100, 100)])
    with pytest.raises(TrackingInputError, match="frame_index 5: frames must come in increasing order"):
        tracker.update(5, [])
    bad = make_face(100, 100)
    bad.landmarks = bad.landmarks[:10]
    with pytest.raises(TrackingInputError, match=r"frame 6, face 1: landmarks must have shape \(68, 2\)"):
        tracker.update(6, [make_face(100, 100), bad])
    with pytest.raises(TrackingInputError, match="2 indices for 3 frames"):
        track_faces([[], [], []], [0, 1])
    with pytest.raises(TrackingInputError, match="max_gap >= 0"):
        FaceTracker(max_gap=-1)


def test_real_clip_face_then_no_face(shared_videos, mediapipe_model):
    import decord

    from video_fer.faces import create_landmarker

    video = shared_videos / "face_noface.mov"  # a face segment, then scenery without a face
    reader = decord.VideoReader(str(video), ctx=decord.cpu(0))
    indices = np.arange(0, len(reader), 3)
    frames = reader.get_batch(indices.tolist()).asnumpy()
    fps = float(reader.get_avg_fps())
    landmarker = create_landmarker("mediapipe", model_path=str(mediapipe_model), num_faces=2)
    try:
        landmarker.start_clip(str(video), fps)
        per_frame = landmarker(frames, indices, indices / fps)
    finally:
        landmarker.close()
    result = track_faces(per_frame, indices, max_gap=2, min_track_frames=3)

    assert list(result.frame_tracks) == indices.tolist()  # every sampled frame has a record
    assert len(result.tracks) == 1
    (track,) = result.tracks
    assert track.first_frame == 0 and len(track) >= 20
    # The track is the unbroken face segment, and every later frame is recorded as having no face.
    np.testing.assert_array_equal(track.frame_indices, indices[: len(track)])
    assert all(result.frame_tracks[i] == [] for i in indices[len(track):])
    assert len(result.frames_without_face) == len(indices) - len(track) >= 20


@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (3, 1), (2, 2), (3, 5), (5, 3), (5, 5), (0, 3), (7, 3), (8, 8)])
def test_min_cost_assignment_matches_scipy(shape):
    """Enumerated (small) and scipy (large) matchings reach scipy's least total cost, one pair per short-side item."""
    from scipy.optimize import linear_sum_assignment

    generator = np.random.default_rng(sum(shape))
    for trial in range(30):
        cost = generator.random(shape)
        if trial % 3 == 0:  # forbidden pairs as the tracker writes them
            cost = np.where(generator.random(shape) < 0.5, 1e6, cost)
        rows, columns = min_cost_assignment(cost)
        expected_rows, expected_columns = linear_sum_assignment(cost)
        assert len(rows) == len(columns) == min(shape)
        assert len(set(rows.tolist())) == len(rows) and len(set(columns.tolist())) == len(columns)
        assert np.all(np.diff(rows) > 0)
        assert cost[rows, columns].sum() == pytest.approx(cost[expected_rows, expected_columns].sum())
