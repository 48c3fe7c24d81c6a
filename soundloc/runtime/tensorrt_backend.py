"""TensorRT backend: run a serialized engine with device buffers from cuda-python (no torch,
no pycuda).

An engine runs only on the TensorRT version and GPU it was built with. The build records
both in ``soundloc.json`` (``soundloc.deploy.trt_plan.engine_metadata``) and
``check_engine_compat`` compares them with this machine *before* deserialising, so a
mismatch is one clear line that says to rebuild instead of TensorRT's serialization error.

What TensorRT itself requires (Developer Guide, "Version Compatibility"): by default an engine
deserialises only with the TensorRT version that built it, patch level included, unless it was
built with ``BuilderFlag.VERSION_COMPATIBLE``; and only on the GPU architecture it was built
for, unless built with a hardware-compatibility level. soundloc refuses a different major.minor
or compute capability outright; a different patch (or GPU model of the same compute capability)
gets a warning and TensorRT decides, and if TensorRT then refuses, the same rebuild line is
raised.

Imports of ``tensorrt`` and ``cuda.bindings`` are lazy: importing this module never needs them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np

from soundloc.runtime.backend import BackendError

log = logging.getLogger(__name__)

REBUILD_HINT = "rebuild it with `soundloc export CKPT --format engine`"
TRT_INSTALL_HINT = (
    "TensorRT is not installed: on x86 `pip install tensorrt-cu12` (CUDA 12) or NVIDIA's wheels; "
    "on Jetson use JetPack's system TensorRT from a venv made with --system-site-packages"
)
CUDA_INSTALL_HINT = "cuda-python is not installed: `pip install cuda-python` (>= 12.6 gives cuda.bindings)"
METADATA_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "profile")


# -- versions and GPUs (pure) -------------------------------------------------------------------
def parse_version(version: str) -> tuple[int, int, int]:
    """'10.3.0.30' -> (10, 3, 0). Missing parts count as 0; a non-version raises ValueError."""
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version))
    if not match:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return tuple(int(p or 0) for p in match.groups())  # type: ignore[return-value]


def normalize_cc(cc: str | tuple[int, int] | float) -> str:
    """Compute capability as 'major.minor' (accepts (8, 7), '8.7', 'sm_87', 8.7)."""
    if isinstance(cc, tuple):
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip()
    sm = re.fullmatch(r"sm_?(\d+)(\d)", text)
    if sm:
        return f"{sm.group(1)}.{sm.group(2)}"
    if not re.fullmatch(r"\d+\.\d+", text):
        raise ValueError(f"not a compute capability: {cc!r}")
    return text


def sm_name(cc: str | tuple[int, int]) -> str:
    """'8.7' -> 'sm_87' (how CUDA and the messages name architectures)."""
    return "sm_" + normalize_cc(cc).replace(".", "")


@dataclass(frozen=True)
class GpuInfo:
    name: str  # e.g. 'NVIDIA H100 80GB HBM3', 'Orin'
    compute_capability: str  # 'major.minor'


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Rows of `nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader`."""
    gpus = []
    for line in text.strip().splitlines():
        name, _, cc = line.rpartition(",")
        if name.strip() and cc.strip():
            gpus.append(GpuInfo(name.strip(), normalize_cc(cc.strip())))
    return gpus


def check_engine_compat(metadata: Mapping[str, Any], trt_version: str, gpu_name: str,
                        compute_capability: str | tuple[int, int]) -> None:
    """Refuse (BackendError, one line) an engine this machine cannot run; warn on near misses.

    ``metadata``: the engine record (``engine_metadata``), or the whole ``soundloc.json``
    holding it under ``"tensorrt"``. Refused: missing record, another TensorRT major.minor,
    another compute capability. Warned: another patch level, another GPU name.
    """
    meta = _engine_record(metadata)
    built_v, here_v = str(meta["tensorrt_version"]), str(trt_version)
    built_cc, here_cc = normalize_cc(meta["compute_capability"]), normalize_cc(compute_capability)
    line = (f"engine built with TensorRT {built_v} on '{meta['gpu_name']}' ({sm_name(built_cc)}); "
            f"this machine has TensorRT {here_v} on '{gpu_name}' ({sm_name(here_cc)})")
    if parse_version(built_v)[:2] != parse_version(here_v)[:2] or built_cc != here_cc:
        raise BackendError(f"{line}: {REBUILD_HINT}")
    if parse_version(built_v) != parse_version(here_v):
        warnings.warn(f"{line}: TensorRT may refuse an engine from another patch release; "
                      f"if it does, {REBUILD_HINT}", RuntimeWarning, stacklevel=2)
    elif str(meta["gpu_name"]) != str(gpu_name):
        warnings.warn(f"{line}: same architecture, another GPU model; it runs, but tactics were "
                      f"timed on the other GPU, so for best speed {REBUILD_HINT}",
                      RuntimeWarning, stacklevel=2)


def _engine_record(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = metadata.get("tensorrt", metadata) if isinstance(metadata, Mapping) else {}
    missing = [k for k in ("tensorrt_version", "gpu_name", "compute_capability") if k not in meta]
    if missing:
        raise BackendError(f"soundloc.json has no TensorRT build record ({', '.join(missing)} "
                           f"missing), so this engine cannot be checked: {REBUILD_HINT}")
    return meta


# -- lazy imports and checked CUDA calls ----------------------------------------------------------
def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(TRT_INSTALL_HINT) from exc
    return tensorrt


def import_cudart() -> ModuleType:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (>= 12.6), else the old ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise BackendError(CUDA_INSTALL_HINT) from exc
    return cudart


def cuda_call(cudart: ModuleType, result: tuple, what: str) -> Any:
    """Turn cuda-python's ``(err, *values)`` into values or a BackendError naming ``what``.

    Returns None, the single value, or a tuple of values.
    """
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise BackendError(f"CUDA {what} failed: {getattr(err, 'name', err)} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def query_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device``: cuda-python, else nvidia-smi."""
    try:
        cudart = import_cudart()
    except BackendError:
        return _query_gpu_smi(device)
    prop = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}")


def _query_gpu_smi(device: int) -> GpuInfo:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise BackendError(f"no CUDA GPU found (neither cuda-python nor nvidia-smi); {CUDA_INSTALL_HINT}")
    out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    gpus = parse_nvidia_smi(out.stdout) if out.returncode == 0 else []
    if len(gpus) <= device:
        raise BackendError(f"nvidia-smi lists no GPU {device}: {out.stderr.strip() or out.stdout.strip()}")
    return gpus[device]


# -- the backend ----------------------------------------------------------------------------------
@dataclass
class _Buffer:
    """One I/O tensor's memory: a device buffer and a pinned (page-locked) host buffer."""

    device: int
    host: int
    nbytes: int


class TensorRTBackend:
    """A deserialised engine with one execution context, one stream and growable buffers.

    ``run`` takes float32 arrays whose first dim is the batch (any size inside the engine's
    optimisation profile) and returns float32 arrays. Everything lives on CUDA device
    ``device``: it is made current (``cudaSetDevice``, a per-thread setting) before the runtime,
    stream and buffers are created and at every call, so a call from another thread still lands
    there. Host staging buffers are pinned (``cudaMallocHost``): copies from pageable memory are
    synchronous, pinned ones overlap. Buffers grow, never shrink.

    CUDA graphs (``cuda_graphs``): per set of input shapes, the step's kernels are captured once
    (TensorRT's rule: enqueue once after a shape change, then capture ``execute_async_v3``) and
    replayed with one ``cudaGraphLaunch``; at batch 1 a launch-bound step saves the per-kernel
    launch cost. Engines TensorRT cannot capture (data-dependent shapes, loops) run uncaptured.
    Use as a context manager or call close().
    """

    name = "tensorrt"
    concurrent = False  # one execution context, one stream of buffers

    def __init__(self, engine_path: str | Path, metadata: Mapping[str, Any], *, device: int = 0,
                 cuda_graphs: bool = True) -> None:
        self._device, self._use_graphs = int(device), cuda_graphs
        self._buffers: dict[str, _Buffer] = {}
        self._graphs: dict[tuple, Any] = {}  # input shapes -> cudaGraphExec_t, None: not capturable
        self._stream = self._engine = self._context = self._runtime = self._cudart = None
        self._trt = import_tensorrt()
        self._cudart = import_cudart()
        gpu = query_gpu(device)
        check_engine_compat(metadata, self._trt.__version__, gpu.name, gpu.compute_capability)
        record = _engine_record(metadata)
        try:
            self._select_device()
            self._engine, self._context, self._runtime = self._load(Path(engine_path), record, gpu)
            self._stream = cuda_call(self._cudart, self._cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._read_io()
        except BaseException:
            with contextlib.suppress(BackendError):  # the load error is the one to show
                self.close()
            raise
        major, minor, _ = parse_version(self._trt.__version__)
        self.providers = [f"TensorRT {major}.{minor} on {gpu.name} (cuda:{self._device})" + _dla_note(record)]

    def _select_device(self) -> None:
        cuda_call(self._cudart, self._cudart.cudaSetDevice(self._device), f"cudaSetDevice({self._device})")

    def _load(self, path: Path, record: Mapping[str, Any], gpu: GpuInfo) -> tuple[Any, Any, Any]:
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        core = _dla_core_built(record)
        if core is not None:
            runtime.DLA_core = core
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(f"TensorRT {trt.__version__} could not deserialise {path} on "
                               f"'{gpu.name}' (see its log above): {REBUILD_HINT}")
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"TensorRT could not create an execution context for {path}")
        return engine, context, runtime

    def _read_io(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._profiles = {n: [tuple(s) for s in engine.get_tensor_profile_shape(n, 0)]
                          for n in self.input_names}

    def __enter__(self) -> "TensorRTBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One synchronous call: inputs by name (B, ...) float32 -> outputs by name float32."""
        if self._context is None:
            raise BackendError("TensorRTBackend is closed")
        self._select_device()
        hosts = self._set_inputs(inputs)
        shapes = {**{n: a.shape for n, a in hosts.items()},
                  **{n: tuple(self._context.get_tensor_shape(n)) for n in self.output_names}}
        if any([self._ensure_buffer(n, _nbytes(shape, self._dtypes[n])) for n, shape in shapes.items()]):
            self._drop_graphs()  # a graph replays the old addresses
        for name in shapes:
            if not self._context.set_tensor_address(name, self._buffers[name].device):
                raise BackendError(f"TensorRT refused the address of tensor '{name}'")
        for name, arr in hosts.items():
            np.copyto(self._host_view(name, arr.shape), arr)
        self._copy(self.input_names, to_device=True)
        self._execute(tuple(shapes[n] for n in self.input_names))
        self._copy(self.output_names, to_device=False)
        cuda_call(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {n: self._host_view(n, shapes[n]).astype(np.float32, copy=True) for n in self.output_names}

    def _set_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(inputs) != set(self.input_names):
            raise ValueError(f"inputs {sorted(inputs)} do not match the engine's {sorted(self.input_names)}")
        hosts = {}
        for name in self.input_names:
            arr = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
            check_input_shape(name, arr.shape, self._profiles[name])
            if not self._context.set_input_shape(name, arr.shape):
                raise BackendError(f"TensorRT refused shape {arr.shape} for input '{name}'")
            hosts[name] = arr
        return hosts

    def _ensure_buffer(self, name: str, nbytes: int) -> bool:
        """Room for ``nbytes`` in ``name``'s device and pinned host buffers; True if reallocated."""
        old = self._buffers.get(name)
        if old is not None and nbytes <= old.nbytes:
            return False
        cudart, size = self._cudart, max(nbytes, 1)
        if old is not None:
            del self._buffers[name]
            cuda_call(cudart, cudart.cudaFree(old.device), f"cudaFree of '{name}'")
            cuda_call(cudart, cudart.cudaFreeHost(old.host), f"cudaFreeHost of '{name}'")
        device = int(cuda_call(cudart, cudart.cudaMalloc(size), f"cudaMalloc of '{name}'"))
        self._buffers[name] = _Buffer(device, 0, size)  # recorded at once: close() frees it on any error
        self._buffers[name].host = int(cuda_call(cudart, cudart.cudaMallocHost(size), f"cudaMallocHost of '{name}'"))
        return True

    def _host_view(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The pinned host buffer of ``name`` as an array of ``shape`` (no copy)."""
        buf, dtype = self._buffers[name], self._dtypes[name]
        raw = (ctypes.c_uint8 * buf.nbytes).from_address(buf.host)
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def _copy(self, names: list[str], *, to_device: bool) -> None:
        cudart = self._cudart
        kind = (cudart.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device
                else cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            buf, nbytes = self._buffers[name], _nbytes(shape, self._dtypes[name])
            src, dst = (buf.host, buf.device) if to_device else (buf.device, buf.host)
            cuda_call(cudart, cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream),
                      f"cudaMemcpyAsync of '{name}'")

    def _execute(self, shapes: tuple) -> None:
        """The engine on the stream: a captured CUDA graph for these shapes, else an enqueue."""
        graph = self._graphs.get(shapes) if shapes in self._graphs else (
            self._capture(shapes) if self._use_graphs else None)
        if graph is None:
            self._enqueue()
        else:
            cuda_call(self._cudart, self._cudart.cudaGraphLaunch(graph, self._stream), "cudaGraphLaunch")

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT execute_async_v3 failed (see its log above)")

    def _capture(self, shapes: tuple) -> Any:
        """Capture the step for ``shapes`` into an instantiated graph, or None where TensorRT's
        kernels cannot be captured (remembered: not retried for these shapes)."""
        cudart, stream = self._cudart, self._stream
        self._enqueue()  # TensorRT: after a shape change, enqueue once before capturing
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        began = cudart.cudaStreamBeginCapture(stream, mode)[0] == cudart.cudaError_t.cudaSuccess
        captured, err, graph = False, None, None
        if began:
            try:
                captured = self._context.execute_async_v3(int(stream))
            finally:
                err, graph = cudart.cudaStreamEndCapture(stream)
        ok = began and captured and err == cudart.cudaError_t.cudaSuccess and graph is not None
        if not ok:
            cudart.cudaGetLastError()  # clears the (non-sticky) capture error
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
            log.info("TensorRT step for shapes %s cannot be captured as a CUDA graph; enqueued instead", shapes)
            self._graphs[shapes] = None
            return None
        try:
            self._graphs[shapes] = cuda_call(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            cuda_call(cudart, cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
        return self._graphs[shapes]

    def _drop_graphs(self) -> None:
        graphs, self._graphs = self._graphs, {}
        for graph in graphs.values():
            if graph is not None:
                cuda_call(self._cudart, self._cudart.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")

    def close(self) -> None:
        """Free every graph, buffer and the stream, drop the TensorRT objects, *then* raise one
        BackendError naming each CUDA call that failed (a sticky CUDA error fails them all, but
        nothing is skipped). Idempotent."""
        errors: list[str] = []
        cudart = self._cudart

        def attempt(what: str, call: Callable[[], tuple]) -> None:
            try:
                cuda_call(cudart, call(), what)
            except BackendError as exc:
                errors.append(str(exc))

        if cudart is not None and (self._stream is not None or self._buffers or self._graphs):
            attempt(f"cudaSetDevice({self._device})", lambda: cudart.cudaSetDevice(self._device))
            if self._stream is not None:
                attempt("cudaStreamSynchronize", lambda: cudart.cudaStreamSynchronize(self._stream))
            graphs, self._graphs = self._graphs, {}
            for graph in (g for g in graphs.values() if g is not None):
                attempt("cudaGraphExecDestroy", lambda g=graph: cudart.cudaGraphExecDestroy(g))
            buffers, self._buffers = self._buffers, {}
            for name, buf in buffers.items():
                attempt(f"cudaFree of '{name}'", lambda b=buf: cudart.cudaFree(b.device))
                if buf.host:
                    attempt(f"cudaFreeHost of '{name}'", lambda b=buf: cudart.cudaFreeHost(b.host))
            if self._stream is not None:
                stream, self._stream = self._stream, None
                attempt("cudaStreamDestroy", lambda: cudart.cudaStreamDestroy(stream))
        self._context = None  # TensorRT's order: context, then engine, then runtime
        self._engine = None
        self._runtime = None
        if errors:
            raise BackendError(f"closing the TensorRT backend (everything freed): {'; '.join(errors)}")


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _dla_core_built(record: Mapping[str, Any]) -> int | None:
    """The DLA core an engine was built for (the runtime must name it), verified or not."""
    core = record.get("dla_core")
    if core is None and isinstance(record.get("placement"), Mapping):
        core = record["placement"].get("dla_core")
    return None if core is None else int(core)


def _dla_note(record: Mapping[str, Any]) -> str:
    """' + DLA core N (k of n layers)' only where the build saw layers land there."""
    placement = record.get("placement") or {}
    if record.get("dla_core") is None or not placement.get("layers_on_dla"):
        return ""
    return f" + DLA core {record['dla_core']} ({placement['layers_on_dla']} of {placement['layers']} layers)"


def check_input_shape(name: str, shape: tuple[int, ...],
                      profile: list[tuple[int, ...]]) -> None:
    """Raise ValueError unless ``shape`` fits the engine's (min, opt, max) profile for ``name``."""
    low, _, high = profile
    if len(shape) != len(low):
        raise ValueError(f"input '{name}' has rank {len(shape)}; the engine expects "
                         f"{len(low)} dims {tuple(high)}")
    if any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
        if shape[1:] == tuple(high[1:]) and tuple(low[1:]) == tuple(high[1:]):
            raise ValueError(f"batch {shape[0]} of input '{name}' is outside the engine's profile "
                             f"{low[0]}..{high[0]}: rebuild the engine with a larger --batch range")
        raise ValueError(f"input '{name}' has shape {shape}; the engine accepts "
                         f"{tuple(low)} to {tuple(high)}")
