"""Multiply-accumulate counts per model step, by forward hooks on every conv and linear layer."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .families import model_parts


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """MACs of one forward of ``module`` on ``inputs`` (convolutions and linear layers)."""
    total = 0

    def hook(m: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            per_output = m.in_channels // m.groups
            for k in m.kernel_size:
                per_output *= k
            total += out.numel() * per_output
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def macs_per_step(model: nn.Module, config: Config, steps: int = 16) -> dict[str, float]:
    """Each network's MACs per 10 fps step (the model family's networks), measured on a
    ``steps``-step clip where the network sees time.

    Counts include the temporal padding steps' share, so use a clip of at least a few steps.
    """
    nets = model_parts(config).networks(model, config, steps)
    return {name: count_macs(net, *inputs) / n for name, (net, inputs, n) in nets.items()}
