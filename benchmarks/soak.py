"""Soak test: a live lavfi camera + microphone through the CPU backend for a long time, watching
memory and step latency (issue 7: RSS growth <= 5 %, no latency drift).

    .venv/bin/python benchmarks/soak.py --minutes 30 --json benchmarks/soak.json
    .venv/bin/python benchmarks/soak.py --export export/ --minutes 5 --json /tmp/soak.json

The source is paced at 1x (lavfi, like a camera), so ``--minutes 30`` takes 30 minutes. Each
step runs through ``Localizer.push`` (preprocessing, incremental log-mel, the exact step graph
on onnxruntime's CPU provider, the 3 s window, the gate and the pseudo box); ``--out`` also
encodes the annotated mp4, as a camera service would. Every ``--sample-seconds`` (10 s) one
sample records the process RSS and the step latencies since the previous sample.

Summary (after ``--warmup-seconds``): RSS growth = median RSS of the last window over that of
the first window; latency drift = p50 step time of the last window over that of the first.
A window is ``--window-minutes`` (5) long, shortened to a third of the measured time for short
runs so the two windows never overlap. Without ``--export`` a randomly initialised ``small``
preset is exported to a temporary folder (needs torch); its cost per step is that of a real
``small`` model, which is all a soak measures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from soundloc.fileio import write_json
from soundloc.runtime.engine import StepModel
from soundloc.runtime.sources import StepSource
from soundloc.runtime.stream import Localizer, StreamOptions

VIDEO = "lavfi:testsrc=size=640x480:rate=30"
AUDIO = "lavfi:sine=frequency=440:sample_rate=48000"
RSS_TARGET_PCT = 5.0
DRIFT_TARGET_PCT = 10.0  # p50 step time of the last window at most 10 % above the first's


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return 0.0


EXPORT_SCRIPT = """
import sys, torch
from soundloc.config import preset
from soundloc.export.onnx import export_model
from soundloc.model.classifier import AVClassifier
torch.manual_seed(0)
export_model(AVClassifier(preset("small", num_classes=8)).eval(), sys.argv[1], graphs=("step",))
"""


def make_export(folder: Path) -> Path:
    """A randomly initialised ``small`` preset exported to ONNX in ``folder``, in a child
    process: the soak process stays torch-free like the edge runtime, so its RSS is the runtime's."""
    subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(folder)], check=True, stderr=subprocess.DEVNULL)
    return folder


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3) if xs else 0.0


def soak(export: Path, minutes: float, video: str, audio: str, sample_s: float, threads: int | None,
         out: Path | None, log=print) -> list[dict]:
    """Run the stream for ``minutes``; returns one sample dict per ``sample_s`` seconds."""
    model = StepModel.from_export(export, backend="onnxruntime-cpu", threads=threads)
    loc = Localizer(model, StreamOptions())
    sink = None
    if out is not None:
        from soundloc.runtime.sinks import Mp4Sink

        sink = Mp4Sink(out)
    samples: list[dict] = []
    step_ms: list[float] = []
    latency_ms: list[float] = []
    start = time.monotonic()
    end = start + minutes * 60
    next_sample = start + sample_s
    steps = 0
    try:
        with StepSource(video, audio) as source:
            for inp in source:
                t0 = time.perf_counter()
                results = loc.push(inp)
                step_ms.append((time.perf_counter() - t0) * 1000)
                for r in results:
                    latency_ms.append((r.output_time - r.capture_time) * 1000)
                    if sink is not None:
                        sink.write(r)
                steps += 1
                now = time.monotonic()
                if now >= next_sample:
                    samples.append({"t": round(now - start, 2), "rss_mb": round(rss_mb(), 2), "steps": steps,
                                    "step_ms_p50": pct(step_ms, 50), "step_ms_p99": pct(step_ms, 99),
                                    "latency_ms_p50": pct(latency_ms, 50), "dropped": source.stats.dropped,
                                    "skipped": source.stats.skipped, "queue_max": source.stats.max_queue_depth,
                                    "loadavg_1m": round(os.getloadavg()[0], 2)})
                    log(f"{samples[-1]['t']:7.0f} s  rss {samples[-1]['rss_mb']:7.1f} MiB  steps {steps:6d}  "
                        f"step p50 {samples[-1]['step_ms_p50']:6.2f} ms  latency p50 "
                        f"{samples[-1]['latency_ms_p50']:7.1f} ms  dropped {source.stats.dropped}")
                    step_ms, latency_ms = [], []
                    next_sample += sample_s
                if now >= end:
                    break
            if source.stats.end_reason not in (None, "closed") and time.monotonic() < end:
                log(f"source ended early: {source.stats.end_reason}")
    finally:
        if sink is not None:
            sink.close()
        model.close()
    return samples


def summarize(samples: list[dict], warmup_s: float, window_s: float) -> dict:
    """RSS growth and latency drift between the first and last window after warm-up."""
    measured = [s for s in samples if s["t"] > warmup_s]
    if len(measured) < 2:
        return {"error": "run too short for a summary: need at least two samples after warm-up"}
    span = measured[-1]["t"] - measured[0]["t"]
    window = min(window_s, span / 3) if span > 0 else window_s
    first = [s for s in measured if s["t"] <= measured[0]["t"] + window]
    last = [s for s in measured if s["t"] >= measured[-1]["t"] - window]
    rss_first = float(np.median([s["rss_mb"] for s in first]))
    rss_last = float(np.median([s["rss_mb"] for s in last]))
    lat_first = float(np.median([s["step_ms_p50"] for s in first]))
    lat_last = float(np.median([s["step_ms_p50"] for s in last]))
    growth = 100.0 * (rss_last - rss_first) / rss_first if rss_first else 0.0
    drift = 100.0 * (lat_last - lat_first) / lat_first if lat_first else 0.0
    return {
        "warmup_s": warmup_s, "window_s": round(window, 1), "samples_in_window": [len(first), len(last)],
        "rss_first_mb": round(rss_first, 2), "rss_last_mb": round(rss_last, 2),
        "rss_max_mb": round(max(s["rss_mb"] for s in samples), 2), "rss_growth_pct": round(growth, 2),
        "step_ms_p50_first": round(lat_first, 3), "step_ms_p50_last": round(lat_last, 3),
        "latency_drift_pct": round(drift, 2),
        "steps": samples[-1]["steps"], "seconds": samples[-1]["t"],
        "steps_per_second": round(samples[-1]["steps"] / samples[-1]["t"], 3),
        "dropped": samples[-1]["dropped"], "skipped": samples[-1]["skipped"],
        "rss_ok": growth <= RSS_TARGET_PCT, "latency_ok": drift <= DRIFT_TARGET_PCT,
        "targets": {"rss_growth_pct_max": RSS_TARGET_PCT, "latency_drift_pct_max": DRIFT_TARGET_PCT},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, default=None, help="export directory (default: a random small model)")
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to stream (1x real time)")
    ap.add_argument("--video", default=VIDEO, help="video source spec")
    ap.add_argument("--audio", default=AUDIO, help="audio source spec")
    ap.add_argument("--sample-seconds", type=float, default=10.0, help="RSS/latency sampling period")
    ap.add_argument("--warmup-seconds", type=float, default=60.0, help="left out of the summary")
    ap.add_argument("--window-minutes", type=float, default=5.0, help="first/last window compared")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--out", type=Path, default=None, help="also write the annotated mp4 here")
    ap.add_argument("--json", type=Path, default=None, help="write samples and summary here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak_export_") as tmp:
        export = args.export or make_export(Path(tmp))
        print(f"soak: {args.minutes:g} min of {args.video} + {args.audio} through {export} (onnxruntime-cpu)",
              flush=True)
        samples = soak(export, args.minutes, args.video, args.audio, args.sample_seconds, args.threads, args.out,
                       log=lambda s: print(s, flush=True))
    summary = summarize(samples, args.warmup_seconds, args.window_minutes * 60)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "export": str(args.export or "random small"),
              "video": args.video, "audio": args.audio, "minutes": args.minutes, "summary": summary,
              "samples": samples}
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    return 0 if summary.get("rss_ok") and summary.get("latency_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
