"""What a TensorRT build will be, decided without TensorRT: the precision plan per TensorRT
version (``plan_build``), the optimisation profile over the batch dim (``profile_shapes``), DLA
support, and the engine record the runtime checks before loading (``engine_metadata``).
``soundloc.deploy.tensorrt`` runs the build these decide; being pure, they are tested here where
TensorRT cannot be installed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import onnx
from onnx import TensorProto

from ..errors import ExportError, UsageError
from ..runtime.tensorrt_backend import normalize_cc, parse_version

PRECISIONS = ("fp32", "fp16", "int8")  # int8: from a QDQ graph (explicit quantization)
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # name -> min/opt/max


# -- the plan (pure) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    """How to build for one TensorRT version: network typing, builder flags, and notes to show."""

    trt_version: str
    precision: str
    strongly_typed: bool  # the network computes in the ONNX's own types
    strongly_typed_flag: bool  # pass NetworkDefinitionCreationFlag.STRONGLY_TYPED (10.x only)
    fp16_flag: bool  # set BuilderFlag.FP16 (weakly typed, 10.x only)
    dla_core: int | None = None
    notes: tuple[str, ...] = ()


def plan_build(trt_version: str, precision: str, onnx_is_fp16: bool,
               dla_core: int | None = None) -> BuildPlan:
    """The build recipe for ``precision`` on TensorRT ``trt_version`` (e.g. '10.3.0').

    Raises ValueError for bad options and ExportError for combinations no TensorRT of that
    version can build as asked.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if dla_core is not None and (not isinstance(dla_core, int) or dla_core < 0):
        raise UsageError(f"dla_core must be a non-negative int or None, not {dla_core!r}")
    major, minor, _ = parse_version(trt_version)
    if major < 10:
        raise ExportError(f"TensorRT {trt_version} is too old: soundloc needs TensorRT 10 or newer "
                          "(JetPack 6 ships 10.3)")
    if precision == "fp32" and onnx_is_fp16:
        raise ExportError("asked for an fp32 engine from an fp16 ONNX graph: build from the fp32 "
                          "graph, or ask for --precision fp16")
    if dla_core is not None and precision == "fp32":
        raise ExportError("DLA runs FP16/INT8 layers only: use --precision fp16 or int8 with a DLA core")
    if dla_core is not None and not dla_supported(trt_version):
        raise ExportError(f"TensorRT {trt_version} has no DLA support on Jetson (10.7 was the last 10.x with "
                          "DLA; 11.0-11.4.0 have none; 11.4.1 brings it back with JetPack 7.2.2): build with "
                          "JetPack 6's TensorRT 10.3, or without --dla-core")
    if major >= 11:
        return _plan_strong(trt_version, precision, onnx_is_fp16, dla_core, flag=False)
    if precision == "fp16" and not onnx_is_fp16:
        notes = ()
        if minor >= 12:
            notes = (f"TensorRT {trt_version}: weak typing (BuilderFlag.FP16) is deprecated since "
                     "10.12 and gone in 11; export the fp16 ONNX graph to build strongly typed",)
        return BuildPlan(trt_version, precision, strongly_typed=False, strongly_typed_flag=False,
                         fp16_flag=True, dla_core=dla_core, notes=notes)
    return _plan_strong(trt_version, precision, onnx_is_fp16, dla_core, flag=True)


def dla_supported(trt_version: str) -> bool:
    """Whether this TensorRT builds for Orin's DLA (NVIDIA's "Working with DLA" per release)."""
    version = parse_version(trt_version)
    return (10, 0, 0) <= version < (10, 8, 0) or version >= (11, 4, 1)


def _plan_strong(trt_version: str, precision: str, onnx_is_fp16: bool, dla_core: int | None,
                 *, flag: bool) -> BuildPlan:
    if precision == "fp16" and not onnx_is_fp16:
        raise ExportError(
            f"TensorRT {trt_version} builds strongly typed networks only (no FP16 builder flag): an "
            "fp16 engine needs the fp16 ONNX graph; export it with `soundloc export CKPT --format "
            "onnx --precision fp16` and build the engine from that graph")
    return BuildPlan(trt_version, precision, strongly_typed=True, strongly_typed_flag=flag,
                     fp16_flag=False, dla_core=dla_core)


def onnx_is_fp16(model: onnx.ModelProto) -> bool:
    """True when most floating-point weight elements (initializers and Constants) are fp16.

    soundloc's fp16 graphs keep fp32 inputs/outputs and a few fp32 constants around the Casts,
    so 'all weights fp16' would be too strict; the majority of weight elements is the signal.
    """
    counts = {TensorProto.FLOAT16: 0, TensorProto.FLOAT: 0, TensorProto.BFLOAT16: 0}
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for t in tensors:
        if t.data_type in counts:
            size = 1
            for d in t.dims:
                size *= d
            counts[t.data_type] += size
    return counts[TensorProto.FLOAT16] > counts[TensorProto.FLOAT] + counts[TensorProto.BFLOAT16]


# -- shapes (pure) --------------------------------------------------------------------------------
def onnx_input_dims(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Graph inputs (initializers excluded) -> dims, None where the dim is symbolic/dynamic."""
    inits = {i.name for i in model.graph.initializer}
    dims = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = vi.type.tensor_type.shape
        dims[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                              for d in shape.dim)
    return dims


def profile_shapes(input_dims: Mapping[str, Sequence[int | None]], batch: tuple[int, int, int],
                   fixed_dims: Mapping[str, Sequence[int]] | None = None) -> Profile:
    """(min, opt, max) shapes per input: dim 0 is the batch, the rest must be static.

    ``fixed_dims`` gives the non-batch dims of inputs whose ONNX dims are dynamic (e.g. T of
    the offline graphs), fixing them for this engine.
    """
    lo, opt, hi = _check_batch(batch)
    fixed = dict(fixed_dims or {})
    unknown = sorted(set(fixed) - set(input_dims))
    if unknown:
        raise ValueError(f"fixed_dims names unknown inputs {unknown}; inputs are {sorted(input_dims)}")
    profile: Profile = {}
    for name, dims in input_dims.items():
        if len(dims) == 0:
            raise ExportError(f"input '{name}' is a scalar: engines need a batch dim first")
        rest = tuple(fixed[name]) if name in fixed else tuple(dims[1:])
        if len(rest) != len(dims) - 1 or any(d is None or d < 1 for d in rest):
            raise ExportError(f"input '{name}' has dims {_fmt(dims)}: every dim but the batch must be "
                              f"static; give its other {len(dims) - 1} dims in fixed_dims")
        if dims[0] is not None and (lo, opt, hi) != (dims[0],) * 3:
            raise ExportError(f"input '{name}' has a fixed batch of {dims[0]}: export the graph with a "
                              f"dynamic batch, or ask for batch=({dims[0]}, {dims[0]}, {dims[0]})")
        profile[name] = ((lo, *rest), (opt, *rest), (hi, *rest))
    return profile


def _check_batch(batch: Sequence[int]) -> tuple[int, int, int]:
    ints = len(batch) == 3 and all(isinstance(b, int) for b in batch)
    if not ints or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise UsageError(f"batch must be (min, opt, max) ints with 1 <= min <= opt <= max, not {batch!r}")
    return int(batch[0]), int(batch[1]), int(batch[2])


def _fmt(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


# -- the result and its record ----------------------------------------------------------------------
@dataclass(frozen=True)
class EngineInfo:
    """What was built, on what; ``engine_metadata`` turns it into the soundloc.json record."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # 'major.minor'
    precision: str
    strongly_typed: bool
    build_seconds: float
    profile: Profile = field(default_factory=dict)
    dla_core: int | None = None
    engine_sha256: str = ""
    engine_bytes: int = 0
    placement: dict[str, Any] | None = None  # DLA builds: where the engine inspector saw the layers


def engine_metadata(info: EngineInfo) -> dict[str, Any]:
    """JSON-ready record for ``soundloc.json`` (key "tensorrt"), checked by the runtime.

    ``dla_core`` is set only when the engine inspector saw layers on that DLA core; a DLA
    build whose layers all fell back to the GPU is recorded as a GPU engine (``placement``
    keeps what was asked and what happened).
    """
    return {
        "tensorrt_version": info.tensorrt_version,
        "gpu_name": info.gpu_name,
        "compute_capability": info.compute_capability,
        "dla_core": info.dla_core if dla_layers(info.placement) else None,
        "placement": info.placement,
        "precision": info.precision,
        "strongly_typed": info.strongly_typed,
        "profile": {n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                    for n, s in info.profile.items()},
        "build_seconds": round(info.build_seconds, 3),
        "engine_sha256": info.engine_sha256,
        "engine_bytes": info.engine_bytes,
    }


def engine_info_from_metadata(record: Mapping[str, Any]) -> EngineInfo:
    """Inverse of ``engine_metadata`` (accepts the whole soundloc.json too)."""
    record = record.get("tensorrt", record)
    profile = {n: (tuple(s["min"]), tuple(s["opt"]), tuple(s["max"])) for n, s in record["profile"].items()}
    return EngineInfo(
        tensorrt_version=str(record["tensorrt_version"]), gpu_name=str(record["gpu_name"]),
        compute_capability=normalize_cc(record["compute_capability"]), precision=record["precision"],
        strongly_typed=bool(record["strongly_typed"]), build_seconds=float(record["build_seconds"]),
        profile=profile, dla_core=record.get("dla_core"), engine_sha256=record.get("engine_sha256", ""),
        engine_bytes=int(record.get("engine_bytes", 0)), placement=record.get("placement"))


def dla_layers(placement: Mapping[str, Any] | None) -> int:
    """Layers the engine inspector saw on the DLA (0 without a DLA build or a verified count)."""
    if not placement or placement.get("layers_on_dla") is None:
        return 0
    return int(placement["layers_on_dla"])


def layer_placement(engine_information: str, dla_core: int) -> dict[str, Any]:
    """Where an engine's layers run, from ``IEngineInspector.get_engine_information(JSON)``.

    With ``ProfilingVerbosity.DETAILED`` every layer is an object with a ``LayerType``; DLA
    subgraphs are layers whose type names the DLA (TensorRT logs them as ``[DlaLayer]``). With
    less verbosity the layers are bare names: the count is then unknown (None), never guessed.
    """
    try:
        layers = json.loads(engine_information).get("Layers", [])
    except (json.JSONDecodeError, AttributeError):
        layers = []
    typed = [layer for layer in layers if isinstance(layer, dict) and isinstance(layer.get("LayerType"), str)]
    if not layers or len(typed) != len(layers):
        return {"dla_core": dla_core, "layers": len(layers), "layers_on_dla": None, "checked_by": "unverified"}
    on_dla = sum("dla" in layer["LayerType"].lower() for layer in typed)
    return {"dla_core": dla_core, "layers": len(layers), "layers_on_dla": on_dla,
            "checked_by": "engine inspector"}



# -- the build (needs TensorRT) ---------------------------------------------------------------------
