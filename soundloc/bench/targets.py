"""What the benchmark runs: the target (export directory or checkpoint) and its model loaded
on a backend."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import UsageError

COMPARE_ALL = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch")  # first that loads: stages


# -- backends --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the benchmark runs: an export directory and/or a checkpoint, and the config."""

    export: Path | None
    checkpoint: Path | None
    config: Config
    precision: str = "fp32"  # of the export's graphs (fp32, fp16, int8)


def resolve_target(target: Path) -> Target:
    """An export directory (torch then runs a checkpoint of the same architecture with fresh
    weights, written to a scratch folder: weights do not change the time) or a checkpoint (the
    onnxruntime and TensorRT backends then have nothing to load)."""
    target = Path(target)
    if target.is_dir():
        from ..runtime.bundle import read_bundle

        bundle = read_bundle(target)
        return Target(target, None, bundle.config, bundle.precision)
    if target.is_file():
        from ..model.checkpoint import read_checkpoint

        return Target(None, target, Config.from_dict(read_checkpoint(target)["config"]))
    raise UsageError(f"{target}: no such export directory or checkpoint")


def _scratch_checkpoint(config: Config, scratch: Path) -> Path:
    from ..runtime.torch_backend import prefer_passive_openmp

    prefer_passive_openmp()  # before torch loads OpenMP: the torch backend's threads sleep when idle
    import torch

    from ..model.checkpoint import save_checkpoint
    from ..model.classifier import AVClassifier

    path = scratch / "bench-arch.pt"
    if not path.is_file():
        torch.manual_seed(0)
        save_checkpoint(path, AVClassifier(config).eval())
    return path


def load_model(tgt: Target, backend: str, scratch: Path, threads: int | None = None, torch_dtype: str = "fp32"):
    """A ``StepModel`` on ``backend``; raises with the reason it cannot load here. torch runs
    in ``torch_dtype`` (fp16/bf16 for a GPU), its state kept on a GPU between steps."""
    from ..runtime.backend import check_backend
    from ..runtime.backend_spec import load_step_model

    if check_backend(backend) == "torch" or (backend == "auto" and tgt.export is None):
        if importlib.util.find_spec("torch") is None:
            raise RuntimeError("PyTorch is not installed (`pip install 'soundloc[train]'`)")
        ckpt = tgt.checkpoint or _scratch_checkpoint(tgt.config, scratch)
        if torch_dtype == "fp32":
            return load_step_model(ckpt, "torch", threads=threads)
        from ..runtime.engine import StepModel
        from ..runtime.torch_backend import TorchBackend

        tb = TorchBackend(ckpt, threads=threads, dtype=torch_dtype)
        return StepModel(tb, tb.config, tb.lookahead, tb.state_specs, tb.gate_score, label_heads=tb.label_heads)
    if tgt.export is None:
        raise RuntimeError("needs an export directory (`soundloc export CKPT --out DIR`), not a checkpoint")
    return load_step_model(tgt.export, backend, threads=threads)

