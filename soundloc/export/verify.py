"""`soundloc export --verify`: run the exported graphs in onnxruntime against PyTorch.

Per output, the max abs error of (1) the offline graphs vs the PyTorch model and (2) the
streaming step graph, fed frame by frame and flushed, vs the offline graphs, on every step of
a clip. fp16 exports are compared with the fp32 PyTorch model; besides raw errors they are
judged by what a user sees: the binarised maps (DESIGN §2 thresholding) must agree with fp32
at cIoU >= 0.95.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import metrics
from ..model.classifier import AVClassifier, localization_maps, moment_scores
from ..localize import step_maps
from ..runtime.bundle import Bundle
from ..runtime.engine import StepModel
from ..runtime.onnx_backend import OnnxRuntimeBackend

TOLERANCE = {"fp32": 1e-4, "fp16": None}  # fp16 is judged by map agreement, not raw error
MIN_FP16_CIOU = 0.95


@dataclass
class VerifyReport:
    precision: str
    steps: int
    offline_vs_torch: dict[str, float] = field(default_factory=dict)  # max abs error per output
    stream_vs_offline: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)  # max abs value of each reference output
    map_ciou_min: float | None = None  # binarised-map agreement with fp32 PyTorch (fp16 exports)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {"precision": self.precision, "steps": self.steps, "offline_vs_torch": self.offline_vs_torch,
                "stream_vs_offline": self.stream_vs_offline, "scale": self.scale,
                "map_ciou_min": self.map_ciou_min, "ok": self.ok, "failures": self.failures}


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial statistics, so that checking an untrained model's
    export exercises every layer (fresh BN is an identity that hides mistakes)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def random_clip(config, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reproducible normalised clip: video (1, 3, T, S, S), mel (1, 1, 10T, 80)."""
    rng = np.random.default_rng(seed)
    S = config.image_size
    video = rng.standard_normal((1, 3, steps, S, S)).astype(np.float32)
    mel = (rng.standard_normal((1, 1, 10 * steps, config.n_mels)) * 3 - 6).astype(np.float32)
    return video, mel


def offline_onnx(bundle: Bundle, video: np.ndarray, mel: np.ndarray) -> dict[str, np.ndarray]:
    with OnnxRuntimeBackend(bundle.path("video"), "cpu") as v, OnnxRuntimeBackend(bundle.path("audio"), "cpu") as a:
        out = v.run({"video": video})
        out.update(a.run({"mel": mel}))
    out["alpha"] = step_maps(out["V"], out["za"], bundle.config.map_kind)
    out["score"] = np.einsum("btd,btd->bt", out["zv"], out["za"])
    return out


def stream_onnx(bundle: Bundle, video: np.ndarray, mel: np.ndarray) -> dict[str, np.ndarray]:
    """Feed the clip to the step graph one frame at a time, then flush; collect valid steps."""
    model = StepModel.from_export(bundle, backend="onnxruntime-cpu")
    T = video.shape[2]
    state = model.new_state(1)
    alphas, scores = [], []
    for n in range(T + model.lookahead):
        real = n < T
        frame = video[:, :, n] if real else np.zeros_like(video[:, :, 0])
        m = mel[:, 0, 10 * n:10 * n + 10] if real else np.zeros_like(mel[:, 0, :10])
        out, state = model.step(frame, m, np.array([float(real)]), state)
        if out.valid[0]:
            alphas.append(out.alpha[0])
            scores.append(out.score[0])
    model.close()
    return {"alpha": np.stack(alphas)[None], "score": np.stack(scores)[None]}


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def map_agreement(maps: np.ndarray, reference: np.ndarray) -> float:
    """Min over steps of the cIoU between binarised maps (reference taken as ground truth)."""
    cious = [metrics.ciou(metrics.prediction(m)[1], metrics.prediction(r)[1]) for m, r in zip(maps, reference)]
    return float(min(cious))


def verify(bundle: Bundle, model: AVClassifier, clip: tuple[np.ndarray, np.ndarray] | None = None,
           steps: int = 100) -> VerifyReport:
    """Compare an export with the model it came from; see the module docstring."""
    video, mel = clip if clip is not None else random_clip(model.config, steps)
    report = VerifyReport(precision=bundle.precision, steps=video.shape[2])
    with torch.no_grad():
        f = model.float().eval().features(torch.from_numpy(video), torch.from_numpy(mel))
        ref = {"V": f.V, "zv": f.zv, "za": f.za, "alpha": localization_maps(f.V, f.za, model.config.map_kind),
               "score": moment_scores(f.zv, f.za)}
        ref = {k: v.numpy() for k, v in ref.items()}
    off = offline_onnx(bundle, video, mel)
    stream = stream_onnx(bundle, video, mel)
    for k in ("V", "zv", "za", "alpha", "score"):
        report.offline_vs_torch[k] = _max_err(off[k], ref[k])
        report.scale[k] = float(np.abs(ref[k]).max())
    for k in ("alpha", "score"):
        report.stream_vs_offline[k] = _max_err(stream[k], off[k])
    tol = TOLERANCE[bundle.precision]
    if tol is not None:
        report.failures += [f"offline {k} vs PyTorch: {e:.2e} > {tol:.0e}"
                            for k, e in report.offline_vs_torch.items() if not e <= tol]
        report.failures += [f"streaming {k} vs offline: {e:.2e} > {tol:.0e}"
                            for k, e in report.stream_vs_offline.items() if not e <= tol]
    else:
        report.map_ciou_min = min(map_agreement(off["alpha"][0], ref["alpha"][0]),
                                  map_agreement(stream["alpha"][0], ref["alpha"][0]))
        if not report.map_ciou_min >= MIN_FP16_CIOU:
            report.failures.append(f"fp16 maps agree with fp32 at cIoU {report.map_ciou_min:.3f} < {MIN_FP16_CIOU}")
    return report
