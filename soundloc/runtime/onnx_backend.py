"""onnxruntime backend, with execution providers chosen in one place.

``get_available_providers()`` lists what the wheel was built with, not what can load: an
onnxruntime-gpu wheel on a machine without a GPU lists CUDA and then prints an "EP Error"
banner when asked for it. So ``resolve_providers`` asks for a GPU provider only when a CUDA
driver with a device is really present, and the backend reports ``session.get_providers()``
(what is actually in use) rather than what was requested.

On a GPU provider the backend runs through I/O binding: inputs are copied to the device once
per call, outputs are allocated there by onnxruntime, and outputs named in ``keep_on_device``
(the step graph's state) come back as ``DeviceTensor``s that the next call binds directly, so
the state never leaves the GPU between steps. The TensorRT EP keeps its engines in a cache
beside the graph (``ort_trt_cache/``), built once per shape and reused across runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path

import numpy as np

from .backend import BackendError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CHOICES = ("auto", "cpu", "cuda", "tensorrt")


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices visible through the driver API (0 when no driver), without torch."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def installed_onnxruntimes() -> list[str]:
    """onnxruntime distributions installed in this environment (more than one breaks imports)."""
    from importlib import metadata

    names = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
    found = []
    for name in names:
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _import_ort():
    both = installed_onnxruntimes()
    if len(both) > 1:
        raise BackendError(f"{' and '.join(both)} are installed together and overwrite each other's files: "
                           f"`pip uninstall -y {' '.join(both)}` then install exactly one")
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("onnxruntime is not installed: `pip install 'soundloc[cpu]'` "
                           "(or 'soundloc[gpu]' on a CUDA machine; never both)") from None
    return onnxruntime


def resolve_providers(requested: str = "auto") -> list[str]:
    """Providers to ask onnxruntime for: ``auto`` takes TensorRT EP, CUDA EP, CPU in that
    order of preference among those built in *and* usable here; ``cpu``/``cuda``/``tensorrt``
    insist (and fail clearly when impossible)."""
    if requested not in CHOICES:
        raise ValueError(f"onnxruntime provider must be one of {', '.join(CHOICES)}, not {requested!r}")
    ort = _import_ort()
    built = ort.get_available_providers()
    if requested == "cpu":
        return ["CPUExecutionProvider"]
    gpu_ok = cuda_device_count() > 0
    if requested in ("cuda", "tensorrt"):
        want = "CUDAExecutionProvider" if requested == "cuda" else "TensorrtExecutionProvider"
        if want not in built:
            raise BackendError(f"this onnxruntime has no {want}: install onnxruntime-gpu ('soundloc[gpu]')")
        if not gpu_ok:
            raise BackendError(f"{want} needs a CUDA GPU and driver; none found")
        chain = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if requested == "tensorrt" else [want]
        return [p for p in chain if p in built] + ["CPUExecutionProvider"]
    gpus = [p for p in GPU_PROVIDERS if p in built] if gpu_ok else []
    return gpus + ["CPUExecutionProvider"]


class DeviceTensor:
    """An output left where onnxruntime put it (an ``OrtValue``, on the GPU with a GPU provider).

    Passed back as an input it is bound as it is, with no copy; anything else that needs the
    values gets them through ``np.asarray`` (one device-to-host copy).
    """

    def __init__(self, value) -> None:
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    @property
    def device(self) -> str:
        return self.value.device_name()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.value.numpy()
        return arr if dtype is None else arr.astype(dtype, copy=False)


class OnnxRuntimeBackend:
    """One ONNX graph in an onnxruntime session (the Backend protocol).

    ``io_binding``: None binds through I/O binding exactly when a GPU provider is in use;
    True/False force it (True on the CPU provider binds CPU memory: same path, no GPU).
    ``device``: the CUDA device of the GPU providers.
    ``spin``: let onnxruntime's intra-op threads busy-wait for work between operators (its
    default). Off here: on a CPU shared with the capture, render and other processes a
    spinning thread burns the core those need (with the bundled model, 1.5 of the 4.4 CPU
    seconds of a 10 s 1080p stream) and, beside a busy process, waits on a descheduled
    thread; benchmarks/shared_cpu.py measures both ways.
    """

    name = "onnxruntime"
    concurrent = True  # InferenceSession.run is thread-safe and releases the GIL

    def __init__(self, path: str | Path, providers: str = "auto", threads: int | None = None, *,
                 device: int = 0, keep_on_device: tuple[str, ...] = (), io_binding: bool | None = None,
                 spin: bool = False) -> None:
        ort = _import_ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        for pool in ("intra_op", "inter_op"):
            opts.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3  # errors only: no provider banners for CPU users
        chain = resolve_providers(providers)
        provider_options = [_provider_options(p, Path(path), device) for p in chain]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=chain,
                                                provider_options=provider_options)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{path}: onnxruntime could not load it: {str(e).splitlines()[0]}") from None
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        on_gpu = any(p in GPU_PROVIDERS for p in self.providers)
        self._bind = on_gpu if io_binding is None else io_binding
        self._device = ("cuda" if on_gpu else "cpu", device if on_gpu else 0)
        self._keep = frozenset(keep_on_device)

    def run(self, inputs: dict) -> dict:
        """Inputs by name (numpy arrays or ``DeviceTensor``s) -> outputs by name: numpy arrays,
        and ``DeviceTensor``s for the outputs kept on the device."""
        if not self._bind:
            feed = {k: np.asarray(v) for k, v in inputs.items()}
            return dict(zip(self.output_names, self.session.run(None, feed)))
        binding = self.session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, DeviceTensor):
                binding.bind_ortvalue_input(name, value.value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, *self._device)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return {name: DeviceTensor(v) if name in self._keep else v.numpy()
                for name, v in zip(self.output_names, outs)}

    def close(self) -> None:
        self.session = None

    def __enter__(self) -> "OnnxRuntimeBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _provider_options(provider: str, path: Path, device: int = 0) -> dict[str, str]:
    """Options of one provider: the device for both GPU providers; for the TensorRT EP, its
    engine and timing caches in ``ort_trt_cache/`` beside the graph (built once, reused)."""
    if provider == "TensorrtExecutionProvider":
        cache = path.parent / "ort_trt_cache"
        os.makedirs(cache, exist_ok=True)
        return {"device_id": str(device), "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}
    if provider == "CUDAExecutionProvider":
        return {"device_id": str(device)}
    return {}
