"""One optimiser step, one training epoch, one validation pass (with the audio-dependence
check's map pairs), and the epoch's log record."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..config import Config
from .datasets import SkipReport
from ..dependence import audio_dependence
from .distributed import DistInfo, gather_list, gather_skips
from .loaders import batch_skips
from .objectives import objective_of
from .progress import Reporter
from .types import LOG_REASONS, LOSS_PARTS, MONITOR, TrainError, TrainState


def head_names(config: Config) -> tuple[str, ...]:
    """The heads whose accuracy a run reports (the classifier's; none for ezvsl)."""
    return objective_of(config).heads(config)


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
        # a part any rank computed (the box term: only ranks whose batches held a box); none: no part
        parts = Counter({k: x for k, x in zip(keys, v[2:2 + m]) if k in self.parts or x != 0})
        return Totals(v[0], v[1], parts, Counter(dict(zip(keys, v[2 + m:]))))

    def summary(self, heads: Iterable[str]) -> dict[str, Any]:
        n = max(self.n, 1.0)
        return {"clips": int(self.n), "loss": self.loss / n,
                "loss_parts": {k: self.parts[k] / n for k in (*heads, "contrastive", "box") if k in self.parts},
                "accuracy": {k: self.correct[k] / n for k in heads}}


def forward_backward(state: TrainState, batch: dict[str, Any]) -> tuple[float, dict[str, float], dict[str, int]]:
    """The family's loss (``objectives``) and its gradients for one batch, all-reduced by DDP;
    no optimiser step (``optimizer_step``), so a test can compare gradients. Returns loss,
    parts, correct."""
    config = state.module.config
    with torch.autocast(state.device.type, dtype=torch.float16, enabled=state.amp):
        loss, parts, correct, _ = objective_of(config).step(state.model, config, batch, state.device)
    state.scaler.scale(loss).backward()
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


@torch.no_grad()
def validate(state: TrainState, loader: DataLoader) -> tuple[Totals, list, list]:
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
        with torch.autocast(state.device.type, dtype=torch.float16, enabled=state.amp):
            loss, parts, correct, batch_pairs = objective_of(config).step(state.module, config, batch, state.device,
                                                                          with_pairs=True)
        totals.add(n, float(loss), parts, correct)
        pairs += batch_pairs
    return totals, skipped, pairs


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
        val, val_skipped, pairs = validate(state, val_loader)
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
    best = monitor > state.best_monitored
    if best:
        state.best_monitored, state.best_epoch = monitor, epoch
    return {"epoch": epoch, "lr": lr, "train": totals.summary(heads), "val": val.summary(heads) if val else None,
            "monitor": f"{'val' if val else 'train'}_{monitor_name}", "monitor_value": monitor, "best": best,
            "audio_dependence": dependence.to_dict() if dependence else None,
            "audio_dependence_warning": dependence.warning() if dependence else "",
            "skipped": report.to_dict(), "skip_report": report.summary() if report else "", "seconds": seconds,
            "clips_per_second": totals.n / max(seconds, 1e-9), "world_size": state.dist.world_size}
