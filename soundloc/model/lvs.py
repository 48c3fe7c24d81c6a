"""LVS (Chen et al., "Localizing Visual Sounds the Hard Way", CVPR 2021) and SSL-Align (Senocak
et al., "Sound Source Localization is All about Cross-Modal Alignment", ICCV 2023, which trains
LVS's network) as soundloc model families.

The network is defined here with the parameter names of the authors' ``models/base_models.py``
so their checkpoints load by name: each of ``imgnet`` and ``audnet`` is their ``ResNet`` for
ResNet-18, which holds three stems (``conv1_a`` for 1-channel audio, ``conv1`` for RGB,
``conv1_flow``, 6 channels) of which its ``modal`` uses one, and an ImageNet ``fc`` it never
applies; both are kept (their checkpoints hold them) and never run, so the exported graphs do
not contain them. Their ``layer4`` keeps stride 1: a 224 px frame gives a 14x14 feature map.

- image: ``imgnet`` -> (B, 512, 14, 14), L2-normalised over channels (no projection head);
- audio: ``audnet`` -> adaptive *max* pooling -> (B, 512), L2-normalised; input the log
  spectrogram (``families.Family.spectrogram``: LVS 10 s 257x671, SSL-Align 3 s 257x299);
- map: their ``A``, the cosine of the audio embedding with every image location (14x14);
- optional object prior (SSL-Align's "OGL", its test.py's ``validate_lvs``): EZ-VSL's ``objnet``
  (7x7), resized to 14x14 with pixel centres aligned for the streamed blend; ``--preprocess
  authors`` evaluation resizes map and prior separately to 224 px as their test.py does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NORM_EPS, Config
from .ezvsl import EZVSL, BasicBlock, ResNet18Trunk

STEMS = {"conv1_a": 1, "conv1": 3, "conv1_flow": 6}  # their ResNet's three stems: name -> input channels
IMAGENET_CLASSES = 1000  # their ResNet's unused fc


class LVSResNet(nn.Module):
    """Their ``base_models.resnet18(modal=...)``: layer4 with stride 1; ``modal`` "audio" runs
    ``conv1_a``, "vision" ``conv1``; no pooling (the caller pools or keeps the map)."""

    def __init__(self, modal: str) -> None:
        super().__init__()
        self.modal = modal
        for name, cin in STEMS.items():
            setattr(self, name, nn.Conv2d(cin, 64, 7, 2, 3, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (cout, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 1))):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.fc = nn.Linear(512, IMAGENET_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1_a(x) if self.modal == "audio" else self.conv1(x)
        x = self.maxpool(self.relu(self.bn1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class LVS(EZVSL):
    """Their ``AVENet`` at test time: the two trunks and the 14x14 cosine map (the trimap and the
    contrastive logits are training-only and hold no weights). EZ-VSL's step, graphs, feeders
    and verification apply as they are."""

    image_parts = ("imgnet",)
    audio_parts = ("audnet",)

    def __init__(self, config: Config) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.imgnet = LVSResNet("vision")
        self.audnet = LVSResNet("audio")
        # SSL-Align's "OGL": torchvision's ImageNet resnet18 as EZ-VSL's prior (7x7 against the
        # 14x14 map: ``model.ezvsl.prior_on_grid`` resizes it for the streamed blend)
        self.objnet = ResNet18Trunk(3) if config.prior_alpha is not None else None

    def image(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> V (B, 512, 14, 14), unit length at each location."""
        return F.normalize(self.imgnet(frames), dim=1, eps=NORM_EPS)

    def audio(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 1, 257, frames) log spectrogram -> z^A (B, 512), unit length."""
        return F.normalize(F.adaptive_max_pool2d(self.audnet(spec), 1).flatten(1), dim=1, eps=NORM_EPS)
