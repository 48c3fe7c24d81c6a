"""The paper's audio-visual classifier (§3.2-3.3): two backbones, three modality heads, Eq. 3.

Heads (Table 2 variants, chosen by ``config.head``):
- ``individual-fc`` (the paper's): FC_v(concat(z^V, 0)), FC_a(concat(0, z^A)), FC_av(concat(z^V, z^A)),
  each on the time-averaged features (Eq. 1), loss CE_v + CE_a + CE_av;
- ``shared-fc``: one FC applied to the three concatenations, same summed loss;
- ``av-only`` ("single multi-modal"): FC_av and CE_av alone;
- ``tied-fc`` (ours, not the paper's): one FC (D -> C) scores z^V, z^A and (z^V + z^A) / 2, so
  channel k means the same class evidence in both modalities; same summed loss.
Localization needs only the backbones: alpha_t = V_t . z^A_t (``map_kind="cosine"``: both
normalised over channels first; ``"salient"``: the cosine times |V_t|^SALIENCE_POWER) and
S_av[t] = z^V_t . z^A_t.

``contrastive_loss`` (config ``contrastive_weight`` > 0, not in the paper) is EZ-VSL's
multiple-instance contrastive term, with negatives chosen by class: see its docstring. It scores
the peak of the cosine map, or (``contrastive_map="deployed"``) of the map the model deploys
(``map_kind``), time-averaged over the crop as the window map is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NORM_EPS, SALIENCE_POWER, Config
from .audio import AudioNet
from .video import VideoNet

MODALITIES = ("vision", "audio", "av")
LABEL_HEADS = ("vision", "audio", "av")  # heads whose posteriors the exported step gives (soundloc.labels)


@dataclass
class Features:
    """Backbone outputs: V (B, D, T, h, w), z^V (B, T, D), z^A (B, T, D) (and a family's prior)."""

    V: torch.Tensor
    zv: torch.Tensor
    za: torch.Tensor
    prior: torch.Tensor | None = None  # (B, T, h, w): a family's object prior (EZ-VSL), blended into maps


def map_operands(V: torch.Tensor, za: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, z^A) scaled so that their dot product is the ``kind`` map: unchanged for ``dot``; V
    normalised over channels at each location and z^A_t normalised for ``cosine``; for
    ``salient`` V divided by |V|^(1 - SALIENCE_POWER) instead, which leaves |V|^SALIENCE_POWER."""
    if kind in ("cosine", "salient"):
        norm = V.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
        V = V / (norm if kind == "cosine" else norm ** (1 - SALIENCE_POWER))
        za = F.normalize(za, dim=-1, eps=NORM_EPS)
    return V, za


def localization_maps(V: torch.Tensor, za: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """alpha_t = V_t . z^A_t: (B, D, T, h, w), (B, T, D) -> (B, T, h, w); ``kind="cosine"``
    normalises V over channels at each location and z^A_t first, ``"salient"`` keeps |V| to the
    power ``SALIENCE_POWER`` (``soundloc.localize.step_maps`` is the numpy twin)."""
    V, za = map_operands(V, za, kind)
    return torch.einsum("bdthw,btd->bthw", V, za)


def pair_similarity(V: torch.Tensor, za: torch.Tensor, kind: str = "cosine", border: int = 0) -> torch.Tensor:
    """S[i, j]: the peak over locations of the time-averaged ``kind`` map (``localization_maps``)
    of clip j's video with clip i's audio, (B, D, T, h, w), (B, T, D) -> (B, B); the diagonal is
    each clip's own map. Over a 3 s crop the time average is the centred window's map.
    ``border`` > 0: the peak over the interior cells only (``config.mil_border``)."""
    V, za = map_operands(V, za, kind)
    maps = torch.einsum("jdthw,itd->ijhw", V, za) / V.shape[2]
    return interior(maps, border).flatten(2).amax(dim=2)


def interior(x: torch.Tensor, border: int) -> torch.Tensor:
    """``x`` (..., h, w) without its outer ``border`` rings of cells (``config.mil_border``): what
    the contrastive terms take their max over locations from, in training only."""
    if not border:
        return x
    if min(x.shape[-2:]) <= 2 * border:
        raise ValueError(f"a border of {border} cells leaves nothing of a {tuple(x.shape[-2:])} map")
    return x[..., border:-border, border:-border]


def contrastive_loss(V: torch.Tensor, za: torch.Tensor, labels: torch.Tensor, temperature: float,
                     kind: str = "cosine", border: int = 0) -> torch.Tensor:
    """Multiple-instance contrastive loss (EZ-VSL) with class-aware negatives.

    A clip's audio should match *some* location of its own video (the peak of its map) better
    than any location of another clip's video, and vice versa: symmetric cross-entropy over
    ``pair_similarity / temperature``. Other clips of the same class are masked out of the
    negatives: with few classes, in-batch negatives often share the positive's class, and
    pushing them apart fights the classification losses (a plain in-batch version made maps
    worse in the issue's runs). A clip with no negative contributes zero. Under DDP the
    negatives are the other clips of the same process's batch. ``kind``: the map whose peak is
    scored (``config.contrastive_map``: the cosine, or the map the model deploys); ``border``
    (``config.mil_border``) cells of the map's outer ring are left out of that peak, where
    zero padding makes features distinctive without an object (training only).
    """
    logits = pair_similarity(V, za, kind, border) / temperature
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(labels), device=labels.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def moment_scores(zv: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
    """S_av[t] = z^V_t . z^A_t: (B, T, D) x2 -> (B, T)."""
    return (zv * za).sum(dim=-1)


class AVClassifier(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.video = VideoNet(config)
        self.audio = AudioNet(config)
        d, c = config.embed_dim, config.num_classes
        if config.head == "individual-fc":
            self.fc_v, self.fc_a, self.fc_av = nn.Linear(2 * d, c), nn.Linear(2 * d, c), nn.Linear(2 * d, c)
        elif config.head == "shared-fc":
            self.fc = nn.Linear(2 * d, c)
        elif config.head == "tied-fc":
            self.fc = nn.Linear(d, c)
        else:
            self.fc_av = nn.Linear(2 * d, c)

    def features(self, video: torch.Tensor, mel: torch.Tensor) -> Features:
        """video (B, 3, T, H, W) normalised, mel (B, 1, 10T, 80) -> backbone features."""
        V = self.video(video)
        return Features(V=V, zv=VideoNet.pool(V), za=self.audio(mel))

    def heads(self, zv: torch.Tensor, za: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-head logits (B, C) from per-step features (B, T, D), averaged over t (Eq. 1)."""
        mv, ma = zv.mean(dim=1), za.mean(dim=1)
        if self.config.head == "tied-fc":
            return {"vision": self.fc(mv), "audio": self.fc(ma), "av": self.fc((mv + ma) / 2)}
        zero = torch.zeros_like(mv)
        inputs = {"vision": torch.cat([mv, zero], 1), "audio": torch.cat([zero, ma], 1),
                  "av": torch.cat([mv, ma], 1)}
        fcs = self._concat_fcs()
        return {name: fc(inputs[name]) for name, fc in fcs.items()}

    def _concat_fcs(self) -> dict[str, nn.Module]:
        """Each head's FC layer on concat(z^V, z^A), for the heads other than ``tied-fc``."""
        if self.config.head == "individual-fc":
            return {"vision": self.fc_v, "audio": self.fc_a, "av": self.fc_av}
        if self.config.head == "shared-fc":
            return dict.fromkeys(MODALITIES, self.fc)
        return {"av": self.fc_av}

    @property
    def label_heads(self) -> tuple[str, ...]:
        """The heads whose class posteriors a stream reports (``LABEL_HEADS`` this head has):
        the vision head (what is seen), the audio head (what is heard) and the audio-visual
        head (what is heard and seen)."""
        present = ("vision", "audio", "av") if self.config.head != "av-only" else ("av",)
        return tuple(h for h in LABEL_HEADS if h in present)

    def step_logits(self, zv: torch.Tensor, za: torch.Tensor) -> list[torch.Tensor]:
        """Per-step logits of ``label_heads``: (B, D) x2 -> [(B, C), ...]. Every head is affine,
        so the mean of these over a window equals the head applied to the window's mean
        features (Eq. 1 on that window): the runtime averages them like the maps."""
        if self.config.head == "tied-fc":
            logits = self.heads(zv[:, None], za[:, None])
            return [logits[h] for h in self.label_heads]
        # FC(concat(z^V, z^A)) as the two halves of its weight: the same numbers as ``heads`` on one
        # step, without the zeros and the concatenation (an int8 graph would quantize them)
        d = zv.shape[1]
        fcs = self._concat_fcs()
        parts = {"vision": (zv, None), "audio": (None, za), "av": (zv, za)}
        out = []
        for h in self.label_heads:
            fc, (v, a) = fcs[h], parts[h]
            y = fc.bias
            if v is not None:
                y = y + F.linear(v, fc.weight[:, :d])
            if a is not None:
                y = y + F.linear(a, fc.weight[:, d:])
            out.append(y)
        return out

    def forward(self, video: torch.Tensor, mel: torch.Tensor, with_features: bool = False):
        """Per-head logits; ``with_features``: (logits, Features), for the contrastive term
        and the audio-dependence check (a keyword, so it passes through DDP)."""
        f = self.features(video, mel)
        logits = self.heads(f.zv, f.za)
        return (logits, f) if with_features else logits


def classification_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3: the equally weighted sum of each head's cross-entropy; also each part as a float."""
    parts = {name: F.cross_entropy(out, labels) for name, out in logits.items()}
    total = torch.stack(list(parts.values())).sum()
    return total, {name: float(v.detach()) for name, v in parts.items()}


def training_loss(config: Config, logits: dict[str, torch.Tensor], features: Features | None,
                  labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3, plus ``contrastive_weight`` x ``contrastive_loss`` when the config asks for it
    (its unweighted value is reported as the part ``contrastive``)."""
    total, parts = classification_loss(logits, labels)
    if config.contrastive_weight > 0 and features is not None and len(labels) > 1:
        kind = config.map_kind if config.contrastive_map == "deployed" else "cosine"
        c = contrastive_loss(features.V.float(), features.za.float(), labels, config.contrastive_temperature, kind,
                             config.mil_border)
        total = total + config.contrastive_weight * c
        parts["contrastive"] = float(c.detach())
    return total, parts


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def networks(model: nn.Module, config: Config, steps: int = 16) -> dict[str, tuple[nn.Module, tuple, int]]:
    """The classifier's video and audio networks, each with zero inputs covering ``steps``
    steps (what ``soundloc info`` counts)."""
    size = config.image_size
    return {"video": (model.video, (torch.zeros(1, 3, steps, size, size),), steps),
            "audio": (model.audio, (torch.zeros(1, 1, 10 * steps, config.n_mels),), steps)}
