"""Regenerate the hard-coded landmarks of the embedded demo photos (video_fer/data/synthetic.py).

The demo cache is built from face photos that installed packages ship (scikit-image's
astronaut, matplotlib's Grace Hopper). To align them like a real cache
the demo needs their iBUG-68 landmarks; running a landmarker at demo time would need a
model file, so this tool runs the MediaPipe face landmarker once, maps its 478 mesh
points to iBUG-68 (video_fer.faces.ibug68) and prints ``DEMO_PHOTO_LANDMARKS`` to paste
into video_fer/data/synthetic.py.

    python tools/make_demo_landmarks.py [--model ../shared/models/mediapipe/face_landmarker.task]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from video_fer.data.synthetic import DEMO_PHOTOS, load_demo_photo
from video_fer.faces.ibug68 import mediapipe_to_ibug68

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def detect_mesh(model_path: Path, image: np.ndarray) -> np.ndarray:
    """MediaPipe face landmarker (IMAGE mode) -> 478 mesh points in pixels ``(478, 2)`` of the first face."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(model_path)),
                                           running_mode=vision.RunningMode.IMAGE, num_faces=1)
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
    if not result.face_landmarks:
        raise SystemExit("no face found")
    height, width = image.shape[:2]
    # MediaPipe gives x, y normalised by the image size with 0 at the image edge; pixel centres sit at +0.5.
    return np.array([[p.x * width - 0.5, p.y * height - 0.5] for p in result.face_landmarks[0]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path,
                        default=PROJECT_ROOT.parent / "shared" / "models" / "mediapipe" / "face_landmarker.task")
    args = parser.parse_args()
    print("DEMO_PHOTO_LANDMARKS = {")
    for name in DEMO_PHOTOS:
        points = mediapipe_to_ibug68(detect_mesh(args.model, load_demo_photo(name)))
        print(f'    "{name}": (')
        for start in range(0, 68, 6):
            print("        " + " ".join(f"{x:.1f}, {y:.1f}," for x, y in points[start:start + 6]))
        print("    ),")
    print("}")


if __name__ == "__main__":
    main()
