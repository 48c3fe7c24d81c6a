"""Training datasets: item shapes, VGGSound CSV parsing, augmentation, path safety, and the
robustness of issue 3: broken files are skipped with reasons through DataLoader workers."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from soundloc.mel import log_mel
from soundloc.config import VIDEO_MEAN, preset
from soundloc.train.datasets import (
    Augment,
    DatasetError,
    PathListDataset,
    SkippedClip,
    SkipReport,
    VGGSoundDataset,
    collate,
    zoom_out,
)
from soundloc.data.synth import make_synthetic_dataset
from soundloc.encode import write_mp4
from soundloc.preprocess import normalise_frames

CONFIG = preset("tiny")  # 2 s clips: T = 20 frames, 200 mel frames
T = CONFIG.clip_steps


def _video_only(path: Path, seconds: float = 2.0) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=10)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        for _ in range(int(seconds * 10)):
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 90, np.uint8), format="rgb24")))
        out.mux(vs.encode())


def _audio_only(path: Path, seconds: float = 2.0) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("aac", rate=16000, layout="mono")
        samples = (0.1 * np.sin(np.arange(int(seconds * 16000)) * 0.3)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(st.encode(frame))
        out.mux(st.encode())


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VGGSound folder: 2 good synthetic clips, a good 29.97 fps clip, and the bad ones."""
    root = tmp_path_factory.mktemp("messy")
    make_synthetic_dataset(root, num_clips=2, seed=0, seconds=2.0, num_classes=3, val_fraction=0.0, workers=1)
    with open(root / "vggsound.csv", newline="") as f:
        rows = list(csv.reader(f))
    label = rows[0][2]
    videos = root / "videos"
    good = videos / f"{rows[0][0]}_{int(rows[0][1]):06d}.mp4"
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (75, 96, 128, 3), dtype=np.uint8)  # 2.5 s at 29.97 fps, 4:3
    write_mp4(videos / "ntsc_000000.mp4", frames, Fraction(30000, 1001), np.zeros(40000, np.float32) + 0.01, 16000)
    (videos / "empty_000000.mp4").write_bytes(b"")
    (videos / "trunc_000000.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _video_only(videos / "mute_000000.mp4")
    _audio_only(videos / "sound_000000.mp4")
    extra = ["ntsc", "empty", "trunc", "mute", "sound", "gone"]  # gone: listed, no file
    with open(root / "vggsound.csv", "a", newline="") as f:
        csv.writer(f).writerows([name, 0, label, "train"] for name in extra)
    return root


GOOD = {"ntsc_000000"}
BAD = {"empty_000000": "empty", "trunc_000000": "truncated", "mute_000000": "no audio",
       "sound_000000": "no video", "gone_000000": "no such file"}


def test_broken_files_are_skipped_with_reasons_through_workers(messy: Path) -> None:
    ds = VGGSoundDataset(messy, split="train", config=CONFIG)
    assert len(ds) == 8
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    report, loaded = SkipReport(), {}
    for batch in loader:
        report.add(batch["skipped"])
        assert batch["video"].shape[0] == batch["mel"].shape[0] == len(batch["label"]) == len(batch["id"])
        if batch["id"]:
            assert batch["video"].shape[1:] == (3, T, 112, 112) and batch["mel"].shape[1:] == (1, 10 * T, 80)
        loaded.update({cid: batch["video"][i] for i, cid in enumerate(batch["id"])})
    assert len(loaded) == 3 and GOOD <= set(loaded)  # 2 synthetic + the 29.97 fps clip
    reasons = dict(report.first)
    assert report.count == len(BAD) and set(reasons) == set(BAD)
    for clip_id, word in BAD.items():
        assert word in reasons[clip_id].lower() and "\n" not in reasons[clip_id], reasons[clip_id]
    text = report.summary()
    assert text.startswith("5 clips skipped") and "trunc_000000" in text


def test_item_shapes_and_values(messy: Path) -> None:
    ds = VGGSoundDataset(messy, split=None, config=CONFIG)
    item = next(ds[i] for i in range(len(ds)) if not isinstance(ds[i], SkippedClip))
    assert item["video"].dtype == torch.float32 and item["video"].shape == (3, T, 112, 112)
    assert item["mel"].shape == (1, 10 * T, 80) and torch.isfinite(item["mel"]).all()
    assert item["mel"].max() > -5  # the sounding object is audible, not the -13.8 floor
    assert 0 <= item["label"] < len(ds.class_names) == 2  # labels found in the CSV
    assert any("," in n for n in ds.class_names)  # the quoted label parsed as one column


def test_normalisation_uses_video_mean_std() -> None:
    frames = np.empty((2, 4, 4, 3), np.uint8)
    frames[...] = np.round(np.array(VIDEO_MEAN) * 255).astype(np.uint8)
    x = normalise_frames(frames)
    assert x.shape == (3, 2, 4, 4) and np.abs(x).max() < 0.02


def test_augment_crop_keeps_video_and_mel_aligned(messy: Path) -> None:
    full = VGGSoundDataset(messy, split=None, config=CONFIG)
    crop = VGGSoundDataset(messy, split=None, config=CONFIG, augment=Augment(crop_seconds=1.0))
    a, b = full[0], crop[0]
    assert b["video"].shape == (3, 10, 112, 112) and b["mel"].shape == (1, 100, 80)
    starts = [s for s in range(T - 10 + 1) if torch.equal(a["video"][:, s: s + 10], b["video"])]
    assert starts and any(torch.equal(a["mel"][:, 10 * s: 10 * s + 100], b["mel"]) for s in starts)
    with pytest.raises(DatasetError):
        VGGSoundDataset(messy, config=CONFIG, augment=Augment(crop_seconds=5.0))


def test_augment_flip_mirrors(messy: Path) -> None:
    full = VGGSoundDataset(messy, split=None, config=CONFIG)
    flip = VGGSoundDataset(messy, split=None, config=CONFIG, augment=Augment(flip=True))
    a = full[0]["video"]
    outs = []
    for seed in range(8):
        torch.manual_seed(seed)
        outs.append(flip[0]["video"])
    assert any(torch.equal(o, a) for o in outs) and any(torch.equal(o, a.flip(-1)) for o in outs)


def test_zoom_out_shrinks_the_scene_onto_its_mean_colour() -> None:
    frames = np.zeros((2, 40, 40, 3), np.uint8)
    frames[:, 10:30, 10:30] = 200  # a 20x20 bright square in the middle
    out = zoom_out(frames, 0.5, top=0.0, left=1.0)  # half size, top right
    bright = out[0, :, :, 0] > 100
    ys, xs = np.nonzero(bright)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert 80 <= bright.sum() <= 120  # 10x10 = a quarter of the area
    assert ys.min() >= 4 and ys.max() <= 16 and xs.min() >= 24 and xs.max() <= 36  # the square's place, scaled
    assert out[0, 35, 5, 0] == round(200 * 400 / 1600)  # outside the shrunk frame: the mean colour
    assert np.array_equal(zoom_out(frames, 1.0, 0.5, 0.5), frames)


def test_augment_zoom_keeps_shapes_and_rejects_bad_values(messy: Path) -> None:
    full = VGGSoundDataset(messy, split=None, config=CONFIG)
    zoom = VGGSoundDataset(messy, split=None, config=CONFIG, augment=Augment(zoom=0.5))
    torch.manual_seed(0)
    a, b = full[0], zoom[0]
    assert b["video"].shape == a["video"].shape and torch.equal(a["mel"], b["mel"])
    assert not torch.equal(a["video"], b["video"])
    for bad in (0.0, 1.5):
        with pytest.raises(DatasetError, match="zoom"):
            Augment(zoom=bad)


def test_kept_decoded_clips_give_the_same_items_without_decoding_again(messy: Path, tmp_path: Path) -> None:
    ds = VGGSoundDataset(messy, split=None, config=CONFIG)
    ds.keep_decoded()
    good = [i for i in range(len(ds)) if not isinstance(ds[i], SkippedClip)]
    first = {i: ds[i] for i in good}
    for i in good:  # the files are gone: what comes back must be the kept decode
        ds.records[i] = type(ds.records[i])(ds.records[i].clip_id, tmp_path / "moved.mp4", ds.records[i].label)
    for i in good:
        again = ds[i]
        assert torch.equal(again["video"], first[i]["video"]) and torch.equal(again["mel"], first[i]["mel"])
    assert all(isinstance(ds[i], SkippedClip) for i in range(len(ds)) if i not in good)  # skips are not kept


def test_files_directly_in_root_and_splits(tmp_path: Path) -> None:
    clip = tmp_path / "abc_000007.mp4"
    write_mp4(clip, np.zeros((20, 64, 64, 3), np.uint8), 10, np.zeros(32000, np.float32), 16000)
    (tmp_path / "vggsound.csv").write_text('abc,7,"dog, barking",test\nzzz,1,cat,train\n')
    ds = VGGSoundDataset(tmp_path, split="test", config=CONFIG)
    assert len(ds) == 1 and ds.records[0].path == clip and ds.class_names == ("cat", "dog, barking")
    assert ds[0]["label"] == 1 and ds[0]["id"] == "abc_000007"
    with pytest.raises(DatasetError, match="split 'val'"):
        VGGSoundDataset(tmp_path, split="val", config=CONFIG)


@pytest.mark.parametrize("row", ['../../etc/passwd,0,cat,train', '/abs/x,0,cat,train', 'a/b,0,cat,train'])
def test_vggsound_names_cannot_escape_root(tmp_path: Path, row: str) -> None:
    (tmp_path / "vggsound.csv").write_text(row + "\n")
    with pytest.raises(DatasetError, match="vggsound.csv: line 1: "):  # annotations.read_vggsound_csv's words
        VGGSoundDataset(tmp_path, split=None, config=CONFIG)


@pytest.mark.parametrize("name", ["../outside.mp4", "/etc/passwd", "a/../../b.mp4", "C:\\x.mp4", "..\\x.mp4"])
def test_path_list_names_cannot_escape_root(tmp_path: Path, name: str) -> None:
    (tmp_path / "list.csv").write_text(f"path,label\nok.mp4,cat\n{name},dog\n")
    with pytest.raises(DatasetError, match="list.csv:3"):
        PathListDataset(tmp_path / "list.csv", config=CONFIG)


def test_path_list_dataset(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_mp4(tmp_path / "sub" / "one.mp4", np.zeros((20, 64, 64, 3), np.uint8), 10, np.zeros(32000, np.float32), 16000)
    (tmp_path / "list.csv").write_text('path,label\nsub/one.mp4,"violin, fiddle"\nsub/two.mp4,drum\n')
    ds = PathListDataset(tmp_path / "list.csv", config=CONFIG, class_names=["drum", "violin, fiddle", "x"])
    assert len(ds) == 2 and ds[0]["label"] == 1 and ds[0]["id"] == "one"
    assert isinstance(ds[1], SkippedClip) and "no such file" in ds[1].reason
    with pytest.raises(DatasetError, match="not among"):
        PathListDataset(tmp_path / "list.csv", config=CONFIG, class_names=["drum"])


@pytest.mark.parametrize("text, match", [("a,1,cat\n", "4 columns"), ("a,x,cat,train\n", "not a number"),
                                         ("\n\n", "no rows")])
def test_bad_csv_rows_are_reported(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "vggsound.csv").write_text(text)
    with pytest.raises(DatasetError, match=match):
        VGGSoundDataset(tmp_path, config=CONFIG)


def test_collate_of_only_skipped_items() -> None:
    batch = collate([SkippedClip("a", "a.mp4: empty file"), SkippedClip("b", "b.mp4: no audio")])
    assert len(batch["label"]) == 0 and batch["id"] == [] and len(batch["skipped"]) == 2
    report = SkipReport(keep=1)
    report.add(batch["skipped"])
    assert report.count == 2 and report.first == [("a", "a.mp4: empty file")]
    assert report.to_dict()["count"] == 2 and "1 more" in report.summary(max_lines=1)


def test_mel_is_the_shared_log_mel(messy: Path) -> None:
    from soundloc.media import load_clip

    ds = VGGSoundDataset(messy, split=None, config=CONFIG)
    clip = load_clip(ds.records[0].path, seconds=CONFIG.clip_seconds)
    assert np.array_equal(ds[0]["mel"][0].numpy(), log_mel(clip.audio))
