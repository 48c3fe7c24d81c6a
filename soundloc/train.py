"""Training on one CPU, one GPU or many GPUs through ``torchrun``, with one of two recipes
(``config.RECIPES``, ``train(recipe=...)``):

- ``paper`` (§4.2 exactly): SGD (lr 1e-2, momentum 0.9, weight decay 1e-4), individual FCs, the
  equally weighted sum of the heads' cross-entropies (Eq. 3), dot-product maps, and the learning
  rate divided by 10 when the validation accuracy of the audio-visual head has not improved for 3
  epochs (``ReduceLROnPlateau(mode="max")``; without a validation split, the training accuracy);
  ``best.pt`` is the epoch with the best such accuracy.
- ``default``: the same SGD and loss (Eq. 3), the ``tied-fc`` head, cosine maps, and a cosine
  learning-rate decay over the run's epochs (the class-aware contrastive term of
  ``model.classifier.training_loss`` is one override away: ``contrastive_weight=1``). Why: validation accuracy saturates at 1.0 within 2-3 epochs on small data,
  after which the plateau rule divides the rate every 3 epochs while the maps still improve; a
  fixed schedule does not depend on a metric that has stopped moving. ``best.pt`` is the epoch
  with the lowest validation loss. The ablation behind it is in benchmarks/RESULTS.md (issue 10).

Every validation also runs the label-free audio-dependence check (``soundloc.dependence``) on
the validation maps, logs it and warns when the maps do not follow the audio.

Files in ``out_dir`` (only rank 0 writes):

- ``last.pt``: the last *complete* epoch (model, optimiser, scheduler, grad scaler, epoch, best
  metric, RNG state), written atomically; a run killed at any moment loses at most the epoch in
  progress and ``--resume`` continues from here with the same data order (the sampler is seeded
  by ``seed`` and the epoch, not by the RNG state).
- ``best.pt``: the epoch with the best validation accuracy of the ``av`` head.
- ``epoch_XXX.pt`` when ``keep_epochs``.
- ``log.jsonl``: one line per epoch: losses, each head's accuracy, learning rate, throughput and
  the clips skipped as unreadable with their reasons.

Distributed: ``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; the process group uses
NCCL on CUDA and gloo on CPU. Each rank gets ``batch_size`` clips per step (the global batch is
``batch_size * world_size``), the DistributedSampler is re-seeded every epoch, and metrics are
summed over ranks. BatchNorm: on CUDA with more than one process the model is converted to
SyncBatchNorm, because per-GPU batches of 100-frame clips are small (a handful of clips) and
per-GPU statistics would be noisy; on CPU (gloo, no SyncBN kernels) each rank keeps plain BN.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .config import Config, ConfigError
from .config import RECIPES
from .config import preset as config_preset
from .data.dataset import SkipReport, collate
from .dependence import audio_dependence, check_steps, other_clips
from .distributed import (DistInfo, ShardSampler, close_distributed, dist_from_env, gather_list, gather_skips,
                          init_distributed, resolve_device)
from .fileio import atomic_write_bytes
from .localize import window_bounds
from .model.checkpoint import CheckpointError, load_checkpoint, load_video_weights, read_checkpoint, save_checkpoint
from .model.classifier import MODALITIES, AVClassifier, Features, localization_maps, moment_scores, training_loss

MONITOR = "av"  # the head whose validation accuracy drives the plateau schedule and best.pt
SCHEDULES = ("plateau", "cosine")
LOSS_PARTS = (*MODALITIES, "contrastive")
LOG_REASONS = 50  # skipped (id, reason) pairs kept per epoch in log.jsonl; the count is exact


class TrainError(ValueError):
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
    zoom: float = 1.0  # < 1: shrink training frames by a random factor in [zoom, 1] (data.dataset.Augment)
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
    best_accuracy: float
    accuracy: dict[str, float]
    train_loss: float
    skipped: int
    seconds: float
    world_size: int
    last_checkpoint: str
    best_checkpoint: str
    monitor: str = ""  # what best_accuracy holds: e.g. val_accuracy_av (plateau) or val_minus_loss (cosine)

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
    epoch: int = 0  # completed epochs
    best_accuracy: float = -math.inf  # of the monitored value: accuracy, or minus the loss
    best_epoch: int = 0


# -- setup ---------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_state(config: Config, options: TrainOptions, info: DistInfo, device: torch.device,
                init_video: str | Path | None = None) -> TrainState:
    """Model (optionally Kinetics-initialised video net), SGD, LR schedule, grad scaler, DDP."""
    amp = options.amp == "on" or (options.amp == "auto" and device.type == "cuda")
    if amp and device.type != "cuda":
        raise TrainError("mixed precision (--amp on) needs a CUDA device; use --amp auto or off on CPU")
    module = AVClassifier(config)
    if init_video is not None:
        load_video_weights(module, init_video)
    if info.enabled and device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    model: nn.Module = module
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    optimizer = torch.optim.SGD(module.parameters(), lr=options.lr, momentum=options.momentum,
                                weight_decay=options.weight_decay)
    scheduler: Any
    if options.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=options.factor,
                                                               patience=options.patience)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    return TrainState(module, model, optimizer, scheduler, scaler, device, amp, info, options.schedule)


# -- data ----------------------------------------------------------------------------------


def make_loader(dataset: Dataset, options: TrainOptions, info: DistInfo, train: bool,
                collate_fn: Callable | None) -> DataLoader:
    """Training: shuffled by (seed, epoch) through a DistributedSampler, also for one process,
    so a resumed run sees the same order; validation: sharded, unshuffled."""
    if train:
        sampler: Sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                              shuffle=True, seed=options.seed)
    else:
        sampler = ShardSampler(len(dataset), info)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=options.batch_size, sampler=sampler, num_workers=options.workers,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                      persistent_workers=options.workers > 0)


def head_names(config: Config) -> tuple[str, ...]:
    """The heads whose logits the model returns (``av-only`` has only ``av``)."""
    return ("av",) if config.head == "av-only" else MODALITIES


def batch_skips(batch: dict[str, Any]) -> list[tuple[str, str]]:
    """The (clip id, reason) pairs a collate function dropped from this batch."""
    return [(str(i), str(r)) for i, r in batch.get("skipped", ())]


# -- one step, one epoch, evaluation ---------------------------------------------------------


@dataclass
class Totals:
    """Sums over an epoch on this rank; ``reduce`` sums them over ranks."""

    n: float = 0.0
    loss: float = 0.0
    parts: Counter = field(default_factory=Counter)
    correct: Counter = field(default_factory=Counter)

    def add(self, n: int, loss: float, parts: dict[str, float], correct: dict[str, int]) -> None:
        self.n += n
        self.loss += loss * n
        for k, v in parts.items():
            self.parts[k] += v * n
        for k, v in correct.items():
            self.correct[k] += v

    def reduce(self, info: DistInfo, device: torch.device) -> "Totals":
        if not info.enabled:
            return self
        keys = list(LOSS_PARTS)
        t = torch.tensor([self.n, self.loss, *(self.parts[k] for k in keys), *(self.correct[k] for k in keys)],
                         dtype=torch.float64, device=device)
        dist.all_reduce(t)
        v = t.tolist()
        m = len(keys)
        parts = Counter({k: x for k, x in zip(keys, v[2:2 + m]) if k in self.parts})  # no contrastive: no part
        return Totals(v[0], v[1], parts, Counter(dict(zip(keys, v[2 + m:]))))

    def summary(self, heads: Iterable[str]) -> dict[str, Any]:
        n = max(self.n, 1.0)
        return {"clips": int(self.n), "loss": self.loss / n,
                "loss_parts": {k: self.parts[k] / n for k in (*heads, "contrastive") if k in self.parts},
                "accuracy": {k: self.correct[k] / n for k in heads}}


def forward_backward(state: TrainState, batch: dict[str, Any]) -> tuple[float, dict[str, float], dict[str, int]]:
    """Loss (``training_loss``) and its gradients for one batch, all-reduced by DDP; no optimiser
    step (``optimizer_step``), so a test can compare gradients. Returns loss, parts, correct."""
    device = state.device
    video = batch["video"].to(device, non_blocking=True)
    mel = batch["mel"].to(device, non_blocking=True)
    labels = torch.as_tensor(batch["label"]).to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.float16, enabled=state.amp):
        logits, feats = state.model(video, mel, with_features=True)
        loss, parts = training_loss(state.module.config, logits, feats, labels)
    state.scaler.scale(loss).backward()
    correct = {k: int((v.argmax(1) == labels).sum()) for k, v in logits.items()}
    return float(loss.detach()), parts, correct


def optimizer_step(state: TrainState) -> None:
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)


def _all_ranks_have_data(state: TrainState, n: int) -> bool:
    """True when every rank's batch has clips. DDP needs every rank in every backward, so a
    batch whose clips were all unreadable makes all ranks skip that step together."""
    if not state.dist.enabled:
        return n > 0
    flag = torch.tensor([1 if n > 0 else 0], device=state.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def train_epoch(state: TrainState, loader: DataLoader, on_batch: Callable[[int, float], None]) -> tuple[Totals, list]:
    """One pass over the training data; returns this rank's totals and skipped (id, reason)."""
    state.model.train()
    totals, skipped = Totals(), []
    for batch in loader:
        skipped += batch_skips(batch)
        n = len(batch["label"]) if batch.get("label") is not None else 0
        if not _all_ranks_have_data(state, n):
            continue
        loss, parts, correct = forward_backward(state, batch)
        if not math.isfinite(loss) and not state.amp:
            raise TrainError(f"the loss became {loss} at epoch {state.epoch + 1}; try a lower --lr")
        optimizer_step(state)
        totals.add(n, loss, parts, correct)
        on_batch(n, loss)
    return totals, skipped


def map_pairs(feats: Features, labels: torch.Tensor, kind: str, window_steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(own-audio map, other-audio map) per clip of a batch with the centred window at the
    clip's top-1 informative moment (``dependence.check_step``), the other audio chosen by
    ``dependence.other_clips`` within the batch."""
    if len(labels) < 2:
        return []
    other = other_clips(labels.tolist(), len(labels))
    V, za = feats.V.float(), feats.za.float()
    own = localization_maps(V, za, kind).cpu().numpy()
    swapped = localization_maps(V, za[other], kind).cpu().numpy()
    steps = check_steps(moment_scores(feats.zv.float(), za).cpu().numpy())
    pairs = []
    for b, t in enumerate(steps):
        lo, hi = window_bounds(t, window_steps, own.shape[1], "centered")
        pairs.append((own[b, lo:hi].mean(0), swapped[b, lo:hi].mean(0)))
    return pairs


@torch.no_grad()
def evaluate(state: TrainState, loader: DataLoader) -> tuple[Totals, list, list]:
    """Per-head loss and accuracy on this rank's shard, with the bare module (DDP's forward
    would sync buffers, and ranks may hold different numbers of validation batches), and the
    (own-audio, other-audio) map pairs of the audio-dependence check."""
    state.module.eval()
    config = state.module.config
    totals, skipped, pairs = Totals(), [], []
    for batch in loader:
        skipped += batch_skips(batch)
        n = len(batch["label"]) if batch.get("label") is not None else 0
        if n == 0:
            continue
        labels = torch.as_tensor(batch["label"]).to(state.device)
        with torch.autocast(state.device.type, dtype=torch.float16, enabled=state.amp):
            logits, feats = state.module(batch["video"].to(state.device), batch["mel"].to(state.device),
                                         with_features=True)
            loss, parts = training_loss(config, logits, feats, labels)
        totals.add(n, float(loss), parts, {k: int((v.argmax(1) == labels).sum()) for k, v in logits.items()})
        pairs += map_pairs(feats, labels, config.map_kind, config.window_steps)
    return totals, skipped, pairs


# -- checkpoints, resume, log ---------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain numbers, so a weights_only load accepts them."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss_next}}


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


def save_epoch(out: Path, state: TrainState, record: dict[str, Any], keep_epochs: bool) -> None:
    """last.pt (+ best.pt, epoch_XXX.pt), each atomic, then the log line. A kill between the
    two is repaired on resume from the checkpoint's own copy of the record."""
    extra = {"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
             "scaler": state.scaler.state_dict(), "epoch": state.epoch, "best_accuracy": state.best_accuracy,
             "best_epoch": state.best_epoch, "rng": rng_state(), "metrics": record, "schedule": state.schedule}
    save_checkpoint(out / "last.pt", state.module, **extra)
    if record["best"]:
        save_checkpoint(out / "best.pt", state.module, **extra)
    if keep_epochs:
        save_checkpoint(out / f"epoch_{state.epoch:03d}.pt", state.module, **extra)
    with open(out / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _config_diff(saved: Config, asked: Config) -> str:
    diffs = [f"{f.name}={getattr(saved, f.name)!r} (asked {getattr(asked, f.name)!r})"
             for f in dataclasses.fields(Config) if f.name != "class_names" and getattr(saved, f.name) != getattr(asked, f.name)]
    if saved.class_names != asked.class_names:
        diffs.append(f"class list ({len(saved.class_names)} classes saved, {len(asked.class_names)} asked)")
    return ", ".join(diffs)


def restore(state: TrainState, path: Path, config: Config) -> dict[str, Any]:
    """Load weights, optimiser, schedule, scaler, counters and RNG from ``path`` (weights_only)."""
    saved_model, data = load_checkpoint(path)
    diff = _config_diff(saved_model.config, config)
    if diff:
        raise TrainError(f"{path} was trained with another config: {diff}; resume with the same settings or a new --out")
    missing = [k for k in ("optimizer", "scheduler", "epoch", "rng") if k not in data]
    if missing:
        raise TrainError(f"{path} holds weights only (no {', '.join(missing)}): not a training checkpoint to resume")
    saved_schedule = data.get("schedule", "plateau")  # checkpoints before issue 10: the paper's
    if saved_schedule != state.schedule:
        raise TrainError(f"{path} was trained with the {saved_schedule} schedule, not {state.schedule}; "
                         f"resume with --schedule {saved_schedule}")
    state.module.load_state_dict(data["model"])
    state.optimizer.load_state_dict(data["optimizer"])
    state.scheduler.load_state_dict(data["scheduler"])
    if data.get("scaler") and state.scaler.is_enabled():
        state.scaler.load_state_dict(data["scaler"])
    state.epoch, state.best_accuracy, state.best_epoch = int(data["epoch"]), float(data["best_accuracy"]), int(data["best_epoch"])
    set_rng_state(data["rng"])
    return data


def repair_log(out: Path, epoch: int, record: dict[str, Any] | None) -> None:
    """Keep the log lines of epochs 1..epoch (a killed run may have logged a line its
    checkpoint never got, or half a line); put back the checkpoint's own line if it is missing."""
    path = out / "log.jsonl"
    kept: dict[int, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                e = int(json.loads(line)["epoch"])
            except (ValueError, KeyError, TypeError):
                continue
            if e <= epoch:
                kept[e] = line
    if record is not None and epoch not in kept:
        kept[epoch] = json.dumps(record)
    atomic_write_bytes(path, "".join(kept[e] + "\n" for e in sorted(kept)).encode("utf-8"))


def remove_stale_temps(out: Path) -> list[Path]:
    """Temp files of checkpoint writes that a kill interrupted (``.last.pt.XXXX.tmp``)."""
    stale = [p for p in out.glob(".*.pt.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_out_dir(out: Path, resume: bool, init_video: str | Path | None) -> None:
    if resume and init_video is not None:
        raise TrainError("--init-video starts a new run; --resume restores every weight from last.pt")
    if resume and not (out / "last.pt").is_file():
        raise TrainError(f"nothing to resume: {out / 'last.pt'} does not exist")
    if not resume and (out / "last.pt").is_file():
        raise TrainError(f"{out / 'last.pt'} exists: pass --resume to continue it, or choose another --out")


# -- the loop ------------------------------------------------------------------------------


class Reporter:
    """Progress bars and the per-epoch summary line; silent on ranks other than 0."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True, quiet=not enabled)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[rate]:.1f} clips/s"),
                            TimeRemainingColumn(), console=self.console, disable=not enabled, transient=True)
        self.epochs, self.task, self.clips, self.started = epochs, None, 0, 0.0

    def start_epoch(self, epoch: int, batches: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"epoch {epoch}/{self.epochs}", total=batches, loss=float("nan"), rate=0.0)
        self.clips, self.started = 0, time.perf_counter()

    def on_batch(self, n: int, loss: float) -> None:
        self.clips += n
        rate = self.clips / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, advance=1, loss=loss, rate=rate)

    def end_epoch(self, record: dict[str, Any]) -> None:
        acc = record["val"]["accuracy"] if record["val"] else record["train"]["accuracy"]
        heads = "  ".join(f"{k} {v:.3f}" for k, v in acc.items())
        which = "val" if record["val"] else "train"
        dep = record.get("audio_dependence")
        follows = f"  map change with other audio {dep['map_change']:.3f}" if dep and dep["clips"] else ""
        self.console.print(f"epoch {record['epoch']}/{self.epochs}  loss {record['train']['loss']:.4f}  "
                           f"{which} acc  {heads}{follows}  lr {record['lr']:.0e}  {record['clips_per_second']:.1f} clips/s"
                           + ("  [best]" if record["best"] else ""), soft_wrap=True)
        if record.get("audio_dependence_warning"):
            self.console.print(record["audio_dependence_warning"], markup=False, highlight=False)
        if record["skip_report"]:
            self.console.print(record["skip_report"], markup=False, highlight=False)


def run_epoch(state: TrainState, train_loader: DataLoader, val_loader: DataLoader | None,
              reporter: Reporter) -> dict[str, Any]:
    """Train one epoch, validate (with the audio-dependence check), step the schedule; returns
    the log record (all ranks)."""
    epoch = state.epoch + 1
    train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    lr = state.optimizer.param_groups[0]["lr"]
    reporter.start_epoch(epoch, len(train_loader))
    started = time.perf_counter()
    totals, skipped = train_epoch(state, train_loader, reporter.on_batch)
    seconds = time.perf_counter() - started
    val, dependence = None, None
    if val_loader is not None:
        val, val_skipped, pairs = evaluate(state, val_loader)
        skipped += val_skipped
        val = val.reduce(state.dist, state.device)
        pairs = gather_list(pairs, state.dist)
        dependence = audio_dependence([a for a, _ in pairs], [b for _, b in pairs])
    totals = totals.reduce(state.dist, state.device)
    report = SkipReport(keep=LOG_REASONS)
    report.add(gather_skips(skipped, state.dist))
    heads = head_names(state.module.config)
    summary = (val or totals).summary(heads)
    if state.schedule == "plateau":
        monitor, monitor_name = summary["accuracy"][MONITOR], f"accuracy_{MONITOR}"
        state.scheduler.step(monitor)
    else:
        monitor, monitor_name = -summary["loss"], "minus_loss"
        state.scheduler.step()
    state.epoch = epoch
    best = monitor > state.best_accuracy
    if best:
        state.best_accuracy, state.best_epoch = monitor, epoch
    return {"epoch": epoch, "lr": lr, "train": totals.summary(heads), "val": val.summary(heads) if val else None,
            "monitor": f"{'val' if val else 'train'}_{monitor_name}", "monitor_value": monitor, "best": best,
            "audio_dependence": dependence.to_dict() if dependence else None,
            "audio_dependence_warning": dependence.warning() if dependence else "",
            "skipped": report.to_dict(), "skip_report": report.summary() if report else "", "seconds": seconds,
            "clips_per_second": totals.n / max(seconds, 1e-9), "world_size": state.dist.world_size}


def fit(config: Config, train_set: Dataset, val_set: Dataset | None, out_dir: str | Path,
        options: TrainOptions = TrainOptions(), *, resume: bool = False, init_video: str | Path | None = None,
        collate_fn: Callable = collate) -> TrainResult:
    """Train ``config`` on datasets of dict items (video, mel, label, id) into ``out_dir``.

    Items may be ``soundloc.data.dataset.Skipped`` markers: the default ``collate`` drops them
    and the epoch's skip report lists them.

    Under torchrun every rank calls this with the same arguments. ``resume`` continues from
    ``out_dir/last.pt`` up to ``options.epochs`` (counted from the first epoch, not from the
    resume); the config must match the checkpoint's.
    """
    info = dist_from_env()
    device = resolve_device(options.device, info)
    out = Path(out_dir)
    check_out_dir(out, resume, init_video)
    init_distributed(info, device)
    try:
        result = _fit_in_group(config, options, info, device, out, train_set, val_set, resume, init_video,
                               collate_fn)
    except BaseException:
        close_distributed(info, clean=False)
        raise
    close_distributed(info)  # the model (and its DDP reducer) is already out of scope here
    return result


def _fit_in_group(config: Config, options: TrainOptions, info: DistInfo, device: torch.device, out: Path,
                  train_set: Dataset, val_set: Dataset | None, resume: bool, init_video: str | Path | None,
                  collate_fn: Callable) -> TrainResult:
    seed_everything(options.seed)
    state = build_state(config, options, info, device, init_video)
    start_record = restore(state, out / "last.pt", config).get("metrics") if resume else None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        repair_log(out, state.epoch, start_record)
    return _loop(state, options, out, train_set, val_set, collate_fn)


def _loop(state: TrainState, options: TrainOptions, out: Path, train_set: Dataset, val_set: Dataset | None,
          collate_fn: Callable | None) -> TrainResult:
    info, resumed_from, started = state.dist, state.epoch, time.perf_counter()
    train_loader = make_loader(train_set, options, info, True, collate_fn)
    val_loader = make_loader(val_set, options, info, False, collate_fn) if val_set is not None and len(val_set) else None  # type: ignore[arg-type]
    reporter = Reporter(options.progress and info.is_main, options.epochs)
    record: dict[str, Any] | None = None
    skipped = 0
    with reporter.bar:
        while state.epoch < options.epochs:
            record = run_epoch(state, train_loader, val_loader, reporter)
            if not record["train"]["clips"]:  # never a checkpoint of a model that saw nothing
                why = record["skip_report"] or "the training set is empty"
                raise TrainError(f"epoch {record['epoch']}: no training clip could be loaded, nothing was "
                                 f"trained and no checkpoint written ({' '.join(why.split())})")
            skipped += record["skipped"]["count"]
            if info.is_main:
                save_epoch(out, state, record, options.keep_epochs)
                reporter.end_epoch(record)
    if record is None:  # resumed a finished run: report what its checkpoint says
        record = read_last_record(out)
    acc = (record["val"] or record["train"])["accuracy"] if record else {}
    return TrainResult(out_dir=str(out), epochs=state.epoch, resumed_from=resumed_from, best_epoch=state.best_epoch,
                       best_accuracy=state.best_accuracy, accuracy=acc,
                       train_loss=record["train"]["loss"] if record else float("nan"), skipped=skipped,
                       seconds=time.perf_counter() - started, world_size=info.world_size,
                       last_checkpoint=str(out / "last.pt"), best_checkpoint=str(out / "best.pt"),
                       monitor=record.get("monitor", "") if record else "")


def read_last_record(out: Path) -> dict[str, Any] | None:
    lines = (out / "log.jsonl").read_text(encoding="utf-8").splitlines() if (out / "log.jsonl").is_file() else []
    return json.loads(lines[-1]) if lines else None


# -- from a dataset folder -------------------------------------------------------------------


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names in index order from the first column of a ``stat.csv``-style file
    (VGGSound's ``stat.csv``, the synthetic ``classes.csv``, or one name per line)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: class list not found")
    with open(path, newline="", encoding="utf-8") as f:
        names = [row[0].strip() for row in csv.reader(f) if row and row[0].strip()]
    if len(set(names)) != len(names) or not names:
        raise TrainError(f"{path}: the class list is empty or names a class twice")
    return tuple(names)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["width=0.5", "layers=1,1,1,1", "causal=true"]`` -> typed Config overrides."""
    fields = {f.name: f for f in dataclasses.fields(Config) if f.name != "class_names"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(fields)}"
            raise TrainError(f"bad override {item!r}: expected KEY=VALUE with a config field{hint}")
        default = getattr(Config(), key)
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            elif isinstance(default, tuple):
                out[key] = tuple(int(v) for v in value.split(","))
            else:
                out[key] = type(default)(value)
        except ValueError:
            raise TrainError(f"bad override {item!r}: {value!r} is not a {type(default).__name__}") from None
    return out


def base_config(out: Path, preset_name: str | None, overrides: dict[str, Any], resume: bool) -> Config:
    """The preset with overrides; when resuming without a preset, the checkpoint's own config."""
    if resume and preset_name is None and (out / "last.pt").is_file():
        try:
            return Config.from_dict(read_checkpoint(out / "last.pt")["config"]).replace(**overrides)
        except (KeyError, TypeError):
            raise TrainError(f"{out / 'last.pt'}: not a soundloc training checkpoint") from None
    return config_preset(preset_name or "small", **overrides)


def load_datasets(data: Path, config: Config, *, csv_path: str | Path | None, classes: Sequence[str] | None,
                  val_split: str | None, augment: Any = None) -> tuple[Config, Dataset, Dataset | None]:
    """Training and validation sets from a VGGSound folder or a ``path,label[,split]`` CSV;
    the config gets the class list (sorted labels of the CSV unless ``classes`` is given) and
    a matching ``num_classes``, so every checkpoint carries its class names."""
    from .data.dataset import DatasetError, PathListDataset, VGGSoundDataset

    def make(split: str | None, names: Sequence[str] | None, aug: Any = None) -> Dataset:
        if data.is_file():
            return PathListDataset(data, split=split, config=config, class_names=names, augment=aug)
        return VGGSoundDataset(data, csv_path, split=split, config=config, class_names=names, augment=aug)

    train_split = "train" if val_split is not None or not data.is_file() else None
    train_set = make(train_split, classes or config.class_names or None, augment)
    names = tuple(train_set.class_names)  # type: ignore[attr-defined]
    if config.num_classes != len(names) and config.class_names:
        raise TrainError(f"the config has {config.num_classes} classes, the class list {len(names)}")
    config = config.replace(num_classes=len(names), class_names=names)
    try:
        val_set = make(val_split, names) if val_split is not None else None
    except DatasetError as e:
        raise TrainError(f"{e} (choose the validation split with --val-split, or 'none')") from None
    return config, train_set, val_set


def recipe_settings(name: str, out: Path, preset: str | None, resume: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Config fields and TrainOptions a recipe starts from. Resuming without a preset
    keeps the checkpoint's own config and schedule: the recipe does not apply."""
    if name not in RECIPES:
        raise TrainError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    if resume and preset is None and (out / "last.pt").is_file():
        try:
            return {}, {"schedule": read_checkpoint(out / "last.pt").get("schedule", "plateau")}
        except CheckpointError as e:
            raise TrainError(str(e)) from None
    config_fields, option_fields = RECIPES[name]
    return dict(config_fields), dict(option_fields)


def train(data_dir: str | Path, out_dir: str | Path, *, preset: str | None = None, recipe: str = "default",
          overrides: dict[str, Any] | None = None, csv_path: str | Path | None = None,
          classes: str | Path | None = None, val_split: str | None = "test", resume: bool = False,
          init_video: str | Path | None = None, **options: Any) -> TrainResult:
    """Train on a VGGSound-format folder (``vggsound.csv`` + ``videos/``) or a
    ``path,label,split`` CSV. ``preset``: ``paper``/``small``/``tiny`` (default ``small``; on
    resume, the checkpoint's); ``recipe``: ``default`` or ``paper`` (``config.RECIPES``: head,
    map, loss and schedule; the module docstring says why); ``overrides``: Config fields, over
    the recipe's; ``classes``: a stat.csv-style class list; ``val_split``: the split validated
    on each epoch (None: none); ``options``: TrainOptions fields (epochs, batch_size, lr,
    workers, amp, seed, device, schedule, ...), over the recipe's.
    """
    from .data.dataset import DatasetError

    out = Path(out_dir)
    recipe_config, recipe_options = recipe_settings(recipe, out, preset, resume)
    try:
        opts = TrainOptions(**{**recipe_options, **options})
    except TypeError as e:
        raise TrainError(f"unknown training option: {e}") from None
    try:
        config = base_config(out, preset, {**recipe_config, **(overrides or {})}, resume)
        names = read_class_names(classes) if classes is not None else None
        augment = None
        if opts.crop_seconds or opts.flip or opts.zoom < 1:
            from .data.dataset import Augment

            augment = Augment(flip=opts.flip, crop_seconds=opts.crop_seconds, zoom=opts.zoom)
        config, train_set, val_set = load_datasets(Path(data_dir), config, csv_path=csv_path, classes=names,
                                                   val_split=val_split, augment=augment)
        if opts.cache:
            for dataset in (train_set, val_set):
                if dataset is not None:
                    dataset.keep_decoded()  # type: ignore[attr-defined]
    except (ConfigError, DatasetError, CheckpointError) as e:
        raise TrainError(str(e)) from None
    return fit(config, train_set, val_set, out, opts, resume=resume, init_video=init_video, collate_fn=collate)
