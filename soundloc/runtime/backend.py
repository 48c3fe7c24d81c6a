"""The one interface every inference backend implements (TensorRT, onnxruntime, torch)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from ..errors import SoundlocError


class BackendError(SoundlocError, RuntimeError):
    """A backend that cannot load or run; the message says what to install or rebuild."""


class Backend(Protocol):
    name: str  # e.g. "onnxruntime", "tensorrt", "torch"
    providers: list[str]  # what is really in use, e.g. ["CPUExecutionProvider"]
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one call: float32 numpy arrays by tensor name in, by tensor name out."""
        ...

    def close(self) -> None: ...
