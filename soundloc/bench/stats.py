"""Statistics and the timing loop: percentiles, ``Stats``, the warm-up/measure ``Plan`` (trtexec's
rule), the ``Laps`` stage stopwatch and ``run_timed``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from ..percentiles import percentile

Clock = Callable[[], float]


# -- statistics ---------------------------------------------------------------------------------



@dataclass(frozen=True)
class Stats:
    """Summary of one timed quantity, in milliseconds."""

    n: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> Stats:
        ms = [1000.0 * s for s in samples]
        if not ms:
            raise ValueError("no samples to summarise")
        return cls(n=len(ms), min=min(ms), mean=sum(ms) / len(ms), median=percentile(ms, 50),
                   p90=percentile(ms, 90), p95=percentile(ms, 95), p99=percentile(ms, 99), max=max(ms))

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, **{f"{k}_ms": round(v, 4) for k, v in asdict(self).items() if k != "n"}}


# -- timing loop -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Warm up for ``warmup_s`` seconds (at least one call when > 0), then measure until both
    ``duration_s`` seconds and ``min_iters`` iterations are done."""

    warmup_s: float = 2.0
    duration_s: float = 5.0
    min_iters: int = 50

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.duration_s < 0:
            raise UsageError(f"warm-up and duration must be >= 0 s, not {self.warmup_s}, {self.duration_s}")
        if self.min_iters < 1:
            raise UsageError(f"min_iters must be >= 1, not {self.min_iters}")

    def scaled(self, min_iters: int) -> Plan:
        """The same times with another iteration floor (references whose calls take seconds)."""
        return Plan(self.warmup_s, self.duration_s, min(self.min_iters, min_iters))


class Laps:
    """Stage stopwatch for one iteration: ``laps("decode")`` closes the stage that began at the
    previous lap (or at the start of the iteration)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.start = self.last = clock()
        self.laps: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = self.clock()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now


@dataclass(frozen=True)
class Timing:
    """Raw result of ``run_timed``: per-iteration seconds, per-stage seconds, and counts."""

    samples: tuple[float, ...]
    stages: dict[str, tuple[float, ...]]
    warmup_iters: int
    wall_s: float

    def stats(self, stage: str | None = None) -> Stats:
        return Stats.from_seconds(self.samples if stage is None else self.stages[stage])


def run_timed(body: Callable[[Laps], Any], plan: Plan, clock: Clock = time.perf_counter) -> Timing:
    """Call ``body(laps)`` under ``plan``; each call's total and lapped stages are recorded."""
    start = clock()
    warm = 0
    while clock() - start < plan.warmup_s:
        body(Laps(clock))
        warm += 1
    t0 = clock()
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    while len(totals) < plan.min_iters or clock() - t0 < plan.duration_s:
        laps = Laps(clock)
        body(laps)
        totals.append(clock() - laps.start)
        for name, s in laps.laps.items():
            stages.setdefault(name, []).append(s)
    return Timing(tuple(totals), {k: tuple(v) for k, v in stages.items()}, warm, clock() - t0)
