"""`soundloc bench`: latency of every stage, the backends side by side, and the references."""

from __future__ import annotations

from rich.markup import escape

from pathlib import Path
from typing import Optional

import typer

from ..config import ConfigError
from ..errors import UsageError
from ..fileio import OutputError
from ..runtime.backend import BACKENDS
from .app import app, check_paths, check_range, fail


def parse_compare(compare: str) -> list[str]:
    """``a,b,c`` (or ``all``) -> backend names, checked."""
    from ..bench import COMPARE_ALL

    names = list(COMPARE_ALL) if compare.strip() == "all" else [c.strip() for c in compare.split(",") if c.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise UsageError(f"--compare takes backends from {', '.join(BACKENDS)} (or 'all'), not {compare!r}")
    return names


@app.command("bench")
def bench(
    target: list[Path] = typer.Argument(..., help="Export directory (several: e.g. fp32 and int8 exports side by side), or a .pt checkpoint (torch backend only)."),
    backend: str = typer.Option("auto", help=f"One of {', '.join(BACKENDS)}."),
    compare: Optional[str] = typer.Option(None, help="Backends to run one after another, e.g. torch,onnxruntime-cpu (or 'all')."),
    streams: int = typer.Option(1, help="Also time N streams batched through one step call."),
    warmup: float = typer.Option(2.0, help="Warm-up seconds before each measurement."),
    duration: float = typer.Option(5.0, help="Seconds each measurement runs at least."),
    min_iters: int = typer.Option(50, help="Iterations each measurement runs at least."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for every runtime (default: the runtime's)."),
    clip: Optional[Path] = typer.Option(None, help="H.264+AAC file for the decode stage (default: a generated 640x480 30 fps clip)."),
    clip_size: str = typer.Option("480p", help="The generated clip: 480p (webcam), 480p-camera, 720p or 1080p (30 fps, an IP camera's 5 Mbit/s, no B-frames)."),
    torch_dtype: str = typer.Option("fp32", help="torch backend precision: fp32, fp16 or bf16 (fp16/bf16 for a GPU; the state stays on the GPU)."),
    references: bool = typer.Option(True, "--references/--no-references", help="Window-recompute, offline floor, matmul peak."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure here."),
) -> None:
    """Per-stage latency (min/mean/p50/p90/p95/p99), throughput, backends, and the references."""
    from rich.console import Console

    from .. import bench as lib
    from ..fileio import write_json

    check_paths([json_out], [*target, clip])
    check_range("--threads", threads, 1)
    console = Console(width=max(Console().width, 120))
    err = Console(stderr=True)
    try:
        backends = parse_compare(compare) if compare else [backend]
        if torch_dtype not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"--torch-dtype must be one of fp32, fp16, bf16, not {torch_dtype!r}")
        if clip_size not in lib.CLIP_PRESETS:
            raise ValueError(f"--clip-size must be one of {', '.join(lib.CLIP_PRESETS)}, not {clip_size!r}")
        plan = lib.Plan(warmup, duration, min_iters)
        report = lib.run_bench(target, backends=backends, streams=streams, plan=plan, threads=threads, clip=clip,
                               clip_spec=lib.CLIP_PRESETS[clip_size], torch_dtype=torch_dtype, references=references, progress=lambda s: err.print(f"[dim]{escape(s)}[/dim]"))
    except (UsageError, ConfigError, OutputError) as e:  # not any ValueError: a failure mid-run is exit 1
        raise fail(str(e))
    console.print(lib.report_table(report))
    for line in lib.notes_lines(report):
        console.print(line, markup=False, highlight=False)
    console.print(lib.targets_table(report))
    for line in lib.summary_lines(report):
        console.print(line, markup=False, highlight=False)
    if json_out:
        write_json(lib.report_dict(report), json_out)
        console.print(f"wrote {escape(str(json_out))}")
    if not any(r.available for r in report.backends):  # nothing asked for was measured: not a success
        reasons = "; ".join(f"{r.label}: {r.reason}" for r in report.backends)
        raise fail(f"no backend could run, so no model step was measured ({reasons})", 1)
