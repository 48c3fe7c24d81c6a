"""The preview grid of `soundloc serve --preview` against the number of streams (issue 21).

    .venv/bin/python benchmarks/serve_grid.py --streams 300,2000 --json benchmarks/results/serve_grid.json

For each N: a ``PreviewGrid`` of N names (its server on a free loopback port), then one 320x240
frame per stream (what each stream's first step does: fit the frame into its tile, compose,
publish at most every SERVE_PREVIEW_PERIOD_S), then N status-only updates (every stream
ending). Prints the mosaic's size and the seconds each phase took; cost per update should not
grow with N.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from soundloc.fileio import write_json
from soundloc.runtime.preview import PreviewGrid


def measure(n: int) -> dict:
    names = [f"s{i}" for i in range(n)]
    frame = np.full((240, 320, 3), 120, np.uint8)
    t0 = time.perf_counter()
    with PreviewGrid(names, port=0) as grid:
        t1 = time.perf_counter()
        for name in names:
            grid.update(name, frame, {"state": "running"})
        t2 = time.perf_counter()
        for name in names:
            grid.update(name, None, {"state": "ended"})
        t3 = time.perf_counter()
        h, w, _ = grid._mosaic.shape
    return {"streams": n, "mosaic": [w, h], "init_s": round(t1 - t0, 3), "frame_updates_s": round(t2 - t1, 3),
            "frame_update_ms": round(1000 * (t2 - t1) / n, 2), "end_updates_s": round(t3 - t2, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", default="300,2000")
    p.add_argument("--json")
    args = p.parse_args()
    rows = [measure(int(n)) for n in args.streams.split(",")]
    for r in rows:
        print(f"N={r['streams']}: mosaic {r['mosaic'][0]}x{r['mosaic'][1]}, {r['frame_update_ms']} ms per frame "
              f"update ({r['frame_updates_s']} s), end updates {r['end_updates_s']} s")
    if args.json:
        write_json(rows, args.json)


if __name__ == "__main__":
    main()
