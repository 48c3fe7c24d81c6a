"""The audio network: log-mel (B, 1, 10T, 80) -> z^A (B, T, D), one embedding per video frame.

A ResNet-18-shaped 2-D CNN over (time, frequency) in the spirit of AVObjects (paper [1]),
shaped to stream exactly like MC3 (docs/design.md §3): the stem *patchifies* time, 10 mel frames per
model step (kernel 3 steps = 30 mel frames, stride 10), so every later layer works in model
steps; the stem and layer1 are 3-tap in time (receptive field +-5 steps, as the video net),
layers 2-4 act on each step alone and halve the frequency axis. No time downsampling, so step
t of z^A is aligned with mel frames [10t, 10t+10) and with video frame t.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..mel import LOG_FLOOR, hann_window, mel_filters
from ..config import HOP_LENGTH, MELS_PER_STEP, N_FFT, N_MELS, Config
from .temporal import TemporalConv2d


class AudioBlock(nn.Module):
    """Residual block over (time, freq); same parameter layout as the video BasicBlock."""

    def __init__(self, cin: int, cout: int, temporal: bool, stride: int, lookahead: int) -> None:
        super().__init__()
        kernel = (3, 3) if temporal else (1, 3)
        self.conv1 = nn.Sequential(TemporalConv2d(cin, cout, kernel, (1, stride), lookahead), nn.BatchNorm2d(cout),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(TemporalConv2d(cout, cout, kernel, (1, 1), lookahead), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=(1, stride), bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class AudioNet(nn.Module):
    """(B, 1, 10T, 80) log-mel -> z^A (B, T, D)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        la = 0 if config.causal else 1
        widths = [config.channels(c) for c in (64, 128, 256, 512)]
        self.norm = nn.BatchNorm1d(N_MELS)  # per-frequency standardisation of the log-mel
        self.stem = nn.Sequential(
            TemporalConv2d(1, widths[0], (3, 7), (1, 2), la, patch=MELS_PER_STEP),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        cin = widths[0]
        for i, (cout, blocks) in enumerate(zip(widths, config.layers)):
            stride, temporal = (1, True) if i == 0 else (2, False)
            stage = []
            for b in range(blocks):
                stage.append(AudioBlock(cin, cout, temporal, stride if b == 0 else 1, la))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.out_channels = cin

    def normalise(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, 80) -> the same, standardised per mel bin."""
        return self.norm(mel.squeeze(1).transpose(1, 2)).transpose(1, 2).unsqueeze(1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalise(mel))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x)

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        """Mean over frequency: (B, D, T, f) -> (B, T, D)."""
        return x.mean(dim=3).transpose(1, 2)


class LogMel(nn.Module):
    """The log-mel of ``soundloc.mel`` as convolutions with a fixed DFT basis.

    For graphs (TensorRT has no STFT/DFT) and GPU batches; parity with the numpy
    implementation is a test. (B, N) waveform -> (B, N // 160, 80).
    """

    def __init__(self) -> None:
        super().__init__()
        n = np.arange(N_FFT)
        k = np.arange(N_FFT // 2 + 1)
        angle = 2 * np.pi * np.outer(k, n) / N_FFT
        window = hann_window()
        basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window]).astype(np.float32)
        self.register_buffer("basis", torch.from_numpy(basis).unsqueeze(1), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filters().copy()), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.shape[-1] // HOP_LENGTH
        x = nn.functional.pad(audio[:, : frames * HOP_LENGTH], (N_FFT - HOP_LENGTH, 0)).unsqueeze(1)
        spec = nn.functional.conv1d(x, self.basis, stride=HOP_LENGTH)  # (B, 2K, frames)
        re, im = spec.chunk(2, dim=1)
        power = re * re + im * im
        return torch.log(torch.einsum("mk,bkt->btm", self.filters, power) + LOG_FLOOR)
