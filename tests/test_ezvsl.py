"""The ezvsl model family: an EZ-VSL checkpoint in its authors' exact format (key names and
shapes of torchvision's resnet18 as their model.py wraps it, random weights) is imported,
exported, verified and streamed through real onnxruntime sessions on real mp4 files; the
spectrogram is checked against scipy on a real VGGSound clip; `soundloc eval` scores it with
the same protocol code as soundloc's own models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) needed to build EZ-VSL checkpoints")
pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from soundloc.mel import audio_window, log_spectrogram, spectrogram_shape  # noqa: E402
from soundloc.families import FAMILIES, family_of  # noqa: E402


def _bn(shapes: dict, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def resnet18_shapes(in_channels: int) -> dict[str, tuple]:
    """torchvision resnet18's parameter and buffer shapes (avgpool and fc have none once
    EZ-VSL replaces them), written out here independently of soundloc's model code."""
    shapes: dict[str, tuple] = {"conv1.weight": (64, in_channels, 7, 7)}
    _bn(shapes, "bn1", 64)
    cin = 64
    for i, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (c, cin if b == 0 else c, 3, 3)
            _bn(shapes, f"{p}.bn1", c)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            _bn(shapes, f"{p}.bn2", c)
            if b == 0 and i > 1:
                shapes[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                _bn(shapes, f"{p}.downsample.1", c)
        cin = c
    return shapes


def random_state(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")):
            state[k] = torch.rand(shape, generator=g) - 0.5
        elif len(shape) == 1:  # BatchNorm weight
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = int(np.prod(shape[1:]))
            state[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def ezvsl_state(prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    """EZ-VSL's model.state_dict(): imgnet / audnet (1-channel conv1) / img_proj / aud_proj."""
    shapes = {f"imgnet.{k}": s for k, s in resnet18_shapes(3).items()}
    shapes |= {f"audnet.{k}": s for k, s in resnet18_shapes(1).items()}
    shapes |= {"img_proj.weight": (512, 512, 1, 1), "img_proj.bias": (512,),
               "aud_proj.weight": (512, 512), "aud_proj.bias": (512,)}
    return {prefix + k: v for k, v in random_state(shapes, seed).items()}


def save_ezvsl(path: Path, state: dict) -> Path:
    """Saved the way EZ-VSL's train.py saves best.pth (numpy scalars included)."""
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                "epoch": 20, "best_cIoU": np.float64(0.39), "best_Auc": np.float64(0.4)}, path)
    return path


def cli(*args: str) -> tuple[int, str]:
    """The real CLI entry (one-line errors, exit codes); its stdout and stderr together."""
    import contextlib
    import io

    from soundloc.cli import run_app

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            run_app([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("ezvsl")
    save_ezvsl(root / "best.pth", ezvsl_state("module."))
    code, out = cli("import", "ezvsl", root / "best.pth", "--out", root / "ezvsl.pt")
    assert code == 0, out
    yield root / "ezvsl.pt"
    shutil.rmtree(root, ignore_errors=True)  # full-size checkpoints: freed when the module ends


@pytest.fixture(scope="module")
def exported(imported: Path) -> Path:
    out = imported.parent / "export"
    code, text = cli("export", imported, "--out", out, "--verify", "--json", imported.parent / "export.json")
    assert code == 0, text
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from soundloc.data.synth import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, num_clips=2, seed=5, seconds=3.0, workers=1)
    return out


@pytest.mark.parametrize("prefix", ["", "module."])
def test_import_loads_every_weight_by_name(tmp_path, prefix):
    from soundloc.model.checkpoint import load_checkpoint

    state = ezvsl_state(prefix, seed=1)
    save_ezvsl(tmp_path / "best.pth", state)
    code, out = cli("import", "ezvsl", tmp_path / "best.pth", "--out", tmp_path / "m.pt")
    assert code == 0, out
    model, data = load_checkpoint(tmp_path / "m.pt")
    assert model.config.family == "ezvsl" and family_of(model.config) is FAMILIES["ezvsl"]
    assert data["imported"]["family"] == "ezvsl" and model.objnet is None
    own = model.state_dict()
    assert set(own) == {k[len(prefix):] for k in state}
    for k, v in state.items():
        assert torch.equal(own[k[len(prefix):]], v), k


@pytest.mark.parametrize("change, key", [
    ("drop", "audnet.layer3.1.bn2.running_var"),
    ("shape", "aud_proj.weight"),
    ("shape", "audnet.conv1.weight"),
])
def test_missing_or_misshapen_key_is_refused_by_name(tmp_path, change, key):
    state = ezvsl_state("module.")
    if change == "drop":
        del state[f"module.{key}"]
    else:
        state[f"module.{key}"] = torch.zeros(7, *state[f"module.{key}"].shape[1:])
    save_ezvsl(tmp_path / "best.pth", state)
    code, out = cli("import", "ezvsl", tmp_path / "best.pth", "--out", tmp_path / "m.pt")
    assert code != 0
    assert repr(key) in out and ("missing" in out if change == "drop" else "shape" in out)
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_not_a_checkpoint_and_unexpected_keys_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    code, out = cli("import", "ezvsl", tmp_path / "junk.pth", "--out", tmp_path / "m.pt")
    assert code != 0 and "junk.pth" in out
    state = ezvsl_state() | {"imgnet.fc.weight": torch.zeros(1000, 512)}
    save_ezvsl(tmp_path / "best.pth", state)
    code, out = cli("import", "ezvsl", tmp_path / "best.pth", "--out", tmp_path / "m.pt")
    assert code != 0 and "'imgnet.fc.weight'" in out


def test_spectrogram_equals_scipy_on_a_real_clip(real_audio):
    from scipy import signal

    window = real_audio[:48_000]
    _, _, ref = signal.spectrogram(window.astype(np.float64), 16_000, nperseg=512, noverlap=274)
    ours = log_spectrogram(window)
    assert ours.shape == ref.shape == spectrogram_shape(3.0) == (257, 200)
    np.testing.assert_allclose(ours, np.log(ref + 1e-7) / 12, rtol=1e-5, atol=1e-6)
    assert ours.std() > 0.05  # a real signal, not a constant


@pytest.mark.parametrize("window, lookahead", [("trailing", 0), ("centered", 14)])
def test_stream_feeder_gives_each_frame_its_3s_window(real_audio, window, lookahead):
    from types import SimpleNamespace

    cfg = family_config()
    feeder = FAMILIES["ezvsl"].feeder(cfg, window)
    assert feeder.lookahead == lookahead
    steps = 40
    frames = np.random.default_rng(0).integers(0, 255, (steps, 224, 224, 3), dtype=np.uint8)
    got = []
    for t in range(steps):
        out = feeder.push(SimpleNamespace(index=t, small=frames[t], audio=real_audio[1600 * t:1600 * (t + 1)]))
        assert len(got) + len(out) == max(0, t + 1 - lookahead)
        got += out
    got += feeder.flush()
    assert len(got) == steps
    audio = real_audio[:1600 * steps]
    for t in (0, 5, 20, steps - 1):
        start = 1600 * (t + 1) - 48_000 if window == "trailing" else 1600 * t - 24_000
        np.testing.assert_allclose(got[t][1][0], log_spectrogram(audio_window(audio, start, 48_000)), atol=1e-6)
        np.testing.assert_allclose(got[t][0][0], FAMILIES["ezvsl"].normalise(frames[t][None])[:, 0], atol=1e-6)


def family_config():
    from soundloc.config import Config

    return Config(family="ezvsl", image_size=224, num_classes=0, window_seconds=0.1, map_kind="cosine")


def test_export_writes_three_graphs_and_verifies(exported):
    from soundloc.runtime.bundle import read_bundle

    bundle = read_bundle(exported)
    assert bundle.config.family == "ezvsl" and bundle.lookahead_steps == 0
    step = bundle.graph("step")
    assert [i["name"] for i in step["inputs"]] == ["frame", "spec", "valid"]
    assert [i["shape"][1:] for i in step["inputs"]][:2] == [[3, 1, 224, 224], [1, 257, 200]]
    assert step["state"] == []
    report = json.loads((exported.parent / "export.json").read_text())["verify"]
    assert report["ok"] and report["stream_vs_offline"]["alpha"] <= report["allowed"]["alpha"]


def test_stream_equals_authors_map_per_frame(exported, imported, clips):
    """Each streamed step's map is the model's map of that frame with the 3 s of audio centred on
    it (PyTorch, from the checkpoint), as EZ-VSL's test code computes it."""
    from soundloc.families import ezvsl_file_inputs
    from soundloc.localize import normalise
    from soundloc.model.checkpoint import load_checkpoint
    from soundloc.runtime.engine import StepModel
    from soundloc.runtime.sources import StepSource
    from soundloc.runtime.stream import StreamOptions, localize_stream

    clip = sorted((clips / "videos").glob("*.mp4"))[0]
    model = load_checkpoint(imported)[0]
    video, specs = ezvsl_file_inputs(clip, model.config)
    with torch.no_grad():
        f = model.features(torch.from_numpy(video), torch.from_numpy(specs))
        ref = model.maps(f.V[0].transpose(0, 1), f.za[0], None).numpy()
    step_model = StepModel.from_export(exported, backend="onnxruntime-cpu")
    with StepSource(str(clip), size=224) as source:
        results = list(localize_stream(source, step_model, StreamOptions(window="centered", gate_db=None)))
    assert [r.index for r in results] == list(range(len(ref)))
    assert results[0].lookahead_s == pytest.approx(1.4)
    for r in results:
        np.testing.assert_allclose(r.heatmap, normalise(ref[r.index]), atol=1e-4)


def test_stream_command_and_torch_backend(exported, imported, clips, tmp_path):
    clip = sorted((clips / "videos").glob("*.mp4"))[1]
    code, out = cli("stream", exported, "--video", clip, "--events", tmp_path / "ev.jsonl", "--gate-db", "-200")
    assert code == 0, out
    onnx_events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert len(onnx_events) == 30 and onnx_events[0]["lookahead_s"] == 0.0
    code, out = cli("stream", imported, "--backend", "torch", "--video", clip, "--events", tmp_path / "t.jsonl",
                    "--gate-db", "-200")
    assert code == 0, out
    torch_events = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    same = np.mean([t["peak"] == o["peak"] for t, o in zip(torch_events, onnx_events)])
    assert same >= 0.9  # identical but for a near-tie of two cells within float rounding
    np.testing.assert_allclose([e["score"] for e in torch_events], [e["score"] for e in onnx_events], atol=1e-5)


def test_eval_scores_the_middle_frame_with_the_same_protocol(imported, clips, tmp_path):
    from soundloc import evaluate
    from soundloc.data.annotations import read_annotations
    from soundloc.families import ezvsl_file_inputs
    from soundloc.model.checkpoint import load_checkpoint

    code, out = cli("eval", imported, "--videos", clips, "--annotations", clips / "vggss.json",
                    "--protocol", "ezvsl", "--json", tmp_path / "eval.json")
    assert code == 0, out
    got = json.loads((tmp_path / "eval.json").read_text())
    model = load_checkpoint(imported)[0]
    gt = read_annotations(clips / "vggss.json")
    maps = {}
    for clip_id in gt.ids:
        video, specs = ezvsl_file_inputs(next((clips / "videos").glob(f"{clip_id}.*")), model.config)
        t = video.shape[2] // 2  # the annotated (middle) frame, its audio centred on it
        with torch.no_grad():
            V, za = model.image(torch.from_numpy(video[:, :, t])), model.audio(torch.from_numpy(specs[:, t:t + 1]))
            maps[clip_id] = model.maps(V, za, None)[0].numpy()
    want = evaluate.score_maps(maps, gt, "ezvsl", source="direct")
    # the same protocol code on the same maps; abs: a pixel at the median may flip on float rounding
    assert got["summary"] == pytest.approx(want.summary, abs=2e-3)
    assert got["summary"]["n"] == len(gt.ids) >= 1


def test_object_prior_blends_into_exported_maps(tmp_path):
    from soundloc.families import blend_prior
    from soundloc.model.checkpoint import load_checkpoint

    save_ezvsl(tmp_path / "best.pth", ezvsl_state())
    imagenet = random_state(resnet18_shapes(3), seed=7) | {"fc.weight": torch.zeros(1000, 512),
                                                            "fc.bias": torch.zeros(1000)}
    torch.save(imagenet, tmp_path / "resnet18.pth")  # torchvision's .pth: a bare state dict
    code, out = cli("import", "ezvsl", tmp_path / "best.pth", "--out", tmp_path / "m.pt",
                    "--object-prior", tmp_path / "resnet18.pth", "--alpha", "0.4")
    assert code == 0, out
    model, data = load_checkpoint(tmp_path / "m.pt")
    assert model.config.prior_alpha == 0.4 and data["imported"]["object_prior"]["alpha"] == 0.4
    assert torch.equal(model.objnet.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(2, 512, 7, 7, generator=g), dim=1)
    za = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=1)
    prior = torch.rand(2, 7, 7, generator=g)
    with torch.no_grad():
        blended = model.maps(V, za, prior).numpy()  # the graphs' blend (torch)
    cos = torch.einsum("bdhw,bd->bhw", V, za).numpy()
    np.testing.assert_allclose(blended, blend_prior(cos, prior.numpy(), 0.4), atol=1e-6)  # offline twin
    assert blended.min() >= 0 and blended.max() <= 1
    code, out = cli("export", tmp_path / "m.pt", "--out", tmp_path / "export", "--verify",
                    "--json", tmp_path / "export.json")
    assert code == 0, out
    report = json.loads((tmp_path / "export.json").read_text())["verify"]
    assert report["ok"] and "prior" in report["offline_vs_torch"]



def test_int8_export_is_refused_for_the_family(imported, clips, tmp_path):
    code, out = cli("export", imported, "--out", tmp_path / "x", "--precision", "int8", "--calib", clips / "videos")
    assert code != 0 and "int8" in out and "ezvsl" in out
    assert not (tmp_path / "x" / "soundloc.json").exists()


def test_info_counts_both_networks_like_the_exported_graphs(imported, exported):
    from soundloc.bench import onnx_macs
    from soundloc.model.summary import describe
    from soundloc.runtime.bundle import read_bundle

    desc = describe(imported)
    bundle = read_bundle(exported)
    for net in ("video", "audio"):
        assert desc["gmac_per_frame"][net] == pytest.approx(onnx_macs(bundle.path(net)) / 1e9, rel=0.01)
    state = torch.load(imported, weights_only=True)["model"]
    assert desc["parameters"]["total"] == sum(v.numel() for k, v in state.items()
                                              if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert desc["parameters"]["video"] + desc["parameters"]["audio"] == desc["parameters"]["total"]


def test_moments_rank_steps_by_the_mean_cosine(imported, clips, tmp_path):
    from soundloc.families import ezvsl_file_inputs
    from soundloc.model.checkpoint import load_checkpoint

    code, out = cli("moments", imported, clips, "--top-k", "3", "--json", tmp_path / "m.json")
    assert code == 0, out
    got = {k: [m["frame"] for m in v] for k, v in json.loads((tmp_path / "m.json").read_text()).items()}
    model = load_checkpoint(imported)[0]
    clip = sorted((clips / "videos").glob("*.mp4"))[0]
    video, specs = ezvsl_file_inputs(clip, model.config)
    with torch.no_grad():
        f = model.features(torch.from_numpy(video), torch.from_numpy(specs))
    scores = (f.zv[0] * f.za[0]).sum(dim=1).numpy()  # S_av: the mean cosine over locations
    assert len(set(got[clip.stem])) == 3  # the chosen steps hold the 3 best scores, best first (near-ties aside)
    np.testing.assert_allclose(scores[got[clip.stem]], np.sort(scores)[::-1][:3], atol=1e-6)


def test_nan_weights_are_refused_on_import(tmp_path):
    """Through the real command in its own process: a NaN anywhere in the weights is a corrupt
    checkpoint, refused in one line with the key named, and nothing is written."""
    import subprocess
    import sys

    state = ezvsl_state()
    state["aud_proj.weight"][3, 5] = float("nan")
    save_ezvsl(tmp_path / "best.pth", state)
    r = subprocess.run([sys.executable, "-m", "soundloc", "import", "ezvsl", str(tmp_path / "best.pth"),
                        "--out", str(tmp_path / "m.pt")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "'aud_proj.weight'" in r.stderr and "NaN" in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert not (tmp_path / "m.pt").exists()


def test_triton_python_model_and_the_blank_step_follow_the_family(exported, tmp_path):
    """An EZ-VSL export over Triton: the Python-backend model takes the ``spec`` input its config
    declares (run with a stand-in for Triton's stub module) and equals the local step; the padding
    step that ends a Triton sequence has the spectrogram's shape, not the classifier's mel."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the triton extra) parses the config")
    from triton_stub import python_model_vs_local

    from soundloc.runtime.bundle import read_bundle
    from soundloc.runtime.engine import StepModel

    bundle = read_bundle(exported)
    assert python_model_vs_local(bundle, tmp_path / "repo", lengths=(3, 2)) < 1e-4
    model = StepModel.from_export(bundle, backend="onnxruntime-cpu")
    frames, audio = family_of(bundle.config).blank_step(bundle.config)
    assert audio.shape == (1, *spectrogram_shape(3.0, bundle.config.sample_rate))
    out, _ = model.step(frames, audio, np.zeros(1, np.float32), model.new_state(1))
    assert out.valid.tolist() == [False]
