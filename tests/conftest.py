from __future__ import annotations

import signal
import subprocess
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.is_dir():  # CI lays shared/ beside the clone
    SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_WAV = SHARED / "data" / "vggsound" / "FwVYUHKoLtQ_000034.wav"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@pytest.fixture(autouse=True)
def no_signal_handler_left_installed():
    """A test that runs a command in-process must leave this process's stop-signal handlers as it
    found them: a handler left behind (the CLI's ``_exit_on_signal``) turns a signal meant for the
    whole test run into a failure of whichever test happens to be running. Restores them, then
    fails the test that left one."""
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    left = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) is not before[s]}
    for s in left:
        signal.signal(s, before[s])
    assert not left, f"the test left signal handlers installed: {left}"


@pytest.fixture
def torch_one_thread():
    """Torch at one intra-op thread for the test, restored after: on a shared 2-core machine
    OpenMP threads that spin against other processes make tiny training steps 100x slower.
    Modules that train use it with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture
def real_audio(shared_dir: Path) -> np.ndarray:
    from scipy.io import wavfile

    rate, data = wavfile.read(shared_dir / "data" / "vggsound" / "FwVYUHKoLtQ_000034.wav")
    assert rate == 16000
    return data.astype(np.float32) / 32768.0


def randomise_batchnorm(model, seed: int = 0) -> None:
    from soundloc.export.verify import randomise_batchnorm as randomise

    randomise(model, seed)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> types.SimpleNamespace:
    """A tiny model as a checkpoint and as an export directory."""
    torch = pytest.importorskip("torch", reason="torch (the train extra) needed to make the test model")
    from soundloc.config import preset
    from soundloc.export.onnx import export_model
    from soundloc.model.checkpoint import save_checkpoint
    from soundloc.model.classifier import AVClassifier

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = AVClassifier(preset("tiny", num_classes=4)).eval()
    save_checkpoint(root / "tiny.pt", model)
    bundle = export_model(model, root / "export", graphs=("step",))
    return types.SimpleNamespace(ckpt=root / "tiny.pt", export=bundle.root, bundle=bundle)


class QuietHandler(BaseHTTPRequestHandler):
    """A test server's request handler that keeps the test output clean."""

    def log_message(self, *args: object) -> None:
        pass


def serve_http(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server on 127.0.0.1 (a free port) serving in a daemon thread, and its base URL;
    the caller shuts it down (``shutdown()`` then ``server_close()``)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def soundloc_cli(*args: object, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real `soundloc` command (``python -m soundloc``) in a subprocess."""
    import sys

    cmd = [sys.executable, "-m", "soundloc", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> types.SimpleNamespace:
    """A default-recipe model as a user makes one: `soundloc train` with no recipe flags (tied-fc
    head, salient maps) on a small synthetic set (tiny preset, 2 s clips, ~10 s here), then
    `soundloc export` of its best.pt. ``data`` is the training folder (VGGSound layout)."""
    pytest.importorskip("torch", reason="torch (the train extra) needed to train the test model")
    from soundloc.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("default_run")
    data = root / "data"
    make_synthetic_dataset(data, num_clips=12, seconds=2.0, num_classes=2, val_fraction=0.25, workers=1, size=64)
    r = soundloc_cli("train", data, "--out", root / "run", "--preset", "tiny", "--epochs", "6", "--workers", "0",
                     "--batch-size", "2", "--lr", "0.05")
    assert r.returncode == 0, r.stderr
    r = soundloc_cli("export", root / "run" / "best.pt", "--out", root / "export")
    assert r.returncode == 0, r.stderr
    return types.SimpleNamespace(data=data, ckpt=root / "run" / "best.pt", export=root / "export", root=root)
