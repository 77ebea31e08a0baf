"""Person ids across gaps (video_fer.faces.identity): scripted faces, then generated clips with the zoom front end."""
from pathlib import Path

import numpy as np
import pytest

from video_fer.evaluate.face_clips import build_clip
from video_fer.evaluate.face_finding import find_faces_in_frames, match_faces
from video_fer.faces import create_landmarker
from video_fer.faces.boxes import boxes_from_points
from video_fer.faces.identity import PersonTracker, confirmation_frames, face_descriptor, link_people
from video_fer.faces.types import Face

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "mediapipe" / "face_landmarker.task"
FPS = 30.0
BASE = np.random.default_rng(0).uniform(0, 60, (68, 2)).astype(np.float32)


def face_at(x: float, y: float) -> Face:
    landmarks = BASE + np.array([x, y], np.float32)
    return Face(box=boxes_from_points(landmarks[None])[0], score=0.9, landmarks=landmarks)


def frame_with(colours: dict[tuple[float, float], tuple[int, int, int]]) -> np.ndarray:
    """A grey 400x640 frame with a coloured 60 px square (a stand-in face) at each position."""
    frame = np.full((400, 640, 3), 90, np.uint8)
    for (x, y), colour in colours.items():
        frame[int(y):int(y) + 60, int(x):int(x) + 60] = colour
        frame[int(y) + 20:int(y) + 30, int(x) + 10:int(x) + 50] = 30  # a pattern inside
    return frame


def run(script, frames=None, **options):
    """script: per frame, a list of (x, y); returns each face's person id, per frame."""
    faces = [[face_at(x, y) for x, y in positions] for positions in script]
    return link_people(faces, np.arange(len(script)), frames, fps=FPS, **options)


def test_a_face_gone_for_1_5_seconds_on_its_path_keeps_its_id():
    script = [[(100 + 4 * t, 300)] if not 30 <= t < 75 else [] for t in range(120)]  # gone 45 frames = 1.5 s
    ids = run(script)
    assert {i for frame in ids for i in frame} == {0}


def test_a_face_returning_elsewhere_after_3_seconds_is_another_person():
    script = [[(100, 300)] if t < 30 else [] for t in range(120)] + [[(900, 300)] for _ in range(20)]
    ids = run(script)
    assert ids[0] == [0] and ids[-1] == [1]


def test_after_2_seconds_the_face_must_come_back_where_it_left_and_look_the_same():
    script = [[(300, 200)] if t < 30 or t >= 130 else [] for t in range(160)]  # gone 100 frames = 3.3 s
    same = [frame_with({(300, 200): (200, 150, 120)}) for _ in range(160)]
    other = [frame_with({(300, 200): (200, 150, 120) if t < 30 else (40, 160, 220)}) for t in range(160)]
    assert {i for frame in run(script, same) for i in frame} == {0}
    assert run(script, other)[-1] == [1]  # another look
    assert run(script)[-1] == [1]  # without frames there is no look to compare: place alone is not enough


def test_short_false_faces_are_dropped_and_simultaneous_faces_never_share_an_id():
    script = [[(100, 100), (700, 100)] + ([(400, 500)] if 10 <= t < 13 else []) for t in range(40)]
    ids = run(script)
    assert ids[11][2] is None  # the 3-frame face
    assert all(frame[:2] == ids[0][:2] for frame in ids) and ids[0][0] != ids[0][1]
    assert confirmation_frames(30.0) == 5 and confirmation_frames(1.0) == 2


def test_crossing_faces_keep_their_own_ids():
    """A walks right and B left on one line; A is hidden while they overlap and reappears beyond B."""
    script = []
    for t in range(100):
        a, b = (200 + 8 * t, 300), (1000 - 8 * t, 300)
        script.append(([] if 40 <= t < 62 else [a]) + [b])
    faces = [[face_at(*p) for p in frame] for frame in script]
    ids = link_people(faces, np.arange(100), fps=FPS)
    a_ids = {frame[0] for frame, positions in zip(ids, script) if len(positions) == 2}
    b_ids = {frame[-1] for frame in ids}
    assert len(a_ids) == 1 and len(b_ids) == 1 and a_ids != b_ids


def test_without_linking_every_tracker_track_is_its_own_person():
    script = [[(100 + 4 * t, 300)] if not 30 <= t < 75 else [] for t in range(120)]
    ids = run(script, link=False, min_frames=1)
    assert ids[0] == [0] and ids[-1] == [1]


def test_people_end_after_their_memory_and_finish_returns_the_rest():
    people = PersonTracker(FPS, max_memory_seconds=1.0)
    for t in range(10):
        people.update(t, [face_at(100, 100)])
    for t in range(10, 50):
        people.update(t, [])
    assert people.pop_ended_people() == [0] and people.pop_ended_people() == []
    people.update(50, [face_at(600, 100)])
    assert people.finish() == []  # the 1-frame face was never confirmed


def test_descriptor_is_unit_length_and_sees_colour():
    frame = frame_with({(100, 100): (200, 150, 120), (400, 100): (40, 160, 220)})
    a = face_descriptor(frame, np.array([100, 100, 160, 160]))
    b = face_descriptor(frame, np.array([400, 100, 460, 160]))
    assert a.shape == (48,) and abs(np.linalg.norm(a) - 1) < 1e-5 and float(a @ b) < 0.9


# ---------------------------------------------------------------- generated clips, zoom front end
@pytest.fixture(scope="module")
def media(shared_media):
    return shared_media


def ids_per_person(clip, landmarker):
    faces, _ = find_faces_in_frames(landmarker, clip.frames, clip.timestamps)
    ids = link_people(faces, np.arange(len(faces)), clip.frames, fps=clip.fps)
    per_person: dict[int, set] = {}
    for truth, found, found_ids in zip(clip.truth, faces, ids):
        for person, column in match_faces(truth, np.array([f.box for f in found]))[0].items():
            per_person.setdefault(person, set()).add(found_ids[column])
    return per_person


def test_two_faces_whose_paths_cross_keep_their_own_ids(media):
    """crossing: two faces side by side walk into each other, one passes in front (the cut-out face: below)."""
    clip = build_clip("crossing", media, length=100)  # they cross around frames 50-70
    landmarker = create_landmarker("mediapipe-zoom", model_path=MODEL, blendshapes=False, detector_scores=False,
                                   download=False)
    try:
        per_person = ids_per_person(clip, landmarker)
    finally:
        landmarker.close()
    assert sorted(per_person) == clip.people()
    assert all(len(ids) == 1 for ids in per_person.values()), per_person
    assert len(set().union(*per_person.values())) == len(per_person)  # no id on two people


def test_track_and_prepare_keep_one_id_for_a_face_cut_out_for_1_5_seconds(shared_media, tmp_path, one_torch_thread):
    """End to end on a clip file: `track` writes one face id, `prepare` one cache track."""
    from video_fer.data.cache import FaceTrackCache
    from video_fer.data.prepare import prepare_videos
    from video_fer.evaluate.face_clips import write_clip
    from video_fer.track.bundle import random_bundle
    from video_fer.track.run import track

    clip = build_clip("cutout", shared_media, length=112)  # face on 0-49 and 95-111
    path = write_clip(clip, tmp_path / "cutout.mp4")
    bundle = random_bundle(image_size=64, width=8, embedding_dim=32, attention_streams=4, stream_width=8, aus=(1, 12))
    table = track(path, bundle, landmarker_options={"model_path": str(MODEL)})
    seen = table["success"] == 1
    assert set(np.asarray(table["frame"])[seen]) >= set(range(5, 50)) | set(range(100, 112))
    assert set(np.asarray(table["face_id"])[seen]) == {0}
    prepare_videos([path], tmp_path / "cache", landmarker_options={"model_path": str(MODEL)}, progress=False)
    tracks = FaceTrackCache(tmp_path / "cache").tracks
    assert len(tracks) == 1 and tracks[0].num_frames >= 60  # one track across the gap
    assert tracks[0].first_frame <= 5 and tracks[0].last_frame >= 105
