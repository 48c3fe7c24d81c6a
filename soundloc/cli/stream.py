"""`soundloc stream` and `soundloc demo`: the runtime's main jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..runtime.backend import BACKENDS
from . import options as O
from .app import app, check_paths, check_range, fail


@app.command("stream")
def stream(
    target: Optional[Path] = O.target_argument(),
    video: str = typer.Option(..., "--video", "-v", help="File/URL, v4l2:/dev/video0, avfoundation:0, dshow:video=NAME, lavfi:GRAPH."),
    audio: Optional[str] = typer.Option(None, "--audio", "-a", help="Microphone spec (alsa:default, ...); default: the video's own track."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Annotated mp4 to write (atomic; playable after Ctrl-C). For a file: its own frame rate, size and audio."),
    events: Optional[Path] = typer.Option(None, help="JSON-lines file of per-step events (docs/outputs.md)."),
    size: Optional[int] = typer.Option(None, "--size", help="Height in pixels of the annotated mp4 of a file (default: the file's)."),
    preview: bool = typer.Option(False, "--preview", help="Serve a live preview page."),
    host: str = O.host_option(),
    port: int = O.port_option(),
    backend: str = O.backend_option(),
    window: str = O.window_option(),
    gate_db: float = O.gate_db_option(),
    gate_score: Optional[float] = O.gate_score_option(),
    box_threshold: float = O.box_threshold_option(),
    classes: Optional[str] = O.classes_option(),
    realtime: Optional[bool] = O.realtime_option(),
    video_only: bool = typer.Option(False, help="Accept a video without audio (maps then mean little: every step is gated)."),
    seconds: Optional[float] = O.seconds_option(),
    reconnect: int = O.reconnect_option(),
    stall: float = O.stall_option(),
    threads: Optional[int] = O.threads_option(),
    decoder: str = O.decoder_option(),
    triton: Optional[str] = typer.Option(None, help="HOST:PORT of a Triton server (gRPC) that runs the model of TARGET's `--format triton` repository."),
    json_out: Optional[Path] = O.json_option(),
) -> None:
    """Localize sound sources live: camera + microphone (or a file/URL) -> mp4, events, preview."""
    from ..config import FPS
    from ..runtime.run import run_stream
    from ..runtime.sources import spec_inputs
    from ..labels import split_classes
    from ..runtime.stream import StreamOptions

    check_paths([out, events, json_out], [target, *spec_inputs(video), *spec_inputs(audio)])
    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    check_range("--port", port, 0, 65535)
    check_range("--threads", threads, 1)
    check_range("--reconnect", reconnect, 0)
    check_range("--stall", stall, 0.1)
    check_range("--seconds", seconds, 0.1)
    check_range("--size", size, 16, 4320)
    from ..decoders import DECODERS

    if decoder not in DECODERS:
        raise fail(f"--decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    if out is None and events is None and not preview:
        typer.echo("note: no --out, --events or --preview: the maps are shown in the status line only and "
                   "nothing of them is kept")
    try:
        options = StreamOptions(window=window, gate_db=gate_db, gate_score=gate_score, box_threshold=box_threshold,
                                classes=split_classes(classes))
    except ValueError as e:
        raise fail(str(e))
    summary = run_stream(target, video, audio, out=out, events=events, preview=(host, port) if preview else None,
                         backend=backend, options=options, realtime=realtime, video_only=video_only,
                         max_seconds=seconds, stall_seconds=stall, reconnect=reconnect, threads=threads,
                         triton=triton, size=size, decoder=decoder)
    _report(summary.as_dict(), json_out)
    if summary.signal:  # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM
        raise typer.Exit(128 + summary.signal)
    if summary.error:  # a corrupt file must not look like a complete run
        raise fail(f"input failed after {summary.steps} steps ({summary.steps / FPS:.1f} s processed): "
                   f"{summary.error}", 1)


def _report(d: dict, json_out: Optional[Path]) -> None:
    typer.echo(f"{d['steps']} steps in {d['seconds']:.1f} s on {d['backend']}: model p50 {d['model_ms_p50']:.1f} ms, "
               f"p99 {d['model_ms_p99']:.1f} ms, gated {d['gated']}, dropped {d['dropped']} ({d['end_reason']})")
    for o in d["outputs"]:
        typer.echo(f"wrote {o}")
    if json_out:
        from ..fileio import write_json

        write_json(d, json_out)


def _demo_default(name: str):
    import inspect

    from ..runtime.demo import run_demo

    default = inspect.signature(run_demo).parameters[name].default
    return Path(default) if name == "out_dir" else default


@app.command("demo")
def demo(
    out: Path = typer.Option(_demo_default("out_dir"), "--out", "-o", help="Folder for input.mp4, demo.mp4 and events.jsonl."),
    seconds: float = typer.Option(_demo_default("seconds"), help="Length of the generated clip."),
    seed: int = typer.Option(_demo_default("seed"), help="Which synthetic clip to generate."),
    backend: str = typer.Option(_demo_default("backend"), help="Backend for the bundled model."),
    model: Optional[Path] = typer.Option(None, help="Another export directory instead of the bundled demo model."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the run summary here."),
) -> None:
    """Generate a synthetic clip and localize its sounding object with the bundled demo model."""
    from ..runtime.demo import run_demo

    check_paths([json_out], [model], dirs=[out])
    summary = run_demo(out, seconds=seconds, seed=seed, backend=backend, model=model)
    _report(summary.as_dict(), json_out)
    h = summary.hit_rates
    typer.echo(f"map peak on the sounding object (ground truth) in {h.model:.0%} of {h.steps} audible steps; "
               f"with another clip's sound {h.shuffled:.0%}; the frame's centre {h.centre:.0%}")
