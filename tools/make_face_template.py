"""Derive the canonical iBUG-68 face (alignment template) from real frontal faces.

Runs the MediaPipe face landmarker on frontal faces of ``shared/data/images`` and
frames of ``single_face.mp4``, maps them to iBUG-68, removes position / scale /
rotation by generalised Procrustes analysis, averages (each source image or video
counts once, so a long video does not outweigh the stills), symmetrises left/right,
makes the eye line horizontal and places the face in the crop: centred, its largest
extent 168 px of 256, so all 68 points lie inside [40, 216) px, the region every TAE
augmentation crop (a 200..223 px square inside the central 224 px) keeps.

Prints ``CANONICAL_LANDMARKS_68`` to paste into ``video_fer/faces/alignment.py``, the
five template points, and how close the eyes of every video frame land to the
template for several point weightings. ``--sheet PATH`` also writes a PNG of aligned
video frames with the template points drawn.

    python tools/make_face_template.py [--shared ../shared] [--sheet /tmp/aligned_sheet.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from video_fer.faces.alignment import AlignmentSpec, align_faces, five_points, normalised_to_pixels
from video_fer.faces.ibug68 import MIRROR_68

PROJECT_ROOT = Path(__file__).resolve().parents[1]

FRONTAL_IMAGES = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "single_face.jpg", "multi_face.jpg")
CROP_SIZE = 256
FACE_EXTENT_PIXELS = 168  # largest side of the 68-point box; 168 < 216 - 40 leaves ~4 px margin each side
WEIGHTINGS = {"plain": (1, 1, 1, 1, 1), "eyes x2": (2, 2, 1, 1, 1), "eyes x4": (4, 4, 1, 1, 1),
              "eyes x8": (8, 8, 1, 1, 1)}


def create_mediapipe_landmarker(model_path: Path, mode: str, num_faces: int):
    """The project's MediaPipe backend: ``mode="image"`` for stills (tiled, for the small faces of the
    group photo), ``"video"`` for a clip."""
    from video_fer.faces import create_landmarker

    return create_landmarker("mediapipe", model_path=str(model_path), mode=mode, num_faces=num_faces,
                             tiles=mode == "image")


def yaw_indicators(landmarks: np.ndarray) -> tuple[float, float]:
    """Two signs of a turned head: the nose tip's offset from the eye midpoint (in eye distances, along
    the eye line) and the log ratio of the two jaw half-widths (jaw ends 0 and 16 to the nasion 27)."""
    left_eye, right_eye, nose = five_points(landmarks)[:3]
    eye_distance = np.linalg.norm(right_eye - left_eye)
    nose_offset = abs(np.dot(nose - (left_eye + right_eye) / 2, (right_eye - left_eye) / eye_distance)) / eye_distance
    right_half, left_half = np.linalg.norm(landmarks[[0, 16]] - landmarks[27], axis=-1)
    jaw_asymmetry = abs(np.log(right_half / left_half))
    return float(nose_offset), float(jaw_asymmetry)


def landmarks_of_image(landmarker, path: Path) -> list[np.ndarray]:
    from skimage.io import imread

    image = imread(path)[..., :3]
    landmarker.start_clip(str(path), 1.0)
    faces = landmarker(image[None], np.array([0]), np.array([0.0]))[0]
    return [np.asarray(face.landmarks, dtype=np.float64) for face in faces]


def video_frames(path: Path, step: int) -> tuple[np.ndarray, np.ndarray, float]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    indices = np.arange(0, len(reader), step)
    return reader.get_batch(indices.tolist()).asnumpy(), indices, float(reader.get_avg_fps())


def landmarks_of_video(landmarker, path: Path, step: int) -> tuple[np.ndarray, list[np.ndarray | None]]:
    frames, indices, fps = video_frames(path, step)
    landmarker.start_clip(str(path), fps)
    per_frame = landmarker(frames, indices, indices / fps)
    return frames, [np.asarray(faces[0].landmarks, np.float64) if len(faces) == 1 else None for faces in per_frame]


def normalise_shape(shape: np.ndarray) -> np.ndarray:
    """Centroid at 0, unit root-mean-square radius."""
    centred = shape - shape.mean(0)
    return centred / np.sqrt((centred**2).sum(1).mean())


def rotate_onto(shape: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Best rotation (no reflection) of a centred shape onto a centred reference (2-D Procrustes)."""
    cross = (shape[:, 0] * reference[:, 1] - shape[:, 1] * reference[:, 0]).sum()
    dot = (shape * reference).sum()
    angle = np.arctan2(cross, dot)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return shape @ rotation.T


def level_eyes(shape: np.ndarray) -> np.ndarray:
    """Rotate a centred shape so the line between the eye centres is horizontal."""
    left_eye, right_eye = five_points(shape)[:2]
    angle = -np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return shape @ rotation.T


def procrustes_mean(groups: list[list[np.ndarray]], iterations: int = 10) -> np.ndarray:
    """Generalised Procrustes mean; each group (one image or video) weighs the same."""
    shapes = [[normalise_shape(s) for s in group] for group in groups]
    mean = level_eyes(shapes[0][0])
    for _ in range(iterations):
        group_means = [np.mean([rotate_onto(s, mean) for s in group], 0) for group in shapes]
        mean = level_eyes(normalise_shape(np.mean(group_means, 0)))
    return mean


def symmetrise(shape: np.ndarray) -> np.ndarray:
    """Average a centred, eye-levelled shape with its mirror image about the vertical axis."""
    mirrored = shape[MIRROR_68] * np.array([-1.0, 1.0])
    symmetric = (shape + mirrored) / 2
    return symmetric - [symmetric[:, 0].mean(), 0.0]


def place_in_crop(shape: np.ndarray) -> np.ndarray:
    """Scale and centre the shape's bounding box in normalised crop coordinates [0, 1]."""
    low, high = shape.min(0), shape.max(0)
    scale = FACE_EXTENT_PIXELS / CROP_SIZE / (high - low).max()
    return (shape - (low + high) / 2) * scale + 0.5


def format_constant(canonical: np.ndarray) -> str:
    rows = []
    for start in range(0, 68, 4):
        rows.append("        " + " ".join(f"[{u:.4f}, {v:.4f}]," for u, v in canonical[start:start + 4]))
    return "CANONICAL_LANDMARKS_68 = np.array(\n    [\n" + "\n".join(rows) + "\n    ],\n    dtype=np.float32,\n)"


def eye_residuals(landmarks: np.ndarray, spec: AlignmentSpec) -> np.ndarray:
    """Distance (crop px) between each aligned eye centre and its template point, ``(F, 2)``."""
    import torch

    aligned = align_faces(torch.zeros(len(landmarks), 3, 8, 8), torch.tensor(landmarks, dtype=torch.float32), spec)
    eyes = five_points(aligned.landmarks)[:, :2]
    return (eyes - spec.template_pixels()[:2]).norm(dim=-1).numpy()


def write_sheet(path: Path, frames: np.ndarray, landmarks: np.ndarray, spec: AlignmentSpec, count: int = 12,
                columns: int = 4) -> None:
    """``count`` evenly spaced aligned crops, template points (red +), aligned landmarks (green),
    the central 224 px (yellow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    chosen = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    aligned = align_faces(torch.from_numpy(frames), torch.tensor(landmarks[chosen], dtype=torch.float32), spec,
                          frame_index=chosen)
    template = spec.template_pixels().numpy()
    rows = -(-len(chosen) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows))
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, crop, points in zip(np.ravel(axes), aligned.crops, aligned.landmarks):
        axis.imshow(crop.permute(1, 2, 0).numpy())
        axis.scatter(points[:, 0], points[:, 1], s=3, c="lime")
        axis.scatter(template[:, 0], template[:, 1], s=60, c="red", marker="+", linewidths=1)
        axis.add_patch(plt.Rectangle((15.5, 15.5), 224, 224, fill=False, ec="yellow", lw=0.6))  # central 224 px
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=PROJECT_ROOT.parent / "shared")
    parser.add_argument("--video-step", type=int, default=1, help="use every n-th frame of single_face.mp4")
    parser.add_argument("--max-nose-offset", type=float, default=0.15,
                        help="skip faces whose nose tip is further than this (in eye distances) from the eye midpoint")
    parser.add_argument("--max-jaw-asymmetry", type=float, default=0.45,
                        help="skip faces whose jaw half-widths differ by more than this log ratio (turned heads)")
    parser.add_argument("--sheet", type=Path, help="write a PNG of aligned video frames here")
    args = parser.parse_args()

    model_path = args.shared / "models" / "mediapipe" / "face_landmarker.task"
    landmarker = create_mediapipe_landmarker(model_path, mode="image", num_faces=8)
    groups: list[list[np.ndarray]] = []
    for name in FRONTAL_IMAGES:
        for number, landmarks in enumerate(landmarks_of_image(landmarker, args.shared / "data" / "images" / name)):
            nose_offset, jaw_asymmetry = yaw_indicators(landmarks)
            kept = nose_offset <= args.max_nose_offset and jaw_asymmetry <= args.max_jaw_asymmetry
            print(f"{name} face {number}: nose offset {nose_offset:.3f}, jaw asymmetry {jaw_asymmetry:.3f}: "
                  f"{'kept' if kept else 'skipped (turned head)'}")
            if kept:
                groups.append([landmarks])
    landmarker.close()
    landmarker = create_mediapipe_landmarker(model_path, mode="video", num_faces=1)
    frames, video_landmarks = landmarks_of_video(landmarker, args.shared / "data" / "videos" / "single_face.mp4",
                                                 args.video_step)
    found = [(frame, lm) for frame, lm in zip(frames, video_landmarks) if lm is not None]
    print(f"single_face.mp4: one face in {len(found)} of {len(frames)} sampled frames")
    groups.append([lm for _, lm in found])
    landmarker.close()

    canonical = place_in_crop(symmetrise(procrustes_mean(groups)))
    canonical = np.round(canonical, 4)
    pixels = normalised_to_pixels(canonical, CROP_SIZE)
    print(f"\n{len(groups)} sources; 68-point box in a {CROP_SIZE} px crop: "
          f"x {pixels[:, 0].min():.1f}..{pixels[:, 0].max():.1f}, y {pixels[:, 1].min():.1f}..{pixels[:, 1].max():.1f}")
    print("\n# Produced by tools/make_face_template.py\n" + format_constant(canonical))
    template = five_points(canonical)
    print("\nfive template points (normalised):", np.round(template, 4).tolist())

    video_array = np.stack([lm for _, lm in found])
    print(f"\neye-centre distance to the template after alignment, single_face.mp4 ({len(found)} frames, {CROP_SIZE} px):")
    for name, weights in WEIGHTINGS.items():
        spec = AlignmentSpec(size=CROP_SIZE, template_points=tuple(map(tuple, template)), point_weights=weights)
        residuals = eye_residuals(video_array, spec)
        print(f"  {name:8s} weights {weights}: mean {residuals.mean():.2f} px, max {residuals.max():.2f} px")
    if args.sheet:
        spec = AlignmentSpec(size=CROP_SIZE, template_points=tuple(map(tuple, template)))
        write_sheet(args.sheet, np.stack([frame for frame, _ in found]), video_array, spec)


if __name__ == "__main__":
    main()
