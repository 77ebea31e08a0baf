"""Every ``video-fer`` command and recipe on the bad-input corpus (tests/bad_inputs.py).

Each test feeds one kind of bad input and asserts what a user sees: the exit code, one line that
names the input at fault (no traceback), nothing silently wrong in the outputs, nothing lost.
Commands run in this process (``video_fer.cli.main``, the recipes' ``main`` through ``run_recipe``)
where that is the same as a run from the shell, so the whole file costs little; a child process
where only a real process shows it: a file size limit, ``kill -9``, ``accelerate launch``.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import bad_inputs as B
from bad_inputs import (broken_videos, bundle_dir, corpus_dir, mediapipe, pretrain_cache, tiny_videos,  # noqa: F401
                        upright_24, upright_clip)
from video_fer.cli import main as video_fer_main
from video_fer.errors import CheckpointError, ConfigError, OutputError, VideoFerError
from video_fer.train.run import run_recipe
from scripts import load_script

PROJECT = Path(__file__).resolve().parents[1]
RECIPES = PROJECT / "recipes"
TRACEBACK = "Traceback (most recent call last)"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def assert_one_line_error(result, *needles, code: int = 2) -> None:
    """Exit ``code``, no traceback, and the output names each of ``needles`` (the input at fault)."""
    text = result.text if isinstance(result, Run) else result.stdout + result.stderr
    returncode = result.code if isinstance(result, Run) else result.returncode
    assert TRACEBACK not in text, text[-3000:]
    assert returncode == code, (returncode, text[-2000:])
    for needle in needles:
        assert str(needle) in text, (needle, text[-2000:])


@pytest.fixture
def video_fer(capsys):
    """``video-fer ARGS`` in this process -> :class:`Run` (an exception escaping ``main`` fails the test: a traceback)."""
    def run(*args) -> Run:
        capsys.readouterr()
        code = video_fer_main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def child(command, preexec=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], env=ENV, capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, preexec_fn=preexec)


# =========================================================================== recipes, loaded once
def load_recipe(name: str):
    return load_script(RECIPES / f"{name}.py", f"bad_inputs_recipe_{name}")


RECIPE_NAMES = ("pretrain_video", "finetune_expression", "finetune_va", "finetune_au")
PRETRAIN_TINY = ["model.image_size=64", "model.width=4", "model.embedding_dim=16", "model.attention_streams=2",
                 "model.stream_width=4", "train.batch_size=4", "data.pairs_per_epoch=16", "data.val_pairs=4",
                 "train.image_every=0", "data.num_workers=0", "train.log_every=1", "data.demo_frames_per_track=6",
                 "data.demo_tracks_per_identity=2"]
HEAD_TINY = ["model.image_size=64", "model.backbone.width=8", "model.backbone.embedding_dim=32",
             "model.backbone.attention_streams=2", "model.backbone.stream_width=8", "data.samples_per_face=14",
             "train.batch_size=8", "train.log_every=1", "train.threads=1", "eval.batch_size=32"]
AU_TINY = ["--config", str(RECIPES / "configs" / "finetune_au_disfa.yaml"), "--fold", "1", "model.tae.image_size=64",
           "model.tae.width=4", "model.tae.embedding_dim=16", "model.tae.attention_streams=2", "model.tae.stream_width=4",
           "train.batch_size=8", "train.embedding_batch_size=16", "data.num_workers=0", "data.check_media=false",
           "data.val_fraction=0", "train.patience=0"]
BAD_CONFIG = {"pretrain_video": ["optim.schedule=foo", "optim.betas=abc"],
              "finetune_expression": ["optim.schedule=plateau", "optim.betas=abc"],
              "finetune_va": ["optim.schedule=foo", "optim.betas=[0.9]"],
              "finetune_au": ["train.mode=foo", "train.lr=abc"]}


@pytest.fixture(scope="module")
def recipes():
    return {name: load_recipe(name) for name in RECIPE_NAMES}


@pytest.fixture(scope="module")
def disfa(tmp_path_factory) -> Path:
    from test_finetune_au import disfa_like

    root = tmp_path_factory.mktemp("disfa")
    disfa_like(root)
    return root


@pytest.fixture
def recipe(recipes, capsys, pretrain_cache, request):
    """``recipe(name, out, *overrides)``: the recipe at a tiny size in this process, with its one-line error exit."""
    def run(name: str, out: Path, *extra: str) -> Run:
        base = {"pretrain_video": PRETRAIN_TINY + [f"data.demo_dir={pretrain_cache}"],
                "finetune_expression": HEAD_TINY + ["model.head=linear"], "finetune_va": HEAD_TINY}.get(name)
        if base is None:  # finetune_au: DISFA-like labels and cache, built once
            root = request.getfixturevalue("disfa")
            base = AU_TINY + [f"data.root={root}", f"data.cache={root / 'cache'}"]
        capsys.readouterr()
        code = run_recipe(recipes[name].main, name, [*base, f"train.output_dir={out}", *map(str, extra)])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


# =========================================================================== item 1: rotated video
@pytest.fixture(scope="module", params=[90, 180, 270])
def rotation(request, corpus_dir, upright_clip) -> dict:
    degrees = request.param
    folder = corpus_dir / "rotated"
    return {"degrees": degrees, "display_rotated": B.display_rotated_copy(folder, upright_clip, degrees),
            "phone": B.phone_clip(folder, upright_clip, degrees)}


def test_every_read_path_gives_display_orientation(rotation, upright_clip):
    from video_fer.video import VideoReader

    degrees = rotation["degrees"]
    shown = torch.from_numpy(np.ascontiguousarray(np.rot90(B.read_frames_with_pyav(upright_clip), degrees // 90,
                                                           axes=(1, 2))))
    reader = VideoReader(rotation["display_rotated"])
    streamed = torch.cat([frames for _, frames in reader.iter_batches(16)])
    assert (reader.height, reader.width) == tuple(shown.shape[1:3])
    assert torch.equal(streamed, shown) and torch.equal(reader.get(np.arange(len(reader))), shown)


@pytest.fixture(scope="module")
def upright_tracked(tmp_path_factory, upright_24, bundle_dir, mediapipe) -> Path:
    table = tmp_path_factory.mktemp("upright") / "upright.csv"
    assert video_fer_main(["track", str(upright_24), "--model", str(bundle_dir), "--landmarker-model", str(mediapipe),
                           "--no-progress", "--video-out", "-o", str(table)]) == 0
    return table


def test_rotated_phone_clip_gives_the_upright_pose_landmarks_and_video(rotation, upright_tracked, bundle_dir, mediapipe,
                                                                       video_fer, tmp_path):
    from video_fer.track.table import read_table

    table = tmp_path / "phone.csv"
    result = video_fer("track", rotation["phone"], "--model", bundle_dir, "--landmarker-model", mediapipe,
                       "--no-progress", "--video-out", "-o", table)
    assert result.code == 0, result.text[-2000:]
    phone, upright = read_table(table), read_table(upright_tracked)
    assert phone["success"].sum() == upright["success"].sum() == 24
    for column in ("pose_Rx", "pose_Ry", "pose_Rz"):  # the same head pose, not turned by the rotation
        np.testing.assert_allclose(phone[column], upright[column], atol=0.05)
    annotated = B.read_frames_with_pyav(tmp_path / "phone.annotated.mp4", 1)[0].astype(float)
    reference = B.read_frames_with_pyav(upright_tracked.with_name("upright.annotated.mp4"), 1)[0].astype(float)
    assert annotated.shape == reference.shape and np.abs(annotated - reference).mean() < 10

    landmarks = {}
    for mode, extra in (("stream", []), ("fps", ["--fps", "29"])):  # every frame: PyAV; --fps: decord's get
        out = tmp_path / mode
        result = video_fer("prepare", rotation["phone"], "--out", out, "--landmarker-model", mediapipe, "--no-progress",
                           *extra)
        assert result.code == 0, result.text[-2000:]
        landmarks[mode] = np.concatenate([np.load(p)["landmarks_source"] for p in sorted((out / "tracks").glob("*.npz"))])
        assert landmarks[mode][..., 0].max() < 640 and landmarks[mode][..., 1].max() < 360  # the display is 640x360
    np.testing.assert_allclose(landmarks["stream"].mean(axis=(0, 1)), landmarks["fps"].mean(axis=(0, 1)), atol=3)


# =========================================================================== item 2: orphan workers
def test_prepare_workers_die_with_their_parent(tmp_path):
    clips = [B.shared_file(*B.LONG_CLIP), B.shared_file(*B.UPRIGHT_CLIP)]
    landmarks = tmp_path / "landmarks"  # precomputed landmarks: the workers start without MediaPipe
    landmarks.mkdir()
    for clip, csv in zip(clips, (B.LONG_OPENFACE_CSV, B.OPENFACE_CSV)):
        (landmarks / f"{clip.stem}.csv").write_bytes(B.shared_file(*csv).read_bytes())
    parent = subprocess.Popen([sys.executable, "-m", "video_fer.cli", "prepare", *map(str, clips), "--out",
                               str(tmp_path / "cache"), "--workers", "2", "--no-progress", "--landmarker", "precomputed",
                               "--landmarks-dir", str(landmarks)], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    workers, deadline = [], time.time() + 120
    try:
        while time.time() < deadline and not (len(workers) == 2 and list((tmp_path / "cache").rglob(".*partial*"))):
            workers = [pid for pid in _children(parent.pid) if "spawn_main" in _cmdline(pid)]  # not the resource tracker
            time.sleep(0.2)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert len(workers) == 2, "the two workers never started"
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    alive = [pid for pid in workers if _alive(pid)]
    for pid in alive:  # ours: end them by pid
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text("latin-1")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# =========================================================================== items 3, 9: prepare's skips
def test_a_skipped_video_is_printed_and_retried_when_its_file_changes(tmp_path, upright_clip, video_fer):
    videos, landmarks = tmp_path / "videos", tmp_path / "landmarks"
    videos.mkdir()
    landmarks.mkdir()
    (landmarks / "clip.csv").write_bytes(B.shared_file(*B.OPENFACE_CSV).read_bytes())
    (videos / "clip.mp4").write_bytes(b"")
    command = ("prepare", videos, "--out", tmp_path / "cache", "--landmarker", "precomputed", "--landmarks-dir",
               landmarks, "--no-progress")
    first = video_fer(*command)
    assert_one_line_error(first, "clip.mp4: skipped: ", "file is empty", code=1)  # item 9: on the console, exit 1
    (videos / "clip.mp4").write_bytes(upright_clip.read_bytes())  # what the message says to do
    second = video_fer(*command)
    assert second.code == 0 and "1 video(s) processed (1 with tracks" in second.out, second.text
    assert json.loads((tmp_path / "cache" / "manifests" / "clip.json").read_text())["status"] == "ok"
    assert "0 video(s) processed" in video_fer(*command).out  # done is done

    from video_fer.data.prepare import needs_retry, source_stamp

    skipped = {"status": "skipped", **source_stamp(videos / "clip.mp4")}
    assert not needs_retry(skipped, videos / "clip.mp4") and needs_retry(skipped, videos / "clip.mp4", True)
    assert needs_retry({"status": "skipped"}, videos / "clip.mp4")  # from an older version: no stamp
    assert not needs_retry({"status": "ok"}, videos / "clip.mp4", True)


def test_prepare_finishes_the_others_then_exits_1_naming_the_unreadable_video(tmp_path, upright_clip, video_fer):
    videos, landmarks = tmp_path / "videos", tmp_path / "landmarks"
    videos.mkdir()
    landmarks.mkdir()
    for name in ("good", "bad"):
        (landmarks / f"{name}.csv").write_bytes(B.shared_file(*B.OPENFACE_CSV).read_bytes())
    (videos / "good.mp4").write_bytes(upright_clip.read_bytes())
    B.text_as_video(videos).rename(videos / "bad.mp4")
    command = ("prepare", videos, "--out", tmp_path / "cache", "--landmarker", "precomputed", "--landmarks-dir",
               landmarks, "--no-progress")
    first = video_fer(*command)
    assert_one_line_error(first, f"{videos / 'bad.mp4'}: skipped: ", "1 of the 2 video(s) could not be read",
                          "skipped.csv", code=1)
    assert "good.mp4: skipped" not in first.text and "2 video(s) processed (1 with tracks, 1 skipped)" in first.out
    manifests = tmp_path / "cache" / "manifests"
    assert json.loads((manifests / "good.json").read_text())["status"] == "ok"
    assert json.loads((manifests / "bad.json").read_text())["status"] == "skipped"
    (videos / "bad.mp4").write_bytes(upright_clip.read_bytes())  # replaced: the rerun retries it, and only it
    second = video_fer(*command)
    assert second.code == 0 and "1 video(s) processed (1 with tracks, 0 skipped), 1 already done" in second.out, \
        second.text
    assert json.loads((manifests / "bad.json").read_text())["status"] == "ok"


def test_prepare_prints_every_skip_and_exits_1_when_no_input_could_be_read(broken_videos, tmp_path, mediapipe,
                                                                            video_fer):
    result = video_fer("prepare", broken_videos["empty"], broken_videos["not_a_video"], "--out", tmp_path / "cache",
                       "--landmarker-model", mediapipe, "--no-progress")
    assert_one_line_error(result, f"{broken_videos['empty']}: skipped: ", f"{broken_videos['not_a_video']}: skipped: ",
                          "none of the 2 video(s) could be read", code=1)


# =========================================================================== items 4, 5: one clear line
@pytest.mark.parametrize("case", ["missing", "empty", "not_a_video", "truncated", "corrupt_header", "garbled_data",
                                  "garbled_tail"])
def test_track_names_each_unreadable_clip(broken_videos, bundle_dir, mediapipe, tmp_path, video_fer, case):
    result = video_fer("track", broken_videos[case], "--model", bundle_dir, "--landmarker-model", mediapipe, "-o",
                       tmp_path, "--no-progress")
    assert_one_line_error(result, broken_videos[case].name, code=2 if case == "missing" else 1)


def test_tiny_valid_videos_are_decoded_and_unreadable_crop_sizes_refused(tiny_videos, tmp_path, video_fer):
    from video_fer.video import VideoReader

    for side, path in tiny_videos.items():  # decord misreads these widths; PyAV serves them
        reader = VideoReader(path)
        frames = reader.get([0, 7, 3])
        assert frames.shape == (3, side, side, 3) and np.array_equal(frames[2].numpy(), B.read_frames_with_pyav(path)[3])
        assert torch.equal(torch.cat([f for _, f in reader.iter_batches(4)]), reader.get(np.arange(8)))
    result = video_fer("prepare", tiny_videos[1], "--out", tmp_path / "cache", "--size", "48", "--landmarker",
                       "precomputed", "--landmarks-dir", tmp_path)
    assert_one_line_error(result, "--size 48: the cache's reader (decord) cannot decode 48 px tracks", "e.g. ")
    assert not (tmp_path / "cache").exists()


def test_a_trimmed_clip_counts_its_shown_frames(corpus_dir, upright_clip):
    from video_fer.video import VideoReader

    reader = VideoReader(B.trimmed_clip(corpus_dir / "trimmed", upright_clip))  # the edit list shows 36 of 72
    assert len(reader) == 36 and reader.timestamps[-1] == pytest.approx(35 / 30, abs=1e-3)
    streamed = torch.cat([frames for _, frames in reader.iter_batches(16)])
    assert torch.equal(streamed, reader.get(np.arange(36)))
    assert torch.equal(streamed, torch.from_numpy(B.read_frames_with_pyav(upright_clip, 36)))


@pytest.mark.parametrize("make", ["binary", "openface_nan", "openface_inf", "npz_nan", "npz_inf"])
def test_bad_precomputed_landmarks_skip_the_video_naming_the_file(make, tmp_path, upright_clip, video_fer):
    folder = tmp_path / "landmarks"
    path = {"binary": lambda: B.binary_landmark_file(folder, "single_face"),
            "openface_nan": lambda: B.nonfinite_openface_csv(folder, "single_face", B.shared_file(*B.OPENFACE_CSV)),
            "openface_inf": lambda: B.nonfinite_openface_csv(folder, "single_face", B.shared_file(*B.OPENFACE_CSV),
                                                             "inf"),
            "npz_nan": lambda: B.nonfinite_landmark_npz(folder, "single_face"),
            "npz_inf": lambda: B.nonfinite_landmark_npz(folder, "single_face", value=np.inf)}[make]()
    result = video_fer("prepare", upright_clip, "--out", tmp_path / "cache", "--landmarker", "precomputed",
                       "--landmarks-dir", folder, "--no-progress")
    assert_one_line_error(result, path, "not a text CSV" if make == "binary" else "NaN or infinite", code=1)
    assert not list((tmp_path / "cache" / "tracks").glob("*.npz"))  # skipped: nothing non-finite written


def test_evaluate_names_a_truncated_predictions_file_and_a_damaged_run_json(tmp_path, video_fer):
    run = B.au_run(tmp_path / "run")
    broken = B.truncated_file(run / "fold_2" / "predictions.npz")
    assert_one_line_error(video_fer("evaluate", run), broken, "damaged or incomplete")
    run = B.au_run(tmp_path / "run2")
    B.truncated_file(run / "run.json")
    assert_one_line_error(video_fer("evaluate", run), run / "run.json", "damaged")


FAULTS = ("read_only", "file_as_folder")


def _fault(kind: str, tmp_path: Path):
    """(output folder to use, the folder the message must name, context manager) for a filesystem fault."""
    import contextlib

    if kind == "read_only":
        return tmp_path / "ro" / "out", tmp_path / "ro" / "out", B.read_only_dir(tmp_path / "ro")
    B.file_where_folder_should_be(tmp_path / "a_file")
    return tmp_path / "a_file" / "out", tmp_path / "a_file", contextlib.nullcontext()


@pytest.mark.parametrize("fault", FAULTS)
def test_commands_report_filesystem_faults_in_one_line(fault, tmp_path, bundle_dir, mediapipe, upright_24, video_fer,
                                                       corpus_dir):
    out, named, context = _fault(fault, tmp_path)
    inputs = B.bundle_inputs(corpus_dir / "bundle_inputs") if not (corpus_dir / "bundle_inputs").exists() else \
        {name: corpus_dir / "bundle_inputs" / name for name in ("encoder", "head_au")}
    with context:
        runs = {
            "prepare": video_fer("prepare", upright_24, "--out", out, "--landmarker-model", mediapipe, "--no-progress"),
            "track": video_fer("track", upright_24, "--model", bundle_dir, "--landmarker-model", mediapipe, "-o",
                               out / "t.csv", "--no-progress"),
            "evaluate": video_fer("evaluate", B.au_run(tmp_path / "run"), "--out", out),
            "bundle": video_fer("bundle", "--encoder", inputs["encoder"], "--au", inputs["head_au"], "-o", out),
        }
    for command, result in runs.items():  # an output problem stops the whole command: exit 2, also for track
        assert_one_line_error(result, named, f"video-fer {command}: error: ")


@pytest.mark.parametrize("command", ["prepare", "track", "evaluate", "bundle"])
def test_commands_report_a_file_size_limit_in_one_line(command, tmp_path, upright_clip, upright_24, bundle_dir,
                                                       mediapipe):
    """A real EFBIG (RLIMIT_FSIZE in the child): what a full disk looks like to every writer."""
    inputs = {"evaluate": ["evaluate", B.au_run(tmp_path / "run"), "--out", tmp_path / "out"],
              "track": ["track", upright_24, "--model", bundle_dir, "--landmarker-model", mediapipe, "--no-progress",
                        "-o", tmp_path / "out" / "t.csv"]}
    if command == "prepare":
        landmarks = tmp_path / "landmarks"
        landmarks.mkdir()
        (landmarks / "single_face.csv").write_bytes(B.shared_file(*B.OPENFACE_CSV).read_bytes())
        inputs[command] = ["prepare", upright_clip, "--out", tmp_path / "out", "--landmarker", "precomputed",
                           "--landmarks-dir", landmarks, "--no-progress"]
    if command == "bundle":
        parts = B.bundle_inputs(tmp_path / "parts")
        inputs[command] = ["bundle", "--encoder", parts["encoder"], "--au", parts["head_au"], "-o", tmp_path / "out"]
    result = child([sys.executable, "-m", "video_fer.cli", *inputs[command]], preexec=B.file_size_limit(2_000))
    assert_one_line_error(result, tmp_path / "out", "file too large (file size limit 2000 bytes)")


def test_disk_full_while_writing_a_table_or_a_log_names_it(tmp_path):
    from video_fer.track.table import CsvTableWriter
    from video_fer.train.logs import CsvLog

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

    import csv

    table = CsvTableWriter(tmp_path / "t.csv", ["frame"])
    table._writer = csv.writer(FullDisk())  # the disk fills mid-clip
    with pytest.raises(OutputError, match=rf"{tmp_path / 't.csv'}: no space left on device"):
        table.write({"frame": np.arange(3)})
    table.close(ok=False)
    assert list(tmp_path.iterdir()) == []  # the temp file is gone
    log = CsvLog(tmp_path / "losses.csv")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.open", lambda *args, **kwargs: FullDisk())
        with pytest.raises(OutputError, match=rf"{tmp_path / 'losses.csv'}: no space left on device"):
            log.write({"step": 1})


def test_disk_full_while_saving_a_model_says_so_with_the_path(monkeypatch, tmp_path):
    from video_fer.models.checkpoint import save_model
    from video_fer.models.tae import FaceActionEncoder, TAEConfig

    B.raise_no_space(monkeypatch, "video_fer.models.checkpoint.save_file", error=B.safetensors_full)
    with pytest.raises(OutputError, match=r"no space left on device") as caught:
        save_model(FaceActionEncoder(TAEConfig(**B.TINY_BUNDLE)), tmp_path / "encoder")
    assert str(tmp_path / "encoder" / "model.safetensors") in str(caught.value)
    assert not list((tmp_path / "encoder").iterdir())  # no half file


def test_disk_full_while_saving_a_checkpoint_says_so_with_the_path(monkeypatch, tmp_path):
    from accelerate import Accelerator

    from video_fer.io import describe_os_error
    from video_fer.train.checkpoints import list_checkpoints, save_checkpoint

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(3, 2))
    save_checkpoint(accelerator, tmp_path, 1)
    # torch's C++ writer says only "unexpected pos" when the disk is full; the disk then has (almost) nothing free
    B.raise_no_space(monkeypatch, "accelerate.checkpointing.save", error=B.torch_writer_full)
    monkeypatch.setattr("video_fer.io.shutil.disk_usage", lambda path: SimpleNamespace(free=4096))
    with pytest.raises(OutputError) as caught:
        save_checkpoint(accelerator, tmp_path, 2)
    message = str(caught.value)
    assert "checkpoint of step 2: " in message and str(tmp_path / "checkpoints" / ".step_00000002.tmp") in message
    assert "no space left on device" in message and "the last good checkpoint is" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]  # the temp folder is gone
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert describe_os_error(OSError(errno.EROFS, "Read-only file system", "/x")).startswith("/x: read-only file system")


# =========================================================================== recipes (items 4, 5, 10)
@pytest.mark.parametrize("name,override", [(name, value) for name, values in BAD_CONFIG.items() for value in values])
def test_recipes_check_config_values_before_anything_is_built(name, override, recipe, tmp_path):
    result = recipe(name, tmp_path / "out", override)
    assert_one_line_error(result, override.split("=")[0], f"{name}: error: ")
    assert not (tmp_path / "out").exists()  # nothing written, not even config.json


@pytest.mark.parametrize("name", RECIPE_NAMES)
@pytest.mark.parametrize("fault", FAULTS)
def test_recipes_report_filesystem_faults_in_one_line(name, fault, recipe, tmp_path):
    out, named, context = _fault(fault, tmp_path)
    with context:
        result = recipe(name, out, "train.max_steps=1" if name != "finetune_au" else "train.epochs=1")
    assert_one_line_error(result, named, f"{name}: error: ")


def test_a_recipe_error_is_one_line_run_directly_and_under_accelerate_launch(tmp_path):
    """Run directly: our line and exit 2. ``accelerate launch -q``: our line only, but accelerate's exit code (1);
    without ``-q`` accelerate itself adds its CalledProcessError traceback (documented in the README)."""
    command = [RECIPES / "finetune_va.py", f"train.output_dir={tmp_path / 'out'}", "optim.schedule=foo"]
    line = "finetune_va: error: optim.schedule='foo': choose 'cosine' or 'constant'"
    direct = child([sys.executable, *command])
    assert_one_line_error(direct, line)
    assert direct.stderr.strip() == line and direct.stdout == ""
    launched = child([sys.executable, "-m", "accelerate.commands.launch", "-q", "--cpu", "--num_processes", "1",
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *command])
    assert_one_line_error(launched, line, code=1)
    assert launched.stderr.strip() == line


def test_debug_shows_the_traceback(recipes, tmp_path, video_fer):
    with pytest.raises(ConfigError, match="optim.schedule='foo'"):
        run_recipe(recipes["finetune_va"].main, "finetune_va", [f"train.output_dir={tmp_path}", "optim.schedule=foo",
                                                                "--debug"])
    with pytest.raises(OutputError, match="not a directory"):
        video_fer_main(["evaluate", str(B.au_run(tmp_path / "run")), "--out", str(tmp_path / "run" / "run.json" / "x"),
                        "--debug"])


def test_a_garbled_track_in_pretraining_is_named_or_skipped(recipe, pretrain_cache, tmp_path):
    import shutil

    from video_fer.data.cache import FaceTrackCache
    from video_fer.data.pairs import FacePairSampler
    from video_fer.data.pretrain_dataset import FacePairDataset

    cache = tmp_path / "cache"
    shutil.copytree(pretrain_cache, cache)
    bad = [B.garble_cache_track(cache, which) for which in (0, 2)]  # one track of each identity
    result = recipe("pretrain_video", tmp_path / "run", f"data.cache={cache}", "train.max_steps=2")
    assert_one_line_error(result, "cannot decode crops", "data.skip_bad_tracks=true")
    assert any(f"{path}: cannot decode crops" in result.err for path in bad), result.err
    result = recipe("pretrain_video", tmp_path / "skip", f"data.cache={cache}", "train.max_steps=2",
                    "data.skip_bad_tracks=true")
    assert result.code == 0 and "skipping a track (data.skip_bad_tracks=true)" in result.err, result.text[-2000:]
    bad = bad[0]

    tracks = FaceTrackCache(cache).tracks
    sampler = FacePairSampler(tracks, pairs_per_epoch=8)
    bad_id = bad.stem
    dataset = FacePairDataset(FaceTrackCache(cache), sampler, skip_bad_tracks=True)
    item = dataset[(bad_id, 0, 5)]  # taken from the next track
    following = sampler.track_ids[(sampler.track_ids.index(bad_id) + 1) % len(tracks)]
    assert torch.equal(item["source"], FaceTrackCache(cache).read_frames(following, [0])[0])
    assert dataset.bad_tracks == {bad_id}
    guided = FacePairDataset(FaceTrackCache(cache), sampler, skip_bad_tracks=True, landmarks=True)
    item = guided[(bad_id, 0, 5)]  # the landmarks come with the frames actually read
    expected = torch.from_numpy(FaceTrackCache(cache).landmarks(following)[[0, 5]]).float()
    assert torch.equal(item["source_landmarks"], expected[0]) and torch.equal(item["target_landmarks"], expected[1])


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumed(recipe, tmp_path):
    out = tmp_path / "run"
    settings = ("train.save_every=2", "train.keep_checkpoints=2")
    assert recipe("finetune_expression", out, "train.max_steps=4", *settings).code == 0
    damaged, previous = B.damage_latest_checkpoint(out)
    named = recipe("finetune_expression", out, "train.max_steps=6", *settings, "--resume", damaged)
    assert_one_line_error(named, damaged, "the checkpoint is damaged")  # asked for by name: no silent fallback
    result = recipe("finetune_expression", out, "train.max_steps=6", *settings, "--resume")
    assert result.code == 0, result.text[-2000:]
    assert f"{damaged} is damaged" in result.out and f"resuming from {previous}" in result.out
    assert "resumed from" in result.out and "(step 2)" in result.out
    assert (out / "checkpoints" / ".step_00000004.damaged").is_dir()  # kept for inspection, never resumed
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000006"]


def test_resume_followed_by_an_override_and_an_override_after_a_flag(recipes, tmp_path):
    from video_fer.train.run import recipe_parser

    parser = recipe_parser("x", RECIPES / "configs" / "x.yaml")
    args = parser.parse_args(["--resume", "train.epochs=3"])
    assert args.resume == "auto" and args.overrides == ["train.epochs=3"]
    args = parser.parse_args(["train.epochs=3", "--config", "x.yaml", "train.seed=1", "--resume"])
    assert args.config == "x.yaml" and args.overrides == ["train.epochs=3", "train.seed=1"] and args.resume == "auto"
    folder = tmp_path / "odd=name"  # an existing folder is a folder, even with '=' in its name
    folder.mkdir()
    assert parser.parse_args(["--resume", str(folder)]).resume == str(folder)


def test_a_resumed_pretraining_writes_each_validation_once(recipe, tmp_path):
    from video_fer.train.logs import read_csv_log

    out = tmp_path / "run"  # 4 steps per epoch: the step-4 checkpoint precedes that epoch's validation
    assert recipe("pretrain_video", out, "train.max_steps=4", "train.save_every=4").code == 0
    result = recipe("pretrain_video", out, "train.max_steps=8", "train.save_every=4", "--resume")
    assert result.code == 0, result.text[-2000:]
    assert [row["step"] for row in read_csv_log(out / "validation.csv")] == ["4", "8"]
    assert json.loads((out / "config.json").read_text())["train"]["max_steps"] == 8


def test_a_recipe_failing_on_its_data_writes_nothing(recipe, tmp_path):
    result = recipe("finetune_va", tmp_path / "out", "data.kind=folder", f"data.root={tmp_path / 'nowhere'}")
    assert_one_line_error(result, "nowhere")
    assert not (tmp_path / "out" / "config.json").exists()


# =========================================================================== item 6: bundles
def test_bundles_with_nonfinite_weights_or_short_names_are_rejected(corpus_dir, tmp_path, upright_24, mediapipe,
                                                                    video_fer):
    from video_fer.track.bundle import load_bundle

    for value in (float("nan"), float("inf")):
        folder = B.nonfinite_bundle(corpus_dir / f"nonfinite_{value}", value)
        with pytest.raises(CheckpointError, match=r"weights heads\.expression\.\S+ hold NaN or infinite values"):
            load_bundle(folder)
    short = B.short_names_bundle(corpus_dir / "short")
    with pytest.raises(CheckpointError, match=r"bundle.json: head 'au' gives 12 outputs but names 2"):
        load_bundle(short)
    assert_one_line_error(video_fer("track", upright_24, "--model", corpus_dir / "nonfinite_nan", "--landmarker-model",
                                    mediapipe, "-o", tmp_path / "t.csv"), "nonfinite_nan", "NaN or infinite")
    assert not (tmp_path / "t.csv").exists()

    parts = B.bundle_inputs(tmp_path / "parts")
    for head, words in (("head_au_nan", "NaN or infinite"), ("head_au_short", "gives 12 outputs but names 2")):
        result = video_fer("bundle", "--encoder", parts["encoder"], "--au", parts[head], "-o", tmp_path / head)
        assert_one_line_error(result, parts[head], words)
        assert not (tmp_path / head).exists()


# =========================================================================== item 7: partial work is kept
def test_track_keeps_the_rows_of_a_stream_that_ends_early(corpus_dir, upright_clip, bundle_dir, mediapipe, tmp_path,
                                                          video_fer):
    from video_fer.track.table import read_table
    from video_fer.video import VideoReader

    clip = B.damaged_middle_clip(corpus_dir / "damaged", upright_clip)
    assert len(VideoReader(clip)) == 48  # opens: first and last frames decode
    decodable = 0
    import av

    with pytest.raises(av.error.FFmpegError), av.open(str(clip)) as container:
        for _ in container.decode(video=0):
            decodable += 1
    assert 0 < decodable < 48
    result = video_fer("track", clip, "--model", bundle_dir, "--landmarker-model", mediapipe, "-o", tmp_path / "t.csv",
                       "--no-progress")
    assert_one_line_error(result, clip, f"decoding stopped after frame {decodable - 1} of 48",
                          f"kept the {decodable} rows up to frame {decodable - 1}", code=1)
    assert read_table(tmp_path / "t.csv")["frame"].tolist() == list(range(decodable))


def test_batches_held_for_a_person_decision_are_kept_when_the_stream_ends_early():
    """A batch waiting for a new face's person (track's stage 1) still gives its frames when the stream stops."""
    from video_fer.faces.boxes import boxes_from_points
    from video_fer.faces.identity import PersonTracker
    from video_fer.faces.types import Face
    from video_fer.track.stages import with_person_ids
    from video_fer.video import StreamEndedError

    base = np.random.default_rng(0).uniform(0, 60, (68, 2)).astype(np.float32)

    def face_at(x: float) -> Face:
        landmarks = base + np.array([x, 100], np.float32)
        return Face(box=boxes_from_points(landmarks[None])[0], score=0.9, landmarks=landmarks)

    def chunk(first: int, faces_per_frame: list) -> SimpleNamespace:
        indices = np.arange(first, first + len(faces_per_frame))
        return SimpleNamespace(frame_indices=indices, timestamps=indices / 25.0,
                               frames=np.zeros((len(indices), 8, 8, 3), np.uint8), faces=faces_per_frame,
                               source=np.zeros(len(indices), np.int8))

    def stream():
        yield chunk(0, [[face_at(100)] for _ in range(8)])  # one person, confirmed after 5 faces
        yield chunk(8, [[face_at(100), face_at(400)] for _ in range(2)])  # a second face: undecided when it stops
        raise StreamEndedError("decoding stopped after frame 9 of 40", 9)

    batches = []
    with pytest.raises(StreamEndedError, match="frame 9"):
        for batch in with_person_ids(stream(), PersonTracker(25.0, min_frames=5)):
            batches.append(batch)
    assert [b.frame_indices.tolist() for b in batches] == [list(range(8)), [8, 9]]
    assert batches[1].face_ids.tolist() == [0, 0]  # the first person's faces; the 2-face track is dropped


def test_track_removes_a_stale_temp_file_and_refuses_o_csv_with_two_clips(upright_24, upright_clip, bundle_dir,
                                                                          mediapipe, tmp_path, video_fer):
    stale = B.stale_track_temp(tmp_path, "t.csv")
    result = video_fer("track", upright_24, "--model", bundle_dir, "--landmarker-model", mediapipe, "-o",
                       tmp_path / "t.csv", "--no-progress")
    assert result.code == 0 and not stale.exists() and (tmp_path / "t.csv").is_file()
    result = video_fer("track", upright_24, upright_clip, "--model", bundle_dir, "--landmarker-model", mediapipe, "-o",
                       tmp_path / "two.csv", "--no-progress")
    assert_one_line_error(result, "two.csv", "names one table but 2 clips were given")
    assert not (tmp_path / "two.csv").exists()
    result = video_fer("track", upright_24, "--model", bundle_dir, "-o", tmp_path / "t.parquet")
    assert_one_line_error(result, "t.parquet", "give --format parquet")


# =========================================================================== item 8: permissions
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_usual_permissions(umask, mode, tmp_path, bundle_dir, monkeypatch):
    from accelerate import Accelerator

    from video_fer import io
    from video_fer.track.bundle import load_bundle, save_bundle
    from video_fer.train.checkpoints import save_checkpoint

    previous = os.umask(umask)
    try:
        monkeypatch.setattr(os, "umask", _no_umask_calls)  # read from /proc, never by set-and-restore
        assert io.current_umask() == umask
        save_bundle(load_bundle(bundle_dir), tmp_path / "bundle")  # bundle.json (atomic_write), safetensors (0600 itself)
        accelerator = Accelerator(cpu=True)
        accelerator.prepare(torch.nn.Linear(3, 2))
        save_checkpoint(accelerator, tmp_path / "run", 1, extra={"progress.json": {"epoch": 1}})
    finally:
        monkeypatch.undo()
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"bundle.json", "model.safetensors", "progress.json", "random_states_0.pkl"}
    assert {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {str(p.relative_to(tmp_path)): oct(mode) for p in files}


def _no_umask_calls(*args):
    raise AssertionError("os.umask called: racy (another thread creating a file meanwhile gets umask 0)")


def test_cache_files_get_the_usual_permissions(tmp_path, upright_clip, video_fer):
    landmarks = tmp_path / "landmarks"
    landmarks.mkdir()
    (landmarks / "single_face.csv").write_bytes(B.shared_file(*B.OPENFACE_CSV).read_bytes())
    previous = os.umask(0o022)
    try:
        assert video_fer("prepare", upright_clip, "--out", tmp_path / "cache", "--landmarker", "precomputed",
                         "--landmarks-dir", landmarks, "--no-progress").code == 0
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path / "cache")): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert {"cache.json", "index.csv", "skipped.csv", "manifests/single_face.json"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


# =========================================================================== item 10: the README's model cache
def test_the_model_cache_is_where_the_readme_says(tmp_path, monkeypatch):
    from video_fer.faces.model_files import MEDIAPIPE_FACE_LANDMARKER, resolve_model_file

    monkeypatch.setenv("VIDEO_FER_CACHE", str(tmp_path))
    monkeypatch.delenv("VIDEO_FER_MEDIAPIPE_MODEL", raising=False)
    (tmp_path / "face_landmarker.task").write_bytes(B.shared_file(*B.MEDIAPIPE_MODEL).read_bytes())
    assert resolve_model_file(MEDIAPIPE_FACE_LANDMARKER, download=False) == tmp_path / "face_landmarker.task"
    assert "the folder `$VIDEO_FER_CACHE` itself (default `~/.cache/video_fer/models/`)" in \
        (PROJECT / "README.md").read_text()


def test_corpus_faults_are_real(tmp_path):
    result = child([sys.executable, "-c", "open('big', 'wb').write(b'x' * 100_000)"], preexec=B.file_size_limit(10_000),
                   cwd=tmp_path)
    assert "[Errno 27] File too large" in result.stderr
    with B.read_only_dir(tmp_path / "ro") as folder:
        with pytest.raises(OSError):
            (folder / "x").write_text("x")
    assert issubclass(OutputError, OSError) and issubclass(OutputError, VideoFerError)
    assert not issubclass(ConfigError, OSError)
