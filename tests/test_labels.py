"""What is sounding and whether its source is in view: the step graph's label outputs, the
in-view confidence and its calibration, and what a stream's events and overlay carry -- on a
default-recipe model (``default_run``), through the real commands, int8 and serve included."""

from __future__ import annotations

from collections import Counter

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from soundloc import visibility
from soundloc.labels import softmax, split_classes
from soundloc.visibility import Visibility, fit, top_quarter_mean

pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from conftest import soundloc_cli  # noqa: E402
from test_bad_inputs import assert_one_line_error  # noqa: E402


OLD_EXPORT = Path(__file__).parent / "fixtures" / "export_before_labels"


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the confidence on constructed maps ---------------------------------------------------------
def _slavc_confidence(heatmap: np.ndarray, tau: float) -> float:
    """SLAVC's test.py, transcribed: the map normalised over the fixed range [-1/tau, 1/tau],
    then the mean of its top quarter."""
    av_min, av_max = -1. / tau, 1. / tau
    scores_av = (heatmap - av_min) / (av_max - av_min)
    n = scores_av.size
    return np.sort(scores_av.flatten())[-n // 4:].mean()


@pytest.mark.parametrize("shape", [(7, 7), (14, 14), (224, 224), (5, 3)])
def test_confidence_equals_slavcs_on_constructed_maps(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    tau = 0.03
    for _ in range(5):
        m = rng.uniform(-1 / tau, 1 / tau, shape)
        cal = Visibility("top25", -1 / tau, 1 / tau, 0.5)
        assert cal.confidence(m, score=0.0) == pytest.approx(_slavc_confidence(m, tau), abs=1e-12)
        n = m.size
        assert top_quarter_mean(m) == pytest.approx(np.sort(m.flatten())[-n // 4:].mean(), abs=1e-12)


def test_calibration_keeps_the_false_alarm_rate_at_the_target() -> None:
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 400), rng.normal(2, 1, 300)
    v = fit("top25", pos, neg, target=0.1)
    conf_neg, conf_pos = v.normalise(neg), v.normalise(pos)
    assert np.mean(conf_neg >= v.threshold) <= 0.1 == v.target_false_alarm
    assert v.false_alarm == pytest.approx(np.mean(conf_neg >= v.threshold), abs=1e-4)
    assert v.recall == pytest.approx(np.mean(conf_pos >= v.threshold), abs=1e-4) and v.recall > 0.5
    lower = np.max(conf_neg[conf_neg < v.threshold])  # the next lower threshold lets more than 10 % through
    assert np.mean(conf_neg >= lower) > 0.1
    best, fits = visibility.calibrate({"top25": pos, "score": neg, "heard_seen": neg},
                                      {"top25": neg, "score": pos, "heard_seen": neg}, 0.1)
    assert best.statistic == "top25" and fits["score"].recall < best.recall  # the separating statistic wins
    assert Visibility.from_dict(json.loads(json.dumps(best.to_dict()))) == best


def test_map_features_and_the_combined_rule_on_constructed_maps() -> None:
    rng = np.random.default_rng(3)
    m = rng.normal(0, 1, (14, 14))
    flat = np.sort(m.ravel())
    f = visibility.map_features(m, 0.25)
    direct = {"top25": flat[-49:].mean(), "top10": flat[-19:].mean(), "bottom25": flat[:49].mean(),
              "max": m.max(), "mean": m.mean(), "std": m.std(), "score": 0.25}
    assert visibility.FEATURES == tuple(direct)
    assert f == pytest.approx([direct[k] for k in visibility.FEATURES], abs=1e-12)
    for shape in ((1, 1), (2, 1), (5, 3), (7, 7)):  # SLAVC's slice keeps ceil(n / 4) cells
        small = rng.normal(0, 1, shape)
        g = visibility.map_features(small, 0.0)
        assert g[0] == pytest.approx(top_quarter_mean(small), abs=1e-12)
        assert (g[4], g[5]) == pytest.approx((small.mean(), small.std()), abs=1e-12)
    centre, scale = tuple(rng.normal(0, 1, 7)), tuple(rng.uniform(0.5, 2, 7))
    weights = tuple(rng.normal(0, 1, 7))
    v = Visibility("combined", -2.0, 3.0, 0.4, centre=centre, scale=scale, weights=weights, bias=0.3)
    logit = sum(w * (direct[k] - c) / s for k, w, c, s in zip(visibility.FEATURES, weights, centre, scale)) + 0.3
    assert v.raw(m, 0.25) == pytest.approx(logit, abs=1e-12)
    assert v.confidence(m, 0.25) == pytest.approx(min(max((logit + 2.0) / 5.0, 0.0), 1.0), abs=1e-12)
    assert Visibility.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    with pytest.raises(ValueError, match="7 weights"):
        Visibility.from_dict({**v.to_dict(), "weights": [1.0, 2.0]})
    with pytest.raises(ValueError, match="fitted weights"):
        visibility.raw_statistic("combined", m, 0.25)


def _two_feature_windows(n_clips: int = 30, per_clip: int = 20, seed: int = 0):
    """Windows whose source is in view exactly when top25 + S_av > 0: neither alone separates."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n_clips * per_clip, len(visibility.FEATURES)))
    clip = np.repeat(np.arange(n_clips), per_clip)
    y = (x[:, 0] + x[:, 6] > 0).astype(float)
    return x, y, clip


def test_calibration_chooses_the_combined_rule_when_only_two_statistics_together_separate() -> None:
    x, y, clip = _two_feature_windows()
    pos, neg = y == 1, y == 0
    positives = {"top25": x[pos, 0], "score": x[pos, 6], "heard_seen": x[pos, 1], "features": x[pos]}
    negatives = {"top25": x[neg, 0], "score": x[neg, 6], "heard_seen": x[neg, 1], "features": x[neg]}
    best, fits = visibility.calibrate(positives, negatives, 0.1, groups=(clip[pos], clip[neg]))
    assert best.statistic == "combined" and set(fits) == set(visibility.STATISTICS)
    assert best.cv_recall > 0.9 > max(fits[n].cv_recall for n in ("top25", "score", "heard_seen"))
    assert best.false_alarm <= 0.1 and best.recall >= best.cv_recall - 0.05
    conf = best.normalise(best.logit(x))  # the stored rule gives what the calibration counted
    assert np.mean(conf[neg] >= best.threshold) == pytest.approx(best.false_alarm, abs=1e-4)
    assert np.mean(conf[pos] >= best.threshold) == pytest.approx(best.recall, abs=1e-4)
    w = dict(zip(visibility.FEATURES, best.weights))
    assert w["top25"] > 0 and w["score"] > 0 and abs(w["top25"] / w["score"] - 1) < 0.3  # the true rule's direction
    # without features (or clips) the combined rule is not a candidate
    _, singles = visibility.calibrate({k: v for k, v in positives.items() if k != "features"},
                                      {k: v for k, v in negatives.items() if k != "features"}, 0.1)
    assert "combined" not in singles


def test_cross_validated_logits_never_see_their_own_clip() -> None:
    x, y, clip = _two_feature_windows(n_clips=10)
    held = visibility.cross_validated_logits(x, y, clip, folds=5)
    flipped = y.copy()
    flipped[clip == 0] = 1 - flipped[clip == 0]  # clip 0's truth changes: only the other folds' logits may move
    again = visibility.cross_validated_logits(x, flipped, clip, folds=5)
    fold0 = np.isin(clip, np.unique(clip)[0::5])
    assert np.array_equal(held[fold0], again[fold0])
    assert not np.allclose(held[~fold0], again[~fold0])


def test_heard_seen_is_the_vision_heads_probability_of_the_heard_class() -> None:
    post = {"audio": np.array([0.1, 0.7, 0.2]), "vision": np.array([0.5, 0.3, 0.2]), "av": np.array([0.2, 0.6, 0.2])}
    assert visibility.heard_seen(post) == 0.3
    assert visibility.raw_statistic("heard_seen", np.zeros((7, 7)), 0.0, post) == 0.3
    assert visibility.heard_seen({"av": post["av"]}) == 0.0  # an av-only model has neither head


def test_class_list_option_reads_names_with_commas() -> None:
    assert split_classes('"red disc, hum",green disc hum') == ("red disc, hum", "green disc hum")
    assert split_classes(None) == () and split_classes("") == ()
    p = softmax(np.array([[1.0, 2.0, 3.0]]))
    assert p.sum() == pytest.approx(1.0) and p.argmax() == 2


# -- the default-recipe model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def negatives(tmp_path_factory, default_run) -> Path:
    """A negatives-profile set with the default run's 2 classes (the same synthetic names)."""
    from soundloc.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("negatives")
    make_synthetic_dataset(root / "data", num_clips=12, seed=7, seconds=2.0, num_classes=2, val_fraction=0.99,
                           workers=1, size=64, profile="negatives")
    return root / "data"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, default_run, negatives) -> Path:
    """The default run's export, calibrated with `soundloc calibrate` (a copy: the session's
    export stays as `soundloc export` wrote it)."""
    out = tmp_path_factory.mktemp("calibrated") / "export"
    shutil.copytree(default_run.export, out)
    r = soundloc_cli("calibrate", out, "--data", negatives, "--false-alarm", "0.2")
    assert r.returncode == 0, r.stderr
    assert "keeps" in r.stdout
    return out


def test_default_recipe_step_graph_gives_labels_that_verify_and_pass_the_tensorrt_check(default_run) -> None:
    from soundloc.deploy.trt_ops import check_tensorrt_compat
    from soundloc.export.verify import verify
    from soundloc.model.checkpoint import load_checkpoint
    from soundloc.runtime.bundle import read_bundle

    bundle = read_bundle(default_run.export)
    names = [o["name"] for o in bundle.graph("step")["outputs"]]
    assert {"logits_vision", "logits_audio", "logits_av"} <= set(names)  # tied-fc: every label head
    assert check_tensorrt_compat(onnx.load(str(bundle.path("step")))) == []
    assert bundle.config.class_names and len(bundle.config.class_names) == bundle.config.num_classes
    model, _ = load_checkpoint(default_run.ckpt)
    report = verify(bundle, model, steps=60)
    assert report.ok, report.failures
    for key in ("logits_vision", "logits_audio", "logits_av", "posterior_vision", "posterior_audio", "posterior_av"):
        assert report.stream_vs_offline[key] <= 1e-4 and report.offline_vs_torch[key] <= 1e-4, key


def test_stream_events_carry_classes_confidence_and_visible(default_run, negatives, calibrated, tmp_path) -> None:
    manifest = json.loads((calibrated / "soundloc.json").read_text())
    cal = manifest["visibility"]
    names = manifest["config"]["class_names"]
    seen_hidden = seen_box = 0
    for clip in sorted((negatives / "videos").glob("*.mp4")):
        ev = tmp_path / f"{clip.stem}.jsonl"
        r = soundloc_cli("stream", calibrated, "--video", clip, "--events", ev)
        assert r.returncode == 0, r.stderr
        for e in events(ev):
            assert isinstance(e["visible"], bool)
            if e["gated"]:
                assert e["box"] is None and e["classes"] == {} and not e["visible"]
                continue
            assert set(e["classes"]) == {"vision", "audio", "av"}
            for top in e["classes"].values():
                assert [n for n, _ in top] and all(n in names for n, _ in top)
                probs = [p for _, p in top]
                assert probs == sorted(probs, reverse=True) and 0 <= sum(probs) <= 1 + 1e-3
            assert 0.0 <= e["confidence"] <= 1.0
            if abs(e["confidence"] - cal["threshold"]) > 5e-5:  # events round the confidence to 1e-4
                assert e["visible"] == (e["confidence"] >= cal["threshold"])
            if not e["visible"]:
                assert e["box"] is None and e["label"] is None
                seen_hidden += 1
            elif e["box"] is not None:
                assert e["label"].startswith(e["classes"]["av"][0][0])
                seen_box += 1
    assert seen_hidden and seen_box  # both ways exercised


def test_classes_filters_the_boxes_and_reports_the_others(default_run, negatives) -> None:
    from soundloc.runtime.engine import StepModel
    from soundloc.runtime.sources import StepSource
    from soundloc.runtime.stream import StreamOptions, localize_stream

    model = StepModel.from_export(default_run.export, backend="onnxruntime-cpu")
    names = model.config.class_names
    clips = sorted((negatives / "videos").glob("*.mp4"))

    def run(options):
        out = []
        for clip in clips:
            with StepSource(str(clip), realtime=False, size=model.config.image_size) as src:
                out += list(localize_stream(src, model, options))
        return out

    try:
        every = run(StreamOptions())
        # keep the class the boxed windows name most, then one they do not: each filter is seen to
        # keep and to drop boxes, whatever the trained model hears in these clips
        heard = Counter(a.classes["av"][0][0] for a in every if not a.gated and a.box is not None)
        keep = heard.most_common(1)[0][0]
        other = next(n for n in names if n != keep)
        filtered = {cls: run(StreamOptions(classes=(cls,))) for cls in (keep, other)}
    finally:
        model.close()

    def compare(cls: str) -> tuple[int, int]:
        kept = dropped = 0
        for a, b in zip(every, filtered[cls], strict=True):
            assert a.classes == b.classes and a.visible == b.visible  # reported either way
            if a.gated:
                continue
            if a.classes["av"][0][0] == cls:
                assert b.box == a.box
                kept += a.box is not None
            else:
                assert b.box is None and b.label is None
                dropped += a.box is not None
        return kept, dropped

    assert compare(keep)[0] > 0 and compare(other)[1] > 0


def test_classes_option_refuses_an_unknown_class_in_one_line(default_run, negatives) -> None:
    clip = sorted((negatives / "videos").glob("*.mp4"))[0]
    r = soundloc_cli("stream", default_run.export, "--video", clip, "--classes", "green disk hum")
    assert_one_line_error(r, "--classes", "not a class of this model")


def test_export_without_label_outputs_still_streams_with_a_note(negatives, tmp_path) -> None:
    """An export made before the label outputs (the demo model bundled until then, kept in
    tests/fixtures): it streams as before, says so once with what to do, and its events carry
    no classes."""
    from soundloc.runtime.bundle import read_bundle

    assert not any(o["name"].startswith("logits_") for o in read_bundle(OLD_EXPORT).graph("step")["outputs"])
    old = shutil.copytree(OLD_EXPORT, tmp_path / "old_export")
    clip = sorted((negatives / "videos").glob("*.mp4"))[0]
    ev = tmp_path / "ev.jsonl"
    r = soundloc_cli("stream", old, "--video", clip, "--events", ev)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in (r.stdout + r.stderr).splitlines() if "class outputs" in ln]
    assert notes == [f"note: {old} was exported before class outputs: its events carry no classes "
                     "(re-export it to get them)"], r.stderr
    evs = events(ev)
    assert evs and all(e["classes"] == {} and e["confidence"] is None for e in evs)
    assert any(e["box"] is not None for e in evs)  # localization unchanged


def test_an_older_export_is_noted_once_per_process(tmp_path, caplog) -> None:
    """The note comes once however often the export is opened (`soundloc demo` opens its model twice)."""
    from soundloc.runtime.engine import StepModel

    old = shutil.copytree(OLD_EXPORT, tmp_path / "old_export")
    with caplog.at_level("WARNING", logger="soundloc.runtime.engine"):
        StepModel.from_export(old)
        StepModel.from_export(old)
    notes = [r.getMessage() for r in caplog.records if "class outputs" in r.getMessage()]
    assert notes == [f"note: {old} was exported before class outputs: its events carry no classes "
                     "(re-export it to get them)"]


def test_the_bundled_demo_model_names_what_sounds(negatives, tmp_path) -> None:
    """The bundled demo model has class outputs: `soundloc stream demo` events carry its classes."""
    from soundloc.runtime.bundle import demo_model_dir, read_bundle

    names = [o["name"] for o in read_bundle(demo_model_dir()).graph("step")["outputs"]]
    assert "logits_av" in names, names
    clip = sorted((negatives / "videos").glob("*.mp4"))[0]
    ev = tmp_path / "ev.jsonl"
    r = soundloc_cli("stream", "demo", "--video", clip, "--events", ev)
    assert r.returncode == 0, r.stderr
    assert "class outputs" not in r.stdout + r.stderr
    evs = [e for e in events(ev) if not e["gated"]]
    assert evs and all(e["classes"] for e in evs)


def test_int8_export_keeps_the_labels(default_run, negatives, tmp_path) -> None:
    """The label heads stay float in the int8 graph (``quantize.FLOAT_OPS``): the windows' top-1
    classes agree with the fp32 export's. (Whether the int8 *maps* meet the int8 tolerance row
    is test_quantize's question; the exit code says that, so it is not asserted here.)"""
    out, js = tmp_path / "int8", tmp_path / "int8.json"
    r = soundloc_cli("export", default_run.ckpt, "--out", out, "--precision", "int8", "--calib",
                     default_run.data / "videos", "--verify", "--json", js, timeout=900)
    assert r.returncode in (0, 1) and js.is_file(), r.stderr
    from soundloc.runtime.bundle import read_bundle

    names = [o["name"] for o in read_bundle(out).graph("step")["outputs"]]
    assert "logits_audio" in names and "logits_av" in names
    labels = json.loads(js.read_text())["verify"]["labels"]
    for head in ("vision", "audio", "av"):
        assert labels[head]["top1_agreement"] >= 0.9, labels


def test_serve_events_carry_the_same_labels_as_a_single_stream(default_run, negatives, calibrated, tmp_path) -> None:
    from soundloc.runtime.run import run_stream
    from soundloc.runtime.serve import ServeSource, run_serve
    from soundloc.runtime.stream import StreamOptions

    names = json.loads((calibrated / "soundloc.json").read_text())["config"]["class_names"]
    options = StreamOptions(classes=(names[1],))
    clips = sorted((negatives / "videos").glob("*.mp4"))[:3]
    sources = [ServeSource(f"s{k}", str(c), events=tmp_path / f"s{k}.jsonl") for k, c in enumerate(clips)]
    summary = run_serve(calibrated, sources, options=options, status=False)
    assert summary.errors == {}
    for src, clip in zip(sources, clips):
        alone = tmp_path / f"alone_{src.name}.jsonl"
        run_stream(calibrated, str(clip), events=alone, options=options, status=False)
        for a, b in zip(events(src.events), events(alone)):
            assert a["visible"] == b["visible"] and (a["box"] is None) == (b["box"] is None)
            assert a["label"] == b["label"] and [n for n, _ in a["classes"].get("av", [])] == \
                [n for n, _ in b["classes"].get("av", [])]
            assert (a["confidence"] is None) == (b["confidence"] is None)
            if a["confidence"] is not None:
                assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-3)
