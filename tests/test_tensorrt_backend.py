"""TensorRTBackend's use of CUDA: device selection, pinned buffers, cleanup, CUDA graphs.

Neither a GPU, TensorRT nor cuda-python can exist here, so ``FakeCuda`` stands in for
``cuda.bindings.runtime`` and ``FakeTrt`` for ``tensorrt``. What they fake is control flow and
bookkeeping: "device" memory is ordinary host memory (real ``ctypes`` buffers, real memmoves),
the current device is per thread as in CUDA, and the engine computes ``y = 2 x`` when its
kernels run. What is under test is the backend's own behaviour against that API: which device
it selects, which memory it allocates and copies through, what it frees, when it captures and
replays a graph.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import types

import numpy as np
import pytest

from soundloc.runtime import tensorrt_backend as tb
from soundloc.runtime.backend import BackendError
from soundloc.runtime.tensorrt_backend import GpuInfo, TensorRTBackend

OK = "cudaSuccess"


class _Err(str):
    """cuda-python's cudaError_t: an enum member with a ``name``."""

    @property
    def name(self) -> str:
        return str(self)


class FakeCuda(types.ModuleType):
    """cuda.bindings.runtime's calling convention ((err, *values)) over host memory; records calls."""

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.cudaError_t = types.SimpleNamespace(cudaSuccess=_Err(OK))
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal="thread-local")
        self._local = threading.local()  # the current device is per host thread, as in CUDA
        self.memory: dict[int, ctypes.Array] = {}  # live allocations: address -> buffer
        self.device_of: dict[int, int] = {}  # device allocations and streams -> device made current
        self.pinned: set[int] = set()
        self.calls: list[tuple] = []
        self.fail: dict[str, str] = {}  # function name -> error it returns
        self.capturing: dict[int, list] = {}  # stream -> captured work
        self.graphs: dict[int, list] = {}
        self._next = 1

    @property
    def current(self) -> int:
        return getattr(self._local, "device", 0)

    def _ret(self, fn: str, *values):
        self.calls.append((fn, self.current))
        if fn in self.fail:
            return (_Err(self.fail[fn]), *[None for _ in values])
        return (self.cudaError_t.cudaSuccess, *values)

    def _alloc(self, n: int) -> int:
        buf = (ctypes.c_uint8 * n)()
        self.memory[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def cudaGetErrorString(self, err):
        return (self.cudaError_t.cudaSuccess, f"{err} (fake)".encode())

    def cudaSetDevice(self, device):
        if "cudaSetDevice" not in self.fail:
            self._local.device = device
        return self._ret("cudaSetDevice")

    def cudaMalloc(self, n):
        ptr = self._alloc(n)
        self.device_of[ptr] = self.current
        return self._ret("cudaMalloc", ptr)

    def cudaMallocHost(self, n):
        ptr = self._alloc(n)
        self.pinned.add(ptr)
        return self._ret("cudaMallocHost", ptr)

    def cudaFree(self, ptr):
        self.memory.pop(ptr, None)
        return self._ret("cudaFree")

    def cudaFreeHost(self, ptr):
        self.memory.pop(ptr, None)
        self.pinned.discard(ptr)
        return self._ret("cudaFreeHost")

    def cudaStreamCreate(self):
        self._next += 1
        self.device_of[self._next] = self.current
        self.memory[self._next] = None  # live until destroyed
        return self._ret("cudaStreamCreate", self._next)

    def cudaStreamDestroy(self, stream):
        self.memory.pop(stream, None)
        return self._ret("cudaStreamDestroy")

    def cudaStreamSynchronize(self, stream):
        return self._ret("cudaStreamSynchronize")

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        host = src if kind == "H2D" else dst
        self.calls.append(("memcpy", kind, host in self.pinned))
        self.submit(stream, lambda: ctypes.memmove(dst, src, n))
        return self._ret("cudaMemcpyAsync")

    def submit(self, stream, work) -> None:
        """Work on a stream: recorded while capturing, else done at once (stream order)."""
        if stream in self.capturing:
            self.capturing[stream].append(work)
        else:
            work()

    def cudaStreamBeginCapture(self, stream, mode):
        if "cudaStreamBeginCapture" not in self.fail:
            self.capturing[stream] = []
        return self._ret("cudaStreamBeginCapture")

    def cudaStreamEndCapture(self, stream):
        work = self.capturing.pop(stream)
        if "capture" in self.fail:
            return (_Err(self.fail["capture"]), None)
        self._next += 1
        self.graphs[self._next] = work
        return self._ret("cudaStreamEndCapture", self._next)

    def cudaGraphInstantiate(self, graph, flags):
        self._next += 1
        self.graphs[self._next] = list(self.graphs[graph])
        self.memory[self._next] = None
        return self._ret("cudaGraphInstantiate", self._next)

    def cudaGraphDestroy(self, graph):
        self.graphs.pop(graph, None)
        return self._ret("cudaGraphDestroy")

    def cudaGraphExecDestroy(self, graph_exec):
        self.memory.pop(graph_exec, None)
        return self._ret("cudaGraphExecDestroy")

    def cudaGraphLaunch(self, graph_exec, stream):
        for work in self.graphs[graph_exec]:
            self.submit(stream, work)
        return self._ret("cudaGraphLaunch")

    def cudaGetLastError(self):
        return self._ret("cudaGetLastError")


class FakeTrt(types.ModuleType):
    """tensorrt's runtime API for one engine: x (B, 4) float32 -> y = 2 x, batch profile 1..8."""

    def __init__(self, cuda: FakeCuda) -> None:
        super().__init__("tensorrt")
        self.__version__ = "10.3.0"
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
        self.nptype = lambda dtype: np.float32
        self.capturable = True
        fake = self

        class Context:
            def __init__(self):
                self.shape, self.addr, self.executions = None, {}, 0

            def set_input_shape(self, name, shape):
                self.shape = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                return self.shape

            def set_tensor_address(self, name, ptr):
                self.addr[name] = ptr
                return True

            def execute_async_v3(self, stream):
                if stream in cuda.capturing and not fake.capturable:
                    return False  # e.g. an engine with data-dependent shapes
                x, y, n = self.addr["x"], self.addr["y"], int(np.prod(self.shape))

                def kernel():
                    self.executions += 1
                    src = np.frombuffer((ctypes.c_float * n).from_address(x), np.float32)
                    np.frombuffer((ctypes.c_float * n).from_address(y), np.float32)[:] = 2 * src

                cuda.submit(stream, kernel)
                return True

        class Engine:
            num_io_tensors = 2

            def __init__(self):
                self.context = Context()

            def get_tensor_name(self, i): return ["x", "y"][i]
            def get_tensor_mode(self, name): return "in" if name == "x" else "out"
            def get_tensor_dtype(self, name): return "float32"
            def get_tensor_profile_shape(self, name, profile): return [(1, 4), (2, 4), (8, 4)]
            def create_execution_context(self): return self.context

        class Runtime:
            def __init__(self, logger):
                fake.runtime_device = cuda.current  # TensorRT binds the runtime to the current device

            def deserialize_cuda_engine(self, data):
                fake.engine = Engine()
                return fake.engine

        self.Runtime = Runtime


RECORD = {"tensorrt_version": "10.3.0", "gpu_name": "Fake GPU", "compute_capability": "8.7",
          "precision": "fp32", "profile": {}}


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    cuda = FakeCuda()
    trt = FakeTrt(cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tb, "import_cudart", lambda: cuda)
    monkeypatch.setattr(tb, "query_gpu", lambda device: GpuInfo("Fake GPU", "8.7"))
    (tmp_path / "x.engine").write_bytes(b"plan")

    def open_backend(**kwargs) -> TensorRTBackend:
        return TensorRTBackend(tmp_path / "x.engine", RECORD, **kwargs)

    return types.SimpleNamespace(cuda=cuda, trt=trt, open=open_backend)


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4)).astype(np.float32)


def test_device_index_is_used_for_everything_the_backend_creates(fakes):
    backend = fakes.open(device=1)
    assert fakes.trt.runtime_device == 1
    out = {}
    worker = threading.Thread(target=lambda: out.update(backend.run({"x": _x(3)})))  # a fresh thread: device 0
    worker.start()
    worker.join()
    np.testing.assert_array_equal(out["y"], 2 * _x(3))
    assert set(fakes.cuda.device_of.values()) == {1}  # stream and every device buffer on cuda:1
    cuda_calls = [c for c in fakes.cuda.calls if c[0] != "memcpy" and c[0] != "cudaSetDevice"]
    assert all(device == 1 for _, device in cuda_calls), cuda_calls
    assert "(cuda:1)" in backend.providers[0]
    backend.close()


def test_host_buffers_are_pinned_and_results_are_copies(fakes):
    with fakes.open() as backend:
        first = backend.run({"x": _x(2, seed=1)})["y"]
        second = backend.run({"x": _x(2, seed=2)})["y"]
    copies = [c for c in fakes.cuda.calls if c[0] == "memcpy"]
    assert copies and all(pinned for _, _, pinned in copies)  # every host side is page-locked
    assert {kind for _, kind, _ in copies} == {"H2D", "D2H"}
    np.testing.assert_array_equal(first, 2 * _x(2, seed=1))  # not overwritten by the second call
    np.testing.assert_array_equal(second, 2 * _x(2, seed=2))


def test_close_frees_everything_then_reports_a_sticky_error(fakes):
    backend = fakes.open()
    backend.run({"x": _x(4)})
    fakes.cuda.fail["cudaStreamSynchronize"] = "cudaErrorIllegalAddress"  # sticky: the sync fails
    with pytest.raises(BackendError, match="closing the TensorRT backend.*cudaErrorIllegalAddress"):
        backend.close()
    assert fakes.cuda.memory == {}  # buffers, pinned buffers, graphs and the stream all released
    backend.close()  # idempotent: nothing left, nothing raised
    with pytest.raises(BackendError, match="closed"):
        backend.run({"x": _x(1)})


def test_close_frees_the_rest_when_a_free_fails(fakes):
    backend = fakes.open()
    backend.run({"x": _x(4)})
    fakes.cuda.fail["cudaFree"] = "cudaErrorInvalidValue"
    with pytest.raises(BackendError) as err:
        backend.close()
    assert str(err.value).count("cudaFree of") == 2  # x and y both tried and reported
    assert not fakes.cuda.pinned and not any(k for k, v in fakes.cuda.memory.items() if v is None)


def test_cuda_graph_is_captured_once_per_shape_and_replayed(fakes):
    with fakes.open() as backend:
        context = fakes.trt.engine.context
        y = backend.run({"x": _x(2)})["y"]
        captures = sum(c[0] == "cudaStreamBeginCapture" for c in fakes.cuda.calls)
        assert captures == 1 and context.executions == 2  # the enqueue TensorRT needs first, then the graph
        for seed in range(3):
            np.testing.assert_array_equal(backend.run({"x": _x(2, seed)})["y"], 2 * _x(2, seed))
        assert sum(c[0] == "cudaGraphLaunch" for c in fakes.cuda.calls) == 4
        assert sum(c[0] == "cudaStreamBeginCapture" for c in fakes.cuda.calls) == 1  # replayed, not recaptured
        backend.run({"x": _x(3)})  # new shape (and bigger buffers): a new graph
        assert sum(c[0] == "cudaStreamBeginCapture" for c in fakes.cuda.calls) == 2
        assert sum(c[0] == "cudaGraphExecDestroy" for c in fakes.cuda.calls) == 1  # old addresses dropped
    np.testing.assert_array_equal(y, 2 * _x(2))


def test_engine_that_cannot_be_captured_runs_uncaptured(fakes):
    fakes.trt.capturable = False
    with fakes.open() as backend:
        for seed in range(3):
            np.testing.assert_array_equal(backend.run({"x": _x(2, seed)})["y"], 2 * _x(2, seed))
    assert sum(c[0] == "cudaStreamBeginCapture" for c in fakes.cuda.calls) == 1  # tried once, remembered
    assert not any(c[0] == "cudaGraphLaunch" for c in fakes.cuda.calls)


def test_a_stream_that_refuses_capture_runs_uncaptured(fakes):
    fakes.cuda.fail["cudaStreamBeginCapture"] = "cudaErrorStreamCaptureUnsupported"
    with fakes.open() as backend:
        np.testing.assert_array_equal(backend.run({"x": _x(2)})["y"], 2 * _x(2))
        np.testing.assert_array_equal(backend.run({"x": _x(2, 1)})["y"], 2 * _x(2, 1))
    assert not any(c[0] == "cudaGraphLaunch" for c in fakes.cuda.calls)


def test_cuda_graphs_can_be_turned_off(fakes):
    with fakes.open(cuda_graphs=False) as backend:
        np.testing.assert_array_equal(backend.run({"x": _x(5)})["y"], 2 * _x(5))
    assert not any(c[0] == "cudaStreamBeginCapture" for c in fakes.cuda.calls)


def test_failed_load_frees_what_it_made(fakes, tmp_path):
    fakes.cuda.fail["cudaStreamCreate"] = "cudaErrorMemoryAllocation"
    with pytest.raises(BackendError, match="cudaStreamCreate failed: cudaErrorMemoryAllocation"):
        fakes.open()


def test_each_graph_opens_with_its_own_engine_record(monkeypatch, tmp_path):
    """open_backend hands the TensorRT backend the record of the graph it opens (a DLA step engine
    and a GPU video engine differ); the backend is replaced by a recorder (no TensorRT here)."""
    from soundloc.runtime.bundle import Bundle
    from soundloc.runtime.engine import open_backend

    seen = {}

    class Recorder:
        def __init__(self, path, metadata, *, device=0):
            seen[path.name] = (metadata["tensorrt"], device)

    monkeypatch.setattr(tb, "TensorRTBackend", Recorder)
    step = {"tensorrt_version": "10.3.0", "dla_core": 0}
    video = {"tensorrt_version": "10.3.0", "dla_core": None}
    manifest = {"tensorrt": step, "graphs": {"step": {"files": {"engine": {"file": "step.engine"}}, "tensorrt": step},
                                            "video": {"files": {"engine": {"file": "video.engine"}}, "tensorrt": video}}}
    bundle = Bundle(tmp_path, manifest)
    open_backend(bundle, "video", "tensorrt", device=2)
    open_backend(bundle, "step", "tensorrt")
    assert seen == {"video.engine": (video, 2), "step.engine": (step, 0)}
