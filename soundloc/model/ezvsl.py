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
from .classifier import Features, interior

EMBED_DIM = 512  # the published models' out_dim (EZ-VSL's default): Config.embed_dim at width 1


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
    """torchvision's ``resnet18`` up to layer4 (no avgpool, no fc): (B, C, H, W) -> (B, 512, H/32, W/32).
    ``config`` (its ``width``) scales every stage's channels, as for the classifier's backbones
    (``Config.channels``): width 1 is the published network, what a checkpoint of the authors'
    loads into; a narrower one trains on a CPU."""

    def __init__(self, in_channels: int = 3, config: Config | None = None) -> None:
        super().__init__()
        widths = [config.channels(c) if config is not None else c for c in (64, 128, 256, 512)]
        self.out_channels = widths[-1]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, cout in enumerate(widths):
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


def prior_on_grid(prior: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """The object prior (B, h, w) on the map's grid: as it is when they match; else resized
    bilinearly with pixel centres aligned (cv2's INTER_LINEAR, ``align_corners=False``), as
    SSL-Align's 7x7 prior against LVS's 14x14 map (``families.prior_on_grid`` is the numpy twin)."""
    if tuple(prior.shape[-2:]) == tuple(grid):
        return prior
    return F.interpolate(prior[:, None], size=tuple(grid), mode="bilinear", align_corners=False)[:, 0]


class EZVSL(nn.Module):
    """EZ-VSL's two encoders (and the optional object-prior net); see the module docstring."""

    # the modules that hold the authors' weights, by the authors' names (image side, audio side)
    image_parts: tuple[str, ...] = ("imgnet", "img_proj")
    audio_parts: tuple[str, ...] = ("audnet", "aud_proj")

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.imgnet = ResNet18Trunk(3, config)
        self.img_proj = nn.Conv2d(self.imgnet.out_channels, config.embed_dim, kernel_size=1)
        self.audnet = ResNet18Trunk(1, config)
        self.aud_proj = nn.Linear(self.audnet.out_channels, config.embed_dim)
        # the object prior is torchvision's ImageNet resnet18 as it is: full width, never trained here
        self.objnet = ResNet18Trunk(3) if config.prior_alpha is not None else None

    def forward(self, frames: torch.Tensor, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training step's two embeddings: frames (B, 3, S, S) -> V, spectrograms (B, 1, 257, 200)
        -> z^A (what DDP wraps; the object prior is a test-time blend and never trains)."""
        return self.image(frames), self.audio(spec)

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
        prior = prior_on_grid(prior, cos.shape[-2:])
        a, ranges = self.config.prior_alpha, family_of(self.config).prior_ranges
        if ranges is not None:  # SLAVC: fixed ranges, not each map's extremes
            (c0, c1), (p0, p1) = ranges
            return a * (cos - c0) / (c1 - c0) + (1 - a) * (prior - p0) / (p1 - p0)
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


class SLAVC(EZVSL):
    """SLAVC (Mo & Morgado, NeurIPS 2022): EZ-VSL's trunks with two projection heads per side; its
    map is the mean of the two heads' cosine maps. Here each side's embedding is the two unit
    heads concatenated and scaled by 1/sqrt(2), so the one dot product of the step graph is
    exactly ``(cos_1 + cos_2) / 2`` and every EZ-VSL graph, feeder and verification applies."""

    image_parts = ("imgnet", "img_proj1", "img_proj2")
    audio_parts = ("audnet", "aud_proj1", "aud_proj2")

    def __init__(self, config: Config) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.imgnet = ResNet18Trunk(3)
        self.img_proj1 = nn.Conv2d(512, EMBED_DIM, kernel_size=1)
        self.img_proj2 = nn.Conv2d(512, EMBED_DIM, kernel_size=1)
        self.audnet = ResNet18Trunk(1)
        self.aud_proj1 = nn.Linear(512, EMBED_DIM)
        self.aud_proj2 = nn.Linear(512, EMBED_DIM)
        self.objnet = ResNet18Trunk(3) if config.prior_alpha is not None else None

    def image(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> V (B, 2D, 7, 7): both heads, unit length each, over sqrt(2)."""
        x = self.imgnet(frames)
        heads = [F.normalize(self.img_proj1(x), dim=1, eps=NORM_EPS), F.normalize(self.img_proj2(x), dim=1, eps=NORM_EPS)]
        return torch.cat(heads, dim=1) * HALF_SQRT2

    def audio(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 1, 257, 200) -> z^A (B, 2D): both heads, unit length each, over sqrt(2)."""
        x = F.adaptive_max_pool2d(self.audnet(spec), 1).flatten(1)
        heads = [F.normalize(self.aud_proj1(x), dim=1, eps=NORM_EPS), F.normalize(self.aud_proj2(x), dim=1, eps=NORM_EPS)]
        return torch.cat(heads, dim=1) * HALF_SQRT2


HALF_SQRT2 = 0.5 ** 0.5  # (a1, a2)/sqrt(2) . (v1, v2)/sqrt(2) = (a1.v1 + a2.v2) / 2
def init_weights(model: EZVSL) -> None:
    """The authors' initialisation for training from scratch (their ``model.py``): convolutions
    Kaiming-normal (fan_out, ReLU), linear layers truncated-normal (std 0.01), BatchNorm scales
    N(1, 0.02) and shifts 0. Their image net starts from ImageNet weights instead; there are none
    at a reduced width, so it is initialised the same way (the object prior is left alone)."""
    for net in (model.imgnet, model.img_proj, model.audnet, model.aud_proj):
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, mean=1.0, std=0.02)
                nn.init.constant_(m.bias, 0.0)


def mil_contrastive_loss(V: torch.Tensor, za: torch.Tensor, tau: float, border: int = 0) -> torch.Tensor:
    """EZ-VSL's multiple-instance contrastive loss: V (B, D, h, w) and z^A (B, D), unit length.
    The score of image i with audio j is the cosine at i's best-matching location, over tau;
    each clip's own pair must win its row (its image against every clip's audio) and its column
    (its audio against every clip's image): the sum of the two cross-entropies, as the authors'
    ``max_xmil_loss``. ``border`` (``config.mil_border``) > 0 takes the max over the interior
    cells only: a net that starts from noise can otherwise satisfy the loss with the zero-padded
    border cells, which carry each image's identity without finding anything in it (training
    only; the map itself keeps every cell)."""
    V = interior(V, border)
    logits = torch.einsum("nchw,mc->nmhw", V, za).flatten(-2).amax(-1) / tau
    labels = torch.arange(len(V), device=V.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


def box_loss(V: torch.Tensor, za: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """The box-supervision term: per clip, the cross-entropy between ``target`` (B, h, w), the
    share of its box in each map cell (summing to 1; all zeros for a clip without a box), and the
    softmax over locations of its own-audio map cos / tau; the mean over the clips with a box
    (0 without any). A clip without a box contributes exactly nothing, gradient included.

    Why this loss: evaluation min-max normalises each map and thresholds it, so only where a map
    is high *relative to the rest of the same map* counts; a softmax over locations constrains
    exactly that and ignores a constant added to the map, which leaves the cosines' absolute
    level to the contrastive term (the two terms do not pull against each other), and tau puts
    it on the contrastive logits' scale. A target spread over the box's cells rewards mass
    anywhere inside the box without asking every cell of a loose box to light up, and costs
    mass outside it (what pointing and cIoU punish). Per-cell BCE would instead fix the
    absolute cosine of every cell, fighting the contrastive term."""
    own = torch.einsum("bdhw,bd->bhw", V, za).flatten(1) / tau
    t = target.flatten(1).to(own.dtype)
    boxed = (t.sum(1) > 0).sum()
    return -(t * F.log_softmax(own, dim=1)).sum() / boxed.clamp_min(1)


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
    image = [getattr(model, n) for n in model.image_parts] + [model.objnet]
    audio = [getattr(model, n) for n in model.audio_parts]
    return {"video": (_Network(lambda x: (model.image(x), model.prior(x)), *image), (frame,), 1),
            "audio": (_Network(model.audio, *audio), (spec,), 1)}
