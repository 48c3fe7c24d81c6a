"""The exact streaming step (docs/design.md §3): one new frame and its 10 mel frames in, one finished
step out, the temporal context carried as explicit state tensors.

Only the 3-tap temporal convolutions (stems and layer1 of both backbones) need state: the last
two inputs each. A residual path takes its delayed input from its block's conv1 window, so it
needs no state of its own. ``valid`` marks real frames (1) versus padding (0: before the
stream starts, and the ``lookahead`` zero frames that flush its end); every temporal stage's
output is multiplied by the validity of the step it describes, so padding steps are exactly
the zeros the offline model pads with. Outputs describe the step ``lookahead`` steps before the
newest input; ``valid_out`` says whether that step is a real one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..config import MELS_PER_STEP, ConfigError
from ..families import family_of
from ..labels import LOGIT_PREFIX
from .classifier import AVClassifier, localization_maps
from .temporal import delayed, frame_conv, frame_norm

INPUT_NAMES = ["frame", "mel", "valid"]
OUTPUT_NAMES = ["alpha", "score", "zv", "za", "valid_out"]


class _Walk:
    """Threads the old states in and collects the new ones (and, on discovery, their names)."""

    def __init__(self, states: list[torch.Tensor] | None, valid: torch.Tensor) -> None:
        self.old: Iterator[torch.Tensor] | None = iter(states) if states is not None else None
        self.new: list[torch.Tensor] = []
        self.names: list[str] = []
        self.valid = valid  # (B, L+1): validity of steps n, n-1, ..., n-L

    def cache(self, name: str, x: torch.Tensor, patch: int, frames: bool) -> torch.Tensor:
        if self.old is None:
            self.names.append(name)
            rest = x.shape[2:] if frames else x.shape[3:]  # frames: (B, C, H, W); audio: (B, C, patch, F)
            return x.new_zeros((x.shape[0], x.shape[1], 2 * patch, *rest))
        return next(self.old)

    def mask(self, x: torch.Tensor, delay: int) -> torch.Tensor:
        v = self.valid[:, delay]
        return x * v.reshape(-1, *([1] * (x.dim() - 1)))

    def conv(self, name: str, conv: nn.Module, x: torch.Tensor, frames: bool) -> tuple[torch.Tensor, torch.Tensor]:
        patch = getattr(conv, "patch", 1)
        y, window = conv.step(self.cache(name, x, patch, frames), x)
        self.new.append(window[:, :, patch:])
        return y, window


class _Frames:
    """Video ops on single frames (B, C, H, W): 2-D convolutions and norms with the 3-D weights."""

    frames = True
    conv, norm = staticmethod(frame_conv), staticmethod(frame_norm)

    @staticmethod
    def delayed(window: torch.Tensor, delay: int) -> torch.Tensor:
        return delayed(window, delay)[:, :, 0]


class _Steps:
    """Audio ops on one step (B, C, 1, F): the modules themselves."""

    frames = False
    conv = staticmethod(lambda conv, x: conv(x))
    norm = staticmethod(lambda bn, x: bn(x))
    delayed = staticmethod(delayed)


def _frame_block(ops, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A residual block without temporal convolutions, on one step."""
    (c1, bn1, relu1), (c2, bn2) = block.conv1, block.conv2
    identity = x if block.downsample is None else ops.norm(block.downsample[1], ops.conv(block.downsample[0], x))
    return block.relu(ops.norm(bn2, ops.conv(c2, relu1(ops.norm(bn1, ops.conv(c1, x))))) + identity)


def _stream_stage(walk: _Walk, ops, prefix: str, stem: nn.Sequential, layers: list[nn.Sequential],
                  x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Run a backbone's stem and residual layers for one step; returns output and its delay."""
    conv, bn, relu = stem
    y, _ = walk.conv(f"{prefix}.stem", conv, walk.mask(x, 0), ops.frames)
    delay = conv.lookahead
    y = walk.mask(relu(ops.norm(bn, y)), delay)
    for li, layer in enumerate(layers, start=1):
        for bi, block in enumerate(layer):
            name = f"{prefix}.layer{li}.{bi}"
            if not block.conv1[0].mixes_time:
                y = _frame_block(ops, block, y)
                continue
            c1, bn1, relu1 = block.conv1
            c2, bn2 = block.conv2
            h, win1 = walk.conv(f"{name}.conv1", c1, y, ops.frames)
            h = walk.mask(relu1(ops.norm(bn1, h)), delay + c1.lookahead)
            o, _ = walk.conv(f"{name}.conv2", c2, h, ops.frames)
            identity = ops.delayed(win1, c1.lookahead + c2.lookahead)
            if block.downsample is not None:
                identity = ops.norm(block.downsample[1], ops.conv(block.downsample[0], identity))
            delay += c1.lookahead + c2.lookahead
            y = walk.mask(block.relu(ops.norm(bn2, o) + identity), delay)
    return y, delay


class StreamingModel(nn.Module):
    """forward(frame (B,3,1,H,W), mel (B,1,10,80), valid (B,1), *states) ->
    (alpha (B,h,w), score (B,), zv (B,D), za (B,D), valid_out (B,1), *logits (B,C), *new_states):
    one ``logits_<head>`` per ``AVClassifier.label_heads`` (``output_names`` lists them)."""

    def __init__(self, model: AVClassifier) -> None:
        super().__init__()
        self.model = model.eval()
        self.lookahead = family_of(model.config).lookahead_steps(model.config)
        self.state_names, shapes = self._discover()
        self.state_shapes = [tuple(s[1:]) for s in shapes]
        self.output_names = OUTPUT_NAMES + [LOGIT_PREFIX + h for h in model.label_heads]

    def _discover(self) -> tuple[list[str], list[tuple[int, ...]]]:
        cfg = self.model.config
        frame = torch.zeros(1, 3, 1, cfg.image_size, cfg.image_size)
        mel = torch.zeros(1, 1, MELS_PER_STEP, cfg.n_mels)
        with torch.no_grad():
            walk, outs, delay = self._walk(frame, mel, torch.zeros(1, 1), None)
        if delay != self.lookahead:
            raise ConfigError(f"streaming delay {delay} differs from the config's lookahead {self.lookahead}")
        names = (["state.valid"] if self.lookahead else []) + walk.names
        shapes = [tuple(s.shape) for s in walk.new]
        return names, shapes

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        return [torch.zeros(batch, *shape) for shape in self.state_shapes]

    def _walk(self, frame, mel, valid, states):
        if self.lookahead:
            hist = states[0] if states is not None else valid.new_zeros(valid.shape[0], self.lookahead)
            full = torch.cat([valid, hist], dim=1)
            states = states[1:] if states is not None else None
        else:
            full = valid
        walk = _Walk(states, full)
        v_net, a_net = self.model.video, self.model.audio
        V, dv = _stream_stage(walk, _Frames, "video", v_net.stem,
                              [v_net.layer1, v_net.layer2, v_net.layer3, v_net.layer4], frame[:, :, 0])
        A, da = _stream_stage(walk, _Steps, "audio", a_net.stem,
                              [a_net.layer1, a_net.layer2, a_net.layer3, a_net.layer4], a_net.normalise(mel))
        if dv != da:
            raise ConfigError(f"video delay {dv} != audio delay {da}: the two streams would not align")
        if self.lookahead:
            walk.new.insert(0, full[:, :-1])
        # V: (B, D, h, w), one frame
        zv = V.mean(dim=(2, 3))
        za = A[:, :, 0].mean(dim=2)
        alpha = localization_maps(V[:, :, None], za[:, None], self.model.config.map_kind)[:, 0]
        score = (zv * za).sum(dim=1)
        logits = self.model.step_logits(zv, za)
        return walk, (alpha, score, zv, za, full[:, dv:dv + 1], *logits), dv

    def forward(self, frame: torch.Tensor, mel: torch.Tensor, valid: torch.Tensor, *states: torch.Tensor):
        walk, outs, _ = self._walk(frame, mel, valid, list(states))
        return (*outs, *walk.new)
