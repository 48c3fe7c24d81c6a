"""Latency benchmarking: trtexec-grade statistics for every stage of the live pipeline, the
backends side by side, and the references that say what the numbers mean.

What is measured (times in milliseconds unless named otherwise):

- **stages** of one 10 fps step, each timed apart: decode (a real H.264 + AAC clip through
  ``StepSource``: demux, decode, resample, resize), preprocess + mel (frame normalisation and
  the incremental log-mel), model step (the exact streaming step graph), localization + box
  (3 s trailing window, min-max normalisation, pseudo box) and render (``overlay`` at the
  source resolution);
- the **model step** of each backend alone, at batch 1 and batched over ``--streams`` streams;
- **references**: (1) the research-code way of making a live demo, PyTorch eager recomputing
  the whole 3 s window (30 frames) at every step; (2) the floor, the offline video + audio
  graphs on a long clip per frame, on the same runtime; (3) the machine's sustained matmul
  FLOP/s on the same runtime, which turns the step time into a FLOP utilisation.

Each measurement warms up for ``warmup_s`` seconds, then runs until both ``duration_s``
seconds and ``min_iters`` iterations have passed (trtexec's rule). Percentiles interpolate
linearly between order statistics (``percentile``). torch is imported only by the torch
backend and the references that need it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import Config

FPS_STEPS = 10  # model steps per second: the real-time rate every throughput is measured against
STAGES = ("decode", "preprocess+mel", "model step", "localization+box", "render")
BACKEND_CHOICES = ("auto", "torch", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
COMPARE_ALL = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch")  # first that loads: stages
FLOOR_FRAMES = 100  # a 10 s clip: long enough that the offline graph's edges cost nothing
MATMUL_N = 1024  # (N, N) @ (N, N): 2.1 GFLOP, large enough to reach a CPU's sustained rate
TARGET_STEP_MS = 35.0  # issue 6, 2-core CPU, full size, batch 1, onnxruntime CPU
TARGET_SPEEDUP = 20.0  # vs the window-recompute reference
TARGET_FLOOR_RATIO = 1.15  # vs the offline per-frame floor
Clock = Callable[[], float]


# -- statistics ---------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics: with the
    samples sorted as x_0..x_{n-1} and h = (n-1) q / 100, it is x_floor(h) + (h - floor(h)) *
    (x_floor(h)+1 - x_floor(h)). This is numpy's default ``method="linear"`` (Hyndman-Fan type
    7); unlike trtexec's nearest rank it does not jump between samples on short runs."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], not {q}")
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("percentile of no samples")
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@dataclass(frozen=True)
class Stats:
    """Summary of one timed quantity, in milliseconds."""

    n: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> Stats:
        ms = [1000.0 * s for s in samples]
        if not ms:
            raise ValueError("no samples to summarise")
        return cls(n=len(ms), min=min(ms), mean=sum(ms) / len(ms), median=percentile(ms, 50),
                   p90=percentile(ms, 90), p95=percentile(ms, 95), p99=percentile(ms, 99), max=max(ms))

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, **{f"{k}_ms": round(v, 4) for k, v in asdict(self).items() if k != "n"}}


# -- timing loop -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Warm up for ``warmup_s`` seconds (at least one call when > 0), then measure until both
    ``duration_s`` seconds and ``min_iters`` iterations are done."""

    warmup_s: float = 2.0
    duration_s: float = 5.0
    min_iters: int = 50

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.duration_s < 0:
            raise ValueError(f"warm-up and duration must be >= 0 s, not {self.warmup_s}, {self.duration_s}")
        if self.min_iters < 1:
            raise ValueError(f"min_iters must be >= 1, not {self.min_iters}")

    def scaled(self, min_iters: int) -> Plan:
        """The same times with another iteration floor (references whose calls take seconds)."""
        return Plan(self.warmup_s, self.duration_s, min(self.min_iters, min_iters))


class Laps:
    """Stage stopwatch for one iteration: ``laps("decode")`` closes the stage that began at the
    previous lap (or at the start of the iteration)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.start = self.last = clock()
        self.laps: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = self.clock()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now


@dataclass(frozen=True)
class Timing:
    """Raw result of ``run_timed``: per-iteration seconds, per-stage seconds, and counts."""

    samples: tuple[float, ...]
    stages: dict[str, tuple[float, ...]]
    warmup_iters: int
    wall_s: float

    def stats(self, stage: str | None = None) -> Stats:
        return Stats.from_seconds(self.samples if stage is None else self.stages[stage])


def run_timed(body: Callable[[Laps], Any], plan: Plan, clock: Clock = time.perf_counter) -> Timing:
    """Call ``body(laps)`` under ``plan``; each call's total and lapped stages are recorded."""
    start = clock()
    warm = 0
    while clock() - start < plan.warmup_s:
        body(Laps(clock))
        warm += 1
    t0 = clock()
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    while len(totals) < plan.min_iters or clock() - t0 < plan.duration_s:
        laps = Laps(clock)
        body(laps)
        totals.append(clock() - laps.start)
        for name, s in laps.laps.items():
            stages.setdefault(name, []).append(s)
    return Timing(tuple(totals), {k: tuple(v) for k, v in stages.items()}, warm, clock() - t0)


# -- inputs: a real H.264 + AAC clip ---------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """The generated benchmark clip: a webcam-like 640x480 at 30 fps, 48 kHz AAC."""

    width: int = 640
    height: int = 480
    fps: int = 30
    seconds: float = 10.0
    sample_rate: int = 48_000


def make_clip(path: Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Write a moving-pattern H.264 + AAC clip (once: reused when it exists)."""
    import av

    if path.is_file():
        return path
    n = int(spec.seconds * spec.fps)
    y, x = np.mgrid[0:spec.height, 0:spec.width]
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=spec.fps, options={"crf": "23", "preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = spec.width, spec.height, "yuv420p"
        aus = out.add_stream("aac", rate=spec.sample_rate, layout="mono")
        for i in range(n):
            img = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1).astype(np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode())
        t = np.arange(int(spec.seconds * spec.sample_rate)) / spec.sample_rate
        audio = (0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2).astype(np.float32)
        for i in range(0, len(audio), 1024):
            af = av.AudioFrame.from_ndarray(audio[None, i:i + 1024], format="flt", layout="mono")
            af.sample_rate, af.pts = spec.sample_rate, i
            out.mux(aus.encode(af))
        out.mux(aus.encode())
    os.replace(tmp, path)
    return path


class _LoopedSource:
    """Steps of a file through ``StepSource`` (the runtime's decode stage), reopened at its end."""

    def __init__(self, clip: Path) -> None:
        self.clip = clip
        self._open()

    def _open(self) -> None:
        from .runtime.sources import StepSource

        self.source = StepSource(str(self.clip), realtime=False, live=False)
        self.it = iter(self.source)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.close()
            self._open()
            return next(self.it)

    def close(self) -> None:
        self.source.close()


def time_decode(clip: Path, plan: Plan, clock: Clock = time.perf_counter) -> tuple[Timing, list]:
    """Decode stage: the wait for each next step while the consumer is idle, i.e. the capture
    thread's cost per step (file re-opens every clip length included). Also returns the first
    100 decoded steps, the inputs of the other stages."""
    src = _LoopedSource(clip)
    kept: list = []

    def body(laps: Laps) -> None:
        inp = src.next()
        laps("decode")
        if len(kept) < FLOOR_FRAMES:
            kept.append(inp)

    try:
        timing = run_timed(body, plan, clock)
    finally:
        src.close()
    return timing, kept


# -- the stages after decode, and the model step alone ------------------------------------------


def time_pipeline(model, inputs: list, plan: Plan, clock: Clock = time.perf_counter) -> Timing:
    """Preprocess + mel, model step, localization + box and render of one stream, step after
    step on decoded inputs (cycled), each stage lapped: what ``Localizer`` + a sink do."""
    from .audio import StreamingLogMel
    from .localize import TrailingWindow, normalise, pseudo_box
    from .preprocess import normalise_frame
    from .runtime.render import overlay

    mel, window = StreamingLogMel(), TrailingWindow(model.config.window_steps)
    state = [model.new_state(1)]
    valid = np.ones(1, np.float32)
    k = [0]

    def body(laps: Laps) -> None:
        inp = inputs[k[0] % len(inputs)]
        k[0] += 1
        frame = normalise_frame(inp.small)[None]
        mel.push(inp.audio)
        step_mel = mel.pop_step()[None]
        laps("preprocess+mel")
        out, state[0] = model.step(frame, step_mel, valid, state[0])
        laps("model step")
        avg = window.push(out.alpha[0])
        heat = normalise(avg)
        box = None if heat is None else pseudo_box(avg, 224, 224, 0.5)
        laps("localization+box")
        overlay(inp.frame, heat, box)
        laps("render")

    return run_timed(body, plan, clock)


def time_step(model, batch: int, plan: Plan, clock: Clock = time.perf_counter) -> Timing:
    """The model step alone for ``batch`` streams stacked on the batch axis (random inputs:
    the graph's cost does not depend on values)."""
    size = model.config.image_size
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    mels = rng.standard_normal((batch, 10, model.config.n_mels), dtype=np.float32)
    valid = np.ones(batch, np.float32)
    state = [model.new_state(batch)]

    def body(laps: Laps) -> None:
        _, state[0] = model.step(frames, mels, valid, state[0])

    return run_timed(body, plan, clock)


# -- backends --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the benchmark runs: an export directory and/or a checkpoint, and the config."""

    export: Path | None
    checkpoint: Path | None
    config: Config


def resolve_target(target: Path) -> Target:
    """An export directory (torch then runs a checkpoint of the same architecture with fresh
    weights, written to a scratch folder: weights do not change the time) or a checkpoint (the
    onnxruntime and TensorRT backends then have nothing to load)."""
    target = Path(target)
    if target.is_dir():
        from .runtime.bundle import read_bundle

        return Target(target, None, read_bundle(target).config)
    if target.is_file():
        from .model.checkpoint import read_checkpoint

        return Target(None, target, Config.from_dict(read_checkpoint(target)["config"]))
    raise ValueError(f"{target}: no such export directory or checkpoint")


def _scratch_checkpoint(config: Config, scratch: Path) -> Path:
    import torch

    from .model.checkpoint import save_checkpoint
    from .model.classifier import AVClassifier

    path = scratch / "bench-arch.pt"
    if not path.is_file():
        torch.manual_seed(0)
        save_checkpoint(path, AVClassifier(config).eval())
    return path


def load_model(tgt: Target, backend: str, scratch: Path, threads: int | None = None):
    """A ``StepModel`` on ``backend``; raises with the reason it cannot load here."""
    from .runtime.engine import StepModel

    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, not {backend!r}")
    if backend == "torch" or (backend == "auto" and tgt.export is None):
        if importlib.util.find_spec("torch") is None:
            raise RuntimeError("PyTorch is not installed (`pip install 'soundloc[train]'`)")
        ckpt = tgt.checkpoint or _scratch_checkpoint(tgt.config, scratch)
        return StepModel.load(ckpt, "torch", threads=threads)
    if tgt.export is None:
        raise RuntimeError("needs an export directory (`soundloc export CKPT --out DIR`), not a checkpoint")
    return StepModel.load(tgt.export, backend, threads=threads)


def runtime_of(model) -> str:
    """The runtime family of a loaded model: torch, onnxruntime or tensorrt."""
    return model.backend.name


# -- references --------------------------------------------------------------------------------


def time_window_recompute(config: Config, plan: Plan, threads: int | None = None,
                          clock: Clock = time.perf_counter) -> Timing:
    """Reference (1), the research-code live demo: every step, PyTorch eager runs the offline
    model on the last 3 s (30 frames, 300 mel frames) and averages the 30 maps."""
    import torch

    from .model.classifier import AVClassifier, localization_maps

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AVClassifier(config).eval()
    t, size = config.window_steps, config.image_size
    video = torch.randn(1, 3, t, size, size)
    mel = torch.randn(1, 1, 10 * t, config.n_mels)

    def body(laps: Laps) -> None:
        with torch.inference_mode():
            f = model.features(video, mel)
            localization_maps(f.V, f.za).mean(dim=1).numpy()

    return run_timed(body, plan, clock)


def time_floor(tgt: Target, backend: str, plan: Plan, threads: int | None = None,
               frames: int = FLOOR_FRAMES, clock: Clock = time.perf_counter) -> Timing:
    """Reference (2), the floor: the offline video and audio networks on a ``frames``-step clip
    on the same runtime; sample = call time / frames (seconds per frame)."""
    size, n_mels = tgt.config.image_size, tgt.config.n_mels
    rng = np.random.default_rng(0)
    video = rng.standard_normal((1, 3, frames, size, size), dtype=np.float32)
    mel = rng.standard_normal((1, 1, 10 * frames, n_mels), dtype=np.float32)
    run = _torch_offline(tgt, threads) if backend == "torch" else _export_offline(tgt, backend, threads)

    def body(laps: Laps) -> None:
        run(video, mel)

    timing = run_timed(body, plan, clock)
    per = tuple(s / frames for s in timing.samples)
    return Timing(per, {}, timing.warmup_iters, timing.wall_s)


def _torch_offline(tgt: Target, threads: int | None) -> Callable[[np.ndarray, np.ndarray], None]:
    import torch

    from .model.classifier import AVClassifier

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AVClassifier(tgt.config).eval()

    def run(video: np.ndarray, mel: np.ndarray) -> None:
        with torch.inference_mode():
            model.video(torch.from_numpy(video))
            model.audio(torch.from_numpy(mel))

    return run


def _export_offline(tgt: Target, backend: str, threads: int | None) -> Callable[[np.ndarray, np.ndarray], None]:
    from .runtime.bundle import read_bundle
    from .runtime.engine import open_backend

    bundle = read_bundle(tgt.export, verify_files=False)
    video_net = open_backend(bundle, "video", backend, threads)
    audio_net = open_backend(bundle, "audio", backend, threads)

    def run(video: np.ndarray, mel: np.ndarray) -> None:
        video_net.run({"video": video})
        audio_net.run({"mel": mel})

    return run


def matmul_peak(runtime: str, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                n: int = MATMUL_N, plan: Plan = Plan(0.5, 2.0, 5)) -> dict[str, Any]:
    """Reference (3): sustained fp32 matmul FLOP/s of (n, n) @ (n, n) on the same runtime:
    an onnxruntime MatMul graph (same providers and threads) or ``torch.matmul``. ``gflops``
    from the median call (what utilisation uses), ``gflops_best`` from the fastest."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if runtime == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        run, how = (lambda: torch.matmul(ta, tb)), f"torch.matmul {n}x{n} fp32"
    elif runtime == "onnxruntime":
        sess = _matmul_session(b, list(providers), threads)
        run, how = (lambda: sess.run(None, {"A": a})), f"onnxruntime MatMul {n}x{n} fp32 on {providers[0]}"
    else:
        raise ValueError(f"no matmul probe for runtime {runtime!r}")
    stats = run_timed(lambda laps: run(), plan).stats()
    flop = 2 * n ** 3
    return {"gflops": round(flop / stats.median * 1e3 / 1e9, 2), "gflops_best": round(flop / stats.min * 1e3 / 1e9, 2),
            "probe": how, "median_ms": round(stats.median, 3)}


def _matmul_session(b: np.ndarray, providers: list[str], threads: int | None):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = b.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul_peak",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
        initializer=[numpy_helper.from_array(b, "B")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = min(proto.ir_version, 9)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=providers)


# -- model cost ----------------------------------------------------------------------------------


def onnx_macs(path: Path) -> int:
    """MACs of one call of an ONNX graph at batch 1, from its Conv/ConvTranspose/MatMul/Gemm/
    Einsum nodes and shapes from ONNX shape inference (every dynamic dim set to 1)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {i.name: list(numpy_helper.to_array(i).shape) for i in model.graph.initializer}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return sum(_node_macs(node, shapes) for node in model.graph.node)


def _node_macs(node, shapes: dict[str, list]) -> int:
    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    ins = [known(n) for n in node.input]
    out = known(node.output[0]) if node.output else None
    if node.op_type in ("Conv", "ConvTranspose") and out and len(ins) > 1 and ins[1]:
        w = ins[1]  # (Cout, Cin/groups, k...) for Conv; macs = |out| * Cin/groups * prod(k)
        per = math.prod(w[1:]) if node.op_type == "Conv" else w[0] * math.prod(w[2:]) // max(1, out[1])
        return math.prod(out) * per
    if node.op_type in ("MatMul", "Gemm") and out and ins and ins[0]:
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        k = ins[0][-2] if trans_a else ins[0][-1]
        return math.prod(out) * k
    if node.op_type == "Einsum" and all(ins):
        eq = next(a.s.decode() for a in node.attribute if a.name == "equation").replace(" ", "")
        sizes: dict[str, int] = {}
        for term, shape in zip(eq.split("->")[0].split(","), ins):
            sizes.update(zip(term, shape))
        return math.prod(sizes.values())
    return 0


def model_macs(tgt: Target) -> dict[str, Any]:
    """MACs per step: counted on the export's step graph when there is one, else (checkpoint)
    by torch hooks on the offline model (per step of a 16-step clip); says which."""
    if tgt.export is not None:
        from .runtime.bundle import read_bundle

        bundle = read_bundle(tgt.export, verify_files=False)
        macs = {"step": onnx_macs(bundle.path("step"))}
        return {"macs_per_step": macs["step"], "gmac_per_step": round(macs["step"] / 1e9, 3),
                "source": "onnx step graph (Conv/MatMul/Gemm/Einsum, shape inference)"}
    import torch

    from .model.checkpoint import load_checkpoint
    from .model.cost import macs_per_step

    model, _ = load_checkpoint(tgt.checkpoint)
    with torch.no_grad():
        parts = macs_per_step(model, tgt.config)
    total = int(sum(parts.values()))
    return {"macs_per_step": total, "gmac_per_step": round(total / 1e9, 3),
            "source": "torch forward hooks on the offline model (soundloc.model.cost)"}


# -- the machine -----------------------------------------------------------------------------------


def _command(args: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a command, or None when it is absent or fails (never raises)."""
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info() -> dict[str, Any]:
    """Device, CPU, threads, runtime versions; GPU, driver, TensorRT and Jetson power state
    where present (absent: None). Load average too: a busy machine explains slow numbers."""
    ort_info = None
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        ort_info = {"version": ort.__version__, "providers_built": ort.get_available_providers()}
    gpu = _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    jetson = Path("/etc/nv_tegra_release")
    return {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__, "onnxruntime": ort_info, "torch": _version("torch"),
        "gpu": gpu.splitlines() if gpu else None,
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"),
        "jetson": {"release": jetson.read_text().splitlines()[0] if jetson.is_file() else None,
                   "nvpmodel": _command(["nvpmodel", "-q"]),
                   "jetson_clocks": _command(["jetson_clocks", "--show"])} if jetson.is_file() else None,
    }


class Tegrastats:
    """Samples ``tegrastats`` (Jetson power, clocks, load) in the background while a benchmark
    runs; ``lines`` is empty where it does not exist."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.interval_ms = interval_ms
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def __enter__(self) -> Tegrastats:
        if shutil.which("tegrastats"):
            self.proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.lines = out.strip().splitlines()


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendResult:
    """One backend's figures; ``reason`` says why it did not load (``available`` False)."""

    backend: str
    available: bool
    name: str | None = None
    reason: str | None = None
    step: Stats | None = None
    streams: dict[str, Any] | None = None
    floor: Stats | None = None  # offline graphs, ms per frame
    peak: dict[str, Any] | None = None
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One issue target: ``achieved`` compared with ``limit`` by ``op``."""

    name: str
    backend: str
    achieved: float | None
    limit: float
    op: str  # "<=" or ">="
    unit: str

    @property
    def met(self) -> bool | None:
        if self.achieved is None:
            return None
        return self.achieved <= self.limit if self.op == "<=" else self.achieved >= self.limit


@dataclass(frozen=True)
class BenchReport:
    target: str
    config: dict[str, Any]
    plan: Plan
    threads: int | None
    system: dict[str, Any]
    cost: dict[str, Any]
    clip: dict[str, Any]
    stages_backend: str | None
    stages: dict[str, Stats]
    backends: tuple[BackendResult, ...]
    recompute: Stats | None
    recompute_reason: str | None
    checks: tuple[Check, ...]
    tegrastats: tuple[str, ...] = ()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _streams(model, batch: int, plan: Plan) -> dict[str, Any]:
    """``batch`` streams through one step call: latency per call and 10 fps streams it sustains."""
    stats = time_step(model, batch, plan).stats()
    return {"batch": batch, "call": stats, "streams_per_device": round(batch * 1000 / stats.mean / FPS_STEPS, 2)}


def _peak_for(model, threads: int | None) -> dict[str, Any]:
    runtime = runtime_of(model)
    if runtime == "tensorrt":
        from .runtime.onnx_backend import resolve_providers

        return matmul_peak("onnxruntime", resolve_providers("cuda"), threads)
    providers = model.backend.providers if runtime == "onnxruntime" else ("CPUExecutionProvider",)
    return matmul_peak(runtime, providers, threads)


def bench_backend(tgt: Target, backend: str, *, streams: int, plan: Plan, threads: int | None,
                  scratch: Path, references: bool, progress: Callable[[str], None]):
    """Load ``backend`` and measure its step (batch 1 and ``streams``), floor and matmul peak.
    Returns (result, model or None); a backend that does not load gives its reason."""
    try:
        model = load_model(tgt, backend, scratch, threads)
    except Exception as e:  # any load failure is a row of the table, not a crash
        return BackendResult(backend, False, reason=_one_line(e)), None
    name = model.name
    progress(f"{backend}: model step, batch 1 ({name})")
    step = time_step(model, 1, plan).stats()
    errors: dict[str, str] = {}
    batched = floor = peak = None
    if streams > 1:
        progress(f"{backend}: model step, {streams} streams batched")
        batched = _measure(errors, "streams", lambda: _streams(model, streams, plan))
    if references:
        progress(f"{backend}: offline floor ({FLOOR_FRAMES} frames) and matmul peak")
        floor_backend = "torch" if runtime_of(model) == "torch" else backend
        floor = _measure(errors, "floor", lambda: time_floor(tgt, floor_backend, plan.scaled(3), threads).stats())
        peak = _measure(errors, "peak", lambda: _peak_for(model, threads))
    return BackendResult(backend, True, name, None, step, batched, floor, peak, errors), model


def _measure(errors: dict[str, str], key: str, fn: Callable[[], Any]) -> Any:
    """An optional reference: its value, or None with the reason kept in ``errors``."""
    try:
        return fn()
    except Exception as e:  # a missing optional runtime must not sink the other figures
        errors[key] = _one_line(e)
        return None


def checks_for(results: Sequence[BackendResult], recompute: Stats | None) -> tuple[Check, ...]:
    """The issue's targets for every backend that ran (they are set for onnxruntime CPU)."""
    out = []
    for r in results:
        if r.step is None:
            continue
        p50 = r.step.median
        out.append(Check("p50 step latency", r.backend, p50, TARGET_STEP_MS, "<=", "ms"))
        out.append(Check("speed-up vs window recompute", r.backend,
                         recompute.median / p50 if recompute else None, TARGET_SPEEDUP, ">=", "x"))
        out.append(Check("step / offline per-frame floor", r.backend,
                         p50 / r.floor.median if r.floor else None, TARGET_FLOOR_RATIO, "<=", "x"))
    return tuple(out)


def run_bench(target: str | Path, *, backends: Sequence[str] = ("auto",), streams: int = 1, plan: Plan = Plan(),
              threads: int | None = None, clip: Path | None = None, references: bool = True,
              progress: Callable[[str], None] = lambda s: None) -> BenchReport:
    """Every figure of ``soundloc bench`` for ``target`` (export directory or checkpoint)."""
    if streams < 1:
        raise ValueError(f"streams must be >= 1, not {streams}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    for b in backends:
        if b not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, not {b!r}")
    with tempfile.TemporaryDirectory(prefix="soundloc-bench-") as tmp, Tegrastats() as tegra:
        parts = _collect(Path(target), list(backends), streams, plan, threads, clip, references, Path(tmp), progress)
    parts["system"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return BenchReport(**parts, tegrastats=tuple(tegra.lines))


def _collect(target: Path, backends: list[str], streams: int, plan: Plan, threads: int | None, clip: Path | None,
             references: bool, scratch: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    tgt = resolve_target(target)
    system = system_info()
    clip_path = Path(clip) if clip else make_clip(scratch / "clip.mp4")
    progress(f"decode: {clip_path.name} through StepSource")
    decode, inputs = time_decode(clip_path, plan)
    stages, stages_backend, results = {"decode": decode.stats("decode")}, None, []
    for b in backends:
        res, model = bench_backend(tgt, b, streams=streams, plan=plan, threads=threads, scratch=scratch,
                                   references=references, progress=progress)
        if model is not None and stages_backend is None:
            progress(f"pipeline stages on {res.name}")
            pipe = time_pipeline(model, inputs, plan)
            stages.update({s: pipe.stats(s) for s in STAGES[1:]})
            stages["pipeline"] = pipe.stats()
            stages_backend = res.name
        if model is not None:
            model.close()
        results.append(res)
    recompute, why = None, None
    if references:
        progress("reference: PyTorch eager recomputing the 3 s window every step")
        try:
            recompute = time_window_recompute(tgt.config, plan.scaled(3), threads).stats()
        except Exception as e:  # no torch on an edge box: the reference is recorded as absent
            why = _one_line(e)
    cost = _measure({}, "cost", lambda: model_macs(tgt)) or {"macs_per_step": None, "source": None}
    first = inputs[0].frame.shape if inputs else (0, 0)
    return dict(target=str(target), config=tgt.config.to_dict() | {"class_names": len(tgt.config.class_names)},
                plan=plan, threads=threads, system=system, cost=cost,
                clip={"path": str(clip) if clip else "generated", "height": first[0], "width": first[1]},
                stages_backend=stages_backend, stages=stages, backends=tuple(results),
                recompute=recompute, recompute_reason=why, checks=checks_for(results, recompute))


# -- reporting ----------------------------------------------------------------------------------


def utilisation(report: BenchReport, r: BackendResult) -> float | None:
    """Fraction of the runtime's sustained matmul FLOP/s the step reaches: 2 x MACs / time / peak."""
    macs = report.cost.get("macs_per_step")
    if not (macs and r.step and r.peak):
        return None
    return 2 * macs / (r.step.median / 1000) / (r.peak["gflops"] * 1e9)


def _throughput(stats: Stats) -> dict[str, float]:
    steps = 1000 / stats.mean
    return {"steps_per_s": round(steps, 2), "realtime_streams": round(steps / FPS_STEPS, 2)}


def _backend_dict(report: BenchReport, r: BackendResult) -> dict[str, Any]:
    if not r.available:
        return {"backend": r.backend, "available": False, "reason": r.reason}
    util = utilisation(report, r)
    streams = None if r.streams is None else {**r.streams, "call": r.streams["call"].as_dict()}
    return {"backend": r.backend, "available": True, "name": r.name, "step": r.step.as_dict(),
            "throughput": _throughput(r.step), "streams": streams,
            "floor_per_frame": r.floor.as_dict() if r.floor else None, "matmul_peak": r.peak,
            "flop_utilisation": None if util is None else round(util, 4), "errors": r.errors}


def report_dict(report: BenchReport) -> dict[str, Any]:
    """The JSON document of a run (``--json``): every figure, in milliseconds unless named."""
    return {
        "soundloc_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": report.target,
        "config": report.config,
        "plan": {**asdict(report.plan), "threads": report.threads},
        "system": report.system,
        "model_cost": report.cost,
        "clip": report.clip,
        "stages_backend": report.stages_backend,
        "stages": {k: v.as_dict() for k, v in report.stages.items()},
        "backends": [_backend_dict(report, r) for r in report.backends],
        "references": {"window_recompute": {
            "what": "PyTorch eager, offline model on the last 30 frames at every step",
            "step": report.recompute.as_dict() if report.recompute else None,
            "reason": report.recompute_reason}},
        "targets": [{**asdict(c), "met": c.met} for c in report.checks],
        "tegrastats": list(report.tegrastats),
    }


def _row(label: str, s: Stats | None, rate: bool = False) -> list[str]:
    if s is None:
        return [label] + [""] * 8
    cells = (f"{v:.2f}" for v in (s.min, s.mean, s.median, s.p90, s.p95, s.p99))
    return [label, str(s.n), *cells, f"{1000 / s.mean:.1f}" if rate else ""]


def report_table(report: BenchReport):
    """One rich table: shared stages, each backend's step, streams and floor, the reference.
    Names, reasons and ratios follow in ``notes_lines``."""
    from rich.table import Table

    table = Table(title=f"soundloc bench {report.target}: ms per step")
    for col in ("", "n", "min", "mean", "p50", "p90", "p95", "p99", "steps/s"):
        table.add_column(col, justify="left" if not col else "right")
    for stage, s in report.stages.items():
        table.add_row(*_row(stage if stage != "pipeline" else "all but decode", s, rate=stage == "pipeline"))
    for r in report.backends:
        if not r.available:
            table.add_row(r.backend, "unavailable", *[""] * 7)
            continue
        table.add_row(*_row(f"{r.backend} step", r.step, rate=True), end_section=False)
        if r.streams:
            table.add_row(*_row(f"{r.backend} {r.streams['batch']} streams", r.streams["call"], rate=True))
        if r.floor:
            table.add_row(*_row(f"{r.backend} offline/frame", r.floor, rate=True))
    table.add_row(*_row("window recompute (torch)", report.recompute, rate=True))
    return table


def notes_lines(report: BenchReport) -> list[str]:
    """What each table row ran on, why a backend is missing, and the derived figures."""
    lines = [f"model step stage measured on {report.stages_backend}; decode: {report.clip['width']}x"
             f"{report.clip['height']} H.264+AAC through StepSource ({report.clip['path']})"]
    for r in report.backends:
        if not r.available:
            lines.append(f"{r.backend}: unavailable: {r.reason}")
            continue
        tp, util = _throughput(r.step), utilisation(report, r)
        text = f"{r.backend} = {r.name}: {tp['realtime_streams']:.1f} real-time 10 fps streams at batch 1"
        if r.streams:
            text += f", {r.streams['streams_per_device']:.1f} at batch {r.streams['batch']}"
        if util is not None:
            text += f"; {100 * util:.1f}% of {r.peak['gflops']:.0f} GFLOP/s ({r.peak['probe']})"
        lines.append(text)
        lines += [f"{r.backend}: {key} not measured: {why}" for key, why in r.errors.items()]
    if report.recompute is None:
        lines.append(f"window recompute reference not measured: {report.recompute_reason}")
    return lines


def targets_table(report: BenchReport):
    from rich.table import Table

    table = Table(title="issue 6 targets (set for onnxruntime CPU, 2 cores, full size, batch 1)")
    for col in ("target", "backend", "achieved", "limit", "met"):
        table.add_column(col)
    for c in report.checks:
        got = "n/a" if c.achieved is None else f"{c.achieved:.2f} {c.unit}"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}[c.met]
        table.add_row(c.name, c.backend, got, f"{c.op} {c.limit:g} {c.unit}", met)
    return table


def summary_lines(report: BenchReport) -> list[str]:
    """Plain-text facts beside the tables: cost, machine, plan (a busy machine is said)."""
    s, cost = report.system, report.cost
    gmac = cost.get("gmac_per_step")
    busy = s["load_avg"] and s["cpus_usable"] and max(s["load_avg"][0], s["load_avg_end"][0]) > 0.5 * s["cpus_usable"]
    warn = [f"warning: the machine was busy (load {s['load_avg']} -> {s['load_avg_end']} on {s['cpus_usable']} "
            "CPUs): other processes shared the cores, so these times are pessimistic"] if busy else []
    return warn + [
        f"model: {gmac} GMAC per step ({cost.get('source')})" if gmac is not None else "model: MACs not counted",
        f"machine: {s['cpu_model']}, {s['cpus_usable']} usable CPUs, load {s['load_avg']}; "
        f"onnxruntime {(s['onnxruntime'] or {}).get('version')}; torch {s['torch']}; GPU {s['gpu']}; "
        f"TensorRT {s['tensorrt']}",
        f"plan: warm-up {report.plan.warmup_s} s, then >= {report.plan.duration_s} s and >= "
        f"{report.plan.min_iters} iterations; threads {report.threads or 'runtime default'}",
    ]
