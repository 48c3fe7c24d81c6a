"""`soundloc export --verify`: run the exported graphs in onnxruntime against PyTorch.

Per output, the max abs error of (1) the offline graphs vs the PyTorch model and (2) the
streaming step graph, fed frame by frame and flushed, vs the offline graphs, on every step of
a clip. The label outputs (``soundloc.labels``) are checked the same way: the step graph's
per-step logits, and the posteriors over each trailing 3 s window a stream forms from them,
against the PyTorch heads on the offline graphs' features (and on PyTorch's own, for the
offline row), the posteriors computed the training way (the head on the window's mean features). Errors are judged against the magnitude of what is compared, by the one tolerance
policy (``soundloc.deploy.tolerance``: a fraction of the reference's max |value| per
precision). fp16 exports are compared with the fp32 PyTorch model; besides raw errors they
are judged by what a user sees: the binarised maps (docs/design.md §2 thresholding) must agree with
fp32 at the row's cIoU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from .. import labels, localize, metrics
from ..labels import LOGIT_PREFIX
from ..config import MELS_PER_STEP
from ..model.classifier import AVClassifier, localization_maps, moment_scores
from ..runtime.bundle import Bundle
from ..runtime.engine import StepModel
from ..runtime.onnx_backend import OnnxRuntimeBackend
from ..runtime.stream import StepDriver
from ..deploy.tolerance import tolerance_for


@dataclass
class VerifyReport:
    precision: str
    steps: int
    offline_vs_torch: dict[str, float] = field(default_factory=dict)  # max abs error per output
    stream_vs_offline: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)  # max abs value of each reference output
    allowed: dict[str, float] = field(default_factory=dict)  # the tolerance each output was held to
    map_ciou_min: float | None = None  # binarised-map agreement with fp32 PyTorch (fp16 exports)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {"precision": self.precision, "steps": self.steps, "offline_vs_torch": self.offline_vs_torch,
                "stream_vs_offline": self.stream_vs_offline, "scale": self.scale, "allowed": self.allowed,
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
    mel = (rng.standard_normal((1, 1, MELS_PER_STEP * steps, config.n_mels)) * 3 - 6).astype(np.float32)
    return video, mel


def offline_onnx(bundle: Bundle, video: np.ndarray, mel: np.ndarray) -> dict[str, np.ndarray]:
    with OnnxRuntimeBackend(bundle.path("video"), "cpu") as v, OnnxRuntimeBackend(bundle.path("audio"), "cpu") as a:
        out = v.run({"video": video})
        out.update(a.run({"mel": mel}))
    out["alpha"] = localize.step_maps(out["V"], out["za"], bundle.config.map_kind)
    out["score"] = localize.moment_scores(out["zv"], out["za"])
    return out


def stream_inputs(video: np.ndarray, mel: np.ndarray, lookahead: int) -> Iterator[tuple[np.ndarray, ...]]:
    """A clip's step inputs as a live stream gives them: each frame with its 10 mel frames and
    valid=1, then ``lookahead`` zero frames with valid=0 that flush the end (calibration feeds
    these to the step graph; ``StepDriver`` does the same for a running model)."""
    k = MELS_PER_STEP
    for n in range(video.shape[2] + lookahead):
        if n < video.shape[2]:
            yield video[:, :, n], mel[:, 0, k * n:k * n + k], np.ones(1, np.float32)
        else:
            yield np.zeros_like(video[:, :, 0]), np.zeros_like(mel[:, 0, :k]), np.zeros(1, np.float32)


def stream_onnx(bundle: Bundle, video: np.ndarray, mel: np.ndarray) -> dict[str, np.ndarray]:
    """Feed the clip to the step graph one frame at a time through the runtime's ``StepDriver``,
    then flush; collect the finished steps."""
    model = StepModel.from_export(bundle, backend="onnxruntime-cpu")
    driver, k = StepDriver(model), MELS_PER_STEP
    done = [f for n in range(video.shape[2]) for f in driver.push(video[:, :, n], mel[:, 0, k * n:k * n + k], n)]
    done += driver.flush()
    model.close()
    out = {"alpha": np.stack([f.alpha for f in done])[None],
           "score": np.array([f.score for f in done], np.float32)[None]}
    if model.label_heads:  # (1, T, C) per head, split from each step's concatenated logits
        per_head = np.stack([np.split(f.logits, len(model.label_heads)) for f in done], axis=1)
        out.update({LOGIT_PREFIX + h: per_head[i][None] for i, h in enumerate(model.label_heads)})
        out.update(window_posteriors(out, model.config.window_steps))
    return out


def window_posteriors(out: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    """Each head's class posteriors over the trailing window at every step, as a stream forms
    them: the softmax of the window's mean logits, (1, T, C) per ``posterior_<head>``."""
    post = {}
    for key in [k for k in out if k.startswith(LOGIT_PREFIX)]:
        means = localize.window_average(out[key][0][:, :, None], steps, "trailing")[:, :, 0]
        post["posterior_" + key[len(LOGIT_PREFIX):]] = labels.softmax(means)[None].astype(np.float32)
    return post


def torch_labels(model: AVClassifier, zv: torch.Tensor, za: torch.Tensor, steps: int) -> dict[str, np.ndarray]:
    """The reference for the label outputs from features (1, T, D): each head's per-step
    logits, and its posteriors over each trailing window computed the training way (the head
    on the window's mean features, Eq. 1), not by averaging logits."""
    T = zv.shape[1]
    per_step = [model.step_logits(zv[:, t], za[:, t]) for t in range(T)]
    out = {LOGIT_PREFIX + h: torch.stack([p[i] for p in per_step], 1).numpy() for i, h in enumerate(model.label_heads)}
    windows = [model.heads(zv[:, max(0, t - steps + 1):t + 1], za[:, max(0, t - steps + 1):t + 1]) for t in range(T)]
    for h in model.label_heads:
        out["posterior_" + h] = torch.softmax(torch.stack([w[h] for w in windows], 1).double(), -1).float().numpy()
    return out


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def map_agreement(maps: np.ndarray, reference: np.ndarray) -> float:
    """Min over steps of the cIoU between binarised maps (reference taken as ground truth)."""
    return map_figures(maps, reference)["ciou_min"]


def verify(bundle: Bundle, model: AVClassifier, clip: tuple[np.ndarray, np.ndarray] | None = None,
           steps: int = 100) -> VerifyReport:
    """Compare an export with the model it came from; see the module docstring."""
    tol = tolerance_for(bundle.precision)
    video, mel = clip if clip is not None else random_clip(model.config, steps)
    report = VerifyReport(precision=bundle.precision, steps=video.shape[2])
    with torch.no_grad():
        f = model.float().eval().features(torch.from_numpy(video), torch.from_numpy(mel))
        ref = {"V": f.V, "zv": f.zv, "za": f.za, "alpha": localization_maps(f.V, f.za, model.config.map_kind),
               "score": moment_scores(f.zv, f.za)}
        ref = {k: v.numpy() for k, v in ref.items()}
    off = offline_onnx(bundle, video, mel)
    stream = stream_onnx(bundle, video, mel)
    if hasattr(model, "label_heads") and model.label_heads:
        with torch.no_grad():
            ref.update(torch_labels(model, f.zv, f.za, model.config.window_steps))
            off.update(torch_labels(model, torch.from_numpy(off["zv"]), torch.from_numpy(off["za"]),
                                    model.config.window_steps))
    judge(report, tol, ref, off, stream)
    if tol.min_map_ciou is not None:
        report.map_ciou_min = min(map_agreement(off["alpha"][0], ref["alpha"][0]),
                                  map_agreement(stream["alpha"][0], ref["alpha"][0]))
        if not report.map_ciou_min >= tol.min_map_ciou:
            report.failures.append(f"{bundle.precision} maps agree with fp32 at cIoU {report.map_ciou_min:.3f} "
                                   f"< {tol.min_map_ciou}")
    return report


def judge(report: VerifyReport, tol, ref: dict[str, np.ndarray], offline: dict[str, np.ndarray],
          stream: dict[str, np.ndarray]) -> None:
    """Record every output's errors (offline graphs vs PyTorch ``ref``, streaming vs offline for
    alpha, score and the label outputs: per-step logits and windowed posteriors) and the
    failures beyond the tolerance ``tol`` allows."""
    for k in ref:
        report.offline_vs_torch[k] = _max_err(offline[k], ref[k])
        report.scale[k] = float(np.abs(ref[k]).max())
        report.allowed[k] = tol.allowed(report.scale[k])
    for k in [k for k in ref if k in ("alpha", "score") or k.startswith((LOGIT_PREFIX, "posterior_"))]:
        report.stream_vs_offline[k] = _max_err(stream.get(k, np.zeros(0)), offline[k])
    report.failures += [_over(f"offline {k} vs PyTorch", e, report, k)
                        for k, e in report.offline_vs_torch.items() if not e <= report.allowed[k]]
    report.failures += [_over(f"streaming {k} vs offline", e, report, k)
                        for k, e in report.stream_vs_offline.items() if not e <= report.allowed[k]]


def _over(what: str, err: float, report: VerifyReport, key: str) -> str:
    return (f"{what}: {err:.2e} > {report.allowed[key]:.2e} ({report.allowed[key] / max(report.scale[key], 1.0):.0e} "
            f"of the values' scale {report.scale[key]:.2e})")


def peak_moves(maps: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step of maps (T, h, w): how many cells (Chebyshev) their peak sits from the
    reference's, and how far below its own peak the reference scores that cell, as a fraction
    of its range at that step (0 on a flat reference: every cell is its peak)."""
    side = maps.shape[-1]
    got, ref = maps.reshape(len(maps), -1).argmax(1), reference.reshape(len(reference), -1)
    want, steps = ref.argmax(1), np.arange(len(ref))
    moved = np.maximum(np.abs(got // side - want // side), np.abs(got % side - want % side))
    below, span = ref[steps, want] - ref[steps, got], ref.max(1) - ref.min(1)
    return moved, np.divide(below, span, out=np.zeros_like(below), where=span > 0)


def map_figures(maps: np.ndarray, reference: np.ndarray, reach: int = 0, tie: float = 0.0) -> dict[str, float]:
    """How maps (T, h, w) agree with reference maps step by step: the fraction of steps whose
    peak cell is the same, whose peak is within ``reach`` cells (Chebyshev), whose peak agrees
    (within ``reach``, or on a cell the reference scores within ``tie`` of its range of its own
    peak: a tie of the reference's, ``Tolerance.peak_tie``), and the median and min cIoU of the
    binarised maps."""
    moved, below = peak_moves(maps, reference)
    cious = [metrics.ciou(metrics.prediction(m)[1], metrics.prediction(r)[1]) for m, r in zip(maps, reference)]
    return {"peak_agreement": float(np.mean(moved == 0)), "peak_within_reach": float(np.mean(moved <= reach)),
            "peak_reach_cells": reach, "peak_agrees": float(np.mean((moved <= reach) | (below <= tie))), "peak_tie": tie,
            "ciou_median": float(np.median(cious)), "ciou_min": float(np.min(cious))}


def label_agreement(stream: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per label head, how a stream's window posteriors agree with a reference stream's: the
    share of windows whose top-1 class is the same, and the largest probability difference."""
    out = {}
    for key in sorted(k for k in reference if k.startswith("posterior_")):
        a, b = stream.get(key), reference[key]
        if a is None or a.shape != b.shape:
            out[key[len("posterior_"):]] = {"top1_agreement": 0.0, "max_prob_diff": float("inf")}
            continue
        out[key[len("posterior_"):]] = {"top1_agreement": float(np.mean(a[0].argmax(-1) == b[0].argmax(-1))),
                                        "max_prob_diff": _max_err(a, b)}
    return out


def compare_int8(bundle: Bundle, reference: Bundle, video: np.ndarray, mel: np.ndarray) -> dict:
    """An int8 export against the fp32 export it came from, on one clip: maps and moments of
    the streaming step (what a user sees), of the offline graphs, and streaming vs offline int8.
    ``failures`` names each bound of the int8 tolerance (``tolerance.py``) the streaming step misses."""
    tol = tolerance_for("int8")
    s8, s32 = stream_onnx(bundle, video, mel), stream_onnx(reference, video, mel)
    o8, o32 = offline_onnx(bundle, video, mel), offline_onnx(reference, video, mel)
    k, reach, tie = min(3, video.shape[2]), tol.peak_cells(s32["alpha"].shape[-1]), tol.peak_tie
    top8, top32 = localize.top_k_moments(s8["score"][0], k), localize.top_k_moments(s32["score"][0], k)
    out = {"steps": int(video.shape[2]),
           "stream": map_figures(s8["alpha"][0], s32["alpha"][0], reach, tie),
           "offline": map_figures(o8["alpha"][0], o32["alpha"][0], reach, tie),
           "stream_vs_offline_int8": map_figures(s8["alpha"][0], o8["alpha"][0], reach, tie),
           "alpha_max_rel_error": _max_err(s8["alpha"], s32["alpha"]) / float(np.abs(s32["alpha"]).max()),
           "moments": {"score_max_rel_error": _max_err(s8["score"], s32["score"]) / float(np.abs(s32["score"]).max()),
                       "top1_same": top8[0] == top32[0], f"top{k}_overlap": len(set(top8) & set(top32)) / k},
           "labels": label_agreement(s8, s32)}
    failures = []
    if not out["stream"]["peak_agrees"] >= tol.min_peak_agreement:
        reach_text = Fraction(tol.peak_reach).limit_denominator(100)
        where = "equals fp32's" if not reach else f"is within {reach} cell(s) of fp32's ({reach_text} of the frame)"
        tied = f" or lies on a cell fp32 scores within {tie:.0%} of its range of its peak" if tie else ""
        failures.append(f"int8 map peak {where}{tied} on {out['stream']['peak_agrees']:.1%} of steps "
                        f"< {tol.min_peak_agreement:.0%}")
    if not out["stream"]["ciou_median"] >= tol.min_map_ciou_median:
        failures.append(f"int8 binarised maps agree with fp32 at median cIoU {out['stream']['ciou_median']:.3f} "
                        f"< {tol.min_map_ciou_median}")
    if not out["alpha_max_rel_error"] <= tol.rel:
        failures.append(f"int8 alpha differs from fp32's by {out['alpha_max_rel_error']:.1%} of its scale "
                        f"> {tol.rel:.0%}")
    return {**out, "ok": not failures, "failures": failures}
