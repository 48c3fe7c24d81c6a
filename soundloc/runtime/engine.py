"""The streaming model as the runtime sees it: a loaded export (step graph on a backend), the
input preprocessing, and per-stream state kept as plain numpy arrays.

One ``StepModel`` can serve many streams: their states stack on the batch axis of one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import Backend, BackendError
from .bundle import Bundle, read_bundle

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt")


@dataclass
class StepOutput:
    """Outputs of one step call for B streams, describing the step ``lookahead`` steps back."""

    alpha: np.ndarray  # (B, h, w) per-step map
    score: np.ndarray  # (B,) moment score S_av
    zv: np.ndarray  # (B, D)
    za: np.ndarray  # (B, D)
    valid: np.ndarray  # (B,) bool: the described step is a real one (not start-up or flush padding)


def open_backend(bundle: Bundle, graph: str = "step", backend: str = "auto", threads: int | None = None) -> Backend:
    """Load one graph of an export on the requested backend; ``auto`` takes a TensorRT engine
    when the export has one and TensorRT loads, else onnxruntime with the best usable provider."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    errors = []
    if backend in ("auto", "tensorrt") and "engine" in bundle.graph(graph)["files"]:
        try:
            from .tensorrt_backend import TensorRTBackend

            return TensorRTBackend(bundle.path(graph, "engine"), bundle.manifest)
        except BackendError as e:
            if backend == "tensorrt":
                raise
            errors.append(str(e))
    elif backend == "tensorrt":
        raise BackendError(f"{bundle.root}: no TensorRT engine in this export; build one with "
                           "`soundloc export CKPT --format engine`")
    from .onnx_backend import OnnxRuntimeBackend

    providers = {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}
    return OnnxRuntimeBackend(bundle.path(graph, "onnx"), providers.get(backend, "auto"), threads=threads)


class StepModel:
    """The exact streaming step of an export: ``step(frames, mels, valid, state)``."""

    def __init__(self, export_dir: str | Path | Bundle, backend: str = "auto", threads: int | None = None) -> None:
        self.bundle = export_dir if isinstance(export_dir, Bundle) else read_bundle(export_dir)
        self.config = self.bundle.config
        self.lookahead = self.bundle.lookahead_steps
        self.backend = open_backend(self.bundle, "step", backend, threads)
        self._states = self.bundle.state_specs

    @property
    def name(self) -> str:
        return f"{self.backend.name} ({', '.join(self.backend.providers)})"

    def new_state(self, batch: int = 1) -> list[np.ndarray]:
        """Zero state for ``batch`` streams: equals the offline model's zero padding."""
        return [np.zeros((batch, *s["shape"]), np.float32) for s in self._states]

    def step(self, frames: np.ndarray, mels: np.ndarray, valid: np.ndarray,
             state: list[np.ndarray]) -> tuple[StepOutput, list[np.ndarray]]:
        """frames (B, 3, H, W) normalised, mels (B, 10, 80), valid (B,) -> outputs, new state."""
        b = frames.shape[0]
        feed = {
            "frame": np.ascontiguousarray(frames, np.float32).reshape(b, 3, 1, *frames.shape[-2:]),
            "mel": np.ascontiguousarray(mels, np.float32).reshape(b, 1, 10, -1),
            "valid": np.asarray(valid, np.float32).reshape(b, 1),
        }
        for spec, value in zip(self._states, state):
            feed[spec["input"]] = value
        out = self.backend.run(feed)
        new_state = [out[spec["output"]] for spec in self._states]
        result = StepOutput(alpha=out["alpha"], score=out["score"].reshape(b), zv=out["zv"], za=out["za"],
                            valid=out["valid_out"].reshape(b) > 0.5)
        return result, new_state

    def close(self) -> None:
        self.backend.close()
