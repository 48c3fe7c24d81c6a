"""Provider resolution and the onnxruntime backend on a CPU-only machine."""

from importlib import metadata

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from soundloc.runtime import onnx_backend  # noqa: E402
from soundloc.runtime.backend import BackendError  # noqa: E402
from soundloc.runtime.onnx_backend import OnnxRuntimeBackend, resolve_providers  # noqa: E402


@pytest.fixture
def add_graph(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])
    g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g", [x], [y])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_cpu_machine_gets_cpu_only_and_no_banner(add_graph, capfd, monkeypatch):
    monkeypatch.setattr(onnx_backend, "cuda_device_count", lambda: 0)
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
    be = OnnxRuntimeBackend(add_graph)
    out = be.run({"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(out["y"], 2 * np.ones((2, 3)))
    assert be.providers == ["CPUExecutionProvider"]
    err = capfd.readouterr().err
    assert "EP Error" not in err and "CUDA" not in err


def test_gpu_providers_only_when_a_gpu_exists(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnx_backend, "cuda_device_count", lambda: 0)
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        resolve_providers("cuda")
    monkeypatch.setattr(onnx_backend, "cuda_device_count", lambda: 1)
    assert resolve_providers("auto") == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="one of"):
        resolve_providers("rocm")


def test_cpu_wheel_asked_for_cuda_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        resolve_providers("tensorrt")


def test_both_onnxruntime_wheels_installed_is_refused(monkeypatch):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda n: "1.31.0" if n == "onnxruntime-gpu" else real(n))
    with pytest.raises(BackendError, match="onnxruntime and onnxruntime-gpu are installed together"):
        resolve_providers("cpu")


def test_unloadable_graph_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BackendError) as e:
        OnnxRuntimeBackend(bad)
    assert "\n" not in str(e.value) and "bad.onnx" in str(e.value)
