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
