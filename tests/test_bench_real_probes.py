"""tools/bench_real_probes.py end to end at a tiny size: three short clips cut from a shared video, one model."""
import json
from pathlib import Path

import numpy as np
import pytest

from scripts import load_script

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_real_probes.py"


def load_tool():
    return load_script(TOOL, "bench_real_probes")


def cut_clips(video: Path, folder: Path, names: list[str], frames_each: int) -> None:
    """Consecutive pieces of ``video`` written as short mp4 clips (PyAV)."""
    import av

    from video_fer.video import VideoReader

    reader = VideoReader(video)
    folder.mkdir(parents=True)
    for number, name in enumerate(names):
        frames = reader.get(np.arange(number * frames_each, (number + 1) * frames_each)).numpy()
        with av.open(str(folder / f"{name}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
    reader.close()


@pytest.mark.usefixtures("one_torch_thread")
def test_the_benchmark_writes_its_tables_and_a_rerun_reuses_everything(tmp_path, shared_videos, mediapipe_model):
    shared = tmp_path / "shared"
    cut_clips(shared_videos / "single_face.mp4", shared / "data" / "pretrain", ["clip_a", "clip_b", "clip_c"], 20)
    (shared / "models").symlink_to(mediapipe_model.parents[1], target_is_directory=True)
    tool = load_tool()
    args = ["--out", str(tmp_path / "run"), "--shared", str(shared), "--test-clips", "clip_c", "--size", "64",
            "--source-size", "128", "--steps", "4", "--batch-size", "2", "--width", "4", "--embedding-dim", "8",
            "--streams", "2", "--stream-width", "4", "--models", "tae_landmarks", "--curve-points", "2",
            "--frame-step", "1", "--pairs-per-track", "10", "--extra", "tcae_small_lr=model.attention_streams=0,optim.lr=1e-5"]
    assert tool.main(args) == 0
    results = json.loads((tmp_path / "run" / "bench_real_probes.json").read_text())
    assert set(results["encoders"]) == {"untrained", "tae_landmarks", "tcae_small_lr"}
    assert set(results["baselines"]) == {"hog", "pixels_pca", "landmarks"}
    assert results["data"]["test_clips"] == ["clip_c"] and results["data"]["test_frames"] > 0
    tae = results["encoders"]["tae_landmarks"]
    assert set(tae["pose"]["angle_r"]) == {"pitch", "yaw", "roll"} and tae["action"]["au_r"]
    assert [point["step"] for point in results["curves"]["tae_landmarks"]] == [2, 4]
    assert results["pretraining"]["tae_landmarks"]["cpu_minutes"] > 0
    assert "landmark_action_field" in (tmp_path / "run" / "models" / "tae_landmarks" / "losses.csv").read_text()
    assert (tmp_path / "run" / "real_cache" / "references" / "clip_a__t0000.npz").is_file()
    assert "| tae_landmarks |" in (tmp_path / "run" / "bench_real_probes.md").read_text()
    assert (tmp_path / "run" / "attention_fields.png").stat().st_size > 0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0  # a pretrained row has a curve
    spent = (tmp_path / "run" / "pretraining.json").read_text()
    stored = tmp_path / "run" / "models" / "tae_landmarks" / "probes" / "step_00000004.json"
    probed = stored.read_text()
    # finished rows are not pretrained again, probed checkpoints not probed again; an exported encoder is a row
    exported = tmp_path / "run" / "models" / "tae_landmarks" / "encoder"
    assert tool.main(args + ["--encoder", f"exported={exported}"]) == 0
    assert (tmp_path / "run" / "pretraining.json").read_text() == spent and stored.read_text() == probed
    rerun = json.loads((tmp_path / "run" / "bench_real_probes.json").read_text())
    assert rerun["encoders"]["tae_landmarks"] == results["encoders"]["tae_landmarks"]
    assert rerun["encoders"]["exported"] == rerun["encoders"]["tae_landmarks"]  # the last checkpoint's weights
    assert rerun["given_encoders"]["exported"]["saw_test_clips"] is False  # pretrained on the fit clips' view
    assert rerun["given_encoders"]["exported"]["drawn"]  # its run's last checkpoint is in the picture
    assert "| exported (given; test clips held out) |" in (tmp_path / "run" / "bench_real_probes.md").read_text()
    assert "Learning curves" in tool.report(rerun)
    assert "Learning curves" not in tool.report({**rerun, "curves": {}})  # given encoders alone: no empty table
    whole = str(tmp_path / "run" / "real_cache_64")  # the cache holding the test clip too
    assert tool.saw_test_clips({"cache": whole, "excluded_videos": []}, ["clip_c"]) is True
    assert tool.saw_test_clips({"cache": whole, "excluded_videos": ["clip_c"]}, ["clip_c"]) is False
    assert tool.saw_test_clips({"cache": whole}, ["clip_c"]) is None  # an export that recorded no exclusion
    with pytest.raises(SystemExit, match="name 'tae_landmarks' is taken"):
        tool.parse_encoders([f"tae_landmarks={exported}"], {"tae_landmarks", "untrained"})
