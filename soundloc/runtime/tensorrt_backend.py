"""TensorRT backend: run a serialized engine with device buffers from cuda-python (no torch,
no pycuda).

An engine runs only on the TensorRT version and GPU it was built with. The build records
both in ``soundloc.json`` (``soundloc.export.tensorrt.engine_metadata``) and
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

import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from soundloc.runtime.backend import BackendError

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
class TensorRTBackend:
    """A deserialised engine with one execution context, one stream and growable buffers.

    ``run`` takes float32 arrays whose first dim is the batch (any size inside the engine's
    optimisation profile) and returns float32 arrays. Device buffers are reallocated only
    when a call needs more bytes than the last one. Use as a context manager or call close().
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, metadata: Mapping[str, Any], *, device: int = 0) -> None:
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device ptr, capacity bytes)
        self._stream = self._engine = self._context = self._runtime = None
        self._trt = import_tensorrt()
        self._cudart = import_cudart()
        gpu = query_gpu(device)
        check_engine_compat(metadata, self._trt.__version__, gpu.name, gpu.compute_capability)
        record = _engine_record(metadata)
        try:
            self._engine, self._context, self._runtime = self._load(Path(engine_path), record, gpu)
            self._stream = cuda_call(self._cudart, self._cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._read_io()
        except BaseException:
            self.close()
            raise
        major, minor, _ = parse_version(self._trt.__version__)
        where = gpu.name + _dla_note(record)
        self.providers = [f"TensorRT {major}.{minor} on {where}"]

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
        hosts = self._set_inputs(inputs)
        outputs = {n: np.empty(tuple(self._context.get_tensor_shape(n)), self._dtypes[n])
                   for n in self.output_names}
        for name, arr in {**hosts, **outputs}.items():
            ptr = self._ensure_buffer(name, arr.nbytes)
            if not self._context.set_tensor_address(name, ptr):
                raise BackendError(f"TensorRT refused the address of tensor '{name}'")
        self._copy(hosts, to_device=True)
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT execute_async_v3 failed (see its log above)")
        self._copy(outputs, to_device=False)
        cuda_call(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {n: a.astype(np.float32, copy=False) for n, a in outputs.items()}

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

    def _ensure_buffer(self, name: str, nbytes: int) -> int:
        """Device pointer for ``name`` with room for ``nbytes``; grows, never shrinks."""
        ptr, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if ptr:
                cuda_call(self._cudart, self._cudart.cudaFree(ptr), "cudaFree")
                del self._buffers[name]
            ptr = int(cuda_call(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self._buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def _copy(self, arrays: dict[str, np.ndarray], *, to_device: bool) -> None:
        cudart = self._cudart
        kind = (cudart.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device
                else cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        for name, arr in arrays.items():
            dev, host = self._buffers[name][0], arr.ctypes.data
            src, dst = (host, dev) if to_device else (dev, host)
            cuda_call(cudart, cudart.cudaMemcpyAsync(dst, src, arr.nbytes, kind, self._stream),
                      f"cudaMemcpyAsync of '{name}'")

    def close(self) -> None:
        """Free device buffers and the stream, then drop the TensorRT objects. Idempotent."""
        cudart = self._cudart
        if self._stream is not None:
            cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        for name, (ptr, _) in list(self._buffers.items()):
            cuda_call(cudart, cudart.cudaFree(ptr), f"cudaFree of '{name}'")
            del self._buffers[name]
        if self._stream is not None:
            cuda_call(cudart, cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
        self._stream = None
        self._context = self._engine = self._runtime = None


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
