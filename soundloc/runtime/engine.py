"""The streaming model as the runtime sees it: a loaded export (step graph on a backend), the
input preprocessing, and per-stream state kept as plain numpy arrays.

One ``StepModel`` can serve many streams: their states stack on the batch axis of one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import logging

import numpy as np

from ..errors import UsageError
from ..families import family_of
from .backend import Backend, BackendError, check_backend
from .bundle import Bundle, read_bundle
from ..labels import LOGIT_PREFIX
from ..visibility import Visibility

log = logging.getLogger(__name__)
_NOTED_NO_CLASSES: set[str] = set()  # exports already noted in this process (a demo opens its model twice)


@dataclass
class StepOutput:
    """Outputs of one step call for B streams, describing the step ``lookahead`` steps back."""

    alpha: np.ndarray  # (B, h, w) per-step map
    score: np.ndarray  # (B,) moment score S_av
    zv: np.ndarray  # (B, D)
    za: np.ndarray  # (B, D)
    valid: np.ndarray  # (B,) bool: the described step is a real one (not start-up or flush padding)
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # head -> (B, C) per-step logits (exports before labels: none)


def open_backend(bundle: Bundle, graph: str = "step", backend: str = "auto", threads: int | None = None,
                 device: int = 0) -> Backend:
    """Load one graph of an export on the requested backend; ``auto`` takes a TensorRT engine
    when the export has one and TensorRT loads, else onnxruntime with the best usable provider.
    ``device``: the CUDA device of every GPU backend. On an onnxruntime GPU provider the step
    graph's state stays on that device between calls (I/O binding)."""
    if check_backend(backend) == "torch":
        raise UsageError("an export directory does not run on the torch backend (that needs a checkpoint)")
    if backend in ("auto", "tensorrt") and "engine" in bundle.graph(graph)["files"]:
        try:
            from .tensorrt_backend import TensorRTBackend

            record = bundle.graph(graph).get("tensorrt") or bundle.manifest.get("tensorrt", {})
            return TensorRTBackend(bundle.path(graph, "engine"), {"tensorrt": record}, device=device)
        except BackendError as e:
            if backend == "tensorrt":
                raise
            log.warning("TensorRT engine not used (%s); falling back to onnxruntime", e)
    elif backend == "tensorrt":
        raise BackendError(f"{bundle.root}: no TensorRT engine in this export; build one with "
                           "`soundloc export CKPT --format engine`")
    from .onnx_backend import OnnxRuntimeBackend

    providers = {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}
    keep = tuple(spec["output"] for spec in bundle.state_specs) if graph == "step" else ()
    return OnnxRuntimeBackend(bundle.path(graph, "onnx"), providers.get(backend, "auto"), threads=threads,
                              device=device, keep_on_device=keep)


def bundle_label_heads(bundle: Bundle | None) -> tuple[str, ...]:
    """The label heads whose logits an export's step graph gives (none in older exports)."""
    if bundle is None or "step" not in bundle.manifest.get("graphs", {}):
        return ()
    names = [t["name"] for t in bundle.graph("step").get("outputs", [])]
    return tuple(n[len(LOGIT_PREFIX):] for n in names if n.startswith(LOGIT_PREFIX))


def bundle_visibility(bundle: Bundle | None) -> Visibility | None:
    """The export's calibrated in-view confidence (``soundloc calibrate``), if it has one."""
    record = None if bundle is None else bundle.manifest.get("visibility")
    return Visibility.from_dict(record) if record else None


class StepModel:
    """The exact streaming step: ``step(frames, audio, valid, state)`` on any backend.

    Build it with ``runtime.backend_spec.load_step_model(target, spec)``: an export directory
    (TensorRT engine or onnxruntime), a ``.pt`` checkpoint (PyTorch, for comparison; the only
    path that imports torch), or a Triton server.
    """

    def __init__(self, backend: Backend, config, lookahead: int, state_specs: list[dict],
                 gate_score: float | None = None, bundle: Bundle | None = None,
                 label_heads: tuple[str, ...] | None = None) -> None:
        self.backend, self.config, self.lookahead = backend, config, lookahead
        self._states = state_specs
        self.bundle_gate_score = gate_score
        self.bundle = bundle
        self.label_heads = label_heads if label_heads is not None else bundle_label_heads(bundle)
        self.visibility = bundle_visibility(bundle)
        if bundle is not None and not self.label_heads and config.family == "classifier":
            _note_no_classes(bundle)

    @classmethod
    def from_export(cls, export_dir: str | Path | Bundle, backend: str = "auto",
                    threads: int | None = None, device: int = 0) -> "StepModel":
        """An export's step on a local backend (``open_backend``'s names)."""
        bundle = export_dir if isinstance(export_dir, Bundle) else read_bundle(export_dir)
        gate = bundle.manifest.get("gate", {}).get("score")
        return cls(open_backend(bundle, "step", backend, threads, device), bundle.config, bundle.lookahead_steps,
                   bundle.state_specs, gate, bundle)

    @property
    def name(self) -> str:
        return f"{self.backend.name} ({', '.join(self.backend.providers)})"

    def new_state(self, batch: int = 1) -> list[np.ndarray]:
        """Zero state for ``batch`` streams: equals the offline model's zero padding."""
        return [np.zeros((batch, *s["shape"]), np.float32) for s in self._states]

    def feed(self, frames: np.ndarray, audio: np.ndarray, valid: np.ndarray,
             state: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The step graph's named inputs for ``step``'s arguments (also what calibration feeds)."""
        b, family = frames.shape[0], family_of(self.config)  # the family says what its step takes
        feed = {
            "frame": np.ascontiguousarray(frames, np.float32).reshape(b, 3, 1, *frames.shape[-2:]),
            family.audio_input: np.ascontiguousarray(audio, np.float32).reshape(b, *family.audio_shape(self.config)),
            "valid": np.asarray(valid, np.float32).reshape(b, 1),
        }
        for spec, value in zip(self._states, state):
            feed[spec["input"]] = value
        return feed

    def step(self, frames: np.ndarray, audio: np.ndarray, valid: np.ndarray,
             state: list[np.ndarray]) -> tuple[StepOutput, list[np.ndarray]]:
        """frames (B, 3, H, W) normalised; audio: the family's audio input (the classifier's mels (B, 10, 80),
        EZ-VSL's spectrogram); valid (B,) -> outputs, new state."""
        b = frames.shape[0]
        out = self.backend.run(self.feed(frames, audio, valid, state))
        new_state = [out[spec["output"]] for spec in self._states]
        logits = {k[len(LOGIT_PREFIX):]: v.reshape(b, -1) for k, v in out.items() if k.startswith(LOGIT_PREFIX)}
        result = StepOutput(alpha=out["alpha"], score=out["score"].reshape(b), zv=out["zv"], za=out["za"],
                            valid=out["valid_out"].reshape(b) > 0.5, logits=logits)
        return result, new_state

    def close(self) -> None:
        self.backend.close()


def _note_no_classes(bundle: Bundle) -> None:
    """One line, once per export, saying that its events carry no classes and what to do."""
    root = str(Path(bundle.root).resolve())
    if root in _NOTED_NO_CLASSES:
        return
    _NOTED_NO_CLASSES.add(root)
    log.warning("note: %s was exported before class outputs: its events carry no classes "
                "(re-export it to get them)", bundle.root)
