"""The paper end to end through the CLI: synth -> train -> eval -> moments -> annotate -> export."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch", reason="torch (the train extra) not installed")

from soundloc.cli import app  # noqa: E402


def _run(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, f"{args}: {res.output}"
    return res.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    _run(["synth", str(data), "--clips", "6", "--seconds", "2", "--classes", "3", "--val-fraction", "0.34",
          "--workers", "1", "--size", "96"])
    _run(["train", str(data), "--out", str(root / "run"), "--preset", "tiny", "--epochs", "1", "--batch-size", "2",
          "--workers", "0", "--json", str(root / "train.json")])
    return root, data


def test_training_outputs(trained):
    root, _ = trained
    summary = json.loads((root / "train.json").read_text())
    assert summary["epochs"] == 1 and (root / "run" / "last.pt").is_file()
    log = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    assert set(log[0]["val"]["accuracy"]) == {"vision", "audio", "av"}
    assert all(0 <= v <= 1 for v in log[0]["val"]["accuracy"].values())


def test_eval_paper_map_and_baselines(trained):
    root, data = trained
    ckpt = root / "run" / "last.pt"
    for extra, name in (([], "map"), (["--baseline", "shuffled"], "shuffled")):
        out = root / f"eval_{name}.json"
        _run(["eval", str(ckpt), "--videos", str(data), "--annotations", str(data / "vggss.json"),
              "--json", str(out), "--curve", str(root / f"{name}.png"), *extra])
        result = json.loads(out.read_text())
        s = result["summary"]
        assert s["n"] == 2 and 0 <= s["ap50"] <= 1 and 0 <= s["auc"] <= 1 and 0 <= s["mean_ciou"] <= 1
        assert (root / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "shuffled" in json.loads((root / "eval_shuffled.json").read_text())["source"]


def test_moments_and_annotate(trained):
    root, data = trained
    ckpt = root / "run" / "last.pt"
    _run(["moments", str(ckpt), str(data), "--top-k", "3", "--json", str(root / "moments.json")])
    moments = json.loads((root / "moments.json").read_text())
    assert len(moments) == 6
    for best in moments.values():
        frames = [m["frame"] for m in best]
        assert [m["time_s"] for m in best] == [f / 10 for f in frames]
        assert [m["score"] for m in best] == sorted((m["score"] for m in best), reverse=True)
        assert len(frames) == 3 and len(set(frames)) == 3 and all(0 <= f < 20 for f in frames)
    out = root / "boxes.json"
    _run(["annotate", str(ckpt), str(data), "--out", str(out)])
    entries = json.loads(out.read_text())
    assert len(entries) == 6
    for e in entries:
        assert {"file", "class", "bbox", "frame"} <= set(e) and e["class_source"] == "predicted"
        for box in e["bbox"]:
            assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
    # resumable: a second run keeps everything and adds nothing
    _run(["annotate", str(ckpt), str(data), "--out", str(out)])
    assert json.loads(out.read_text()) == entries


def test_export_and_stream_the_trained_model(trained):
    root, data = trained
    _run(["export", str(root / "run" / "last.pt"), "--out", str(root / "export"), "--verify",
          "--json", str(root / "export.json")])
    figures = json.loads((root / "export.json").read_text())
    assert figures["verify"]["ok"] and figures["verify"]["stream_vs_offline"]["alpha"] <= 1e-4
    clip = sorted((data / "videos").glob("*.mp4"))[0]
    _run(["stream", str(root / "export"), "--video", str(clip), "--out", str(root / "s.mp4"),
          "--events", str(root / "s.jsonl"), "--json", str(root / "s.json")])
    events = [json.loads(line) for line in (root / "s.jsonl").read_text().splitlines()]
    assert [e["index"] for e in events] == list(range(20))
