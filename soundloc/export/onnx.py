"""Export a checkpoint to a self-describing directory of ONNX graphs (and TensorRT engines).

Three graphs, each with a dynamic batch dimension:
- ``video.onnx``: video (B, 3, T, H, W) normalised -> V (B, D, T, h, w), zv (B, T, D); dynamic T;
- ``audio.onnx``: mel (B, 1, 10T, 80) -> za (B, T, D); dynamic T;
- ``step.onnx``: the exact streaming step (``soundloc.model.streaming``): frame, mel, valid and
  the state tensors in; alpha, score, zv, za, valid_out, the per-step logits of the label
  heads (``logits_audio``, ``logits_av``) and the new state out.
fp16 graphs hold fp16 weights and compute with fp32 inputs and outputs: the form a strongly
typed TensorRT (11, or 10 without the FP16 flag) builds as it is. Every graph is checked
against TensorRT's ONNX operator list before it is kept, and ``soundloc.json`` (also copied into
each graph's ``metadata_props``) records everything the runtime needs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import onnx
import torch
from torch import nn

from .. import __version__
from ..config import FORMAT_VERSION
from ..families import family_of
from ..fileio import Staged
from ..model.classifier import AVClassifier
from ..model.streaming import StreamingModel
from ..runtime.bundle import MAGIC, Bundle, file_record, read_bundle, write_manifest
from ..deploy.trt_ops import check_tensorrt_compat
from ..errors import ExportError, UsageError
from .families import export_parts
from .graphs import GraphSpec

log = logging.getLogger(__name__)

OPSET = 18  # torch 2.13's exporter may raise it (it writes what it needs); recorded as written
PRECISIONS = ("fp32", "fp16")


class _Half(nn.Module):
    """fp16 weights and compute inside, fp32 at every input and output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.half()

    def forward(self, *args: torch.Tensor):
        out = self.inner(*[a.half() for a in args])
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def _dynamic_shapes(module: nn.Module, flat: list[dict]) -> tuple:
    """torch.export wants dynamic shapes shaped like forward's signature (varargs as one tuple)."""
    if isinstance(module, _Half):
        return (tuple(flat),)
    if isinstance(module, StreamingModel):
        return (*flat[:3], tuple(flat[3:]))
    return tuple(flat)


def _export_graph(spec: GraphSpec, path: Path, precision: str, opset: int) -> onnx.ModelProto:
    module = _Half(spec.module) if precision == "fp16" else spec.module
    # torch's exporter logs "torchvision is not installed. Skipping torchvision::nms" (and three
    # more) for every graph: torchvision's detection ops, which no soundloc graph uses.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), spec.args, str(path), input_names=spec.inputs, output_names=spec.outputs,
                          dynamic_shapes=_dynamic_shapes(module, spec.dynamic), opset_version=opset, external_data=False, verbose=False)
    model = onnx.load(str(path))
    problems = check_tensorrt_compat(model)
    if problems:
        raise ExportError(f"{path.name} would be refused by TensorRT: {problems[0]} (+{len(problems) - 1} more)")
    return model


def _tensor_info(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def info(values) -> list[dict[str, Any]]:
        return [{"name": v.name, "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {"inputs": info(model.graph.input), "outputs": info(model.graph.output)}


def export_model(model: nn.Module, out_dir: str | Path, *, precision: str = "fp32", opset: int = OPSET,
                 checkpoint: dict[str, str] | None = None, gate: dict[str, float] | None = None,
                 graphs: tuple[str, ...] = ("step", "video", "audio"),
                 progress: Callable[[str], None] | None = None) -> Bundle:
    """Write the three ONNX graphs and ``soundloc.json`` for ``model`` (any family's: its family says
    which graphs) into ``out_dir``."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    cfg = model.config
    lookahead = family_of(cfg).lookahead_steps(cfg)
    manifest: dict[str, Any] = {
        "format": MAGIC, "format_version": FORMAT_VERSION, "soundloc_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(), "precision": precision,
        "lookahead_steps": lookahead, "lookahead_seconds": lookahead / cfg.fps,
        "checkpoint": checkpoint or {}, "graphs": {}, "export_seconds": {},
    }
    if gate:
        manifest["gate"] = dict(gate)  # calibrated gating threshold(s) from training
    written: list[Staged] = []
    try:
        for spec in export_parts(cfg).graphs(model):
            if spec.name in graphs:
                if progress:
                    progress(f"exporting {spec.name} graph ({precision})")
                written.append(Staged(out / f"{spec.name}.onnx", suffix=".partial.onnx"))
                manifest["graphs"][spec.name] = _export_entry(spec, written[-1].temp, manifest, opset)
    except BaseException:
        for staged in written:
            staged.discard()
        raise
    # Every graph exported: only now replace the previous export's files (a failed re-export
    # leaves the old directory usable), the manifest last.
    for staged in written:
        final = staged.commit()
        manifest["graphs"][final.stem]["files"] = {"onnx": file_record(final)}
    write_manifest(out, manifest)
    return read_bundle(out)


def _export_entry(spec: GraphSpec, path: Path, manifest: dict[str, Any], opset: int) -> dict[str, Any]:
    """Export one graph to ``path``; its manifest entry (files are recorded by the caller)."""
    t0 = time.perf_counter()
    graph = _export_graph(spec, path, manifest["precision"], opset)
    entry: dict[str, Any] = {"opset": max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
                             **_tensor_info(graph)}
    if spec.name == "step":
        entry["state"] = [{"name": n, "input": f"state_in.{n}", "output": f"state_out.{n}", "shape": list(s)}
                          for n, s in zip(spec.module.state_names, spec.module.state_shapes)]
    embed_metadata(graph, manifest, spec.name, path)
    manifest["export_seconds"][spec.name] = round(time.perf_counter() - t0, 2)
    return entry


def embed_metadata(graph: onnx.ModelProto, manifest: dict[str, Any], name: str, path: Path) -> None:
    """Copy the manifest's description into the graph's ``metadata_props`` (keys ``soundloc.*``)."""
    props = {"soundloc.graph": name, "soundloc.format_version": str(FORMAT_VERSION),
             "soundloc.version": __version__, "soundloc.precision": manifest["precision"],
             "soundloc.lookahead_steps": str(manifest["lookahead_steps"]),
             "soundloc.config": json.dumps(manifest["config"], sort_keys=True),
             "soundloc.checkpoint_sha256": manifest["checkpoint"].get("sha256", "")}
    del graph.metadata_props[:]
    for k, v in props.items():
        graph.metadata_props.add(key=k, value=v)
    graph.producer_name, graph.producer_version = "soundloc", __version__
    onnx.save(graph, str(path))


def random_model(preset_name: str, seed: int = 0) -> AVClassifier:
    """The ``preset_name`` architecture with random weights and randomised BatchNorm statistics
    (fresh BatchNorm is an identity that would make the activations unlike a trained model's)."""
    from ..config import preset
    from .verify import randomise_batchnorm

    torch.manual_seed(seed)
    model = AVClassifier(preset(preset_name)).eval()
    randomise_batchnorm(model, seed)
    return model


def random_weights_record(preset_name: str, seed: int) -> dict[str, Any]:
    """The manifest's ``checkpoint`` entry of a random-weights export."""
    return {"random_weights": True, "preset": preset_name, "seed": seed}
