"""`soundloc info`: what a checkpoint (or a preset) is: config, sizes, cost per step."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, check_paths


@app.command("info")
def info(
    ckpt: Optional[Path] = typer.Argument(None, help="A soundloc checkpoint; without it, a freshly initialised preset."),
    preset: str = typer.Option("paper", help="Preset to describe when no checkpoint is given: paper, small, tiny."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Print config, parameter counts and GMAC per frame of each network."""
    from ..fileio import write_json
    from ..model.summary import describe, print_description

    check_paths([json_out], [ckpt])
    desc = describe(ckpt=ckpt, preset_name=preset)
    print_description(desc)
    if json_out:
        write_json(desc, json_out)
