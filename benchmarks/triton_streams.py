"""N streams through a Triton server against the same N streams batched locally: the overhead
per step that Triton adds (issue 15).

    .venv/bin/python benchmarks/triton_streams.py soundloc/assets/demo --url 127.0.0.1:8001 \
        --model soundloc_step_py --streams 1,4,16 --steps 60 --json benchmarks/results/triton_demo.json

The server must be running and serve the export's step model (the repository
`soundloc export --format triton` writes, or its Python-backend variant). For each N: N threads,
each one Triton sequence sending fixed random steps (valid frames, one row per request) as fast
as its answers come; then locally, the same N rows as one batched `StepModel.step` per tick
(onnxruntime CPU). A stream's step latency is request to answer over Triton and the batched
call locally; "overhead per step" is the difference of the medians. Inputs are random (the
cost does not depend on them); the first 5 steps of each run are warm-up and not counted.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from soundloc.fileio import write_json
from soundloc.runtime.engine import StepModel
from soundloc.runtime.triton_client import TritonModel

WARMUP = 5


def inputs(model: StepModel, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg, rng = model.config, np.random.default_rng(seed)
    return (rng.standard_normal((batch, 3, cfg.image_size, cfg.image_size), np.float32),
            rng.standard_normal((batch, 10, cfg.n_mels), np.float32), np.ones(batch, np.float32))


def local_batched(model: StepModel, n: int, steps: int) -> list[float]:
    """ms per batched tick of N streams (each stream's step latency)."""
    frames, mels, valid = inputs(model, n)
    state, laps = model.new_state(n), []
    for _ in range(steps + WARMUP):
        t = time.perf_counter()
        _, state = model.step(frames, mels, valid, state)
        laps.append((time.perf_counter() - t) * 1e3)
    return laps[WARMUP:]


def counts(model: TritonModel) -> tuple[int, int]:
    """The server's (inferences, executions) of the model so far: their ratio is the mean batch."""
    s = model.client.get_inference_statistics(model.model).model_stats[0]
    return s.inference_count, s.execution_count


def over_triton(local: StepModel, url: str, name: str, n: int, steps: int) -> tuple[list[float], float, float]:
    """Per-request ms of N concurrent sequences, total steps per second, and the mean batch the
    server formed (warm-up, END steps and other clients included)."""
    laps: list[list[float]] = [[] for _ in range(n)]
    frames, mels, valid = inputs(local, 1)
    barrier, starts, ends = threading.Barrier(n), [0.0] * n, [0.0] * n

    def stream(k: int) -> None:
        model = TritonModel(local.bundle, url, model=name)
        model.new_state(1)
        for i in range(steps + WARMUP):
            if i == WARMUP:
                barrier.wait()
                starts[k] = time.perf_counter()
            t = time.perf_counter()
            model.step(frames, mels, valid, [])
            laps[k].append((time.perf_counter() - t) * 1e3)
        ends[k] = time.perf_counter()
        model.close()

    probe = TritonModel(local.bundle, url, model=name)
    before = counts(probe)
    workers = [threading.Thread(target=stream, args=(k,)) for k in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    after = counts(probe)
    probe.close()
    batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
    return [x for lap in laps for x in lap[WARMUP:]], n * steps / (max(ends) - min(starts)), batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export")
    p.add_argument("--url", required=True, help="HOST:PORT of the Triton server's gRPC endpoint")
    p.add_argument("--model", default="soundloc_step", help="the step model's name on the server")
    p.add_argument("--streams", default="1,4,16")
    p.add_argument("--steps", type=int, default=60, help="counted steps per stream")
    p.add_argument("--json")
    a = p.parse_args()
    local = StepModel.from_export(a.export, backend="onnxruntime-cpu")
    rows = []
    for n in (int(s) for s in a.streams.split(",")):
        base = local_batched(local, n, a.steps)
        remote, rate, batch = over_triton(local, a.url, a.model, n, a.steps)
        row = {"streams": n, "local_batched_ms_p50": float(np.median(base)),
               "local_batched_ms_p90": float(np.percentile(base, 90)),
               "triton_ms_p50": float(np.median(remote)), "triton_ms_p90": float(np.percentile(remote, 90)),
               "triton_steps_per_s": rate, "triton_mean_batch": batch, "local_steps_per_s": n * 1e3 / float(np.mean(base))}
        row["overhead_ms_p50"] = row["triton_ms_p50"] - row["local_batched_ms_p50"]
        rows.append(row)
        print(f"N={n:3d}  local batched {row['local_batched_ms_p50']:7.2f} ms/tick ({row['local_steps_per_s']:6.1f} "
              f"steps/s)  triton {row['triton_ms_p50']:7.2f} ms/step p50, {row['triton_ms_p90']:7.2f} p90 "
              f"({rate:6.1f} steps/s, mean batch {batch:4.1f})  overhead {row['overhead_ms_p50']:+7.2f} ms", flush=True)
    if a.json:
        write_json({"export": a.export, "url": a.url, "model": a.model, "steps": a.steps, "rows": rows}, a.json)


if __name__ == "__main__":
    main()
