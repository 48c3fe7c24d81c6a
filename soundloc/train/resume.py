"""Checkpoints and resuming: what an epoch saves (weights, optimiser, schedule, RNG state),
what a resume restores and checks, and the repair of a log a kill left behind."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..fileio import atomic_write_bytes
from ..model.checkpoint import load_checkpoint, save_checkpoint
from .types import TrainError, TrainState


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
    # "best_accuracy": the checkpoint key stays (checkpoints already written resume); it holds best_monitored
    extra = {"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
             "scaler": state.scaler.state_dict(), "epoch": state.epoch, "best_accuracy": state.best_monitored,
             "best_epoch": state.best_epoch, "rng": rng_state(), "metrics": record, "schedule": state.schedule,
             "zoom": state.zoom}
    if state.provenance is not None:
        extra["provenance"] = state.provenance
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


def _inputs(provenance: dict | None) -> dict:
    """What a resume must bring again: everything but the --init of the first run."""
    return {k: v for k, v in (provenance or {}).items() if k != "init"}


def _provenance_diff(saved: dict | None, asked: dict | None) -> str:
    saved, asked = _inputs(saved), _inputs(asked)
    keys = [k for k in sorted(set(saved) | set(asked)) if saved.get(k) != asked.get(k)]
    return ", ".join(f"{k}: {saved.get(k)!r} saved, {asked.get(k)!r} asked" for k in keys[:2])


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
    saved_from = data.get("provenance")
    if _inputs(saved_from) != _inputs(state.provenance):
        raise TrainError(f"{path} was trained from other inputs ({_provenance_diff(saved_from, state.provenance)}); "
                         f"resume with the same --frames, --moments, --boxes and --teacher")
    if saved_from is not None:  # a resume names no --init: the run's own record of it carries on
        state.provenance = {**(state.provenance or {}), "init": saved_from.get("init")}
    state.module.load_state_dict(data["model"])
    state.optimizer.load_state_dict(data["optimizer"])
    state.scheduler.load_state_dict(data["scheduler"])
    if data.get("scaler") and state.scaler.is_enabled():
        state.scaler.load_state_dict(data["scaler"])
    state.epoch, state.best_monitored, state.best_epoch = int(data["epoch"]), float(data["best_accuracy"]), int(data["best_epoch"])
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


def check_out_dir(out: Path, resume: bool, init_video: str | Path | None, init: str | Path | None = None) -> None:
    if resume and (init_video is not None or init is not None):
        raise TrainError(f"{'--init-video' if init_video is not None else '--init'} starts a new run; "
                         f"--resume restores every weight from last.pt")
    if resume and not (out / "last.pt").is_file():
        raise TrainError(f"nothing to resume: {out / 'last.pt'} does not exist")
    if not resume and (out / "last.pt").is_file():
        raise TrainError(f"{out / 'last.pt'} exists: pass --resume to continue it, or choose another --out")


def read_last_record(out: Path) -> dict[str, Any] | None:
    lines = (out / "log.jsonl").read_text(encoding="utf-8").splitlines() if (out / "log.jsonl").is_file() else []
    return json.loads(lines[-1]) if lines else None
