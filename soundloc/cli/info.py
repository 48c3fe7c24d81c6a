"""`soundloc info`: what a checkpoint, an export (or the bundled demo model), or what
`soundloc train --preset X` would train, is: config, sizes, cost per step, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, check_paths, fail


@app.command("info")
def info(
    target: Optional[Path] = typer.Argument(None, help="A checkpoint (.pt), an export directory, or 'demo' (the "
                                                       "bundled model); without it, what `soundloc train` would train."),
    preset: Optional[str] = typer.Option(None, help="Describe what `soundloc train --preset NAME` trains: paper, small "
                                                    "or tiny (default: train's own default)."),
    recipe: Optional[str] = typer.Option(None, help="... with `--recipe NAME`: default or paper (default: train's own)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Print config, parameter counts and GMAC per frame; for an export, its family, precision,
    classes and where its weights came from."""
    from ..fileio import write_json

    check_paths([json_out], [target])
    if target is not None and (target.is_dir() or str(target) == "demo"):
        from ..runtime.bundle import BundleError, describe_export, print_export
        from ..runtime.run import model_path

        try:
            desc = describe_export(model_path(target))
        except BundleError as e:
            raise fail(str(e), 1)
        print_export(desc)
    else:
        from ..config import DEFAULT_PRESET, DEFAULT_RECIPE, RECIPES, ConfigError
        from ..model.summary import describe, print_description

        recipe = recipe or DEFAULT_RECIPE
        if recipe not in RECIPES:
            raise fail(f"--recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
        try:
            desc = describe(ckpt=target, preset_name=preset or DEFAULT_PRESET, recipe=recipe)
        except ConfigError as e:
            raise fail(str(e))
        if target is None:  # what the recipe trains with: its options over TrainOptions' defaults
            from ..train.types import TrainOptions

            options = TrainOptions(**RECIPES[recipe][1])
            desc["training"] = {"schedule": options.schedule, "zoom": options.zoom}
        print_description(desc)
    if json_out:
        write_json(desc, json_out)
