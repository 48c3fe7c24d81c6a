"""The benchmark's statistics, timing rule, report shape and CLI; never a timing value."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from soundloc import bench
from soundloc.bench import BackendResult, Laps, Plan, Stats, percentile, run_timed


class FakeClock:
    """Time moves only when the benchmarked body says so."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.mark.parametrize("q", [0, 1, 10, 25, 50, 90, 95, 99, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy_linear(q, n):
    x = np.random.default_rng(n).exponential(size=n)
    assert percentile(list(x), q) == pytest.approx(np.percentile(x, q, method="linear"), rel=1e-12, abs=1e-12)


def test_percentile_known_values():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]  # sorted 1..5: h = 4 q / 100
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 90) == pytest.approx(4.6)  # h = 3.6: 4 + 0.6 * (5 - 4)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_stats_in_milliseconds():
    s = Stats.from_seconds([0.001 * v for v in range(1, 101)])  # 1..100 ms
    assert (s.n, s.min, s.max) == (100, pytest.approx(1.0), pytest.approx(100.0))
    assert s.mean == pytest.approx(50.5) and s.median == pytest.approx(50.5)
    assert s.p99 == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert set(s.as_dict()) == {"n", "min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"}


def test_run_timed_warmup_duration_and_min_iters():
    clock = FakeClock()
    calls = []

    def body(laps: Laps) -> None:
        calls.append(clock.t)
        clock.advance(0.2)
        laps("a")
        clock.advance(0.1)
        laps("b")

    t = run_timed(body, Plan(warmup_s=1.0, duration_s=2.0, min_iters=3), clock)
    assert t.warmup_iters == 4  # 0, 0.3, 0.6, 0.9 < 1.0
    assert len(t.samples) == 7  # until 2.1 s >= 2.0 s (more than min_iters)
    assert all(s == pytest.approx(0.3) for s in t.samples)
    assert t.stages["a"] == pytest.approx((0.2,) * 7) and t.stages["b"] == pytest.approx((0.1,) * 7)
    assert t.stats("a").median == pytest.approx(200.0)
    t = run_timed(body, Plan(warmup_s=0.0, duration_s=0.5, min_iters=10), clock)
    assert (t.warmup_iters, len(t.samples)) == (0, 10)  # the iteration floor wins over the duration


def test_plan_rejects_bad_values():
    for kw in ({"warmup_s": -1}, {"duration_s": -0.1}, {"min_iters": 0}):
        with pytest.raises(ValueError):
            Plan(**kw)
    assert Plan(1, 2, 50).scaled(3) == Plan(1, 2, 3)


def _report(backends) -> bench.BenchReport:
    recompute = Stats.from_seconds([0.9, 1.0, 1.1])
    step = Stats.from_seconds([0.010, 0.012, 0.011])
    stages = {name: step for name in bench.STAGES} | {"pipeline": step}
    return bench.BenchReport(
        target="x", config={}, plan=Plan(), threads=None, system=bench.system_info() | {"load_avg_end": [0, 0, 0]},
        cost={"macs_per_step": 2_700_000_000, "gmac_per_step": 2.7, "source": "test"},
        clip={"path": "generated", "width": 640, "height": 480}, stages_backend="fake", stages=stages,
        backends=tuple(backends), recompute=recompute, recompute_reason=None,
        checks=bench.checks_for(backends, recompute))


def test_report_json_and_tables_shape():
    from rich.console import Console

    ok = BackendResult("onnxruntime-cpu", True, "onnxruntime (CPU)", step=Stats.from_seconds([0.02, 0.03]),
                       streams={"batch": 4, "call": Stats.from_seconds([0.05]), "streams_per_device": 8.0},
                       floor=Stats.from_seconds([0.020]), peak={"gflops": 100.0, "probe": "test"})
    missing = BackendResult("tensorrt", False, reason="BackendError: no TensorRT engine in this export")
    report = _report([ok, missing])
    d = json.loads(json.dumps(bench.report_dict(report)))
    assert {"system", "plan", "model_cost", "stages", "backends", "references", "targets", "clip"} <= set(d)
    assert set(d["stages"]) == set(bench.STAGES) | {"pipeline"}
    row, gone = d["backends"]
    assert row["available"] and row["step"]["median_ms"] == pytest.approx(25.0)
    assert row["throughput"]["realtime_streams"] == pytest.approx(4.0)
    assert row["flop_utilisation"] == pytest.approx(2 * 2.7e9 / 0.025 / 100e9, rel=1e-3)
    assert gone == {"backend": "tensorrt", "available": False, "reason": missing.reason}
    targets = {t["name"]: t for t in d["targets"]}
    assert targets["p50 step latency"]["met"] is True
    assert targets["speed-up vs window recompute"]["achieved"] == pytest.approx(40.0)
    assert targets["step / offline per-frame floor"]["achieved"] == pytest.approx(1.25)
    assert targets["step / offline per-frame floor"]["met"] is False
    console = Console(width=200, record=True)
    console.print(bench.report_table(report))
    console.print(bench.targets_table(report))
    text = console.export_text()
    assert "onnxruntime-cpu step" in text and "unavailable" in text and "window recompute" in text
    assert any("no TensorRT engine" in line for line in bench.notes_lines(report))


def test_checks_without_references():
    r = BackendResult("onnxruntime-cpu", True, "ort", step=Stats.from_seconds([0.05]))
    checks = bench.checks_for([r], None)
    assert [c.met for c in checks] == [False, None, None]


def test_compare_lists_unavailable_backend_with_reason(tmp_path):
    from soundloc.cli.bench import parse_compare

    assert parse_compare("torch, onnxruntime-cpu") == ["torch", "onnxruntime-cpu"]
    assert parse_compare("all") == list(bench.COMPARE_ALL)
    with pytest.raises(ValueError):
        parse_compare("onnxruntime-gpu")
    ckpt = tmp_path / "x.pt"  # a checkpoint: onnxruntime has nothing to load
    tgt = bench.Target(None, ckpt, bench.Config())
    res, model = bench.bench_backend(tgt, "onnxruntime-cpu", streams=1, plan=Plan(0, 0, 1), threads=None,
                                     scratch=tmp_path, references=False, progress=lambda s: None)
    assert model is None and not res.available and "export directory" in res.reason


def test_bench_module_does_not_import_torch():
    import subprocess

    code = "import sys, soundloc.bench, soundloc.cli.bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")
    torch = pytest.importorskip("torch", reason="torch needed to make the test export")
    from soundloc.config import preset
    from soundloc.export.onnx import export_model
    from soundloc.model.classifier import AVClassifier

    torch.manual_seed(0)
    model = AVClassifier(preset("tiny", num_classes=4)).eval()
    out = tmp_path_factory.mktemp("export")
    export_model(model, out)
    return out


def test_cli_bench_tiny_export(tiny_export, tmp_path):
    from soundloc.cli import run_app

    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as e:
        run_app(["bench", str(tiny_export), "--compare", "onnxruntime-cpu,tensorrt", "--streams", "2",
                 "--warmup", "0.1", "--duration", "0.5", "--min-iters", "3", "--clip-size", "480p-camera",
                 "--json", str(out)])
    assert e.value.code in (0, None)
    d = json.loads(out.read_text())
    for stage in (*bench.STAGES, "pipeline"):
        assert d["stages"][stage]["n"] >= 3 and d["stages"][stage]["median_ms"] >= 0
    ort, trt = d["backends"]
    assert ort["available"] and ort["streams"]["batch"] == 2 and ort["floor_per_frame"]["n"] >= 1
    assert ort["matmul_peak"]["gflops"] > 0 and ort["flop_utilisation"] is not None
    assert not trt["available"] and trt["reason"]
    assert d["references"]["window_recompute"]["step"]["n"] >= 1
    assert d["model_cost"]["macs_per_step"] > 0
    assert {t["backend"] for t in d["targets"]} == {"onnxruntime-cpu"}
    assert d["clip"]["generated"] == "640x480p30-2M" and d["clip"]["bitrate"] == 2_000_000
    assert d["clip"]["decoder"].startswith("h264 640x480 software")  # which decoder the stage ran


def _steps(n: int, loud: int) -> list:
    """``n`` step inputs of a moving pattern: a 440 Hz tone for the first ``loud``, then silence."""
    from soundloc.config import IMAGE_SIZE, SAMPLES_PER_STEP, SAMPLE_RATE
    from soundloc.runtime.sources import StepInput

    rng = np.random.default_rng(0)
    t = np.arange(SAMPLES_PER_STEP) / SAMPLE_RATE
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        audio = (0.5 * np.sin(2 * np.pi * 440 * t) if i < loud else np.zeros_like(t)).astype(np.float32)
        out.append(StepInput(i, i / 10, small[::2, ::2].copy(), small, audio, 0.0))
    return out


def test_bench_localization_stage_runs_the_runtimes_own_code(tiny_export, monkeypatch):
    """``time_pipeline``'s "localization+box" stage is the runtime's ``Localizer.localize`` (window,
    gate, box): the same function object runs inside that lap (a fake clock moves only when it is
    called), and what it gives equals what ``soundloc stream``'s ``Localizer.push`` gives."""
    from soundloc.runtime.engine import StepModel
    from soundloc.runtime.stream import Localizer, StreamOptions

    inputs = _steps(40, loud=20)
    clock, seen, real = FakeClock(), [], Localizer.localize

    def spy(self, finished):
        clock.advance(1.0)
        out = real(self, finished)
        seen.extend(out)
        return out

    monkeypatch.setattr(Localizer, "localize", spy)
    model = StepModel.from_export(tiny_export, backend="onnxruntime-cpu")
    timing = bench.time_pipeline(model, inputs, Plan(warmup_s=0, duration_s=0, min_iters=len(inputs)), clock)
    assert timing.stages["localization+box"] == (1.0,) * len(inputs)
    assert all(v == (0.0,) * len(inputs) for k, v in timing.stages.items() if k != "localization+box")

    monkeypatch.setattr(Localizer, "localize", real)
    loc = Localizer(StepModel.from_export(tiny_export, backend="onnxruntime-cpu"), StreamOptions())
    want = [r for inp in inputs for r in loc.push(inp)]
    assert [r.index for r in seen] == [r.index for r in want] == list(range(len(inputs) - model.lookahead))
    assert [r.gated for r in seen] == [r.gated for r in want]
    assert not seen[0].gated and seen[-1].gated  # the gate runs: the tone, then silence
    for got, ref in zip(seen, want):
        assert got.box == ref.box and got.score == pytest.approx(ref.score, rel=1e-5)
        assert (got.heatmap is None) == (ref.heatmap is None)
        if ref.heatmap is not None:
            np.testing.assert_allclose(got.heatmap, ref.heatmap, atol=1e-5)


def test_random_weights_are_said_first_in_every_bench_report():
    from dataclasses import replace

    from soundloc.runtime.bundle import random_weights_note

    note = random_weights_note({"checkpoint": {"random_weights": True, "preset": "paper", "seed": 0}})
    assert note.startswith("RANDOM WEIGHTS") and "'paper'" in note
    assert random_weights_note({"checkpoint": {"file": "best.pt", "sha256": "ab"}}) is None
    ok = BackendResult("onnxruntime-cpu", True, "ort", step=Stats.from_seconds([0.02]))
    report = replace(_report([ok]), weights=note)
    assert bench.notes_lines(report)[0] == note
    assert bench.report_dict(report)["weights"] == note
    assert bench.report_dict(_report([ok]))["weights"] == "from a checkpoint"


def test_bench_torch_backend_in_bf16_says_its_precision(tiny, tmp_path):
    """The torch backend at the GPU's reduced precision (run here on the CPU: bf16 is the one
    both have); on a GPU the same command keeps the state on the device (not tested here)."""
    pytest.importorskip("torch", reason="the torch backend")
    from soundloc.cli import run_app

    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as e:
        run_app(["bench", str(tiny.ckpt), "--backend", "torch", "--torch-dtype", "bf16", "--no-references",
                 "--warmup", "0.1", "--duration", "0.3", "--min-iters", "3", "--json", str(out)])
    assert e.value.code in (0, None)
    (row,) = json.loads(out.read_text())["backends"]
    assert row["available"] and "cpu bf16" in row["name"] and row["step"]["n"] >= 3
    with pytest.raises(SystemExit) as e:
        run_app(["bench", str(tiny.ckpt), "--backend", "torch", "--torch-dtype", "int4"])
    assert e.value.code not in (0, None)
