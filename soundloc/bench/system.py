"""The machine a benchmark ran on: CPU, runtimes, GPU, Jetson power state and load; and
``tegrastats`` sampled in the background."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

# -- the machine -----------------------------------------------------------------------------------


def command_output(args: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a command, or None when it is absent or fails (never raises)."""
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info() -> dict[str, Any]:
    """Device, CPU, threads, runtime versions; GPU, driver, TensorRT and Jetson power state
    where present (absent: None). Load average too: a busy machine explains slow numbers."""
    ort_info = None
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        ort_info = {"version": ort.__version__, "providers_built": ort.get_available_providers()}
    gpu = command_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    jetson = Path("/etc/nv_tegra_release")
    return {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__, "onnxruntime": ort_info, "torch": _version("torch"),
        "gpu": gpu.splitlines() if gpu else None,
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"),
        "jetson": {"release": jetson.read_text().splitlines()[0] if jetson.is_file() else None,
                   "nvpmodel": command_output(["nvpmodel", "-q"]),
                   "jetson_clocks": command_output(["jetson_clocks", "--show"])} if jetson.is_file() else None,
    }


class Tegrastats:
    """Samples ``tegrastats`` (Jetson power, clocks, load) in the background while a benchmark
    runs; ``lines`` is empty where it does not exist."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.interval_ms = interval_ms
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def __enter__(self) -> Tegrastats:
        if shutil.which("tegrastats"):
            self.proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.lines = out.strip().splitlines()
