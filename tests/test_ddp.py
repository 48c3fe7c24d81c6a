"""DDP on CPU: 2 processes with the gloo backend on 127.0.0.1, against one process.

The ranks join through the same environment variables torchrun sets (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and the same soundloc.train functions a real run uses.
"""

from __future__ import annotations

import gc
import json
import os
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
mp = pytest.importorskip("torch.multiprocessing")

from soundloc.config import preset  # noqa: E402
from soundloc.train.datasets import collate  # noqa: E402
from soundloc.train.distributed import (DistInfo, close_distributed, dist_from_env, init_distributed,  # noqa: E402
                                  resolve_device)
from soundloc.train import TrainOptions, build_state, fit, forward_backward, seed_everything  # noqa: E402

CONFIG = preset("tiny", num_classes=3, clip_seconds=0.4, image_size=32, class_names=("a", "b", "c"))
GLOBAL_BATCH = 8


def global_batch() -> dict:
    g = torch.Generator().manual_seed(7)
    t = CONFIG.clip_steps
    return {"video": torch.randn(GLOBAL_BATCH, 3, t, 32, 32, generator=g),
            "mel": torch.randn(GLOBAL_BATCH, 1, 10 * t, 80, generator=g),
            "label": torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)}


class Clips(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.batch = {k: v[:n] for k, v in global_batch().items()}

    def __len__(self) -> int:
        return len(self.batch["label"])

    def __getitem__(self, i: int) -> dict:
        return {"video": self.batch["video"][i], "mel": self.batch["mel"][i], "label": int(self.batch["label"][i]), "id": f"c{i}"}


def _join(rank: int, world: int, port: int) -> None:
    """What torchrun does for each worker."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)


def first_step(state, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one step with BatchNorm in eval mode (see the test's docstring)."""
    state.model.eval()
    loss, _, _ = forward_backward(state, batch)
    return loss, {n: p.grad.clone() for n, p in state.module.named_parameters() if p.grad is not None}


def _grad_worker(rank: int, world: int, port: int, out: str) -> None:
    _join(rank, world, port)
    info = dist_from_env()
    device = resolve_device("cpu", info)
    init_distributed(info, device)
    seed_everything(0)
    state = build_state(CONFIG, TrainOptions(amp="off"), info, device)
    half = GLOBAL_BATCH // world
    batch = {k: v[rank * half:(rank + 1) * half] for k, v in global_batch().items()}
    loss, grads = first_step(state, batch)
    losses = [None] * world
    torch.distributed.all_gather_object(losses, loss)
    if rank == 0:
        torch.save({"losses": losses, "grads": grads, "ddp": type(state.model).__name__}, out)
    # The teardown a real run does (train.fit): drop the DDP model, then leave together. Rank 1
    # destroying the group at once, DDP model alive, while rank 0 still wrote its file, made
    # rank 1 abort at exit now and then.
    del state
    close_distributed(info)
    assert not any(type(o) is torch.nn.parallel.DistributedDataParallel for o in gc.get_objects())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    """Each of 2 gloo ranks takes half of an 8-clip batch; the mean of their losses and the
    all-reduced (averaged) gradients must equal one process on all 8 clips.

    BatchNorm runs in eval mode (running statistics): in train mode each rank normalises with
    the statistics of its own 4 clips, so the per-rank losses legitimately differ from the
    8-clip loss (that is plain BN under DDP, documented in soundloc.train); eval-mode BN makes
    the network a per-clip function, where the identity must hold exactly. Gradients still
    flow through every layer, BN's affine parameters included.
    """
    out = tmp_path / "ddp.pt"
    mp.spawn(_grad_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    assert ddp["ddp"] == "DistributedDataParallel"

    seed_everything(0)
    single = build_state(CONFIG, TrainOptions(amp="off"), DistInfo(), torch.device("cpu"))
    loss, grads = first_step(single, global_batch())
    assert sum(ddp["losses"]) / 2 == pytest.approx(loss, abs=1e-5)
    assert ddp["losses"][0] != pytest.approx(ddp["losses"][1], abs=1e-3)  # the halves really differ
    assert grads.keys() == ddp["grads"].keys() and len(grads) > 20
    for name, g in grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)


def _fit_worker(rank: int, world: int, port: int, out: str) -> None:
    _join(rank, world, port)
    result = fit(CONFIG, Clips(7), Clips(5), out, TrainOptions(epochs=2, batch_size=2, workers=0, progress=False),
                 collate_fn=collate)
    Path(out, f"result{rank}.json").write_text(json.dumps(result.to_dict()))


def test_fit_under_two_ranks_writes_once_and_sums_metrics(tmp_path: Path) -> None:
    """A whole run with 2 ranks: metrics all-reduced over ranks (7 training clips padded to 8
    by the DistributedSampler, 5 validation clips each seen once), one log line per epoch
    (only rank 0 writes), and a checkpoint that loads."""
    mp.spawn(_fit_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(r["world_size"] == 2 and r["train"]["clips"] == 8 and r["val"]["clips"] == 5 for r in lines)
    r0, r1 = (json.loads((tmp_path / f"result{i}.json").read_text()) for i in (0, 1))
    assert r0["accuracy"] == r1["accuracy"] and r0["epochs"] == r1["epochs"] == 2
    from soundloc.model.checkpoint import load_checkpoint

    model, data = load_checkpoint(tmp_path / "last.pt")
    assert data["epoch"] == 2 and not any(k.startswith("module.") for k in data["model"])
    assert not list(tmp_path.glob("*.tmp"))
