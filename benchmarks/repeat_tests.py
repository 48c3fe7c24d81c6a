"""Run pytest test ids N times, each in a fresh process, and count the passes: how flaky tests
are found and how a fix is shown to hold. ``--load`` keeps that many busy-loop processes running
meanwhile (one per core loads the machine the way a busy CI runner does).

    .venv/bin/python benchmarks/repeat_tests.py -n 30 --load 2 \
        tests/test_sources.py::test_stream_that_ends_early --json repeat.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundloc.fileio import write_json  # noqa: E402

BUSY = "while True: pass"


def repeat(tests: list[str], n: int, load: int) -> dict:
    """``n`` fresh pytest runs of ``tests`` with ``load`` busy processes; pass count and the
    last line of each failure."""
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
    failures: list[str] = []
    started = time.monotonic()
    try:
        for i in range(n):
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests],
                               capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(f"run {i + 1}: {(r.stdout.strip().splitlines() or ['?'])[-1]}")
            print(f"run {i + 1}/{n}: {'pass' if r.returncode == 0 else 'FAIL'}", flush=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return {"tests": tests, "runs": n, "passed": n - len(failures), "load_processes": load,
            "failures": failures, "seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tests", nargs="+", help="pytest ids")
    ap.add_argument("-n", type=int, default=30, help="repeats")
    ap.add_argument("--load", type=int, default=0, help="busy-loop processes running meanwhile")
    ap.add_argument("--json", type=Path, help="write the counts here")
    args = ap.parse_args()
    result = repeat(args.tests, args.n, args.load)
    print(f"passed {result['passed']} / {result['runs']} (load {args.load}, {result['seconds']} s)")
    for f in result["failures"]:
        print("  " + f)
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
