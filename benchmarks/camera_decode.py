"""Camera resolutions: CPU seconds per media second of `soundloc stream` (no outputs) on
camera-like clips, with the decode and threading settings before and after issue 28,
alternated in one run; and the decode + resize alone (StepSource) the same way.

    .venv/bin/python benchmarks/camera_decode.py soundloc/assets/demo /tmp/full8 --clips 480p-camera,720p,1080p \
        --rounds 2 --json benchmarks/results/camera_decode.json

Clips: ``soundloc.bench.stages.CLIP_PRESETS`` (10 s, 30 fps, H.264 without B-frames at a
camera's bit rate, 48 kHz AAC), made once in ``--cache``. Each measurement is a fresh
process; its CPU time (user + sys, every thread, start-up included) comes from ``wait4``.
"before" reproduces the code before issue 28 in that process: PyAV's default decoder
threads (``decoders.tune_decoder`` left out) and onnxruntime's spinning threads. The machine is
shared: compare before and after within one run; the load average is recorded per row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from soundloc.bench.stages import CLIP_PRESETS, make_clip

BEFORE = """
import functools, soundloc.decoders as d, soundloc.runtime.onnx_backend as o
d.tune_decoder = lambda stream, live: "PyAV default threads"
o.OnnxRuntimeBackend.__init__ = functools.partialmethod(o.OnnxRuntimeBackend.__init__, spin=True)
"""
STREAM = "import sys; from soundloc.cli import main; sys.argv = ['soundloc'] + sys.argv[1:]; main()"
DECODE = """
import sys, time
from soundloc.runtime.sources import StepSource
n = sum(1 for _ in StepSource(sys.argv[1], size=int(sys.argv[2])))
print(n)
"""


def cpu_seconds(code: str, args: list[str]) -> tuple[float, float]:
    """CPU (user + sys) and wall seconds of one ``python -c code args`` process."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"failed: {args}: {proc.stderr.read().decode()[-500:]}")
    proc.stderr.close()
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="+", type=Path, help="export directories (e.g. the bundled demo, a full-size int8)")
    ap.add_argument("--clips", default="480p-camera,720p,1080p", help=f"from {', '.join(CLIP_PRESETS)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/soundloc-camera-clips"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from soundloc.runtime.bundle import read_bundle

    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| clip | what | before: CPU s / media s | after | after / before | load |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.clips.split(","):
        spec = CLIP_PRESETS[name]
        clip = make_clip(args.cache / f"{spec.name}.mp4", spec)
        jobs = [("decode + resize (StepSource)", DECODE, [str(clip), "112"])]
        jobs += [(f"stream {t.name} ({read_bundle(t).precision})", STREAM,
                  ["stream", str(t), "--video", str(clip)]) for t in args.targets]
        for what, code, argv in jobs:
            got: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for when in ("before", "after"):  # alternated: both share the machine's load
                    cpu, _ = cpu_seconds((BEFORE if when == "before" else "") + code, argv)
                    got[when].append(round(cpu / spec.seconds, 3))
            load = round(os.getloadavg()[0], 2)
            b, a = min(got["before"]), min(got["after"])
            rows.append({"clip": spec.name, "what": what, "before": got["before"], "after": got["after"],
                         "ratio_best": round(a / b, 2), "load_avg": load})
            print(f"| {spec.name} | {what} | {got['before']} | {got['after']} | {a / b:.2f} | {load} |", flush=True)
    if args.json:
        from soundloc.fileio import write_json

        write_json({"cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "rows": rows}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
