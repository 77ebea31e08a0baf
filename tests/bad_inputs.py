"""The bad-input corpus: every bad file, fault and hostile input the tests feed the commands, built at test time.

Each case is a function that writes one bad input into a folder and returns its path; the session
fixtures at the end build them once (seconds in all) for ``tests/test_bad_inputs.py``. Cases made
from the shared real clips skip with a clear reason when ``../shared`` is absent; the others are
synthesised with PyAV (libx264), numpy and the package's own writers. No ffmpeg command-line tool
is needed: display rotations are written with PyAV's ``VideoStream.set_display_rotation``.

Filesystem faults without root or a special filesystem:

- read-only folder: ``chmod 0o555``; root ignores mode bits, so as root the folder is made
  immutable (``chattr +i``, undone on exit), else the case skips;
- disk full: :func:`file_size_limit` (``RLIMIT_FSIZE`` in a child process: every writer, Python,
  C++ or Rust, fails with a real ``EFBIG`` "File too large") and :func:`raise_no_space` (in-process:
  the named writers raise what they raise on a full disk). Never aim a writer at ``/dev/full``:
  atomic writers would replace the device with a regular file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
UPRIGHT_CLIP = ("data", "videos", "single_face.mp4")  # 640x360, 72 frames at 30 fps, one upright face
LONG_CLIP = ("data", "videos", "WolfgangLanger_Pexels.mp4")  # 472 frames
OPENFACE_CSV = ("data", "openface", "single_face.openface.csv")
LONG_OPENFACE_CSV = ("data", "openface", "WolfgangLanger_Pexels.openface.csv")
MEDIAPIPE_MODEL = ("models", "mediapipe", "face_landmarker.task")


def shared_file(*parts: str) -> Path:
    """A file of the shared assets, or a pytest skip naming what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared test assets beside the project); not present here")
    return path


# ----------------------------------------------------------------------------------- videos
def write_video(path: Path, frames: np.ndarray, fps: int = 25, pix_fmt: str = "yuv420p", rotation: int | None = None,
                gop: int | None = None) -> Path:
    """uint8 ``(T, H, W, 3)`` RGB -> H.264 mp4; ``rotation``: display matrix, degrees counter-clockwise;
    ``gop``: a keyframe every ``gop`` frames."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {"crf": "18", "preset": "veryfast"}
        if gop is not None:
            stream.options = {**stream.options, "g": str(gop), "keyint_min": str(gop), "bf": "0", "sc_threshold": "0"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def read_frames_with_pyav(path: Path, count: int | None = None) -> np.ndarray:
    """The first ``count`` (default all) frames of ``path`` as stored, uint8 ``(T, H, W, 3)`` (a reference decoder)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for _, frame in zip(range(count or 1 << 30),
                                                                            container.decode(video=0))])


def blocky_frames(count: int = 12, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """Distinct frames of 16 px blocks (compress well, each frame recognisable)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (count, -(-height // 16), -(-width // 16), 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 16, axis=1), 16, axis=2)[:, :height, :width]


def synthetic_clip(folder: Path, name: str = "clip.mp4") -> Path:
    """A valid 12-frame 64x64 clip (no face): the base of the damaged copies."""
    return write_video(folder / name, blocky_frames())


def empty_video(folder: Path) -> Path:
    path = folder / "empty.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def text_as_video(folder: Path) -> Path:
    path = folder / "notes.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a text file with a video suffix\n" * 20)
    return path


def truncated_video(folder: Path, source: Path, keep: float = 0.3) -> Path:
    """The first ``keep`` of the file."""
    data = source.read_bytes()
    path = folder / f"truncated{source.suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corrupt_header_video(folder: Path, source: Path) -> Path:
    """The ``moov`` index overwritten with random bytes (its box tag and size kept): a container nobody can parse."""
    data = bytearray(source.read_bytes())
    start = data.find(b"moov")
    size = struct.unpack(">I", data[start - 4:start])[0]
    data[start + 4:start - 4 + size] = np.random.default_rng(1).integers(0, 256, size - 8, dtype=np.uint8).tobytes()
    path = folder / f"corrupt_header{source.suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def garbled_data_video(folder: Path, source: Path, name: str | None = None, first: float = 0.0,
                       last: float = 1.0) -> Path:
    """The frame data (``mdat``) from ``first`` to ``last`` (fractions) overwritten with random bytes; the index intact."""
    data = bytearray(source.read_bytes())
    start = data.find(b"mdat")
    size = struct.unpack(">I", data[start - 4:start])[0]
    begin, end = start + 4 + int((size - 8) * first), start + 4 + int((size - 8) * last)
    data[begin:end] = np.random.default_rng(2).integers(0, 256, end - begin, dtype=np.uint8).tobytes()
    path = folder / (name or f"garbled_data{source.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def damaged_middle_clip(folder: Path, source: Path, frames: int = 48) -> Path:
    """``source``'s first ``frames`` frames with a keyframe every 12, the middle of its data garbled.

    Opening works (the first and the last keyframe's group decode), streaming stops where the
    garbage starts: the decoder refuses a packet there. The frames before it are fine.
    """
    clean = write_video(folder / "short_gop.mp4", read_frames_with_pyav(source, frames), fps=30, gop=12)
    return garbled_data_video(folder, clean, name="damaged_middle.mp4", first=0.45, last=0.55)


def tiny_video(folder: Path, side: int) -> Path:
    """A valid ``side`` x ``side`` clip (8 frames): 1x1 needs 4:4:4 (4:2:0 wants even sides)."""
    frames = np.random.default_rng(side).integers(0, 256, (8, side, side, 3), dtype=np.uint8)
    return write_video(folder / f"tiny_{side}x{side}.mp4", frames, pix_fmt="yuv444p" if side % 2 else "yuv420p")


def _remux(source: Path, path: Path, options: dict | None = None, rotation: int | None = None) -> Path:
    """Copy the video packets of ``source`` into a new mp4 (pixels untouched), optionally with a display rotation."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as given, av.open(str(path), "w", options=options or {}) as written:
        stream_in = given.streams.video[0]
        stream_out = written.add_stream_from_template(stream_in)
        if rotation is not None:
            stream_out.set_display_rotation(rotation)
        for packet in given.demux(stream_in):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = stream_out
            written.mux(packet)
    return path


def display_rotated_copy(folder: Path, source: Path, degrees: int) -> Path:
    """The same coded pixels with a display matrix: shown turned ``degrees`` counter-clockwise
    (display frames are exactly ``np.rot90(stored, degrees // 90)``)."""
    return _remux(source, folder / f"display_rotated_{degrees}.mp4", rotation=degrees)


def phone_clip(folder: Path, source: Path, degrees: int, frames: int = 24) -> Path:
    """Like a phone: pixels stored turned by ``-degrees``, a display matrix turning them back upright.
    Displayed, the clip is :func:`upright_reencoded` (same faces, same pose)."""
    stored = np.rot90(read_frames_with_pyav(source, frames), -(degrees // 90), axes=(1, 2))
    return write_video(folder / f"phone_{degrees}.mp4", stored, fps=30, rotation=degrees)


def upright_reencoded(folder: Path, source: Path, frames: int = 24) -> Path:
    """``source``'s first ``frames`` frames re-encoded like :func:`phone_clip` (the reference it must match)."""
    return write_video(folder / "upright.mp4", read_frames_with_pyav(source, frames), fps=30)


def trimmed_clip(folder: Path, source: Path, keep: float = 0.5) -> Path:
    """An mp4 whose edit list shows only the first ``keep`` of the media (a clip trimmed without re-encoding):
    decord counts every coded frame, players and PyAV show ``keep`` of them."""
    path = _remux(source, folder / "trimmed.mp4", options={"use_editlist": "1"})
    data = bytearray(path.read_bytes())
    at = data.find(b"elst")
    if data[at + 4] != 0 or struct.unpack(">I", data[at + 8:at + 12])[0] != 1:
        raise ValueError(f"{path}: expected one version-0 edit list entry")
    duration = struct.unpack(">I", data[at + 12:at + 16])[0]
    data[at + 12:at + 16] = struct.pack(">I", int(duration * keep))
    path.write_bytes(bytes(data))
    return path


# ----------------------------------------------------------------------------------- landmarks
def binary_landmark_file(folder: Path, stem: str) -> Path:
    """``<stem>.csv`` holding binary bytes (an image renamed, a zip...)."""
    path = folder / f"{stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return path


def nonfinite_openface_csv(folder: Path, stem: str, source_csv: Path, value: str = "nan", row: int = 5) -> Path:
    """A real OpenFace CSV with ``value`` (nan / inf) in ``x_30`` of data row ``row``."""
    lines = source_csv.read_text().splitlines()
    column = [name.strip() for name in lines[0].split(",")].index("x_30")
    cells = lines[row].split(",")
    cells[column] = value
    lines[row] = ",".join(cells)
    path = folder / f"{stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def nonfinite_landmark_npz(folder: Path, stem: str, frames: int = 72, value: float = np.nan) -> Path:
    """Our npz format, a face on every frame, ``value`` in one landmark of frame 3."""
    from video_fer.faces.alignment import CANONICAL_LANDMARKS_68

    landmarks = np.repeat((CANONICAL_LANDMARKS_68 * 200 + [220, 80])[None].astype(np.float32), frames, axis=0)
    landmarks[3, 30, 1] = value
    path = folder / f"{stem}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, frame_index=np.arange(frames), face_id=np.zeros(frames, np.int64), landmarks=landmarks,
             score=np.ones(frames, np.float32))
    return path


# ----------------------------------------------------------------------------------- evaluate
def au_run(folder: Path, folds: int = 3, frames: int = 40) -> Path:
    """A finished recipes/finetune_au.py output folder in miniature: run.json + fold_<k>/predictions.npz."""
    from video_fer.evaluate.au_report import FoldPredictions

    rng = np.random.default_rng(4)
    aus = (1, 2, 4, 6, 12)
    for fold in range(1, folds + 1):
        occurrence = rng.integers(0, 2, (frames, len(aus))).astype(np.int8)
        scores = np.clip(occurrence * 0.6 + rng.random((frames, len(aus))) * 0.5, 0, 1).astype(np.float32)
        FoldPredictions(aus, scores, occurrence, np.array([f"S{fold}"] * frames), np.array(["video"] * frames),
                        np.arange(frames)).save(folder / f"fold_{fold}" / "predictions.npz")
    (folder / "run.json").write_text(json.dumps({"dataset": "bp4d", "method": "test", "mode": "linear",
                                                 "task": "occurrence"}))
    return folder


def truncated_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file (a crash of a non-atomic writer, a full disk, an interrupted copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ----------------------------------------------------------------------------------- checkpoints
def damage_latest_checkpoint(output_dir: Path) -> tuple[Path, Path | None]:
    """Truncate the weights of the newest ``checkpoints/step_*`` -> (damaged, the previous one or None)."""
    found = sorted(output_dir.rglob("checkpoints/step_*"))
    latest = found[-1]
    for weights in sorted(latest.glob("*.safetensors")) + sorted(latest.glob("*.bin")):
        truncated_file(weights, 1 / 3)
    return latest, found[-2] if len(found) > 1 else None


# ----------------------------------------------------------------------------------- bundles
TINY_BUNDLE = dict(image_size=64, width=4, embedding_dim=16, attention_streams=2, stream_width=4)


def tiny_bundle(folder: Path):
    """A random 64 px bundle with AU (12), expression (7) and VA heads -> (ModelBundle, folder)."""
    from video_fer.track.bundle import random_bundle, save_bundle

    bundle = random_bundle(**TINY_BUNDLE)
    save_bundle(bundle, folder)
    return bundle, folder


def nonfinite_bundle(folder: Path, value: float = float("nan")) -> Path:
    """A bundle whose expression head weights hold ``value`` (written past save_bundle's checks)."""
    from safetensors.torch import load_file, save_file

    _, folder = tiny_bundle(folder)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    key = next(name for name in state if name.startswith("heads.expression") and name.endswith("weight"))
    state[key][0, 0] = value
    save_file(state, str(weights))
    return folder


def short_names_bundle(folder: Path, keep: int = 2) -> Path:
    """A bundle whose AU head has 12 outputs but ``names`` lists only ``keep`` AUs (an edited bundle.json)."""
    _, folder = tiny_bundle(folder)
    document = json.loads((folder / "bundle.json").read_text())
    document["heads"]["au"]["names"] = document["heads"]["au"]["names"][:keep]
    (folder / "bundle.json").write_text(json.dumps(document, indent=2))
    return folder


def bundle_inputs(folder: Path) -> dict[str, Path]:
    """What `video-fer bundle` takes: an encoder export and AU head checkpoints (good, NaN weights, short names)."""
    import torch

    from video_fer.models.checkpoint import save_encoder
    from video_fer.track.bundle import random_bundle, save_head

    bundle = random_bundle(**TINY_BUNDLE)
    alignment = bundle.alignment.to_dict()
    save_encoder(bundle.encoder, folder / "encoder", bundle.alignment)
    au = bundle.specs["au"]
    save_head(bundle.heads["au"], folder / "head_au", "au", au.head, au.options, au.names, alignment)
    save_head(bundle.heads["au"], folder / "head_au_short", "au", au.head, au.options, au.names[:2], alignment)
    first = next(param for name, param in bundle.heads["au"].named_parameters() if name.endswith("weight"))
    with torch.no_grad():
        first.view(-1)[0] = float("nan")
    save_head(bundle.heads["au"], folder / "head_au_nan", "au", au.head, au.options, au.names, alignment)
    return {name: folder / name for name in ("encoder", "head_au", "head_au_short", "head_au_nan")}


# ----------------------------------------------------------------------------------- caches
def tiny_pretrain_cache(folder: Path) -> Path:
    """The embedded demo cache at 64 px (what the tiny pretraining runs train on)."""
    from video_fer.data.synthetic import build_demo_cache

    build_demo_cache(folder, size=64, frames_per_track=6, tracks_per_identity=2, seed=0)
    return folder


def garble_cache_track(cache: Path, which: int = 0) -> Path:
    """Garble the second half of one track mp4's data: decord opens it, decoding its frames fails."""
    target = sorted((cache / "tracks").glob("*.mp4"))[which]
    garbled = garbled_data_video(target.parent, target, name=f".{target.name}.garbled", first=0.5)
    os.replace(garbled, target)
    return target


# ----------------------------------------------------------------------------------- track leftovers
def stale_track_temp(out_dir: Path, table_name: str) -> Path:
    """What a ``kill -9`` of ``video-fer track`` leaves: the atomic writer's temp file beside the table."""
    path = out_dir / f".{table_name}.k1ll3d5a.tmp"  # video_fer.io.atomic_write's name pattern
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("frame,timestamp\n0,0.0\n")
    return path


# ----------------------------------------------------------------------------------- filesystem faults
def file_where_folder_should_be(path: Path) -> Path:
    """A plain file at ``path``, where a command will want to create a folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file, not a folder\n")
    return path


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """``path`` (created) cannot be written into for the duration, also as root (``chattr +i``)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: cannot make a read-only folder")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """``preexec_fn`` for subprocess: the child's files cannot grow past ``max_bytes`` (a real EFBIG, like a full disk).

    CPython ignores SIGXFSZ, so writes fail with OSError(27, 'File too large'); torch's C++ and
    safetensors' Rust writers fail the same way.
    """
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def raise_no_space(monkeypatch, *targets: str, error: Callable[[str], BaseException] | None = None) -> None:
    """In-process disk full: each ``"module.attribute"`` writer raises what it raises on a full disk.

    Default: ``OSError(ENOSPC)`` without a file name (what ``write`` raises). Patch the name where it
    is *used*; pass ``error`` for writers that say it differently (:func:`torch_writer_full`, :func:`safetensors_full`).
    """
    import importlib

    for target in targets:
        module_name, attribute = target.rsplit(".", 1)
        module = importlib.import_module(module_name)

        def full(*args, **kwargs):
            where = next((str(a) for a in args if isinstance(a, (str, os.PathLike))), "?")
            raise error(where) if error else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(module, attribute, full)


def torch_writer_full(where: str) -> BaseException:
    """What torch 2.x's C++ file writer raises on a full disk (measured on a full tmpfs): no errno, no path."""
    return RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def safetensors_full(where: str) -> BaseException:
    """What safetensors 0.8 raises on a full disk."""
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


# ----------------------------------------------------------------------------------- session fixtures
@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.fixture(scope="session")
def upright_clip() -> Path:
    return shared_file(*UPRIGHT_CLIP)


@pytest.fixture(scope="session")
def mediapipe() -> Path:
    return shared_file(*MEDIAPIPE_MODEL)


@pytest.fixture(scope="session")
def broken_videos(corpus_dir) -> dict[str, Path]:
    """Every unreadable-video case, built from a synthetic clip (no shared asset needed)."""
    folder = corpus_dir / "videos"
    base = synthetic_clip(folder / "base")
    return {"missing": folder / "missing.mp4", "empty": empty_video(folder), "not_a_video": text_as_video(folder),
            "truncated": truncated_video(folder, base), "corrupt_header": corrupt_header_video(folder, base),
            "garbled_data": garbled_data_video(folder, base),
            "garbled_tail": garbled_data_video(folder, base, name="garbled_tail.mp4", first=0.5)}


@pytest.fixture(scope="session")
def tiny_videos(corpus_dir) -> dict[int, Path]:
    return {side: tiny_video(corpus_dir / "tiny", side) for side in (1, 2, 48)}


@pytest.fixture(scope="session")
def upright_24(corpus_dir, upright_clip) -> Path:
    return upright_reencoded(corpus_dir / "rotated", upright_clip)


@pytest.fixture(scope="session")
def bundle_dir(corpus_dir) -> Path:
    return tiny_bundle(corpus_dir / "bundle")[1]


@pytest.fixture(scope="session")
def pretrain_cache(corpus_dir) -> Path:
    return tiny_pretrain_cache(corpus_dir / "pretrain_cache")
