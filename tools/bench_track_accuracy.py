"""How close `video-fer track` comes to OpenFace 2.x on clips with OpenFace outputs (a reference, not ground truth).

For the no-training default (``--model mediapipe``) and each ``--model BUNDLE``: track every clip
(in process, ``video_fer.track.run.track``), match its frames to OpenFace's CSV and print

- per clip and pooled over the clips: frames, success-flag agreement, mean Pearson r over the AUs
  both give, head pose r and mean absolute error (pitch/yaw/roll in degrees, Tx/Ty/Tz in mm),
  gaze r and mean absolute error (degrees; only where OpenFace's CSV has gaze columns);
- Pearson r per AU.

``--baselines`` also scores, on the same frames, head-pose fits of MediaPipe's landmarks run on
every frame: the 68-point weak-perspective fit without a camera (``estimate_head_pose``, what
``track`` used before), the 68-point fit in the camera-axis convention, and the mesh fit in the
line-of-sight convention (what camera-axis angles add).

    python tools/bench_track_accuracy.py ../shared/data/videos/WolfgangLanger_Pexels.mp4 \\
        ../shared/data/videos/single_face.mp4 --openface ../shared/data/openface/WolfgangLanger_Pexels.openface.csv \\
        ../shared/data/openface/single_face.openface.csv [--bundle BUNDLE ...] [--baselines] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = PROJECT_ROOT.parent / "shared" / "models" / "mediapipe" / "face_landmarker.task"


def table_of(clip: Path, model: str, landmarker_model: Path, landmark_every: int | None,
             max_faces: int | None = None) -> dict[str, np.ndarray]:
    from video_fer.track.run import track

    settings = {"landmarker_options": {"model_path": str(landmarker_model)}}
    if max_faces:
        settings["landmarker_options"]["num_faces"] = max_faces
    if landmark_every:
        settings["landmark_every"] = landmark_every
    table = track(clip, model, **settings)
    return {name: np.asarray(table[name]) for name in table}


def baseline_tables(clip: Path, landmarker_model: Path) -> dict[str, dict[str, np.ndarray]]:
    """Head-pose baselines from MediaPipe's landmarks on every frame (one face per frame), as track tables."""
    from video_fer.faces import create_landmarker
    from video_fer.faces.canonical_face import geometry_of
    from video_fer.faces.head_pose import estimate_head_pose, fit_head_to_landmarks68, fit_head_to_mesh
    from video_fer.video import VideoReader

    landmarker = create_landmarker("mediapipe", model_path=str(landmarker_model), mode="video", num_faces=1,
                                   blendshapes=False, detector_scores=False)
    frames, meshes, landmarks = [], [], []
    with VideoReader(clip) as reader:
        landmarker.start_clip(str(clip), reader.fps)
        width, height = reader.width, reader.height
        for indices, batch in reader.iter_batches(32):
            for index, faces in zip(indices.tolist(), landmarker(batch, indices, reader.timestamps[indices])):
                if faces:
                    frames.append(index)
                    meshes.append(faces[0].native_landmarks)
                    landmarks.append(faces[0].landmarks)
    landmarker.close()
    mesh, points = np.stack(meshes).astype(np.float64), np.stack(landmarks).astype(np.float64)
    base = {"frame": np.asarray(frames), "face_id": np.zeros(len(frames), np.int64),
            "success": np.ones(len(frames), np.int64)}

    def as_table(angles: np.ndarray, translation: np.ndarray | None = None) -> dict[str, np.ndarray]:
        table = dict(base, pose_Rx=angles[:, 0], pose_Ry=angles[:, 1], pose_Rz=angles[:, 2])
        if translation is not None:
            table.update(pose_Tx=translation[:, 0], pose_Ty=translation[:, 1], pose_Tz=translation[:, 2])
        return table

    weak = estimate_head_pose(points.astype(np.float32)).numpy().astype(np.float64)
    camera68 = fit_head_to_landmarks68(points, width, height).pose
    sight = fit_head_to_mesh(mesh, width, height, geometry_of(landmarker_model), convention="line_of_sight").pose
    return {"68-point weak perspective, no camera (track before)": as_table(weak),
            "68-point fit, camera axis": as_table(camera68[:, 3:], camera68[:, :3]),
            "mesh fit, line of sight": as_table(sight[:, 3:], sight[:, :3])}


def cell(value: float, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def summary_row(name: str, clip: str, result: dict) -> str:
    pose, gaze = result["pose"], result["gaze"]

    def r_mae(group: dict, column: str, digits: int = 1) -> str:
        if column not in group:
            return "–"
        return f"{cell(group[column]['r'])} / {cell(group[column]['mae'], digits)}"

    return (f"| {name} | {clip} | {result['frames']} | {cell(result['success_agreement'], 3)} | "
            f"{cell(result['mean_au_r'])} ({len([r for r in result['au_r'].values() if np.isfinite(r)])}) | "
            + " | ".join(r_mae(pose, c) for c in ("pose_Rx", "pose_Ry", "pose_Rz"))
            + " | " + " / ".join(cell(pose[c]["mae"], 1) if c in pose else "–" for c in ("pose_Tx", "pose_Ty", "pose_Tz"))
            + " | " + " | ".join(r_mae(gaze, c) for c in ("gaze_angle_x", "gaze_angle_y")) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="+", type=Path, metavar="CLIP")
    parser.add_argument("--openface", nargs="+", type=Path, required=True, metavar="CSV",
                        help="OpenFace 2.x CSV of each clip, in the same order")
    parser.add_argument("--model", "--bundle", nargs="*", default=[], metavar="BUNDLE",
                        help="bundles to score besides the default (mediapipe)")
    parser.add_argument("--landmarker-model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--landmark-every", type=int, default=None, help="track's --landmark-every (default: its own)")
    parser.add_argument("--max-faces", type=int, default=None, help="track's --max-faces (default: its own)")
    parser.add_argument("--baselines", action="store_true", help="also score head-pose baselines (see above)")
    parser.add_argument("--json", type=Path, help="also write every number as JSON here")
    args = parser.parse_args(argv)
    if len(args.clips) != len(args.openface):
        parser.error(f"{len(args.clips)} clips but {len(args.openface)} OpenFace CSVs; give one CSV per clip")
    from video_fer.evaluate.openface import agreement_of_pairs, matched_values, pool_pairs, read_openface_csv
    from video_fer.faces.native_logs import NativeLogFilter

    openface = [read_openface_csv(path) for path in args.openface]
    results: dict[str, dict[str, dict]] = {}
    print(f"machine load {os.getloadavg()[0]:.1f} (1 min); landmarker {args.landmarker_model}")
    with NativeLogFilter():
        for model in ["mediapipe"] + list(args.model):
            started = time.perf_counter()
            pairs = [matched_values(table_of(clip, model, args.landmarker_model, args.landmark_every, args.max_faces), reference)
                     for clip, reference in zip(args.clips, openface)]
            results[model] = {clip.stem: agreement_of_pairs(p) for clip, p in zip(args.clips, pairs)}
            if len(pairs) > 1:
                results[model]["pooled"] = agreement_of_pairs(pool_pairs(pairs))
            print(f"{model}: tracked {len(args.clips)} clip(s) in {time.perf_counter() - started:.1f} s", flush=True)
        if args.baselines:
            pairs_by_name: dict[str, list] = {}
            for clip, reference in zip(args.clips, openface):
                for name, table in baseline_tables(clip, args.landmarker_model).items():
                    pairs_by_name.setdefault(name, []).append(matched_values(table, reference))
            for name, pairs in pairs_by_name.items():
                results[f"baseline: {name}"] = {clip.stem: agreement_of_pairs(p) for clip, p in zip(args.clips, pairs)}
                if len(pairs) > 1:
                    results[f"baseline: {name}"]["pooled"] = agreement_of_pairs(pool_pairs(pairs))

    print("\n| model | clip | frames | success agreement | mean AU r (AUs) | pitch r / MAE ° | yaw r / MAE ° | "
          "roll r / MAE ° | Tx / Ty / Tz MAE mm | gaze x r / MAE ° | gaze y r / MAE ° |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, by_clip in results.items():
        for clip, result in by_clip.items():
            print(summary_row(model, clip, result))
    models = [m for m in results if not m.startswith("baseline")]
    columns = [(m, clip) for m in models for clip in results[m]]
    aus = sorted({au for m in models for result in results[m].values() for au in result["au_r"]})
    print("\nPearson r per AU (AUxx_r vs OpenFace's AUxx_r, frames where both found the face):\n")
    print("| AU | " + " | ".join(f"{m} {clip}" for m, clip in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for au in aus:
        print(f"| {au} | " + " | ".join(cell(results[m][clip]["au_r"].get(au, float("nan"))) for m, clip in columns)
              + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
