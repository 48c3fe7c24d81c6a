"""`soundloc doctor`: the inventory says what is missing and what to install; the onnxruntime
CPU checks run for real; GPU results are judged by the tolerance policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from soundloc.bench import doctor  # noqa: E402
from soundloc.cli import app  # noqa: E402
from soundloc.runtime.backend import BackendError  # noqa: E402


@pytest.fixture
def cpu_only(monkeypatch):
    """This machine as a CPU box whatever it really has: no driver, no CUDA, no TensorRT, no
    cuda-python (the lookups are replaced; everything else is real)."""
    def absent(*a, **k):
        raise BackendError("not installed")

    monkeypatch.setattr(doctor, "command_output", lambda args, timeout=5.0: None)
    monkeypatch.setattr(doctor, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(doctor, "import_tensorrt", absent)
    monkeypatch.setattr(doctor, "import_cudart", absent)
    monkeypatch.setattr("soundloc.runtime.onnx_backend.cuda_device_count", lambda: 0)


def _by_name(report) -> dict:
    return {f.name: f for f in report.findings}


def test_cpu_box_reports_what_is_missing_and_runs_the_cpu_checks(cpu_only, tmp_path):
    report = doctor.run_doctor(steps=3, full=False, workdir=tmp_path)
    found = _by_name(report)
    assert found["NVIDIA driver"].status == "missing" and "install the NVIDIA driver" in found["NVIDIA driver"].fix
    assert found["CUDA devices"].status == "missing"
    assert found["TensorRT"].status == "missing" and "pip install tensorrt-cu12" in found["TensorRT"].fix
    assert found["cuda-python"].status == "missing" and "pip install cuda-python" in found["cuda-python"].fix
    cpu = found["demo: onnxruntime CPU"]
    assert cpu.status == "pass" and cpu.figures["ms_per_step"] > 0
    for name in ("demo: onnxruntime-cuda", "demo: onnxruntime-tensorrt", "demo: TensorRT engine build", "demo: tensorrt"):
        assert found[name].status == "skip" and found[name].fix, name
    assert report.ok  # nothing that ran failed
    assert not doctor.DoctorReport(report.findings, require_gpu=True).ok  # a GPU check demands the pieces
    assert not (tmp_path / "demo" / "step.engine").exists()


def test_provider_fix_depends_on_what_onnxruntime_was_built_with(cpu_only, tmp_path):
    bundle = doctor.demo_export(tmp_path / "demo")
    cpu_wheel = doctor.Machine(gpus=0, tensorrt=None, ort_gpu=(), ort_built=("CPUExecutionProvider",))
    gpu_wheel = doctor.Machine(gpus=0, tensorrt=None, ort_gpu=(), ort_built=("CUDAExecutionProvider",))
    skip = {f.name: f for f in doctor.check_export("demo", bundle, 2, cpu_wheel)}["demo: onnxruntime-cuda"]
    assert "pip install 'soundloc[gpu]'" in skip.fix
    skip = {f.name: f for f in doctor.check_export("demo", bundle, 2, gpu_wheel)}["demo: onnxruntime-cuda"]
    assert "NVIDIA driver" in skip.fix


def test_gpu_results_are_judged_against_the_cpu_reference(cpu_only, tmp_path, monkeypatch):
    """GPU runs faked: ``run_steps`` for a GPU backend returns the real CPU reference plus a chosen
    error, and the engine build returns the bundle. Under test: how doctor judges them."""
    bundle = doctor.demo_export(tmp_path / "demo")
    real = doctor.run_steps
    noise = {"onnxruntime-cuda": 1e-4, "onnxruntime-tensorrt": 0.0, "tensorrt": 0.5}

    def fake_run(b, backend, inputs, device=0):
        ref, ms, name = real(b, "onnxruntime-cpu", inputs)
        if backend == "onnxruntime-cpu":
            return ref, ms, name
        scale = max(float(np.abs(ref["alpha"]).max()), 1.0)
        return {k: v + noise[backend] * scale for k, v in ref.items()}, 0.5, f"fake {backend}"

    monkeypatch.setattr(doctor, "run_steps", fake_run)
    monkeypatch.setattr("soundloc.deploy.trt_engines.build_engines", lambda b, **kw: b)
    machine = doctor.Machine(gpus=1, tensorrt="10.3.0", ort_gpu=("TensorrtExecutionProvider", "CUDAExecutionProvider"))
    found = {f.name: f for f in doctor.check_export("demo", bundle, 4, machine)}
    assert found["demo: onnxruntime-cuda"].status == "pass"
    assert found["demo: onnxruntime-tensorrt"].status == "pass"
    assert found["demo: TensorRT engine build"].status == "pass"
    bad = found["demo: tensorrt"]
    assert bad.status == "fail" and "tf32 tolerance" in bad.detail
    assert bad.figures["alpha"]["max_abs_error"] > bad.figures["alpha"]["allowed"]


def test_compare_scales_with_the_reference():
    ref = {"alpha": np.full((3, 7, 7), 100.0), "score": np.full(3, 0.5)}
    ok, detail, figures = doctor.compare({"alpha": ref["alpha"] + 0.5, "score": ref["score"]}, ref, "tf32")
    assert ok and figures["alpha"]["allowed"] == pytest.approx(1.0)  # 1e-2 of 100
    ok, _, _ = doctor.compare({"alpha": ref["alpha"] + 0.5, "score": ref["score"]}, ref, "fp32")
    assert not ok


def test_cli_json_and_exit_code(cpu_only, tmp_path):
    out = tmp_path / "doctor.json"
    res = CliRunner().invoke(app, ["doctor", "--no-full", "--steps", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["ok"] and {f["status"] for f in data["findings"]} >= {"missing", "pass", "skip"}
    assert "missing  TensorRT" in res.output and "pip install tensorrt-cu12" in res.output
    res = CliRunner().invoke(app, ["doctor", "--no-full", "--steps", "2", "--require-gpu"])
    assert res.exit_code == 1 and "failed" in res.output
    res = CliRunner().invoke(app, ["doctor", "--steps", "0"])
    assert res.exit_code == 2 and "steps must be >= 1" in res.output


@pytest.mark.slow
def test_full_size_random_export_runs_on_cpu(cpu_only, tmp_path):
    """The full-size random export (PyTorch) is made and streamed on onnxruntime CPU (~1-2 min)."""
    pytest.importorskip("torch", reason="the full-size export needs PyTorch")
    report = doctor.run_doctor(steps=2, full=True, workdir=tmp_path)
    found = _by_name(report)
    assert found["full-size: onnxruntime CPU"].status == "pass"
    assert any("RANDOM WEIGHTS" in note for note in report.notes)
    from soundloc.runtime.bundle import read_bundle

    assert read_bundle(tmp_path / "full-size").config.width == 1.0


def test_driver_line_from_nvidia_smi(monkeypatch):
    """nvidia-smi's CSV (faked: no driver here) read into the inventory line; an old driver
    without the compute_cap field still counts as present."""
    answers = {doctor.SMI_FIELDS: "NVIDIA H100 80GB HBM3, 550.54.15, 9.0, 1980, 1980, 2619, 2619"}
    monkeypatch.setattr(doctor, "command_output", lambda args, timeout=5.0: answers.get(args[1].split("=", 1)[1]))
    found = doctor._driver()
    assert found.status == "pass" and "NVIDIA H100 80GB HBM3 (sm_90), driver 550.54.15" in found.detail
    assert "SM 1980/1980 MHz" in found.detail
    answers = {"name,driver_version": "Tesla T4, 470.82.01"}
    found = doctor._driver()
    assert found.status == "pass" and "Tesla T4" in found.detail and "driver 470.82.01" in found.detail
    answers = {}
    assert doctor._driver().status == "missing"
