"""Will TensorRT's ONNX parser accept this graph? Checked here, without TensorRT.

TensorRT cannot be installed on the development machines, so every exported graph is checked
against the parser's published operator table (``tensorrt_onnx_ops.json``: onnx/onnx-tensorrt
``docs/operators.md`` at the TensorRT 10.1 GA commit, the TensorRT that JetPack 6 ships is
10.3) and against the restrictions of that table a program can check. A graph that TensorRT
would refuse then fails in CI, not on the Jetson.

First the whole model goes through ``onnx.checker.check_model(full_check=True)`` (every graph
and subgraph, with strict shape inference): a graph that is not valid ONNX (e.g. ReduceMean
given its axes as an input under opset 17) is refused by onnxruntime and TensorRT alike.
Then, per node (subgraphs of If/Loop/Scan and model-local functions included):
  - the default-domain opset is inside the table's range (9-20);
  - the operator is in the table and marked supported (other domains need a plugin);
  - the node's data type is one the table lists for it, where onnx shape inference knows it;
  - the restrictions named in the json's ``checked_restrictions`` (constant ``axes`` inputs,
    2-D/3-D pooling, ...).
What is not: restrictions that depend on values known only at build time (dynamic ``K``,
loop trip shapes). TensorRT's own parser stays the final word where it is installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Iterable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

DEFAULT_DOMAINS = ("", "ai.onnx")

# ONNX element type -> the type names the table uses. DOUBLE is accepted: TensorRT casts it down.
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL", TensorProto.INT4: "INT4",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.FLOAT8E4M3FNUZ: "FP8",
    TensorProto.FLOAT8E5M2: "FP8", TensorProto.FLOAT8E5M2FNUZ: "FP8",
}


@lru_cache(maxsize=1)
def load_table() -> dict[str, Any]:
    """The operator table with its source, opset range and checked restrictions (cached)."""
    text = resources.files("soundloc.deploy").joinpath("tensorrt_onnx_ops.json").read_text()
    return json.loads(text)


def opset_range() -> tuple[int, int]:
    table = load_table()
    return int(table["opset_min"]), int(table["opset_max"])


@dataclass
class _Scope:
    """What is known about tensors visible in one graph (outer scopes included)."""

    constants: dict[str, TensorProto | None] = field(default_factory=dict)  # None: Constant w/o value
    types: dict[str, int] = field(default_factory=dict)  # name -> onnx elem type
    ranks: dict[str, int] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)  # tensor names consumed by some node / output

    def child(self) -> "_Scope":
        return _Scope(dict(self.constants), dict(self.types), dict(self.ranks), set(self.used))

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)


def check_tensorrt_compat(model: onnx.ModelProto) -> list[str]:
    """Human-readable reasons TensorRT's ONNX parser would refuse ``model``; [] when none.

    Types are read after ``onnx.shape_inference`` (on a copy; the model is not changed).
    """
    problems = _check_onnx(model) + _check_opset(model)
    inferred = _infer(model)
    functions = {(f.domain, f.name): f for f in inferred.functions}
    _check_graph(inferred.graph, _Scope(), functions, problems, path="")
    return list(dict.fromkeys(problems))  # de-duplicated, order kept


def _check_onnx(model: onnx.ModelProto) -> list[str]:
    """The ONNX checker's verdict (full check: every graph, strict shape inference), one line."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return [f"not valid ONNX (onnx.checker): {first}"]
    return []


def _check_opset(model: onnx.ModelProto) -> list[str]:
    low, high = opset_range()
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS and not low <= imp.version <= high:
            return [f"opset {imp.version} is outside TensorRT 10.1's supported range {low}-{high}: "
                    f"export with opset {min(max(imp.version, low), high)}"]
    return []


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy; the model itself when inference fails (types then come from
    initializers and graph inputs/outputs only, so fewer type checks run)."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        return model


def _add_value_infos(graph: onnx.GraphProto, scope: _Scope) -> None:
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type:
            scope.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                scope.ranks[vi.name] = len(tt.shape.dim)
    for init in graph.initializer:
        scope.constants[init.name] = init
        scope.types[init.name] = init.data_type
        scope.ranks[init.name] = len(init.dims)
    for node in graph.node:
        scope.used.update(n for n in node.input if n)
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            scope.constants[node.output[0]] = value
            if value is not None:
                scope.types[node.output[0]] = value.data_type
    scope.used.update(o.name for o in graph.output)


def _check_graph(graph: onnx.GraphProto, scope: _Scope, functions: dict, problems: list[str],
                 path: str) -> None:
    scope = scope.child()
    _add_value_infos(graph, scope)
    for node in graph.node:
        where = f"{path}{node.name or node.op_type}"
        key = (node.domain, node.op_type)
        if key in functions:  # model-local function: the parser inlines it, so check its body
            body = onnx.helper.make_graph(functions[key].node, functions[key].name, [], [])
            _check_graph(body, scope, functions, problems, path=f"{where}/")
            continue
        problems.extend(check_node(node, scope, where))
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                _check_graph(sub, scope, functions, problems, path=f"{where}/{attr.name}/")


def check_node(node: onnx.NodeProto, scope: _Scope, where: str) -> list[str]:
    """Problems of one node: support, data type, then the checked restrictions."""
    label = f"node '{where}' ({node.op_type})"
    if node.domain not in DEFAULT_DOMAINS:
        return [f"{label}: operator of domain '{node.domain}' needs a TensorRT plugin"]
    entry = load_table()["operators"].get(node.op_type)
    if entry is None or not entry["supported"]:
        return [f"{label}: operator {node.op_type} is not supported by TensorRT's ONNX parser"]
    problems = _check_type(node, entry, scope, label)
    for rule in _rules_for(node.op_type):
        problem = _RULES[rule](node, scope, _rule_arg(rule, node.op_type))
        if problem:
            problems.append(f"{label}: {problem}")
    return problems


def _check_type(node: onnx.NodeProto, entry: dict, scope: _Scope, label: str) -> list[str]:
    """The table's types are those of the node's data tensor: the first input (the output for
    nodes without inputs). Index/shape inputs are not what the column describes."""
    tensor = next((n for n in node.input if n), None) or (node.output[0] if node.output else None)
    elem = scope.types.get(tensor) if tensor else None
    if not elem:
        return []
    name = _TYPE_NAMES.get(elem)
    if name == "DOUBLE":
        return []  # TensorRT casts DOUBLE to FLOAT (table note)
    if name is None:
        return [f"{label}: tensor '{tensor}' has type {TensorProto.DataType.Name(elem)}, "
                "which TensorRT does not support at all"]
    if entry["types"] and name not in entry["types"]:
        return [f"{label}: {name} data ('{tensor}') is not supported; TensorRT accepts "
                f"{', '.join(entry['types'])} for {node.op_type}"]
    return []


@lru_cache(maxsize=None)
def _rules_for(op_type: str) -> tuple[str, ...]:
    checked = load_table()["checked_restrictions"]
    return tuple(rule for rule, spec in checked.items()
                 if isinstance(spec, dict) and op_type in spec["ops"])


def _rule_arg(rule: str, op_type: str) -> Any:
    ops = load_table()["checked_restrictions"][rule]["ops"]
    return ops[op_type] if isinstance(ops, dict) else None


# -- the rules ----------------------------------------------------------------------------------
def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _axes_constant(node: onnx.NodeProto, scope: _Scope, index: int) -> str | None:
    name = _input(node, index)
    if name and name not in scope.constants:
        what = "axis" if node.op_type == "CumSum" else "axes"
        return f"input '{name}' ({what}) must be an initializer or Constant, not computed in the graph"
    return None


def _pool_2d_3d(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    kernel = _attr(node, "kernel_shape", [])
    if len(kernel) not in (2, 3):
        return f"{len(kernel)}-D pooling; TensorRT pools 2-D or 3-D only"
    return None


def _dilations_one(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    dil = _attr(node, "dilations", [])
    return None if all(d == 1 for d in dil) else f"dilations {list(dil)} must be empty or all ones"


def _maxpool_no_indices(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    if len(node.output) > 1 and node.output[1]:
        return "the Indices output is not supported"
    return None


def _conv_1d_3d(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    kernel = _attr(node, "kernel_shape")
    rank = len(kernel) if kernel else scope.ranks.get(_input(node, 1), 0) - 2
    if rank > 3:
        return f"{rank}-D convolution; TensorRT convolves 1-D to 3-D"
    return None


def _constant_attrs(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return f"attribute {bad[0]} is not supported" if bad else None


def _dropout_inference(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    name = _input(node, 2)
    if not name:
        return None
    value = scope.constant(name)
    if value is None or bool(np.any(value)):
        return "training_mode must be a constant False (export the model in eval mode)"
    return None


def _topk(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    if _attr(node, "sorted", 1) != 1:
        return "sorted must be 1"
    k = scope.constant(_input(node, 1))
    if k is not None and int(np.max(k)) >= 3840:
        return f"K = {int(np.max(k))} must be less than 3840"
    return None


def _layernorm_first_output(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    extra = [o for o in node.output[1:] if o and o in scope.used]
    return f"only output Y is supported; '{extra[0]}' is used" if extra else None


def _lstm_attrs(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    if _attr(node, "input_forget", 0) != 0 or _attr(node, "layout", 0) != 0:
        return "input_forget and layout must be 0"
    return None


def _zero_point_zero(node: onnx.NodeProto, scope: _Scope, index: int) -> str | None:
    value = scope.constant(_input(node, index))
    if value is not None and np.any(value.astype(np.float64) != 0):
        return "the zero point must be 0 (symmetric quantization)"
    return None


_RESIZE_OK = {
    "mode": ("nearest", "linear"),
    "coordinate_transformation_mode": ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                       "asymmetric", "align_corners"),
    "nearest_mode": ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"),
    "keep_aspect_ratio_policy": ("stretch",),
}
_RESIZE_DEFAULT = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                   "nearest_mode": "round_prefer_floor", "keep_aspect_ratio_policy": "stretch"}


def _resize_modes(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    for attr, allowed in _RESIZE_OK.items():
        value = _text(_attr(node, attr, _RESIZE_DEFAULT[attr]))
        if value not in allowed:
            return f"{attr}={value!r} is not supported ({', '.join(allowed)})"
    return "antialiasing is not supported" if _attr(node, "antialias", 0) else None


def _scatternd_no_reduction(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    value = _text(_attr(node, "reduction", "none"))
    return None if value == "none" else f"reduction={value!r} is not supported"


def _gridsample_4d(node: onnx.NodeProto, scope: _Scope, _: Any) -> str | None:
    rank = scope.ranks.get(_input(node, 0))
    return None if rank in (None, 4) else f"input is {rank}-D; TensorRT's GridSample needs 4-D"


_RULES: dict[str, Callable[[onnx.NodeProto, _Scope, Any], str | None]] = {
    "axes-constant": _axes_constant, "pool-2d-3d": _pool_2d_3d, "dilations-one": _dilations_one,
    "maxpool-no-indices": _maxpool_no_indices, "conv-1d-3d": _conv_1d_3d,
    "constant-attrs": _constant_attrs, "dropout-inference": _dropout_inference, "topk": _topk,
    "layernorm-first-output": _layernorm_first_output, "lstm-attrs": _lstm_attrs,
    "zero-point-zero": _zero_point_zero, "resize-modes": _resize_modes,
    "scatternd-no-reduction": _scatternd_no_reduction, "gridsample-4d": _gridsample_4d,
}


def operators_used(model: onnx.ModelProto) -> set[str]:
    """Every op_type in the model, subgraphs and local functions included (for reports)."""
    def walk(nodes: Iterable[onnx.NodeProto]) -> Iterable[str]:
        for node in nodes:
            yield node.op_type
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                    yield from walk(sub.node)
    names = set(walk(model.graph.node))
    for func in model.functions:
        names.update(walk(func.node))
    return names
