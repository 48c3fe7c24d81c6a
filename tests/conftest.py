from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.is_dir():  # CI lays shared/ beside the clone
    SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_WAV = SHARED / "data" / "vggsound" / "FwVYUHKoLtQ_000034.wav"


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
    """Give BatchNorm layers non-trivial statistics so eval-mode tests exercise them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
