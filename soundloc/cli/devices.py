"""`soundloc devices`: list cameras and microphones usable as stream sources."""

from __future__ import annotations

import typer

from .app import app


@app.command("devices")
def devices() -> None:
    """List cameras and microphones (spec strings to pass to `soundloc stream`)."""
    from ..runtime.sources import list_devices

    found = list_devices()
    for d in found:
        if d["kind"] == "hint":
            typer.echo(f"{d['spec']}: {d['name']}")
        else:
            typer.echo(f"{d['kind']:<11} {d['spec']:<24} {d['name']}")
    if not any(d["kind"] in ("camera", "microphone") for d in found):
        typer.echo("no cameras/microphones found; to try without hardware use lavfi test sources, e.g.\n"
                   "  video: lavfi:testsrc=size=320x240:rate=30   audio: lavfi:sine=frequency=440:sample_rate=48000")
