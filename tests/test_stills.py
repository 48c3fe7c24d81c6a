"""The authors' test layout (frames/<id>.jpg + audio/<id>.wav) for eval, moments and annotate,
with real JPEG and WAV files, on a default-recipe classifier and on an imported EZ-VSL; and the
pieces of the authors' preprocessing (soundloc.authors) against what their code does: the audio
window and its repetition, the mono mix of a stereo file with known channels, the clipping, and
the map upsampling against torch's F.interpolate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from soundloc import authors

CLIP = "FwVYUHKoLtQ_000034"


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> Path:
    wavfile.write(path, rate, samples)
    return path


def test_audio_window_is_centred_on_the_files_duration(tmp_path):
    """A 10 s wav whose samples count themselves: the 3 s window starts at 10 / 2 - 1.5 = 3.5 s,
    sample 56,000, and holds the file's int16 values / 32767."""
    values = ((np.arange(160_000) % 20_000) - 10_000).astype(np.int16)
    track = authors.read_track(write_wav(tmp_path / "a.wav", values))
    assert track.duration == pytest.approx(10.0) and authors.centre_start(track) == pytest.approx(3.5)
    got = authors.window(track, authors.centre_start(track))
    np.testing.assert_array_equal(got, values[56_000:104_000] / 32767)


def test_short_clip_is_repeated_and_extremes_clipped(tmp_path):
    values = np.linspace(-32768, 32767, 16_000).astype(np.int16)  # 1 s, from -1.00003 to 1
    track = authors.read_track(write_wav(tmp_path / "s.wav", values))
    got = authors.window(track, authors.centre_start(track))
    assert authors.centre_start(track) == 0.0 and len(got) == 48_000
    np.testing.assert_array_equal(got, np.tile(np.clip(values / 32767, -1, 1), 3))
    assert got.min() == -1.0


def test_stereo_is_mixed_to_the_channel_mean(tmp_path):
    """Known channels: L = 0.5 full scale, R = a sine; their loader's s16 mono mix is (L+R)/2
    (to one step of rounding), not libswresample's float (L+R)/sqrt(2)."""
    n = 64_000
    left = np.full(n, 16_000, np.int16)
    right = (8_000 * np.sin(np.arange(n) / 30)).astype(np.int16)
    track = authors.read_track(write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1)))
    got = authors.window(track, authors.centre_start(track))
    want = (left.astype(np.float64) + right)[8_000:56_000] / 2 / 32767
    np.testing.assert_allclose(got, want, atol=1.01 / 32767)


@pytest.mark.parametrize("mode, align", [("bilinear", True), ("bilinear", False), ("bicubic", True),
                                         ("bicubic", False)])
@pytest.mark.parametrize("side", [7, 14])
def test_upsampling_equals_torch_interpolate(mode, align, side):
    torch = pytest.importorskip("torch", reason="torch (the train extra) is the reference")
    m = np.random.default_rng(side).standard_normal((side, side))
    want = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(224, 224), mode=mode,
                                           align_corners=align)[0, 0].numpy()
    np.testing.assert_allclose(authors.upsample(m, 224, mode, align), want, atol=1e-9)


# -- the layout -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def still_folder(tmp_path_factory) -> Path:
    """Two clips as the authors distribute VGG-SS: a real photograph (matplotlib's sample JPEG)
    with the real VGGSound wav, and a PIL-encoded JPEG with a 4 s stereo wav; plus a frame with no
    audio (not a clip) and the boxes."""
    from conftest import SHARED
    from PIL import Image

    cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib (the train extra) ships the sample photo")
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    root = tmp_path_factory.mktemp("stills")
    (root / "frames").mkdir()
    (root / "audio").mkdir()
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), root / "frames" / f"{CLIP}.jpg")
    shutil.copy(SHARED / "data" / "vggsound" / f"{CLIP}.wav", root / "audio" / f"{CLIP}.wav")
    rng = np.random.default_rng(0)
    picture = np.zeros((300, 400, 3), np.uint8)
    picture[60:200, 220:360] = (230, 40, 30)
    Image.fromarray(picture + rng.integers(0, 20, picture.shape, dtype=np.uint8)).save(root / "frames" / "b_000001.jpg")
    tone = (6000 * np.sin(np.arange(64_000) * 2 * np.pi * 440 / 16_000)).astype(np.int16)
    write_wav(root / "audio" / "b_000001.wav", np.stack([tone, tone // 2], axis=1))
    Image.fromarray(picture).save(root / "frames" / "lonely.jpg")
    (root / "vggss.json").write_text(json.dumps([
        {"file": CLIP, "class": "playing violin, fiddle", "bbox": [[0.496875, 0.0625, 0.903125, 0.825]]},
        {"file": "b_000001", "class": "red square", "bbox": [[0.55, 0.2, 0.9, 0.66]]}]))
    return root


def test_layout_lists_clips_with_both_files(still_folder):
    from soundloc.stills import StillClip, find_clip, list_clips

    clips = list_clips(still_folder)
    assert [c for c, _ in clips] == ["FwVYUHKoLtQ_000034", "b_000001"]
    assert all(isinstance(p, StillClip) for _, p in clips)
    from soundloc.data.annotations import AnnotationError

    assert find_clip(still_folder, "lonely") is None
    with pytest.raises(AnnotationError, match="escapes"):  # as for videos: an id never leaves the folder
        find_clip(still_folder, "../frames/b_000001")


@pytest.fixture(scope="module")
def ezvsl_ckpt(tmp_path_factory) -> Iterator[Path]:
    pytest.importorskip("torch", reason="torch (the train extra) needed to build the EZ-VSL checkpoint")
    from published_weights import ezvsl_state, save_authors
    from test_ezvsl import cli

    root = tmp_path_factory.mktemp("ez")
    save_authors(root / "best.pth", ezvsl_state("module.", seed=0))
    code, out = cli("import", "ezvsl", root / "best.pth", "--out", root / "ezvsl.pt")
    assert code == 0, out
    yield root / "ezvsl.pt"
    shutil.rmtree(root, ignore_errors=True)  # a full-size checkpoint: freed when the module ends


@pytest.mark.parametrize("model", ["default_recipe", "ezvsl_authors", "ezvsl_default"])
def test_eval_moments_annotate_take_the_layout(still_folder, default_run, ezvsl_ckpt, tmp_path, model):
    """Every command that reads clips takes the folder: eval scores both clips, moments and
    annotate give each its entry. The classifier sees the frame held over the whole wav."""
    from test_ezvsl import cli

    ckpt = default_run.ckpt if model == "default_recipe" else ezvsl_ckpt
    pre = ["--preprocess", "authors"] if model == "ezvsl_authors" else []
    code, out = cli("eval", ckpt, "--videos", still_folder, "--annotations", still_folder / "vggss.json",
                    "--protocol", "ezvsl", "--json", tmp_path / "e.json", *pre)
    assert code == 0, out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["summary"]["n"] == 2 and result["counts"]["missing_maps"] == 0
    code, out = cli("moments", ckpt, still_folder, "--json", tmp_path / "m.json", *pre)
    assert code == 0, out
    moments = json.loads((tmp_path / "m.json").read_text())
    assert sorted(moments) == ["FwVYUHKoLtQ_000034", "b_000001"]
    if model != "default_recipe":
        assert all(m[0]["frame"] == 0 for m in moments.values())  # one frame per clip
    else:  # the held frame at 10 steps a second: within the 10 s and 4 s wavs
        assert moments[CLIP][0]["time_s"] < 10.0 and moments["b_000001"][0]["time_s"] < 4.0
    code, out = cli("annotate", ckpt, still_folder, "--out", tmp_path / "boxes.json", *pre)
    assert code == 0, out
    entries = {e["file"]: e for e in json.loads((tmp_path / "boxes.json").read_text())}
    assert sorted(entries) == ["FwVYUHKoLtQ_000034", "b_000001"]
    assert all(len(e["bbox"]) == 1 for e in entries.values())


def test_authors_preprocessing_is_refused_for_the_classifier(still_folder, default_run, tmp_path):
    from test_ezvsl import cli

    code, out = cli("moments", default_run.ckpt, still_folder, "--json", tmp_path / "m.json", "--preprocess", "authors")
    assert code != 0 and "classifier" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "m.json").exists()


def test_a_corrupt_frame_is_skipped_with_its_reason(still_folder, ezvsl_ckpt, tmp_path):
    from test_ezvsl import cli

    folder = tmp_path / "bad"
    shutil.copytree(still_folder, folder)
    (folder / "frames" / "b_000001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for pre in ("soundloc", "authors"):
        code, out = cli("moments", ezvsl_ckpt, folder, "--json", tmp_path / f"m_{pre}.json", "--preprocess", pre)
        assert code == 0, out
        assert list(json.loads((tmp_path / f"m_{pre}.json").read_text())) == [CLIP]
        assert "b_000001" in out and "b_000001.jpg" in out


def test_authors_path_on_a_video_matches_their_layout_of_the_same_content(tmp_path):
    """A video made of a real photo (H.264) and a wav's sound (AAC): with --preprocess authors its
    middle frame is resized from the full decoded frame as PIL resizes the jpg (closer to it than
    the default path's swscale), and its audio window is centred on the audio's duration / 2 as
    for the wav (the spectrograms agree better there than 0.1 s away)."""
    import dataclasses

    from PIL import Image

    from soundloc.config import Config
    from soundloc.encode import write_mp4
    from soundloc.families import ezvsl_file_inputs
    from soundloc.stills import StillClip

    cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib (the train extra) ships the sample photo")
    jpg = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    rgb = np.asarray(Image.open(jpg).convert("RGB"))
    rng = np.random.default_rng(1)
    t = np.arange(4 * 16_000) / 16_000
    sound = (0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t) * (1 + np.sin(2 * np.pi * 1.3 * t))
             + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    wav = write_wav(tmp_path / "c.wav", (sound * 32767).astype(np.int16))
    write_mp4(tmp_path / "c.mp4", np.repeat(rgb[None], 100, axis=0), 25, sound, 16_000)
    cfg = Config(family="ezvsl", image_size=224, num_classes=0, window_seconds=0.1, map_kind="cosine",
                 preprocess="authors")
    ref_v, ref_s = ezvsl_file_inputs(StillClip(jpg, wav), cfg)
    vid_v, vid_s = ezvsl_file_inputs(tmp_path / "c.mp4", cfg)
    dflt_v, _ = ezvsl_file_inputs(tmp_path / "c.mp4", dataclasses.replace(cfg, preprocess="soundloc"))
    mid = vid_v.shape[2] // 2
    authors_gap = np.abs(vid_v[0, :, mid] - ref_v[0, :, 0]).mean()
    default_gap = np.abs(dflt_v[0, :, mid] - ref_v[0, :, 0]).mean()
    assert authors_gap < 0.05 and authors_gap < default_gap  # normalised units (0.05 ~ 3 grey levels)

    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert corr(vid_s[0, mid], ref_s[0, 0]) > 0.95
    assert corr(vid_s[0, mid], ref_s[0, 0]) > max(corr(vid_s[0, mid - 1], ref_s[0, 0]), corr(vid_s[0, mid + 1], ref_s[0, 0]))
