"""Percentiles of latency samples: the one definition the stream summary, the serve summary and
the benchmark share (so a p99 means the same in each)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics: with the
    samples sorted as x_0..x_{n-1} and h = (n-1) q / 100, it is x_floor(h) + (h - floor(h)) *
    (x_floor(h)+1 - x_floor(h)). This is numpy's default ``method="linear"`` (Hyndman-Fan type
    7); unlike trtexec's nearest rank it does not jump between samples on short runs."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], not {q}")
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("percentile of no samples")
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def summary_percentile(samples: Sequence[float], q: float) -> float:
    """``percentile`` rounded to 3 decimals for a summary, 0.0 when nothing was measured."""
    return round(percentile(samples, q), 3) if len(samples) else 0.0
