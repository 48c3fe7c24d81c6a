"""A run's weights averaged over its epochs, read after the fact at several half-lives (issue 24,
seventh round: not adopted, the averages point where the last epoch does).

The average is exponential over the weights at each epoch's end: the first epoch's weights, then
each new epoch's weighted ``1 - decay`` with ``decay = 0.5 ** (1 / half_life)`` (a half-life in
epochs), except that while fewer epochs have been averaged than that weighting implies all count
the same (the plain mean). Floating-point parameters and buffers (BatchNorm's running statistics)
are averaged, integer buffers copied. A run trained with ``--keep-epochs`` holds every epoch's
weights, so any half-life is read without training again. Writes ``NAME_hlH_last.pt`` (the
average after the last epoch) for each half-life, to be scored with ``peak_placement.py``.

    python benchmarks/weight_average.py --run runs/e30_s0 --half-life 1 2 4 8 --out runs/avg
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from soundloc.model.checkpoint import load_checkpoint, save_checkpoint


@torch.no_grad()
def update(average: nn.Module, trained: nn.Module, updates: int, half_life: float) -> None:
    """Fold ``trained`` into ``average``, which already holds ``updates`` epochs."""
    keep = min(0.5 ** (1.0 / half_life), updates / (updates + 1))
    new = trained.state_dict()
    for name, avg in average.state_dict().items():
        if avg.is_floating_point() and keep > 0:
            avg.lerp_(new[name].to(avg.dtype), 1.0 - keep)
        else:
            avg.copy_(new[name])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run folder with epoch_XXX.pt (--keep-epochs)")
    ap.add_argument("--half-life", type=float, nargs="+", required=True, help="half-lives in epochs")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    paths = sorted(args.run.glob("epoch_*.pt"))
    if not paths:
        raise SystemExit(f"{args.run}: no epoch_XXX.pt (train with --keep-epochs)")
    args.out.mkdir(parents=True, exist_ok=True)
    epochs = [load_checkpoint(path)[0] for path in paths]  # read once for every half-life
    for h in args.half_life:
        average = copy.deepcopy(epochs[0])
        for i, trained in enumerate(epochs):
            update(average, trained, i, h)
        dst = args.out / f"{args.run.name}_hl{h:g}_last.pt"
        save_checkpoint(dst, average)
        print(f"half-life {h:g} epochs: the average of {len(paths)} epochs -> {dst}")


if __name__ == "__main__":
    main()
