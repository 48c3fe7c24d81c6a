"""`soundloc doctor`: what this machine has for the GPU path, and whether it works."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, fail

COLOURS = {"pass": "green", "fail": "red", "missing": "yellow", "skip": "dim", "info": "cyan"}


@app.command("doctor")
def doctor(
    steps: int = typer.Option(20, help="Streaming steps each backend runs (state fed back) against onnxruntime CPU."),
    full: bool = typer.Option(True, "--full/--no-full", help="Also check a full-size export with random weights (needs PyTorch)."),
    precision: str = typer.Option("fp32", help="Engines (and the full-size export) in fp32 or fp16."),
    device: int = typer.Option(0, help="CUDA device for every GPU backend."),
    workdir: Optional[Path] = typer.Option(None, help="Keep the exports and engines here (default: a temporary folder)."),
    require_gpu: bool = typer.Option(False, "--require-gpu", help="Fail (exit 1) when a GPU piece is missing, not only when a check fails."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every finding here."),
) -> None:
    """Driver, CUDA, TensorRT, onnxruntime providers, JetPack, clocks; then engines built and run
    against onnxruntime on the demo and a full-size export. Exit 1 when a check fails."""
    from rich.console import Console
    from rich.markup import escape

    from ..bench.doctor import run_doctor
    from ..errors import UsageError

    console, err = Console(), Console(stderr=True)
    try:
        report = run_doctor(steps=steps, full=full, precision=precision, device=device, workdir=workdir,
                            require_gpu=require_gpu, progress=lambda s: err.print(f"[dim]{escape(s)}[/dim]"))
    except UsageError as e:  # not any ValueError: a failure mid-run is exit 1
        raise fail(str(e))
    for note in report.notes:
        console.print(f"[bold yellow]{escape(note)}[/bold yellow]")
    for f in report.findings:
        colour = COLOURS.get(f.status, "white")
        console.print(f"[{colour}]{f.status:>7}[/{colour}]  {escape(f.name)}: {escape(f.detail)}")
        if f.fix and f.status not in ("pass", "info"):
            console.print(f"           -> {escape(f.fix)}")
    failed = report.failed()
    console.print(f"{len(failed)} failed" if failed else "all checks that could run here passed")
    if json_out:
        from ..fileio import write_json

        write_json(report.as_dict(), json_out)
        console.print(f"wrote {json_out}")
    if failed:
        raise typer.Exit(1)
