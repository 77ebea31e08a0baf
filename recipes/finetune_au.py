"""AU occurrence / intensity on BP4D, DISFA or your own labels, with the papers' protocol (METHOD.md §2).

    accelerate launch recipes/finetune_au.py --config recipes/configs/finetune_au_bp4d.yaml \\
        model.encoder=runs/pretrain_tae/encoder data.cache=cache/bp4d \\
        data.label_dir=BP4D/AUCoding/AU_OCC data.frames_root=BP4D/frames --fold all
    python recipes/finetune_au.py --config recipes/configs/finetune_au_disfa.yaml data.root=DISFA \\
        data.cache=cache/disfa model.encoder=... train.task=intensity --fold 2
    python recipes/finetune_au.py ... --resume        # continue an interrupted fold from its last epoch
    python recipes/finetune_au.py --config recipes/configs/distill_au_blendshapes.yaml \\
        data.cache=<cache of unlabeled video, prepared with MediaPipe> model.encoder=runs/pretrain_tae_real/encoder

Modes (``train.mode``): ``linear`` freezes the encoder and trains BatchNorm1d + Linear (no bias)
on the action embedding (the papers' protocol; embeddings are computed once per run and
reused by every fold); ``finetune`` trains the whole encoder (its LR scaled by
``train.backbone_lr_scale``). ``train.task``: ``occurrence`` (BCE with per-AU positive
weights from the training fold) or ``intensity`` (DISFA, MSE; scored with ICC(3,1), PCC, MAE).

``data.dataset=blendshapes`` distils the no-training default into the encoder's action embedding,
no human labels: every frame of ``data.cache`` (prepared with MediaPipe, which stores each frame's
blendshapes) is labelled by the blendshape AU table (:func:`video_fer.data.au_datasets.read_blendshape_aus`,
the 17 ``AUxx_r`` of ``video-fer track --model mediapipe``); the folds are three identity-disjoint
parts of the cache's identities (``data.parts``, or split by ``train.seed`` when null), so each
fold's test scores say how well the head reproduces the table on people it never saw.
``train.bundle: true`` then writes ``bundle/``: the best fold's head on the encoder, with the
default's head pose and gaze columns, ready for ``video-fer track --model <output_dir>/bundle``.

Each fold trains on the other two parts' subjects minus a held-out validation split of them
(``data.val_fraction``, early stopping after ``train.patience`` epochs without improvement)
and is scored on its own part. Folds are independent: a finished fold (``fold_<k>/result.json``)
is skipped on rerun, so ``--fold all`` after ``--fold 1`` only runs folds 2 and 3.

Outputs (``train.output_dir``): ``run.json``, ``faces_report.json`` (labelled frames without a
face, per subject), ``fold_<k>/`` (``train.csv``, ``checkpoints/``, ``model/`` = best
:class:`~video_fer.models.task_models.AUClassifier` for ``video_fer.load_model``,
``predictions.npz``, ``result.json``), ``results.json`` + ``results.md`` (mean over folds,
the papers' table layout; recomputable with ``video-fer evaluate <output_dir>``), and with
``train.bundle`` a track bundle ``bundle/`` of the best fold.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from video_fer.config import config_to_dict, load_config
from video_fer.data.au_datasets import read_au_csv, read_blendshape_aus, read_bp4d, read_disfa
from video_fer.data.au_faces import (AUFaceDataset, LabelledCacheFaces, balanced_sampling_weights, compute_embeddings,
                                     faces_report, match_labelled_faces, read_face_crops, remap_to_sequence_videos,
                                     write_sequence_videos)
from video_fer.data.augment import as_float_images, random_crop_jitter
from video_fer.data.cache import FaceTrackCache
from video_fer.data.folds import DATASET_AUS, DISFA_OCCURRENCE_THRESHOLD, dataset_parts, split_validation
from video_fer.errors import ConfigError
from video_fer.evaluate.au_report import FoldPredictions, evaluate_fold, evaluate_run, markdown_table
from video_fer.evaluate.metrics import mean_f1
from video_fer.faces.alignment import check_encoder_crops
from video_fer.io import atomic_path, atomic_write
from video_fer.models.checkpoint import load_encoder, load_model, save_model
from video_fer.models.tae import FaceActionEncoder, TAEConfig
from video_fer.models.task_models import AUClassifier, AUClassifierConfig
from video_fer.train.checkpoints import save_checkpoint
from video_fer.train.loop import predict_in_batches, seeded_generator
from video_fer.train.losses.au import masked_bce_loss, masked_mse_loss, positive_weights
from video_fer.train.run import (RecipeRun, finish_run, recipe_parser, reseed, resume_state, run_logs, run_recipe,
                                 start_run)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_au_bp4d.yaml"
METHOD_NAMES = {"linear": "linear probe", "finetune": "fine-tuned"}


# ---------------------------------------------------------------------------------- config schema
@dataclass
class AUDataConfig:
    """Labels, the face cache of the same videos, folds."""

    dataset: str = "bp4d"           # bp4d | disfa | csv | blendshapes (labels from the cache's own blendshapes)
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
    parts: list | None = None       # three subject lists; null = the standard JAA-Net folds (bp4d/disfa), or
                                    # (blendshapes) the cache's identities split in three by train.seed
    check_media: bool = True        # check that every labelled image / video exists (and video lengths)
    val_fraction: float = 0.2       # training subjects held out for early stopping
    balanced_sampling: bool = False
    augment: bool = True            # finetune only: the pretraining crop jitter
    num_workers: int = 0


@dataclass
class AUModelConfig:
    """The encoder: a pretrained checkpoint (``video_fer.load_model`` folder) or, if null, a random one."""

    encoder: str | None = None
    # A random encoder's TAEConfig; image_size null = the cache's crop side (a number must equal it).
    tae: dict = field(default_factory=lambda: {"image_size": None}, metadata={"schema": TAEConfig})


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
    bundle: bool = False            # also write <output_dir>/bundle: the best fold + the default's pose and gaze


@dataclass
class FinetuneAUConfig:
    data: AUDataConfig = field(default_factory=AUDataConfig)
    model: AUModelConfig = field(default_factory=AUModelConfig)
    train: AUTrainConfig = field(default_factory=AUTrainConfig)


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
    settings["train"].pop("bundle")
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
    if dataset == "blendshapes":
        return read_blendshape_aus(FaceTrackCache(data.cache), aus=data.aus,
                                   presence_intensity=data.occurrence_threshold)
    raise ConfigError(f"data.dataset={data.dataset!r}: choose bp4d, disfa, csv or blendshapes")


def subject_parts(data: AUDataConfig, subjects, seed: int) -> list[list[str]]:
    """The three subject parts of the folds (``subjects``: the labelled faces' subjects, for the blendshape split)."""
    if data.parts is not None:
        return [[str(subject) for subject in part] for part in data.parts]
    if data.dataset.lower() == "csv":
        raise ConfigError("data.dataset=csv: give data.parts (three subject lists) to define the folds")
    if data.dataset.lower() == "blendshapes":  # identity-disjoint thirds, fixed by the seed
        names = sorted(set(np.asarray(subjects).tolist()))
        if len(names) < 3:
            raise ConfigError(f"data.dataset=blendshapes: {len(names)} identities in {data.cache}; three folds need "
                              "three or more (give data.parts)")
        order = np.random.default_rng(seed).permutation(len(names))
        return [[names[k] for k in sorted(order[part::3])] for part in range(3)]
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


def load_au_encoder(model: AUModelConfig, cache: FaceTrackCache) -> FaceActionEncoder:
    """The pretrained encoder (a ``TwinCycleAutoencoder`` checkpoint gives its encoder) or a random one,
    checked against the cache's crops (:func:`~video_fer.faces.alignment.check_encoder_crops`)."""
    if model.encoder is None:
        size = model.tae["image_size"] or cache.size  # null: the cache's crop side
        check_encoder_crops(cache.alignment, size, f"{cache.root} (model.tae.image_size)")
        return FaceActionEncoder(TAEConfig(**{**model.tae, "image_size": size}))
    export = load_encoder(model.encoder)
    if not isinstance(export.encoder, FaceActionEncoder):
        raise ConfigError(f"model.encoder={model.encoder}: holds a {type(export.encoder).__name__}, not a TAE encoder; "
                          "give the encoder/ folder written by recipes/pretrain_video.py")
    check_encoder_crops(cache.alignment, export.crops, f"{cache.root} (model.encoder={model.encoder})")
    return export.encoder


class EmbeddingRows(torch.utils.data.Dataset):
    """Precomputed embeddings with labels: items ``{"embedding" (D,), "occurrence" (A,), "intensity" (A,)}``."""

    def __init__(self, embeddings: torch.Tensor, faces: LabelledCacheFaces) -> None:
        self.embeddings = embeddings
        self.labels = AUFaceDataset(None, faces)  # reuses its label tensors; no crop is read

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitem__(self, row: int) -> dict:
        return {"embedding": self.embeddings[row], "occurrence": self.labels.occurrence[row],
                "intensity": self.labels.intensity[row]}


# ---------------------------------------------------------------------------------- one fold
def predict(model: AUClassifier, cache, faces: LabelledCacheFaces, embeddings: torch.Tensor | None, batch_size: int,
            device) -> np.ndarray:
    """Probabilities (occurrence) or intensities ``(N, A)`` of every row of ``faces`` (model in eval mode)."""
    def forward(network, rows):
        if embeddings is not None:
            return network.predict(embeddings[rows].to(device))
        crops = read_face_crops(cache, faces.track_ids[rows.numpy()], faces.positions[rows.numpy()])
        return network.predict(as_float_images(crops.to(device)))

    return predict_in_batches(model, np.arange(len(faces)), batch_size, forward, len(model.config.au_numbers))


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


def fold_training(fold: int, split: dict, split_embeddings: dict, config: FinetuneAUConfig, encoder, cache,
                  run: RecipeRun):
    """Model, positive weights, optimiser and loader of one fold, prepared by accelerate.

    Returns ``(model, optimizer, loader, order, pos_weight)``; ``order`` is the sampler's generator,
    reseeded every epoch so a resumed fold draws the same batches.
    """
    data, train = config.data, config.train
    au_numbers = list(split["train"].table.au_numbers)
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
    order = torch.Generator()
    if data.balanced_sampling:
        sampler = torch.utils.data.WeightedRandomSampler(
            torch.from_numpy(balanced_sampling_weights(train_occurrence)), len(dataset), replacement=True,
            generator=order)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=order)
    lone_last = len(dataset) % train.batch_size == 1  # BatchNorm cannot train on a batch of one frame
    loader = torch.utils.data.DataLoader(dataset, batch_size=train.batch_size, sampler=sampler, drop_last=lone_last,
                                         num_workers=data.num_workers if train.mode == "finetune" else 0)
    model, optimizer, loader = run.accelerator.prepare(model, optimizer, loader)
    return model, optimizer, loader, order, torch.from_numpy(pos_weight).to(run.accelerator.device)


def batch_inputs(batch: dict, config: FinetuneAUConfig, generator: torch.Generator) -> torch.Tensor:
    """What the model takes: precomputed embeddings (linear), or crops, jittered when ``data.augment``."""
    if config.train.mode == "linear":
        return batch["embedding"]
    if config.data.augment:
        return random_crop_jitter(batch["image"], generator)
    return as_float_images(batch["image"])


def batch_loss(outputs: torch.Tensor, batch: dict, task: str, pos_weight: torch.Tensor) -> torch.Tensor:
    if task == "occurrence":
        return masked_bce_loss(outputs.float(), batch["occurrence"], pos_weight)
    return masked_mse_loss(outputs.float(), batch["intensity"])


def end_of_epoch(run: RecipeRun, model, out: Path, fold: int, progress: dict, score: float | None, losses: list,
                 log, keep_checkpoints: int, alignment: dict) -> None:
    """Keep the best model, log the epoch, checkpoint it (with the early-stopping state)."""
    epoch = progress["epoch"]
    improved = record_validation(progress, score, epoch)
    if improved and run.is_main:
        save_model(run.accelerator.unwrap_model(model), out / "model",
                   extra={"fold": fold, "epoch": epoch, "validation": score, "alignment": alignment})
    if run.is_main:
        log.write({"step": epoch, "epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                   "validation": "" if score is None else score, "best_epoch": progress["best_epoch"]})
    save_checkpoint(run.accelerator, out, epoch, keep_checkpoints, extra={"progress.json": progress})


def test_fold(run: RecipeRun, out: Path, fold: int, split: dict, split_embeddings: dict, cache, config: FinetuneAUConfig,
              progress: dict, subjects: tuple, pos_weight: torch.Tensor, fingerprint: str) -> dict:
    """The best model on the fold's test subjects: ``predictions.npz`` and ``result.json`` (main process)."""
    data, train = config.data, config.train
    best = load_model(out / "model").to(run.accelerator.device)
    outputs = predict(best, cache, split["test"], split_embeddings["test"], train.embedding_batch_size,
                      run.accelerator.device)
    table = split["test"].table
    predictions = FoldPredictions(tuple(table.au_numbers), outputs if train.task == "occurrence" else None,
                                  table.occurrence, table.subjects, table.sources, table.frames,
                                  outputs if train.task == "intensity" else None, table.intensity)
    predictions.save(out / "predictions.npz")
    intensity_threshold = data.occurrence_threshold or DISFA_OCCURRENCE_THRESHOLD  # the labels' own threshold
    train_subjects, val_subjects, test_subjects = subjects
    result = {**evaluate_fold(predictions, train.threshold, intensity_threshold), "fold": fold,
              "fingerprint": fingerprint, "train_subjects": train_subjects, "validation_subjects": val_subjects,
              "test_subjects": test_subjects, "best_epoch": progress["best_epoch"],
              "epochs_trained": progress["epoch"], "positive_weights": pos_weight.cpu().tolist()}
    with atomic_write(out / "result.json") as handle:
        json.dump(result, handle, indent=2)
    run.accelerator.print(f"fold {fold}: test mean F1 {result['mean_f1']:.4f} on {result['frames']} frames")
    return result


def run_fold(fold: int, *, config: FinetuneAUConfig, run: RecipeRun, cache, faces: LabelledCacheFaces,
             embeddings: torch.Tensor | None, encoder: FaceActionEncoder, parts, fingerprint: str, resume) -> dict:
    data, train = config.data, config.train
    accelerator, out = run.accelerator, run.out / f"fold_{fold}"
    if (out / "result.json").is_file():
        finished = json.loads((out / "result.json").read_text())
        if finished.get("fingerprint") != fingerprint:
            raise ConfigError(f"{out}: this fold finished with other settings (fingerprint {finished.get('fingerprint')} "
                              f"vs {fingerprint}); use another train.output_dir or delete {out}")
        accelerator.print(f"fold {fold}: already finished (mean F1 {finished['mean_f1']:.4f}), skipped")
        return finished

    subjects = fold_subjects(parts, fold, set(faces.subjects), data.val_fraction, train.seed)
    rows = {name: np.flatnonzero(np.isin(faces.table.subjects, names))
            for name, names in zip(("train", "val", "test"), subjects)}
    split = {name: faces.select(index) for name, index in rows.items()}
    split_embeddings = {name: None if embeddings is None else embeddings[torch.from_numpy(index)]
                        for name, index in rows.items()}
    accelerator.print(f"fold {fold}: train {len(split['train'])} frames of {len(subjects[0])} subjects, validation "
                      f"{len(split['val'])} of {len(subjects[1])}, test {len(split['test'])} of {len(subjects[2])}")

    # ---------------------------------------------------------------- model, loss weights, optimiser, resume
    reseed(train.seed + fold)
    model, optimizer, loader, order, pos_weight = fold_training(fold, split, split_embeddings, config, encoder, cache,
                                                                run)
    progress = {"epoch": 0, "best_score": None, "best_epoch": None, "epochs_without_improvement": 0}
    checkpoint = resume_state(run, resume, out)
    if checkpoint is not None:
        progress = json.loads((checkpoint / "progress.json").read_text())
        accelerator.print(f"fold {fold}: resumed from {checkpoint} (epoch {progress['epoch']})")
    log, = run_logs(run, progress["epoch"] if checkpoint else None, ("train.csv",), out)

    # ---------------------------------------------------------------- loop (one step per batch, validation per epoch)
    unwrapped = accelerator.unwrap_model(model)
    bar = tqdm(total=train.epochs, initial=progress["epoch"], desc=f"fold {fold}", disable=not run.is_main)
    while progress["epoch"] < train.epochs:
        epoch = progress["epoch"]
        order.set_state(seeded_generator(train.seed, fold, epoch).get_state())  # the same order after a resume
        model.train()
        unwrapped.encoder.train(train.mode != "linear")  # frozen: BatchNorm statistics stay those of pretraining
        losses = []
        for step, batch in enumerate(loader):
            inputs = batch_inputs(batch, config, seeded_generator(train.seed, run.rank, fold, epoch, step))
            with accelerator.autocast():
                loss = batch_loss(model(inputs), batch, train.task, pos_weight)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        progress["epoch"] = epoch + 1
        score = validation_score(unwrapped, cache, split["val"], split_embeddings["val"], train,
                                 accelerator.device) if len(split["val"]) else None
        end_of_epoch(run, model, out, fold, progress, score, losses, log, train.keep_checkpoints,
                     cache.alignment.to_dict())
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
    result = test_fold(run, out, fold, split, split_embeddings, cache, config, progress, subjects, pos_weight,
                       fingerprint) if run.is_main else {}
    accelerator.wait_for_everyone()
    return result


def labelled_faces(run: RecipeRun, config: FinetuneAUConfig) -> tuple[LabelledCacheFaces, dict, FaceTrackCache]:
    """The label table joined with the face cache: the labelled frames with a face, the report of those without."""
    data = config.data
    table = read_labels(data)
    if data.sequence_videos is not None:  # still images -> the sequence videos that were prepared
        if run.is_main:
            write_sequence_videos(table, data.sequence_videos, progress=True)
        run.accelerator.wait_for_everyone()
        table = remap_to_sequence_videos(table, data.sequence_videos)
    cache = FaceTrackCache(data.cache)
    if config.train.task == "intensity" and table.intensity is None:
        raise ConfigError(f"train.task=intensity: data.dataset={data.dataset} has no intensity labels (DISFA has)")
    faces, join = match_labelled_faces(table, cache)
    run.accelerator.print(join.summary())  # frames without a face are reported per subject, never dropped silently
    if not len(faces):
        raise ConfigError(f"{data.cache}: none of the {len(table)} labelled frames has a face in this cache; prepare "
                          "the dataset's videos into it (`video-fer prepare`) or check data.cache")
    return faces, faces_report(join), cache


def write_run_info(run: RecipeRun, config: FinetuneAUConfig, report: dict, encoder, fingerprint: str) -> None:
    """``faces_report.json`` and ``run.json`` (what ``video-fer evaluate`` prints beside the scores)."""
    data, train = config.data, config.train
    with atomic_write(run.out / "faces_report.json") as handle:
        json.dump(report, handle, indent=2)
    run_info = {"dataset": data.dataset.lower() if data.dataset.lower() != "csv" else None,
                "method": ("random-init " if config.model.encoder is None else "")
                          + f"{'TAE' if encoder.config.attention_streams else 'TCAE'} encoder, "
                          f"{METHOD_NAMES[train.mode]}" + (" (intensity)" if train.task == "intensity" else ""),
                "mode": train.mode, "task": train.task, "encoder": config.model.encoder or "random init",
                "fingerprint": fingerprint, "faces": {k: report[k] for k in ("labelled", "without_face")},
                "occurrence_threshold": data.occurrence_threshold or DISFA_OCCURRENCE_THRESHOLD,
                "config": config_to_dict(config)}
    with atomic_write(run.out / "run.json") as handle:
        json.dump(run_info, handle, indent=2)


def frozen_embeddings(run: RecipeRun, encoder, cache, faces: LabelledCacheFaces, batch_size: int,
                      fingerprint: str) -> torch.Tensor:
    """The frozen encoder's embedding of every labelled face, computed once per run and reused by every fold."""
    path = run.out / "embeddings.pt"
    key = hashlib.sha1(json.dumps([fingerprint, faces.track_ids.tolist(), faces.positions.tolist()]).encode()
                       ).hexdigest()
    if run.is_main and not (path.is_file() and torch.load(path)["key"] == key):
        computed = compute_embeddings(encoder.to(run.accelerator.device), cache, faces, batch_size,
                                      run.accelerator.device, progress=True)
        with atomic_path(path) as temporary:
            torch.save({"key": key, "embeddings": computed}, temporary)
    run.accelerator.wait_for_everyone()
    return torch.load(path)["embeddings"]


def write_bundle(out: Path, config: FinetuneAUConfig) -> Path:
    """``<out>/bundle``: the best fold's model (its encoder is the run's, frozen in linear mode) with the
    no-training default's head pose and gaze columns (``video-fer bundle --au[-intensity] <out>``)."""
    from video_fer.track.assemble import assemble_bundle

    task = "au_intensity" if config.train.task == "intensity" else "au"
    bundle = assemble_bundle(out / "bundle", {task: out}, default_columns=("pose", "gaze"))
    print(f"track bundle: {out / 'bundle'} ({', '.join(bundle.column_sources())})")
    return out / "bundle"


# ---------------------------------------------------------------------------------- the recipe
def main(argv=None) -> int:
    # ---------------------------------------------------------------- config
    parser = recipe_parser(__doc__, DEFAULT_CONFIG, resume_help="continue an unfinished fold from its latest "
                                                                "checkpoint (finished folds are always skipped)")
    parser.add_argument("--fold", default="all", choices=("1", "2", "3", "all"),
                        help="test fold to run; all = the three folds, then their mean (default)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides, schema=FinetuneAUConfig)
    check_config(config)
    train = config.train
    # finetune: the pose branch (and, with attention streams, the trunk's last block) do not feed phi; DDP must know
    run = start_run(config, train.output_dir, train.seed, train.mixed_precision, record_config=False,  # run.json has it
                    find_unused_parameters=train.mode == "finetune")
    fingerprint = run_fingerprint(config)

    # ---------------------------------------------------------------- labels joined with the face cache, the encoder
    faces, report, cache = labelled_faces(run, config)
    encoder = load_au_encoder(config.model, cache)
    if run.is_main:
        write_run_info(run, config, report, encoder, fingerprint)
    embeddings = None
    if train.mode == "linear":  # frozen encoder: embeddings once for every fold
        embeddings = frozen_embeddings(run, encoder, cache, faces, train.embedding_batch_size, fingerprint)
        encoder = encoder.cpu()

    # ---------------------------------------------------------------- folds, then their mean
    parts = subject_parts(config.data, faces.subjects, train.seed)
    for fold in [1, 2, 3] if args.fold == "all" else [int(args.fold)]:
        run_fold(fold, config=config, run=run, cache=cache, faces=faces, embeddings=embeddings, encoder=encoder,
                 parts=parts, fingerprint=fingerprint, resume=args.resume)
    if run.is_main:
        results = evaluate_run(run.out, threshold=train.threshold)
        run.accelerator.print(markdown_table(results))
        if train.bundle:
            write_bundle(run.out, config)
        run.accelerator.print(f"outputs in {run.out.resolve()}: results.md, results.json, fold_*/ (model/, "
                              "predictions.npz)" + (", bundle/" if train.bundle else ""))
    finish_run(run)
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main, "finetune_au"))
