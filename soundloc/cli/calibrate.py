"""`soundloc calibrate`: fit an export's in-view confidence on clips with and without a visible source."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, check_paths, check_range


@app.command("calibrate")
def calibrate(
    export_dir: Path = typer.Argument(..., help="Export directory whose soundloc.json receives the calibration."),
    data: Path = typer.Option(..., "--data", help="A `soundloc synth --profile negatives` dataset (not the one you test on)."),
    split: str = typer.Option("test", help="Split of its clips to use ('all' for every clip)."),
    false_alarm: float = typer.Option(0.10, "--false-alarm", help="Share of windows without a visible source that may still get a box."),
    threads: Optional[int] = typer.Option(1, help="CPU threads for the model."),
) -> None:
    """Calibrate the confidence that a sound's source is in view (box and label drawn only then)."""
    from ..runtime.calibration import calibrate_export

    check_paths([], [export_dir, data])
    check_range("--false-alarm", false_alarm, 0.001, 0.999)
    stored = calibrate_export(export_dir, data, split=None if split == "all" else split, target=false_alarm,
                              threads=threads)
    for name, fit in stored["visibility_candidates"].items():
        typer.echo(f"{name:10s} threshold {fit['threshold']:.3f}: keeps {fit['recall']:.1%} of visible-source windows, "
                   f"{fit['false_alarm']:.1%} of the others ({fit['windows'][0]} and {fit['windows'][1]} windows); "
                   f"on held-out clips {fit['cv_recall']:.1%}")
    typer.echo(f"stored in {export_dir}/soundloc.json: {stored['visibility']['statistic']}")
