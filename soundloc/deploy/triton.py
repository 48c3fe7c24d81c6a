"""A Triton Inference Server model repository for the step graph (`soundloc export --format triton`).

When one box is not enough, the edge keeps decode, mel, window and drawing, and a Triton server
runs the model for many streams. Each stream is one Triton *sequence* (its correlation id; the
client sets START on its first step and END on its last): the **sequence batcher** with the
**oldest** strategy batches the next step of many sequences into one call, and the step graph's
state tensors are Triton **implicit state** (kept per sequence on the server, zero at START,
equal to the offline model's zero padding), so a request carries only ``frame``, ``mel`` and
``valid``. No control inputs are declared: the graph has none, and with implicit state Triton
itself resets the state at START.

Layout: ``OUT/soundloc_step/config.pbtxt`` + ``1/model.onnx`` (ONNX Runtime backend, CPU or GPU),
and, when the export has a TensorRT step engine, ``OUT/soundloc_step_trt/`` with ``1/model.plan``
(TensorRT backend; the engine runs only on the GPU and TensorRT that built it). Written as text;
a test parses every config against Triton's own schema (tritonclient's ``model_config_pb2``).
This module needs neither torch nor tritonclient.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..config import SERVE_BATCH_WAIT_S
from ..fileio import atomic_write, atomic_write_bytes
from ..runtime.bundle import Bundle
from ..runtime.triton_client import MODELS

# Triton backend -> (the export's step file it serves, its name in the model version folder); the
# model's name is the client's (runtime.triton_client.MODELS), so every one is reachable by --triton.
SERVED_FILES = {"onnxruntime": ("onnx", "model.onnx"), "tensorrt": ("engine", "model.plan"),
                "python": ("onnx", "model.onnx")}
PLATFORMS = {"onnxruntime": 'backend: "onnxruntime"', "tensorrt": 'platform: "tensorrt_plan"',
             "python": 'backend: "python"'}
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
# The Python-backend variant gets the sequence's controls as inputs and keeps the state itself.
CONTROLS = [("START", "kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ]"),
            ("END", "kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ]"),
            ("CORRID", "kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64")]
TYPES = {"float": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
IDLE_US = 5_000_000  # a sequence without a step for 5 s is ended by the server (its slot freed)


def model_name(backend: str = "onnxruntime") -> str:
    return MODELS[backend]


def model_config(bundle: Bundle, backend: str = "onnxruntime", max_batch: int = 16,
                 max_sequences: int | None = None, idle_us: int = IDLE_US, python_path: str | None = None) -> str:
    """``config.pbtxt`` text for the step graph on ``backend``: onnxruntime or tensorrt (implicit
    state), or python (the step in onnxruntime inside Triton's Python backend, state kept by the
    model per correlation id: for a Triton build without the ONNX Runtime backend).

    ``max_batch``: the most steps in one call (a TensorRT engine's profile max);
    ``max_sequences``: streams the server holds state for at once (default 4 x max_batch);
    ``idle_us``: a sequence idle this long is ended by the server; ``python_path`` (python):
    where the stub's interpreter finds numpy and onnxruntime.
    """
    if backend not in SERVED_FILES:
        raise ValueError(f"backend must be one of {', '.join(SERVED_FILES)}, not {backend!r}")
    graph = bundle.graph("step")
    states = {s["input"] for s in bundle.state_specs} | {s["output"] for s in bundle.state_specs}
    inputs = [t for t in graph["inputs"] if t["name"] not in states]
    outputs = [t for t in graph["outputs"] if t["name"] not in states]
    lines = [f'name: "{model_name(backend)}"',
             PLATFORMS[backend],
             f"max_batch_size: {max_batch}",
             *_tensors("input", inputs), *_tensors("output", outputs),
             "sequence_batching {",
             f"  max_sequence_idle_microseconds: {idle_us}",
             "  oldest {",
             f"    max_candidate_sequences: {max_sequences or 4 * max_batch}",
             f"    preferred_batch_size: [ {max_batch} ]",
             f"    max_queue_delay_microseconds: {round(SERVE_BATCH_WAIT_S * 1e6)}",
             "  }"]
    for name, control in CONTROLS if backend == "python" else ():
        lines += [f'  control_input {{ name: "{name}" control [ {{ {control} }} ] }}']
    for spec in bundle.state_specs if backend != "python" else ():
        dims = ", ".join(str(d) for d in spec["shape"])
        lines += ["  state {", f'    input_name: "{spec["input"]}"', f'    output_name: "{spec["output"]}"',
                  "    data_type: TYPE_FP32", f"    dims: [ {dims} ]",
                  "    initial_state {", "      data_type: TYPE_FP32", f"      dims: [ {dims} ]",
                  "      zero_data: true", f'      name: "zero {spec["name"]}"', "    }", "  }"]
    kind = {"tensorrt": "KIND_GPU", "python": "KIND_CPU"}.get(backend, "KIND_AUTO")
    lines += ["}", f"instance_group [ {{ kind: {kind} count: 1 }} ]"]
    if backend == "python" and python_path:
        lines += [f'parameters {{ key: "python_path" value {{ string_value: {json.dumps(python_path)} }} }}']
    return "\n".join(lines) + "\n"


def _tensors(kind: str, tensors: list[dict]) -> list[str]:
    """``input [...]`` / ``output [...]`` without the batch axis (Triton adds it)."""
    out = [f"{kind} ["]
    for i, t in enumerate(tensors):
        dims = [d for d in t["shape"][1:]] or [1]  # (batch,) -> [1]: Triton wants a dim per batch row
        reshape = "" if len(t["shape"]) > 1 else " reshape: { shape: [ ] }"
        sep = "," if i < len(tensors) - 1 else ""
        out.append(f'  {{ name: "{t["name"]}" data_type: {TYPES[t["dtype"]]} '
                   f'dims: [ {", ".join(str(d) for d in dims)} ]{reshape} }}{sep}')
    return out + ["]"]


def _copy(source: Path, f) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f)


def write_repository(bundle: Bundle, root: str | Path, max_batch: int = 16, python: bool = False,
                     **config: object) -> list[Path]:
    """Write the model repository under ``root``: the ONNX Runtime model, the TensorRT one when
    the export has a step engine, and with ``python`` the Python-backend one (its ``model.py``
    and ``state.json`` beside the graph); ``config``: more ``model_config`` arguments. Returns the
    model folders written."""
    root = Path(root)
    written = []
    for backend, (kind, filename) in SERVED_FILES.items():
        if kind not in bundle.graph("step")["files"] or (backend == "python" and not python):
            continue
        folder = root / model_name(backend)
        (folder / "1").mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "1" / filename, lambda f, src=bundle.path("step", kind): _copy(src, f))
        if backend == "python":
            atomic_write_bytes(folder / "1" / "model.py", PYTHON_MODEL.read_bytes())
            atomic_write_bytes(folder / "1" / "state.json", json.dumps(bundle.state_specs).encode())
        atomic_write_bytes(folder / "config.pbtxt", model_config(bundle, backend, max_batch, **config).encode())
        written.append(folder)
    return written
