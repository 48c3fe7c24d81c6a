"""Training loop: a tiny run, exact resume, SIGKILL mid-epoch, skipped clips, config mismatch.

Models use the ``tiny`` preset at 32x32 pixels and 0.4 s clips (4 steps) so an epoch takes
about a second on 2 cores; the datasets are random tensors shaped like the real dataset's items.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")

from soundloc.config import preset  # noqa: E402
from soundloc.model.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from soundloc.train import TrainError, TrainOptions, fit  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CONFIG = preset("tiny", num_classes=3, clip_seconds=0.4, image_size=32, class_names=("a", "b", "c"))
FAST = dict(batch_size=4, workers=0, progress=False)

DATASET_SOURCE = '''
import time
import torch
from soundloc.train.datasets import SkippedClip, collate

class RandomClips(torch.utils.data.Dataset):
    """Items like the real dataset's: video (3, T, S, S), mel (1, 10T, 80), label, id; the
    label shifts both inputs so the task is learnable. ``broken`` ids come back as markers."""

    def __init__(self, n, config, seed=0, sleep=0.0, broken=()):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, config.num_classes, (n,), generator=g).tolist()
        self.config, self.seed, self.sleep, self.broken = config, seed, sleep, set(broken)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        time.sleep(self.sleep)
        if i in self.broken:
            return SkippedClip(f"c{i}", "truncated file")
        g = torch.Generator().manual_seed(1000 * self.seed + i)
        t, s, y = self.config.clip_steps, self.config.image_size, self.labels[i]
        return {"video": torch.randn(3, t, s, s, generator=g) + 0.5 * y,
                "mel": torch.randn(1, 10 * t, 80, generator=g) - 0.5 * y, "label": y, "id": f"c{i}"}

'''
_ns: dict = {}
exec(compile(DATASET_SOURCE, "random_clips", "exec"), _ns)
RandomClips, collate = _ns["RandomClips"], _ns["collate"]  # the real collate


def run(out: Path, epochs: int, resume: bool = False, **kw) -> "object":
    train_set = RandomClips(kw.pop("n", 12), CONFIG, broken=kw.pop("broken", ()))
    init_video = kw.pop("init_video", None)
    options = TrainOptions(epochs=epochs, **{**FAST, **kw})
    return fit(CONFIG, train_set, RandomClips(6, CONFIG, seed=1), out, options, resume=resume,
               init_video=init_video, collate_fn=collate)


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_tiny_run_logs_heads_and_writes_loadable_checkpoints(tmp_path: Path) -> None:
    result = run(tmp_path, epochs=2)
    lines = log_lines(tmp_path)
    assert [r["epoch"] for r in lines] == [1, 2] and result.epochs == 2
    for r in lines:
        assert r["train"]["loss"] == pytest.approx(sum(r["train"]["loss_parts"].values()))
        assert 0 < r["train"]["loss"] < 100 and r["train"]["clips"] == 12 and r["val"]["clips"] == 6
        assert set(r["val"]["accuracy"]) == {"vision", "audio", "av"}
        assert all(0.0 <= a <= 1.0 for a in r["val"]["accuracy"].values())
        assert r["monitor"] == "val_accuracy_av" and r["lr"] == pytest.approx(1e-2)
    model, data = load_checkpoint(tmp_path / "last.pt")
    assert model.config == CONFIG and model.config.class_names == ("a", "b", "c")
    assert data["epoch"] == 2 and data["optimizer"]["state"], "momentum buffers saved"
    sched = data["scheduler"]
    assert (sched["mode"], sched["factor"], sched["patience"], sched["last_epoch"]) == ("max", 0.1, 3, 2)
    assert sched["best"] == max(r["val"]["accuracy"]["av"] for r in lines) == data["best_accuracy"]
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == data["best_epoch"]


def test_resume_continues_epochs_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    run(tmp_path / "straight", epochs=2)
    run(tmp_path / "split", epochs=1)
    first = read_checkpoint(tmp_path / "split" / "last.pt")
    result = run(tmp_path / "split", epochs=2, resume=True)
    assert (result.resumed_from, result.epochs) == (1, 2)
    assert [r["epoch"] for r in log_lines(tmp_path / "split")] == [1, 2]
    a, b = (read_checkpoint(tmp_path / d / "last.pt") for d in ("straight", "split"))
    for k in a["model"]:  # same data order, RNG and optimizer momentum: bit-identical weights
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
        assert not torch.equal(s["momentum_buffer"], first["optimizer"]["state"][i]["momentum_buffer"])


def test_resume_refuses_another_config_and_fresh_run_refuses_to_overwrite(tmp_path: Path) -> None:
    run(tmp_path, epochs=1)
    other = CONFIG.replace(width=0.125)
    with pytest.raises(TrainError, match=r"another config: width=0\.0625 \(asked 0\.125\)") as e:
        fit(other, RandomClips(4, other), None, tmp_path, TrainOptions(epochs=2, **FAST), resume=True)
    assert "\n" not in str(e.value)
    with pytest.raises(TrainError, match="pass --resume"):
        run(tmp_path, epochs=2)
    with pytest.raises(TrainError, match="nothing to resume"):
        run(tmp_path / "empty", epochs=2, resume=True)


def test_broken_clips_are_skipped_counted_and_logged(tmp_path: Path) -> None:
    # 10 of 12 broken in batches of 4: at least one batch has no readable clip at all
    result = run(tmp_path, epochs=1, n=12, broken=set(range(10)))
    (line,) = log_lines(tmp_path)
    assert line["skipped"]["count"] == result.skipped == 10
    assert {x["reason"] for x in line["skipped"]["first"]} == {"truncated file"}
    assert sorted(x["id"] for x in line["skipped"]["first"]) == sorted(f"c{i}" for i in range(10))
    assert line["skip_report"].startswith("10 clips skipped:")
    assert line["train"]["clips"] == 2 and line["val"]["clips"] == 6


SCRIPT = DATASET_SOURCE + '''
import sys
from soundloc.config import preset
from soundloc.train import TrainOptions, fit
torch.set_num_threads(1)
config = preset("tiny", num_classes=3, clip_seconds=0.4, image_size=32, class_names=("a", "b", "c"))
fit(config, RandomClips(16, config, sleep=float(sys.argv[2])), RandomClips(4, config, seed=1), sys.argv[1],
    TrainOptions(epochs=3, batch_size=2, workers=0, progress=False), resume=sys.argv[3] == "resume", collate_fn=collate)
'''


def test_sigkill_mid_epoch_then_resume_completes(tmp_path: Path) -> None:
    script, out = tmp_path / "train_script.py", tmp_path / "run"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), str(out), "0.15", "fresh"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # a hang guard only: importing torch alone took > 60 s under load
    while not ((out / "log.jsonl").is_file() and (out / "log.jsonl").read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.05)
    time.sleep(1.0)  # an epoch takes > 2.4 s (16 clips x 0.15 s): we are inside epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    model, data = load_checkpoint(out / "last.pt")  # the last complete epoch, intact
    assert data["epoch"] == 1
    (out / ".last.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")  # as if killed mid-write
    done = subprocess.run([sys.executable, str(script), str(out), "0", "resume"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert read_checkpoint(out / "last.pt")["epoch"] == 3
    assert [r["epoch"] for r in log_lines(out)] == [1, 2, 3]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_full_disk_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tmp_path, epochs=1)
    before = (tmp_path / "last.pt").read_bytes()

    def no_space(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError, match="No space left"):
        run(tmp_path, epochs=2, resume=True)
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    assert [r["epoch"] for r in log_lines(tmp_path)] == [1]


def test_cli_trains_on_synthetic_videos_resumes_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from soundloc.cli import app
    from soundloc.data.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", num_clips=6, seconds=1.0, num_classes=2, val_fraction=0.34,
                           workers=1, size=64)
    (tmp_path / "data" / "videos" / sorted(os.listdir(tmp_path / "data" / "videos"))[0]).write_bytes(b"")
    out, summary = tmp_path / "run", tmp_path / "summary.json"
    base = ["train", str(tmp_path / "data"), "--out", str(out), "--workers", "0", "--batch-size", "2"]
    runner = CliRunner()
    r = runner.invoke(app, [*base, "--preset", "tiny", "--set", "clip_seconds=1", "--epochs", "1", "--json", str(summary)])
    assert r.exit_code == 0, r.output
    s = json.loads(summary.read_text())
    assert s["epochs"] == 1 and s["skipped"] == 1 and set(s["accuracy"]) == {"vision", "audio", "av"}
    (line,) = log_lines(out)
    assert line["skipped"]["count"] == 1 and line["skipped"]["first"][0]["id"] == "syn00000000_000181"
    model, _ = load_checkpoint(out / "last.pt")
    assert model.config.class_names == tuple(sorted(model.config.class_names)) and model.config.num_classes == 2
    r = runner.invoke(app, [*base, "--epochs", "2", "--resume"])  # no --preset: the checkpoint's config
    assert r.exit_code == 0, r.output
    assert [x["epoch"] for x in log_lines(out)] == [1, 2]
    r = runner.invoke(app, [*base, "--epochs", "3", "--resume", "--preset", "small"])
    assert r.exit_code == 2 and "another config: width=0.0625 (asked 0.125)" in r.output
    r = runner.invoke(app, [*base, "--set", "widht=1"])
    assert r.exit_code == 2 and "did you mean width?" in r.output


def test_init_video_loads_a_torchvision_style_state_dict(tmp_path: Path) -> None:
    from soundloc.model.classifier import AVClassifier
    from soundloc.train.distributed import DistInfo
    from soundloc.train import build_state

    donor = AVClassifier(CONFIG).video.state_dict()  # torchvision mc3_18 key names (stem.0, layer1...)
    torch.save({k: v + 1.0 if v.is_floating_point() else v for k, v in donor.items()}, tmp_path / "mc3.pth")
    state = build_state(CONFIG, TrainOptions(**FAST), DistInfo(), torch.device("cpu"), tmp_path / "mc3.pth")
    got = state.module.video.state_dict()
    assert all(torch.equal(got[k], donor[k] + 1.0) for k in donor if donor[k].is_floating_point())
    with pytest.raises(TrainError, match="--init-video starts a new run"):
        run(tmp_path / "x", epochs=1, resume=True, init_video=tmp_path / "mc3.pth")
