"""AU occurrence / intensity on BP4D, DISFA or your own labels, with the papers' protocol (METHOD.md §2).

    accelerate launch recipes/finetune_au.py --config recipes/configs/finetune_au_bp4d.yaml \\
        model.encoder=runs/pretrain_tae/encoder data.cache=cache/bp4d \\
        data.label_dir=BP4D/AUCoding/AU_OCC data.frames_root=BP4D/frames --fold all
    python recipes/finetune_au.py --config recipes/configs/finetune_au_disfa.yaml data.root=DISFA \\
        data.cache=cache/disfa model.encoder=... train.task=intensity --fold 2
    python recipes/finetune_au.py ... --resume        # continue an interrupted fold from its last epoch

Modes (``train.mode``): ``linear`` freezes the encoder and trains BatchNorm1d + Linear (no bias)
on the action embedding (the papers' protocol; embeddings are computed once per run and
reused by every fold); ``finetune`` trains the whole encoder (its LR scaled by
``train.backbone_lr_scale``). ``train.task``: ``occurrence`` (BCE with per-AU positive
weights from the training fold) or ``intensity`` (DISFA, MSE; scored with ICC(3,1), PCC, MAE).

Each fold trains on the other two parts' subjects minus a held-out validation split of them
(``data.val_fraction``, early stopping after ``train.patience`` epochs without improvement)
and is scored on its own part. Folds are independent: a finished fold (``fold_<k>/result.json``)
is skipped on rerun, so ``--fold all`` after ``--fold 1`` only runs folds 2 and 3.

Outputs (``train.output_dir``): ``run.json``, ``faces_report.json`` (labelled frames without a
face, per subject), ``fold_<k>/`` (``train.csv``, ``checkpoints/``, ``model/`` = best
:class:`~video_fer.data.au_training.AUClassifier` for ``video_fer.load_model``,
``predictions.npz``, ``result.json``), and ``results.json`` + ``results.md`` (mean over folds,
the papers' table layout; recomputable with ``video-fer evaluate <output_dir>``).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DistributedDataParallelKwargs, set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from video_fer.checkpoint import load_model, save_model  # noqa: E402
from video_fer.config import config_to_dict, load_config  # noqa: E402
from video_fer.data.au_datasets import read_au_csv, read_bp4d, read_disfa  # noqa: E402
from video_fer.data.au_training import (AUClassifier, AUClassifierConfig, AUFaceDataset, LabelledFaces,  # noqa: E402
                                        balanced_sampling_weights, compute_embeddings, faces_report,
                                        masked_bce_loss, masked_mse_loss, match_labelled_faces, positive_weights,
                                        read_face_crops, remap_to_sequence_videos, write_sequence_videos)
from video_fer.data.augment import as_float_images, random_crop_jitter  # noqa: E402
from video_fer.data.cache import FaceTrackCache  # noqa: E402
from video_fer.data.folds import DATASET_AUS, DISFA_OCCURRENCE_THRESHOLD, dataset_parts, split_validation  # noqa: E402
from video_fer.errors import ConfigError, VideoFerError  # noqa: E402
from video_fer.evaluation import FoldPredictions, evaluate_fold, evaluate_run, markdown_table  # noqa: E402
from video_fer.io_utils import atomic_path, atomic_write  # noqa: E402
from video_fer.metrics import mean_f1  # noqa: E402
from video_fer.models.tae import FaceActionEncoder, TAEConfig  # noqa: E402
from video_fer.training import CsvLog, latest_checkpoint, save_checkpoint  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_au_bp4d.yaml"
METHOD_NAMES = {"linear": "linear probe", "finetune": "fine-tuned"}


# ---------------------------------------------------------------------------------- config schema
@dataclass
class AUDataConfig:
    """Labels, the face cache of the same videos, folds."""

    dataset: str = "bp4d"           # bp4d | disfa | csv
    cache: str | None = None        # `video-fer prepare` output of the dataset's videos
    root: str | None = None         # DISFA root (ActionUnit_Labels/, Videos_LeftCamera/)
    label_dir: str | None = None    # BP4D AU_OCC folder
    frames_root: str | None = None  # BP4D frames folder
    sequence_videos: str | None = None  # bp4d: folder of one mp4 per subject/task made from the frames (what
                                        # `video-fer prepare` reads); written when missing, see write_sequence_videos
    csv: str | None = None          # csv dataset: path,subject,[task],[frame],AU01,...
    csv_root: str | None = None     # folder relative csv paths are resolved against (default: the csv's)
    label_pattern: str | None = None  # null = the reader's default layout
    image_pattern: str | None = None
    video_pattern: str | None = None
    occurrence_threshold: float | None = None  # csv intensities: present from this value
    aus: list | None = None         # null = the dataset's standard AUs (csv: every AU column)
    parts: list | None = None       # three subject lists; null = the standard JAA-Net folds (bp4d/disfa)
    check_media: bool = True        # check that every labelled image / video exists (and video lengths)
    val_fraction: float = 0.2       # training subjects held out for early stopping
    balanced_sampling: bool = False
    augment: bool = True            # finetune only: the pretraining crop jitter
    num_workers: int = 0


@dataclass
class AUModelConfig:
    """The encoder: a pretrained checkpoint (``video_fer.load_model`` folder) or, if null, a random one."""

    encoder: str | None = None
    tae: dict = field(default_factory=dict, metadata={"schema": "video_fer.models.tae:TAEConfig"})


@dataclass
class AUTrainConfig:
    output_dir: str = "runs/finetune_au"
    mode: str = "linear"            # linear | finetune
    task: str = "occurrence"        # occurrence | intensity
    seed: int = 0
    epochs: int = 20
    patience: int = 5               # epochs without validation improvement before stopping (0 = never)
    batch_size: int = 64
    embedding_batch_size: int = 64
    lr: float = 1.0e-3
    backbone_lr_scale: float = 0.1  # finetune: encoder LR = lr * this
    weight_decay: float = 1.0e-4
    positive_weights: bool = True   # BCE pos_weight = negatives / positives per AU (training fold)
    max_positive_weight: float | None = None
    threshold: float = 0.5
    mixed_precision: str = "no"
    keep_checkpoints: int = 1


@dataclass
class FinetuneAUConfig:
    data: AUDataConfig = field(default_factory=AUDataConfig)
    model: AUModelConfig = field(default_factory=AUModelConfig)
    train: AUTrainConfig = field(default_factory=AUTrainConfig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    parser.add_argument("--fold", default="all", choices=("1", "2", "3", "all"),
                        help="test fold to run; all = the three folds, then their mean (default)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an unfinished fold from its latest checkpoint (finished folds are always skipped)")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. train.lr=3e-4")
    return parser.parse_args(argv)


def check_config(config: FinetuneAUConfig) -> None:
    data, train = config.data, config.train
    if train.mode not in METHOD_NAMES:
        raise ConfigError(f"train.mode={train.mode!r}: choose 'linear' (frozen encoder) or 'finetune'")
    if train.task not in ("occurrence", "intensity"):
        raise ConfigError(f"train.task={train.task!r}: choose 'occurrence' or 'intensity'")
    if data.cache is None:
        raise ConfigError("data.cache: give the face-track cache of the dataset's videos "
                          "(`video-fer prepare <videos> --out <cache>`)")
    if data.parts is not None and (len(data.parts) != 3 or not all(isinstance(p, list) and p for p in data.parts)):
        raise ConfigError("data.parts: give three non-empty subject lists, e.g. [[S1, S2], [S3, S4], [S5, S6]]")


def run_fingerprint(config: FinetuneAUConfig) -> str:
    """Hash of the settings a fold's result depends on (not where it is written or how fast)."""
    settings = config_to_dict(config)
    settings["train"].pop("output_dir")
    settings["train"].pop("keep_checkpoints")
    settings["data"].pop("num_workers")
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- data
def read_labels(data: AUDataConfig):
    """The label table of the configured dataset (readers of video_fer.data.au_datasets)."""
    layout = {key: value for key, value in (("label_pattern", data.label_pattern), ("image_pattern", data.image_pattern),
                                            ("video_pattern", data.video_pattern)) if value is not None}
    dataset = data.dataset.lower()
    if dataset == "bp4d":
        if data.label_dir is None or data.frames_root is None:
            raise ConfigError("data.dataset=bp4d needs data.label_dir (AU_OCC folder) and data.frames_root")
        layout.pop("video_pattern", None)
        return read_bp4d(data.label_dir, data.frames_root, aus=data.aus or DATASET_AUS["bp4d"],
                         check_images=data.check_media, **layout)
    if dataset == "disfa":
        if data.root is None:
            raise ConfigError("data.dataset=disfa needs data.root (holding ActionUnit_Labels/ and Videos_LeftCamera/)")
        layout.pop("image_pattern", None)
        return read_disfa(data.root, aus=data.aus or DATASET_AUS["disfa"], check_videos=data.check_media,
                          check_frame_counts=data.check_media, **layout)
    if dataset == "csv":
        if data.csv is None:
            raise ConfigError("data.dataset=csv needs data.csv (columns path,subject,AU01,...)")
        return read_au_csv(data.csv, root=data.csv_root, aus=data.aus, occurrence_threshold=data.occurrence_threshold)
    raise ConfigError(f"data.dataset={data.dataset!r}: choose bp4d, disfa or csv")


def subject_parts(data: AUDataConfig) -> list[list[str]]:
    if data.parts is not None:
        return [[str(subject) for subject in part] for part in data.parts]
    if data.dataset.lower() == "csv":
        raise ConfigError("data.dataset=csv: give data.parts (three subject lists) to define the folds")
    return [list(part) for part in dataset_parts(data.dataset)]


def fold_subjects(parts: list[list[str]], fold: int, present: set[str], val_fraction: float, seed: int):
    """(train, validation, test) subjects of ``fold`` among those present in the data."""
    test = [s for s in parts[fold - 1] if s in present]
    train_all = [s for k, part in enumerate(parts) if k != fold - 1 for s in part if s in present]
    if not test or not train_all:
        raise ConfigError(f"fold {fold}: {'no test subject' if not test else 'no training subject'} of the fold lists "
                          f"has labelled faces (present: {sorted(present)}); check data.parts and the cache")
    train, validation = split_validation(train_all, val_fraction if len(train_all) > 1 else 0.0, seed)
    return train, validation, test


def load_encoder(model: AUModelConfig, image_size: int) -> FaceActionEncoder:
    """The pretrained encoder (``TwinCycleAutoencoder`` checkpoints give their encoder) or a random one."""
    if model.encoder is None:
        config = TAEConfig(**{**model.tae, "image_size": image_size})
        return FaceActionEncoder(config)
    loaded = load_model(model.encoder)
    encoder = getattr(loaded, "encoder", loaded)
    if not isinstance(encoder, FaceActionEncoder):
        raise ConfigError(f"model.encoder={model.encoder}: holds a {type(loaded).__name__}, not a TAE encoder; "
                          "give the encoder/ folder written by recipes/pretrain_video.py")
    if encoder.config.image_size != image_size:
        raise ConfigError(f"model.encoder={model.encoder}: trained on {encoder.config.image_size} px faces but the cache "
                          f"has {image_size} px crops; prepare the dataset with --size {encoder.config.image_size}")
    return encoder


class EmbeddingRows(torch.utils.data.Dataset):
    """Precomputed embeddings with labels: items ``{"embedding" (D,), "occurrence" (A,), "intensity" (A,)}``."""

    def __init__(self, embeddings: torch.Tensor, faces: LabelledFaces) -> None:
        self.embeddings = embeddings
        self.labels = AUFaceDataset(None, faces)  # reuses its label tensors; no crop is read

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitem__(self, row: int) -> dict:
        return {"embedding": self.embeddings[row], "occurrence": self.labels.occurrence[row],
                "intensity": self.labels.intensity[row]}


# ---------------------------------------------------------------------------------- one fold
@torch.no_grad()
def predict(model: AUClassifier, cache, faces: LabelledFaces, embeddings: torch.Tensor | None, batch_size: int,
            device) -> np.ndarray:
    """Probabilities (occurrence) or intensities ``(N, A)`` of every row of ``faces`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(faces), batch_size):
        if embeddings is not None:
            inputs = embeddings[start:start + batch_size].to(device)
        else:
            rows = np.arange(start, min(start + batch_size, len(faces)))
            inputs = as_float_images(read_face_crops(cache, faces.track_ids[rows], faces.positions[rows]).to(device))
        outputs.append(model.predict(inputs).float().cpu())
    model.train(was_training)
    width = len(model.config.au_numbers)
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, width), np.float32)


def validation_score(model, cache, faces, embeddings, train_config, device) -> float:
    """Higher is better: mean F1 (occurrence) or minus the MSE (intensity) on the validation subjects."""
    outputs = predict(model, cache, faces, embeddings, train_config.embedding_batch_size, device)
    if train_config.task == "occurrence":
        return mean_f1(faces.table.occurrence, outputs, threshold=train_config.threshold)
    truth = faces.table.intensity
    coded = np.isfinite(truth)
    return -float(((outputs - np.nan_to_num(truth)) ** 2)[coded].mean()) if coded.any() else 0.0


def record_validation(progress: dict, score: float | None, epoch: int) -> bool:
    """Update the early-stopping state after ``epoch``; True when this epoch's model is the best so far.

    Without a validation split (``score`` None) every epoch counts as the best: the last one is kept.
    """
    improved = score is None or progress["best_score"] is None or score > progress["best_score"]
    if improved:
        progress.update(best_score=score, best_epoch=epoch, epochs_without_improvement=0)
    else:
        progress["epochs_without_improvement"] += 1
    return improved


def should_stop(progress: dict, patience: int) -> bool:
    """Early stopping: ``patience`` epochs in a row without a better validation score (0 = never)."""
    return bool(patience) and progress["epochs_without_improvement"] >= patience


def run_fold(fold: int, *, config: FinetuneAUConfig, accelerator: Accelerator, cache, faces: LabelledFaces,
             embeddings: torch.Tensor | None, encoder: FaceActionEncoder, parts, fingerprint: str, resume: bool) -> dict:
    data, train = config.data, config.train
    out = Path(train.output_dir) / f"fold_{fold}"
    result_path = out / "result.json"
    if result_path.is_file():
        finished = json.loads(result_path.read_text())
        if finished.get("fingerprint") != fingerprint:
            raise ConfigError(f"{out}: this fold finished with other settings (fingerprint {finished.get('fingerprint')} "
                              f"vs {fingerprint}); use another train.output_dir or delete {out}")
        accelerator.print(f"fold {fold}: already finished (mean F1 {finished['mean_f1']:.4f}), skipped")
        return finished

    train_subjects, val_subjects, test_subjects = fold_subjects(parts, fold, set(faces.subjects), data.val_fraction,
                                                                train.seed)
    rows = {name: np.flatnonzero(np.isin(faces.table.subjects, subjects))
            for name, subjects in (("train", train_subjects), ("val", val_subjects), ("test", test_subjects))}
    split = {name: faces.select(index) for name, index in rows.items()}
    split_embeddings = {name: None if embeddings is None else embeddings[torch.from_numpy(index)]
                        for name, index in rows.items()}
    accelerator.print(f"fold {fold}: train {len(split['train'])} frames of {len(train_subjects)} subjects, validation "
                      f"{len(split['val'])} of {len(val_subjects)}, test {len(split['test'])} of {len(test_subjects)}")

    # ---------------------------------------------------------------- model, loss weights, optimiser
    set_seed(train.seed + fold)
    au_numbers = list(faces.table.au_numbers)
    model = AUClassifier(AUClassifierConfig(au_numbers, dataclasses.asdict(encoder.config), train.task))
    model.encoder.load_state_dict(encoder.state_dict())
    train_occurrence = split["train"].table.occurrence
    pos_weight = positive_weights(train_occurrence, train.max_positive_weight) if train.positive_weights \
        else np.ones(len(au_numbers), np.float32)
    if train.mode == "linear":
        model.encoder.requires_grad_(False)
        groups = [{"params": list(model.head.parameters()), "lr": train.lr}]
        dataset = EmbeddingRows(split_embeddings["train"], split["train"])
    else:
        groups = [{"params": list(model.encoder.parameters()), "lr": train.lr * train.backbone_lr_scale},
                  {"params": list(model.head.parameters()), "lr": train.lr}]
        dataset = AUFaceDataset(cache, split["train"])
    optimizer = torch.optim.AdamW(groups, weight_decay=train.weight_decay)
    generator = torch.Generator()
    if data.balanced_sampling:
        sampler = torch.utils.data.WeightedRandomSampler(
            torch.from_numpy(balanced_sampling_weights(train_occurrence)), len(dataset), replacement=True,
            generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    lone_last = len(dataset) % train.batch_size == 1  # BatchNorm cannot train on a batch of one frame
    loader = torch.utils.data.DataLoader(dataset, batch_size=train.batch_size, sampler=sampler, drop_last=lone_last,
                                         num_workers=data.num_workers if train.mode == "finetune" else 0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    pos_weight = torch.from_numpy(pos_weight).to(accelerator.device)

    progress = {"epoch": 0, "best_score": None, "best_epoch": None, "epochs_without_improvement": 0}
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        progress = json.loads((checkpoint / "progress.json").read_text())
        accelerator.print(f"fold {fold}: resumed from {checkpoint} (epoch {progress['epoch']})")
    log = CsvLog(out / "train.csv", resume_after_step=progress["epoch"] if checkpoint else None) \
        if accelerator.is_main_process else None

    # ---------------------------------------------------------------- loop (one step per batch, validation per epoch)
    unwrapped = accelerator.unwrap_model(model)
    bar = tqdm(total=train.epochs, initial=progress["epoch"], desc=f"fold {fold}", disable=not accelerator.is_main_process)
    while progress["epoch"] < train.epochs:
        epoch = progress["epoch"]
        generator.manual_seed(train.seed * 1_000 + fold * 100 + epoch)  # the same order after a resume
        model.train()
        if train.mode == "linear":
            unwrapped.encoder.eval()  # frozen: BatchNorm statistics stay those of pretraining
        losses = []
        for step, batch in enumerate(loader):
            if train.mode == "linear":
                inputs = batch["embedding"]
            elif data.augment:
                jitter = torch.Generator().manual_seed(train.seed * 1_000_003 + fold * 10_007 + epoch * 1_009 + step)
                inputs = random_crop_jitter(batch["image"], jitter)
            else:
                inputs = as_float_images(batch["image"])
            with accelerator.autocast():
                outputs = model(inputs)
                loss = (masked_bce_loss(outputs.float(), batch["occurrence"], pos_weight) if train.task == "occurrence"
                        else masked_mse_loss(outputs.float(), batch["intensity"]))
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        progress["epoch"] = epoch + 1
        score = None
        if len(split["val"]):
            score = validation_score(unwrapped, cache, split["val"], split_embeddings["val"], train, accelerator.device)
        improved = record_validation(progress, score, epoch + 1)
        if improved and accelerator.is_main_process:
            save_model(unwrapped, out / "model", extra={"fold": fold, "epoch": epoch + 1, "validation": score})
        if accelerator.is_main_process:
            log.write({"step": epoch + 1, "epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                       "validation": "" if score is None else score, "best_epoch": progress["best_epoch"]})
        saved = save_checkpoint(accelerator, out, epoch + 1, train.keep_checkpoints)
        if accelerator.is_main_process:
            with atomic_write(saved / "progress.json") as handle:
                json.dump(progress, handle)
        accelerator.wait_for_everyone()
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", val="-" if score is None else f"{score:.4f}")
        if should_stop(progress, train.patience):
            accelerator.print(f"fold {fold}: no validation improvement for {train.patience} epochs, stopping at "
                              f"epoch {epoch + 1} (best {progress['best_epoch']})")
            break
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.free_memory()

    # ---------------------------------------------------------------- test: the best model on the fold's subjects
    result: dict = {}
    if accelerator.is_main_process:
        best = load_model(out / "model").to(accelerator.device)
        outputs = predict(best, cache, split["test"], split_embeddings["test"], train.embedding_batch_size,
                          accelerator.device)
        table = split["test"].table
        predictions = FoldPredictions(tuple(au_numbers), outputs if train.task == "occurrence" else None,
                                      table.occurrence, table.subjects, table.sources, table.frames,
                                      outputs if train.task == "intensity" else None, table.intensity)
        predictions.save(out / "predictions.npz")
        intensity_threshold = data.occurrence_threshold or DISFA_OCCURRENCE_THRESHOLD  # the labels' own threshold
        result = {**evaluate_fold(predictions, train.threshold, intensity_threshold), "fold": fold, "fingerprint": fingerprint,
                  "train_subjects": train_subjects, "validation_subjects": val_subjects,
                  "test_subjects": test_subjects, "best_epoch": progress["best_epoch"],
                  "epochs_trained": progress["epoch"], "positive_weights": pos_weight.cpu().tolist()}
        with atomic_write(result_path) as handle:
            json.dump(result, handle, indent=2)
        accelerator.print(f"fold {fold}: test mean F1 {result['mean_f1']:.4f} on {result['frames']} frames")
    accelerator.wait_for_everyone()
    return result


# ---------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    # ---------------------------------------------------------------- config
    args = parse_args(argv)
    config = load_config(args.config, args.overrides, schema=FinetuneAUConfig)
    check_config(config)
    data, train = config.data, config.train
    out = Path(train.output_dir)
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # finetune: the pose branch (and, with attention streams, the trunk's last block) do not feed phi; DDP must know
    unused = [DistributedDataParallelKwargs(find_unused_parameters=True)] if train.mode == "finetune" else []
    accelerator = Accelerator(mixed_precision=train.mixed_precision, cpu=cpu_processes, kwargs_handlers=unused)
    set_seed(train.seed)
    fingerprint = run_fingerprint(config)

    # ---------------------------------------------------------------- labels joined with the face cache
    table = read_labels(data)
    if data.sequence_videos is not None:  # still images -> the sequence videos that were prepared
        if accelerator.is_main_process:
            write_sequence_videos(table, data.sequence_videos, progress=True)
        accelerator.wait_for_everyone()
        table = remap_to_sequence_videos(table, data.sequence_videos)
    cache = FaceTrackCache(data.cache)
    if train.task == "intensity" and table.intensity is None:
        raise ConfigError(f"train.task=intensity: data.dataset={data.dataset} has no intensity labels (DISFA has)")
    faces, join = match_labelled_faces(table, cache)
    report = faces_report(join)
    accelerator.print(join.summary())  # frames without a face are reported per subject, never dropped silently
    if not len(faces):
        raise ConfigError(f"{data.cache}: none of the {len(table)} labelled frames has a face in this cache; prepare "
                          "the dataset's videos into it (`video-fer prepare`) or check data.cache")
    encoder = load_encoder(config.model, cache.size)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "faces_report.json") as handle:
            json.dump(report, handle, indent=2)
        run_info = {"dataset": data.dataset.lower() if data.dataset.lower() != "csv" else None,
                    "method": ("random-init " if config.model.encoder is None else "")
                              + f"{'TAE' if encoder.config.attention_streams else 'TCAE'} encoder, "
                              f"{METHOD_NAMES[train.mode]}" + (" (intensity)" if train.task == "intensity" else ""),
                    "mode": train.mode, "task": train.task, "encoder": config.model.encoder or "random init",
                    "fingerprint": fingerprint, "faces": {k: report[k] for k in ("labelled", "without_face")},
                    "occurrence_threshold": data.occurrence_threshold or DISFA_OCCURRENCE_THRESHOLD,
                    "config": config_to_dict(config)}
        with atomic_write(out / "run.json") as handle:
            json.dump(run_info, handle, indent=2)

    # ---------------------------------------------------------------- frozen encoder: embeddings once for every fold
    embeddings = None
    if train.mode == "linear":
        path = out / "embeddings.pt"
        key = hashlib.sha1(json.dumps([fingerprint, faces.track_ids.tolist(), faces.positions.tolist()]).encode()
                           ).hexdigest()
        if accelerator.is_main_process and not (path.is_file() and torch.load(path)["key"] == key):
            computed = compute_embeddings(encoder.to(accelerator.device), cache, faces, train.embedding_batch_size,
                                          accelerator.device, progress=True)
            with atomic_path(path) as temporary:
                torch.save({"key": key, "embeddings": computed}, temporary)
        accelerator.wait_for_everyone()
        embeddings = torch.load(path)["embeddings"]
        encoder = encoder.cpu()

    # ---------------------------------------------------------------- folds, then their mean
    parts = subject_parts(data)
    folds = [1, 2, 3] if args.fold == "all" else [int(args.fold)]
    for fold in folds:
        run_fold(fold, config=config, accelerator=accelerator, cache=cache, faces=faces, embeddings=embeddings,
                 encoder=encoder, parts=parts, fingerprint=fingerprint, resume=args.resume)
    if accelerator.is_main_process:
        results = evaluate_run(out, threshold=train.threshold)
        accelerator.print(markdown_table(results))
        accelerator.print(f"outputs in {out.resolve()}: results.md, results.json, fold_*/ (model/, predictions.npz)")
    accelerator.end_training()
    return 0


def run(argv=None) -> int:
    """:func:`main` with video_fer's own errors as a one-line message and exit code 2 (like ``video-fer``)."""
    try:
        return main(argv)
    except VideoFerError as error:
        print(f"finetune_au: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
