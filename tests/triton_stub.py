"""A stand-in for ``triton_python_backend_utils``, the module Triton's Python-backend stub provides
only inside a Triton server (a mock of what cannot exist here): just enough of its API for
soundloc's ``model.py`` (tensors by name through DLPack, responses), so the Python-backend model
a repository holds runs on onnxruntime in the test process, fed requests as Triton would batch them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, np.ascontiguousarray(array)

    @classmethod
    def from_dlpack(cls, name: str, value) -> "Tensor":
        return cls(name, np.from_dlpack(value))

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


class Request:
    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.tensors = {name: Tensor(name, value) for name, value in tensors.items()}


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor]) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}


def load_python_model(folder: Path):
    """``folder/1/model.py`` initialised the way Triton does: ``args`` carries the model's config
    (``config.pbtxt`` as JSON, Triton's field names), the repository and the version."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    stub = types.ModuleType("triton_python_backend_utils")
    stub.Tensor, stub.InferenceResponse = Tensor, InferenceResponse
    stub.get_input_tensor_by_name = lambda request, name: request.tensors[name]
    sys.modules["triton_python_backend_utils"] = stub
    spec = importlib.util.spec_from_file_location(f"triton_model_{folder.name}", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
                      "model_repository": str(folder), "model_version": "1"})
    return model


def step_request(inputs: dict[str, np.ndarray], corrid: int, start: bool, end: bool) -> Request:
    """One sequence's step with the sequence batcher's controls (START, END, CORRID)."""
    controls = {"START": np.array([[float(start)]], np.float32), "END": np.array([[float(end)]], np.float32),
                "CORRID": np.array([[corrid]], np.uint64)}
    return Request({**{k: np.asarray(v, np.float32) for k, v in inputs.items()}, **controls})


def run_sequences(model, feeds: list[list[dict[str, np.ndarray]]]) -> list[list[dict[str, np.ndarray]]]:
    """Several sequences stepped together (one execute() per step, as the batcher groups them);
    each sequence's outputs per step."""
    out: list[list[dict[str, np.ndarray]]] = [[] for _ in feeds]
    for t in range(max(len(f) for f in feeds)):
        live = [k for k, f in enumerate(feeds) if t < len(f)]
        requests = [step_request(feeds[k][t], 100 + k, t == 0, t == len(feeds[k]) - 1) for k in live]
        for k, response in zip(live, model.execute(requests)):
            out[k].append(response.outputs)
    return out


def python_model_vs_local(bundle, root: Path, lengths: tuple[int, ...] = (7, 4), seed: int = 0) -> float:
    """The Python-backend model of ``bundle``'s repository and the local onnxruntime step on the
    same random step inputs (the family's shapes), several sequences at once; the largest
    difference of any output."""
    from soundloc.deploy.triton import write_repository
    from soundloc.families import family_of
    from soundloc.runtime.engine import StepModel
    from soundloc.runtime.triton_client import MODELS

    folder = next(f for f in write_repository(bundle, root, python=True) if f.name == MODELS["python"])
    model = load_python_model(folder)
    local = StepModel.from_export(bundle, backend="onnxruntime-cpu")
    rng = np.random.default_rng(seed)
    family = family_of(bundle.config)
    blank_frame, blank_audio = family.blank_step(bundle.config)
    sequences = [[(rng.standard_normal(blank_frame.shape).astype(np.float32),
                   rng.standard_normal(blank_audio.shape).astype(np.float32)) for _ in range(n)] for n in lengths]
    feeds = [[local.feed(f, a, np.ones(1, np.float32), []) for f, a in seq] for seq in sequences]
    states = {k: v for k, v in feeds[0][0].items() if k not in model.inputs}
    assert not states, f"requests carry only the declared inputs, not {sorted(states)}"
    served = run_sequences(model, feeds)
    worst = 0.0
    for seq, outs in zip(sequences, served):
        state = local.new_state(1)
        for (f, a), got in zip(seq, outs):
            want, state = local.step(f, a, np.ones(1, np.float32), state)
            for name in ("alpha", "score", "zv", "za"):
                worst = max(worst, float(np.abs(got[name].reshape(-1) - getattr(want, name).reshape(-1)).max()))
    return worst
