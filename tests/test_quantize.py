"""INT8 exports: one calibration on real decoded clips (H.264 + AAC through PyAV), two QDQ
flavours, onnxruntime sessions, agreement with the fp32 export, the calibration folder's faults,
and bench running fp32 and int8 side by side."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from soundloc.cli import run_app  # noqa: E402
from soundloc.config import preset  # noqa: E402
from soundloc.data.synth import make_synthetic_dataset  # noqa: E402
from soundloc.export.quantize import load_calibration  # noqa: E402
from soundloc.deploy.trt_ops import check_tensorrt_compat  # noqa: E402
from soundloc.export.verify import offline_onnx, stream_onnx  # noqa: E402
from soundloc.model.checkpoint import save_checkpoint  # noqa: E402
from soundloc.model.classifier import AVClassifier  # noqa: E402
from soundloc.preprocess import file_inputs  # noqa: E402
from soundloc.runtime.bundle import read_bundle  # noqa: E402
from soundloc.runtime.engine import StepModel  # noqa: E402

from conftest import randomise_batchnorm  # noqa: E402

CFG = preset("tiny", num_classes=4)  # 2 s clips: 20 steps each
# Bounds for an untrained tiny model: its 7x7 maps are nearly flat (cells within a few % of
# each other), so a 1 % int8 error can move the peak, and whether it meets the int8 row depends on
# the CPU's int8 kernels (an AVX2 CPU without VNNI: alpha off by 8.7 % and the peak on 60 % of
# steps, where an earlier VM met the row); the cIoU of the binarised maps is the stable measure,
# and alpha within the row's 15 % says the quantization is not broken. The row itself is for
# trained models (test_int8_export_of_a_trained_default_recipe_model_meets_the_int8_row).
MIN_CIOU_MEDIAN, MAX_REL_ERROR = 0.95, 0.15
# The moment scores are held to the same row as alpha; the int8 step graph against the int8 offline
# graph to twice it (each is within the row of the same fp32 maps). Measured on an Intel Xeon with
# AVX-512 VNNI: alpha 1.4 %, moment scores 0.7 %, step vs offline 1.0 % of the scale; tighter bounds
# would hold there, but these figures move with the CPU's int8 kernels, as alpha's did (above).
MAX_MOMENT_REL_ERROR, MAX_STREAM_VS_OFFLINE = MAX_REL_ERROR, 2 * MAX_REL_ERROR


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root, num_clips=4, seed=3, seconds=CFG.clip_seconds, size=96, workers=1)
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory, clips):
    """`soundloc export --precision int8 --calib ... --verify` on a tiny checkpoint, and its fp32 export."""
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = AVClassifier(CFG).eval()
    randomise_batchnorm(model)
    save_checkpoint(root / "m.pt", model)
    held_out = sorted((clips / "videos").iterdir())[-1]
    calib = root / "calib"
    calib.mkdir()
    for clip in sorted((clips / "videos").iterdir())[:3]:
        shutil.copy(clip, calib / clip.name)
    (calib / "zz_broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    with pytest.raises(SystemExit) as e:
        run_app(["export", str(root / "m.pt"), "--out", str(root / "int8"), "--precision", "int8",
                 "--calib", str(calib), "--verify", "--clip", str(held_out), "--json", str(root / "x.json")])
    figures = json.loads((root / "x.json").read_text())
    assert e.value.code in ((0, None) if figures["verify"]["ok"] else (1,))  # 1: the row missed (said)
    with pytest.raises(SystemExit):
        run_app(["export", str(root / "m.pt"), "--out", str(root / "fp32")])
    return read_bundle(root / "int8"), read_bundle(root / "fp32"), held_out, figures


def _zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


def test_qdq_graphs_load_and_the_tensorrt_flavour_passes_the_operator_check(exported):
    int8, _, _, _ = exported
    for name in ("step", "video", "audio"):
        cpu, trt = onnx.load(int8.path(name)), onnx.load(int8.path(name, "onnx_trt"))
        assert {n.op_type for n in cpu.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
        assert all(z.dtype == np.uint8 for z in _zero_points(cpu))  # onnxruntime's x86 u8s8 kernels
        zps = _zero_points(trt)
        assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # symmetric: zero point 0
        assert check_tensorrt_compat(trt) == [], name
        assert check_tensorrt_compat(cpu), "uint8 QDQ must be refused: the check has teeth"
    model = StepModel.from_export(int8, backend="onnxruntime-cpu")  # the runtime, unchanged
    out, _ = model.step(*(np.zeros(s, np.float32) for s in ((1, 3, 112, 112), (1, 10, 80), (1,))), model.new_state(1))
    assert out.alpha.shape == (1, 7, 7) and out.alpha.dtype == np.float32


def test_both_flavours_come_from_the_same_ranges(exported):
    """CPU: scale = (rmax - rmin) / 255; TensorRT: scale = max(|rmin|, |rmax|) / 127.5 (onnxruntime's
    symmetric int8), so each activation's range read back from one flavour predicts the other."""
    int8, _, _, _ = exported

    def scales(model):
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]))
                for n in model.graph.node if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1}

    cpu, trt = scales(onnx.load(int8.path("step"))), scales(onnx.load(int8.path("step", "onnx_trt")))
    shared = sorted(set(cpu) & set(trt))
    assert len(shared) >= 10
    for name in shared:
        s, zp = cpu[name]
        rmin, rmax = -zp * s, (255 - zp) * s
        assert trt[name][0] == pytest.approx(max(abs(rmin), abs(rmax)) / 127.5, rel=0.02, abs=1e-7), name


def test_manifest_records_precision_calibration_and_verify(exported):
    int8, _, held_out, figures = exported
    m = int8.manifest
    assert m["precision"] == "int8" and int8.precision == "int8"
    cal = m["quantization"]["calibration"]
    assert cal["count"] == 3 and len(cal["clips"]) == 3 and cal["steps"] == 3 * 20
    assert cal["skipped"] and cal["skipped"][0]["file"] == "zz_broken.mp4"
    assert "node_einsum" in m["quantization"]["float_nodes"]["step"]
    assert set(m["quantization"]["seconds"]) == {"step", "video", "audio"}
    assert m["verify"]["clip"] == held_out.name and m["verify"]["steps"] == 20
    assert figures["verify"] == m["verify"] and figures["export"]["precision"] == "int8"
    assert {"onnx", "onnx_trt"} == set(m["graphs"]["step"]["files"])


def test_int8_agrees_with_fp32_on_a_generated_clip(exported):
    v = exported[0].manifest["verify"]
    assert v["ok"] == (not v["failures"]) and v["stream"]["ciou_median"] >= MIN_CIOU_MEDIAN
    assert v["offline"]["ciou_median"] >= MIN_CIOU_MEDIAN
    assert v["alpha_max_rel_error"] <= MAX_REL_ERROR and v["moments"]["score_max_rel_error"] <= MAX_MOMENT_REL_ERROR
    assert v["alpha_max_rel_error"] > 0  # it is really quantized


def test_verify_judges_int8_by_the_int8_tolerance_row(exported, monkeypatch):
    """--verify's bounds are the int8 row of the one tolerance policy: the issue's targets, and
    held to bounds no int8 export can meet, the same comparison names each one it misses."""
    from soundloc.export import verify as verify_mod
    from soundloc.deploy.tolerance import Tolerance, tolerance_for

    row = tolerance_for("int8")
    assert (row.min_peak_agreement, row.min_map_ciou_median) == (0.95, 0.95) and MAX_REL_ERROR <= row.rel < 0.2
    int8, fp32, held_out, _ = exported
    video, mel = file_inputs(held_out, CFG)
    monkeypatch.setattr(verify_mod, "tolerance_for",
                        lambda p: Tolerance(rel=1e-9, min_map_ciou_median=1.01, min_peak_agreement=1.01))
    report = verify_mod.compare_int8(int8, fp32, video, mel)
    assert not report["ok"] and len(report["failures"]) == 3
    assert [f.split()[1] for f in report["failures"]] == ["map", "binarised", "alpha"]


def test_the_peak_bound_keeps_the_precision_of_a_7x7_cell_on_any_map():
    """The int8 row's peak bound is set in frame units: 1/7 of the frame, the cell of the 7x7 map
    it was set on. A 7x7 map's peak must stay in its cell; a 14x14 map's may move to a neighbour
    (half a 7x7 cell), not two cells; the exact-cell share is still reported beside it."""
    from soundloc.deploy.tolerance import tolerance_for
    from soundloc.export.verify import map_figures

    row = tolerance_for("int8")
    assert [row.peak_cells(s) for s in (7, 14, 28)] == [0, 1, 3]
    ref = np.zeros((4, 14, 14), np.float32)
    got = np.zeros_like(ref)
    for t, (r, c), (r2, c2) in zip(range(4), [(5, 5), (5, 5), (5, 5), (0, 13)],
                                   [(5, 5), (6, 4), (7, 5), (1, 12)]):
        ref[t, r, c], got[t, r2, c2] = 1.0, 1.0
    f = map_figures(got, ref, row.peak_cells(14))
    assert (f["peak_agreement"], f["peak_within_reach"], f["peak_reach_cells"]) == (0.25, 0.75, 1)
    ref7, got7 = np.zeros((2, 7, 7), np.float32), np.zeros((2, 7, 7), np.float32)
    ref7[:, 3, 3], got7[0, 3, 3], got7[1, 3, 4] = 1.0, 1.0, 1.0
    coarse = map_figures(got7, ref7, row.peak_cells(7))
    assert (coarse["peak_agreement"], coarse["peak_within_reach"]) == (0.5, 0.5)


def test_a_peak_on_a_tie_of_fp32s_map_agrees_a_peak_below_it_does_not():
    """The int8 row's tie (2 % of the reference map's range at that step): a peak three cells
    away counts as agreeing where fp32 scores that cell within 2 % of its range of its own peak
    (fp32 had two peaks there), not where it scores it 3 % below; within reach it agrees whatever
    fp32 scores it; a flat reference map is all ties."""
    from soundloc.deploy.tolerance import tolerance_for
    from soundloc.export.verify import map_figures

    row = tolerance_for("int8")
    assert row.peak_tie == 0.02
    ref = np.zeros((4, 14, 14), np.float32)
    ref[:, 5, 5] = 1.0  # fp32's peak; range 1 (min 0)
    ref[0, 9, 9], ref[1, 9, 9], ref[2, 5, 6] = 0.985, 0.97, 0.5
    got = np.zeros_like(ref)
    got[0, 9, 9] = got[1, 9, 9] = got[2, 5, 6] = 1.0  # int8's peaks: on the tie, 3 % below, a neighbour
    got[3, 7, 7] = 1.0
    ref[3] = 0.25  # flat: every cell is fp32's peak (its argmax is the first, (0, 0))
    f = map_figures(got, ref, row.peak_cells(14), row.peak_tie)
    assert (f["peak_agreement"], f["peak_within_reach"], f["peak_agrees"]) == (0.0, 0.25, 0.75)
    assert map_figures(got, ref, row.peak_cells(14))["peak_agrees"] == 0.5  # no tie: reach (and the flat map)


def test_the_tie_does_not_pass_another_models_map(exported, tmp_path):
    """The tie forgives only cells fp32 itself scores at its peak: judged against the fp32 export
    of another model (other weights, same architecture), the int8 export's peaks land where that
    map is well below its own, and the peak row fails, tie and all."""
    from soundloc.export.verify import compare_int8

    int8, _, held_out, _ = exported
    torch.manual_seed(1)
    other = AVClassifier(CFG).eval()
    randomise_batchnorm(other)
    save_checkpoint(tmp_path / "other.pt", other)
    with pytest.raises(SystemExit):
        run_app(["export", str(tmp_path / "other.pt"), "--out", str(tmp_path / "fp32")])
    video, mel = file_inputs(held_out, CFG)
    report = compare_int8(int8, read_bundle(tmp_path / "fp32"), video, mel)
    assert report["stream"]["peak_agrees"] < 0.95 and report["stream"]["peak_tie"] == 0.02, report["stream"]
    assert any("within 2% of its range" in f for f in report["failures"]), report["failures"]


def test_streaming_int8_vs_offline_int8_bound(exported):
    """Not equal, and why: the step graph runs each 3-tap temporal conv as a Conv2d over stacked
    frames with validity masks between layers, the offline graph a Conv3d over the clip; the two
    graphs are calibrated apart (their tensors differ), so quantization steps differ a little.
    What holds: both stay within the int8 error bound of the fp32 maps, and of each other."""
    int8, fp32, held_out, _ = exported
    video, mel = file_inputs(held_out, CFG)
    s8, o8 = stream_onnx(int8, video, mel)["alpha"], offline_onnx(int8, video, mel)["alpha"]
    ref = offline_onnx(fp32, video, mel)["alpha"]
    scale = np.abs(ref).max()
    assert np.abs(s8 - o8).max() <= MAX_STREAM_VS_OFFLINE * scale
    assert np.abs(s8 - o8).max() > 0
    assert int8.manifest["verify"]["stream_vs_offline_int8"]["ciou_median"] >= MIN_CIOU_MEDIAN


def test_streaming_int8_is_exact_across_batching(exported):
    """Where the quantization is shared (one step graph), streams batched in one call equal the
    same streams run one by one."""
    model = StepModel.from_export(exported[0], backend="onnxruntime-cpu")
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((6, 2, 3, 112, 112)).astype(np.float32)
    mels = rng.standard_normal((6, 2, 10, 80)).astype(np.float32)
    both, one = model.new_state(2), [model.new_state(1), model.new_state(1)]
    for t in range(6):
        out, both = model.step(frames[t], mels[t], np.ones(2, np.float32), both)
        for b in range(2):
            o, one[b] = model.step(frames[t, b:b + 1], mels[t, b:b + 1], np.ones(1, np.float32), one[b])
            np.testing.assert_allclose(out.alpha[b], o.alpha[0], rtol=1e-5, atol=1e-5)


def test_calibration_folder_with_a_broken_file_skips_it_and_says_so(clips, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(clips / "videos", folder)
    (folder / "a_broken.mp4").write_bytes(b"garbage")
    said = []
    calib = load_calibration(folder, CFG, max_clips=2, progress=said.append)
    assert [s["file"] for s in calib.skipped] == ["a_broken.mp4"] and "a_broken.mp4" in said[0]
    assert len(calib.clips) == 2 and calib.clips[0][1].shape == (1, 3, 20, 112, 112)


def test_empty_or_unusable_calibration_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no decodable video clips"):
        load_calibration(tmp_path, CFG)
    (tmp_path / "bad.mp4").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="1 file.* would not decode"):
        load_calibration(tmp_path, CFG)
    with pytest.raises(ValueError, match="not a folder"):
        load_calibration(tmp_path / "bad.mp4", CFG)


def test_int8_options_are_checked(tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", AVClassifier(CFG).eval())
    with pytest.raises(SystemExit) as e:
        run_app(["export", str(tmp_path / "m.pt"), "--out", str(tmp_path / "x"), "--precision", "int8"])
    assert e.value.code not in (0, None) and "needs --calib" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bench_runs_fp32_and_int8_side_by_side(exported, tmp_path):
    from soundloc import bench

    int8, fp32, _, _ = exported
    report = bench.run_bench([fp32.root, int8.root], backends=["onnxruntime-cpu"], plan=bench.Plan(0.05, 0.2, 3),
                             threads=1, references=False)
    assert [(r.backend, r.precision) for r in report.backends] == [("onnxruntime-cpu", "fp32"),
                                                                  ("onnxruntime-cpu", "int8")]
    d = bench.report_dict(report)
    (ratio,) = d["precision_ratios"]
    assert ratio["precision"] == "int8" and ratio["versus"] == "fp32" and ratio["p50_ratio"] > 0
    assert {t["backend"] for t in d["targets"]} == {"onnxruntime-cpu fp32", "onnxruntime-cpu int8"}


def test_engine_build_uses_the_tensorrt_flavour(exported, tmp_path, monkeypatch):
    """--format engine --precision int8 builds from <graph>.trt.onnx. TensorRT cannot be installed
    here, so build_engine is replaced by a recorder (its own logic is tested in test_tensorrt)."""
    from soundloc.deploy import trt_engines as engines
    from soundloc.deploy.trt_plan import EngineInfo

    root = tmp_path / "int8"
    shutil.copytree(exported[0].root, root)
    seen = []

    def fake_build(source, engine, *, precision, **kw):
        seen.append((source.name, precision))
        engine.write_bytes(b"engine")
        return EngineInfo("10.3.0", "fake GPU", "8.7", precision, True, 0.1, {}, None, "0" * 64, 6)

    monkeypatch.setattr(engines, "build_engine", fake_build)
    bundle = engines.build_engines(read_bundle(root), precision="int8", max_batch=4, workspace_gib=1.0,
                                   timing_cache=None, dla_core=None)
    assert seen == [("step.trt.onnx", "int8"), ("video.trt.onnx", "int8"), ("audio.trt.onnx", "int8")]
    assert bundle.manifest["tensorrt"]["precision"] == "int8" and bundle.path("step", "engine").is_file()


@pytest.mark.parametrize("map_kind", ["dot", "cosine", "salient"])
def test_int8_export_through_the_cli_for_every_map_kind(map_kind, clips, tmp_path):
    """`soundloc export --precision int8 --calib --verify` for every map kind (the default
    recipe's salient and cosine maps crashed in onnxruntime's symbolic shape inference), with no
    third-party warning noise on the way."""
    from conftest import soundloc_cli

    torch.manual_seed(0)
    head = "individual-fc" if map_kind == "dot" else "tied-fc"
    save_checkpoint(tmp_path / "m.pt", AVClassifier(CFG.replace(map_kind=map_kind, head=head)).eval())
    r = soundloc_cli("export", tmp_path / "m.pt", "--out", tmp_path / "int8", "--precision", "int8",
                     "--calib", clips / "videos", "--verify")
    assert r.returncode in (0, 1), r.stderr  # 1: verify's bounds missed by an untrained model, said
    assert "Traceback" not in r.stderr and "Skipping torchvision" not in r.stderr + r.stdout
    assert "out-of-range" not in r.stderr + r.stdout
    bundle = read_bundle(tmp_path / "int8")
    assert bundle.manifest["precision"] == "int8" and bundle.config.map_kind == map_kind
    v = bundle.manifest["verify"]
    # an untrained model's maps are nearly flat, so the int8 row is checked on a trained one below
    assert v["alpha_max_rel_error"] > 0 and v["stream"]["ciou_median"] >= 0.7  # 0.79 for cosine on an AVX2 CPU
    assert r.returncode == (0 if v["ok"] else 1) and v["ok"] == (not v["failures"])


def test_int8_default_recipe_model_is_judged_by_the_int8_row(default_run, tmp_path):
    """A default-recipe model as the suite trains one (tied-fc, salient maps, `soundloc train` with
    no recipe flags; tiny, seconds of training): its int8 export is verified against its fp32
    export and judged by the int8 row, the verdict, the exit code and the printed lines agreeing
    with the figures. Whether such a model passes is not fixed: trained on another CPU (other
    float rounding) the same command makes another model, and models this small and this briefly
    trained pass on some seeds and miss on others (benchmarks/RESULTS.md, issue 24, seventh round);
    the pass on a trained model is the next test."""
    from conftest import soundloc_cli
    from soundloc.deploy.tolerance import tolerance_for

    r = soundloc_cli("export", default_run.ckpt, "--out", tmp_path / "int8", "--precision", "int8",
                     "--calib", default_run.data / "videos", "--verify", "--json", tmp_path / "x.json")
    int8 = read_bundle(tmp_path / "int8")
    assert int8.config.map_kind == "salient" and int8.config.head == "tied-fc"
    v, row = int8.manifest["verify"], tolerance_for("int8")
    meets = {"peak": v["stream"]["peak_agrees"] >= row.min_peak_agreement,
             "cIoU": v["stream"]["ciou_median"] >= row.min_map_ciou_median,
             "alpha": v["alpha_max_rel_error"] <= row.rel}
    assert v["ok"] == all(meets.values()) and len(v["failures"]) == sum(not m for m in meets.values()), v
    assert r.returncode == (0 if v["ok"] else 1), r.stderr
    said = " ".join((r.stdout + r.stderr).split())  # rich wraps long lines
    assert f"on an fp32 tie (within 2%) on {v['stream']['peak_agrees']:.1%}" in said, said
    for failure in v["failures"]:
        assert f"FAIL {failure}" in said, said


def test_int8_export_of_a_trained_default_recipe_model_meets_the_int8_row(tmp_path):
    """A `small` default-recipe model trained as the benchmarks train one (160 clips, 30 epochs,
    the run's best.pt; tests/fixtures/default_small/README.md) exported at int8, calibrated on 8
    clips it never saw, passes `--verify`: what the int8 row was set on, with room on every bound
    (measured: alpha 3.9 % of its scale against 15 %, binarised cIoU median 0.99 against 0.95, peak
    agreeing on 100 % of 40 steps against 95 %)."""
    from conftest import soundloc_cli
    from pathlib import Path

    ckpt = Path(__file__).parent / "fixtures" / "default_small" / "best.pt"
    make_synthetic_dataset(tmp_path / "data", num_clips=8, seed=13, seconds=4.0, num_classes=10, workers=1)
    r = soundloc_cli("export", ckpt, "--out", tmp_path / "int8", "--precision", "int8",
                     "--calib", tmp_path / "data" / "videos", "--verify")
    int8 = read_bundle(tmp_path / "int8")
    v = int8.manifest["verify"]
    assert (int8.config.map_kind, int8.config.head, int8.config.fine_map) == ("salient", "tied-fc", True)
    assert v["ok"] and r.returncode == 0, (v["failures"], r.stderr)
    assert v["stream"]["peak_agrees"] >= 0.95 and v["stream"]["ciou_median"] >= 0.95
    assert v["alpha_max_rel_error"] <= 0.15 and v["steps"] == 40
