"""PyTorch backend: runs a checkpoint's streaming step directly, for comparison with the
exported graphs and as the GPU path that needs no engine build. The only runtime path that
imports torch (lazily, with an install hint).

On a GPU the step runs in ``dtype`` (fp16/bf16 halve the memory traffic of the 3-D convs) and
the state stays on the device between steps (``keep_state``): each call copies the frame and
the step's audio in and the map and scores out, never the state (``DeviceState``, which still
reads as a numpy array for anything that needs its values, e.g. ``serve``'s batching). There
the step is also captured once per batch size as a CUDA graph and replayed (``cuda_graphs``):
a streaming step is a few hundred small kernels whose launches cost about as much as their
work at batch 1. A capture that fails falls back to eager steps with one line.

On a CPU, OpenMP's idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``, set before torch is
first imported unless the user set a policy): by default they spin, and on a CPU shared with
the capture thread or another process the spinning threads take the cores the others need
and every operator waits on a thread that lost its core (measured on the 2-core box at load
8-9: 2.9 s steps spinning against 0.23 s sleeping, 2 threads each; benchmarks/shared_cpu.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

from .backend import BackendError

DTYPES = ("fp32", "fp16", "bf16")
log = logging.getLogger(__name__)


def prefer_passive_openmp() -> bool:
    """Ask OpenMP for sleeping (not spinning) idle threads before torch loads it; returns
    whether the policy in force is PASSIVE (False: torch was imported first, or the user
    chose another policy, which is kept)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


class DeviceState:
    """A state tensor left on the backend's device between steps; ``np.asarray`` copies it
    to the host as float32 (one device-to-host copy) when something needs the values."""

    def __init__(self, tensor) -> None:
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def device(self) -> str:
        return str(self.tensor.device)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.tensor.detach().float().cpu().numpy()
        return arr if dtype is None else arr.astype(dtype, copy=False)


class TorchBackend:
    name = "torch"
    concurrent = False  # not measured or tested with calls from several threads

    def __init__(self, ckpt: str | Path, device: str = "auto", threads: int | None = None, *,
                 dtype: str = "fp32", keep_state: bool | None = None, cuda_graphs: bool | None = None) -> None:
        if dtype not in DTYPES:
            raise BackendError(f"torch dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.passive_openmp = prefer_passive_openmp()
        try:
            import torch
        except ImportError:
            raise BackendError("the torch backend needs PyTorch: `pip install 'soundloc[train]'`") from None
        from ..model.checkpoint import load_checkpoint
        from ..model.families import model_parts
        from ..families import family_of
        from ..model.streaming import OUTPUT_NAMES
        from ..labels import LOGIT_PREFIX

        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        if threads:
            torch.set_num_threads(threads)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.keep_state = self.device.type == "cuda" if keep_state is None else keep_state
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device; this torch backend runs on {self.device}")
        self._graphs: dict[int, tuple] = {}  # batch size -> (graph, static inputs, static outputs)
        model, data = load_checkpoint(ckpt, map_location=self.device)
        self._torch = torch
        family = family_of(model.config)
        self.module = model_parts(model.config).step(model).to(self.device, self.dtype).eval()
        self.config = model.config
        self.lookahead = self.module.lookahead
        self.gate_score = (data.get("gate") or {}).get("score")
        self.state_specs = [{"name": n, "input": f"state_in.{n}", "output": f"state_out.{n}", "shape": list(s)}
                            for n, s in zip(self.module.state_names, self.module.state_shapes)]
        self.input_names = ["frame", family.audio_input, "valid"] + [s["input"] for s in self.state_specs]
        self.output_names = list(getattr(self.module, "output_names", OUTPUT_NAMES)) + [s["output"] for s in self.state_specs]
        self._state_outputs = frozenset(s["output"] for s in self.state_specs)
        self.label_heads = tuple(n[len(LOGIT_PREFIX):] for n in self.output_names if n.startswith(LOGIT_PREFIX))
        precision = "" if dtype == "fp32" else f" {dtype}"
        self.providers = [f"{self.device}{precision}{' graphs' if self.cuda_graphs else ''}"]

    def _tensor(self, value):
        if isinstance(value, DeviceState):
            return value.tensor  # already on the device, in the step's dtype
        return self._torch.from_numpy(np.ascontiguousarray(value, np.float32)).to(self.device, self.dtype)

    def run(self, inputs: dict) -> dict:
        """Numpy arrays (or ``DeviceState``s) by name in; numpy float32 out, and the state
        outputs as ``DeviceState``s when ``keep_state``."""
        args = [self._tensor(inputs[n]) for n in self.input_names]
        with self._torch.inference_mode():
            outs = self._replay(args) if self.cuda_graphs else self.module(*args)
        # a replayed graph writes the same output tensors again next step: a kept state is copied
        return {n: (DeviceState(o.clone() if self.cuda_graphs else o) if self.keep_state and n in self._state_outputs
                    else o.float().cpu().numpy())
                for n, o in zip(self.output_names, outs)}

    def _replay(self, args: list) -> list:
        """The step through the CUDA graph captured for this batch size (captured on first use)."""
        batch = int(args[0].shape[0])
        if batch not in self._graphs:
            try:
                self._graphs[batch] = self._capture(args)
            except RuntimeError as e:
                log.warning("CUDA graph capture failed (%s); the torch step runs without graphs",
                            str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
                self.cuda_graphs = False
                self.providers = [p.replace(" graphs", "") for p in self.providers]
                return self.module(*args)
        graph, static_in, static_out = self._graphs[batch]
        for dst, src in zip(static_in, args):
            dst.copy_(src)
        graph.replay()
        return static_out

    def _capture(self, args: list) -> tuple:
        """Capture ``module(*static inputs)`` after warm-up steps on a side stream, as PyTorch's
        CUDA graph documentation prescribes (allocations settle before the capture)."""
        torch = self._torch
        static_in = [a.clone() for a in args]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self.module(*static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = list(self.module(*static_in))
        return graph, static_in, static_out

    def close(self) -> None:
        self.module = None
        self._graphs.clear()
