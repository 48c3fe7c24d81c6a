"""onnxruntime backend, with execution providers chosen in one place.

``get_available_providers()`` lists what the wheel was built with, not what can load: an
onnxruntime-gpu wheel on a machine without a GPU lists CUDA and then prints an "EP Error"
banner when asked for it. So ``resolve_providers`` asks for a GPU provider only when a CUDA
driver with a device is really present, and the backend reports ``session.get_providers()``
(what is actually in use) rather than what was requested.
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


class OnnxRuntimeBackend:
    """One ONNX graph in an onnxruntime session (the Backend protocol)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: str = "auto", threads: int | None = None) -> None:
        ort = _import_ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # errors only: no provider banners for CPU users
        chain = resolve_providers(providers)
        provider_options = [_provider_options(p, Path(path)) for p in chain]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=chain,
                                                provider_options=provider_options)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{path}: onnxruntime could not load it: {str(e).splitlines()[0]}") from None
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, inputs)
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self.session = None

    def __enter__(self) -> "OnnxRuntimeBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _provider_options(provider: str, path: Path) -> dict[str, str]:
    if provider == "TensorrtExecutionProvider":
        cache = path.parent / "ort_trt_cache"
        os.makedirs(cache, exist_ok=True)
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True"}
    return {}
