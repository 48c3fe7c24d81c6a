"""The references that say what the step time means: (1) PyTorch eager recomputing the 3 s
window every step, (2) the offline per-frame floor on the same runtime, (3) the sustained matmul
FLOP/s of the runtime; and the model's MACs per step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MELS_PER_STEP, Config
from .targets import Target
from .stages import FLOOR_FRAMES
from .stats import Clock, Laps, Plan, Timing, run_timed

MATMUL_N = 1024  # (N, N) @ (N, N): 2.1 GFLOP, large enough to reach a CPU's sustained rate


# -- references --------------------------------------------------------------------------------


def time_window_recompute(config: Config, plan: Plan, threads: int | None = None,
                          clock: Clock = time.perf_counter) -> Timing:
    """Reference (1), the research-code live demo: every step, PyTorch eager runs the offline
    model on the last 3 s (30 frames, 300 mel frames) and averages the 30 maps."""
    import torch

    from ..model.classifier import AVClassifier, localization_maps

    _needs_window_family(config, "window recompute")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AVClassifier(config).eval()
    t, size = config.window_steps, config.image_size
    video = torch.randn(1, 3, t, size, size)
    mel = torch.randn(1, 1, MELS_PER_STEP * t, config.n_mels)

    def body(laps: Laps) -> None:
        with torch.inference_mode():
            f = model.features(video, mel)
            localization_maps(f.V, f.za, config.map_kind).mean(dim=1).numpy()

    return run_timed(body, plan, clock)


def time_floor(tgt: Target, backend: str, plan: Plan, threads: int | None = None,
               frames: int = FLOOR_FRAMES, clock: Clock = time.perf_counter) -> Timing:
    """Reference (2), the floor: the offline video and audio networks on a ``frames``-step clip
    on the same runtime; sample = call time / frames (seconds per frame)."""
    _needs_window_family(tgt.config, "offline floor")
    size, n_mels = tgt.config.image_size, tgt.config.n_mels
    rng = np.random.default_rng(0)
    video = rng.standard_normal((1, 3, frames, size, size), dtype=np.float32)
    mel = rng.standard_normal((1, 1, MELS_PER_STEP * frames, n_mels), dtype=np.float32)
    run = _torch_offline(tgt, threads) if backend == "torch" else _export_offline(tgt, backend, threads)

    def body(laps: Laps) -> None:
        run(video, mel)

    timing = run_timed(body, plan, clock)
    per = tuple(s / frames for s in timing.samples)
    return Timing(per, {}, timing.warmup_iters, timing.wall_s)


def _needs_window_family(config: Config, what: str) -> None:
    """References (1) and (2) compare a windowed step with recomputing the window: a family
    whose step is already its authors' per-frame computation (ezvsl) has neither."""
    from ..families import family_of

    if not family_of(config).averages_maps:
        raise ValueError(f"no {what} for the {config.family} family: its step is the per-frame computation")


def _torch_offline(tgt: Target, threads: int | None) -> Callable[[np.ndarray, np.ndarray], None]:
    import torch

    from ..model.classifier import AVClassifier

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AVClassifier(tgt.config).eval()

    def run(video: np.ndarray, mel: np.ndarray) -> None:
        with torch.inference_mode():
            model.video(torch.from_numpy(video))
            model.audio(torch.from_numpy(mel))

    return run


def _export_offline(tgt: Target, backend: str, threads: int | None) -> Callable[[np.ndarray, np.ndarray], None]:
    from ..runtime.bundle import read_bundle
    from ..runtime.engine import open_backend

    bundle = read_bundle(tgt.export, verify_files=False)
    video_net = open_backend(bundle, "video", backend, threads)
    audio_net = open_backend(bundle, "audio", backend, threads)

    def run(video: np.ndarray, mel: np.ndarray) -> None:
        video_net.run({"video": video})
        audio_net.run({"mel": mel})

    return run


def matmul_peak(runtime: str, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                n: int = MATMUL_N, plan: Plan = Plan(0.5, 2.0, 5)) -> dict[str, Any]:
    """Reference (3): sustained fp32 matmul FLOP/s of (n, n) @ (n, n) on the same runtime:
    an onnxruntime MatMul graph (same providers and threads) or ``torch.matmul``. ``gflops``
    from the median call (what utilisation uses), ``gflops_best`` from the fastest."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if runtime == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        run, how = (lambda: torch.matmul(ta, tb)), f"torch.matmul {n}x{n} fp32"
    elif runtime == "onnxruntime":
        sess = _matmul_session(b, list(providers), threads)
        run, how = (lambda: sess.run(None, {"A": a})), f"onnxruntime MatMul {n}x{n} fp32 on {providers[0]}"
    else:
        raise ValueError(f"no matmul probe for runtime {runtime!r}")
    stats = run_timed(lambda laps: run(), plan).stats()
    flop = 2 * n ** 3
    return {"gflops": round(flop / stats.median * 1e3 / 1e9, 2), "gflops_best": round(flop / stats.min * 1e3 / 1e9, 2),
            "probe": how, "median_ms": round(stats.median, 3)}


def _matmul_session(b: np.ndarray, providers: list[str], threads: int | None):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = b.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul_peak",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
        initializer=[numpy_helper.from_array(b, "B")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = min(proto.ir_version, 9)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=providers)


# -- model cost ----------------------------------------------------------------------------------


def onnx_macs(path: Path) -> int:
    """MACs of one call of an ONNX graph at batch 1, from its Conv/ConvTranspose/MatMul/Gemm/
    Einsum nodes and shapes from ONNX shape inference (every dynamic dim set to 1)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {i.name: list(numpy_helper.to_array(i).shape) for i in model.graph.initializer}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return sum(_node_macs(node, shapes) for node in model.graph.node)


def _node_macs(node, shapes: dict[str, list]) -> int:
    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    ins = [known(n) for n in node.input]
    out = known(node.output[0]) if node.output else None
    if node.op_type in ("Conv", "ConvTranspose") and out and len(ins) > 1 and ins[1]:
        w = ins[1]  # (Cout, Cin/groups, k...) for Conv; macs = |out| * Cin/groups * prod(k)
        per = math.prod(w[1:]) if node.op_type == "Conv" else w[0] * math.prod(w[2:]) // max(1, out[1])
        return math.prod(out) * per
    if node.op_type in ("MatMul", "Gemm") and out and ins and ins[0]:
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        k = ins[0][-2] if trans_a else ins[0][-1]
        return math.prod(out) * k
    if node.op_type == "Einsum" and all(ins):
        eq = next(a.s.decode() for a in node.attribute if a.name == "equation").replace(" ", "")
        sizes: dict[str, int] = {}
        for term, shape in zip(eq.split("->")[0].split(","), ins):
            sizes.update(zip(term, shape))
        return math.prod(sizes.values())
    return 0


def model_macs(tgt: Target) -> dict[str, Any]:
    """MACs per step: counted on the export's step graph when there is one, else (checkpoint)
    by torch hooks on the offline model (per step of a 16-step clip); says which."""
    if tgt.export is not None:
        from ..runtime.bundle import read_bundle

        bundle = read_bundle(tgt.export, verify_files=False)
        macs = {"step": onnx_macs(bundle.path("step"))}
        return {"macs_per_step": macs["step"], "gmac_per_step": round(macs["step"] / 1e9, 3),
                "source": "onnx step graph (Conv/MatMul/Gemm/Einsum, shape inference)"}
    import torch

    from ..model.checkpoint import load_checkpoint
    from ..model.cost import macs_per_step

    model, _ = load_checkpoint(tgt.checkpoint)
    with torch.no_grad():
        parts = macs_per_step(model, tgt.config)
    total = int(sum(parts.values()))
    return {"macs_per_step": total, "gmac_per_step": round(total / 1e9, 3),
            "source": "torch forward hooks on the offline model (soundloc.model.cost)"}
