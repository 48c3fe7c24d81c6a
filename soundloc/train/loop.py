"""The outer loop: the model and optimiser set up, resumed if asked, trained epoch after epoch
and checkpointed, in one process or under torchrun."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import Config
from .datasets import collate
from .distributed import DistInfo, close_distributed, dist_from_env, init_distributed, resolve_device
from ..model.checkpoint import load_checkpoint, load_video_weights
from ..model.families import model_parts
from .epoch import run_epoch
from .loaders import make_loader
from .objectives import objective_of
from .progress import Reporter
from .resume import check_out_dir, read_last_record, remove_stale_temps, repair_log, restore, save_epoch
from .types import TrainError, TrainOptions, TrainResult, TrainState


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_state(config: Config, options: TrainOptions, info: DistInfo, device: torch.device,
                init_video: str | Path | None = None, init: str | Path | None = None) -> TrainState:
    """Model (the family's initialisation, a Kinetics-initialised video net, or every weight of
    the soundloc checkpoint ``init``), the family's optimiser, LR schedule, grad scaler, DDP."""
    amp = options.amp == "on" or (options.amp == "auto" and device.type == "cuda")
    if amp and device.type != "cuda":
        raise TrainError("mixed precision (--amp on) needs a CUDA device; use --amp auto or off on CPU")
    objective = objective_of(config)
    if options.schedule not in objective.schedules:
        raise TrainError(f"the {config.family} family trains with the {' or '.join(objective.schedules)} schedule, "
                         f"not {options.schedule}")
    module = model_parts(config).model(config)
    if init is not None:
        load_init(module, init, objective.initialise)
    else:
        objective.initialise(module)
    if getattr(module, "objnet", None) is not None:  # EZ-VSL's object prior: ImageNet's, never trained
        module.objnet.requires_grad_(False)
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
    optimizer = objective.optimizer(module.parameters(), options)
    scheduler: Any
    if options.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=options.factor,
                                                               patience=options.patience)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    return TrainState(module, model, optimizer, scheduler, scaler, device, amp, info, options.schedule, options.zoom)


def load_init(module: nn.Module, path: str | Path, initialise: Callable[[nn.Module], None] = lambda m: None) -> None:
    """Every weight of the soundloc checkpoint ``path`` (e.g. `soundloc import ezvsl`'s) into
    ``module``, whose config must be the checkpoint's (``train.start`` builds it from there); or,
    for an ezvsl student and a classifier checkpoint, the family's ``initialise`` and then the
    teacher's video net as the student's image net (``model.deflate``; reading the checkpoint
    leaves the random stream alone, so every weight the teacher does not give is the one a run of
    the same seed without ``--init`` draws)."""
    with torch.random.fork_rng():
        saved, _ = load_checkpoint(path)
    if saved.config.family == "classifier" and module.config.family != "classifier":
        from ..model.deflate import MappingError, start_from_teacher
        initialise(module)
        try:
            start_from_teacher(module, saved.state_dict(), saved.config)
        except MappingError as e:
            raise TrainError(f"{path}: {e}") from None
        return
    try:
        module.load_state_dict(saved.state_dict())
    except RuntimeError as e:
        raise TrainError(f"{path}: --init weights do not fit this model: {str(e).splitlines()[0]}") from None


def fit(config: Config, train_set: Dataset, val_set: Dataset | None, out_dir: str | Path,
        options: TrainOptions = TrainOptions(), *, resume: bool = False, init_video: str | Path | None = None,
        collate_fn: Callable = collate, init: str | Path | None = None,
        provenance: dict[str, Any] | None = None) -> TrainResult:
    """Train ``config`` on datasets of dict items (video, mel, label, id) into ``out_dir``.

    Items may be ``soundloc.train.datasets.SkippedClip`` markers: the default ``collate`` drops them
    and the epoch's skip report lists them.

    Under torchrun every rank calls this with the same arguments. ``resume`` continues from
    ``out_dir/last.pt`` up to ``options.epochs`` (counted from the first epoch, not from the
    resume); the config must match the checkpoint's. ``init``: a soundloc checkpoint whose weights
    start a new run (fine-tuning); ``provenance``: what the run was made from, saved in every
    checkpoint (a resume must bring the same).
    """
    info = dist_from_env()
    device = resolve_device(options.device, info)
    out = Path(out_dir)
    check_out_dir(out, resume, init_video, init)
    init_distributed(info, device)
    try:
        result = _fit_in_group(config, options, info, device, out, train_set, val_set, resume, init_video,
                               collate_fn, init, provenance)
    except BaseException:
        close_distributed(info, clean=False)
        raise
    close_distributed(info)  # the model (and its DDP reducer) is already out of scope here
    return result


def _fit_in_group(config: Config, options: TrainOptions, info: DistInfo, device: torch.device, out: Path,
                  train_set: Dataset, val_set: Dataset | None, resume: bool, init_video: str | Path | None,
                  collate_fn: Callable, init: str | Path | None = None,
                  provenance: dict[str, Any] | None = None) -> TrainResult:
    seed_everything(options.seed)
    state = build_state(config, options, info, device, init_video, init)
    state.provenance = provenance
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
                       best_monitored=state.best_monitored, accuracy=acc,
                       train_loss=record["train"]["loss"] if record else float("nan"), skipped=skipped,
                       seconds=time.perf_counter() - started, world_size=info.world_size,
                       last_checkpoint=str(out / "last.pt"), best_checkpoint=str(out / "best.pt"),
                       monitor=record.get("monitor", "") if record else "", provenance=state.provenance)
