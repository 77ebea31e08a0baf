"""The `video-fer` command: parsing, version, one-line errors, and a real `prepare` run."""
import subprocess
import sys

import numpy as np
import pytest

import video_fer
from video_fer.cli import build_parser, main
from video_fer.cli.args import landmarker_options
from video_fer.data.cache import FaceTrackCache


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"video-fer {video_fer.__version__}"


def test_prepare_arguments_are_parsed_into_the_run_options():
    args = build_parser().parse_args(["prepare", "a.mp4", "folder", "--out", "cache", "--fps", "1", "--shard", "2/5",
                                      "--workers", "3", "--landmarker", "fan", "--landmarker-option", "detector=blazeface",
                                      "detector_options.path_to_detector=/m/b.pth", "--landmarker-option", "min_score=0.7"])
    assert args.inputs == ["a.mp4", "folder"] and args.out == "cache" and args.fps == 1.0
    assert args.shard == (2, 5) and args.workers == 3 and args.landmarker == "fan"
    assert landmarker_options(args.landmarker_option) == {
        "detector": "blazeface", "detector_options": {"path_to_detector": "/m/b.pth"}, "min_score": 0.7}


@pytest.mark.parametrize("bad, message", [
    (["--shard", "3/3"], "expected i/n with 0 <= i < n"),
    (["--workers", "0"], "expected an integer >= 1"),
    (["--fps", "-2"], "expected a number > 0"),
    (["--landmarker", "dlib"], "invalid choice: 'dlib'"),
])
def test_bad_options_are_usage_errors(bad, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "a.mp4", "--out", "cache", *bad])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_video_fer_errors_end_with_one_line_and_no_traceback(tmp_path, capsys):
    code = main(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "cache"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("video-fer prepare: error: ") and "nowhere: no such file or folder" in err


def test_unknown_landmarker_option_is_a_one_line_error(shared_videos, mediapipe_model, tmp_path, capsys):
    code = main(["prepare", str(shared_videos / "single_face.mp4"), "--out", str(tmp_path / "cache"), "--landmarker-model",
                 str(mediapipe_model), "--landmarker-option", "faces_wanted=3", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "landmarker 'mediapipe-zoom'" in err and "faces_wanted" in err


def test_precomputed_landmarker_needs_a_landmarks_folder(tmp_path, capsys):
    code = main(["prepare", str(tmp_path), "--out", str(tmp_path / "cache"), "--landmarker", "precomputed"])
    assert code == 2 and "--landmarks-dir" in capsys.readouterr().err


def test_module_entry_point_runs_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "video_fer.cli", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"video-fer {video_fer.__version__}"


def test_prepare_command_builds_a_cache_then_refuses_other_settings(shared_videos, mediapipe_model, tmp_path, capsys):
    out = tmp_path / "cache"
    common = [str(shared_videos / "single_face.mp4"), "--out", str(out), "--landmarker-model", str(mediapipe_model),
              "--fps", "6", "--min-track-frames", "5", "--no-progress"]
    assert main(["prepare", *common, "--size", "128"]) == 0
    assert "1 video(s) processed (1 with tracks, 0 skipped)" in capsys.readouterr().out
    cache = FaceTrackCache(out)
    assert len(cache.tracks) == 1 and cache.size == 128
    assert 13 <= cache.tracks[0].num_frames <= 15  # 72 frames at 30 fps = 2.4 s, sampled at 6 fps
    assert cache.read_frames(cache.tracks[0].track_id, [0]).shape == (1, 128, 128, 3)

    assert main(["prepare", *common, "--size", "256"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "size=128, this run asks for size=256" in err


def test_prepare_with_precomputed_landmarks_and_a_missing_landmark_file(shared_videos, tmp_path, capsys):
    from video_fer.faces.alignment import CANONICAL_LANDMARKS_68, five_points

    # landmarks of a 120 px face at (260, 60) for frames 10..39 of single_face.mp4; none for no_face.mp4
    frames = np.arange(10, 40)
    face = CANONICAL_LANDMARKS_68 * 120 + np.array([260.0, 60.0], np.float32)
    landmarks_dir = tmp_path / "landmarks"
    landmarks_dir.mkdir()
    np.savez(landmarks_dir / "single_face.npz", frame_index=frames, face_id=np.zeros(30, np.int64),
             landmarks=np.repeat(face[None], 30, 0), score=np.full(30, 0.9, np.float32))
    out = tmp_path / "cache"
    code = main(["prepare", str(shared_videos / "single_face.mp4"), str(shared_videos / "no_face.mp4"), "--out", str(out),
                 "--landmarker", "precomputed", "--landmarks-dir", str(landmarks_dir), "--size", "64", "--no-progress"])
    assert code == 1 and "1 of the 2 video(s) could not be read" in capsys.readouterr().err  # the other is cached
    cache = FaceTrackCache(out)
    (track,) = cache.tracks
    assert (track.first_frame, track.last_frame, track.num_frames, track.landmarker) == (10, 39, 30, "precomputed")
    eyes = five_points(cache.landmarks(track.track_id))[:, :2]
    np.testing.assert_allclose(eyes, np.broadcast_to(cache.alignment.template_pixels()[:2].numpy(), eyes.shape), atol=1e-3)
    (skipped,) = cache.skipped
    assert skipped["video_key"] == "no_face" and "no landmark file found" in skipped["reason"]
