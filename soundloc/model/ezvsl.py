"""EZ-VSL (Mo & Morgado, "Localizing Visual Sounds the Easy Way", 2022) as a soundloc model family.

The networks are defined here with torchvision's ``resnet18`` parameter names and shapes, so
the authors' checkpoints load by name:

- image: ``imgnet`` (a ResNet-18 without avgpool and fc: (B, 3, 224, 224) ImageNet-normalised
  -> (B, 512, 7, 7)), ``img_proj`` (1x1 conv), L2-normalised over channels;
- audio: ``audnet`` (a ResNet-18 whose conv1 takes 1 channel, adaptive *max* pooling to 1x1),
  ``aud_proj`` (linear), L2-normalised; input the log spectrogram of 3 s (``audio.log_spectrogram``);
- map: the cosine of the audio embedding with every image location (7x7);
- optional object prior (``config.prior_alpha``): ``objnet``, an ImageNet ResNet-18 trunk, whose
  last feature map's mean |value| over channels is the prior; both maps min-max normalised, then
  ``alpha * map + (1 - alpha) * prior``. Blending at 7x7 equals the authors' blend after their
  ``align_corners=True`` upsampling: that interpolation is linear and keeps each map's min and max.

``import_ezvsl`` turns an EZ-VSL checkpoint (``torch.save({'model': state_dict, ...})``, keys
maybe prefixed ``module.``) into a soundloc checkpoint that every command takes.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..config import NORM_EPS, Config
from ..families import family_of
from .classifier import Features

EMBED_DIM = 512  # the published models' out_dim (EZ-VSL's default)


class BasicBlock(nn.Module):
    """torchvision's 2-D BasicBlock: conv1, bn1, relu, conv2, bn2, downsample (conv, bn)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet18Trunk(nn.Module):
    """torchvision's ``resnet18`` up to layer4 (no avgpool, no fc): (B, C, H, W) -> (B, 512, H/32, W/32)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def minmax(m: torch.Tensor) -> torch.Tensor:
    """Each map (B, ..., h, w) scaled to [0, 1] over its last two axes (EZ-VSL's normalize_img)."""
    lo = m.flatten(-2).amin(-1)[..., None, None]
    hi = m.flatten(-2).amax(-1)[..., None, None]
    return (m - lo) / (hi - lo).clamp_min(NORM_EPS)


class EZVSL(nn.Module):
    """EZ-VSL's two encoders (and the optional object-prior net); see the module docstring."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.imgnet = ResNet18Trunk(3)
        self.img_proj = nn.Conv2d(512, EMBED_DIM, kernel_size=1)
        self.audnet = ResNet18Trunk(1)
        self.aud_proj = nn.Linear(512, EMBED_DIM)
        self.objnet = ResNet18Trunk(3) if config.prior_alpha is not None else None

    def image(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> V (B, D, 7, 7), unit length at each location."""
        return F.normalize(self.img_proj(self.imgnet(frames)), dim=1, eps=NORM_EPS)

    def audio(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 1, 257, 200) log spectrogram -> z^A (B, D), unit length."""
        pooled = F.adaptive_max_pool2d(self.audnet(spec), 1).flatten(1)
        return F.normalize(self.aud_proj(pooled), dim=1, eps=NORM_EPS)

    def prior(self, frames: torch.Tensor) -> torch.Tensor | None:
        """The object prior (B, 7, 7): mean |activation| over the ImageNet trunk's channels."""
        return None if self.objnet is None else self.objnet(frames).abs().mean(dim=1)

    def maps(self, V: torch.Tensor, za: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """(B, D, h, w), (B, D), (B, h, w) -> the map (B, h, w): cosine, blended with the prior."""
        cos = torch.einsum("bdhw,bd->bhw", V, za)
        if prior is None:
            return cos
        a = self.config.prior_alpha
        return a * minmax(cos) + (1 - a) * minmax(prior)

    def features(self, video: torch.Tensor, specs: torch.Tensor, chunk: int = 16) -> Features:
        """Every frame of a clip: video (B, 3, T, 224, 224), specs (B, T, 257, 200) (the audio
        window of each frame) -> V (B, D, T, 7, 7), z^V (B, T, D), z^A (B, T, D), prior (B, T, 7, 7)."""
        B, T = video.shape[0], video.shape[2]
        frames = video.transpose(1, 2).flatten(0, 1)
        spec = specs.flatten(0, 1)[:, None]
        parts = [(self.image(f), self.audio(s), self.prior(f))
                 for f, s in zip(frames.split(chunk), spec.split(chunk))]
        V = torch.cat([p[0] for p in parts]).unflatten(0, (B, T)).transpose(1, 2)
        za = torch.cat([p[1] for p in parts]).unflatten(0, (B, T))
        prior = None if self.objnet is None else torch.cat([p[2] for p in parts]).unflatten(0, (B, T))
        return Features(V=V, zv=V.mean(dim=(3, 4)).transpose(1, 2), za=za, prior=prior)


class EZVSLStep(nn.Module):
    """The step graph: one frame and its audio window in, the frame's map out. No state: the
    3 s context is in the spectrogram. Same outputs as the classifier's step (``alpha``,
    ``score`` = mean cosine over locations = z^V . z^A, ``zv``, ``za``, ``valid_out``)."""

    state_names: list[str] = []
    state_shapes: list[tuple[int, ...]] = []
    lookahead = 0

    def __init__(self, model: EZVSL) -> None:
        super().__init__()
        self.model = model

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        return []

    def forward(self, frame: torch.Tensor, spec: torch.Tensor, valid: torch.Tensor):
        image = frame[:, :, 0]
        V, za = self.model.image(image), self.model.audio(spec)
        alpha = self.model.maps(V, za, self.model.prior(image))
        zv = V.mean(dim=(2, 3))
        return alpha, (zv * za).sum(dim=1), zv, za, valid


class _Network(nn.Module):
    """One of the step's two networks as a module of its own (for counting parameters and MACs)."""

    def __init__(self, forward, *parts: nn.Module | None) -> None:
        super().__init__()
        self.parts = nn.ModuleList([p for p in parts if p is not None])
        self._forward = forward

    def forward(self, x: torch.Tensor):
        return self._forward(x)


def networks(model: EZVSL, config: Config, steps: int = 1) -> dict[str, tuple[nn.Module, tuple, int]]:
    """The image side (with the object prior when there is one) and the audio side, each with
    one step's zero input (what ``soundloc info`` counts)."""
    frame = torch.zeros(1, 3, config.image_size, config.image_size)
    spec = torch.zeros(1, *family_of(config).audio_shape(config))
    return {"video": (_Network(lambda x: (model.image(x), model.prior(x)), model.imgnet, model.img_proj,
                               model.objnet), (frame,), 1),
            "audio": (_Network(model.audio, model.audnet, model.aud_proj), (spec,), 1)}
