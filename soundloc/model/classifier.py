"""The paper's audio-visual classifier (§3.2-3.3): two backbones, three modality heads, Eq. 3.

Heads (Table 2 variants, chosen by ``config.head``):
- ``individual-fc`` (the paper's): FC_v(concat(z^V, 0)), FC_a(concat(0, z^A)), FC_av(concat(z^V, z^A)),
  each on the time-averaged features (Eq. 1), loss CE_v + CE_a + CE_av;
- ``shared-fc``: one FC applied to the three concatenations, same summed loss;
- ``av-only`` ("single multi-modal"): FC_av and CE_av alone;
- ``tied-fc`` (ours, not the paper's): one FC (D -> C) scores z^V, z^A and (z^V + z^A) / 2, so
  channel k means the same class evidence in both modalities; same summed loss.
Localization needs only the backbones: alpha_t = V_t . z^A_t and S_av[t] = z^V_t . z^A_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from .audio import AudioNet
from .video import VideoNet

MODALITIES = ("vision", "audio", "av")


@dataclass
class Features:
    """Backbone outputs: V (B, D, T, h, w), z^V (B, T, D), z^A (B, T, D)."""

    V: torch.Tensor
    zv: torch.Tensor
    za: torch.Tensor


def localization_maps(V: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
    """alpha_t = V_t . z^A_t: (B, D, T, h, w), (B, T, D) -> (B, T, h, w)."""
    return torch.einsum("bdthw,btd->bthw", V, za)


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
        if self.config.head == "individual-fc":
            fcs = {"vision": self.fc_v, "audio": self.fc_a, "av": self.fc_av}
        elif self.config.head == "shared-fc":
            fcs = dict.fromkeys(MODALITIES, self.fc)
        else:
            fcs = {"av": self.fc_av}
        return {name: fc(inputs[name]) for name, fc in fcs.items()}

    def forward(self, video: torch.Tensor, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(video, mel)
        return self.heads(f.zv, f.za)


def classification_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3: the equally weighted sum of each head's cross-entropy; also each part as a float."""
    parts = {name: F.cross_entropy(out, labels) for name, out in logits.items()}
    total = torch.stack(list(parts.values())).sum()
    return total, {name: float(v.detach()) for name, v in parts.items()}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
