"""TensorRT engine build and backend: version logic, profiles, compatibility checks and metadata
tested here for real; the build/run tests that need TensorRT and a GPU skip without them."""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from soundloc.deploy import tensorrt as trt_export
from soundloc.fileio import atomic_write_bytes
from soundloc.deploy.trt_plan import (
    EngineInfo, engine_info_from_metadata, engine_metadata, onnx_input_dims, onnx_is_fp16, plan_build,
    profile_shapes,
)
from soundloc.errors import ExportError
from soundloc.runtime.backend import BackendError
from soundloc.runtime.tensorrt_backend import (
    GpuInfo, check_engine_compat, check_input_shape, cuda_call, normalize_cc, parse_nvidia_smi,
    parse_version, sm_name,
)


# -- plan_build -----------------------------------------------------------------------------------
# (version, precision, onnx fp16) -> (strongly_typed, creation flag, FP16 flag) or the error type
PLANS = {
    ("10.3.0", "fp32", False): (True, True, False),
    ("10.3.0", "fp32", True): ExportError,
    ("10.3.0", "fp16", False): (False, False, True),
    ("10.3.0", "fp16", True): (True, True, False),
    ("10.13.0", "fp32", False): (True, True, False),
    ("10.13.0", "fp32", True): ExportError,
    ("10.13.0", "fp16", False): (False, False, True),
    ("10.13.0", "fp16", True): (True, True, False),
    ("11.4.0", "fp32", False): (True, False, False),
    ("11.4.0", "fp32", True): ExportError,
    ("11.4.0", "fp16", False): ExportError,
    ("11.4.0", "fp16", True): (True, False, False),
    ("10.3.0", "int8", False): (True, True, False),  # a QDQ graph: explicit quantization, typed
    ("11.4.0", "int8", False): (True, False, False),
}


@pytest.mark.parametrize("key", list(PLANS), ids=lambda k: f"trt{k[0]}-{k[1]}-onnx{'16' if k[2] else '32'}")
def test_plan_build_matrix(key):
    expected = PLANS[key]
    if expected is ExportError:
        with pytest.raises(ExportError):
            plan_build(*key)
        return
    plan = plan_build(*key)
    assert (plan.strongly_typed, plan.strongly_typed_flag, plan.fp16_flag) == expected
    assert plan.precision == key[1] and plan.trt_version == key[0]


def test_plan_build_messages_say_what_to_do():
    with pytest.raises(ExportError, match=r"strongly typed.*--precision fp16"):
        plan_build("11.4.0", "fp16", onnx_is_fp16=False)
    with pytest.raises(ExportError, match="fp32 engine from an fp16 ONNX"):
        plan_build("10.3.0", "fp32", onnx_is_fp16=True)
    with pytest.raises(ExportError, match="too old"):
        plan_build("8.6.1", "fp32", onnx_is_fp16=False)
    # weak typing is deprecated from 10.12: a note on 10.13, none on JetPack's 10.3
    assert "deprecated since 10.12" in plan_build("10.13.0", "fp16", False).notes[0]
    assert plan_build("10.3.0", "fp16", False).notes == ()


def test_plan_build_options():
    with pytest.raises(ValueError, match="precision"):
        plan_build("10.3.0", "int4", False)
    with pytest.raises(ValueError, match="dla_core"):
        plan_build("10.3.0", "fp16", False, dla_core=-1)
    with pytest.raises(ExportError, match="DLA runs FP16"):
        plan_build("10.3.0", "fp32", False, dla_core=0)
    assert plan_build("10.3.0", "fp16", False, dla_core=1).dla_core == 1
    for version in ("10.8.0", "11.0.0", "11.3.1", "11.4.0"):  # releases without Jetson DLA
        with pytest.raises(ExportError, match="no DLA support"):
            plan_build(version, "fp16", True, dla_core=0)
    assert plan_build("11.4.1", "fp16", True, dla_core=0).dla_core == 0
    assert plan_build("10.7.0", "fp16", False, dla_core=0).fp16_flag


# -- ONNX facts and profile shapes ----------------------------------------------------------------
def _step_graph(weight_dtype=np.float32) -> onnx.ModelProto:
    """Inputs of ranks 4, 3 and 5 with a dynamic batch, like the streaming step graph."""
    inputs = [h.make_tensor_value_info("frame", T.FLOAT, ["B", 3, 112, 112]),
              h.make_tensor_value_info("mel", T.FLOAT, ["B", 10, 80]),
              h.make_tensor_value_info("state", T.FLOAT, ["B", 4, 2, 7, 7])]
    w = numpy_helper.from_array(np.ones((64, 64), weight_dtype), "w")
    graph = h.make_graph([h.make_node("Identity", ["frame"], ["out"])], "step", inputs,
                         [h.make_tensor_value_info("out", T.FLOAT, ["B", 3, 112, 112])], [w])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def test_profile_shapes_for_inputs_of_different_ranks():
    dims = onnx_input_dims(_step_graph())
    assert dims == {"frame": (None, 3, 112, 112), "mel": (None, 10, 80), "state": (None, 4, 2, 7, 7)}
    profile = profile_shapes(dims, (1, 2, 8))
    assert profile["frame"] == ((1, 3, 112, 112), (2, 3, 112, 112), (8, 3, 112, 112))
    assert profile["mel"] == ((1, 10, 80), (2, 10, 80), (8, 10, 80))
    assert profile["state"][2] == (8, 4, 2, 7, 7)


def test_profile_shapes_refuses_what_it_cannot_build():
    with pytest.raises(ExportError, match=r"input 'v' has dims \(\?, 3, \?\)"):
        profile_shapes({"v": (None, 3, None)}, (1, 1, 4))
    assert profile_shapes({"v": (None, 3, None)}, (1, 1, 4), {"v": (3, 16)})["v"][2] == (4, 3, 16)
    with pytest.raises(ExportError, match="fixed batch of 1"):
        profile_shapes({"v": (1, 3)}, (1, 2, 4))
    assert profile_shapes({"v": (1, 3)}, (1, 1, 1))["v"][0] == (1, 3)
    for bad in [(0, 1, 2), (2, 1, 4), (1, 2), (1.0, 2, 3)]:
        with pytest.raises(ValueError, match="batch"):
            profile_shapes({"v": (None, 3)}, bad)
    with pytest.raises(ValueError, match="unknown inputs"):
        profile_shapes({"v": (None, 3)}, (1, 1, 1), {"w": (3,)})


def test_onnx_is_fp16_counts_weight_elements():
    assert not onnx_is_fp16(_step_graph(np.float32))
    assert onnx_is_fp16(_step_graph(np.float16))


# -- engine compatibility ---------------------------------------------------------------------------
ORIN = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA Orin", "compute_capability": "8.7",
        "precision": "fp16", "profile": {}, "dla_core": None}


def test_compatible_engine_is_accepted_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_engine_compat(ORIN, "10.3.0.30", "NVIDIA Orin", (8, 7))
        check_engine_compat({"tensorrt": ORIN}, "10.3.0", "NVIDIA Orin", "sm_87")  # whole soundloc.json


def test_other_major_is_refused_with_one_clear_line():
    with pytest.raises(BackendError) as err:
        check_engine_compat(ORIN, "11.4", "NVIDIA H100", "9.0")
    assert str(err.value) == (
        "engine built with TensorRT 10.3.0 on 'NVIDIA Orin' (sm_87); this machine has TensorRT 11.4 "
        "on 'NVIDIA H100' (sm_90): rebuild it with `soundloc export CKPT --format engine`")


@pytest.mark.parametrize("version, gpu, cc", [("10.4.0", "NVIDIA Orin", "8.7"), ("10.3.0", "NVIDIA A100", "8.0")])
def test_other_minor_or_architecture_is_refused(version, gpu, cc):
    with pytest.raises(BackendError, match="rebuild it with"):
        check_engine_compat(ORIN, version, gpu, cc)


def test_patch_or_gpu_model_difference_warns():
    with pytest.warns(RuntimeWarning, match="another patch release"):
        check_engine_compat(ORIN, "10.3.1", "NVIDIA Orin", "8.7")
    with pytest.warns(RuntimeWarning, match="another GPU model"):
        check_engine_compat(ORIN, "10.3.0", "Orin (nvgpu)", "8.7")


def test_engine_without_a_build_record_is_refused():
    with pytest.raises(BackendError, match="no TensorRT build record.*rebuild"):
        check_engine_compat({"precision": "fp16"}, "10.3.0", "NVIDIA Orin", "8.7")


def test_metadata_round_trip_through_json():
    placement = {"dla_core": 0, "layers": 40, "layers_on_dla": 12, "checked_by": "engine inspector"}
    info = EngineInfo("10.3.0", "NVIDIA Orin", "8.7", "fp16", True, 81.25,
                      {"frame": ((1, 3, 112, 112), (2, 3, 112, 112), (4, 3, 112, 112))}, 0, "ab" * 32, 1234,
                      placement)
    record = json.loads(json.dumps({"tensorrt": engine_metadata(info)}))
    assert engine_info_from_metadata(record) == info
    assert record["tensorrt"]["profile"]["frame"]["max"] == [4, 3, 112, 112]
    check_engine_compat(record, "10.3.0", "NVIDIA Orin", "8.7")


def test_version_and_gpu_parsing():
    assert parse_version("10.3.0.30") == (10, 3, 0) and parse_version("11.4") == (11, 4, 0)
    with pytest.raises(ValueError):
        parse_version("unknown")
    assert normalize_cc((9, 0)) == "9.0" and normalize_cc("sm_87") == "8.7" and sm_name("12.0") == "sm_120"
    rows = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 9.0\nNVIDIA A10, 8.6\n")
    assert rows == [GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), GpuInfo("NVIDIA A10", "8.6")]


def test_input_shapes_are_checked_against_the_profile():
    profile = [(1, 10, 80), (2, 10, 80), (4, 10, 80)]
    check_input_shape("mel", (3, 10, 80), profile)
    with pytest.raises(ValueError, match="batch 5 .* outside the engine's profile 1..4"):
        check_input_shape("mel", (5, 10, 80), profile)
    with pytest.raises(ValueError, match="rank 2"):
        check_input_shape("mel", (3, 800), profile)


def test_cuda_call_turns_errors_into_exceptions():
    """A fake cudart: no CUDA here, and only the (err, value) unpacking is under test."""
    class Err:
        def __init__(self, name):
            self.name = name

        def __eq__(self, other):
            return self.name == other.name

    ok = Err("cudaSuccess")
    fake = types.SimpleNamespace(cudaError_t=types.SimpleNamespace(cudaSuccess=ok),
                                 cudaGetErrorString=lambda e: (ok, b"out of memory"))
    assert cuda_call(fake, (ok, 42), "cudaMalloc") == 42
    assert cuda_call(fake, (ok,), "cudaFree") is None
    with pytest.raises(BackendError, match=r"CUDA cudaMalloc failed: cudaErrorMemoryAllocation \(out of memory\)"):
        cuda_call(fake, (Err("cudaErrorMemoryAllocation"), 0), "cudaMalloc")


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    target = tmp_path / "sub" / "model.engine"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["model.engine"]


# -- build control flow with a fake tensorrt --------------------------------------------------------
class _FakeTrt(types.ModuleType):
    """Stands in for `tensorrt`, which cannot be installed here: records what build_engine asks
    of the builder so the version-dependent control flow is exercised. Not a TensorRT test."""

    def __init__(self, version: str) -> None:
        super().__init__("tensorrt")
        self.__version__, self.calls = version, []
        calls = self.calls
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        flags = {"GPU_FALLBACK": "GPU_FALLBACK"} | ({"FP16": "FP16"} if version.startswith("10") else {})
        self.BuilderFlag = types.SimpleNamespace(**flags)  # TensorRT 11 has no FP16 flag
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda s: None})
        self.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
        self.LayerType = types.SimpleNamespace(CONVOLUTION="CONV", DECONVOLUTION="DECONV", ACTIVATION="ACT")
        self.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
        self.LayerInformationFormat = types.SimpleNamespace(JSON="JSON")
        self.corrupt_caches: set[bytes] = set()  # blobs create_timing_cache cannot read (returns None)
        self.layers: list[types.SimpleNamespace] = []  # the parsed network's layers
        self.dla_cores = 0
        self.engine_information = "{}"  # what the engine inspector reports
        self.cancel_honoured = False  # the build stops when step_complete returns False
        fake = self

        class Cache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return self.data + b"+"

        class Config:
            progress_monitor = None

            def set_memory_pool_limit(self, pool, size): calls.append(("pool", pool, size))
            def set_flag(self, flag): calls.append(("flag", flag))
            def add_optimization_profile(self, p): calls.append(("profile", p.shapes)); return 0
            def create_timing_cache(self, data):
                calls.append(("cache_in", bytes(data)))
                return None if bytes(data) in fake.corrupt_caches else Cache(data)

            def set_timing_cache(self, cache, ignore):
                calls.append(("cache_set", None if cache is None else cache.data))
                if cache is None:
                    raise TypeError("set_timing_cache(): incompatible function arguments")  # as pybind11 does
                return True

            def can_run_on_DLA(self, layer): return layer.dla_ok
            def set_device_type(self, layer, device): calls.append(("device", layer.name, device))

        class Profile:
            def __init__(self): self.shapes = {}
            def set_shape(self, name, lo, opt, hi): self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class Network:
            num_layers = property(lambda s: len(fake.layers))
            def get_layer(self, i): return fake.layers[i]

        class Builder:
            def __init__(self, logger): pass
            num_DLA_cores = property(lambda s: fake.dla_cores)
            def create_network(self, flags): calls.append(("network", flags)); return Network()
            def create_builder_config(self): return Config()
            def create_optimization_profile(self): return Profile()

            def build_serialized_network(self, network, config):
                monitor = config.progress_monitor
                monitor.phase_start("Building", None, 2)
                if not monitor.step_complete("Building", 0) and fake.cancel_honoured:
                    return None  # TensorRT cancels the build and returns nothing
                monitor.phase_finish("Building")
                return b"PLAN"

        class Engine:
            def create_engine_inspector(self):
                return types.SimpleNamespace(get_engine_information=lambda fmt: fake.engine_information)

        class Runtime:
            def __init__(self, logger): self.DLA_core = -1
            def deserialize_cuda_engine(self, data): calls.append(("deserialize", self.DLA_core)); return Engine()

        self.Builder, self.Runtime = Builder, Runtime
        self.OnnxParser = type("OnnxParser", (), {"__init__": lambda s, n, l: None,
                                                  "parse_from_file": lambda s, p: True, "num_errors": 0})


@pytest.mark.parametrize("version, precision, expect_flags, expect_network", [
    ("10.3.0", "fp16", [("flag", "FP16")], 0),
    ("10.3.0", "fp32", [], 2),
    ("11.4.0", "fp32", [], 0),
])
def test_build_engine_control_flow_with_fake_tensorrt(tmp_path, monkeypatch, version, precision,
                                                      expect_flags, expect_network):
    """Fake `tensorrt` (see _FakeTrt): flags, profile, timing cache and files as the plan says."""
    fake = _FakeTrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_export, "_query_gpu", lambda device=0: GpuInfo("NVIDIA Orin", "8.7"))
    onnx_path, cache = tmp_path / "step.onnx", tmp_path / "timing.cache"
    onnx.save(_step_graph(), str(onnx_path))
    cache.write_bytes(b"old")
    phases = []
    info = trt_export.build_engine(onnx_path, tmp_path / "step.engine", precision=precision,
                                   workspace_gib=0.5, timing_cache=cache, batch=(1, 2, 4),
                                   progress=lambda *a: phases.append(a))
    assert [c for c in fake.calls if c[0] == "flag"] == expect_flags
    assert ("network", expect_network) in fake.calls and ("pool", "WORKSPACE", 1 << 29) in fake.calls
    assert ("cache_in", b"old") in fake.calls and cache.read_bytes() == b"old+"
    assert (tmp_path / "step.engine").read_bytes() == b"PLAN"
    assert phases == [("Building", 0, 2), ("Building", 1, 2), ("Building", 2, 2)]
    assert info.profile["mel"] == ((1, 10, 80), (2, 10, 80), (4, 10, 80)) and info.engine_bytes == 4
    assert info.tensorrt_version == version and info.strongly_typed == (precision == "fp32")


def test_build_engine_refuses_a_graph_tensorrt_cannot_parse(tmp_path):
    graph = h.make_graph([h.make_node("DFT", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, ["B", 8, 1])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)])
    path = tmp_path / "dft.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(path))
    with pytest.raises(ExportError, match="operator DFT is not supported"):
        trt_export.build_engine(path, tmp_path / "dft.engine")
    assert not (tmp_path / "dft.engine").exists()


def _fake_build(tmp_path, monkeypatch, version="10.3.0", **kwargs):
    """A build against a fresh _FakeTrt; returns (fake, build(**overrides) -> EngineInfo)."""
    fake = _FakeTrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_export, "_query_gpu", lambda device=0: GpuInfo("NVIDIA Orin", "8.7"))
    onnx_path = tmp_path / "step.onnx"
    onnx.save(_step_graph(), str(onnx_path))

    def build(**overrides):
        args = dict(precision="fp16", timing_cache=tmp_path / "timing.cache", batch=(1, 1, 4),
                    progress=lambda *a: None) | kwargs | overrides
        return trt_export.build_engine(onnx_path, tmp_path / "step.engine", **args)

    return fake, build


def test_unreadable_timing_cache_falls_back_to_a_fresh_one(tmp_path, monkeypatch, caplog):
    """Fake `tensorrt`: create_timing_cache returns None for the corrupt blob, as TensorRT does,
    and set_timing_cache(None) raises TypeError like the pybind11 binding. Under test: soundloc's
    reaction (fresh cache, a warning, the file rewritten only after the build)."""
    fake, build = _fake_build(tmp_path, monkeypatch)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00garbage")
    fake.corrupt_caches.add(b"\x00garbage")
    with caplog.at_level("WARNING", logger="soundloc.deploy.tensorrt"):
        build()
    assert ("cache_set", None) not in fake.calls  # never handed None to TensorRT
    assert [c for c in fake.calls if c[0] == "cache_in"] == [("cache_in", b"\x00garbage"), ("cache_in", b"")]
    assert "unreadable (corrupt or not a timing cache); starting a new one" in caplog.text
    assert cache.read_bytes() == b"+"  # the fresh cache, serialised after the good build


def test_progress_callback_error_is_surfaced_and_cancels_the_build(tmp_path, monkeypatch):
    """Fake `tensorrt`: its builder calls the monitor and, like TensorRT, stops when
    step_complete returns False. Under test: the callback's own error is what the user sees."""
    fake, build = _fake_build(tmp_path, monkeypatch)
    fake.cancel_honoured = True
    seen = []

    def callback(phase, done, total):
        seen.append(done)
        if done == 1:
            raise KeyError("no such progress row")

    with pytest.raises(ExportError, match=r"progress callback raised KeyError: 'no such progress row'.*cancelled") as err:
        build(progress=callback)
    assert isinstance(err.value.__cause__, KeyError) and "see its log" not in str(err.value)
    assert seen == [0, 1] and not (tmp_path / "step.engine").exists()


def test_progress_callback_error_after_the_last_step_still_fails(tmp_path, monkeypatch):
    """Fake `tensorrt` as above; the callback fails in phase_finish, which cannot cancel."""
    fake, build = _fake_build(tmp_path, monkeypatch)

    def callback(phase, done, total):
        if done == total:
            raise RuntimeError("display closed")

    with pytest.raises(ExportError, match="progress callback raised RuntimeError: display closed"):
        build(progress=callback)


def _layer(name, kind, rank=4, dla_ok=True):
    inp = types.SimpleNamespace(shape=(1,) * rank)
    return types.SimpleNamespace(name=name, type=kind, num_inputs=1, get_input=lambda i: inp, dla_ok=dla_ok)


def test_dla_build_needs_a_static_batch(tmp_path, monkeypatch):
    fake, build = _fake_build(tmp_path, monkeypatch)
    fake.dla_cores = 2
    with pytest.raises(ExportError, match=r"static shapes only.*min = opt = max batch, not \(1, 1, 4\)"):
        build(dla_core=0)
    assert not any(c[0] == "network" for c in fake.calls)  # refused before TensorRT was asked


def test_dla_build_pins_3d_convs_to_gpu_and_records_where_layers_landed(tmp_path, monkeypatch):
    """Fake `tensorrt`: network layers and the engine inspector's JSON are given. Under test:
    which layers soundloc pins to the GPU and what the manifest claims from the inspector."""
    fake, build = _fake_build(tmp_path, monkeypatch)
    fake.dla_cores = 2
    conv = fake.LayerType.CONVOLUTION
    fake.layers = [_layer("conv3d", conv, rank=5), _layer("conv2d", conv, rank=4),
                   _layer("relu", fake.LayerType.ACTIVATION), _layer("odd", fake.LayerType.ACTIVATION, dla_ok=False)]
    fake.engine_information = json.dumps({"Layers": [
        {"Name": "conv3d", "LayerType": "CaskConvolution"},
        {"Name": "{ForeignNode[conv2d...relu]}", "LayerType": "DlaLayer"},
        {"Name": "odd", "LayerType": "PointWiseV2"}]})
    info = build(dla_core=1, batch=(2, 2, 2))
    pinned = [c[1] for c in fake.calls if c[0] == "device" and c[2] == "GPU"]
    assert pinned == ["conv3d", "odd"]  # the 3-D conv and what can_run_on_DLA refuses
    assert ("deserialize", 1) in fake.calls  # inspected on the core it was built for
    meta = engine_metadata(info)
    assert meta["dla_core"] == 1
    assert meta["placement"] == {"dla_core": 1, "layers": 3, "layers_on_dla": 1, "checked_by": "engine inspector"}
    assert info.profile["frame"][0] == info.profile["frame"][2] == (2, 3, 112, 112)


@pytest.mark.parametrize("information, checked_by", [
    ({"Layers": [{"Name": "a", "LayerType": "CaskConvolution"}, {"Name": "b", "LayerType": "Reformat"}]},
     "engine inspector"),
    ({"Layers": ["a", "b"]}, "unverified"),  # built without DETAILED verbosity: names only
])
def test_dla_build_that_landed_nothing_on_dla_is_recorded_as_gpu(tmp_path, monkeypatch, information, checked_by):
    """Fake `tensorrt` as above. The manifest never claims a DLA engine the inspector did not see."""
    fake, build = _fake_build(tmp_path, monkeypatch)
    fake.dla_cores, fake.engine_information = 1, json.dumps(information)
    info = build(dla_core=0, batch=(1, 1, 1))
    meta = engine_metadata(info)
    assert meta["dla_core"] is None and meta["placement"]["checked_by"] == checked_by
    assert meta["placement"]["layers_on_dla"] in (0, None)


def test_backend_name_claims_dla_only_where_layers_landed():
    from soundloc.runtime.tensorrt_backend import _dla_core_built, _dla_note

    landed = {"dla_core": 1, "placement": {"dla_core": 1, "layers": 30, "layers_on_dla": 9}}
    assert _dla_note(landed) == " + DLA core 1 (9 of 30 layers)"
    fell_back = {"dla_core": None, "placement": {"dla_core": 1, "layers": 30, "layers_on_dla": 0}}
    assert _dla_note(fell_back) == "" and _dla_core_built(fell_back) == 1  # the runtime still names the core
    assert _dla_note({"dla_core": None}) == "" and _dla_core_built({"dla_core": None}) is None


# -- the real thing: needs TensorRT and a CUDA GPU --------------------------------------------------
def _need_gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    pytest.importorskip("cuda.bindings", reason="cuda-python not installed")
    from soundloc.runtime.tensorrt_backend import query_gpu
    try:
        query_gpu(0)
    except BackendError:
        pytest.skip("no CUDA GPU")


def _tiny_model(path: Path, opset: int = 18) -> None:
    """Conv + Relu + ReduceMean with its axes as an input: valid ONNX from opset 18 only."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("ReduceMean", ["r", "axes"], ["y"], keepdims=0)]
    graph = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("x", T.FLOAT, ["B", 3, 16, 16])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["B", 4])], [w, axes])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", opset)]), str(path))


def test_real_gpu_test_model_is_valid_onnx_and_the_check_catches_the_old_one(tmp_path):
    """The model the real TensorRT test builds loads in onnxruntime and passes the compatibility
    check; the same graph declared opset 17 (axes as an input) is refused by the check."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    _tiny_model(tmp_path / "ok.onnx")
    assert trt_export.check_tensorrt_compat(onnx.load(tmp_path / "ok.onnx")) == []
    x = np.ones((2, 3, 16, 16), np.float32)
    y = ort.InferenceSession(str(tmp_path / "ok.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape == (2, 4)
    _tiny_model(tmp_path / "old.onnx", opset=17)
    problems = trt_export.check_tensorrt_compat(onnx.load(tmp_path / "old.onnx"))
    assert problems and problems[0].startswith("not valid ONNX (onnx.checker)") and "ReduceMean" in problems[0]
    with pytest.raises(ExportError, match="not valid ONNX"):
        trt_export.build_engine(tmp_path / "old.onnx", tmp_path / "old.engine")


def test_real_build_and_run_match_onnxruntime(tmp_path):
    _need_gpu()
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from soundloc.runtime.tensorrt_backend import TensorRTBackend

    onnx_path = tmp_path / "tiny.onnx"
    _tiny_model(onnx_path)
    info = trt_export.build_engine(onnx_path, tmp_path / "tiny.engine", batch=(1, 2, 4),
                                   timing_cache=tmp_path / "timing.cache", progress=lambda *a: None)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with TensorRTBackend(tmp_path / "tiny.engine", {"tensorrt": engine_metadata(info)}) as backend:
        assert backend.input_names == ["x"] and backend.output_names == ["y"]
        got = backend.run({"x": x})["y"]  # first call at batch 3: enqueue, capture a CUDA graph
        got_one = backend.run({"x": x[:1]})["y"]  # smaller batch after a larger one: buffers reused
        x2 = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
        got_again = backend.run({"x": x2})["y"]  # batch 3 again: the captured graph replayed on new data
    want2 = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x2})[0]
    np.testing.assert_allclose(got, want, atol=1e-2, rtol=1e-2)  # TF32 may be on by default
    np.testing.assert_allclose(got_one, want[:1], atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(got_again, want2, atol=1e-2, rtol=1e-2)


def test_real_backend_refuses_engine_from_another_tensorrt(tmp_path):
    _need_gpu()
    from soundloc.runtime.tensorrt_backend import TensorRTBackend

    record = dict(ORIN, tensorrt_version="9.0.0")
    (tmp_path / "x.engine").write_bytes(b"not an engine")
    with pytest.raises(BackendError, match="rebuild it with"):
        TensorRTBackend(tmp_path / "x.engine", record)


def test_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail, installed or not
    from soundloc.runtime.tensorrt_backend import import_tensorrt
    with pytest.raises(BackendError, match="pip install tensorrt-cu12.*--system-site-packages"):
        import_tensorrt()
    with pytest.raises(ExportError, match="TensorRT is not installed"):
        trt_export._import_trt()


def test_engine_export_without_tensorrt_fails_before_exporting(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="export needs torch")
    from soundloc.export.pipeline import export_checkpoint

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match="TensorRT is not installed"):
        export_checkpoint(None, tmp_path / "out", format="engine", preset="paper")
    assert not (tmp_path / "out").exists()


def test_build_selects_the_gpu_it_builds_for(monkeypatch):
    """A fake cudart (no CUDA here) records the device made current; under test: that the build
    selects the device it was asked for, and refuses another device it cannot select."""
    selected = []
    ok = types.SimpleNamespace(name="cudaSuccess")
    fake = types.SimpleNamespace(cudaError_t=types.SimpleNamespace(cudaSuccess=ok),
                                 cudaSetDevice=lambda d: (selected.append(d), (ok,))[1])
    monkeypatch.setattr(trt_export, "query_gpu", lambda device: GpuInfo(f"GPU {device}", "9.0"))
    monkeypatch.setattr(trt_export, "import_cudart", lambda: fake)
    assert trt_export._query_gpu(1).name == "GPU 1" and selected == [1]

    def no_cuda_python():
        raise BackendError("cuda-python is not installed")

    monkeypatch.setattr(trt_export, "import_cudart", no_cuda_python)
    assert trt_export._query_gpu(0).name == "GPU 0"  # the builder's default device anyway
    with pytest.raises(ExportError, match="building on GPU 1 needs cuda-python"):
        trt_export._query_gpu(1)
