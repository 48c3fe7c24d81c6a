"""score_maps, the maps file, the JSON writer and the `soundloc eval` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundloc import evaluate
from soundloc.data.annotations import Annotation, Annotations
from soundloc.evaluate import EvalError

# clip a: GT = top quarter (rows 0..55); clip b: GT = left half; clip e: empty GT
GT = Annotations("vggss", {
    "a": Annotation("a", ((0.0, 0.0, 1.0, 0.25),)),
    "b": Annotation("b", ((0.0, 0.0, 0.5, 1.0),)),
    "e": Annotation("e", (), n_corrupt=1, n_dropped=1),
})


def _top_quarter_map() -> np.ndarray:
    m = np.zeros((224, 224))
    m[:56] = 1.0
    m[56:168] = 0.5
    return m


def test_score_maps_counts_and_values():
    maps = {"a": _top_quarter_map(), "e": np.ones((7, 7)), "zz": np.ones((3, 3))}
    r = evaluate.score_maps(maps, GT, "lvs", source="test")
    assert [c.id for c in r.records] == ["a", "e"]
    a, e = r.records
    assert a.ciou == 1.0 and a.pointing and a.pred_pixels == 12544 and a.gt_pixels == 12544
    assert e.ciou == 0.0 and not e.pointing and e.empty_gt
    assert (r.n_missing, r.missing_ids, r.n_unannotated, r.n_empty_gt, r.n_corrupt_boxes) == (1, ("b",), 1, 1, 1)
    assert r.summary["ap50"] == 0.5 and r.summary["mean_ciou"] == 0.5 and r.summary["n"] == 2
    ez = evaluate.score_maps(maps, GT, "ezvsl")
    assert ez.records[0].ciou == pytest.approx(1 / 3) and ez.protocol == "ezvsl"


def test_score_maps_flickr_uses_consensus():
    gt = Annotations("flickr", {"f": Annotation("f", ((0.0, 0.0, 0.5, 0.5),), annotators=(0,))})
    m = np.zeros((224, 224))
    m[:112, :112] = 1
    r = evaluate.score_maps({"f": m}, gt)
    # one annotator: G = 0.5 on the box, so overlap 0.5 * 12544 over |G| = 6272 + 0 outside
    assert r.records[0].ciou == pytest.approx(1.0) and r.records[0].gt_pixels == 6272


def test_score_maps_non_finite_counted():
    m = _top_quarter_map()
    m[100, 100] = np.nan
    r = evaluate.score_maps({"a": m}, GT)
    assert r.n_non_finite == 1 and r.records[0].ciou == 1.0


def test_score_maps_nothing_in_common_and_bad_map():
    with pytest.raises(EvalError, match="none of the 3"):
        evaluate.score_maps({"x": np.ones((7, 7))}, GT)
    with pytest.raises(EvalError, match="clip 'a'"):
        evaluate.score_maps({"a": np.ones((2, 7, 7))}, GT)
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate.score_maps({"a": np.ones((7, 7))}, GT, "ezsvl")


def test_center_baseline():
    r = evaluate.score_maps(evaluate.baseline_maps("center", GT), GT)
    assert r.n_missing == 0 and r.records[0].pred_pixels > 0
    assert r.records[1].pointing and not r.records[0].pointing  # centre is inside the left half, not the top quarter
    with pytest.raises(EvalError, match="unknown baseline"):
        evaluate.baseline_maps("random", GT)


def test_load_maps_npz(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, a=np.ones((7, 7), np.float32), b=np.zeros((20, 30)))
    maps = evaluate.load_maps_npz(p)
    assert set(maps) == {"a", "b"} and maps["b"].shape == (20, 30)
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(EvalError, match="cannot read"):
        evaluate.load_maps_npz(tmp_path / "obj.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(EvalError, match="bad.npz"):
        evaluate.load_maps_npz(tmp_path / "bad.npz")
    np.save(tmp_path / "one.npy", np.ones((7, 7)))
    with pytest.raises(EvalError, match="single array"):
        evaluate.load_maps_npz(tmp_path / "one.npy")


def test_write_json_atomic(tmp_path):
    r = evaluate.score_maps({"a": _top_quarter_map()}, GT)
    out = tmp_path / "r.json"
    out.write_text("old")
    evaluate.write_json(r, out)
    d = json.loads(out.read_text())
    assert d["protocol"] == "lvs" and d["summary"]["ap50"] == 1.0 and d["counts"]["missing_maps"] == 2
    assert d["clips"][0]["id"] == "a" and d["clips"][0]["ciou"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left behind


# -- CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def cli_inputs(tmp_path: Path) -> tuple[Path, Path]:
    ann = tmp_path / "ss.json"
    ann.write_text(json.dumps([
        {"file": "a_000001", "class": "dog", "bbox": [[0.0, 0.0, 1.0, 0.25]]},
        {"file": "b_000002", "class": "cat", "bbox": [[0.0, 0.0, 0.5, 1.0], [0.1, 0.1, -2.9e16, 0.4]]},
    ]))
    maps = tmp_path / "maps.npz"
    left = np.zeros((7, 7))
    left[:, :3] = 1.0
    np.savez(maps, a_000001=_top_quarter_map(), b_000002=left)
    return ann, maps


def _invoke(args: list[str]):
    from typer.testing import CliRunner

    from soundloc.cli import app

    return CliRunner().invoke(app, args)


def test_cli_eval_writes_json_and_curve(cli_inputs, tmp_path):
    ann, maps = cli_inputs
    res = _invoke(["eval", "--maps", str(maps), "--annotations", str(ann), "--json", str(tmp_path / "o.json"),
                   "--curve", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert "protocol lvs" in res.output and "corrupt boxes" in res.output
    d = json.loads((tmp_path / "o.json").read_text())
    assert d["protocol"] == "lvs" and d["counts"]["corrupt_boxes"] == 1 and d["summary"]["n"] == 2
    assert d["clips"][0]["ciou"] == 1.0
    assert 0.0 < d["clips"][1]["ciou"] < 1.0 and d["clips"][1]["pointing"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_eval_ids_without_annotation_reported(cli_inputs, tmp_path):
    ann, maps = cli_inputs
    ids = tmp_path / "ids.csv"
    ids.write_text("a_000001,1\nzz_000009,2\n")
    res = _invoke(["eval", "--maps", str(maps), "--annotations", str(ann), "--ids", str(ids), "--json",
                   str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "o.json").read_text())
    assert d["summary"]["n"] == 1 and d["counts"]["ids_without_annotation"] == 1
    assert "1 requested ids without annotation" in res.output


@pytest.mark.parametrize("extra, why", [
    (["--protocol", "cv2"], "unknown protocol 'cv2'"),
    (["--baseline", "center"], "exactly one source"),
    (["--ids", "/nonexistent/ids.csv"], "cannot read"),
])
def test_cli_eval_bad_input_one_line_exit_2(cli_inputs, extra, why):
    ann, maps = cli_inputs
    res = _invoke(["eval", "--maps", str(maps), "--annotations", str(ann), *extra])
    assert res.exit_code == 2 and why in res.output
    assert "Traceback" not in res.output and res.output.strip().count("\n") == 0


def test_cli_eval_missing_annotations(cli_inputs, tmp_path):
    _, maps = cli_inputs
    res = _invoke(["eval", "--maps", str(maps), "--annotations", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and "no such annotation file" in res.output


def test_cli_eval_checkpoint_seam(cli_inputs, tmp_path, monkeypatch):
    ann, _ = cli_inputs
    calls = []

    inference = pytest.importorskip("soundloc.model.inference", reason="torch (the train extra) not installed")

    from soundloc.dependence import audio_dependence

    def fake(ckpt, videos, ids, baseline=None, labels=None, preprocess=None, windows=None):
        calls.append((ckpt, videos, ids))
        own = [np.eye(7) for _ in ids]
        return {i: np.ones((7, 7)) for i in ids}, inference.Skipped(), audio_dependence(own, own)

    monkeypatch.setattr(inference, "maps_from_checkpoint", fake)
    res = _invoke(["eval", str(tmp_path / "m.pt"), "--videos", str(tmp_path), "--annotations", str(ann)])
    assert res.exit_code == 0, res.output
    assert calls == [(tmp_path / "m.pt", tmp_path, ("a_000001", "b_000002"))]
    assert "median map change 0.000" in res.output and "barely depend on the audio" in res.output
    res = _invoke(["eval", str(tmp_path / "m.pt"), "--annotations", str(ann)])
    assert res.exit_code == 2 and "--videos" in res.output


def _reference_ciou(heatmap: np.ndarray, boxes: list, protocol: str) -> float:
    """The reference evaluation loops (LVS test.py / EZ-VSL test.py), transcribed with torch."""
    import torch

    h = torch.nn.functional.interpolate(torch.from_numpy(heatmap)[None, None], size=(224, 224), mode="bilinear",
                                        align_corners=protocol == "ezvsl")[0, 0].numpy()
    gt = np.zeros((224, 224))
    for box in boxes:
        x0, y0, x1, y1 = (int(224 * min(max(v, 0), 1)) for v in box)
        gt[y0:y1, x0:x1] = 1
    pred = (h - h.min()) / (h.max() - h.min())
    thr = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] / 2)]
    if protocol == "lvs":
        pred[pred > thr] = 1
        pred[pred < 1] = 0
        infer = (pred >= 0.5).astype(float)
    else:
        infer = (pred >= thr).astype(float)
    return float(np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0))))


@pytest.mark.parametrize("protocol", ["lvs", "ezvsl"])
def test_matches_reference_loop_on_real_vggss(shared_dir, protocol):
    pytest.importorskip("torch")
    from soundloc.data.annotations import read_vggss

    raw = {e["file"]: e["bbox"] for e in json.loads((shared_dir / "data" / "vggss" / "vggss.json").read_text())}
    gt = read_vggss(shared_dir / "data" / "vggss" / "vggss.json")
    ids = list(gt.ids[:60]) + list(gt.corrupt_ids)
    rng = np.random.default_rng(3)
    maps = {i: rng.random((7, 7)) for i in ids}
    r = evaluate.score_maps(maps, gt.subset(ids), protocol)
    assert [c.ciou for c in r.records] == pytest.approx([_reference_ciou(maps[i], raw[i], protocol) for i in ids], abs=1e-12)


def test_eval_confidence_scores_clips_without_a_box_as_slavc_does(tmp_path) -> None:
    """`soundloc eval --maps --confidence top25` on constructed maps: clips with an empty bbox
    have no visible source; the extended metrics equal SLAVC's rule (transcribed in
    test_metrics) on the same per-clip cIoUs and top-quarter confidences."""
    from test_metrics import _slavc_ap, _slavc_f1s, _slavc_precision_recall

    rng = np.random.default_rng(5)
    entries, maps = [], {}
    for k in range(24):
        cid = f"c{k:02d}_000000"
        x0, y0 = rng.uniform(0, 0.5, 2)
        entries.append({"file": cid, "class": "dog", "bbox": [] if k % 3 == 0 else [[x0, y0, x0 + 0.4, y0 + 0.4]]})
        maps[cid] = rng.normal(size=(7, 7))
    ann, npz, out = tmp_path / "ss.json", tmp_path / "maps.npz", tmp_path / "r.json"
    ann.write_text(json.dumps(entries))
    np.savez(npz, **maps)
    res = _invoke(["eval", "--maps", str(npz), "--annotations", str(ann), "--confidence", "top25", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "extended (top25 confidence; 16 visible, 8 without a visible source)" in " ".join(res.output.split())
    r = json.loads(out.read_text())
    by_id = {c["id"]: c["ciou"] for c in r["clips"]}
    boxes = [len(e["bbox"]) for e in entries]
    cious = [by_id[e["file"]] for e in entries]
    conf = [np.sort(maps[e["file"]].flatten())[-49 // 4:].mean() for e in entries]  # SLAVC's statistic
    ext = r["extended"]
    assert ext["ap"] == pytest.approx(_slavc_ap(boxes, cious, conf), abs=1e-12)
    assert ext["max_f1"] == pytest.approx(max(_slavc_f1s(boxes, cious, conf)), abs=1e-12)
    assert ext["precision"] == _slavc_precision_recall(boxes, cious, conf, -1000)[0]
    res = _invoke(["eval", "--maps", str(npz), "--annotations", str(ann), "--confidence", "score"])
    assert res.exit_code != 0 and "needs a checkpoint" in res.output


def test_eval_calibrated_confidence_is_the_exports_rule_on_each_clip(tmp_path) -> None:
    """`--confidence calibrated` scores a clip with the export's stored rule on its map and the
    window's S_av (what a stream draws by); without --calibration or a checkpoint: one line."""
    from soundloc.visibility import FEATURES, Visibility, map_features

    rng = np.random.default_rng(8)
    maps = {f"c{k}": rng.normal(size=(7, 7)) for k in range(6)}
    windows = {k: {"score": float(rng.normal())} for k in maps}
    rule = Visibility("combined", -1.0, 2.0, 0.5, centre=(0.1,) * len(FEATURES), scale=(2.0,) * len(FEATURES),
                      weights=tuple(rng.normal(size=len(FEATURES))), bias=-0.2)
    conf = evaluate.clip_confidences("calibrated", maps, windows, rule)
    for k, m in maps.items():
        logit = float((map_features(m, windows[k]["score"]) - 0.1) / 2.0 @ np.array(rule.weights) - 0.2)
        assert conf[k] == pytest.approx(min(max((logit + 1.0) / 3.0, 0.0), 1.0), abs=1e-12)
    with pytest.raises(evaluate.EvalError, match="--calibration"):
        evaluate.clip_confidences("calibrated", maps, windows, None)
    with pytest.raises(evaluate.EvalError, match="needs a checkpoint"):
        evaluate.clip_confidences("calibrated", maps, None, rule)
    export = tmp_path / "export"
    export.mkdir()
    (export / "soundloc.json").write_text(json.dumps({"format": 1}))
    ann, npz = tmp_path / "ss.json", tmp_path / "maps.npz"
    ann.write_text(json.dumps([{"file": k, "class": "dog", "bbox": [[0.1, 0.1, 0.5, 0.5]]} for k in maps]))
    np.savez(npz, **maps)
    res = _invoke(["eval", "--maps", str(npz), "--annotations", str(ann), "--confidence", "calibrated",
                   "--calibration", str(export)])
    assert res.exit_code != 0 and "not calibrated" in " ".join(res.output.split())
