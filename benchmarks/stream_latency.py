"""Streaming latency of the full-size export (and of a small/demo export when given), every
stage, backends side by side, with the references: the numbers of benchmarks/RESULTS.md.

    .venv/bin/soundloc export full.pt --out /tmp/bench_full     # full-size AVClassifier(Config())
    .venv/bin/python benchmarks/stream_latency.py /tmp/bench_full [--small /tmp/bench_small] \
        --json benchmarks/stream_latency.json

Runs ``soundloc.bench.run_bench`` (what `soundloc bench` runs) once per export, prints its
tables, and writes one JSON with a report per export.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from soundloc import bench
from soundloc.cli.bench import parse_compare
from soundloc.fileio import write_json


def run(target: Path, args: argparse.Namespace, console: Console) -> dict:
    plan = bench.Plan(args.warmup, args.duration, args.min_iters)
    report = bench.run_bench(target, backends=parse_compare(args.compare), streams=args.streams, plan=plan,
                             threads=args.threads, clip=args.clip,
                             progress=lambda s: console.print(f"[dim]{s}[/dim]"))
    console.print(bench.report_table(report))
    for line in bench.notes_lines(report) + bench.summary_lines(report):
        console.print(line, markup=False, highlight=False)
    console.print(bench.targets_table(report))
    return bench.report_dict(report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("full", type=Path, help="export directory of the full-size model")
    ap.add_argument("--small", type=Path, default=None, help="export directory of a small/demo model")
    ap.add_argument("--compare", default="all", help="backends, comma-separated, or 'all'")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--min-iters", type=int, default=50)
    ap.add_argument("--clip", type=Path, default=None, help="H.264+AAC clip for the decode stage")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    console = Console(width=max(Console().width, 120))
    out = {"full": run(args.full, args, console)}
    if args.small:
        out["small"] = run(args.small, args, console)
    if args.json:
        write_json(out, args.json)
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
