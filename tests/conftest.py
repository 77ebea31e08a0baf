"""Shared fixtures: the real test assets in ../shared (skipped with a reason when absent)."""
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared test assets beside the project); not present here")
    return path


@pytest.fixture
def shared_videos() -> Path:
    return _shared_path("data", "videos")


@pytest.fixture
def shared_images() -> Path:
    return _shared_path("data", "images")


@pytest.fixture
def openface_csv() -> Path:
    return _shared_path("data", "openface", "OpenFace_Test.csv")


@pytest.fixture
def mediapipe_model() -> Path:
    return _shared_path("models", "mediapipe", "face_landmarker.task")


@pytest.fixture
def blazeface_files() -> tuple[Path, Path]:
    return _shared_path("models", "blazeface", "blazeface.pth"), _shared_path("models", "blazeface", "anchors.npy")


@pytest.fixture
def one_torch_thread():
    """Tiny convs on a busy 2-core machine run several times faster on one thread (no OpenMP contention)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_media():
    """Decoded shared media for the generated face clips (video_fer.evaluate.face_clips), each read once per run."""
    from video_fer.evaluate.face_clips import SharedMedia

    _shared_path("models", "mediapipe", "face_landmarker.task")
    _shared_path("data", "videos")
    return SharedMedia(SHARED)


@pytest.fixture(scope="module")
def zoom(shared_media):
    """The ``mediapipe-zoom`` front end on the shared model file, one per test module."""
    from video_fer.faces import create_landmarker

    finder = create_landmarker("mediapipe-zoom", model_path=SHARED / "models" / "mediapipe" / "face_landmarker.task",
                               blendshapes=False, detector_scores=False, download=False)
    yield finder
    finder.close()


@pytest.fixture(scope="session")
def single_face_mediapipe():
    """MediaPipe (VIDEO mode, every frame, ``track``'s landmarker settings) on single_face.mp4, and OpenFace's table.

    Returns ``{"mesh": (F, 478, 3), "blendshapes": (F, 52), "landmarks": (F, 68, 2), "size": (W, H),
    "openface": {column: (F,)}}`` (float64; every frame of this clip has its face).
    """
    import numpy as np

    from video_fer.evaluate.openface import read_openface_csv
    from video_fer.faces import create_landmarker
    from video_fer.faces.native_logs import NativeLogFilter
    from video_fer.video import VideoReader

    video = _shared_path("data", "videos", "single_face.mp4")
    openface = read_openface_csv(_shared_path("data", "openface", "single_face.openface.csv"))
    model = _shared_path("models", "mediapipe", "face_landmarker.task")
    faces = []
    with NativeLogFilter(), VideoReader(video) as reader:
        landmarker = create_landmarker("mediapipe", model_path=str(model), mode="video", num_faces=4,
                                       blendshapes=True, detector_scores=False)
        landmarker.start_clip(str(video), reader.fps)
        for indices, frames in reader.iter_batches(32):
            faces += [found[0] for found in landmarker(frames, indices, reader.timestamps[indices])]
        landmarker.close()
        size = (reader.width, reader.height)
    return {"mesh": np.stack([f.native_landmarks for f in faces]).astype(np.float64),
            "blendshapes": np.stack([f.blendshapes for f in faces]).astype(np.float64),
            "landmarks": np.stack([f.landmarks for f in faces]).astype(np.float64), "size": size, "openface": openface}
