"""Where torch stops, as the README's package picture draws it, and the stream's typed end reason."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import soundloc
from soundloc.runtime.run import End

# The torch side of the package (README "Package layout"): everything else imports without torch.
TORCH_SIDE = ("soundloc.model", "soundloc.train", "soundloc.inference",
              "soundloc.export.onnx", "soundloc.export.verify", "soundloc.export.quantize", "soundloc.export.ezvsl")


# Runs inside Triton's Python backend (which provides triton_python_backend_utils), never imported here.
SERVER_SIDE = ("soundloc.deploy.triton_python_model",)


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(soundloc.__path__, "soundloc.")
                  if m.name != "soundloc.__main__" and m.name not in SERVER_SIDE)


def test_every_module_off_the_torch_side_imports_without_torch() -> None:
    light = [m for m in _modules() if not m.startswith(TORCH_SIDE)]
    assert "soundloc.data.annotations" in light and "soundloc.runtime.run" in light and len(light) > 40
    script = ("import importlib, sys\n"
              f"for m in {light!r}:\n"
              "    importlib.import_module(m)\n"
              "    assert 'torch' not in sys.modules, m + ' imported torch'\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr.strip().splitlines()[-1]


def test_the_torch_side_names_only_existing_modules() -> None:
    mods = _modules()
    assert all(any(m == side or m.startswith(side + ".") for m in mods) for side in TORCH_SIDE)


@pytest.mark.parametrize("end, live, again", [
    (End.STALLED, False, True), (End.OPEN_FAILED, False, True),  # a file that stalled or would not open
    (End.INPUT_END, True, True), (End.INPUT_FAILED, True, True),  # a camera or stream that hung up
    (End.INPUT_END, False, False), (End.INPUT_FAILED, False, False),  # a file: reopening would repeat it
    (End.SIGNAL, True, False), (End.TIME_LIMIT, True, False),  # the user's decision, never undone
])
def test_the_reconnect_decision_reads_the_end_as_a_value(end: End, live: bool, again: bool) -> None:
    assert end.worth_reconnecting(live) is again
