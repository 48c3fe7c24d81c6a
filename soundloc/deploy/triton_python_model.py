"""Triton Python-backend model (copied as ``model.py`` by ``write_repository(..., python=True)``):
the soundloc step graph in onnxruntime with its state kept here per sequence (CORRID), zero at
START and dropped at END. All requests of one execute() run as one batched call. Needs numpy
and onnxruntime in the interpreter of Triton's Python stub (the config's ``python_path``
parameter puts a same-version venv's site-packages first); imports nothing of soundloc.

Tensors cross the stub through DLPack (``np.from_dlpack`` / ``Tensor.from_dlpack``), not
``as_numpy()`` / ``pb_utils.Tensor(name, array)``: a stub whose pybind11 predates NumPy 2 reads
a NumPy 2 dtype's item size from the old ``PyArray_Descr`` layout (0 for float32), so outputs
came back with their shape and 0 bytes, and inputs were misread. DLPack carries dtype, shape and
strides itself. (NumPy may log "PyCapsule_GetPointer called with incorrect
name" when the consumed capsule is freed: its deleter does not know the stub's "used" name; the
data is not affected.)"""

import json
import os
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

np = ort = None  # imported in initialize(), after the config's python_path

OUTPUTS = ("alpha", "score", "zv", "za", "valid_out")  # what every step graph gives (exports before label outputs: all)


class TritonPythonModel:
    def initialize(self, args):
        global np, ort
        config = json.loads(args["model_config"])
        extra = config.get("parameters", {}).get("python_path", {}).get("string_value")
        # the request's inputs as the repository's config declares them (the export's family names
        # its audio input: "mel" for the classifier, "spec" for EZ-VSL)
        self.inputs = [tensor["name"] for tensor in config["input"]]
        # and the outputs it declares: OUTPUTS, plus the label heads' logits of newer exports
        self.outputs = [tensor["name"] for tensor in config.get("output", [])] or list(OUTPUTS)
        if extra:
            sys.path[:0] = extra.split(os.pathsep)
        import numpy as np
        import onnxruntime as ort

        here = Path(args["model_repository"]) / args["model_version"]
        self.session = ort.InferenceSession(str(here / "model.onnx"), providers=["CPUExecutionProvider"])
        self.specs = json.loads((here / "state.json").read_text())
        self.states = {}

    def execute(self, requests):
        ids, ends, feed = [], [], {name: [] for name in self.inputs}
        for request in requests:
            def tensor(name):
                return np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name))

            corr = int(tensor("CORRID").ravel()[0])
            if tensor("START").ravel()[0] > 0.5 or corr not in self.states:
                self.states[corr] = [np.zeros((1, *s["shape"]), np.float32) for s in self.specs]
            ids.append(corr)
            ends.append(tensor("END").ravel()[0] > 0.5)
            for name in self.inputs:
                feed[name].append(tensor(name))
        inputs = {name: np.concatenate(values) for name, values in feed.items()}
        for k, spec in enumerate(self.specs):
            inputs[spec["input"]] = np.concatenate([self.states[c][k] for c in ids])
        names = list(self.outputs) + [s["output"] for s in self.specs]
        out = dict(zip(names, self.session.run(names, inputs)))
        responses = []
        for j, (corr, end) in enumerate(zip(ids, ends)):
            self.states[corr] = [out[s["output"]][j:j + 1] for s in self.specs]
            if end:
                del self.states[corr]
            tensors = [pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(out[name][j:j + 1], np.float32))
                       for name in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
