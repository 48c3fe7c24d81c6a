"""Checkpoints: config, weights, class names and a format version in one file.

Always read with ``torch.load(weights_only=True)``: a checkpoint is data, and a pickle that
would run code is refused. Always written atomically (temp file in the same folder, fsync,
rename), so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import FORMAT_VERSION, Config, ConfigError
from ..fileio import atomic_write
from ..errors import SoundlocError
from .classifier import AVClassifier
from .families import model_parts
from .video import load_torchvision_mc3

MAGIC = "soundloc-checkpoint"


class CheckpointError(SoundlocError, RuntimeError):
    """A checkpoint that cannot be read: unsafe, corrupt, or of another format or config."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    def write(f) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            # after a failed write (a full disk) torch's zip writer raises its own RuntimeError
            # ("unexpected pos ...") while closing, hiding the OSError that says why
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise

    atomic_write(path, write)


def save_checkpoint(path: str | Path, model: AVClassifier, **extra: Any) -> None:
    """Write model + config (+ optimiser state, epoch, metrics... as ``extra``) atomically."""
    payload = {
        "format": MAGIC,
        "format_version": FORMAT_VERSION,
        "soundloc_version": __version__,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        **extra,
    }
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, read safely; CheckpointError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "global" in line.lower()]
        if unsafe:
            raise CheckpointError(f"{path}: refused: it would run code on load ({unsafe[0]}); "
                                  "checkpoints are read with weights_only=True") from None
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch.save file)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError, MemoryError) as e:  # a text file: KeyError 101 from the unpickler
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a soundloc checkpoint (a {type(data).__name__})")
    return data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AVClassifier, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, the checkpoint dict)."""
    data = read_checkpoint(path)
    if data.get("format") != MAGIC:
        hint = " (a bare MC3-18 state dict? use it with `soundloc train --init-video`)" if "stem.0.weight" in data else ""
        raise CheckpointError(f"{path}: not a soundloc checkpoint{hint}")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {data.get('format_version')}, this soundloc reads {FORMAT_VERSION}")
    try:
        config = Config.from_dict(data["config"])
        model = model_parts(config).model(config)
        model.load_state_dict(data["model"])
    except (ConfigError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not match their config: {str(e).splitlines()[0]}") from None
    return model.to(map_location).eval(), data


def load_video_weights(model: AVClassifier, path: str | Path) -> list[str]:
    """Initialise the video backbone from a torchvision ``mc3_18`` .pth (e.g. Kinetics-400)."""
    data = read_checkpoint(path)
    state = data.get("model", data) if data.get("format") == MAGIC else data
    if data.get("format") == MAGIC:
        state = {k[len("video."):]: v for k, v in state.items() if k.startswith("video.")}
    try:
        return load_torchvision_mc3(model.video, state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
