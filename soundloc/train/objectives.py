"""What one training step of each trainable family computes: the loss and its parts, the heads'
correct counts, and the (own-audio, other-audio) map pairs of the audio-dependence check.

- ``classifier``: Eq. 3 (+ the class-aware contrastive term), on whole clips (``video``, ``mel``).
- ``ezvsl``: EZ-VSL's multiple-instance contrastive loss on one frame per clip (``frame``,
  ``spec``), plus ``config.box_weight`` x the box term for the clips of the batch with a box
  (``model.ezvsl``); no heads, no accuracy. Its optimiser is the authors' Adam (no weight decay).

A family without an entry here cannot be trained (``objective_of`` says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..dependence import check_steps, other_clips
from ..families import family_of
from ..localize import window_bounds
from ..model.classifier import MODALITIES, Features, localization_maps, moment_scores, training_loss
from ..model.ezvsl import box_loss, init_weights, mil_contrastive_loss
from .types import TrainError

Pairs = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Objective:
    """``step(model, config, batch, device, with_pairs)`` -> (loss tensor, parts, correct per head,
    map pairs or []); ``heads(config)``: the heads whose accuracy is reported; ``optimizer(params,
    options)``; ``schedules``: the LR schedules it can run (best.pt needs what they monitor);
    ``initialise(module)``: the initialisation of a run from scratch (not from ``--init``);
    ``lr``: the learning rate when none is given."""

    step: Callable[..., tuple[torch.Tensor, dict[str, float], dict[str, int], Pairs]]
    heads: Callable[[Config], tuple[str, ...]]
    optimizer: Callable[[Any, Any], torch.optim.Optimizer]
    schedules: tuple[str, ...]
    initialise: Callable[[nn.Module], None] = lambda module: None
    lr: float = 1e-2


def classifier_heads(config: Config) -> tuple[str, ...]:
    """The heads whose logits the model returns (``av-only`` has only ``av``)."""
    return ("av",) if config.head == "av-only" else MODALITIES


def classifier_step(model: nn.Module, config: Config, batch: dict[str, Any], device: torch.device,
                    with_pairs: bool = False) -> tuple[torch.Tensor, dict[str, float], dict[str, int], Pairs]:
    labels = torch.as_tensor(batch["label"]).to(device, non_blocking=True)
    logits, feats = model(batch["video"].to(device, non_blocking=True), batch["mel"].to(device, non_blocking=True),
                          with_features=True)
    loss, parts = training_loss(config, logits, feats, labels)
    correct = {k: int((v.argmax(1) == labels).sum()) for k, v in logits.items()}
    pairs = map_pairs(feats, labels, config.map_kind, config.window_steps) if with_pairs else []
    return loss, parts, correct, pairs


def map_pairs(feats: Features, labels: torch.Tensor, kind: str, window_steps: int) -> Pairs:
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


def sgd(params: Any, options: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)


def ezvsl_step(model: nn.Module, config: Config, batch: dict[str, Any], device: torch.device,
               with_pairs: bool = False) -> tuple[torch.Tensor, dict[str, float], dict[str, int], Pairs]:
    """EZ-VSL's loss on a batch of (frame, spectrogram) pairs, plus the weighted box term. ``model``
    is the EZVSL module or its DDP wrapper (``ezvsl_embed`` runs through either)."""
    V, za = model(batch["frame"].to(device, non_blocking=True), batch["spec"].to(device, non_blocking=True))
    V, za = V.float(), za.float()
    tau = config.contrastive_temperature
    contrastive = mil_contrastive_loss(V, za, tau, config.mil_border)
    target = batch["box"].to(device, non_blocking=True)
    boxed = int((target.flatten(1).sum(1) > 0).sum())
    loss, parts = contrastive, {"contrastive": float(contrastive.detach())}
    if boxed and config.box_weight > 0:
        term = box_loss(V, za, target, tau)
        loss = loss + config.box_weight * term
        parts["box"] = float(term.detach())
    pairs: Pairs = []
    if with_pairs and len(V) > 1:
        other = other_clips(batch["label"].tolist(), len(V))
        own = torch.einsum("bdhw,bd->bhw", V, za).detach().cpu().numpy()
        swapped = torch.einsum("bdhw,bd->bhw", V, za[other]).detach().cpu().numpy()
        pairs = list(zip(own, swapped))
    return loss, parts, {}, pairs


def adam(params: Any, options: Any) -> torch.optim.Optimizer:
    """The authors' optimiser (``build_optimizer_and_scheduler_adam``): Adam, no weight decay,
    only the parameters that train (the object prior's do not)."""
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=options.lr)


OBJECTIVES: dict[str, Objective] = {
    "classifier": Objective(classifier_step, classifier_heads, sgd, ("plateau", "cosine")),
    "ezvsl": Objective(ezvsl_step, lambda config: (), adam, ("cosine",), init_weights, lr=1e-4),
}


def objective_of(config: Config) -> Objective:
    """The training objective of a config's family; a family without one is refused."""
    name = family_of(config).name
    if name not in OBJECTIVES:
        raise TrainError(f"the {name} family cannot be trained by soundloc (import its published weights)")
    return OBJECTIVES[name]
