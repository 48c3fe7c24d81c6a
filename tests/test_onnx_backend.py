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


def test_io_binding_feeds_the_state_back_without_a_host_copy(tiny, monkeypatch):
    """The I/O-binding path a GPU provider takes, run for real on the CPU provider (the device
    is the only difference): N streaming steps with the state fed back as bound OrtValues equal
    N steps through plain session.run with numpy state."""
    from soundloc.runtime.bundle import read_bundle
    from soundloc.runtime.engine import StepModel, open_backend
    from soundloc.runtime.onnx_backend import DeviceTensor

    monkeypatch.setattr(onnx_backend, "cuda_device_count", lambda: 0)
    bundle = read_bundle(tiny.export)
    plain = StepModel.from_export(bundle, backend="onnxruntime-cpu")
    assert not plain.backend._bind  # CPU provider: plain session.run by default
    bound = StepModel.from_export(bundle, backend="onnxruntime-cpu")
    keep = tuple(s["output"] for s in bundle.state_specs)
    bound.backend = OnnxRuntimeBackend(bundle.path("step"), "cpu", keep_on_device=keep, io_binding=True)
    rng = np.random.default_rng(0)
    s_plain, s_bound = plain.new_state(2), bound.new_state(2)
    size = bundle.config.image_size
    for _ in range(8):
        frames = rng.standard_normal((2, 3, size, size)).astype(np.float32)
        mels = rng.standard_normal((2, 10, 80)).astype(np.float32)
        valid = np.ones(2, np.float32)
        o_plain, s_plain = plain.step(frames, mels, valid, s_plain)
        o_bound, s_bound = bound.step(frames, mels, valid, s_bound)
        assert all(isinstance(s, DeviceTensor) for s in s_bound)  # never turned into numpy
        np.testing.assert_allclose(o_bound.alpha, o_plain.alpha, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(o_bound.valid, o_plain.valid)
    for a, b in zip(s_bound, s_plain):
        assert a.shape == b.shape and a.device == "cpu"
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-6)
    assert open_backend(bundle, "step", "onnxruntime-cpu")._keep == frozenset(keep)  # state named for the GPU


def test_gpu_provider_options_name_the_device_and_the_engine_cache(tmp_path):
    """Options only (no GPU here): the device index reaches both GPU providers, and the
    TensorRT EP caches its engines and timings beside the graph."""
    trt = onnx_backend._provider_options("TensorrtExecutionProvider", tmp_path / "step.onnx", device=1)
    assert trt["device_id"] == "1" and trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "ort_trt_cache") and (tmp_path / "ort_trt_cache").is_dir()
    assert onnx_backend._provider_options("CUDAExecutionProvider", tmp_path / "step.onnx", device=2) == {"device_id": "2"}
    assert onnx_backend._provider_options("CPUExecutionProvider", tmp_path / "step.onnx", device=2) == {}
