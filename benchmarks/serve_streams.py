"""Many streams on one box: N streams through `soundloc serve` with and without batching, and
the same N streams as N separate `soundloc stream` processes, in one run (issue 15).

    .venv/bin/python benchmarks/serve_streams.py soundloc/assets/demo --streams 1,4,16 \
        --seconds 10 --json benchmarks/results/serve_demo.json

For each N, three throughput runs on N copies of one synthetic clip read as fast as possible
(no output files: model, mel, window and decode only): `serve` batched, `serve --no-batch`
(one call per step), and N processes side by side; "real-time streams" is total steps per
second / 10. Then two latency runs with the files paced at 1x (what a camera does), batched
and not: capture-to-output per stream, p50 (median over streams) and p99 (worst stream),
lookahead included. A paced run keeps up when no stream's latency grows over the run: the
median of its last 10 steps is within one step (100 ms) of the median of its first 10
("drift", worst stream).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from soundloc.data.synth import make_synthetic_dataset
from soundloc.fileio import write_json
from soundloc.runtime.serve import ServeSource, run_serve
from soundloc.runtime.stream import StreamOptions

STEP_MS = 100.0


def make_clip(root: Path, seconds: float) -> Path:
    make_synthetic_dataset(root, num_clips=1, seed=11, seconds=seconds, workers=1)
    return next((root / "videos").glob("*.mp4"))


def camera_clip(name: str, root: Path) -> Path:
    """A file path as it is, or a camera-like bench clip (``CLIP_PRESETS``) written into ``root``."""
    from soundloc.bench.stages import CLIP_PRESETS, make_clip as make_bench_clip

    if name not in CLIP_PRESETS:
        return Path(name)
    return make_bench_clip(root / f"{name}.mp4", CLIP_PRESETS[name])


def serve_run(target: Path, clip: Path, n: int, batching: bool, realtime: bool, threads: int | None, lanes: int = 1) -> dict:
    sources = [ServeSource(f"s{i}", str(clip)) for i in range(n)]
    summary = run_serve(target, sources, options=StreamOptions(), batching=batching, realtime=realtime,
                        threads=threads, lanes=lanes, status=False)
    d = summary.as_dict()
    streams = list(d["streams"].values())
    drift = max(float(np.median(s.latency_ms[-10:]) - np.median(s.latency_ms[:10])) for s in summary.streams.values())
    steps = sum(s["steps"] for s in streams)
    return {"steps": steps, "seconds": d["seconds"], "steps_per_s": round(steps / d["seconds"], 1),
            "realtime_streams": round(steps / d["seconds"] / 10, 2), "batch": d["batch"],
            "latency_ms_p50": round(float(np.median([s["latency_ms_p50"] for s in streams])), 1),
            "latency_ms_p99": round(max(s["latency_ms_p99"] for s in streams), 1), "drift_ms": round(drift, 1),
            "errors": d["errors"]}


def processes_run(target: Path, clip: Path, n: int, threads: int | None, tmp: Path) -> dict:
    """N `soundloc stream` processes at once; rate = all steps / the longest stream's own time
    (model loading excluded, as in the serve runs), and also over the wall time with start-up."""
    cmd = [sys.executable, "-m", "soundloc", "stream", str(target), "--video", str(clip)]
    cmd += ["--threads", str(threads)] if threads else []
    t0 = time.monotonic()
    procs = [subprocess.Popen([*cmd, "--json", str(tmp / f"p{i}.json")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(n)]
    codes = [p.wait() for p in procs]
    wall = time.monotonic() - t0
    if any(codes):
        raise RuntimeError(f"a stream process failed: exit codes {codes}")
    runs = [json.loads((tmp / f"p{i}.json").read_text()) for i in range(n)]
    steps = sum(r["steps"] for r in runs)
    longest = max(r["seconds"] for r in runs)
    return {"steps": steps, "seconds": round(longest, 3), "wall_with_startup_s": round(wall, 3),
            "steps_per_s": round(steps / longest, 1), "realtime_streams": round(steps / longest / 10, 2),
            "realtime_streams_with_startup": round(steps / wall / 10, 2)}


def measure(target: Path, clip: Path, n: int, threads: int | None, tmp: Path, log, lanes: int = 1) -> dict:
    row = {"streams": n, "lanes": lanes}
    for name, kwargs in [("serve_batched", dict(batching=True, realtime=False)),
                         ("serve_unbatched", dict(batching=False, realtime=False)),
                         ("paced_batched", dict(batching=True, realtime=True)),
                         ("paced_unbatched", dict(batching=False, realtime=True))]:
        log(f"{target.name}: {n} streams, {name}")
        row[name] = serve_run(target, clip, n, threads=threads, lanes=lanes, **kwargs)
    log(f"{target.name}: {n} streams, {n} processes")
    row["processes"] = processes_run(target, clip, n, threads, tmp)
    row["batched_vs_processes"] = round(row["serve_batched"]["steps_per_s"] / row["processes"]["steps_per_s"], 2)
    row["batched_vs_unbatched"] = round(row["serve_batched"]["steps_per_s"] / row["serve_unbatched"]["steps_per_s"], 2)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| streams (lanes) | serve batched: RT streams (mean batch) | serve --no-batch | N processes | batched / processes "
             "| paced batched: latency p50 / p99 ms | paced --no-batch: p50 / p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        def paced(k: str) -> str:
            run = r[k]
            behind = "" if run["drift_ms"] <= STEP_MS else f" (falls behind: +{run['drift_ms']:.0f} ms)"
            return f"{run['latency_ms_p50']:.0f} / {run['latency_ms_p99']:.0f}{behind}"
        lines.append(f"| {r['streams']} ({r.get('lanes', 1)}) | {r['serve_batched']['realtime_streams']:.1f} "
                     f"({r['serve_batched']['batch']['mean_batch']:.1f}) | {r['serve_unbatched']['realtime_streams']:.1f} "
                     f"| {r['processes']['realtime_streams']:.1f} | {r['batched_vs_processes']:.2f}x "
                     f"| {paced('paced_batched')} | {paced('paced_unbatched')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", type=Path, help="export directory")
    ap.add_argument("--streams", default="1,4,16", help="stream counts, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic clip each stream reads")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads per process")
    ap.add_argument("--clip", default=None, help="read this clip instead of the synthetic one, or a bench clip "
                    "preset (480p-camera, 720p, 1080p: soundloc.bench.stages.CLIP_PRESETS, made in the temp dir)")
    ap.add_argument("--lanes", type=int, default=1, help="serve's model calls in flight at once (`soundloc serve --lanes`)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from soundloc.runtime.bundle import read_bundle

    bundle = read_bundle(args.target)
    lookahead_ms = bundle.lookahead_steps * STEP_MS
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip", args.seconds) if args.clip is None else camera_clip(args.clip, Path(tmp))
        rows = [measure(args.target, clip, int(n), args.threads, Path(tmp),
                        lambda s: print(s, file=sys.stderr, flush=True), args.lanes) for n in args.streams.split(",")]
    print(table(rows))
    out = {"target": str(args.target), "clip": args.clip or "synthetic", "config": bundle.manifest.get("config", {}), "clip_seconds": args.seconds,
           "lookahead_ms": lookahead_ms, "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "rows": rows}
    if args.json:
        write_json(out, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
