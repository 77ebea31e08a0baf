"""Draw the face regions of video_fer.models.regions on aligned faces (a visual check).

Finds the landmarks of each image with the MediaPipe landmarker, aligns the largest face
with the package's similarity alignment (256 px), and draws per face:
  1. ACNN's 24 points and their 6x6 windows on the stride-8 map (48 px squares);
  2. RAN's fixed crops and landmark-centred crops;
  3. the prior-attention blocks (eyes+brows, mouth, 10 px margin);
  4. AHA's aligned parts;
  5. the two prior-attention blocks as ``crop_resize`` cuts them (checks the sampler).

Usage:
    python tools/draw_regions.py [--images ../shared/data/images] [--model ../shared/models/mediapipe/face_landmarker.task]
                                 [--out docs/images/regions.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from video_fer.faces import create_landmarker
from video_fer.faces.alignment import AlignmentSpec, align_faces
from video_fer.io import atomic_path
from video_fer.models import regions

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_IMAGES = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg", "single_face.jpg")
ACNN_STRIDE, ACNN_WINDOW = 8, 6


def read_rgb(path: Path) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB."""
    from PIL import Image

    return np.array(Image.open(path).convert("RGB"))  # a writable copy: torch.from_numpy needs one


def largest_face_landmarks(landmarker, image: np.ndarray, path: Path) -> np.ndarray:
    """iBUG-68 landmarks ``(68, 2)`` of the largest face in ``image``."""
    landmarker.start_clip(str(path), 1.0)
    faces = landmarker(image[None], np.array([0]), np.array([0.0]))[0]
    if not faces:
        raise SystemExit(f"{path}: no face found; pick images with a visible face")
    areas = [(face.box[2] - face.box[0]) * (face.box[3] - face.box[1]) for face in faces]
    return faces[int(np.argmax(areas))].landmarks


def draw_boxes(axis, boxes: torch.Tensor, colour: str, labels=None, linestyle="-") -> None:
    from matplotlib.patches import Rectangle

    for index, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2,
                                 linestyle=linestyle))
        if labels is not None:
            axis.text(x0 + 2, y0 + 8, labels[index], color=colour, fontsize=5)


def draw_regions(crops: torch.Tensor, landmarks: torch.Tensor, out_path: Path, names: list[str]) -> None:
    """Draw the regions of aligned faces ``crops (B, 3, S, S)`` with landmarks ``(B, 68, 2)`` into ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch, size = crops.shape[0], crops.shape[-1]
    acnn = regions.acnn_points(landmarks)
    acnn_boxes = regions.centred_boxes(acnn, ACNN_STRIDE * ACNN_WINDOW, size, clamp=False)
    ran_fixed = regions.relative_boxes(batch, size)
    ran_landmark = regions.landmark_centred_boxes(landmarks, size)
    prior = regions.prior_attention_boxes(landmarks, size)
    aha = regions.aha_region_boxes(landmarks, size)
    eye_blocks = regions.crop_resize(crops, prior[:, :1], (48, 144), samples_per_bin=2)[:, 0]
    mouth_blocks = regions.crop_resize(crops, prior[:, 1:], (48, 96), samples_per_bin=2)[:, 0]

    figure, axes = plt.subplots(batch, 5, figsize=(15, 3 * batch), squeeze=False)
    titles = ("ACNN 24 points, 6x6 @ stride 8", "RAN fixed (solid) / landmark (dashed)",
              "prior attention, 10 px margin", "AHA parts", "prior-attention crops (crop_resize)")
    for row in range(batch):
        image = crops[row].permute(1, 2, 0).clamp(0, 1).numpy()
        for column in range(4):
            axis = axes[row, column]
            axis.imshow(image)
            axis.set_xlim(-0.5, size - 0.5)
            axis.set_ylim(size - 0.5, -0.5)
        axes[row, 0].scatter(*landmarks[row].T.numpy(), s=2, c="white")
        draw_boxes(axes[row, 0], acnn_boxes[row], "yellow")
        axes[row, 0].scatter(*acnn[row, :16].T.numpy(), s=8, c="lime", label="16 landmarks")
        axes[row, 0].scatter(*acnn[row, 16:20].T.numpy(), s=8, c="magenta", label="eye/brow midpoints")
        axes[row, 0].scatter(*acnn[row, 20:].T.numpy(), s=8, c="orange", label="cheeks")
        draw_boxes(axes[row, 1], ran_fixed[row], "lime", [str(i + 1) for i in range(ran_fixed.shape[1])])
        draw_boxes(axes[row, 1], ran_landmark[row], "orange", linestyle="--")
        draw_boxes(axes[row, 2], prior[row], "red", list(regions.PRIOR_ATTENTION_NAMES))
        axes[row, 2].scatter(*landmarks[row].T.numpy(), s=2, c="white")
        draw_boxes(axes[row, 3], aha[row], "cyan", list(regions.AHA_REGION_NAMES))
        strip = torch.cat([eye_blocks[row], torch.cat([mouth_blocks[row], torch.ones(3, 48, 48)], dim=2)], dim=1)
        axes[row, 4].imshow(strip.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[row, 0].set_ylabel(names[row], fontsize=7)
        for column in range(5):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title(titles[column], fontsize=8)
    axes[0, 0].legend(fontsize=5, loc="lower left")
    figure.tight_layout()
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=PROJECT_ROOT.parent / "shared" / "data" / "images")
    parser.add_argument("--names", nargs="*", default=list(DEFAULT_IMAGES), help="image files inside --images")
    parser.add_argument("--model", type=Path,
                        default=PROJECT_ROOT.parent / "shared" / "models" / "mediapipe" / "face_landmarker.task")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "images" / "regions.png")
    args = parser.parse_args(argv)

    paths = [args.images / name for name in args.names]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise SystemExit(f"missing image(s): {missing}; give --images and --names")
    # Stills: image mode (no tracking between unrelated photos); offline: never download.
    landmarker = create_landmarker("mediapipe", model_path=str(args.model), mode="image", download=False)
    try:
        images = [read_rgb(path) for path in paths]
        landmarks = [largest_face_landmarks(landmarker, image, path) for image, path in zip(images, paths)]
    finally:
        landmarker.close()
    spec = AlignmentSpec(size=args.size)
    # Images differ in size: align one at a time (a handful of images), then batch the regions.
    aligned = [align_faces(torch.from_numpy(image)[None], torch.from_numpy(points)[None], spec)
               for image, points in zip(images, landmarks)]
    crops = torch.cat([a.crops for a in aligned]).float() / 255.0
    aligned_landmarks = torch.cat([a.landmarks for a in aligned])
    draw_regions(crops, aligned_landmarks, args.out, [path.name for path in paths])
    print(f"wrote {args.out} ({len(paths)} faces)")


if __name__ == "__main__":
    main()
