"""The ezvsl family's export: its three graphs and `soundloc export --verify` for them.

- ``step.onnx``: frame (B, 3, 1, 224, 224) ImageNet-normalised, spec (B, 1, 257, 200), valid
  (B, 1) -> alpha (B, 7, 7), score, zv, za, valid_out; no state;
- ``video.onnx``: frame (B, 3, 224, 224) -> V (B, D, 7, 7) (unit length per location), zv (B, D),
  and prior (B, 7, 7) when the model has the object prior;
- ``audio.onnx``: spec (B, 1, 257, 200) -> za (B, D).
``verify`` compares the offline graphs with PyTorch, and the step graph run the way the runtime
runs it (one frame per call) with the offline graphs' maps, on a clip's every frame.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..families import blend_prior, family_of
from ..model.ezvsl import EZVSL, EZVSLStep
from ..model.streaming import OUTPUT_NAMES
from ..runtime.bundle import Bundle
from ..runtime.engine import StepModel
from ..runtime.onnx_backend import OnnxRuntimeBackend
from ..deploy.tolerance import tolerance_for
from .graphs import GraphSpec
from .verify import VerifyReport, judge, map_agreement


class _ImageGraph(nn.Module):
    def __init__(self, model: EZVSL) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame: torch.Tensor):
        V = self.model.image(frame)
        prior = self.model.prior(frame)
        return (V, V.mean(dim=(2, 3))) if prior is None else (V, V.mean(dim=(2, 3)), prior)


class _AudioGraph(nn.Module):
    def __init__(self, model: EZVSL) -> None:
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor):
        return self.model.audio(spec)


def graph_specs(model: EZVSL) -> list[GraphSpec]:
    """Example inputs, names and dynamic batch dims of the three graphs."""
    cfg, fam = model.config, family_of(model.config)
    batch = torch.export.Dim("batch", min=1, max=1024)
    frame, spec = torch.zeros(2, *fam.frame_shape(cfg)), torch.zeros(2, *fam.audio_shape(cfg))
    image_out = ["V", "zv"] + (["prior"] if model.objnet is not None else [])
    return [
        GraphSpec("step", EZVSLStep(model), (frame, spec, torch.ones(2, 1)), ["frame", fam.audio_input, "valid"],
                  list(OUTPUT_NAMES), [{0: batch}] * 3),
        GraphSpec("video", _ImageGraph(model), (frame[:, :, 0],), ["frame"], image_out, [{0: batch}]),
        GraphSpec("audio", _AudioGraph(model), (spec,), [fam.audio_input], ["za"], [{0: batch}]),
    ]


def random_inputs(config, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reproducible clip in ``ezvsl_file_inputs``' layout: frames (1, 3, T, S, S), spectrograms
    (1, T, 257, 200) around the log level of real audio."""
    rng = np.random.default_rng(seed)
    fam = family_of(config)
    video = rng.standard_normal((1, 3, steps, config.image_size, config.image_size)).astype(np.float32)
    spec = (rng.standard_normal((1, steps, *fam.audio_shape(config)[1:])) * 0.3 - 0.9).astype(np.float32)
    return video, spec


def offline(bundle: Bundle, video: np.ndarray, specs: np.ndarray) -> dict[str, np.ndarray]:
    """The offline graphs on every frame of a clip; maps formed in numpy."""
    cfg = bundle.config
    frames = np.ascontiguousarray(video[0].transpose(1, 0, 2, 3))
    with OnnxRuntimeBackend(bundle.path("video"), "cpu") as v, OnnxRuntimeBackend(bundle.path("audio"), "cpu") as a:
        out = v.run({"frame": frames})
        out.update(a.run({family_of(cfg).audio_input: np.ascontiguousarray(specs[0][:, None])}))
    cos = np.einsum("tdhw,td->thw", out["V"], out["za"])
    out["alpha"] = blend_prior(cos, out.get("prior"), cfg.prior_alpha)
    out["score"] = np.einsum("td,td->t", out["zv"], out["za"])
    return out


def stream(bundle: Bundle, video: np.ndarray, specs: np.ndarray) -> dict[str, np.ndarray]:
    """The step graph through the runtime's ``StepModel``, one frame per call."""
    model = StepModel.from_export(bundle, backend="onnxruntime-cpu")
    alphas, scores = [], []
    for t in range(video.shape[2]):
        out, _ = model.step(video[:, :, t], specs[:, t], np.ones(1, np.float32), [])
        alphas.append(out.alpha[0])
        scores.append(out.score[0])
    model.close()
    return {"alpha": np.stack(alphas), "score": np.stack(scores)}


def verify(bundle: Bundle, model: EZVSL, clip: tuple[np.ndarray, np.ndarray] | None = None,
           steps: int = 8) -> VerifyReport:
    """Compare an ezvsl export with the model it came from (the tolerance policy of every export)."""
    tol = tolerance_for(bundle.precision)
    video, specs = clip if clip is not None else random_inputs(model.config, steps)
    report = VerifyReport(precision=bundle.precision, steps=video.shape[2])
    with torch.no_grad():
        f = model.float().eval().features(torch.from_numpy(video), torch.from_numpy(specs))
        V = f.V[0].transpose(0, 1)
        ref = {"V": V, "zv": f.zv[0], "za": f.za[0], "alpha": model.maps(V, f.za[0], None if f.prior is None else f.prior[0]),
               "score": (f.zv[0] * f.za[0]).sum(dim=1)}
        if f.prior is not None:
            ref["prior"] = f.prior[0]
        ref = {k: v.numpy() for k, v in ref.items()}
    live = stream(bundle, video, specs)
    judge(report, tol, ref, offline(bundle, video, specs), live)
    if tol.min_map_ciou is not None:  # fp16: what a user sees, the binarised maps, against fp32 PyTorch
        report.map_ciou_min = map_agreement(live["alpha"], ref["alpha"])
        if not report.map_ciou_min >= tol.min_map_ciou:
            report.failures.append(f"{bundle.precision} maps agree with fp32 at cIoU {report.map_ciou_min:.3f} "
                                   f"< {tol.min_map_ciou}")
    return report
