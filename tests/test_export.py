"""ONNX export: offline graphs vs PyTorch, the streaming step graph vs offline, fp16, metadata."""

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from soundloc.config import Config, preset  # noqa: E402
from soundloc.export.onnx import export_model  # noqa: E402
from soundloc.export.pipeline import export_checkpoint  # noqa: E402
from soundloc.deploy.trt_ops import check_tensorrt_compat  # noqa: E402
from soundloc.export.verify import map_agreement, offline_onnx, random_clip, stream_onnx, verify  # noqa: E402
from soundloc.model.checkpoint import save_checkpoint  # noqa: E402
from soundloc.model.classifier import AVClassifier  # noqa: E402
from soundloc.runtime.bundle import BundleError, read_bundle  # noqa: E402
from soundloc.runtime.engine import StepModel  # noqa: E402

from conftest import randomise_batchnorm  # noqa: E402

CFG = Config(width=0.125, num_classes=5)  # MC3-18 depth (5-step lookahead) at 1/8 width


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = AVClassifier(CFG).eval()
    randomise_batchnorm(m)
    return m


@pytest.fixture(scope="module")
def fp32(model, tmp_path_factory):
    return export_model(model, tmp_path_factory.mktemp("fp32"), precision="fp32")


@pytest.fixture(scope="module")
def fp16(model, tmp_path_factory):
    return export_model(model, tmp_path_factory.mktemp("fp16"), precision="fp16")


def test_fp32_offline_and_streaming_match(fp32, model):
    report = verify(fp32, model, steps=100)
    assert report.steps == 100
    for k in ("V", "zv", "za", "alpha"):
        assert report.offline_vs_torch[k] <= 1e-4, k
    assert report.stream_vs_offline["alpha"] <= 1e-4  # every step, the flushed end included
    assert report.ok, report.failures


def test_stream_covers_every_step_including_flushed_end(fp32):
    video, mel = random_clip(fp32.config, 30, seed=3)
    off, stream = offline_onnx(fp32, video, mel), stream_onnx(fp32, video, mel)
    assert stream["alpha"].shape == off["alpha"].shape == (1, 30, 7, 7)
    np.testing.assert_allclose(stream["alpha"][0, -5:], off["alpha"][0, -5:], atol=1e-4)


def test_three_streams_in_one_call_equal_three_runs(fp32):
    sm = StepModel.from_export(fp32, backend="onnxruntime-cpu")
    rng = np.random.default_rng(0)
    T = 12
    frames = rng.standard_normal((T, 3, 3, 112, 112)).astype(np.float32)
    mels = rng.standard_normal((T, 3, 10, 80)).astype(np.float32)
    valid = np.ones(3, np.float32)
    batched_state = sm.new_state(3)
    single_states = [sm.new_state(1) for _ in range(3)]
    for t in range(T):
        valid[2] = float(t < 8)  # the third stream ends early and flushes
        out, batched_state = sm.step(frames[t], mels[t], valid, batched_state)
        for b in range(3):
            o, single_states[b] = sm.step(frames[t, b:b + 1], mels[t, b:b + 1], valid[b:b + 1], single_states[b])
            np.testing.assert_allclose(out.alpha[b], o.alpha[0], atol=1e-5)
            assert out.valid[b] == o.valid[0]


def test_fp16_graph_is_fp16_inside_and_maps_agree(fp16, fp32, model):
    step = onnx.load(fp16.path("step"))
    inits = [onnx.numpy_helper.to_array(i) for i in step.graph.initializer]
    big = [a for a in inits if a.size > 1000]
    assert big and all(a.dtype == np.float16 for a in big)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in step.graph.input)
    video, mel = random_clip(CFG, 40, seed=1)
    a16 = offline_onnx(fp16, video, mel)["alpha"][0]
    a32 = offline_onnx(fp32, video, mel)["alpha"][0]
    assert map_agreement(a16, a32) >= 0.95
    assert map_agreement(stream_onnx(fp16, video, mel)["alpha"][0], a32) >= 0.95


def test_every_graph_passes_tensorrt_operator_check(fp32, fp16):
    for bundle in (fp32, fp16):
        for name in ("step", "video", "audio"):
            assert check_tensorrt_compat(onnx.load(bundle.path(name))) == [], name


def test_metadata_in_manifest_and_graphs(fp32):
    m = fp32.manifest
    assert m["lookahead_steps"] == 5 and m["lookahead_seconds"] == 0.5
    assert fp32.config == CFG
    assert [s["name"] for s in fp32.state_specs][:2] == ["state.valid", "video.stem"]
    step = m["graphs"]["step"]
    assert {i["name"] for i in step["inputs"]} >= {"frame", "mel", "valid", "state_in.video.stem"}
    assert step["inputs"][0]["shape"][0] == "batch" or isinstance(step["inputs"][0]["shape"][0], str)
    props = {p.key: p.value for p in onnx.load(fp32.path("step")).metadata_props}
    assert props["soundloc.graph"] == "step" and props["soundloc.precision"] == "fp32"
    assert json.loads(props["soundloc.config"])["width"] == 0.125


def test_runtime_rejects_altered_or_missing_files(fp32, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(fp32.root, root)
    assert read_bundle(root).lookahead_steps == 5
    with open(root / "audio.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="does not match"):
        read_bundle(root)
    (root / "audio.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        read_bundle(root)
    manifest = json.loads((root / "soundloc.json").read_text())
    manifest["format_version"] = 99
    (root / "soundloc.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 99"):
        read_bundle(root)
    (root / "soundloc.json").write_text("{trunc")
    with pytest.raises(BundleError, match="corrupt"):
        read_bundle(root)
    with pytest.raises(BundleError, match="not an export directory"):
        read_bundle(tmp_path)


def test_causal_config_exports_with_no_lookahead(tmp_path):
    torch.manual_seed(1)
    model = AVClassifier(preset("tiny", causal=True, num_classes=3)).eval()
    randomise_batchnorm(model)
    path = tmp_path / "c.pt"
    save_checkpoint(path, model)
    bundle = export_checkpoint(path, tmp_path / "exp")
    assert bundle.lookahead_steps == 0
    assert bundle.manifest["checkpoint"]["file"] == "c.pt" and len(bundle.manifest["checkpoint"]["sha256"]) == 64
    report = verify(bundle, model, steps=20)
    assert report.ok, report.failures


def test_bad_options_raise(tmp_path, model):
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    with pytest.raises(ValueError, match="format"):
        export_checkpoint(path, tmp_path / "x", format="tflite")
    with pytest.raises(ValueError, match="precision"):
        export_model(model, tmp_path / "y", precision="int4")


def test_failed_reexport_keeps_the_previous_export(fp32, model, tmp_path, monkeypatch):
    import shutil

    from soundloc.export import onnx as export_onnx

    root = tmp_path / "exp"
    shutil.copytree(fp32.root, root)
    before = (root / "soundloc.json").read_text()
    real = export_onnx._export_graph

    def flaky(spec, path, precision, opset):
        if spec.name == "video":
            raise OSError(28, "No space left on device")
        return real(spec, path, precision, opset)

    monkeypatch.setattr(export_onnx, "_export_graph", flaky)
    with pytest.raises(OSError):
        export_model(model, root)
    assert (root / "soundloc.json").read_text() == before
    assert read_bundle(root).lookahead_steps == 5  # every file still matches its manifest
    assert not list(root.glob(".*partial*"))


def test_tolerance_scales_with_what_is_compared():
    from soundloc.deploy.tolerance import TOLERANCES, tolerance_for

    fp32 = tolerance_for("fp32")
    # the case: streaming alpha off by 1.07e-4 where alpha reaches 114.7 (9e-7 of it)
    assert 1.07e-4 <= fp32.allowed(114.66) and not 1.07e-4 <= fp32.allowed(1.0)
    assert fp32.allowed(0.25) == fp32.allowed(1.0) == fp32.rel  # small values: an absolute floor
    assert tolerance_for("fp16").rel > fp32.rel and tolerance_for("fp16").min_map_ciou is not None
    assert set(TOLERANCES) >= {"fp32", "tf32", "fp16", "int8"}
    with pytest.raises(ValueError, match="no tolerance for 'int3'"):
        tolerance_for("int3")


def test_verify_failure_names_the_scale(fp32, model, monkeypatch):
    """Held to an impossible tolerance, the export fails, and the message says how the allowance
    was derived from the values' scale."""
    from soundloc.export import verify as verify_mod
    from soundloc.deploy.tolerance import Tolerance

    monkeypatch.setattr(verify_mod, "tolerance_for", lambda precision: Tolerance(rel=1e-12))
    report = verify(fp32, model, steps=12)
    assert not report.ok and "of the values' scale" in report.failures[0]
    assert report.allowed["alpha"] == 1e-12 * max(report.scale["alpha"], 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_size_random_exports_pass_verify(seed, tmp_path):
    """Full-size MC3-18 (`AVClassifier(Config())`), random weights and randomised BatchNorm, on
    several seeds: the exports are right, so verify must pass. Seed 1 failed the old absolute
    1e-4 (streaming alpha 1.07e-4 off at a scale of ~1e2). ~55 s per seed on 2 cores."""
    from soundloc.export.onnx import random_model

    full = random_model("paper", seed)
    report = verify(export_model(full, tmp_path, precision="fp32"), full, steps=12)
    assert report.ok, report.failures
    assert report.scale["alpha"] > 10  # the magnitude that broke absolute tolerances
    for k, err in {**report.offline_vs_torch, **report.stream_vs_offline}.items():
        assert err <= 1e-5 * max(report.scale[k], 1.0), k  # float32 rounding, not a fudge


def test_preset_export_has_random_weights_said_loudly(tmp_path):
    from typer.testing import CliRunner

    from soundloc.cli import app

    res = CliRunner().invoke(app, ["export", "--preset", "tiny", "--seed", "3", "--out", str(tmp_path / "x"),
                                   "--json", str(tmp_path / "x.json")])
    assert res.exit_code == 0, res.output
    bundle = read_bundle(tmp_path / "x")
    assert bundle.manifest["checkpoint"] == {"random_weights": True, "preset": "tiny", "seed": 3}
    assert bundle.config == preset("tiny")
    assert "RANDOM WEIGHTS" in res.output
    assert json.loads((tmp_path / "x.json").read_text())["export"]["weights"].startswith("RANDOM WEIGHTS")
    with pytest.raises(ValueError, match="not both"):
        export_checkpoint(tmp_path / "some.pt", tmp_path / "y", preset="tiny")
    with pytest.raises(ValueError, match="--preset NAME"):
        export_checkpoint(None, tmp_path / "y")


def test_dla_engine_options_are_checked_before_any_export(tmp_path, model):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model)
    with pytest.raises(ValueError, match="apply to --format engine only"):
        export_checkpoint(ckpt, tmp_path / "y", dla_core=0)
    assert not (tmp_path / "y").exists()
