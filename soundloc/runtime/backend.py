"""The one interface every inference backend implements (TensorRT, onnxruntime, torch)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import SoundlocError, UsageError

# Where the model runs on this machine: "auto" picks a TensorRT engine when the export has one,
# else onnxruntime with the best provider; "torch" runs a .pt checkpoint (the only backend that
# imports torch). A Triton server is the spec ``triton://HOST:PORT[/MODEL]`` (runtime.backend_spec).
BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "torch")


def check_backend(name: str, what: str = "backend") -> str:
    """``name`` if it is one of ``BACKENDS``, else a one-line usage error that lists them."""
    if name not in BACKENDS:
        raise UsageError(f"{what} must be one of {', '.join(BACKENDS)}, not {name!r}")
    return name


class BackendError(SoundlocError, RuntimeError):
    """A backend that cannot load or run; the message says what to install or rebuild."""


class Backend(Protocol):
    name: str  # e.g. "onnxruntime", "tensorrt", "torch"
    providers: list[str]  # what is really in use, e.g. ["CPUExecutionProvider"]
    input_names: list[str]
    output_names: list[str]
    concurrent: bool  # run() may be called from several threads at once (serve's lanes)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one call: float32 numpy arrays by tensor name in, by tensor name out."""
        ...

    def close(self) -> None: ...
