"""Build a TensorRT engine from an exported ONNX graph, on TensorRT 10.x (JetPack 6) and 11.x.

Precision is decided by a pure function, ``trt_plan.plan_build``, so the version logic is tested
where TensorRT cannot be installed:

- TensorRT 10.x, fp16 from an fp32 graph: weakly typed network + ``BuilderFlag.FP16``
  (deprecated since 10.12, so a note says to export an fp16 graph instead);
- TensorRT 10.x otherwise: a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``)
  that computes in the graph's own types;
- TensorRT >= 11: every network is strongly typed and the FP16 flag is gone, so fp16 needs an
  ONNX whose weights and compute are already fp16; asking fp16 of an fp32 graph is an error that
  says which graph to export.

The same strongly typed path (precision exported into the ONNX) works on both majors. The
build also sets a workspace limit, reuses a timing cache file (loaded if present and usable,
else a fresh one with a warning; written back atomically), builds one optimisation profile over
the batch dim of every input, reports progress (``IProgressMonitor``; an exception raised by
the callback cancels the build and is raised as the cause) and writes the engine atomically.
``engine_metadata`` is the record the runtime checks before loading.

DLA (Jetson): the DLA runs only static shapes (min = opt = max) and no 3-D convolutions, so a
DLA build demands a static batch, pins every 3-D convolution (all of MC3's video layers) and
every layer ``IBuilderConfig.can_run_on_DLA`` refuses to the GPU, and afterwards asks the
engine inspector (``ProfilingVerbosity.DETAILED``) where the layers really landed. The manifest
records that count; an engine with no layer on the DLA is recorded as a GPU engine.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import onnx

from soundloc.deploy.trt_ops import check_tensorrt_compat
from soundloc.fileio import atomic_write_bytes
from soundloc.runtime.backend import BackendError
from soundloc.runtime.tensorrt_backend import (
    GpuInfo, cuda_call, import_cudart, import_tensorrt, query_gpu,
)
from ..errors import ExportError
from .trt_plan import (
    BuildPlan, EngineInfo, Profile, dla_layers, layer_placement, onnx_input_dims, onnx_is_fp16, plan_build,
    profile_shapes,
)
from soundloc.errors import UsageError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]  # (phase name, steps done, steps in phase)


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str = "fp32",
                 workspace_gib: float = 2.0, timing_cache: str | Path | None = None,
                 batch: tuple[int, int, int] = (1, 1, 4),
                 fixed_dims: Mapping[str, Sequence[int]] | None = None, dla_core: int | None = None,
                 progress: ProgressCallback | None = None, check_ops: bool = True,
                 device: int = 0) -> EngineInfo:
    """Build ``engine_path`` from ``onnx_path`` on CUDA device ``device``; see the module
    docstring for what is set.

    ``batch``: (min, opt, max) of dim 0 of every input; ``workspace_gib``: builder scratch
    memory limit in GiB; ``progress``: called with (phase, done, total) from TensorRT's
    threads; None shows a rich progress bar. ``check_ops`` runs ``check_tensorrt_compat`` first.
    fp32 keeps TensorRT's default TF32 for convolutions/matmuls on Ampere and newer (as trtexec
    does): expect ~1e-3 relative differences from onnxruntime's fp32, not 1e-6.
    """
    if not workspace_gib > 0:
        raise UsageError(f"workspace_gib must be > 0, not {workspace_gib!r}")
    if dla_core is not None and not batch[0] == batch[1] == batch[2]:
        raise ExportError(f"the DLA runs static shapes only: a DLA build needs min = opt = max batch, not "
                          f"{tuple(batch)} (e.g. batch=({batch[2]}, {batch[2]}, {batch[2]}), `--max-batch N`)")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    problems = check_tensorrt_compat(model) if check_ops else []
    if problems:
        raise ExportError(f"{onnx_path} has {len(problems)} problem(s) for TensorRT:\n  "
                          + "\n  ".join(problems))
    profile = profile_shapes(onnx_input_dims(model), batch, fixed_dims)
    trt = _import_trt()
    plan = plan_build(trt.__version__, precision, onnx_is_fp16(model), dla_core)
    for note in plan.notes:
        log.warning(note)
    gpu = _query_gpu(device)
    start = time.monotonic()
    with _progress_reporter(progress) as report:
        data = _build_serialized(trt, onnx_path, plan, profile, workspace_gib, timing_cache, report)
    seconds = time.monotonic() - start
    placement = _inspect_placement(trt, data, dla_core) if dla_core is not None else None
    atomic_write_bytes(engine_path, data)
    log.info("built %s in %.1f s (%d bytes)", engine_path, seconds, len(data))
    return EngineInfo(trt.__version__, gpu.name, gpu.compute_capability, precision, plan.strongly_typed,
                      seconds, profile, dla_core, hashlib.sha256(data).hexdigest(), len(data), placement)


def _import_trt() -> Any:
    try:
        return import_tensorrt()
    except BackendError as exc:
        raise ExportError(str(exc)) from exc


def _query_gpu(device: int = 0) -> GpuInfo:
    """The GPU the engine is built for, made current: TensorRT's builder times tactics on the
    calling thread's current CUDA device (device 0 unless set)."""
    try:
        gpu = query_gpu(device)
    except BackendError as exc:
        raise ExportError(f"cannot build a TensorRT engine here: {exc}") from exc
    try:
        cudart = import_cudart()
    except BackendError as exc:
        if device == 0:
            return gpu  # the builder's default device is the one asked for
        raise ExportError(f"building on GPU {device} needs cuda-python to select it: {exc}") from exc
    try:
        cuda_call(cudart, cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
    except BackendError as exc:
        raise ExportError(f"cannot build a TensorRT engine on GPU {device}: {exc}") from exc
    return gpu


def _build_serialized(trt: Any, onnx_path: Path, plan: BuildPlan, profile: Profile,
                      workspace_gib: float, timing_cache: str | Path | None,
                      report: ProgressCallback | None) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse_network(trt, builder, logger, onnx_path, plan)  # parser outlives network
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    _set_profile(builder, config, profile)
    if plan.dla_core is not None:
        _set_dla(trt, builder, config, network, plan.dla_core)
    cache = _load_timing_cache(config, timing_cache)
    monitor = _progress_monitor(trt, report) if report is not None else None
    if monitor is not None:
        config.progress_monitor = monitor  # must outlive the build: kept in this frame
    serialized = builder.build_serialized_network(network, config)
    if monitor is not None and monitor.error is not None:
        exc = monitor.error
        raise ExportError(f"the progress callback raised {type(exc).__name__}: {exc} (the TensorRT build "
                          "was cancelled)") from exc
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} could not build {onnx_path} (see its log above)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(cache.serialize())))
    del parser
    return bytes(memoryview(serialized))


def _parse_network(trt: Any, builder: Any, logger: Any, onnx_path: Path,
                   plan: BuildPlan) -> tuple[Any, Any]:
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed_flag else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: finds external weights
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser refused {onnx_path}:\n  " + "\n  ".join(errors))
    return network, parser


def _set_profile(builder: Any, config: Any, profile: Profile) -> None:
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(opt_profile) < 0:
        raise ExportError(f"TensorRT refused the optimisation profile {profile}")


def _set_dla(trt: Any, builder: Any, config: Any, network: Any, dla_core: int) -> int:
    """DLA by default, GPU for what the DLA cannot run; returns the layers pinned to the GPU."""
    cores = int(getattr(builder, "num_DLA_cores", 0))
    if dla_core >= cores:
        raise ExportError(f"DLA core {dla_core} asked, but TensorRT {trt.__version__} sees {cores} DLA "
                          "core(s) here (Jetson AGX Orin has 2; JetPack 6's TensorRT 10.3 supports them)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # so the inspector sees layer types
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if _is_3d_conv(trt, layer) or not config.can_run_on_DLA(layer):
            config.set_device_type(layer, trt.DeviceType.GPU)
            pinned += 1
    log.warning("DLA core %d: %d of %d layers run on the GPU (3-D convolutions and layers the DLA "
                "lacks)", dla_core, pinned, network.num_layers)
    return pinned


def _is_3d_conv(trt: Any, layer: Any) -> bool:
    """A convolution over 3 spatial dims (5-D input): the DLA has none."""
    if layer.type not in (trt.LayerType.CONVOLUTION, trt.LayerType.DECONVOLUTION):
        return False
    return layer.num_inputs > 0 and len(layer.get_input(0).shape) == 5


def _inspect_placement(trt: Any, data: bytes, dla_core: int) -> dict[str, Any]:
    """Deserialise the fresh engine and ask its inspector where the layers landed."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ExportError(f"TensorRT {trt.__version__} built a DLA engine it cannot deserialise here")
    inspector = engine.create_engine_inspector()
    placement = layer_placement(inspector.get_engine_information(trt.LayerInformationFormat.JSON), dla_core)
    if dla_layers(placement) == 0:
        log.warning("no layer of this engine runs on DLA core %d (%s): it is recorded as a GPU engine",
                    dla_core, placement["checked_by"])
    return placement


def _load_timing_cache(config: Any, path: str | Path | None) -> Any:
    """The timing cache from ``path`` if it exists and this TensorRT/GPU can use it, else a new one.

    ``create_timing_cache`` returns None for a blob it cannot read (corrupt, truncated, another
    format) and ``set_timing_cache`` returns False for one from another TensorRT or GPU: both
    fall back to a fresh cache with a warning; the file is overwritten only after a good build.
    """
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            return cache
        why = "unreadable (corrupt or not a timing cache)" if cache is None else "from another TensorRT or GPU"
        log.warning("timing cache %s is %s; starting a new one", path, why)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise ExportError("TensorRT refused a new, empty timing cache")
    return cache


# -- progress ----------------------------------------------------------------------------------------
def _progress_monitor(trt: Any, report: ProgressCallback) -> Any:
    """An IProgressMonitor that forwards to ``report`` (thread-safe), or None if absent."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        """Forwards to ``report``; the first exception it raises is kept in ``error`` (TensorRT
        cannot carry it across its threads) and cancels the build at the next step."""

        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()
            self._totals: dict[str, int] = {}
            self.error: BaseException | None = None

        def _report(self, phase: str, done: int, total: int) -> None:
            if self.error is None:
                try:
                    report(phase, done, total)
                except Exception as exc:  # any error of the caller's callback: surfaced after the build
                    self.error = exc

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._totals[phase_name] = num_steps
                self._report(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                self._report(phase_name, step + 1, self._totals.get(phase_name, step + 1))
                return self.error is None  # False cancels the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                total = self._totals.pop(phase_name, 1)
                self._report(phase_name, total, total)

    return _Monitor()


@contextmanager
def _progress_reporter(progress: ProgressCallback | None) -> Iterator[ProgressCallback | None]:
    """The caller's callback, or a rich display: bars per build phase, or a spinner when this
    TensorRT has no IProgressMonitor (the callback is then never called)."""
    if progress is not None:
        yield progress
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bars:
        overall = bars.add_task("building TensorRT engine", total=None)
        tasks: dict[str, Any] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(f"  {phase}", total=max(total, 1))
            bars.update(tasks[phase], completed=done, total=max(total, 1))

        yield report
        bars.update(overall, total=1, completed=1)
