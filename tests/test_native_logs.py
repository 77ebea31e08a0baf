"""MediaPipe's native log lines are dropped by NativeLogFilter (and by `video-fer track` unless --verbose)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, sys, zipfile
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision
from video_fer.faces.native_logs import NativeLogFilter

model = sys.argv[2]

def lifecycle():
    buffer = zipfile.ZipFile(model).read("face_detector.tflite")
    detector = vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_buffer=buffer), running_mode=vision.RunningMode.IMAGE))
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((64, 64, 3), np.uint8))
    detector.detect(image)
    detector.close()
    landmarker = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=model), output_face_blendshapes=True))
    landmarker.detect(image)
    landmarker.close()

with NativeLogFilter(enabled=sys.argv[1] == "quiet") as logs:
    lifecycle()
    os.write(2, b"native text that is not a log line\\n")
    os.write(2, b"\\rprogress 1\\rprogress 2")
    os.write(2, b"INFO: [environment.cc:36] Creating LiteRT environment with options\\n")  # after a bar's text
    print("python text on stderr", file=sys.stderr)
print(f"dropped {logs.dropped}")
"""


def run(mode: str, model: Path) -> subprocess.CompletedProcess:
    """The script's outputs as bytes decoded without newline translation (a "\\r" stays a "\\r")."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(model)], capture_output=True, timeout=120,
                          cwd=PROJECT_ROOT)
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, done.stderr
    return done


def test_mediapipe_logs_without_the_filter(mediapipe_model):
    """The lines exist (else the next test proves nothing)."""
    stderr = run("verbose", mediapipe_model).stderr
    assert "W0000" in stderr and "INFO:" in stderr


def test_filter_drops_native_logs_and_keeps_everything_else(mediapipe_model):
    done = run("quiet", mediapipe_model)
    assert done.stderr.split("\n") == ["native text that is not a log line", "\rprogress 1\rprogress 2python text on stderr",
                                       ""]
    assert int(done.stdout.split()[-1]) >= 5


def test_track_is_quiet_unless_verbose(mediapipe_model, shared_videos, tmp_path):
    command = [sys.executable, "-m", "video_fer.cli", "track", str(shared_videos / "single_face.mp4"), "--end", "3",
               "--landmarker-model", str(mediapipe_model), "--no-progress", "-o", str(tmp_path / "t.csv")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT, env=environment)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    with_bar = subprocess.run([part for part in command if part != "--no-progress"], capture_output=True, text=True,
                              timeout=300, cwd=PROJECT_ROOT, env=environment)
    assert with_bar.returncode == 0 and "frame/s" in with_bar.stderr, with_bar.stderr
    assert "INFO:" not in with_bar.stderr and "W0000" not in with_bar.stderr, with_bar.stderr
    verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
                             env=environment)
    assert verbose.returncode == 0 and "W0000" in verbose.stderr
