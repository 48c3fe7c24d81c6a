"""Latency benchmarking: trtexec-grade statistics for every stage of the live pipeline, the
backends side by side, and the references that say what the numbers mean.

What is measured (times in milliseconds unless named otherwise):

- **stages** of one 10 fps step, each timed apart: decode (a real H.264 + AAC clip through
  ``StepSource``: demux, decode, resample, resize), preprocess + mel (frame normalisation and
  the incremental log-mel), model step (the exact streaming step graph), localization + box
  (3 s trailing window, min-max normalisation, pseudo box) and render (``overlay`` at the
  source resolution);
- the **model step** of each backend alone, at batch 1 and batched over ``--streams`` streams;
- **references**: (1) the research-code way of making a live demo, PyTorch eager recomputing
  the whole 3 s window (30 frames) at every step; (2) the floor, the offline video + audio
  graphs on a long clip per frame, on the same runtime; (3) the machine's sustained matmul
  FLOP/s on the same runtime, which turns the step time into a FLOP utilisation.

Each measurement warms up for ``warmup_s`` seconds, then runs until both ``duration_s``
seconds and ``min_iters`` iterations have passed (trtexec's rule). Percentiles interpolate
linearly between order statistics (``percentile``). torch is imported only by the torch
backend and the references that need it.

Modules: ``stats`` (percentiles, the timing loop), ``stages`` (the clip and the pipeline stages),
``backends`` (the target and its model on a backend), ``references`` (window recompute, offline
floor, matmul peak, MACs), ``system`` (the machine), ``runner`` (``run_bench``) and ``report``
(JSON, tables and notes). Every public name is re-exported here.
"""

from __future__ import annotations

from ..config import Config
from .targets import (
                     COMPARE_ALL,
                     Target,
                     load_model,
                     resolve_target,
)
from .references import (
                     MATMUL_N,
                     matmul_peak,
                     model_macs,
                     onnx_macs,
                     time_floor,
                     time_window_recompute,
)
from .report import (
                     notes_lines,
                     precision_ratios,
                     report_dict,
                     report_table,
                     summary_lines,
                     targets_table,
                     utilisation,
)
from .runner import (
                     TARGET_FLOOR_RATIO,
                     TARGET_SPEEDUP,
                     TARGET_STEP_MS,
                     BackendResult,
                     BenchReport,
                     Check,
                     bench_backend,
                     checks_for,
                     run_bench,
)
from .stages import (
                     CLIP_PRESETS,
                     FLOOR_FRAMES,
                     STAGES,
                     ClipSpec,
                     make_clip,
                     time_decode,
                     time_pipeline,
                     time_step,
)
from .stats import Clock, Laps, Plan, Stats, Timing, percentile, run_timed
from .system import Tegrastats, system_info

__all__ = [
                     "CLIP_PRESETS",
                     "COMPARE_ALL",
                     "FLOOR_FRAMES",
                     "MATMUL_N",
                     "STAGES",
                     "TARGET_FLOOR_RATIO",
                     "TARGET_SPEEDUP",
                     "TARGET_STEP_MS",
                     "BackendResult",
                     "BenchReport",
                     "Check",
                     "ClipSpec",
                     "Clock",
                     "Config",
                     "Laps",
                     "Plan",
                     "Stats",
                     "Target",
                     "Tegrastats",
                     "Timing",
                     "bench_backend",
                     "checks_for",
                     "load_model",
                     "make_clip",
                     "matmul_peak",
                     "model_macs",
                     "notes_lines",
                     "onnx_macs",
                     "percentile",
                     "precision_ratios",
                     "report_dict",
                     "report_table",
                     "resolve_target",
                     "run_bench",
                     "run_timed",
                     "summary_lines",
                     "system_info",
                     "targets_table",
                     "time_decode",
                     "time_floor",
                     "time_pipeline",
                     "time_step",
                     "time_window_recompute",
                     "utilisation",
]
