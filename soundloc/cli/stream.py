"""`soundloc stream` and `soundloc demo`: the runtime's main jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import BACKENDS
from .app import app, check_paths, check_range, fail


@app.command("stream")
def stream(
    target: Path = typer.Argument(..., help="Export directory (or a .pt checkpoint for --backend torch)."),
    video: str = typer.Option(..., "--video", "-v", help="File/URL, v4l2:/dev/video0, avfoundation:0, dshow:video=NAME, lavfi:GRAPH."),
    audio: Optional[str] = typer.Option(None, "--audio", "-a", help="Microphone spec (alsa:default, ...); default: the video's own track."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Annotated mp4 to write (atomic; playable after Ctrl-C)."),
    events: Optional[Path] = typer.Option(None, help="JSON-lines file of per-step events."),
    preview: bool = typer.Option(False, "--preview", help="Serve a live preview page."),
    host: str = typer.Option("127.0.0.1", help="Preview bind address (anything but loopback is visible on your network)."),
    port: int = typer.Option(8080, help="Preview port (0: any free port)."),
    backend: str = typer.Option("auto", help=f"One of {', '.join(BACKENDS)} (torch: a .pt checkpoint)."),
    window: str = typer.Option("trailing", help="trailing (live) or centered (paper's Eq. 4; 1.5 s more delay)."),
    gate_db: float = typer.Option(-50.0, help="Hide the map when the window's audio level is below this dBFS."),
    gate_score: Optional[float] = typer.Option(None, help="Hide the map when mean S_av is below this (default: the export's calibrated value)."),
    box_threshold: float = typer.Option(0.5, help="Pseudo-box binarisation threshold on the normalised map."),
    realtime: Optional[bool] = typer.Option(None, "--realtime/--no-realtime", help="Pace a file at 1x (default: files run as fast as possible)."),
    video_only: bool = typer.Option(False, help="Accept a video without audio (maps then mean little: every step is gated)."),
    seconds: Optional[float] = typer.Option(None, help="Stop after this many seconds: of media for a file, of wall time for a live source."),
    reconnect: int = typer.Option(0, help="Reopen a failed or stalled source up to N times."),
    stall: float = typer.Option(10.0, help="Seconds without input before a source counts as stalled."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for the model."),
    decoder: str = typer.Option("auto", help="Video decoder: auto (the platform's hardware decoder if any, else FFmpeg's threads), software, cuda, vaapi, videotoolbox, qsv, d3d11va."),
    triton: Optional[str] = typer.Option(None, help="HOST:PORT of a Triton server (gRPC) that runs the model of TARGET's `--format triton` repository."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the run summary here."),
) -> None:
    """Localize sound sources live: camera + microphone (or a file/URL) -> mp4, events, preview."""
    from ..config import FPS
    from ..runtime.run import run_stream
    from ..runtime.stream import StreamOptions

    check_paths([out, events, json_out], [target, video, audio])
    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    check_range("--port", port, 0, 65535)
    check_range("--threads", threads, 1)
    check_range("--reconnect", reconnect, 0)
    check_range("--stall", stall, 0.1)
    check_range("--seconds", seconds, 0.1)
    from ..media import DECODERS

    if decoder not in DECODERS:
        raise fail(f"--decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    if out is None and events is None and not preview:
        typer.echo("note: no --out, --events or --preview: the maps are shown in the status line only and "
                   "nothing of them is kept")
    try:
        options = StreamOptions(window=window, gate_db=gate_db, gate_score=gate_score, box_threshold=box_threshold)
    except ValueError as e:
        raise fail(str(e))
    summary = run_stream(target, video, audio, out=out, events=events, preview=(host, port) if preview else None,
                         backend=backend, options=options, realtime=realtime, video_only=video_only,
                         max_seconds=seconds, stall_seconds=stall, reconnect=reconnect, threads=threads,
                         triton=triton, decoder=decoder)
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


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Folder for input.mp4, demo.mp4 and events.jsonl."),
    seconds: float = typer.Option(10.0, help="Length of the generated clip."),
    seed: int = typer.Option(4, help="Which synthetic clip to generate."),
    backend: str = typer.Option("onnxruntime", help="Backend for the bundled model."),
    model: Optional[Path] = typer.Option(None, help="Another export directory instead of the bundled demo model."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the run summary here."),
) -> None:
    """Generate a synthetic clip and localize its sounding object with the bundled demo model."""
    from ..demo import run_demo

    check_paths([json_out], [model], dirs=[out])
    summary = run_demo(out, seconds=seconds, seed=seed, backend=backend, model=model)
    _report(summary.as_dict(), json_out)
