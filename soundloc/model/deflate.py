"""A second-stage student's image net started from its teacher's video net (`soundloc train
--family ezvsl --init TEACHER.pt`): a non-random image start where no ImageNet weights exist.

EZ-VSL's authors start the image ResNet-18 from ImageNet; at a reduced width nothing pretrained
exists, and from scratch the contrastive loss alone is satisfied by the zero-padded border
cells (benchmarks/RESULTS.md, issue 26). The teacher classifier's MC3-18 already learnt where
things are in these frames, and its layout is ResNet-18's, so its weights map almost one to one:

- *deflation*: a 3-D kernel (C', C, 3, k, k) acting on a still frame repeated over time is the
  2-D kernel summed over time (the stem's 3x7x7 and layer1's 3x3x3); MC3's 1x3x3 kernels (layers
  2-4) and 1x1x1 downsamples are 3x3 / 1x1 as they are; BatchNorm3d -> BatchNorm2d unchanged;
- *depth*: block b of each teacher stage -> block b of the student's stage; a student block the
  teacher lacks (the ``small`` teacher has one block per stage, ResNet-18 two) starts as the
  identity (its last BatchNorm's scale and shift 0: the residual branch adds nothing and the
  block returns its non-negative input), so the mapped trunk computes the teacher's function;
- *width*: the student trains at the teacher's width (``train.student`` sets it), so every
  channel count matches;
- *input*: the student's frames are ImageNet-normalised, the teacher's Kinetics-normalised: the
  stem's weights are scaled per input channel and its BatchNorm mean shifted so that interior
  pixels give what the teacher's normalisation gives;
- ``img_proj`` starts as the identity: the student's first V is the teacher's V, unit length;
- the audio net is *not* mapped: the student's input (a 257-bin linear log spectrogram of 3 s,
  one image) and the teacher's (80-bin log-mel patchified 10 frames per step) differ from the
  stem on, and later layers behind a random stem gain nothing from the teacher's weights.

Spatially the student's trunk has ResNet's max pool after the stem, which MC3 lacks: at the
student's 224 px that keeps the teacher's 112 px scale (both give 7x7 maps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import VIDEO_MEAN, VIDEO_STD, Config
from ..errors import SoundlocError
from ..families import IMAGENET_MEAN, IMAGENET_STD

AUDIO_NOT_MAPPED = ("the student's 257-bin linear spectrogram (one 3 s image) and the teacher's 80-bin log-mel "
                    "patchified per step differ from the stem on")


class MappingError(SoundlocError, ValueError):
    """The teacher's video net does not fit the student's image net (width or layout)."""


def _bn(dst: nn.BatchNorm2d, state: dict[str, torch.Tensor], prefix: str) -> None:
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        getattr(dst, name).data.copy_(state[f"{prefix}.{name}"])


def _conv(dst: nn.Conv2d, weight: torch.Tensor) -> None:
    kernel = weight.sum(dim=2)  # (C', C, T, k, k) -> (C', C, k, k): a still frame's 2-D equivalent
    if kernel.shape != dst.weight.shape:
        raise MappingError(f"teacher kernel {tuple(kernel.shape)} does not fit the student's {tuple(dst.weight.shape)}")
    dst.weight.data.copy_(kernel)


def fold_normalisation(conv: nn.Conv2d, bn: nn.BatchNorm2d, src: tuple[tuple[float, ...], tuple[float, ...]],
                       dst: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    """Make ``conv`` (no bias, followed by ``bn``), which expects inputs normalised with ``src``
    (mean, std), give the same on inputs normalised with ``dst``: x_src = x_dst * s_d / s_s +
    (m_d - m_s) / s_s, the scale into the weights, the constant (exact away from the zero padding)
    into the BatchNorm's running mean."""
    (ms, ss), (md, sd) = (torch.tensor(v, dtype=torch.float64) for v in src), (torch.tensor(v, dtype=torch.float64) for v in dst)
    w = conv.weight.data.double()
    offset = (w * ((md - ms) / ss)[None, :, None, None]).sum(dim=(1, 2, 3))
    conv.weight.data.copy_(w * (sd / ss)[None, :, None, None])
    bn.running_mean.data.sub_(offset.to(bn.running_mean.dtype))


def map_video_net(trunk: nn.Module, state: dict[str, torch.Tensor], teacher: Config, prefix: str = "video.",
                  normalisation: tuple[Any, Any] | None = ((VIDEO_MEAN, VIDEO_STD), (IMAGENET_MEAN, IMAGENET_STD))
                  ) -> dict[str, Any]:
    """Copy the teacher's MC3 weights (``state``, keys under ``prefix``) into ``trunk`` (an
    ``ezvsl.ResNet18Trunk``) as the module docstring says; ``normalisation`` (teacher's, student's
    (mean, std)) folded into the stem, None to leave it. Returns what was mapped (provenance)."""
    p = prefix
    _conv(trunk.conv1, state[f"{p}stem.0.weight"])
    _bn(trunk.bn1, state, f"{p}stem.1")
    if normalisation is not None:
        fold_normalisation(trunk.conv1, trunk.bn1, *normalisation)
    mapped, identity = [], []
    for i, blocks in enumerate(teacher.layers):
        stage = getattr(trunk, f"layer{i + 1}")
        for b, block in enumerate(stage):
            src = f"{p}layer{i + 1}.{b}"
            if b >= blocks:
                nn.init.zeros_(block.bn2.weight)
                nn.init.zeros_(block.bn2.bias)
                identity.append(f"layer{i + 1}.{b}")
                continue
            _conv(block.conv1, state[f"{src}.conv1.0.weight"])
            _bn(block.bn1, state, f"{src}.conv1.1")
            _conv(block.conv2, state[f"{src}.conv2.0.weight"])
            _bn(block.bn2, state, f"{src}.conv2.1")
            if (block.downsample is None) != (f"{src}.downsample.0.weight" not in state):
                raise MappingError(f"{src}: the teacher's and the student's blocks differ in their downsample")
            if block.downsample is not None:
                _conv(block.downsample[0], state[f"{src}.downsample.0.weight"])
                _bn(block.downsample[1], state, f"{src}.downsample.1")
            mapped.append(f"layer{i + 1}.{b}")
        if blocks > len(stage):
            raise MappingError(f"the teacher's layer{i + 1} has {blocks} blocks, the student's {len(stage)}")
    return {"blocks_mapped": mapped, "blocks_identity": identity, "normalisation_folded": normalisation is not None}


def start_from_teacher(student: nn.Module, teacher_state: dict[str, torch.Tensor], teacher: Config) -> dict[str, Any]:
    """The student's (``ezvsl.EZVSL``, already at its own initialisation) image net from the
    teacher classifier's video net, ``img_proj`` the identity; the audio net stays as it is.
    Returns the mapping's record for provenance."""
    if teacher.width != student.config.width:
        raise MappingError(f"the teacher's width {teacher.width} is not the student's {student.config.width}")
    record = map_video_net(student.imgnet, teacher_state, teacher)
    proj = student.img_proj
    if proj.weight.shape[0] != proj.weight.shape[1]:
        raise MappingError(f"img_proj {tuple(proj.weight.shape[:2])} is not square: no identity start")
    with torch.no_grad():
        proj.weight.copy_(torch.eye(proj.weight.shape[0])[:, :, None, None])
        proj.bias.zero_()
    return {**record, "img_proj": "identity", "audio": f"not mapped ({AUDIO_NOT_MAPPED})",
            "kernels": "3-D kernels summed over time; 1x3x3 as 3x3", "width": teacher.width}
