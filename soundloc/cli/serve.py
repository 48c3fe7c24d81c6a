"""`soundloc serve`: many cameras through one model, one batched step call per tick."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..config import SERVE_BATCH_WAIT_S
from ..runtime.backend import BACKENDS
from . import options as O
from .app import app, check_paths, check_range, fail


@app.command("serve")
def serve(
    target: Optional[Path] = O.target_argument(),
    sources: Optional[Path] = typer.Option(None, "--sources", "-s", help="TOML file of [[stream]] tables (name, video, audio, out, events, video_only)."),
    video: List[str] = typer.Option([], "--video", "-v", help="NAME=SPEC, repeated: one stream each (specs as in `soundloc stream`)."),
    audio: List[str] = typer.Option([], "--audio", "-a", help="NAME=SPEC: a separate microphone for the --video of that name."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="Write NAME.mp4 and NAME.jsonl here for every stream without its own outputs."),
    preview: bool = typer.Option(False, "--preview", help="Serve one preview page with every stream (a grid) and /status.json."),
    host: str = O.host_option(),
    port: int = O.port_option(),
    backend: str = O.backend_option(),
    batch: bool = typer.Option(True, "--batch/--no-batch", help="One call per tick for every stream with a step ready (--no-batch: one call per step)."),
    batch_wait: float = typer.Option(SERVE_BATCH_WAIT_S, help="Seconds a tick waits for streams without a step ready."),
    max_batch: Optional[int] = typer.Option(None, help="Most steps in one call (a TensorRT engine's --max-batch)."),
    lanes: int = typer.Option(1, help="Model calls in flight at once, each for its share of the streams (onnxruntime): "
                                      "one group's call overlaps the others' decoding."),
    window: str = O.window_option(),
    gate_db: float = O.gate_db_option(),
    gate_score: Optional[float] = O.gate_score_option(),
    box_threshold: float = O.box_threshold_option(),
    classes: Optional[str] = O.classes_option(),
    realtime: Optional[bool] = O.realtime_option(),
    seconds: Optional[float] = O.seconds_option(),
    reconnect: int = O.reconnect_option(),
    stall: float = O.stall_option(),
    threads: Optional[int] = O.threads_option(),
    json_out: Optional[Path] = O.json_option(),
) -> None:
    """Localize sound sources in many streams at once: one model, one batched call per tick."""
    from ..runtime.serve import ServeError, pair_sources, read_sources, run_serve, with_out_dir
    from ..runtime.sources import spec_inputs
    from ..labels import split_classes
    from ..runtime.stream import StreamOptions

    if (sources is None) == (not video):
        raise fail("give the streams either as --video NAME=SPEC (repeated) or as --sources FILE, one of the two")
    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    check_range("--port", port, 0, 65535)
    check_range("--batch-wait", batch_wait, 0, 10)
    check_range("--max-batch", max_batch, 1)
    check_range("--lanes", lanes, 1, 64)
    check_range("--threads", threads, 1)
    check_range("--reconnect", reconnect, 0)
    check_range("--stall", stall, 0.1)
    check_range("--seconds", seconds, 0.1)
    try:
        streams = read_sources(sources) if sources is not None else pair_sources(video, audio)
        if audio and sources is not None:
            raise ServeError("--audio goes with --video NAME=SPEC; in a sources file give 'audio' per stream")
        streams = with_out_dir(streams, out_dir)
        options = StreamOptions(window=window, gate_db=gate_db, gate_score=gate_score, box_threshold=box_threshold,
                                classes=split_classes(classes))
    except ValueError as e:
        raise fail(str(e))
    outputs = [p for s in streams for p in (s.out, s.events)]
    check_paths([*outputs, json_out], [target, sources, *(x for s in streams for spec in (s.video, s.audio)
                                                           for x in spec_inputs(spec))])
    check_paths([], dirs=[out_dir])  # a file there is refused (the outputs inside are checked above)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    summary = run_serve(target, streams, backend=backend, options=options, preview=(host, port) if preview else None,
                        batching=batch, wait_s=batch_wait, max_batch=max_batch, realtime=realtime,
                        max_seconds=seconds, stall_seconds=stall, reconnect=reconnect, threads=threads,
                        lanes=lanes)
    _report(summary.as_dict(), json_out)
    if summary.signal:  # 130 after Ctrl-C, 143 after SIGTERM: every output was finalised
        raise typer.Exit(128 + summary.signal)
    if summary.errors:
        name, error = next(iter(summary.errors.items()))
        raise fail(f"{len(summary.errors)} of {len(streams)} streams failed; {name}: {error}", 1)


def _report(d: dict, json_out: Optional[Path]) -> None:
    b = d["batch"]
    typer.echo(f"{len(d['streams'])} streams in {d['seconds']:.1f} s on {d['backend']}: {b['calls']} calls for "
               f"{b['steps']} steps (mean batch {b['mean_batch']:.2f}, call p50 {b['call_ms_p50']:.1f} ms)")
    for name, s in d["streams"].items():
        typer.echo(f"  {name}: {s['steps']} steps, gated {s['gated']}, dropped {s['dropped']}, "
                   f"behind {b['behind'].get(name, 0)}, latency p50 {s['latency_ms_p50']:.0f} ms ({s['end_reason']})")
        for o in s["outputs"]:
            typer.echo(f"    wrote {o}")
    if json_out:
        from ..fileio import write_json

        write_json(d, json_out)
