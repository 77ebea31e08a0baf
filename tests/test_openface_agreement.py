"""Agreement with OpenFace's CSV (video_fer.evaluate.openface, tools/bench_track_accuracy.py): matching and scores."""
import numpy as np
import pytest

from video_fer.errors import LabelFileError
from video_fer.evaluate.openface import agreement, agreement_of_pairs, matched_values, pool_pairs, read_openface_csv


def openface_table(frames: int, rng) -> dict:
    """OpenFace-like columns: frames numbered from 1, face 0, a failed frame 3."""
    table = {"frame": np.arange(1, frames + 1, dtype=float), "face_id": np.zeros(frames),
             "success": np.ones(frames), "pose_Rx": rng.normal(0, 0.2, frames), "pose_Tz": rng.uniform(400, 600, frames),
             "AU12_r": rng.uniform(0, 5, frames), "AU04_r": rng.uniform(0, 5, frames),
             "AU12_c": (rng.uniform(0, 1, frames) > 0.5).astype(float)}
    table["success"][3] = 0
    return table


def track_table(reference: dict, rng) -> dict:
    """A track table of the same clip (frames from 0) with a second face on every frame and its own failures."""
    frames = len(reference["frame"])
    main = {"frame": np.arange(frames), "face_id": np.full(frames, 2), "success": np.ones(frames, np.int64),
            "pose_Rx": reference["pose_Rx"] + np.radians(1.0), "pose_Tz": reference["pose_Tz"] - 10,
            "AU12_r": 2 * reference["AU12_r"] + 1, "AU04_r": rng.uniform(0, 5, frames),
            "AU12_c": reference["AU12_c"].copy()}
    main["AU12_c"][:5] = 1 - main["AU12_c"][:5]
    main["success"][7] = 0
    main["face_id"][7] = -1
    other = {name: values.copy() for name, values in main.items()}
    other["face_id"] = np.full(frames, 5)
    other["frame"], other["success"] = other["frame"][:4], other["success"][:4]  # a face seen on 4 frames only
    return {name: np.concatenate([main[name], other[name][:4]]) for name in main}


def test_agreement_matches_frames_and_the_main_face_and_scores_each_column():
    rng = np.random.default_rng(0)
    openface = openface_table(40, rng)
    ours = track_table(openface, rng)
    result = agreement(ours, openface)
    assert result["frames"] == 40 and result["both_found"] == 38  # frame 3 (OpenFace) and 7 (ours) failed
    assert result["success_agreement"] == pytest.approx(38 / 40)
    assert result["au_r"]["AU12"] == pytest.approx(1.0)  # a linear map of OpenFace's: r = 1
    assert abs(result["au_r"]["AU04"]) < 0.5  # unrelated
    assert result["mean_au_r"] == pytest.approx((1.0 + result["au_r"]["AU04"]) / 2)
    assert result["pose"]["pose_Rx"]["mae"] == pytest.approx(1.0) and result["pose"]["pose_Rx"]["r"] == pytest.approx(1)
    assert result["pose"]["pose_Tz"]["mae"] == pytest.approx(10.0)
    flipped = 5 - int(3 in range(5))  # the flipped presences on the first 5 frames, minus OpenFace's failed frame 3
    assert result["au_c_agreement"]["AU12"] == pytest.approx(1 - flipped / 38)
    assert result["gaze"] == {}  # neither table has gaze here


def test_pooling_concatenates_the_clips_pairs():
    rng = np.random.default_rng(1)
    first, second = openface_table(30, rng), openface_table(20, rng)
    pairs = [matched_values(track_table(first, rng), first), matched_values(track_table(second, rng), second)]
    pooled = agreement_of_pairs(pool_pairs(pairs))
    assert pooled["frames"] == 50 and pooled["both_found"] == 28 + 18
    assert pooled["pose"]["pose_Tz"]["mae"] == pytest.approx(10.0)


def test_read_openface_csv_strips_header_spaces_and_names_bad_lines(tmp_path):
    path = tmp_path / "clip.csv"
    path.write_text("frame, face_id, success, AU12_r\n1, 0, 1, 0.5\n2, 0, 0, 0.0\n")
    table = read_openface_csv(path)
    assert list(table) == ["frame", "face_id", "success", "AU12_r"] and table["AU12_r"].tolist() == [0.5, 0.0]
    path.write_text("frame, face_id\n1, 0, 3\n")
    with pytest.raises(LabelFileError, match="clip.csv, line 2: 3 cells, the header has 2"):
        read_openface_csv(path)


def test_the_shared_openface_outputs_read(shared_videos):
    """The two shared clips' OpenFace CSVs: one row per frame, AU and pose columns (gaze on single_face only)."""
    folder = shared_videos.parent / "openface"
    wolfgang = read_openface_csv(folder / "WolfgangLanger_Pexels.openface.csv")
    single = read_openface_csv(folder / "single_face.openface.csv")
    assert len(wolfgang["frame"]) == 472 and len(single["frame"]) == 72
    assert "AU45_r" in wolfgang and "pose_Rz" in wolfgang and "gaze_angle_x" not in wolfgang
    assert "gaze_angle_y" in single
