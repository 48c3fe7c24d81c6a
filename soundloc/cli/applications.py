"""`soundloc moments` and `soundloc annotate`: the paper's applications (§5)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, check_paths, fail


def _report_skipped(skipped) -> None:
    if skipped.items:
        typer.echo(f"skipped {len(skipped.items)} clip(s):", err=True)
        for clip_id, reason in skipped.items[:10]:
            typer.echo(f"  {clip_id}: {reason}", err=True)


@app.command("moments")
def moments_command(
    ckpt: Path = typer.Argument(..., help="soundloc checkpoint."),
    folder: Path = typer.Argument(..., help="Folder of videos (or a dataset folder with videos/)."),
    k: int = typer.Option(1, "--top-k", "-k", help="Moments per clip."),
    json_out: Path = typer.Option(..., "--json", help="Output: {clip_id: [frame indices at 10 fps, best first]}."),
) -> None:
    """Top-k informative moments per clip (highest audio-visual score S_av)."""
    from ..fileio import write_json
    from ..model.inference import moments

    if k < 1:
        raise fail("--top-k must be >= 1")
    check_paths([json_out], [ckpt, folder])
    result, skipped = moments(ckpt, folder, k)
    write_json(result, json_out)
    typer.echo(f"{len(result)} clips -> {json_out}")
    _report_skipped(skipped)


@app.command("annotate")
def annotate_command(
    ckpt: Path = typer.Argument(..., help="soundloc checkpoint."),
    folder: Path = typer.Argument(..., help="Folder of videos (or a dataset folder with videos/)."),
    out: Path = typer.Option(..., "--out", "-o", help="VGG-SS format json of pseudo boxes (resumed if it exists)."),
    threshold: float = typer.Option(0.5, help="Binarisation threshold on the min-max normalised map."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Keep clips already in --out."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write counts here."),
) -> None:
    """Pseudo bounding boxes for a whole dataset, at each clip's top-1 moment."""
    from ..config import ConfigError
    from ..data.annotations import AnnotationError
    from ..errors import UsageError
    from ..fileio import OutputError, write_json
    from ..model.inference import annotate

    if not 0 <= threshold < 1:
        raise fail("--threshold must be in [0, 1)")
    check_paths([out, json_out], [ckpt, folder])  # --out is also read: the clips done so far
    try:
        entries, skipped = annotate(ckpt, folder, out, threshold=threshold, resume=resume)
    except (UsageError, AnnotationError, ConfigError, OutputError) as e:  # not any ValueError: mid-run is exit 1
        raise fail(str(e))
    boxed = sum(1 for e in entries if e["bbox"])
    typer.echo(f"{len(entries)} clips, {boxed} with a box -> {out}")
    _report_skipped(skipped)
    if json_out:
        write_json({"clips": len(entries), "with_box": boxed, "skipped": len(skipped.items)}, json_out)
