"""PyTorch backend: runs a checkpoint's streaming step directly, for comparison with the
exported graphs. The only runtime path that imports torch (lazily, with an install hint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import BackendError


class TorchBackend:
    name = "torch"

    def __init__(self, ckpt: str | Path, device: str = "auto", threads: int | None = None) -> None:
        try:
            import torch
        except ImportError:
            raise BackendError("the torch backend needs PyTorch: `pip install 'soundloc[train]'`") from None
        from ..model.checkpoint import load_checkpoint
        from ..families import family_of
        from ..model.streaming import OUTPUT_NAMES

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        model, data = load_checkpoint(ckpt, map_location=self.device)
        self._torch = torch
        family = family_of(model.config)
        self.module = family.part("step")(model).to(self.device).eval()
        self.config = model.config
        self.lookahead = self.module.lookahead
        self.gate_score = (data.get("gate") or {}).get("score")
        self.state_specs = [{"name": n, "input": f"state_in.{n}", "output": f"state_out.{n}", "shape": list(s)}
                            for n, s in zip(self.module.state_names, self.module.state_shapes)]
        self.input_names = ["frame", family.audio_input, "valid"] + [s["input"] for s in self.state_specs]
        self.output_names = OUTPUT_NAMES + [s["output"] for s in self.state_specs]
        self.providers = [str(self.device)]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            outs = self.module(*args)
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outs)}

    def close(self) -> None:
        self.module = None
