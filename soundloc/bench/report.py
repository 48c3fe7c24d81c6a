"""A ``BenchReport`` shown: the JSON document, the rich tables, and the notes beside them."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from .. import __version__
from ..config import FPS
from .runner import BackendResult, BenchReport
from .stats import Stats

# -- reporting ----------------------------------------------------------------------------------


def utilisation(report: BenchReport, r: BackendResult) -> float | None:
    """Fraction of the runtime's sustained matmul FLOP/s the step reaches: 2 x MACs / time / peak."""
    macs = report.cost.get("macs_per_step")
    if not (macs and r.step and r.peak):
        return None
    return 2 * macs / (r.step.median / 1000) / (r.peak["gflops"] * 1e9)


def _throughput(stats: Stats) -> dict[str, float]:
    steps = 1000 / stats.mean
    return {"steps_per_s": round(steps, 2), "realtime_streams": round(steps / FPS, 2)}


def _backend_dict(report: BenchReport, r: BackendResult) -> dict[str, Any]:
    if not r.available:
        return {"backend": r.backend, "available": False, "reason": r.reason,
                **({"precision": r.precision} if r.precision else {})}
    util = utilisation(report, r)
    streams = None if r.streams is None else {**r.streams, "call": r.streams["call"].as_dict()}
    return {"backend": r.backend, **({"precision": r.precision} if r.precision else {}),
            "available": True, "name": r.name, "step": r.step.as_dict(),
            "throughput": _throughput(r.step), "streams": streams,
            "floor_per_frame": r.floor.as_dict() if r.floor else None, "matmul_peak": r.peak,
            "flop_utilisation": None if util is None else round(util, 4), "errors": r.errors}


def report_dict(report: BenchReport) -> dict[str, Any]:
    """The JSON document of a run (``--json``): every figure, in milliseconds unless named."""
    return {
        "soundloc_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": report.target,
        "weights": report.weights or "from a checkpoint",
        "config": report.config,
        "plan": {**asdict(report.plan), "threads": report.threads},
        "system": report.system,
        "model_cost": report.cost,
        "clip": report.clip,
        "stages_backend": report.stages_backend,
        "stages": {k: v.as_dict() for k, v in report.stages.items()},
        "backends": [_backend_dict(report, r) for r in report.backends],
        "precision_ratios": precision_ratios(report),
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
            table.add_row(r.label, "unavailable", *[""] * 7)
            continue
        table.add_row(*_row(f"{r.label} step", r.step, rate=True), end_section=False)
        if r.streams:
            table.add_row(*_row(f"{r.label} {r.streams['batch']} streams", r.streams["call"], rate=True))
        if r.floor:
            table.add_row(*_row(f"{r.label} offline/frame", r.floor, rate=True))
    table.add_row(*_row("window recompute (torch)", report.recompute, rate=True))
    return table


def precision_ratios(report: BenchReport) -> list[dict[str, Any]]:
    """Side-by-side exports: each one's step p50 (batch 1 and batched) over the first export's on
    the same backend, measured in the same run (so a shared machine's load hits both alike)."""
    first: dict[str, BackendResult] = {}
    out = []
    for r in report.backends:
        if not (r.available and r.precision):
            continue
        base = first.setdefault(r.backend, r)
        if base is r:
            continue
        ratio = {"backend": r.backend, "precision": r.precision, "versus": base.precision,
                 "p50_ratio": round(r.step.median / base.step.median, 3)}
        if r.streams and base.streams:
            ratio["batched_p50_ratio"] = round(r.streams["call"].median / base.streams["call"].median, 3)
        out.append(ratio)
    return out


def notes_lines(report: BenchReport) -> list[str]:
    """What each table row ran on, why a backend is missing, and the derived figures."""
    lines = [report.weights] if report.weights else []
    lines.append(f"the stage rows (decode ... render) are one pass of the whole pipeline on {report.stages_backend}; "
                 f"each backend's 'step' row times the model step alone, so the two model-step figures differ; "
                 f"decode: {report.clip['width']}x{report.clip['height']} H.264+AAC through StepSource "
                 f"({report.clip.get('generated') or report.clip['path']}; "
                 f"decoder: {report.clip.get('decoder') or 'not recorded'})")
    for r in report.backends:
        if not r.available:
            lines.append(f"{r.label}: unavailable: {r.reason}")
            continue
        tp, util = _throughput(r.step), utilisation(report, r)
        text = f"{r.label} = {r.name}: {tp['realtime_streams']:.1f} real-time 10 fps streams at batch 1"
        if r.streams:
            text += f", {r.streams['streams_per_device']:.1f} at batch {r.streams['batch']}"
        if util is not None:
            text += f"; {100 * util:.1f}% of {r.peak['gflops']:.0f} GFLOP/s ({r.peak['probe']})"
        lines.append(text)
        lines += [f"{r.label}: {key} not measured: {why}" for key, why in r.errors.items()]
    lines += [f"{x['backend']}: {x['precision']} step p50 = {x['p50_ratio']:.2f}x the {x['versus']} step p50 (same run)"
              for x in precision_ratios(report)]
    if report.recompute is None and report.recompute_reason:
        lines.append(f"window recompute reference not measured: {report.recompute_reason}")
    return lines


def targets_table(report: BenchReport):
    from rich.table import Table

    full = report.config.get("width") == 1.0 and tuple(report.config.get("layers", ())) == (2, 2, 2, 2)
    table = Table(title="real-time targets (set for the full-size model on onnxruntime CPU, 2 cores, batch 1)"
                        + ("" if full else "; this model is smaller, so 'met' says little about the full one"))
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
