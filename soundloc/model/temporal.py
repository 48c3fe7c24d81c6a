"""Convolutions that mix time with 3 taps, and how to run them one step at a time.

Both backbones mix time only through 3-tap convolutions (kernel 3 along time, stride 1). Each
one has a *lookahead* of 1 (centred, zero-padded one step on each side: the paper's MC3-18) or
0 (causal: two steps of past padding). Offline they pad and convolve the whole sequence;
streaming they keep the last two input steps as explicit state, see one new step, and emit the
output step ``lookahead`` steps in the past. With zero state at the start, and the inputs of
invalid (not-yet-existing or flushed) steps masked to zero, the stream equals the offline
result exactly (docs/design.md §3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HISTORY = 2  # input steps a 3-tap temporal conv keeps between calls


class TemporalConv3d(nn.Conv3d):
    """Conv3d over (time, height, width) whose time padding honours ``lookahead``.

    A subclass of ``nn.Conv3d`` so its state-dict keys are torchvision's. Time kernel 1 means
    per-frame (MC3's 2-D layers); time kernel 3 mixes time.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int],
                 lookahead: int = 1) -> None:
        kt, kh, kw = kernel
        super().__init__(cin, cout, kernel, stride=stride, padding=(0, kh // 2, kw // 2), bias=False)
        self.lookahead = lookahead if kt == 3 else 0

    @property
    def mixes_time(self) -> bool:
        return self.kernel_size[0] == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixes_time:
            past = HISTORY - self.lookahead
            x = F.pad(x, (0, 0, 0, 0, past, self.lookahead))
        return super().forward(x)

    def step(self, cache: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One streaming step on single frames: ``cache`` (B, C, 2, H, W) past inputs, ``x``
        (B, C, H, W) the new one -> the output frame (B, C', H', W') for the step ``lookahead``
        steps back, and the window of the last three inputs (its last two: the next cache).

        The 3-frame convolution runs as a Conv2d over the frames stacked on channels (weights
        (C', C, 3, kh, kw) -> (C', 3C, kh, kw), same order): identical sums, and about twice as
        fast as a 5-D Conv3d in onnxruntime and TensorRT on CPUs and GPUs alike.
        """
        window = torch.cat([cache, x.unsqueeze(2)], dim=2)
        out = F.conv2d(window.flatten(1, 2), self.weight.flatten(1, 2), None, self.stride[1:], self.padding[1:])
        return out, window


def frame_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A time-kernel-1 Conv3d applied to single frames (B, C, H, W), as the Conv2d it is."""
    return F.conv2d(x, conv.weight[:, :, 0], conv.bias, conv.stride[1:], conv.padding[1:])


def frame_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm3d on single frames (B, C, H, W)."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class TemporalConv2d(nn.Conv2d):
    """Conv2d over (time, frequency) for the audio net; time steps are whole model steps.

    ``patch`` > 1 makes it the audio stem: the time axis is in mel frames, ``patch`` of them
    per model step, and the kernel spans 3 steps (3*patch frames) with stride ``patch``.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int],
                 lookahead: int = 1, patch: int = 1) -> None:
        kt, kf = kernel
        super().__init__(cin, cout, (kt * patch, kf), stride=(stride[0] * patch, stride[1]),
                         padding=(0, kf // 2), bias=False)
        self.patch = patch
        self.lookahead = lookahead if kt == 3 else 0

    @property
    def mixes_time(self) -> bool:
        return self.kernel_size[0] == 3 * self.patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixes_time:
            past = (HISTORY - self.lookahead) * self.patch
            x = F.pad(x, (0, 0, past, self.lookahead * self.patch))
        return super().forward(x)

    def step(self, cache: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cache`` (B, C, 2*patch, F), ``x`` (B, C, patch, F) -> one output step, window."""
        window = torch.cat([cache, x], dim=2)
        return super().forward(window), window


def delayed(window: torch.Tensor, delay: int, patch: int = 1) -> torch.Tensor:
    """The input step ``delay`` steps before the newest one, from a 3-step window (time axis 2)."""
    start = (HISTORY - delay) * patch
    return window[:, :, start:start + patch]
