"""LVS and SSL-Align as soundloc families: checkpoints saved the way their authors' code saves and
reads them import by name (bad ones refused by name, pickles without running anything); with
``--preprocess authors`` soundloc's inputs, 14x14 maps, scored 224x224 maps, thresholds and cIoUs
equal what the authors' own code computed on a real VGG-SS clip's audio and a real photograph
(tests/fixtures/published, README there) to <= 1e-4, SSL-Align's object-guided ("OGL") map too; both export and verify (stream vs offline,
ONNX vs torch) through real onnxruntime sessions and stream a real H.264 + AAC file; int8 is
refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) needed to build published checkpoints")
pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from published_weights import DAMAGE_WORDS, damage, lvs_state, prior_state, save_lvs  # noqa: E402
from test_ezvsl import cli  # noqa: E402
from test_published import CLIP, FIXTURES, export_verified, shared_dir_module, streamed_events, still_folder  # noqa: E402,F401  (fixtures)

from soundloc import authors, metrics  # noqa: E402
from soundloc.families import family_of  # noqa: E402

# (family, variant, the fixture's 224x224 map key, its median and adaptive thresholds' cIoU keys)
VARIANTS = [("lvs", "cosine", "pred_cosine", "ciou_cosine", None),
            ("sslalign", "vggss", "pred_vggss", "ciou_vggss", "ciou_adap_vggss"),
            ("sslalign", "flickr", "pred_flickr", "ciou_flickr", "ciou_adap_flickr")]


def save_sslalign(path: Path, state: dict) -> None:
    """SSL-Align's checkpoint as its test.py reads it ('ours': checkpoint['model_state_dict'], keys
    without the DataParallel prefix, which its loader adds)."""
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "epoch": np.int64(30), "best_cIoU": np.float64(0.41)}, path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("lvs")
    save_lvs(root / "lvs.pth.tar", lvs_state("module.", seed=0))
    save_sslalign(root / "ours.pth", lvs_state("", seed=0))
    torch.save(prior_state(), root / "resnet18.pth")  # the object prior's ImageNet resnet18 (seed 7)
    yield root
    shutil.rmtree(root, ignore_errors=True)  # full-size checkpoints: freed when the module ends


def imported(weights: Path, family: str, variant: str, preprocess: str = "authors", prior: bool = False) -> Path:
    out = weights / f"{family}-{variant}-{preprocess}-{prior}.pt"
    if not out.exists():
        src = weights / ("lvs.pth.tar" if family == "lvs" else "ours.pth")
        args = ["import", family, src, "--out", out, "--preprocess", preprocess]
        args += ["--variant", variant] if family == "sslalign" else []
        args += ["--object-prior", weights / "resnet18.pth"] if prior else []
        code, text = cli(*args)
        assert code == 0, text
        assert f"variant {variant}" in text
    return out


def gt_map(ref) -> np.ndarray:
    return np.unpackbits(ref["gt_bits"])[:224 * 224].reshape(224, 224).astype(np.float64)


@pytest.mark.parametrize("family, variant, key, ciou_key, adaptive_key", VARIANTS)
def test_maps_and_thresholds_equal_the_authors_code(weights, still_folder, family, variant, key, ciou_key,
                                                    adaptive_key):
    """With --preprocess authors, from the real files: their frame and spectrogram tensors (LVS:
    PIL resize + centre crop, 10 s at noverlap 274; SSL-Align: tensor resize, [3.5 s, 6.5 s) at
    noverlap 353), their 14x14 map, their scored 224x224 map (cv2 or align_corners upsampling) and
    the cIoU their threshold gives (median; SSL-Align's adaptive too), each to <= 1e-4."""
    from soundloc.model.checkpoint import load_checkpoint
    from soundloc.stills import find_clip

    ref = np.load(FIXTURES / f"{family}.npz")
    model, data = load_checkpoint(imported(weights, family, variant))
    assert data["imported"]["variant"] == variant and len(data["imported"]["sha256"]) == 64
    fam = family_of(model.config)
    frames, specs = fam.file_inputs(find_clip(still_folder, CLIP), model.config)
    assert specs.shape[-2:] == {"lvs": (257, 671), "sslalign": (257, 299)}[family]
    # the fixture keeps every third row and column of their input tensors (README)
    np.testing.assert_allclose(frames[0, :, 0, ::3, ::3], ref["image3"], atol=1e-4)
    np.testing.assert_allclose(specs[0, :, ::3, ::3], ref["spec3"], atol=1e-4)
    with torch.no_grad():
        cos = torch.einsum("bdhw,bd->bhw", model.image(torch.from_numpy(frames[:, :, 0])),
                           model.audio(torch.from_numpy(specs[:, :1])))[0].numpy()
    assert cos.shape == (14, 14)
    np.testing.assert_allclose(cos, ref["A14"], atol=1e-4)
    p = authors.eval_map(cos, None, None, fam.map_rule(model.config))
    np.testing.assert_allclose(p[::3, ::3], ref[key], atol=1e-4)
    gt = gt_map(ref)
    # the maps agree to ~3e-6, so a pixel that close to the threshold may fall the other way:
    # 1e-4 of cIoU is about 3 pixels of this clip's union (measured: 0 for LVS, 1 pixel for SSL-Align)
    assert metrics.score_map(p, gt, "lvs").ciou == pytest.approx(float(ref[ciou_key]), abs=1e-4)
    if family == "lvs":  # and the very pixels their binarisation kept
        want = np.unpackbits(ref["bin_cosine_bits"])[:224 * 224].reshape(224, 224)
        assert np.array_equal(metrics.binarize(p, "lvs"), want)
    if adaptive_key:
        adaptive = metrics.score_map(p, gt, "lvs", threshold="adaptive")
        assert adaptive.ciou == pytest.approx(float(ref[adaptive_key]), abs=1e-4)
        assert adaptive.pred_pixels == pytest.approx(gt.sum(), abs=2)  # as many pixels as the box (up to ties)


@pytest.mark.parametrize("variant", ["vggss", "flickr"])
def test_ogl_blend_equals_the_authors_code(weights, still_folder, variant):
    """SSL-Align's object-guided map ("OGL", its test.py's validate_lvs) from the real files with
    --preprocess authors: the 7x7 object prior, their blended 224x224 map (prior and map each
    resized as the variant resizes, normalised, 0.4 * map + 0.6 * prior, normalised again) and
    the cIoU of its median and adaptive thresholds (their evaluator_ogl), each to <= 1e-4; `eval`'s
    own path gives that map; the streamed 14x14 map is the blend docs/published.md states."""
    from soundloc.model.checkpoint import load_checkpoint
    from soundloc.model.inference import maps_from_checkpoint
    from soundloc.stills import find_clip

    ref = np.load(FIXTURES / "sslalign.npz")
    ckpt = imported(weights, "sslalign", variant, prior=True)
    model, data = load_checkpoint(ckpt)
    assert data["imported"]["object_prior"]["alpha"] == 0.4
    fam = family_of(model.config)
    frames, specs = fam.file_inputs(find_clip(still_folder, CLIP), model.config)
    image = torch.from_numpy(frames[:, :, 0])
    with torch.no_grad():
        V, za, prior = model.image(image), model.audio(torch.from_numpy(specs[:, :1])), model.prior(image)
        cos = torch.einsum("bdhw,bd->bhw", V, za)[0].numpy()
        streamed = model.maps(V, za, prior)[0].numpy()
    prior = prior[0].numpy()
    assert prior.shape == (7, 7) and streamed.shape == (14, 14)
    np.testing.assert_allclose(prior, ref["prior7"], atol=1e-4)
    p = authors.eval_map(cos, prior, 0.4, fam.map_rule(model.config))
    np.testing.assert_allclose(p[::3, ::3], ref[f"pred_ogl_{variant}"], atol=1e-4)
    assert np.abs(p[::3, ::3] - ref[f"pred_{variant}"]).max() > 0.05  # the prior changed the map
    gt = gt_map(ref)
    assert metrics.score_map(p, gt, "lvs").ciou == pytest.approx(float(ref[f"ciou_ogl_{variant}"]), abs=1e-4)
    adaptive = metrics.score_map(p, gt, "lvs", threshold="adaptive")
    assert adaptive.ciou == pytest.approx(float(ref[f"ciou_ogl_adap_{variant}"]), abs=1e-4)
    maps, skipped, _ = maps_from_checkpoint(ckpt, still_folder, [CLIP], progress=False)
    assert not skipped.items
    np.testing.assert_allclose(maps[CLIP][::3, ::3], ref[f"pred_ogl_{variant}"], atol=1e-4)
    # streamed: at the map's 14x14, the prior resized with pixel centres aligned (cv2's INTER_LINEAR)
    prior14 = authors.upsample(ref["prior7"], 14, "bilinear", align_corners=False)
    want = 0.4 * authors.normalize_img(ref["A14"]) + 0.6 * authors.normalize_img(prior14)
    np.testing.assert_allclose(streamed, want, atol=1e-4)


def test_lvs_refuses_an_object_prior_and_says_where_it_is(weights):
    """LVS's own test code has no object prior; SSL-Align's test.py blends one into LVS
    checkpoints through its own loader, which is the sslalign family: the refusal says so."""
    from soundloc.model.published import ModelImportError, convert

    with pytest.raises(ModelImportError, match="soundloc import sslalign --object-prior"):
        convert(weights / "lvs.pth.tar", weights / "resnet18.pth", family="lvs")
    # ... and the way it names works: LVS's checkpoint (module. keys) as sslalign, with the prior
    model = convert(weights / "lvs.pth.tar", weights / "resnet18.pth", family="sslalign")
    assert model.objnet is not None and model.config.prior_alpha == 0.4
    code, out = cli("import", "lvs", weights / "lvs.pth.tar", "--out", weights / "x.pt",
                    "--object-prior", weights / "resnet18.pth")
    assert code != 0 and not (weights / "x.pt").exists()


@pytest.mark.parametrize("family, variant", [("lvs", "cosine"), ("sslalign", "vggss")])
def test_eval_path_with_either_preprocessing(weights, still_folder, family, variant):
    """`eval`'s maps from the authors' frames/ + audio/ layout: with their preprocessing, their
    map (<= 1e-4); with soundloc's default path (swscale-free still read, zero-padded centred
    window), a different map with the difference docs/published.md states."""
    from soundloc.model.inference import maps_from_checkpoint

    ref = np.load(FIXTURES / f"{family}.npz")[f"pred_{variant}"]
    got = {}
    for pre in ("authors", "soundloc"):
        maps, skipped, _ = maps_from_checkpoint(imported(weights, family, variant), still_folder, [CLIP],
                                                progress=False, preprocess=pre)
        assert not skipped.items
        got[pre] = maps[CLIP]
    np.testing.assert_allclose(got["authors"][::3, ::3], ref, atol=1e-4)
    default = metrics.prediction(got["soundloc"], "lvs")[0][::3, ::3]
    diff = float(np.abs(default - ref).max())
    assert 1e-4 < diff < 0.5, diff


def test_sslalign_takes_the_first_channel_and_lvs_the_mean(tmp_path):
    """Stereo with known channels: SSL-Align's loader keeps the left channel (its `samples[:, 0]`),
    LVS's path the channel mean; both / 32768 as soundfile reads int16."""
    from scipy.io import wavfile

    n = 16000 * 4
    left = (np.sin(np.arange(n) * 0.05) * 8000).astype(np.int16)
    right = np.full(n, 2000, np.int16)
    wavfile.write(tmp_path / "s.wav", 16000, np.stack([left, right], axis=1))
    ssl, lvs = family_of({"family": "sslalign"}).loader, family_of({"family": "lvs"}).loader
    a = ssl.read_audio(tmp_path / "s.wav")
    np.testing.assert_array_equal(a.samples, left)
    b = lvs.read_audio(tmp_path / "s.wav")
    assert np.abs(b.samples.astype(np.int32) - (left.astype(np.int32) + right) / 2).max() <= 1
    # SSL-Align's window: [3.5 s, 6.5 s) of the file tiled to 10 s (4 s -> 0-4, 0-4, 0-2)
    w = ssl.window(a)
    assert len(w) == 48000
    np.testing.assert_allclose(w, np.tile(left, 3)[56000:104000] / 32768)


def test_checkpoints_as_their_code_saves_them_import_by_name(weights):
    from soundloc.model.checkpoint import load_checkpoint

    src = lvs_state("", seed=0)
    for family in ("lvs", "sslalign"):
        model, _ = load_checkpoint(imported(weights, family, "cosine" if family == "lvs" else "flickr"))
        own = model.state_dict()
        assert set(own) == set(src)  # every key of theirs, the unused stems and fc included
        for k, v in own.items():
            assert torch.equal(v, src[k]), k


@pytest.mark.parametrize("change, key", [("drop", "imgnet.conv1_flow.weight"), ("drop", "audnet.fc.bias"),
                                         ("shape", "audnet.layer4.0.downsample.0.weight"),
                                         ("extra", "m.weight"), ("nan", "imgnet.layer3.1.conv2.weight")])
@pytest.mark.parametrize("family", ["lvs", "sslalign"])
def test_bad_keys_are_refused_by_name(tmp_path, family, change, key):
    state = lvs_state("module." if family == "lvs" else "", seed=0)
    damage(state, ("module." if family == "lvs" else "") + key, change)
    save_lvs(tmp_path / "ck.pth", state)
    code, out = cli("import", family, tmp_path / "ck.pth", "--out", tmp_path / "m.pt")
    assert code != 0 and repr(key) in out, out
    assert DAMAGE_WORDS[change] in out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("family", ["lvs", "sslalign"])
def test_a_pickle_is_refused_without_running_it(tmp_path, family):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model_state_dict": Payload()}, tmp_path / "evil.pth")
    code, out = cli("import", family, tmp_path / "evil.pth", "--out", tmp_path / "m.pt")
    assert code != 0 and "evil.pth" in out
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("family, variant, prior", [("lvs", "cosine", False), ("sslalign", "flickr", False),
                                                    ("sslalign", "vggss", True)])
def test_export_verifies_and_streams(weights, tmp_path, family, variant, prior):
    """`soundloc export --verify` (the 14x14 step graph one frame per call vs the offline graphs vs
    PyTorch; with the object prior, its 7x7 output and the 14x14 blend), `soundloc info`'s model
    line, int8 refused, and `soundloc stream` on a real H.264 + AAC file (SSL-Align's variants
    share the map: they differ only in `eval`'s upsampling, above)."""
    ckpt = imported(weights, family, variant, prior=prior)
    report, _, line = export_verified(ckpt, tmp_path)
    assert ("prior" in report["offline_vs_torch"]) == prior
    assert f"{family}, variant {variant}" in line and ("object prior alpha 0.4" in line) == prior
    code, out = cli("export", ckpt, "--out", tmp_path / "x", "--precision", "int8", "--calib", tmp_path)
    assert code != 0 and "int8" in out and family in out and not (tmp_path / "x" / "soundloc.json").exists()
    events = streamed_events(tmp_path)
    # a 14x14 map: every peak sits at a cell centre of a 14-cell grid
    cells = np.array([e["peak"] for e in events]) * 14 - 0.5
    np.testing.assert_allclose(cells, np.round(cells), atol=1e-3)


def test_eval_threshold_option_scores_as_their_code(tmp_path):
    """`soundloc eval --threshold adaptive|median` scores a --maps file with `metrics.score_map`'s rule
    (whose cIoUs equal SSL-Align's own, tested above), here on a map made from their scored map and
    their box; an adaptive rule is recorded in the JSON; an unknown rule is refused."""
    ref = np.load(FIXTURES / "sslalign.npz")
    gt = gt_map(ref)
    ys, xs = np.nonzero(gt)  # the box their json gave, back in [0, 1] (pixels int(224 * v))
    box = [xs.min() / 224, ys.min() / 224, (xs.max() + 1) / 224, (ys.max() + 1) / 224]
    np.testing.assert_array_equal(metrics.union_gt_map([tuple(box)]), gt)
    (tmp_path / "vggss.json").write_text(json.dumps([{"file": CLIP, "class": "x", "bbox": [box]}]))
    full = np.kron(ref["pred_vggss"], np.ones((3, 3)))[:224, :224]  # not their map: a 224 map to score
    np.savez(tmp_path / "maps.npz", **{CLIP: full})
    got = {}
    for rule in ("median", "adaptive"):
        code, out = cli("eval", "--maps", tmp_path / "maps.npz", "--annotations", tmp_path / "vggss.json",
                        "--threshold", rule, "--json", tmp_path / f"{rule}.json")
        assert code == 0, out
        got[rule] = json.loads((tmp_path / f"{rule}.json").read_text())
    assert got["adaptive"]["threshold"] == "adaptive" and "threshold" not in got["median"]
    want = {r: metrics.score_map(full, gt, "lvs", threshold=r).ciou for r in ("median", "adaptive")}
    assert want["median"] != want["adaptive"]
    for r in ("median", "adaptive"):
        assert got[r]["summary"]["mean_ciou"] == pytest.approx(want[r], abs=1e-9)
    code, out = cli("eval", "--maps", tmp_path / "maps.npz", "--annotations", tmp_path / "vggss.json",
                    "--threshold", "top")
    assert code != 0 and "median, adaptive" in out
