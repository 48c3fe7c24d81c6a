"""The types of a training run: its options, its result, its live state, its error."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import SoundlocError
from .distributed import DistInfo
from ..model.classifier import MODALITIES, AVClassifier


MONITOR = "av"  # the head whose validation accuracy drives the plateau schedule and best.pt
SCHEDULES = ("plateau", "cosine")
LOSS_PARTS = (*MODALITIES, "contrastive", "box")
LOG_REASONS = 50  # skipped (id, reason) pairs kept per epoch in log.jsonl; the count is exact


class TrainError(SoundlocError, ValueError):
    """A training run that cannot start or continue as asked (one line for the user)."""


@dataclass(frozen=True)
class TrainOptions:
    """How to train (the model itself is the Config). ``batch_size`` is per process.

    ``amp``: ``auto`` (fp16 autocast + GradScaler on CUDA, off on CPU), ``on`` or ``off``.
    ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun: ``cuda:LOCAL_RANK``).
    """

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    patience: int = 3
    factor: float = 0.1
    workers: int = 2
    amp: str = "auto"
    seed: int = 0
    device: str = "auto"
    keep_epochs: bool = False
    progress: bool = True
    crop_seconds: float | None = None  # train on random windows of this length (whole clips validate)
    flip: bool = False  # random horizontal flips while training
    zoom: float = 1.0  # < 1: shrink training frames by a random factor in [zoom, 1] (train.datasets.Augment)
    cache: bool = False  # keep decoded clips in memory after the first epoch (ClipDataset.keep_decoded)
    schedule: str = "plateau"  # the paper's; the default recipe picks "cosine" (module docstring)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise TrainError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.amp not in ("auto", "on", "off"):
            raise TrainError(f"amp must be auto, on or off, not {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.workers < 0:
            raise TrainError(f"need epochs >= 1, batch size >= 1, workers >= 0 (got {self.epochs}, {self.batch_size}, {self.workers})")
        if not (self.lr > 0 and 0 < self.factor < 1 and self.patience >= 0):
            raise TrainError(f"bad schedule: lr={self.lr}, factor={self.factor}, patience={self.patience}")


@dataclass(frozen=True)
class TrainResult:
    """What a run produced; ``accuracy`` is the last epoch's per-head validation accuracy."""

    out_dir: str
    epochs: int
    resumed_from: int
    best_epoch: int
    best_monitored: float  # the best value of `monitor` (accuracy, or minus the loss)
    accuracy: dict[str, float]
    train_loss: float
    skipped: int
    seconds: float
    world_size: int
    last_checkpoint: str
    best_checkpoint: str
    monitor: str = ""  # what best_monitored holds: e.g. val_accuracy_av (plateau) or val_minus_loss (cosine)
    provenance: dict[str, Any] | None = None  # a student's inputs (train.start.provenance), as its checkpoints record them

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainState:
    """Everything a step or a checkpoint needs; ``model`` may be the DDP wrapper of ``module``."""

    module: AVClassifier
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool
    dist: DistInfo
    schedule: str = "plateau"
    zoom: float = 1.0  # the run's scale augmentation (TrainOptions.zoom), kept so that a resume goes on with it
    epoch: int = 0  # completed epochs
    best_monitored: float = -math.inf  # the best of the monitored value: accuracy, or minus the loss (cosine)
    best_epoch: int = 0
    provenance: dict[str, Any] | None = None  # what a student was trained from (train.start.provenance); saved with every epoch
