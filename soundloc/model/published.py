"""Importing published localizers' checkpoints: read the authors' files safely
(``weights_only=True``, the numpy scalars their training code pickles allowed by name), match
their keys by name into soundloc's networks (the first missing, misshapen, unexpected or
non-finite key refused by name), and write a soundloc checkpoint that records the file imported
(sha256). ``soundloc import NAME`` drives it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..errors import SoundlocError
from ..families import EZVSL_IMAGE_SIZE, EZVSL_PRIOR_ALPHA, family_of
from ..fileio import sha256_file
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .ezvsl import EZVSL, SLAVC
from .lvs import LVS


class ModelImportError(SoundlocError, ValueError):
    """A checkpoint that is not its family's format; the message names the first offending key."""


def _numpy_scalar_globals() -> list:
    """The numpy types EZ-VSL's checkpoints pickle (``best_cIoU`` is a numpy float): plain data,
    allowed by name on top of ``weights_only=True``."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    # numpy 1.x (the authors' 2022 environment) pickled the scalar under numpy.core
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype,
            *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32))]


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A ``torch.save`` file's state dict (under ``'model'``, ``'state_dict'`` or, LVS's and
    SSL-Align's, ``'model_state_dict'``; or the file itself), read with ``weights_only=True``,
    with any ``module.`` (DataParallel / DDP) prefix removed."""
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        data = read_checkpoint(path)
    state = next((data[k] for k in STATE_KEYS if k in data), data) if isinstance(data, dict) else data
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not {what} (no state dict of tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def match_state(module: nn.Module, state: dict[str, torch.Tensor], source: str, ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` by name; refuse with the first missing, misshapen or
    unexpected key named (keys starting with ``ignore`` are dropped first)."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = module.state_dict()
    for k, v in own.items():
        if k not in state:
            raise ModelImportError(f"{source}: missing key {k!r} ({len(set(own) - set(state))} missing in all)")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelImportError(f"{source}: key {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()):
            raise ModelImportError(f"{source}: key {k!r} holds NaN or infinite weights: a corrupt checkpoint")
    extra = sorted(set(state) - set(own))
    if extra:
        raise ModelImportError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} in all): not this architecture")
    module.load_state_dict(state)


STATE_KEYS = ("model", "state_dict", "model_state_dict")  # where the authors' training code puts the weights
TITLES = {"ezvsl": "EZ-VSL", "fnac": "FNAC-AVL", "slavc": "SLAVC",  # model.ezvsl's networks
          "lvs": "LVS", "sslalign": "SSL-Align"}  # model.lvs's
MOMENTUM = "momentum_"  # SLAVC's momentum encoders' key prefix (its `--use_mom_eval` maps)


def convert(ckpt: str | Path, object_prior: str | Path | None = None,
            prior_alpha: float = EZVSL_PRIOR_ALPHA, family: str = "ezvsl", preprocess: str = "soundloc",
            variant: str = "") -> EZVSL:
    """A published checkpoint (EZ-VSL's or FNAC-AVL's best.pth, SLAVC's two-head latest.pth, LVS's
    or SSL-Align's ``{'model_state_dict': ...}``; and, for the object prior, torchvision's
    ImageNet ``resnet18`` weights) -> the model, in eval mode. SLAVC's ``variant`` picks its online or momentum encoders; both
    sets must be whole (each key checked by name), the other set is not kept."""
    config = Config(family=family, image_size=EZVSL_IMAGE_SIZE, num_classes=0, window_seconds=0.1, map_kind="cosine",
                    prior_alpha=prior_alpha if object_prior is not None else None, preprocess=preprocess,
                    variant=variant)
    chosen = family_of(config).variant(config)  # refuses an unknown variant by name
    if family == "lvs" and object_prior is not None:
        raise ModelImportError("LVS: its test code has no object prior (SSL-Align's test.py blends one into LVS "
                               "checkpoints with its own loader: import the checkpoint with `soundloc import "
                               "sslalign --object-prior`)")
    model = {"slavc": SLAVC, "lvs": LVS, "sslalign": LVS}.get(family, EZVSL)(config)
    state = read_state_dict(ckpt, f"a {TITLES[family]} checkpoint")
    trunks = {k: v for k, v in state.items() if not k.startswith("objnet.")}
    names = model.image_parts + model.audio_parts
    parts = nn.ModuleDict({n: getattr(model, n) for n in names})
    if family == "slavc":
        online = {k: v for k, v in trunks.items() if not k.startswith(MOMENTUM)}
        momentum = {k[len(MOMENTUM):]: v for k, v in trunks.items() if k.startswith(MOMENTUM)}
        other = copy.deepcopy(parts)
        match_state(other if chosen == "momentum" else parts, online, f"{ckpt}")
        match_state(parts if chosen == "momentum" else other, momentum, f"{ckpt} ({MOMENTUM}*)")
    else:
        match_state(parts, trunks, f"{ckpt}")
    if model.objnet is not None:
        match_state(model.objnet, read_state_dict(object_prior, "torchvision resnet18 weights"),
                    f"{object_prior}", ignore=("fc.",))
    return model.eval()


def import_ezvsl(ckpt: str | Path, out: str | Path, object_prior: str | Path | None = None,
                 prior_alpha: float = EZVSL_PRIOR_ALPHA, family: str = "ezvsl", preprocess: str = "soundloc",
                 variant: str = "") -> dict[str, Any]:
    """`soundloc import ezvsl|fnac|slavc|lvs|sslalign`: write a soundloc checkpoint of the model in ``ckpt``
    (atomically); returns what was recorded about its sources (the file's sha256 among them)."""
    if not 0 <= prior_alpha <= 1:
        raise ValueError(f"--alpha must be in [0, 1], not {prior_alpha}")
    model = convert(ckpt, object_prior, prior_alpha, family, preprocess, variant)
    return _save(model, ckpt, out, object_prior, prior_alpha)


def _save(model: nn.Module, ckpt: str | Path, out: str | Path, object_prior: str | Path | None,
          prior_alpha: float) -> dict[str, Any]:
    cfg = model.config
    source = {"family": cfg.family, "variant": family_of(cfg).variant(cfg), "preprocess": cfg.preprocess,
              "file": Path(ckpt).name, "sha256": sha256_file(ckpt)}
    if object_prior is not None:
        source["object_prior"] = {"file": Path(object_prior).name, "sha256": sha256_file(object_prior),
                                  "alpha": prior_alpha}
    save_checkpoint(out, model, imported=source)
    return source
