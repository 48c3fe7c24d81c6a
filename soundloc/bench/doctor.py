"""`soundloc doctor`: what this machine has for the GPU path, and proof that it works.

First an inventory (NVIDIA driver, CUDA, cuda-python, TensorRT, onnxruntime and its providers,
JetPack, clocks), each missing piece with the line that says what to install. Then, on the
bundled demo export and on a full-size export with random weights (the paper's MC3-18, made
here; needs PyTorch), ``steps`` streaming steps on onnxruntime's CPU provider (the reference)
and on every GPU backend this machine can run: onnxruntime's CUDA and TensorRT providers and
TensorRT engines built here, each fed the same inputs with its own state fed back, its error
against the reference judged by the one tolerance policy (``soundloc.deploy.tolerance``).

Statuses: ``pass``/``fail`` for checks that ran, ``missing`` for an absent piece, ``skip`` for a
check that needs one, ``info`` for facts. A run fails on any ``fail``, and with
``require_gpu`` on any ``missing`` too (what a GPU-equipped CI check runs).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UsageError
from .system import command_output, system_info
from ..config import MELS_PER_STEP
from ..runtime.backend import BackendError
from ..runtime.bundle import Bundle, random_weights_note, read_bundle
from ..runtime.onnx_backend import cuda_device_count, resolve_providers
from ..runtime.tensorrt_backend import CUDA_INSTALL_HINT, TRT_INSTALL_HINT, cuda_call, import_cudart, import_tensorrt

DRIVER_HINT = ("install the NVIDIA driver (servers/desktops: the distribution's nvidia-driver package or "
               "NVIDIA's installer; Jetson: it comes with JetPack)")
ORT_GPU_HINT = ("install onnxruntime-gpu instead of onnxruntime: `pip uninstall -y onnxruntime && "
                "pip install 'soundloc[gpu]'` (Jetson: NVIDIA's onnxruntime-gpu wheel for your JetPack)")
TORCH_HINT = "the full-size random export needs PyTorch: `pip install 'soundloc[train]'` (or --no-full)"
ORT_PROVIDER_OF = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}
SMI_FIELDS = "name,driver_version,compute_cap,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem"


@dataclass
class Finding:
    """One line of the report."""

    name: str
    status: str  # pass, fail, missing, skip, info
    detail: str
    fix: str = ""  # what to install or do, where status is not pass/info
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    findings: list[Finding]
    require_gpu: bool = False
    notes: list[str] = field(default_factory=list)  # e.g. the random-weights warning

    def failed(self) -> list[Finding]:
        bad = ("fail", "missing") if self.require_gpu else ("fail",)
        return [f for f in self.findings if f.status in bad]

    @property
    def ok(self) -> bool:
        return not self.failed()

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "require_gpu": self.require_gpu, "notes": self.notes,
                "findings": [asdict(f) for f in self.findings]}


@dataclass(frozen=True)
class Machine:
    """What the export checks need to know from the inventory."""

    gpus: int
    tensorrt: str | None
    ort_gpu: tuple[str, ...]  # onnxruntime GPU providers usable here
    ort_built: tuple[str, ...] = ()  # providers the installed onnxruntime was built with


# -- inventory ------------------------------------------------------------------------------------
def inventory() -> tuple[list[Finding], Machine]:
    """What is installed; each absent piece says what to install."""
    info = system_info()
    found = [Finding("platform", "info", f"{info['platform']}, Python {info['python']}, "
                     f"{info['cpu_count']} CPUs ({info['cpu_model']})")]
    found.append(_driver())
    gpus = cuda_device_count()
    found.append(Finding("CUDA devices", "pass" if gpus else "missing",
                         f"{gpus} visible through the CUDA driver API", "" if gpus else DRIVER_HINT))
    found.append(_cuda_python())
    trt = _tensorrt()
    found.append(trt)
    ort, ort_gpu = _onnxruntime()
    found.append(ort)
    found += _jetson(info)
    return found, Machine(gpus, trt.figures.get("version"), ort_gpu, tuple(ort.figures.get("built", ())))


def _driver() -> Finding:
    fields = SMI_FIELDS
    out = command_output(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"])
    if not out:  # drivers before 510 lack compute_cap: ask for less before calling the driver missing
        fields = "name,driver_version"
        out = command_output(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"])
    if not out:
        return Finding("NVIDIA driver", "missing", "nvidia-smi not found or failed", DRIVER_HINT)
    keys = SMI_FIELDS.split(",")
    rows = [{k: "?" for k in keys} | dict(zip(fields.split(","), (c.strip() for c in line.split(","))))
            for line in out.splitlines()]
    detail = "; ".join(f"{r['name']} (sm_{r['compute_cap'].replace('.', '')}), driver {r['driver_version']}, "
                       f"clocks SM {r['clocks.sm']}/{r['clocks.max.sm']} MHz, memory {r['clocks.mem']}/"
                       f"{r['clocks.max.mem']} MHz" for r in rows)
    return Finding("NVIDIA driver", "pass", detail, figures={"gpus": rows})


def _cuda_python() -> Finding:
    try:
        cudart = import_cudart()
        runtime = cuda_call(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
        driver = cuda_call(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    except BackendError as exc:
        return Finding("cuda-python", "missing", str(exc).split(":")[0], CUDA_INSTALL_HINT)
    version = _dist_version("cuda-python") or _dist_version("cuda-bindings") or "?"
    cuda = lambda v: f"{int(v) // 1000}.{int(v) % 1000 // 10}"  # noqa: E731  12040 -> 12.4
    return Finding("cuda-python", "pass", f"cuda-python {version}: CUDA runtime {cuda(runtime)}, driver supports "
                   f"CUDA {cuda(driver)}", figures={"cuda_runtime": cuda(runtime), "cuda_driver": cuda(driver)})


def _tensorrt() -> Finding:
    try:
        trt = import_tensorrt()
    except BackendError:
        return Finding("TensorRT", "missing", "the tensorrt Python package does not import", TRT_INSTALL_HINT)
    return Finding("TensorRT", "pass", f"TensorRT {trt.__version__}", figures={"version": trt.__version__})


def _onnxruntime() -> tuple[Finding, tuple[str, ...]]:
    try:
        import onnxruntime as ort

        usable = resolve_providers("auto")
    except (ImportError, BackendError) as exc:
        return Finding("onnxruntime", "missing", str(exc), "`pip install 'soundloc[cpu]'` or 'soundloc[gpu]'"), ()
    built = ort.get_available_providers()
    gpu = tuple(p for p in usable if p != "CPUExecutionProvider")
    detail = f"onnxruntime {ort.__version__}: built with {', '.join(built)}; usable here: {', '.join(usable)}"
    if gpu:
        return Finding("onnxruntime", "pass", detail, figures={"built": built, "usable": usable}), gpu
    fix = ORT_GPU_HINT if not any(p in built for p in ORT_PROVIDER_OF.values()) else DRIVER_HINT
    return Finding("onnxruntime GPU providers", "missing", detail, fix, {"built": built, "usable": usable}), gpu


def _jetson(info: dict[str, Any]) -> list[Finding]:
    jetson = info.get("jetson")
    if not jetson:
        return [Finding("JetPack", "info", "not a Jetson (no /etc/nv_tegra_release)")]
    jetpack = command_output(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) or "nvidia-jetpack not installed"
    clocks = jetson.get("jetson_clocks") or "unknown (`sudo jetson_clocks --show`)"
    return [Finding("JetPack", "info", f"{jetson['release']}; JetPack {jetpack}; nvpmodel {jetson.get('nvpmodel')}"),
            Finding("Jetson clocks", "info", clocks.splitlines()[0] if clocks else "",
                    "benchmark after `sudo jetson_clocks` (locks the clocks at their maximum)")]


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- the export checks ----------------------------------------------------------------------------
def demo_export(into: Path) -> Bundle:
    """A copy of the bundled demo export (engines are built into the copy, never the package)."""
    source = resources.files("soundloc").joinpath("assets/demo")
    with resources.as_file(source) as path:
        shutil.copytree(path, into)
    return read_bundle(into)


def full_size_export(into: Path, precision: str) -> Bundle:
    """The paper's full-size model with random weights, exported (PyTorch, ~1 min on 2 cores)."""
    from ..export.onnx import export_model, random_model, random_weights_record

    return export_model(random_model("paper", 0), into, precision=precision,
                        checkpoint=random_weights_record("paper", 0))


def step_inputs(bundle: Bundle, steps: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``steps`` reproducible (frames, mels, valid) for one stream."""
    rng, size = np.random.default_rng(seed), bundle.config.image_size
    return [(rng.standard_normal((1, 3, size, size)).astype(np.float32),
             (rng.standard_normal((1, MELS_PER_STEP, bundle.config.n_mels)) * 3 - 6).astype(np.float32),
             np.ones(1, np.float32)) for _ in range(steps)]


def run_steps(bundle: Bundle, backend: str, inputs: list, device: int = 0) -> tuple[dict[str, np.ndarray], float, str]:
    """Every step's alpha and score with the state fed back; median ms per step; backend name."""
    from ..runtime.backend_spec import load_step_model

    model = load_step_model(bundle, backend, device=device)
    try:
        state, alphas, scores, times = model.new_state(1), [], [], []
        for frames, mels, valid in inputs:
            start = time.perf_counter()
            out, state = model.step(frames, mels, valid, state)
            times.append(time.perf_counter() - start)
            alphas.append(out.alpha[0])
            scores.append(out.score[0])
        return {"alpha": np.stack(alphas), "score": np.stack(scores)}, 1000 * float(np.median(times)), model.name
    finally:
        model.close()


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], precision: str) -> tuple[bool, str, dict]:
    """Max abs error per output against the reference, judged by ``precision``'s tolerance."""
    from ..deploy.tolerance import tolerance_for

    tol, ok, parts, figures = tolerance_for(precision), True, [], {}
    for key in ref:
        err = float(np.abs(got[key].astype(np.float64) - ref[key]).max())
        scale = float(np.abs(ref[key]).max())
        allowed = tol.allowed(scale)
        ok &= err <= allowed
        parts.append(f"{key} {err:.1e} {'<=' if err <= allowed else '>'} {allowed:.1e}")
        figures[key] = {"max_abs_error": err, "scale": scale, "allowed": allowed}
    return ok, f"{', '.join(parts)} ({precision} tolerance: {tol.rel:g} of the scale)", figures


def check_export(label: str, bundle: Bundle, steps: int, machine: Machine, *, device: int = 0,
                 precision: str = "fp32", progress: Callable[[str], None] = lambda s: None) -> list[Finding]:
    """The reference run on onnxruntime CPU, then every GPU backend this machine has, compared."""
    inputs = step_inputs(bundle, steps)
    progress(f"{label}: {steps} steps on onnxruntime CPU")
    try:
        ref, ms, _ = run_steps(bundle, "onnxruntime-cpu", inputs)
    except Exception as exc:  # any failure of the reference is this check's result
        return [Finding(f"{label}: onnxruntime CPU", "fail", _one_line(exc))]
    found = [Finding(f"{label}: onnxruntime CPU", "pass", f"{steps} steps, {ms:.1f} ms/step (the reference)",
                     figures={"ms_per_step": ms})]
    for backend, provider in ORT_PROVIDER_OF.items():
        if provider not in machine.ort_gpu:
            built = provider in machine.ort_built
            found.append(Finding(f"{label}: {backend}", "skip",
                                 f"{provider} is {'built in but has no CUDA GPU' if built else 'not in this onnxruntime'}",
                                 DRIVER_HINT if built else ORT_GPU_HINT))
            continue
        progress(f"{label}: {steps} steps on {backend}")
        found.append(_compared(f"{label}: {backend}", bundle, backend, inputs, ref, precision_of(bundle, "tf32"),
                               device))
    found += _engine_checks(label, bundle, inputs, ref, machine, device, precision, progress)
    return found


def _engine_checks(label: str, bundle: Bundle, inputs: list, ref: dict, machine: Machine, device: int,
                   precision: str, progress: Callable[[str], None]) -> list[Finding]:
    if machine.tensorrt is None or not machine.gpus:
        why = "TensorRT is not installed" if machine.tensorrt is None else "no CUDA GPU"
        fix = TRT_INSTALL_HINT if machine.tensorrt is None else DRIVER_HINT
        return [Finding(f"{label}: TensorRT engine build", "skip", why, fix),
                Finding(f"{label}: tensorrt", "skip", why, fix)]
    from ..deploy.trt_engines import build_engines

    progress(f"{label}: building TensorRT engines ({precision})")
    start = time.monotonic()
    try:
        bundle = build_engines(bundle, precision=precision, max_batch=1, workspace_gib=2.0,
                               timing_cache=None, dla_core=None, device=device)
    except Exception as exc:  # the build's own message says what to do
        return [Finding(f"{label}: TensorRT engine build", "fail", _one_line(exc))]
    seconds = time.monotonic() - start
    built = Finding(f"{label}: TensorRT engine build", "pass", f"3 engines ({precision}) in {seconds:.0f} s",
                    figures={"seconds": seconds, "tensorrt": bundle.manifest.get("tensorrt")})
    progress(f"{label}: {len(inputs)} steps on tensorrt")
    row = "fp16" if precision == "fp16" else precision_of(bundle, "tf32")
    return [built, _compared(f"{label}: tensorrt", bundle, "tensorrt", inputs, ref, row, device)]


def precision_of(bundle: Bundle, fp32_on_gpu: str) -> str:
    """The tolerance row of a GPU run of ``bundle``: fp16 exports are fp16; fp32 runs as TF32."""
    return "fp16" if bundle.precision == "fp16" else fp32_on_gpu


def _compared(name: str, bundle: Bundle, backend: str, inputs: list, ref: dict, row: str, device: int) -> Finding:
    try:
        got, ms, used = run_steps(bundle, backend, inputs, device)
    except Exception as exc:  # the backend's message says what to install or rebuild
        return Finding(name, "fail", _one_line(exc))
    ok, detail, figures = compare(got, ref, row)
    return Finding(name, "pass" if ok else "fail", f"{used}: {ms:.2f} ms/step; {detail}",
                   figures={"ms_per_step": ms, "backend": used, **figures})


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_workdir(workdir: str | Path | None) -> None:
    """The doctor writes random-weight exports into ``workdir``: a new or empty folder only, so a
    user's own export there is never replaced."""
    if workdir is None:
        return
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--workdir {path} exists and is not a folder; give a new or empty folder")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"--workdir {path} is not empty; give a new or empty folder (the doctor writes "
                         "random-weight exports there)")


# -- the whole run --------------------------------------------------------------------------------
def run_doctor(*, steps: int = 20, full: bool = True, precision: str = "fp32", device: int = 0,
               workdir: str | Path | None = None, require_gpu: bool = False,
               progress: Callable[[str], None] = lambda s: None) -> DoctorReport:
    """Inventory, then the demo export and (``full``) a full-size random export, checked."""
    if steps < 1:
        raise UsageError(f"steps must be >= 1, not {steps}")
    if precision not in ("fp32", "fp16"):
        raise UsageError(f"precision must be fp32 or fp16, not {precision!r}")
    _check_workdir(workdir)
    findings, machine = inventory()
    report = DoctorReport(findings, require_gpu)
    with ExitStack() as stack:
        root = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soundloc-doctor-")))
        root.mkdir(parents=True, exist_ok=True)
        exports: list[tuple[str, Callable[[], Bundle]]] = [("demo", lambda: demo_export(root / "demo"))]
        if full:
            exports.append(("full-size", lambda: full_size_export(root / "full-size", precision)))
        for label, make in exports:
            progress(f"{label}: preparing the export")
            try:
                bundle = make()
            except ImportError:
                findings.append(Finding(f"{label}: export", "skip", "PyTorch is not installed", TORCH_HINT))
                continue
            note = random_weights_note(bundle.manifest)
            if note:
                report.notes.append(f"{label}: {note}")
            findings += check_export(label, bundle, steps, machine, device=device, precision=precision,
                                     progress=progress)
    return report
