"""INT8 exports: static post-training quantization of an fp32 export with onnxruntime's tools.

Why two files per graph from one calibration: onnxruntime's fast x86 integer kernels (VNNI)
want uint8 activations with int8 weights, while TensorRT's explicit quantization wants int8
with a zero point of 0. Both are QDQ graphs made by ``onnxruntime.quantization.quantize_static``
from the *same* activation ranges: the first call calibrates and saves the ranges
(``calibration_cache_path``), the second reads them back.

- ``<graph>.onnx`` (kind ``onnx``): uint8 activations / int8 per-channel weights, for
  onnxruntime on CPUs; the runtime loads it like any export.
- ``<graph>.trt.onnx`` (kind ``onnx_trt``): symmetric int8 activations and weights, for
  ``--format engine`` (a strongly typed TensorRT network builds the QDQ graph as it is).

Calibration runs on real decoded clips (PyAV), and the step graph sees them as it does live:
frame by frame, flushed at the end, with the state tensors the fp32 step graph hands back, so
the ranges cover the activations (and the padding zeros) the step really computes. The offline
graphs see the same clips whole. Ranges are min/max (onnxruntime's default ``MinMax``).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..config import CALIB_MAX_CLIPS
from ..fileio import atomic_write_bytes
from ..media import MediaError
from ..runtime.bundle import Bundle, file_record, read_bundle, write_manifest
from ..runtime.engine import StepModel
from ..deploy.trt_ops import check_tensorrt_compat
from ..errors import ExportError, UsageError
from .verify import stream_inputs

TRT_SUFFIX = ".trt.onnx"
# What must stay float, by operator: the final map and score (alpha = V . z^A, S_av = z^V . z^A)
# and the pooled embeddings feeding them are a few thousand MACs, and int8 there would round the
# very numbers a user reads; ReduceMean/ReduceSum/Einsum are those nodes in every graph.
# No convolution is kept float, by measurement (``benchmarks/int8.py --sensitivity``, RESULTS.md
# issue 12): on the full-size step graph, keeping any one of its 18 residual blocks/stems (or all
# its non-conv operators) float leaves the map error at 0.55-0.71 % of the scale (0.66 % all int8)
# and moves peak agreement only among near-tied cells (84-95 %, all int8 93 %) and the binarised
# cIoU median by <= 0.011; on the trained demo model no block moves anything a user reads. Each
# one kept float costs step time and buys back nothing measurable, so none is.
# The label heads (Gemm / MatMul: a few C x D MACs a step) stay float for the same reason: their
# logits are the class probabilities a user reads.
FLOAT_OPS = ("Einsum", "ReduceMean", "ReduceSum", "Gemm", "MatMul")


@dataclass
class CalibrationSet:
    """Decoded calibration clips (normalised model inputs) and the files that could not be used."""

    folder: Path
    clips: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)  # name, video, mel
    skipped: list[dict[str, str]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The manifest's account of the calibration: which clips, how many steps, what was skipped."""
        return {"folder": self.folder.name, "clips": [name for name, _, _ in self.clips], "count": len(self.clips),
                "steps": int(sum(v.shape[2] for _, v, _ in self.clips)), "skipped": self.skipped,
                "method": "MinMax"}


def load_calibration(folder: str | Path, config, max_clips: int = CALIB_MAX_CLIPS,
                     progress: Callable[[str], None] = lambda s: None) -> CalibrationSet:
    """Decode up to ``max_clips`` videos of ``folder`` (or its ``videos/``) for calibration.

    A file that does not decode is skipped and said; a folder with no usable clip is refused.
    """
    from ..data.annotations import list_videos
    from ..preprocess import file_inputs

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--calib {folder}: not a folder of videos")
    calib = CalibrationSet(folder)
    for name, path in list_videos(folder):
        if len(calib.clips) >= max_clips:
            break
        try:
            video, mel = file_inputs(path, config, seconds=config.clip_seconds)
        except MediaError as e:
            calib.skipped.append({"file": path.name, "reason": str(e)})
            progress(f"calibration: skipping {path.name}: {e}")
            continue
        calib.clips.append((path.name, video, mel))
    if not calib.clips:
        why = f"; {len(calib.skipped)} file(s) would not decode" if calib.skipped else ""
        raise UsageError(f"--calib {folder}: no decodable video clips to calibrate on{why}")
    return calib


def calibration_feeds(fp32: Bundle, name: str, calib: CalibrationSet) -> Iterator[dict[str, np.ndarray]]:
    """Inputs of graph ``name`` for every calibration clip; the step graph's states come from
    the fp32 step graph run on the same stream."""
    if name == "video":
        yield from ({"video": video} for _, video, _ in calib.clips)
        return
    if name == "audio":
        yield from ({"mel": mel} for _, _, mel in calib.clips)
        return
    model = StepModel.from_export(fp32, backend="onnxruntime-cpu")
    try:
        for _, video, mel in calib.clips:
            state = model.new_state(1)
            for frame, m, valid in stream_inputs(video, mel, model.lookahead):
                yield model.feed(frame, m, valid, state)
                _, state = model.step(frame, m, valid, state)
    finally:
        model.close()


def _reader(feeds: Iterator[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    return _Reader()


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes kept in float, and why: the state tensors enter and leave the step graph exactly as
    the fp32 graph would carry them (the Concat that appends the new input to the cached ones
    and the Slices that cut the next state out stay float; the conv that reads the window still
    quantizes its input), and the ``FLOAT_OPS`` that make the map and the moment scores."""
    states_in = {i.name for i in model.graph.input if i.name.startswith("state_in.")}
    states_out = {o.name for o in model.graph.output if o.name.startswith("state_out.")}
    keep = []
    for node in model.graph.node:
        touches_state = states_in & set(node.input) or states_out & set(node.output)
        if touches_state or node.op_type in FLOAT_OPS:
            keep.append(node.name)
    return keep


def _flavours():
    from onnxruntime.quantization import QuantType

    # kind -> (activation type, extra options); weights are int8 per channel in both. TensorRT
    # takes no int32 DequantizeLinear: its biases stay float (it fuses them into the int8 conv).
    return {"onnx": (QuantType.QUInt8, {}),
            "onnx_trt": (QuantType.QInt8, {"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False})}


def prepare_graph(src: Path, scratch: Path) -> Path:
    """``src`` after onnxruntime's recommended pre-processing (shape inference, constant folding,
    Conv+BatchNorm fusion), as ``scratch/<stem>.prep.onnx``: what both flavours quantize.

    ONNX's own shape inference only (``skip_symbolic_shape``): onnxruntime's symbolic pass is for
    transformer graphs with symbolic dimensions, and it crashes on the normalising nodes of the
    cosine and salient maps (an output it cannot type); ONNX's pass types every node of all
    three map kinds, and the quantizer needs nothing more."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / f"{src.stem}.prep.onnx"
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    return prepared


def quantize_flavour(prepared: Path, dst: Path, kind: str, ranges: Path, exclude: list[str],
                     feeds: Iterator[dict[str, np.ndarray]] | None = None) -> Path:
    """One QDQ flavour (``kind``: ``onnx`` or ``onnx_trt``) of ``prepared`` in ``dst``, nodes
    ``exclude`` kept float. The activation ranges come from ``ranges`` (onnxruntime's calibration
    cache); with ``feeds`` they are first calibrated there (MinMax over every feed)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    activations, extra = _flavours()[kind]
    root = logging.getLogger()
    root.addFilter(_quiet_axis_notes)
    try:
        quantize_static(str(prepared), str(dst), None if feeds is None else _reader(feeds),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=activations,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=exclude, calibration_cache_path=str(ranges), extra_options=extra)
    finally:
        root.removeFilter(_quiet_axis_notes)
    return dst


def _quiet_axis_notes(record: logging.LogRecord) -> bool:
    """Drop onnxruntime's "Axis 1 is out-of-range for weight ..." note: per-channel quantization
    asks for axis 1 of every weight, and a rank-1 weight (a normalisation's scale) is then
    quantized per tensor, which is right; the note is logged on the root logger for each one."""
    return "is out-of-range for weight" not in record.getMessage()


def quantize_graph(src: Path, scratch: Path, feeds: Iterator[dict[str, np.ndarray]],
                   exclude: list[str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """Both QDQ flavours of the fp32 graph ``src`` from one calibration over ``feeds``:
    (kind -> file in ``scratch``, the nodes kept float). ``exclude`` adds nodes to keep float."""
    prepared = prepare_graph(src, scratch)
    keep = float_nodes(onnx.load(str(prepared))) + list(exclude or [])
    # The calibration keeps per-feed min/max scalars only (small). Not "CalibMaxIntermediateOutputs":
    # in onnxruntime 1.32 it drops every chunk but the last, so the ranges saw only the flush.
    ranges = scratch / f"{src.stem}.ranges.json"
    out: dict[str, Path] = {}
    for kind in _flavours():
        out[kind] = quantize_flavour(prepared, scratch / f"{src.stem}.{kind}.onnx", kind, ranges, keep,
                                     None if ranges.is_file() else feeds)
    return out, keep


def quantize_export(fp32: Bundle, out_dir: str | Path, calib: CalibrationSet, *,
                    verify_clip: tuple[str, np.ndarray, np.ndarray] | None = None,
                    exclude: list[str] | None = None,
                    progress: Callable[[str], None] = lambda s: None) -> Bundle:
    """An int8 export in ``out_dir`` from the fp32 export ``fp32``: every graph it has, both
    flavours, ``soundloc.json`` recording the calibration and, with ``verify_clip``, the
    comparison with ``fp32`` on that clip (``verify.compare_int8``). Nothing in ``out_dir``
    changes until all of it is made (and verified). ``verify_clip``: (name, video, mel)."""
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="soundloc-int8-") as tmp:
        scratch, stage = Path(tmp), Path(tmp) / "bundle"
        stage.mkdir()
        manifest = json.loads(json.dumps(fp32.manifest))  # a deep copy
        manifest.update(precision="int8", quantization={"calibration": calib.record(),
                                                        "flavours": _flavour_notes(), "float_nodes": {},
                                                        "seconds": {}})
        for name in fp32.manifest["graphs"]:
            progress(f"quantizing the {name} graph (calibrating on {len(calib.clips)} clips)")
            t0 = time.perf_counter()
            files, keep = quantize_graph(fp32.path(name), scratch, calibration_feeds(fp32, name, calib), exclude)
            manifest["quantization"]["seconds"][name] = round(time.perf_counter() - t0, 2)
            manifest["quantization"]["float_nodes"][name] = keep
            manifest["graphs"][name]["files"] = _stage(files, stage, name, manifest)
        write_manifest(stage, manifest)
        bundle = read_bundle(stage)
        if verify_clip is not None:
            from .verify import compare_int8

            progress("verifying int8 against the fp32 export")
            manifest["verify"] = {"clip": verify_clip[0], "against": "fp32 export",
                                  **compare_int8(bundle, fp32, *verify_clip[1:])}
            write_manifest(stage, manifest)
        out.mkdir(parents=True, exist_ok=True)
        for graph in manifest["graphs"].values():
            for rec in graph["files"].values():
                atomic_write_bytes(out / rec["file"], (stage / rec["file"]).read_bytes())
        write_manifest(out, manifest)
    return read_bundle(out)


def _stage(files: dict[str, Path], stage: Path, name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Check the TensorRT flavour, stamp both with the manifest's metadata, move into ``stage``."""
    from .onnx import embed_metadata

    trt = onnx.load(str(files["onnx_trt"]))
    problems = check_tensorrt_compat(trt)
    if problems:
        raise ExportError(f"int8 {name} graph would be refused by TensorRT: {problems[0]} "
                          f"(+{len(problems) - 1} more)")
    records = {}
    for kind, src in files.items():
        final = stage / (f"{name}.onnx" if kind == "onnx" else f"{name}{TRT_SUFFIX}")
        embed_metadata(onnx.load(str(src)), manifest, name, final)
        records[kind] = file_record(final)
    return records


def _flavour_notes() -> dict[str, str]:
    return {"onnx": "QDQ, uint8 activations (asymmetric) / int8 per-channel weights: onnxruntime CPU",
            "onnx_trt": "QDQ, int8 symmetric activations (zero point 0) / int8 per-channel weights: "
                        "TensorRT explicit quantization"}


def export_int8(model, out_dir: str | Path, calib_folder: str | Path, *, opset: int,
                checkpoint: dict[str, str], gate: dict[str, float] | None = None,
                verify_clip: str | Path | bool = False,
                progress: Callable[[str], None] = lambda s: None) -> Bundle:
    """`soundloc export --precision int8`: the fp32 export (in a scratch folder), calibrated
    on ``calib_folder`` and quantized into ``out_dir``; ``verify_clip`` as ``export_checkpoint``."""
    from ..preprocess import file_inputs
    from .onnx import export_model

    calib = load_calibration(calib_folder, model.config, progress=progress)
    clip = None
    if verify_clip is True:
        clip = calib.clips[0]  # in the calibration set: the manifest names it
    elif verify_clip:
        clip = (Path(verify_clip).name, *file_inputs(verify_clip, model.config))
    with tempfile.TemporaryDirectory(prefix="soundloc-fp32-") as tmp:
        fp32 = export_model(model, tmp, precision="fp32", opset=opset, checkpoint=checkpoint, gate=gate,
                            progress=progress)
        return quantize_export(fp32, out_dir, calib, verify_clip=clip, progress=progress)
