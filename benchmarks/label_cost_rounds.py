"""The step's cost of the label outputs and the in-view confidence, in rounds (issue 25).

One `soundloc bench` run times two exports side by side (``benchmarks/label_cost.py`` writes
them: the step graph before the label outputs, and as now with the calibration copied). On a
shared, loaded machine one run's difference is within its noise, so this runs ``--rounds``
bench runs, alternating which export goes first, and reports per round the model-step p50 and
min of each and their ratio (now / before), then the median ratio and its spread over rounds.
``--localize N`` also times the localization stage (``label_cost.time_localize``) with the
calibration's own rule, once per round.

    python benchmarks/label_cost.py CKPT --out runs/cost --calibration runs/export_cal
    python benchmarks/label_cost_rounds.py runs/cost --rounds 6 --localize 2000 \\
        --calibration runs/export_cal --json benchmarks/results/label_cost_rounds.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from soundloc.fileio import write_json


def bench_round(first: Path, second: Path, threads: int) -> dict[str, dict]:
    """One `soundloc bench FIRST SECOND` run: each export's model-step figures (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        subprocess.run(["soundloc", "bench", str(first), str(second), "--backend", "onnxruntime-cpu", "--threads",
                        str(threads), "--no-references", "--json", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
        d = json.loads(out.read_text())
    rows = [b["step"] for b in d["backends"]]
    return {"order": [first.name, second.name], "load": [d["system"]["load_avg"][0], d["system"]["load_avg_end"][0]],
            first.name: rows[0], second.name: rows[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cost", type=Path, help="label_cost.py's --out folder (before/ and now/)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--localize", type=int, default=0, help="also time the localization stage this many steps a round")
    ap.add_argument("--calibration", type=Path, help="the calibrated export whose rule the localization stage uses")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from label_cost import time_localize

    vis = None
    if args.calibration:
        from soundloc.visibility import Visibility

        vis = Visibility.from_dict(json.loads((args.calibration / "soundloc.json").read_text())["visibility"])
    before, now = args.cost / "before", args.cost / "now"
    rounds = []
    for r in range(args.rounds):
        first, second = (before, now) if r % 2 == 0 else (now, before)
        row = bench_round(first, second, args.threads)
        for stat, key in (("p50", "median_ms"), ("min", "min_ms")):
            row[f"{stat}_ratio"] = row["now"][key] / row["before"][key]
        if args.localize:
            row["localize"] = time_localize(args.localize, visibility=vis)
        rounds.append(row)
        loc = row.get("localize", {})
        extra = "" if not loc else (f"; localization p50 {loc['plain']['p50_ms']:.3f} -> "
                                    f"{loc['labels+confidence']['p50_ms']:.3f} ms")
        print(f"round {r + 1} ({' first, '.join(row['order'])} second; load {row['load'][0]:.1f}->{row['load'][1]:.1f}): "
              f"step p50 {row['before']['median_ms']:.3f} -> {row['now']['median_ms']:.3f} ms "
              f"(x{row['p50_ratio']:.3f}), min {row['before']['min_ms']:.3f} -> {row['now']['min_ms']:.3f} "
              f"(x{row['min_ratio']:.3f}){extra}", flush=True)
    summary = {}
    for stat in ("p50", "min"):
        ratios = np.array([r[f"{stat}_ratio"] for r in rounds])
        summary[stat] = {"median_ratio": float(np.median(ratios)), "min_ratio": float(ratios.min()),
                         "max_ratio": float(ratios.max())}
        print(f"{stat}: now/before median x{np.median(ratios):.3f} over {len(ratios)} rounds "
              f"(range x{ratios.min():.3f} - x{ratios.max():.3f})")
    if args.json:
        write_json({"rounds": rounds, "summary": summary, "cpus": os.cpu_count()}, args.json)


if __name__ == "__main__":
    main()
