"""Published localizers as soundloc families (ezvsl, fnac, slavc): checkpoints saved the way
their authors' training code saves them import by name (and bad ones are refused by name, pickles
without running anything); soundloc's maps equal the maps the authors' own code computed on a
real VGG-SS clip's frame and audio (tests/fixtures/published, README there) to <= 1e-4; every
family and map variant exports and verifies (stream vs offline, ONNX vs torch) through real
onnxruntime sessions; int8 is refused for them; `soundloc info` names family, variant,
preprocessing and the imported file's sha256."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) needed to build published checkpoints")
pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from published_weights import DAMAGE_WORDS, damage, ezvsl_state, prior_state, save_authors, slavc_state  # noqa: E402
from test_ezvsl import cli  # noqa: E402

from soundloc import authors  # noqa: E402
from soundloc.families import IMAGENET_MEAN, IMAGENET_STD, family_of  # noqa: E402
from soundloc.visibility import top_quarter_mean  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "published"
CLIP = "FwVYUHKoLtQ_000034"  # the shared real VGGSound clip (its wav); VGG-SS has its box
TAU = 0.03  # the authors' test default: their logits are cosine / tau
# (family, variant, the fixture's 224x224 map keys: audio-visual, with the object prior)
VARIANTS = [("ezvsl", "cosine", "pred_av_bilinear", "pred_av_obj_bilinear"),
            ("fnac", "bilinear", "pred_av_bilinear", "pred_av_obj_bilinear"),
            ("fnac", "bicubic", "pred_av_bicubic", "pred_av_obj_bicubic"),
            ("slavc", "online", "scores_av_online", "scores_av_obj_online"),
            ("slavc", "momentum", "scores_av_momentum", "scores_av_obj_momentum")]


def authors_state(family: str, prefix: str = "module.") -> dict:
    return slavc_state(prefix, seed=0) if family == "slavc" else ezvsl_state(prefix, seed=0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("published")
    for family in ("ezvsl", "slavc"):
        save_authors(root / f"{family}.pth", authors_state(family))
    torch.save(prior_state(), root / "resnet18.pth")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # full-size checkpoints: freed when the module ends


@pytest.fixture(scope="module")
def still_folder(tmp_path_factory, shared_dir_module) -> Path:
    """The authors' test layout with the fixture's real files: a real photograph (matplotlib's
    sample JPEG; the VGG-SS frame itself is not here) and the real VGGSound wav."""
    cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib (the train extra) ships the sample photo")
    root = tmp_path_factory.mktemp("still")
    (root / "frames").mkdir()
    (root / "audio").mkdir()
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), root / "frames" / f"{CLIP}.jpg")
    shutil.copy(shared_dir_module / "data" / "vggsound" / f"{CLIP}.wav", root / "audio" / f"{CLIP}.wav")
    return root


@pytest.fixture(scope="module")
def shared_dir_module() -> Path:
    from conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


def imported(weights: Path, family: str, variant: str, prior: bool, preprocess: str = "authors") -> Path:
    out = weights / f"{family}-{variant}-{prior}-{preprocess}.pt"
    if not out.exists():
        src = weights / ("slavc.pth" if family == "slavc" else "ezvsl.pth")
        args = ["import", family, src, "--out", out, "--preprocess", preprocess]
        args += ["--variant", variant] if family != "ezvsl" else []
        args += ["--object-prior", weights / "resnet18.pth"] if prior else []
        code, text = cli(*args)
        assert code == 0, text
    return out


def their_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The frame and spectrogram tensors their datasets.py made (the frame stored as the uint8
    image their ToTensor read, the spectrogram as their float32 tensor)."""
    inp = np.load(FIXTURES / "inputs.npz")
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    frame = (inp["frame"].transpose(2, 0, 1) / np.float32(255) - mean) / std
    return torch.from_numpy(frame.astype(np.float32))[None], torch.from_numpy(inp["spec"])[None]


@pytest.mark.parametrize("family, variant, av_key, obj_key", VARIANTS)
def test_model_maps_equal_the_authors_code(weights, family, variant, av_key, obj_key):
    """Model only: on the authors' own input tensors, soundloc's networks give their 7x7 logits
    (x tau) and object prior, and their test code's 224x224 maps (upsampling and normalisation of
    the variant), with and without the prior, to <= 1e-4; SLAVC's confidence too."""
    from soundloc.model.checkpoint import load_checkpoint

    ref = np.load(FIXTURES / f"{family}.npz")
    image, spec = their_inputs()
    model, data = load_checkpoint(imported(weights, family, variant, prior=True))
    assert data["imported"]["variant"] == variant and len(data["imported"]["sha256"]) == 64
    with torch.no_grad():
        cos = torch.einsum("bdhw,bd->bhw", model.image(image), model.audio(spec))[0].numpy()
        prior = model.prior(image)[0].numpy()
    savl = ref[f"savl7_{variant}"] if family == "slavc" else ref["savl7"]
    np.testing.assert_allclose(cos, savl * TAU, atol=1e-4)
    np.testing.assert_allclose(prior, ref["prior7"], atol=1e-4)
    rule = family_of(model.config).map_rule(model.config)
    av, av_obj = authors.eval_map(cos, None, None, rule), authors.eval_map(cos, prior, 0.4, rule)
    # the fixture keeps every third row and column of their 224x224 maps (README)
    np.testing.assert_allclose(av[::3, ::3], ref[av_key], atol=1e-4)
    np.testing.assert_allclose(av_obj[::3, ::3], ref[obj_key], atol=1e-4)
    # the streamed (7x7) map: their logits and prior blended as their test code blends them
    with torch.no_grad():
        streamed = model.maps(model.image(image), model.audio(spec), model.prior(image))[0].numpy()
    if family == "slavc":  # fixed ranges: the logits' [-1/tau, 1/tau], the prior's [0, 2.5]
        want = 0.4 * (savl * TAU + 1) / 2 + 0.6 * ref["prior7"] / 2.5
    else:
        want = 0.4 * authors.normalize_img(savl) + 0.6 * authors.normalize_img(ref["prior7"])
    np.testing.assert_allclose(streamed, want, atol=1e-4)
    if family == "slavc":
        assert top_quarter_mean(av) == pytest.approx(float(ref[f"conf_av_{variant}"]), abs=1e-4)
        assert top_quarter_mean(av_obj) == pytest.approx(float(ref[f"conf_av_obj_{variant}"]), abs=1e-4)


def test_variants_differ_where_their_authors_differ(weights):
    """The variants are not aliases: FNAC's two upsamplings and SLAVC's two encoder sets give
    different maps (a wiring mistake that picked one for both would pass the fixture test once)."""
    fnac, slavc = np.load(FIXTURES / "fnac.npz"), np.load(FIXTURES / "slavc.npz")
    assert np.abs(fnac["pred_av_bilinear"] - fnac["pred_av_bicubic"]).max() > 1e-3
    assert np.abs(slavc["savl7_online"] - slavc["savl7_momentum"]).max() > 1e-2


def test_authors_preprocessing_reproduces_their_inputs_and_maps(weights, still_folder):
    """End to end on the real files: with --preprocess authors soundloc's frame and spectrogram
    are their tensors and `eval`'s map is their scored map (<= 1e-4); soundloc's default path
    differs by what docs/published.md states, with the same peak."""
    from soundloc.families import ezvsl_file_inputs
    from soundloc.model.inference import maps_from_checkpoint
    from soundloc.stills import find_clip

    ckpt = imported(weights, "ezvsl", "cosine", prior=True)
    image, spec = their_inputs()
    from soundloc.model.checkpoint import load_checkpoint

    config = load_checkpoint(ckpt)[0].config
    frames, specs = ezvsl_file_inputs(find_clip(still_folder, CLIP), config)
    np.testing.assert_allclose(frames[0, :, 0], image[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(specs[0, 0], spec[0, 0].numpy(), atol=1e-6)
    ref = np.load(FIXTURES / "ezvsl.npz")["pred_av_obj_bilinear"]
    got = {}
    for pre in ("authors", "soundloc"):
        maps, skipped, _ = maps_from_checkpoint(ckpt, still_folder, [CLIP], progress=False, preprocess=pre)
        assert not skipped.items
        got[pre] = maps[CLIP]
    assert got["authors"].shape == (224, 224)
    np.testing.assert_allclose(got["authors"][::3, ::3], ref, atol=1e-4)
    from soundloc.metrics import prediction

    default = prediction(got["soundloc"], "ezvsl")[0][::3, ::3]  # the 7x7 map as eval scores it
    diff = np.abs(default - ref).max()
    assert 1e-3 < diff < 0.1, diff  # docs/published.md: 0.039 on this clip
    assert np.unravel_index(default.argmax(), default.shape) == np.unravel_index(ref.argmax(), ref.shape)


@pytest.mark.parametrize("family", ["fnac", "slavc"])
def test_checkpoint_as_saved_by_their_training_imports_by_name(weights, tmp_path, family):
    from soundloc.model.checkpoint import load_checkpoint

    for prefix in ("", "module."):
        save_authors(tmp_path / "ck.pth", authors_state(family, prefix))
        variant = "momentum" if family == "slavc" else "bicubic"
        code, out = cli("import", family, tmp_path / "ck.pth", "--out", tmp_path / f"m{prefix}.pt", "--variant", variant)
        assert code == 0, out
        model, _ = load_checkpoint(tmp_path / f"m{prefix}.pt")
        assert model.config.family == family and model.config.variant == variant
        src = authors_state(family, "")
        own = model.state_dict()
        pick = "momentum_" if family == "slavc" else ""
        for k, v in own.items():
            assert torch.equal(v, src[pick + k]), k
        if family == "slavc":  # the other encoder set is checked but not kept
            assert not any(k.startswith("momentum_") for k in own)


@pytest.mark.parametrize("family, change, key", [
    ("fnac", "drop", "audnet.layer2.0.downsample.1.running_mean"),
    ("fnac", "shape", "img_proj.weight"),
    ("fnac", "extra", "imgnet.fc.weight"),
    ("slavc", "drop", "img_proj2.bias"),
    ("slavc", "drop", "momentum_aud_proj1.weight"),
    ("slavc", "shape", "aud_proj2.weight"),
    ("slavc", "extra", "img_proj3.weight"),
    ("slavc", "nan", "momentum_img_proj2.weight"),
])
def test_bad_keys_are_refused_by_name(tmp_path, family, change, key):
    state = authors_state(family)
    damage(state, f"module.{key}", change)
    save_authors(tmp_path / "ck.pth", state)
    code, out = cli("import", family, tmp_path / "ck.pth", "--out", tmp_path / "m.pt")
    assert code != 0
    name = key.removeprefix("momentum_")
    assert repr(name) in out, out
    assert DAMAGE_WORDS[change] in out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("family", ["fnac", "slavc"])
def test_a_pickle_is_refused_without_running_it(tmp_path, family):
    """A checkpoint whose unpickling would run code (here: create a file) is refused by
    weights_only loading, and the code never runs."""
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")  # the zip format their torch.save writes
    with open(tmp_path / "evil.pkl", "wb") as f:  # and a bare (legacy) pickle
        pickle.dump({"model": Payload()}, f)
    code, out = cli("import", family, tmp_path / "evil.pkl", "--out", tmp_path / "m.pt")
    assert code != 0 and "evil.pkl" in out and not marker.exists()
    code, out = cli("import", family, tmp_path / "evil.pth", "--out", tmp_path / "m.pt")
    assert code != 0 and "evil.pth" in out
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_unknown_variant_and_preprocessing_are_refused(weights, tmp_path):
    code, out = cli("import", "slavc", weights / "slavc.pth", "--out", tmp_path / "m.pt", "--variant", "target")
    assert code != 0 and "online" in out and "momentum" in out and not (tmp_path / "m.pt").exists()
    code, out = cli("import", "fnac", weights / "ezvsl.pth", "--out", tmp_path / "m.pt", "--preprocess", "pil")
    assert code != 0 and "authors" in out and not (tmp_path / "m.pt").exists()


def export_verified(ckpt: Path, tmp_path: Path) -> tuple[dict, str, str]:
    """`soundloc export CKPT --verify` into tmp_path/export, asserted to pass within its own
    allowances (stream vs offline, ONNX vs torch); the verify report, `info`'s output and its
    model line."""
    code, text = cli("export", ckpt, "--out", tmp_path / "export", "--verify", "--json", tmp_path / "export.json")
    assert code == 0, text
    report = json.loads((tmp_path / "export.json").read_text())["verify"]
    assert report["ok"], report
    assert report["stream_vs_offline"]["alpha"] <= report["allowed"]["alpha"]
    assert report["offline_vs_torch"]["alpha"] <= report["allowed"]["alpha"]
    code, text = cli("info", tmp_path / "export")
    assert code == 0, text
    return report, text, next(ln for ln in text.splitlines() if ln.startswith("model"))


@pytest.mark.parametrize("family, variant, prior", [("fnac", "bicubic", False), ("slavc", "online", True),
                                                    ("slavc", "momentum", False)])
def test_export_verifies_stream_vs_offline_and_onnx_vs_torch(weights, tmp_path, family, variant, prior):
    """`soundloc export --verify` for each family and map variant (FNAC's two variants share
    their 7x7 maps: they differ only in how `eval` upsamples, tested above); info names it."""
    report, text, line = export_verified(imported(weights, family, variant, prior), tmp_path)
    assert ("prior" in report["offline_vs_torch"]) == prior
    assert f"{family}, variant {variant}" in line and "preprocessing authors'" in line
    sha = json.loads((tmp_path / "export" / "soundloc.json").read_text())["checkpoint"]["imported"]["sha256"]
    import hashlib

    src = weights / ("slavc.pth" if family == "slavc" else "ezvsl.pth")
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest() and sha in text
    streamed_events(tmp_path)


def streamed_events(tmp_path: Path) -> list[dict]:
    """`soundloc stream` of tmp_path/export on a real H.264 + AAC file (2 s): one finite,
    ungated event per step."""
    from soundloc.data.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "synth", num_clips=1, seed=3, seconds=2.0, workers=1, size=64)
    clip = next((tmp_path / "synth" / "videos").glob("*.mp4"))
    code, text = cli("stream", tmp_path / "export", "--video", clip, "--events", tmp_path / "ev.jsonl", "--gate-db", "-200")
    assert code == 0, text
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert len(events) == 20 and all(np.isfinite(e["score"]) and e["peak"] is not None for e in events)
    return events


@pytest.mark.parametrize("family", ["fnac", "slavc"])
def test_int8_is_refused_clearly(weights, tmp_path, family):
    ckpt = imported(weights, family, "bilinear" if family == "fnac" else "online", prior=False)
    code, out = cli("export", ckpt, "--out", tmp_path / "x", "--precision", "int8", "--calib", tmp_path)
    assert code != 0 and "int8" in out and family in out
    assert not (tmp_path / "x" / "soundloc.json").exists()


def test_info_on_a_checkpoint_prints_one_model_line(weights):
    code, text = cli("info", imported(weights, "slavc", "momentum", prior=True, preprocess="soundloc"))
    assert code == 0, text
    line = next(ln for ln in text.splitlines() if ln.startswith("model:"))
    assert "slavc, variant momentum, object prior alpha 0.4; preprocessing soundloc's default" in line
    assert "imported: slavc.pth sha256 " in text
