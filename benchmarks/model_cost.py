"""GMAC per frame and PyTorch forward time per frame of the video and audio networks at full
size (issue 2's measure; docs/design.md §1 gives ~2.7 GMAC per frame).

    .venv/bin/python benchmarks/model_cost.py --json benchmarks/model_cost.json
    .venv/bin/python benchmarks/model_cost.py --preset small --set fine_map=true   # the 14x14 map

Each network runs a batch of 16 frames (one 16-step clip: T = 16) and a single frame (T = 1,
what a streaming step costs), warm-up then timed by ``soundloc.bench.run_timed``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from soundloc.bench import Plan, run_timed, system_info
from soundloc.config import Config, preset
from soundloc.fileio import write_json
from soundloc.model.classifier import AVClassifier
from soundloc.model.cost import count_macs


def measure(net: torch.nn.Module, x: torch.Tensor, frames: int, plan: Plan) -> dict:
    """MACs and forward time per frame of ``net`` on ``x`` (a clip of ``frames`` frames)."""
    macs = count_macs(net, x)
    with torch.inference_mode():
        timing = run_timed(lambda laps: net(x), plan)
    s = timing.stats()
    return {"frames": frames, "gmac_per_frame": round(macs / frames / 1e9, 4),
            "ms_per_frame_median": round(s.median / frames, 3), "ms_per_frame_min": round(s.min / frames, 3),
            "call": s.as_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper", help="paper (full size), small or tiny")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as `soundloc train --set` (e.g. fine_map=true)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config: Config = preset(args.preset, **Config.parse_overrides(args.overrides))
    torch.manual_seed(0)
    model = AVClassifier(config).eval()
    plan = Plan(args.warmup, args.duration, args.min_iters)
    s, m = config.image_size, config.n_mels
    out = {"preset": args.preset, "overrides": args.overrides, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "plan": asdict(plan), "system": system_info(), "networks": {}}
    for frames in (16, 1):
        for name, net, x in (("video", model.video, torch.randn(1, 3, frames, s, s)),
                             ("audio", model.audio, torch.randn(1, 1, 10 * frames, m))):
            r = measure(net, x, frames, plan)
            out["networks"][f"{name}@{frames}"] = r
            print(f"{name:5} T={frames:2}: {r['gmac_per_frame']:.3f} GMAC/frame, "
                  f"{r['ms_per_frame_median']:.2f} ms/frame (min {r['ms_per_frame_min']:.2f})", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {out['system']['cpu_model']}, "
          f"load {out['system']['load_avg']}")
    if args.json:
        write_json(out, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
