"""`soundloc synth OUT_DIR`: render the synthetic audio-visual benchmark (soundloc.data.synth)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from .app import app, check_paths, fail


@app.command("synth")
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write videos/, vggsound.csv, vggss.json, tracks.json, intervals.json into."),
    clips: int = typer.Option(400, "--clips", help="Number of clips."),
    seed: int = typer.Option(0, "--seed", help="Random seed; same seed, same dataset."),
    seconds: float = typer.Option(10.0, "--seconds", help="Clip length in seconds (multiple of 0.1)."),
    classes: int = typer.Option(10, "--classes", help="Number of classes (2-64)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of clips in the 'test' split."),
    size: int = typer.Option(160, "--size", help="Frame width and height in pixels."),
    workers: int = typer.Option(0, "--workers", help="Processes (0 = all cores)."),
    profile: str = typer.Option("default", "--profile", help="default; shift (smaller objects, clutter, motion, 24/25/30 fps, 44.1/48 kHz stereo); heldout (new textures, decoy shapes, bursts/chirps/clicks, off-screen noise: for final figures only); varied (training data: any object in any training texture, 4-45 % of the frame); negatives (half the test clips without a visible source: off-screen, occluded, noise, silence)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary (counts, seconds, clips/min) here."),
    force: bool = typer.Option(False, "--force", help="Write into a folder that is not empty (files of the same names are replaced)."),
) -> None:
    """Render a synthetic benchmark: several objects per clip, one of them sounding."""
    from ..data.synth import SynthError, make_synthetic_dataset

    check_paths([json_out], dirs=[out_dir])
    console = Console()
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("clips", total=clips)
        try:
            summary = make_synthetic_dataset(
                out_dir, num_clips=clips, seed=seed, seconds=seconds, num_classes=classes,
                val_fraction=val_fraction, workers=workers or None, size=size,
                progress=lambda done, total: bar.update(task, completed=done), force=force, profile=profile,
            )
        except SynthError as e:
            raise fail(str(e)) from None
    rate = summary.num_clips / max(summary.seconds_elapsed, 1e-9) * 60
    console.print(
        f"wrote {summary.num_clips} clips ({summary.num_train} train, {summary.num_test} test, "
        f"{summary.num_with_silence} with silent gaps, {summary.num_classes} classes) to {summary.out_dir} "
        f"in {summary.seconds_elapsed:.1f} s ({rate:.0f} clips/min)"
    )
    if json_out is not None:
        import dataclasses

        from ..fileio import write_json

        record = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(summary).items()}
        write_json({**record, "clips_per_minute": round(rate, 1)}, json_out)
