"""Training the second-stage localizer (`soundloc train --family ezvsl`, issue 26): EZ-VSL's
loss and the box term computed by hand, gradients, the frame each clip trains on (mid, or the
teacher's moment, with the fallback counted), fine-tuning an imported checkpoint, provenance in
the checkpoint and the export manifest, export --verify and streaming, and a real SIGKILL then
--resume continuing the same run.

Models are the ``tiny`` ezvsl preset (1/16 width) at 96 px (3x3 maps) on real H.264/AAC clips;
the imported checkpoint is full width, as the authors save theirs (tests/test_ezvsl.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from soundloc.config import SAMPLE_RATE, SAMPLES_PER_STEP  # noqa: E402
from soundloc.encode import write_mp4  # noqa: E402
from soundloc.families import EZVSL_AUDIO_SECONDS, FAMILIES, ezvsl_config  # noqa: E402
from soundloc.fileio import sha256_file  # noqa: E402
from soundloc.media import load_clip  # noqa: E402
from soundloc.mel import audio_window, log_spectrogram  # noqa: E402
from soundloc.model.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from soundloc.model.ezvsl import EZVSL, box_loss, mil_contrastive_loss  # noqa: E402
from soundloc.train.datasets import ClipDataset, ClipRecord  # noqa: E402
from soundloc.train.distributed import DistInfo  # noqa: E402
from soundloc.train.epoch import forward_backward  # noqa: E402
from soundloc.train.frames import FrameChoice, FrameDataset, box_target, collate_frames  # noqa: E402
from soundloc.train.loop import build_state  # noqa: E402
from soundloc.train.objectives import ezvsl_step  # noqa: E402
from soundloc.train.types import TrainOptions  # noqa: E402
from conftest import soundloc_cli  # noqa: E402

CONFIG = ezvsl_config("tiny", image_size=96)
TAU = CONFIG.contrastive_temperature
FPS = 10


def unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True)


def write_counting_clip(path: Path, seconds: float = 2.0, seed: int = 0) -> Path:
    """An mp4 whose frame t is grey level 10 + 12 t (so a decoded frame says its index), with
    seeded noise whose loudness changes every step (so a spectrogram says its time)."""
    steps = int(seconds * FPS)
    frames = np.stack([np.full((64, 64, 3), 10 + 12 * t, np.uint8) for t in range(steps)])
    rng = np.random.default_rng(seed)
    gain = np.repeat(rng.uniform(0.05, 0.5, steps), SAMPLES_PER_STEP)
    audio = (rng.standard_normal(steps * SAMPLES_PER_STEP) * gain).astype(np.float32)
    write_mp4(path, frames, FPS, audio, SAMPLE_RATE)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A plain folder of 6 counting clips (no CSV: unlabeled footage)."""
    root = tmp_path_factory.mktemp("student") / "footage"
    root.mkdir()
    for k in range(6):
        write_counting_clip(root / f"clip{k}.mp4", seed=k)
    return root


# -- the losses, by hand ----------------------------------------------------------------------
def test_contrastive_loss_equals_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    V = unit(torch.randn(3, 4, 2, 2, generator=g), 1)
    za = unit(torch.randn(3, 4, generator=g), 1)
    cos = np.einsum("ndhw,md->nmhw", V.numpy(), za.numpy())
    s = cos.reshape(3, 3, 4).max(-1) / TAU  # s[i, j]: image i's best location for audio j
    rows = np.mean([-(s[i, i] - math.log(np.exp(s[i]).sum())) for i in range(3)])
    cols = np.mean([-(s[j, j] - math.log(np.exp(s[:, j]).sum())) for j in range(3)])
    got = float(mil_contrastive_loss(V, za, TAU))
    assert got == pytest.approx(rows + cols, rel=1e-5)
    # the own pairs scoring higher lowers it: the loss is about which audio goes with which image
    aligned = float(mil_contrastive_loss(V, unit(V.mean(dim=(2, 3)), 1), TAU))
    assert aligned < got


def test_box_term_equals_hand_computation_and_a_clip_without_box_adds_nothing() -> None:
    g = torch.Generator().manual_seed(1)
    V = unit(torch.randn(2, 4, 2, 2, generator=g), 1).requires_grad_(True)
    za = unit(torch.randn(2, 4, generator=g), 1).requires_grad_(True)
    target = torch.zeros(2, 2, 2)
    target[0, 0, 1], target[0, 1, 1] = 0.75, 0.25  # clip 0's box: mostly the top-right cell
    own = np.einsum("dhw,d->hw", V[0].detach().numpy(), za[0].detach().numpy()).reshape(-1) / TAU
    logp = own - math.log(np.exp(own).sum())
    want = -(0.75 * logp[1] + 0.25 * logp[3])  # cells in row-major order: (0,1) is 1, (1,1) is 3
    loss = box_loss(V, za, target, TAU)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert V.grad[0].abs().sum() > 0 and za.grad[0].abs().sum() > 0
    assert torch.count_nonzero(V.grad[1]) == 0 and torch.count_nonzero(za.grad[1]) == 0  # clip 1: no box
    assert float(box_loss(V, za, torch.zeros(2, 2, 2), TAU).detach()) == 0.0  # no box in the batch: no term


def test_box_target_is_the_boxes_share_of_each_cell() -> None:
    t = box_target([(0.0, 0.0, 2 / 7, 1 / 7)], 224, 7)  # exactly cells (0, 0) and (0, 1) of 7x7
    want = np.zeros((7, 7), np.float32)
    want[0, 0] = want[0, 1] = 0.5
    np.testing.assert_allclose(t, want, atol=1e-6)
    assert not box_target([], 224, 7).any()


def test_gradients_reach_both_networks_and_an_unboxed_clip_gets_no_box_gradient() -> None:
    torch.manual_seed(0)
    model = EZVSL(CONFIG)
    frames = torch.randn(3, 3, 96, 96)
    specs = torch.randn(3, 1, 257, 200)
    box = torch.zeros(3, 3, 3)
    box[0, 1, 1] = 1.0  # clip 0 has a box, clips 1 and 2 have none
    batch = {"frame": frames, "spec": specs, "box": box, "label": torch.tensor([0, 1, 0]), "id": ["a", "b", "c"]}
    loss, parts, _, _ = ezvsl_step(model, CONFIG.replace(box_weight=2.0), batch, torch.device("cpu"))
    plain, _, _, _ = ezvsl_step(model, CONFIG.replace(box_weight=0.0), batch, torch.device("cpu"))
    assert float(loss) == pytest.approx(float(plain) + 2.0 * parts["box"], rel=1e-5)
    loss.backward()
    for name in ("imgnet", "img_proj", "audnet", "aud_proj"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    # the box term alone, BatchNorm frozen (in training it couples the batch): inputs without a box get none
    model.eval()
    x = frames.clone().requires_grad_(True)
    s = specs.clone().requires_grad_(True)
    V, za = model(x, s)
    box_loss(V, za, box, TAU).backward()
    assert x.grad[0].abs().sum() > 0 and s.grad[0].abs().sum() > 0
    assert torch.count_nonzero(x.grad[1:]) == 0 and torch.count_nonzero(s.grad[1:]) == 0


# -- which frame --------------------------------------------------------------------------------
def test_frames_moments_picks_exactly_the_moments_frames_and_counts_the_fallback(clips: Path) -> None:
    records = [ClipRecord(f"clip{k}", clips / f"clip{k}.mp4", 0) for k in range(3)]
    choice = FrameChoice("moments", {"clip0": 3, "clip1": 17})  # clip2 is missing: its middle frame (10)
    choice.count([r.clip_id for r in records])
    assert (choice.from_moments, choice.mid_fallback) == (2, 1)
    data = FrameDataset(records, ["x"], CONFIG, choice)
    family, length = FAMILIES["ezvsl"], int(EZVSL_AUDIO_SECONDS * SAMPLE_RATE)
    for rec, t in zip(records, (3, 17, 10)):
        item = data[records.index(rec)]
        clip = load_clip(rec.path, size=CONFIG.image_size)
        np.testing.assert_array_equal(item["frame"].numpy(), family.normalise(clip.frames[t][None])[:, 0])
        assert abs(float(clip.frames[t].mean()) - (10 + 12 * t)) < 4  # the frame is frame t of the file
        centred = audio_window(clip.audio, t * SAMPLES_PER_STEP - length // 2, length)
        np.testing.assert_array_equal(item["spec"][0].numpy(), log_spectrogram(centred))
    mid = FrameDataset(records, ["x"], CONFIG, FrameChoice("mid"))[0]  # clip0 at its middle frame, not its moment 3
    np.testing.assert_array_equal(mid["frame"].numpy(),
                                  family.normalise(load_clip(records[0].path, size=96).frames[10][None])[:, 0])


def test_the_cache_keeps_one_frame_per_clip_not_the_decoded_clip(clips: Path) -> None:
    """`--cache` keeps the chosen frame and its spectrogram: each owns its memory, so the clip
    decoded to find it is freed (a view would keep every frame of every clip in memory)."""
    data = FrameDataset([ClipRecord("clip0", clips / "clip0.mp4", 0)], ["x"], CONFIG, FrameChoice("mid"))
    data.keep_decoded()
    first = data[0]
    frame, spec = data._decoded[0]
    assert frame.base is None and frame.nbytes == CONFIG.image_size ** 2 * 3 and spec.base is None
    np.testing.assert_array_equal(data[0]["frame"].numpy(), first["frame"].numpy())


def test_a_moment_past_the_clip_is_skipped_with_its_reason(clips: Path) -> None:
    data = FrameDataset([ClipRecord("clip0", clips / "clip0.mp4", 0)], ["x"], CONFIG, FrameChoice("moments", {"clip0": 25}))
    skipped = data[0]
    assert "moment frame 25" in skipped.reason and "last frame (19)" in skipped.reason
    batch = collate_frames([skipped])
    assert batch["skipped"] == [("clip0", skipped.reason)] and "frame" not in batch


def test_a_broken_file_is_skipped_with_the_classifier_datasets_reason(clips: Path, tmp_path: Path) -> None:
    """Both training datasets skip a bad file through one function: the student's reason is the
    classifier's, one line, and the batch goes on without it."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes((clips / "clip0.mp4").read_bytes()[:2000])  # a cut-off download
    records = [ClipRecord("broken", broken, 0), ClipRecord("clip1", clips / "clip1.mp4", 0)]
    student = FrameDataset(records, ["x"], CONFIG, FrameChoice("mid"))
    skipped = student[0]
    assert skipped == ClipDataset(records, ["x"], CONFIG)[0] and skipped.clip_id == "broken"
    assert "broken.mp4" in skipped.reason and "\n" not in skipped.reason
    batch = collate_frames([skipped, student[1]])
    assert batch["skipped"] == [("broken", skipped.reason)] and batch["id"] == ["clip1"]


def test_cli_refusals_are_one_line(clips: Path, tmp_path: Path) -> None:
    moments = tmp_path / "moments.json"
    moments.write_text(json.dumps({"clip0": [{"time_s": 0.3, "frame": 3, "score": 1.0}]}))
    r = soundloc_cli("train", clips, "--out", tmp_path / "a", "--moments", moments)
    assert r.returncode != 0 and "--moments applies to --family ezvsl" in r.stderr
    r = soundloc_cli("train", clips, "--family", "ezvsl", "--out", tmp_path / "b", "--frames", "moments")
    assert r.returncode != 0 and "--frames moments needs --moments" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"clip0": [{"time_s": 0.3}]}))
    r = soundloc_cli("train", clips, "--family", "ezvsl", "--out", tmp_path / "c", "--moments", bad)
    assert r.returncode != 0 and "clip 'clip0'" in r.stderr and "Traceback" not in r.stderr


# -- a whole student: provenance, export --verify, stream -----------------------------------------
@pytest.fixture(scope="module")
def student(clips: Path, tmp_path_factory) -> dict:
    """`soundloc train --family ezvsl` with moments (one clip missing), boxes for two clips (one
    entry with an empty bbox) and a teacher file, then `soundloc export --verify`."""
    root = tmp_path_factory.mktemp("student_run")
    moments = root / "moments.json"
    moments.write_text(json.dumps({f"clip{k}": [{"time_s": 0.1 * (4 + k), "frame": 4 + k, "score": 0.5}]
                                   for k in range(5)}))  # clip5 missing
    boxes = root / "pseudo.json"
    boxes.write_text(json.dumps([{"file": "clip0", "class": "x", "bbox": [[0.1, 0.1, 0.5, 0.6]]},
                                 {"file": "clip3", "class": "x", "bbox": [[0.4, 0.2, 0.9, 0.9]]},
                                 {"file": "clip4", "class": "x", "bbox": []}]))
    teacher = root / "teacher.pt"
    teacher.write_bytes(b"any teacher checkpoint: recorded by its hash")
    r = soundloc_cli("train", clips, "--family", "ezvsl", "--out", root / "run", "--preset", "tiny",
                     "--set", "image_size=96", "--epochs", "2", "--batch-size", "3", "--workers", "0",
                     "--moments", moments, "--boxes", boxes, "--teacher", teacher, "--lr", "1e-3")
    assert r.returncode == 0, r.stderr
    e = soundloc_cli("export", root / "run" / "last.pt", "--out", root / "export", "--verify")
    assert e.returncode == 0, e.stderr
    return {"root": root, "out": r.stdout, "moments": moments, "boxes": boxes, "teacher": teacher}


def test_provenance_in_checkpoint_and_export_manifest(student: dict) -> None:
    root = student["root"]
    assert "6 training clips (5 at the teacher's top-1 moment, 1 missing from --moments at their middle frame); " \
           "2 with a box" in student["out"]
    p = read_checkpoint(root / "run" / "last.pt")["provenance"]
    assert p["teacher"] == {"file": "teacher.pt", "sha256": sha256_file(student["teacher"])}
    assert p["moments"] == {"file": "moments.json", "sha256": sha256_file(student["moments"])}
    assert p["boxes"] == {"file": "pseudo.json", "sha256": sha256_file(student["boxes"])}
    assert (p["frames"], p["clips"], p["clips_with_box"]) == ("moments", 6, 2)
    assert (p["frames_from_moments"], p["frames_mid_fallback"], p["init"]) == (5, 1, None)
    assert read_checkpoint(root / "run" / "best.pt")["provenance"] == p
    manifest = json.loads((root / "export" / "soundloc.json").read_text())
    assert manifest["checkpoint"]["provenance"] == p
    assert manifest["config"]["family"] == "ezvsl" and manifest["config"]["width"] == 0.0625
    assert manifest["verify"]["ok"] and manifest["verify"]["failures"] == []


def test_trained_student_streams(student: dict, clips: Path, tmp_path: Path) -> None:
    root = student["root"]
    r = soundloc_cli("stream", root / "export", "--video", clips / "clip1.mp4", "--out", tmp_path / "o.mp4",
                     "--events", tmp_path / "ev.jsonl", "--gate-db", "-200")
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines() if x.strip()]
    assert len(events) == 20 and all("peak" in e for e in events)  # one per frame of the 2 s clip
    assert load_clip(tmp_path / "o.mp4").frames.shape[0] >= 15  # a playable mp4 came out


# -- fine-tuning an imported checkpoint ------------------------------------------------------------
@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Iterator[Path]:
    from test_ezvsl import ezvsl_state, save_ezvsl

    root = tmp_path_factory.mktemp("imported")
    save_ezvsl(root / "best.pth", ezvsl_state("module.", seed=3))
    r = soundloc_cli("import", "ezvsl", root / "best.pth", "--out", root / "ezvsl.pt")
    assert r.returncode == 0, r.stderr
    yield root / "ezvsl.pt"
    shutil.rmtree(root, ignore_errors=True)  # a full-size checkpoint: freed when the module ends


def test_finetuning_starts_from_the_imported_weights(imported: Path, clips: Path) -> None:
    torch.manual_seed(0)
    saved, _ = load_checkpoint(imported)
    config = saved.config.replace(contrastive_temperature=TAU)
    state = build_state(config, TrainOptions(lr=1e-4, schedule="cosine", progress=False), DistInfo(),
                        torch.device("cpu"), init=imported)
    for k, v in saved.state_dict().items():
        assert torch.equal(state.module.state_dict()[k], v), k
    records = [ClipRecord(f"clip{k}", clips / f"clip{k}.mp4", k % 2) for k in range(4)]
    batch = collate_frames([FrameDataset(records, ["a", "b"], config, FrameChoice("mid"))[i] for i in range(4)])
    state.model.train()
    first, _, _ = forward_backward(state, batch)
    reference = saved.train()  # the imported model itself, in training mode (batch statistics) as a step runs
    with torch.no_grad():
        want = float(mil_contrastive_loss(*reference(batch["frame"], batch["spec"]), TAU))
    assert first == pytest.approx(want, rel=1e-5)


def test_finetune_cli_on_unlabeled_footage_records_the_init_and_exports(imported: Path, clips: Path,
                                                                          tmp_path: Path) -> None:
    r = soundloc_cli("train", clips, "--family", "ezvsl", "--init", imported, "--out", tmp_path / "ft",
                     "--epochs", "1", "--batch-size", "3", "--workers", "0")
    assert r.returncode == 0, r.stderr
    data = read_checkpoint(tmp_path / "ft" / "last.pt")
    init = data["provenance"]["init"]
    assert init["sha256"] == sha256_file(imported) and init["imported"]["family"] == "ezvsl"
    assert data["config"]["width"] == 1.0 and data["config"]["contrastive_temperature"] == TAU
    before = read_checkpoint(imported)["model"]
    assert any(not torch.equal(before[k], v) for k, v in data["model"].items() if k.startswith("aud_proj"))
    e = soundloc_cli("export", tmp_path / "ft" / "last.pt", "--out", tmp_path / "export", "--verify")
    assert e.returncode == 0, e.stderr
    assert json.loads((tmp_path / "export" / "soundloc.json").read_text())["checkpoint"]["provenance"]["init"] == init
    # a resume names no --init, and the run's record of where it started carries on
    r = soundloc_cli("train", clips, "--out", tmp_path / "ft", "--resume", "--epochs", "2", "--batch-size", "3",
                     "--workers", "0")
    assert r.returncode == 0, r.stderr
    resumed = read_checkpoint(tmp_path / "ft" / "last.pt")
    assert resumed["epoch"] == 2 and resumed["provenance"] == data["provenance"]


# -- kill -9, then --resume ----------------------------------------------------------------------------
SLOW_CLI = '''
import sys, time
from soundloc.train import frames
slow = float(sys.argv[1])
plain = frames.FrameDataset.__getitem__
def getitem(self, i):
    time.sleep(slow)  # a slow disk: so that a kill lands inside an epoch
    return plain(self, i)
frames.FrameDataset.__getitem__ = getitem
from soundloc.cli import app
sys.argv = ["soundloc", *sys.argv[2:]]
app()
'''


def test_sigkill_then_resume_continues_the_same_run(clips: Path, tmp_path: Path) -> None:
    script = tmp_path / "slow_cli.py"
    script.write_text(textwrap.dedent(SLOW_CLI))
    args = ["train", str(clips), "--family", "ezvsl", "--preset", "tiny", "--set", "image_size=96", "--epochs", "3",
            "--batch-size", "2", "--workers", "0", "--lr", "1e-3", "--flip"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), "0.4", *args, "--out", str(out)], stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 600  # a hang guard only
    while not ((out / "log.jsonl").is_file() and (out / "log.jsonl").read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.05)
    time.sleep(0.8)  # an epoch reads 6 clips at >= 0.4 s each: we are inside epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    done = subprocess.run([sys.executable, str(script), "0", *args, "--resume", "--out", str(out)],
                          capture_output=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    whole = subprocess.run([sys.executable, str(script), "0", *args, "--out", str(tmp_path / "whole")],
                           capture_output=True, timeout=600, env=env)
    assert whole.returncode == 0, whole.stderr.decode()[-2000:]
    resumed, uninterrupted = read_checkpoint(out / "last.pt"), read_checkpoint(tmp_path / "whole" / "last.pt")
    assert resumed["epoch"] == uninterrupted["epoch"] == 3
    assert [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    for k, v in uninterrupted["model"].items():  # the same run: bit for bit what it would have been
        assert torch.equal(resumed["model"][k], v), k
    assert resumed["provenance"] == uninterrupted["provenance"]


# -- two gloo ranks ---------------------------------------------------------------------------------
class RandomFrames(torch.utils.data.Dataset):
    """Items shaped like FrameDataset's: frame, spec, box (clip 0 has one), label, id."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        box = torch.zeros(3, 3)
        if i == 0:
            box[1, 1] = 1.0
        return {"frame": torch.randn(3, 96, 96, generator=g), "spec": torch.randn(1, 257, 200, generator=g),
                "box": box, "label": i % 2, "id": f"c{i}"}


def _ddp_fit_worker(rank: int, world: int, port: int, out: str) -> None:
    from soundloc.train import fit

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    result = fit(CONFIG, RandomFrames(7), RandomFrames(4), out,
                 TrainOptions(epochs=2, batch_size=2, workers=0, progress=False, schedule="cosine", lr=1e-3),
                 collate_fn=collate_frames, provenance={"frames": "mid", "clips_with_box": 1})
    Path(out, f"result{rank}.json").write_text(json.dumps(result.to_dict()))


def test_ezvsl_trains_under_two_gloo_ranks(tmp_path: Path) -> None:
    """torchrun's environment, 2 CPU ranks: one log line per epoch from rank 0, clips summed over
    ranks (7 padded to 8), the box term reported, a checkpoint without DDP's prefixes."""
    import socket

    mp = pytest.importorskip("torch.multiprocessing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_fit_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(r["world_size"] == 2 and r["train"]["clips"] == 8 and r["val"]["clips"] == 4 for r in lines)
    assert all("contrastive" in r["train"]["loss_parts"] and "box" in r["train"]["loss_parts"] for r in lines)
    r0, r1 = (json.loads((tmp_path / f"result{i}.json").read_text()) for i in (0, 1))
    assert r0["train_loss"] == r1["train_loss"] and r0["provenance"] == {"frames": "mid", "clips_with_box": 1}
    data = read_checkpoint(tmp_path / "last.pt")
    assert data["epoch"] == 2 and not any(k.startswith("module.") for k in data["model"])
    assert data["provenance"] == {"frames": "mid", "clips_with_box": 1}
