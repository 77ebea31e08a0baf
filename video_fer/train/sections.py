"""Config sections more than one recipe uses (each recipe's own schema sits at its top, ``recipes/*.py``)."""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import ClassVar

from video_fer.errors import ConfigError
from video_fer.models.tae import TAEConfig


@dataclass
class OptimConfig:
    """Optimiser and schedule. Reference: sgd lr 1e-3 momentum 0.9; ours: adamw.

    Checked when the config is loaded, before any data or model is built.
    """

    SCHEDULES: ClassVar[tuple[str, ...]] = ("cosine", "plateau", "constant")

    name: str = "adamw"  # "adamw" or "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" (warmup + cosine), "plateau" (after the curriculum), "constant"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    plateau_patience: int = 3  # epochs without validation improvement before the LR drops ("plateau")
    plateau_factor: float = 0.5
    grad_clip: float = 1.0  # max global gradient norm; 0 disables

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise ConfigError(f"optim.name={self.name!r}: choose 'adamw' or 'sgd'")
        if self.schedule not in self.SCHEDULES:
            raise ConfigError(f"optim.schedule={self.schedule!r}: choose {' or '.join(map(repr, self.SCHEDULES))}")
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"optim.betas={self.betas!r}: give two numbers in [0, 1), e.g. [0.9, 0.999]")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr={self.lr!r}: must be > 0")


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """:class:`OptimConfig` of the head recipes: no "plateau" schedule (it follows pretraining's curriculum)."""

    SCHEDULES: ClassVar[tuple[str, ...]] = ("cosine", "constant")


@dataclass
class FinetuneModelConfig:
    """The encoder of a head recipe: fresh (``backbone``: TAEConfig keys) or pretrained (``encoder``)."""

    image_size: int = 128  # crop side; a pretrained encoder's export must agree (its alignment is used)
    encoder: str | None = None  # a saved encoder folder (video_fer.load_model); null = a fresh TAE encoder
    freeze_encoder: bool = False  # linear-probe protocol: train the head only
    backbone: dict = field(default_factory=dict, metadata={"schema": TAEConfig})  # ignored with `encoder`
    head_options: dict = field(default_factory=dict, metadata={"free_keys": True})  # extra create_head() arguments


@dataclass
class FinetuneTrainConfig:
    """The loop of a head recipe (finetune_expression.py, finetune_va.py)."""

    output_dir: str = "runs/finetune"
    seed: int = 0
    batch_size: int = 32
    epochs: int = 6
    max_steps: int = 0  # 0: epochs decide
    mixed_precision: str = "no"
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 5
    redraw_synthetic: bool = True  # synthetic data: animate the training faces afresh every epoch
    color_jitter: float = 0.2  # brightness / contrast / channel gains drawn in [1 - x, 1 + x] (0: off)
    flip: bool = True  # random horizontal flips (landmarks mirrored)
    threads: int = 0  # torch threads per process (0: torch's default)


def head_recipe_schema(name: str, model: type, loss: type, evaluation: type, train: type) -> type:
    """The top-level schema of a head recipe: ``data`` (:class:`~video_fer.data.expression_datasets.FaceLabelDataConfig`),
    ``model``, ``loss``, ``optim`` (:class:`FinetuneOptimConfig`), ``eval``, ``train``: a dataclass named ``name``."""
    from video_fer.data.expression_datasets import FaceLabelDataConfig

    sections = (("data", FaceLabelDataConfig), ("model", model), ("loss", loss), ("optim", FinetuneOptimConfig),
                ("eval", evaluation), ("train", train))
    return make_dataclass(name, [(key, kind, field(default_factory=kind)) for key, kind in sections])


__all__ = ["FinetuneModelConfig", "FinetuneOptimConfig", "FinetuneTrainConfig", "OptimConfig", "head_recipe_schema"]
