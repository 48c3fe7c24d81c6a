"""A CPU that is shared: each CPU backend's model step quiet and beside one busy process
(`python3 -c 'while True: pass'`), under its threading settings before and after issue 28.

    .venv/bin/python benchmarks/shared_cpu.py /tmp/full32 --rounds 2 --seconds 6 \
        --json benchmarks/results/shared_cpu.json

Each setting runs in its own process (OpenMP reads its environment once, at load): it loads
the step, warms up, then alternates ``--rounds`` times a quiet stretch and a stretch with the
busy process running, ``--seconds`` each, timing every step (batch 1, random inputs). The
figure is the busy p50 over the quiet p50 of the same process: the ratio shares whatever
other load the machine carries; absolute milliseconds do not (record the load average).

Settings (``before`` = the code before issue 28, reproduced with its options):
onnxruntime: default threads with spinning (before) / without (after) / 1 thread;
torch (default threads: one per core): libgomp's default wait policy (before: torch imported
before the backend, which then leaves OpenMP as it is) / the backend's PASSIVE (after) /
1 thread, PASSIVE.
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

SETTINGS = {
    "onnxruntime spin (before)": dict(backend="onnxruntime-cpu", spin=True),
    "onnxruntime no spin (after)": dict(backend="onnxruntime-cpu", spin=False),
    "onnxruntime 1 thread, no spin": dict(backend="onnxruntime-cpu", spin=False, threads=1),
    "torch libgomp default (before)": dict(backend="torch", threads=None, torch_first=True),
    "torch OMP passive (after)": dict(backend="torch", threads=None),
    "torch 1 thread, OMP passive": dict(backend="torch", threads=1),
}


def load(target: Path, ckpt: Path, s: dict):
    from soundloc.runtime.backend_spec import load_step_model

    if s["backend"] == "torch":
        if s.get("torch_first"):
            import torch  # noqa: F401  (OpenMP loads with its default policy, as before issue 28)
        return load_step_model(ckpt, "torch", threads=s.get("threads"))
    from soundloc.runtime import onnx_backend
    from soundloc.runtime.bundle import read_bundle
    from soundloc.runtime.engine import StepModel

    bundle = read_bundle(target)
    backend = onnx_backend.OnnxRuntimeBackend(bundle.path("step", "onnx"), "cpu", threads=s.get("threads"),
                                              spin=s["spin"])
    return StepModel(backend, bundle.config, bundle.lookahead_steps, bundle.state_specs, None, bundle)


def child(target: Path, ckpt: Path, name: str, rounds: int, seconds: float) -> dict:
    """One setting: quiet / busy stretches alternated, step times in ms."""
    from soundloc.families import family_of

    model = load(target, ckpt, SETTINGS[name])
    size = model.config.image_size
    rng = np.random.default_rng(0)
    frame = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    mel = rng.standard_normal((1, *family_of(model.config).audio_shape(model.config)), dtype=np.float32)
    valid = np.ones(1, np.float32)
    state = [model.new_state(1)]

    def stretch(s: float) -> list[float]:
        times, end = [], time.monotonic() + s
        while time.monotonic() < end:
            t0 = time.perf_counter()
            _, state[0] = model.step(frame, mel, valid, state[0])
            times.append((time.perf_counter() - t0) * 1000)
        return times

    stretch(2.0)  # warm-up
    quiet, busy = [], []
    for _ in range(rounds):
        quiet.append(stretch(seconds))
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.2)
            busy.append(stretch(seconds))
        finally:
            hog.kill()
            hog.wait()
        time.sleep(0.2)
    model.close()
    p50 = lambda xs: round(float(np.median(xs)), 2)  # noqa: E731
    return {"setting": name, "backend": model.name, "quiet_p50_ms": [p50(q) for q in quiet],
            "busy_p50_ms": [p50(b) for b in busy], "quiet_steps": [len(q) for q in quiet],
            "busy_steps": [len(b) for b in busy],
            "ratio": round(p50(sum(busy, [])) / p50(sum(quiet, [])), 2)}


def stream_beside_busy(target: Path, seconds: float, tmp: Path, before: bool) -> dict:
    """`soundloc stream` of a 480p camera-like clip paced at 1x (``--realtime``: what a camera
    does) with one busy process beside it; keeps real time when the capture-to-output latency
    does not grow: the median of the last 10 steps within 100 ms of the first 10's."""
    sys.path.insert(0, str(Path(__file__).parent))
    from camera_decode import BEFORE, STREAM

    from soundloc.bench.stages import ClipSpec, make_clip

    clip = make_clip(tmp / f"480p-{seconds:g}s.mp4", ClipSpec(seconds=seconds, bitrate=2_000_000))
    events = tmp / f"ev-{before}.jsonl"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        subprocess.run([sys.executable, "-c", (BEFORE if before else "") + STREAM, "stream", str(target), "--video",
                        str(clip), "--realtime", "--events", str(events)], check=True, capture_output=True)
    finally:
        hog.kill()
        hog.wait()
    lat = [json.loads(line)["latency_ms"] for line in events.read_text().splitlines()]
    model = [json.loads(line)["model_ms"] for line in events.read_text().splitlines()]
    drift = float(np.median(lat[-10:]) - np.median(lat[:10]))
    return {"setting": "before" if before else "after", "steps": len(lat), "latency_ms_p50": round(float(np.median(lat)), 1),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 1), "drift_ms": round(drift, 1),
            "model_ms_p50": round(float(np.median(model)), 1), "keeps_real_time": drift <= 100.0,
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def scratch_checkpoint(target: Path, where: Path) -> Path:
    from soundloc.bench.targets import _scratch_checkpoint
    from soundloc.runtime.bundle import read_bundle

    return _scratch_checkpoint(read_bundle(target).config, where)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", type=Path, help="fp32 export directory (torch runs its architecture, fresh weights)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each quiet and busy stretch")
    ap.add_argument("--settings", default="all", help="comma-separated names of SETTINGS (default: all)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stream-seconds", type=float, default=0.0,
                    help="also: `soundloc stream --realtime` of a 480p clip this long beside a busy process, before/after")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.target, args.ckpt, args.child, args.rounds, args.seconds)))
        return
    names = [] if args.settings == "none" else list(SETTINGS) if args.settings == "all" else [n.strip() for n in args.settings.split(",")]
    rows = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = scratch_checkpoint(args.target, Path(tmp))
        for name in names:
            print(f"{name} ...", file=sys.stderr, flush=True)
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | SETTINGS[name].get("env", {})
            out = subprocess.run([sys.executable, __file__, str(args.target), "--child", name, "--ckpt", str(ckpt),
                                  "--rounds", str(args.rounds), "--seconds", str(args.seconds)],
                                 env=env, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["load_avg"] = [round(x, 2) for x in os.getloadavg()]
            rows.append(row)
            print(f"| {name} | {row['quiet_p50_ms']} | {row['busy_p50_ms']} | {row['ratio']}x | {row['load_avg'][0]} |",
                  flush=True)
        streams = []
        for before in ([True, False] if args.stream_seconds else []):
            streams.append(stream_beside_busy(args.target, args.stream_seconds, Path(tmp), before))
            print(streams[-1], flush=True)
    result = {"target": str(args.target), "streams": streams, "cpus": os.cpu_count(), "load_avg_start": load_start,
              "load_avg_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    if args.json:
        from soundloc.fileio import write_json

        write_json(result, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
