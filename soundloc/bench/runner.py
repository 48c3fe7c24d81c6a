"""The run: every backend, the stages, the references and the issue targets, gathered into one
``BenchReport``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import FPS
from ..runtime.backend import check_backend
from ..errors import UsageError
from .targets import Target, load_model, resolve_target
from .references import matmul_peak, model_macs, time_floor, time_window_recompute
from .stages import (
    FLOOR_FRAMES,
    ClipSpec,
    STAGES,
    make_clip,
    time_decode,
    time_pipeline,
    time_step,
)
from .stats import Plan, Stats
from ..runtime.bundle import random_weights_note, read_bundle
from .system import Tegrastats, system_info

TARGET_STEP_MS = 35.0  # issue 6, 2-core CPU, full size, batch 1, onnxruntime CPU
TARGET_SPEEDUP = 20.0  # vs the window-recompute reference
TARGET_FLOOR_RATIO = 1.15  # vs the offline per-frame floor


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
    precision: str | None = None  # set when several exports (e.g. fp32 and int8) run side by side

    @property
    def label(self) -> str:
        """The backend, and the export's precision when several exports ran."""
        return f"{self.backend} {self.precision}" if self.precision else self.backend


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
    weights: str | None = None  # the random-weights warning of a `soundloc export --preset` export


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _streams(model, batch: int, plan: Plan) -> dict[str, Any]:
    """``batch`` streams through one step call: latency per call and 10 fps streams it sustains."""
    stats = time_step(model, batch, plan).stats()
    return {"batch": batch, "call": stats, "streams_per_device": round(batch * 1000 / stats.mean / FPS, 2)}


def _peak_for(model, threads: int | None) -> dict[str, Any]:
    runtime = model.backend.name  # torch, onnxruntime or tensorrt
    if runtime == "tensorrt":
        from ..runtime.onnx_backend import resolve_providers

        return matmul_peak("onnxruntime", resolve_providers("cuda"), threads)
    providers = model.backend.providers if runtime == "onnxruntime" else ("CPUExecutionProvider",)
    return matmul_peak(runtime, providers, threads)


def bench_backend(tgt: Target, backend: str, *, streams: int, plan: Plan, threads: int | None,
                  scratch: Path, references: bool, progress: Callable[[str], None], torch_dtype: str = "fp32"):
    """Load ``backend`` and measure its step (batch 1 and ``streams``), floor and matmul peak.
    Returns (result, model or None); a backend that does not load gives its reason."""
    try:
        model = load_model(tgt, backend, scratch, threads, torch_dtype)
    except Exception as e:  # any load failure is a row of the table, not a crash
        return BackendResult(backend, False, reason=_one_line(e)), None
    name = model.name
    progress(f"{backend} ({tgt.precision}): model step, batch 1 ({name})")
    step = time_step(model, 1, plan).stats()
    errors: dict[str, str] = {}
    batched = floor = peak = None
    if streams > 1:
        progress(f"{backend}: model step, {streams} streams batched")
        batched = _measure(errors, "streams", lambda: _streams(model, streams, plan))
    if references:
        progress(f"{backend}: offline floor ({FLOOR_FRAMES} frames) and matmul peak")
        floor_backend = "torch" if model.backend.name == "torch" else backend
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
        out.append(Check("p50 step latency", r.label, p50, TARGET_STEP_MS, "<=", "ms"))
        out.append(Check("speed-up vs window recompute", r.label,
                         recompute.median / p50 if recompute else None, TARGET_SPEEDUP, ">=", "x"))
        out.append(Check("step / offline per-frame floor", r.label,
                         p50 / r.floor.median if r.floor else None, TARGET_FLOOR_RATIO, "<=", "x"))
    return tuple(out)


def run_bench(target: str | Path | Sequence[str | Path], *, backends: Sequence[str] = ("auto",), streams: int = 1, plan: Plan = Plan(),
              threads: int | None = None, clip: Path | None = None, references: bool = True,
              clip_spec: ClipSpec = ClipSpec(), torch_dtype: str = "fp32", progress: Callable[[str], None] = lambda s: None) -> BenchReport:
    """Every figure of ``soundloc bench`` for ``target`` (export directory or checkpoint), or for
    several exports of one model (e.g. fp32 and int8) side by side: every backend runs on each,
    the first gives the stages and the references. ``clip_spec``: the generated decode clip
    (resolution, camera bit rate); ``torch_dtype``: the torch backend's precision."""
    if streams < 1:
        raise UsageError(f"streams must be >= 1, not {streams}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1, not {threads}")
    for b in backends:
        check_backend(b)
    with tempfile.TemporaryDirectory(prefix="soundloc-bench-") as tmp, Tegrastats() as tegra:
        targets = [Path(t) for t in target] if isinstance(target, (list, tuple)) else [Path(target)]
        parts = _collect(targets, list(backends), streams, plan, threads, clip, references, Path(tmp), progress,
                         clip_spec, torch_dtype)
    parts["system"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return BenchReport(**parts, tegrastats=tuple(tegra.lines))


def _collect(targets: list[Path], backends: list[str], streams: int, plan: Plan, threads: int | None,
             clip: Path | None, references: bool, scratch: Path, progress: Callable[[str], None],
             clip_spec: ClipSpec = ClipSpec(), torch_dtype: str = "fp32") -> dict[str, Any]:
    from ..runtime.torch_backend import prefer_passive_openmp

    prefer_passive_openmp()  # every torch figure of the run (backend, references) under one OpenMP policy
    tgts = [resolve_target(t) for t in targets]
    tgt = tgts[0]
    weights = random_weights_note(read_bundle(tgt.export).manifest) if tgt.export is not None else None
    if weights:
        progress(weights)
    system = system_info()
    clip_path = Path(clip) if clip else make_clip(scratch / "clip.mp4", clip_spec)
    progress(f"decode: {clip_path.name if clip else clip_spec.name} through StepSource")
    decode_info: dict = {}
    decode, inputs = time_decode(clip_path, plan, size=tgt.config.image_size, info=decode_info)
    stages, stages_backend, results = {"decode": decode.stats("decode")}, None, []
    for one, b in [(t, b) for t in tgts for b in backends]:
        res, model = bench_backend(one, b, streams=streams, plan=plan, threads=threads, scratch=scratch,
                                   references=references, progress=progress, torch_dtype=torch_dtype)
        res = replace(res, precision=one.precision) if len(tgts) > 1 else res
        if model is not None and stages_backend is None:
            progress(f"pipeline stages on {res.name}")
            pipe = time_pipeline(model, inputs, plan)
            stages.update({s: pipe.stats(s) for s in STAGES[1:]})
            stages["pipeline"] = pipe.stats()
            stages_backend = res.name
        if model is not None:
            model.close()
        results.append(res)
    recompute, why = None, None if references else "not asked for (--no-references)"
    if references:
        progress("reference: PyTorch eager recomputing the 3 s window every step")
        try:
            recompute = time_window_recompute(tgt.config, plan.scaled(3), threads).stats()
        except Exception as e:  # no torch on an edge box: the reference is recorded as absent
            why = _one_line(e)
    cost = _measure({}, "cost", lambda: model_macs(tgt)) or {"macs_per_step": None, "source": None}
    first = inputs[0].frame.shape if inputs else (0, 0)
    return dict(target=", ".join(str(t) for t in targets), config=tgt.config.to_dict() | {"class_names": len(tgt.config.class_names)},
                plan=plan, threads=threads, system=system, cost=cost,
                clip={"path": str(clip) if clip else "generated", "height": first[0], "width": first[1],
                      "decoder": decode_info.get("decoder", ""),
                      **({} if clip else {"generated": clip_spec.name, "bitrate": clip_spec.bitrate})},
                stages_backend=stages_backend, stages=stages, backends=tuple(results),
                recompute=recompute, recompute_reason=why, checks=checks_for(results, recompute), weights=weights)
