"""`soundloc moments` and `soundloc annotate`: the paper's applications (§5)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, check_paths, fail


def check_preprocess(preprocess: Optional[str]) -> None:
    """--preprocess names one of the offline input paths (soundloc.authors)."""
    from ..config import PREPROCESSING

    if preprocess is not None and preprocess not in PREPROCESSING:
        raise fail(f"--preprocess must be one of {', '.join(PREPROCESSING)}, not {preprocess!r}")


def _report_skipped(skipped) -> None:
    if skipped.items:
        typer.echo(f"skipped {len(skipped.items)} clip(s):", err=True)
        for clip_id, reason in skipped.items[:10]:
            typer.echo(f"  {clip_id}: {reason}", err=True)


@app.command("moments")
def moments_command(
    ckpt: Path = typer.Argument(..., help="soundloc checkpoint."),
    folder: Path = typer.Argument(..., help="Folder of videos (or a dataset folder with videos/, or the authors' "
                                            "frames/ + audio/ layout: <id>.jpg + <id>.wav)."),
    k: int = typer.Option(1, "--top-k", "-k", help="Moments per clip."),
    preprocess: Optional[str] = typer.Option(None, "--preprocess", help="soundloc (the default path) or authors (a "
                                             "published family's own frame resize, audio loader and map upsampling); "
                                             "default: what the model recorded at import."),
    json_out: Path = typer.Option(..., "--json", help="Output: {clip_id: [{time_s, frame, score}, best first]}: seconds from the clip's start, the 10 fps frame index, the audio-visual score (docs/outputs.md)."),
) -> None:
    """Top-k informative moments per clip (highest audio-visual score S_av)."""
    from ..fileio import write_json
    from ..model.inference import moments

    if k < 1:
        raise fail("--top-k must be >= 1")
    check_paths([json_out], [ckpt, folder])
    check_preprocess(preprocess)
    result, skipped = moments(ckpt, folder, k, preprocess=preprocess)
    write_json(result, json_out)
    typer.echo(f"{len(result)} clips -> {json_out}")
    for clip_id, best in list(result.items())[:3]:
        typer.echo(f"  {clip_id}: " + ", ".join(f"{m['time_s']:.1f} s (score {m['score']:.3g})" for m in best))
    _report_skipped(skipped)


@app.command("annotate")
def annotate_command(
    ckpt: Path = typer.Argument(..., help="soundloc checkpoint."),
    folder: Path = typer.Argument(..., help="Folder of videos (or a dataset folder with videos/, or the authors' "
                                            "frames/ + audio/ layout: <id>.jpg + <id>.wav)."),
    out: Path = typer.Option(..., "--out", "-o", help="VGG-SS format json of pseudo boxes (resumed if it exists)."),
    threshold: float = typer.Option(0.5, help="Binarisation threshold on the min-max normalised map."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Keep clips already in --out."),
    preprocess: Optional[str] = typer.Option(None, "--preprocess", help="soundloc (the default path) or authors (a "
                                             "published family's own frame resize, audio loader and map upsampling); "
                                             "default: what the model recorded at import."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write counts here."),
) -> None:
    """Pseudo bounding boxes for a whole dataset, at each clip's top-1 moment, with the model's predicted class."""
    from ..config import ConfigError
    from ..data.annotations import AnnotationError
    from ..errors import UsageError
    from ..fileio import OutputError, write_json
    from ..model.inference import annotate

    if not 0 <= threshold < 1:
        raise fail("--threshold must be in [0, 1)")
    check_preprocess(preprocess)
    check_paths([out, json_out], [ckpt, folder], updates=[out])  # --out is also read: the clips done so far
    existed = out.exists()
    try:
        entries, skipped = annotate(ckpt, folder, out, threshold=threshold, resume=resume, preprocess=preprocess)
    except (UsageError, AnnotationError, ConfigError, OutputError) as e:  # not any ValueError: mid-run is exit 1
        raise fail(str(e))
    boxed = sum(1 for e in entries if e.get("bbox"))
    if not entries and existed:
        typer.echo(f"no clip annotated: {out} is left as it was")
    else:
        typer.echo(f"{len(entries)} clips, {boxed} with a box -> {out}")
        typer.echo("each entry's 'class' is the model's predicted class (its audio-visual head's top-1), "
                   "not a ground-truth label ('class_source': 'predicted')")
    _report_skipped(skipped)
    if json_out:
        write_json({"clips": len(entries), "with_box": boxed, "skipped": len(skipped.items)}, json_out)
