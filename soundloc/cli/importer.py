"""`soundloc import FAMILY CKPT --out MODEL.pt`: a published model's checkpoint -> a soundloc
checkpoint that export, stream, bench, eval, moments and annotate take like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..families import EZVSL_PRIOR_ALPHA
from .app import app, check_paths, check_range

importer = typer.Typer(help="Import a published localizer's checkpoint (ezvsl).", no_args_is_help=True)
app.add_typer(importer, name="import")


@importer.command("ezvsl")
def ezvsl(
    ckpt: Path = typer.Argument(..., help="EZ-VSL checkpoint from its authors (best.pth: {'model': state_dict, ...})."),
    out: Path = typer.Option(..., "--out", "-o", help="soundloc checkpoint (.pt) to write."),
    object_prior: Optional[Path] = typer.Option(None, help="torchvision's ImageNet resnet18 weights (.pth): blend "
                                                "EZ-VSL's object prior into the maps, as its best numbers do."),
    alpha: float = typer.Option(EZVSL_PRIOR_ALPHA, help="With --object-prior: alpha * map + (1 - alpha) * prior."),
) -> None:
    """Convert an EZ-VSL checkpoint (16 kHz audio, 224 px frames) into a soundloc model."""
    from ..model.published import import_ezvsl

    check_range("--alpha", alpha, 0.0, 1.0)
    check_paths([out], [ckpt, object_prior])
    source = import_ezvsl(ckpt, out, object_prior, alpha)
    prior = f", object prior {source['object_prior']['file']} (alpha {alpha:g})" if object_prior else ""
    typer.echo(f"wrote {out}: EZ-VSL from {source['file']}{prior}")
