"""`soundloc import FAMILY CKPT --out MODEL.pt`: a published model's checkpoint -> a soundloc
checkpoint that export, stream, bench, eval, moments and annotate take like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..families import EZVSL_PRIOR_ALPHA, FAMILIES
from .app import app, check_paths, check_range, fail

importer = typer.Typer(help="Import a published localizer's checkpoint (ezvsl, fnac, slavc, lvs, sslalign).", no_args_is_help=True)
app.add_typer(importer, name="import")

PREPROCESS_HELP = ("soundloc (default: the fastest faithful path) or authors (their PIL bicubic frame resize, audio "
                   "loader and map upsampling) for eval, moments and annotate; recorded in the model.")


def _out() -> Any:
    return typer.Option(..., "--out", "-o", help="soundloc checkpoint (.pt) to write.")


def _preprocess() -> Any:
    return typer.Option("soundloc", help=PREPROCESS_HELP)


def _object_prior(how: str) -> Any:
    return typer.Option(None, help=f"torchvision's ImageNet resnet18 weights (.pth): blend {how}.")


def _alpha() -> Any:
    return typer.Option(EZVSL_PRIOR_ALPHA, help="With --object-prior: alpha * map + (1 - alpha) * prior.")


def _import(family: str, ckpt: Path, out: Path, object_prior: Optional[Path], alpha: float, preprocess: str,
            variant: str) -> None:
    from ..config import PREPROCESSING
    from ..model.published import TITLES, import_ezvsl

    check_range("--alpha", alpha, 0.0, 1.0)
    if preprocess not in PREPROCESSING:
        raise fail(f"--preprocess must be one of {', '.join(PREPROCESSING)}, not {preprocess!r}")
    if variant and variant not in FAMILIES[family].variants:
        raise fail(f"--variant must be one of {', '.join(FAMILIES[family].variants)}, not {variant!r}")
    check_paths([out], [ckpt, object_prior])
    source = import_ezvsl(ckpt, out, object_prior, alpha, family, preprocess, variant)
    prior = f", object prior {source['object_prior']['file']} (alpha {alpha:g})" if object_prior else ""
    typer.echo(f"wrote {out}: {TITLES[family]} from {source['file']} (sha256 {source['sha256'][:12]}){prior}; "
               f"variant {source['variant']}, preprocessing {source['preprocess']}")


@importer.command("ezvsl")
def ezvsl(
    ckpt: Path = typer.Argument(..., help="EZ-VSL checkpoint from its authors (best.pth: {'model': state_dict, ...})."),
    out: Path = _out(),
    object_prior: Optional[Path] = _object_prior("EZ-VSL's object prior into the maps, as its best numbers do"),
    alpha: float = _alpha(),
    preprocess: str = _preprocess(),
) -> None:
    """Convert an EZ-VSL checkpoint (16 kHz audio, 224 px frames) into a soundloc model."""
    _import("ezvsl", ckpt, out, object_prior, alpha, preprocess, "")


@importer.command("fnac")
def fnac(
    ckpt: Path = typer.Argument(..., help="FNAC-AVL checkpoint from its authors (best.pth: {'model': state_dict, ...})."),
    out: Path = _out(),
    object_prior: Optional[Path] = _object_prior("the object prior into the maps, as its test.py does (AV_Obj)"),
    alpha: float = _alpha(),
    variant: str = typer.Option("bilinear", help="The map its test.py scores: bilinear (validate) or bicubic "
                                                 "(validate2) upsampling of the 7x7 map (with --preprocess authors)."),
    preprocess: str = _preprocess(),
) -> None:
    """Convert a FNAC-AVL checkpoint (EZ-VSL's networks; 16 kHz audio, 224 px frames) into a soundloc model."""
    _import("fnac", ckpt, out, object_prior, alpha, preprocess, variant)


@importer.command("slavc")
def slavc(
    ckpt: Path = typer.Argument(..., help="SLAVC checkpoint from its authors (latest.pth: {'model': state_dict, ...}, "
                                          "online and momentum encoders)."),
    out: Path = _out(),
    object_prior: Optional[Path] = _object_prior("the object prior into the maps, as its test.py does (av_obj)"),
    alpha: float = _alpha(),
    variant: str = typer.Option("online", help="Which encoders make the maps: online, or momentum (its test.py's "
                                               "--use_mom_eval)."),
    preprocess: str = _preprocess(),
) -> None:
    """Convert a SLAVC checkpoint (two heads averaged; 16 kHz audio, 224 px frames) into a soundloc model."""
    _import("slavc", ckpt, out, object_prior, alpha, preprocess, variant)


@importer.command("lvs")
def lvs(
    ckpt: Path = typer.Argument(..., help="LVS checkpoint from its authors ({'model_state_dict': state_dict, ...}, "
                                          "keys maybe prefixed module.)."),
    out: Path = _out(),
    preprocess: str = _preprocess(),
) -> None:
    """Convert an LVS checkpoint (14x14 maps, 10 s of 16 kHz audio, 224 px frames) into a soundloc model."""
    _import("lvs", ckpt, out, None, EZVSL_PRIOR_ALPHA, preprocess, "")


@importer.command("sslalign")
def sslalign(
    ckpt: Path = typer.Argument(..., help="SSL-Align checkpoint from its authors ({'model_state_dict': state_dict, "
                                          "...}: LVS's network)."),
    out: Path = _out(),
    variant: str = typer.Option("vggss", help="The map its test.py scores: vggss (cv2 resize, pixel centres) or "
                                              "flickr (bilinear, align_corners) upsampling of the 14x14 map "
                                              "(with --preprocess authors)."),
    object_prior: Optional[Path] = _object_prior("the 7x7 object prior into the 14x14 maps, as its test.py's "
                                                 "OGL results do"),
    alpha: float = _alpha(),
    preprocess: str = _preprocess(),
) -> None:
    """Convert an SSL-Align checkpoint (LVS's network; 14x14 maps, 3 s of 16 kHz audio) into a soundloc model."""
    _import("sslalign", ckpt, out, object_prior, alpha, preprocess, variant)
