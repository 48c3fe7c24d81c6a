"""MC3-18 (Tran et al. 2018), the paper's video backbone, with torchvision's ``mc3_18`` layout.

3-D convolutions in the stem and layer1, 2-D (1x3x3) ones in layers 2-4, spatial stride only:
time is never downsampled, so (B, 3, T, 112, 112) -> V (B, 512, T, 7, 7) (14x14 with the
config's ``fine_map``: layer4 without its spatial stride). Parameter names and
shapes equal torchvision's, so a Kinetics ``mc3_18`` state dict loads (``fc.*`` aside).
Variants are data (``width``, ``layers``, ``causal`` in the config), as in torchvision's builder.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .temporal import TemporalConv3d


def _conv(cin: int, cout: int, temporal: bool, stride: int, lookahead: int) -> TemporalConv3d:
    kernel = (3, 3, 3) if temporal else (1, 3, 3)
    return TemporalConv3d(cin, cout, kernel, (1, stride, stride), lookahead)


class BasicBlock(nn.Module):
    """torchvision's video BasicBlock: conv1 (conv, bn, relu), conv2 (conv, bn), downsample."""

    def __init__(self, cin: int, cout: int, temporal: bool, stride: int, lookahead: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_conv(cin, cout, temporal, stride, lookahead), nn.BatchNorm3d(cout),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(_conv(cout, cout, temporal, 1, lookahead), nn.BatchNorm3d(cout))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, cout, kernel_size=1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class VideoNet(nn.Module):
    """(B, 3, T, H, W) normalised RGB -> V (B, D, T, H/16, W/16) (H/8 with ``fine_map``); ``pool``
    gives z^V (B, T, D)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        la = 0 if config.causal else 1
        widths = [config.channels(c) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            TemporalConv3d(3, widths[0], (3, 7, 7), (1, 2, 2), la), nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        cin = widths[0]
        for i, (cout, blocks) in enumerate(zip(widths, config.layers)):
            stride, temporal = (1, True) if i == 0 else (2, False)  # MC3: 3-D layer1, 2-D layers 2-4
            if i == 3 and config.fine_map:
                stride = 1  # a finer map: the last stage keeps layer3's resolution
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(cin, cout, temporal, stride if b == 0 else 1, la))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.out_channels = cin
        self.coarse_training = config.fine_map and config.coarse_training
        self.train(self.training)

    def train(self, mode: bool = True) -> VideoNet:
        """Also sets layer4's stride where the config trains coarse and reads fine
        (``coarse_training``): 2 while training, 1 in eval mode (every inference path)."""
        super().train(mode)
        if self.coarse_training:
            block, s = self.layer4[0], (1, 2, 2) if mode else (1, 1, 1)
            block.conv1[0].stride = s
            if block.downsample is not None:
                block.downsample[0].stride = s
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    @staticmethod
    def pool(v: torch.Tensor) -> torch.Tensor:
        """z^V: spatial mean of each frame's map, (B, D, T, h, w) -> (B, T, D)."""
        return v.mean(dim=(3, 4)).transpose(1, 2)


def load_torchvision_mc3(net: VideoNet, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a torchvision-layout ``mc3_18`` state dict (e.g. Kinetics-400) into ``net``.

    The classifier (``fc.*``) is dropped; every other key must be present with the right
    shape, otherwise a ValueError says which. Returns the keys that were ignored.
    """
    ignored = sorted(k for k in state_dict if k.startswith("fc."))
    weights = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    own = net.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            "not an MC3-18 state dict for this width: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
            f"{len(wrong)} with other shapes (e.g. {wrong[:2]})")
    net.load_state_dict(weights)
    return ignored
