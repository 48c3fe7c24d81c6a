"""What an exported graph is (``GraphSpec``), and the classifier's three graphs: the streaming
step, the offline video network and the offline audio network (other families' graphs live
beside their export code, e.g. ``export/ezvsl.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import MELS_PER_STEP
from ..model.classifier import AVClassifier
from ..model.streaming import INPUT_NAMES, StreamingModel


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph to export: the module, example inputs, tensor names and dynamic dims."""

    name: str
    module: nn.Module
    args: tuple
    inputs: list[str]
    outputs: list[str]
    dynamic: list[dict]  # one per positional arg, states flattened


def graph_specs(model: AVClassifier) -> list[GraphSpec]:
    """Example inputs, names and dynamic dims of the three graphs."""
    cfg = model.config
    batch, steps = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("steps", min=2, max=100_000)
    T, S = 4, cfg.image_size
    sm = StreamingModel(model)
    state_in = [f"state_in.{n}" for n in sm.state_names]
    state_out = [f"state_out.{n}" for n in sm.state_names]
    step_args = (torch.zeros(2, 3, 1, S, S), torch.zeros(2, 1, MELS_PER_STEP, cfg.n_mels), torch.ones(2, 1), *sm.initial_state(2))
    return [
        GraphSpec("step", sm, step_args, INPUT_NAMES + state_in, sm.output_names + state_out,
                  [{0: batch} for _ in step_args]),
        GraphSpec("video", _VideoGraph(model), (torch.zeros(2, 3, T, S, S),), ["video"], ["V", "zv"],
                  [{0: batch, 2: steps}]),
        GraphSpec("audio", _AudioGraph(model), (torch.zeros(2, 1, MELS_PER_STEP * T, cfg.n_mels),), ["mel"], ["za"],
                  [{0: batch, 2: MELS_PER_STEP * steps}]),
    ]



class _VideoGraph(nn.Module):
    def __init__(self, model: AVClassifier) -> None:
        super().__init__()
        self.video = model.video

    def forward(self, video: torch.Tensor):
        V = self.video(video)
        return V, V.mean(dim=(3, 4)).transpose(1, 2)


class _AudioGraph(nn.Module):
    def __init__(self, model: AVClassifier) -> None:
        super().__init__()
        self.audio = model.audio

    def forward(self, mel: torch.Tensor):
        return self.audio(mel)
