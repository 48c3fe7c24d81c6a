"""The synthetic benchmark: real H.264 + AAC files, VGGSound/VGG-SS formats, consistent ground
truth, objects of VGG-SS size, determinism."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from soundloc.data import scenes, synth
from soundloc.data.synth import (
    AREA_RANGE,
    SynthError,
    make_synthetic_dataset,
    synth_classes,
)

SECONDS = 2.0
CLIPS = 4


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthSummary]:
    out = tmp_path_factory.mktemp("synth")
    summary = make_synthetic_dataset(out, num_clips=CLIPS, seed=3, seconds=SECONDS, num_classes=5,
                                     val_fraction=0.5, workers=1)
    return out, summary


def _rows(out: Path) -> list[list[str]]:
    with open(out / "vggsound.csv", newline="") as f:
        return list(csv.reader(f))


def test_csv_is_vggsound_format_with_quoted_labels(made) -> None:
    out, summary = made
    rows = _rows(out)
    assert len(rows) == CLIPS and all(len(r) == 4 for r in rows)
    assert {r[3] for r in rows} == {"train", "test"} and summary.num_test == 2
    names = {c.name for c in synth_classes(5)}
    assert all(r[2] in names for r in rows)
    assert any("," in r[2] for r in rows)  # a quoted label survived the round trip
    assert '"' in (out / "vggsound.csv").read_text()
    for ytid, start, _, _ in rows:
        assert (out / "videos" / f"{ytid}_{int(start):06d}.mp4").is_file()


def test_videos_are_h264_aac_of_the_right_length(made) -> None:
    out, _ = made
    for path in sorted((out / "videos").glob("*.mp4")):
        with av.open(str(path)) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert (v.codec_context.name, a.codec_context.name) == ("h264", "aac")
            assert a.sample_rate == 16000 and a.channels == 1
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            duration = float(c.duration / av.time_base)
        assert len(frames) == round(SECONDS * 10)
        assert frames[0].shape == (160, 160, 3)
        assert duration == pytest.approx(SECONDS, abs=0.1)


def test_boxes_are_vggss_format_and_match_tracks(made) -> None:
    out, _ = made
    boxes = json.loads((out / "vggss.json").read_text())
    tracks = json.loads((out / "tracks.json").read_text())
    test_ids = {f"{r[0]}_{int(r[1]):06d}" for r in _rows(out) if r[3] == "test"}
    assert {b["file"] for b in boxes} == test_ids
    mid = round(SECONDS * 10) // 2
    for entry in boxes:
        (box,) = entry["bbox"]
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert AREA_RANGE[0] - 1e-3 <= (x1 - x0) * (y1 - y0) <= AREA_RANGE[1] + 1e-3
        track = tracks[entry["file"]]
        source = track["objects"][track["sounding"]]
        assert source["boxes"][mid] == box and source["class"] == entry["class"] == track["label"]
    for track in tracks.values():
        classes = [o["class"] for o in track["objects"]]
        assert 2 <= len(classes) == len(set(classes))  # several objects, all of different classes
        for obj in track["objects"]:
            b = np.array(obj["boxes"])
            assert b.shape == (round(SECONDS * 10), 4) and b.min() >= 0 and b.max() <= 1
            assert np.abs(np.diff(b, axis=0)).max() <= synth.MAX_SPEED / 10 + 1e-3  # moves slowly


def test_sizes_cover_the_vggss_range() -> None:
    """Object areas over many layouts span the VGG-SS quartiles (12-46 %), never below 10 %."""
    rng = np.random.default_rng(0)
    layouts = [scenes.place_objects(rng, 3)[0].prod(1) for _ in range(300)]
    areas = np.concatenate(layouts)
    assert areas.min() >= AREA_RANGE[0] - 1e-9 and areas.max() <= AREA_RANGE[1] + 1e-9
    source = np.array([a[0] for a in layouts])
    assert np.mean([a.argmax() == 0 for a in layouts if len(a) == 3]) < 0.42  # size is no cue (chance: 1/3)
    assert np.quantile(source, 0.25) < 0.16 and np.quantile(source, 0.75) > 0.27
    assert 0.18 < np.median(source) < 0.26  # VGG-SS median: 25 %


def test_intervals_match_the_audio(made) -> None:
    out, summary = made
    intervals = json.loads((out / "intervals.json").read_text())
    assert summary.num_with_silence >= 1  # seed 3 has a clip with a gap; the test relies on it
    for clip_id, spans in intervals.items():
        ends = np.array(spans).ravel()
        assert ends[0] >= 0 and ends[-1] <= SECONDS and np.all(np.diff(ends) > 0)
        with av.open(str(out / "videos" / f"{clip_id}.mp4")) as c:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
            audio = np.concatenate([r.to_ndarray().ravel() for f in c.decode(audio=0) for r in resampler.resample(f)])
        active = np.zeros(len(audio), bool)
        for s, e in spans:  # 50 ms margins: fades and AAC's filter ringing
            active[int((s + 0.05) * 16000): int((e - 0.05) * 16000)] = True
        silent = np.ones(len(audio), bool)
        for s, e in spans:
            silent[max(0, int((s - 0.1) * 16000)): int((e + 0.1) * 16000)] = False
        silent[int(SECONDS * 16000):] = False
        loud = np.sqrt(np.mean(audio[active] ** 2))
        assert loud > 0.03
        if silent.sum() > 1600:
            assert np.sqrt(np.mean(audio[silent] ** 2)) < loud / 5


def test_same_seed_same_dataset(made, tmp_path: Path) -> None:
    """Annotations and pixels depend on the seed only, not on the number of workers."""
    out, _ = made
    again = make_synthetic_dataset(tmp_path, num_clips=CLIPS, seed=3, seconds=SECONDS, num_classes=5,
                                   val_fraction=0.5, workers=2)
    for name in ("vggsound.csv", "vggss.json", "tracks.json", "intervals.json", "classes.csv"):
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name
    clip = next(iter(json.loads((out / "intervals.json").read_text())))
    assert (out / "videos" / f"{clip}.mp4").read_bytes() == (tmp_path / "videos" / f"{clip}.mp4").read_bytes()
    assert again.num_clips == CLIPS


def test_other_seed_other_dataset(made, tmp_path: Path) -> None:
    out, _ = made
    make_synthetic_dataset(tmp_path, num_clips=2, seed=4, seconds=SECONDS, num_classes=5, workers=1)
    assert (out / "tracks.json").read_text()[:500] != (tmp_path / "tracks.json").read_text()[:500]


def test_classes_differ_in_look_and_sound() -> None:
    classes = synth_classes(synth.MAX_CLASSES)
    assert len({(c.shape, c.colour) for c in classes}) == len(classes)
    assert len({c.name for c in classes}) == len(classes)
    assert len({round(c.f0) for c in classes}) == len(classes)


@pytest.mark.parametrize("kwargs", [{"num_clips": 0}, {"num_classes": 1}, {"num_classes": 999},
                                    {"seconds": 2.05}, {"val_fraction": 1.0}, {"size": 31}])
def test_bad_settings_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(SynthError):
        make_synthetic_dataset(tmp_path, **{"num_clips": 2, "seconds": 2.0, **kwargs})


def test_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from soundloc.cli import app

    result = CliRunner().invoke(app, ["synth", str(tmp_path), "--clips", "2", "--seconds", "1", "--classes", "3",
                                      "--workers", "1", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 clips" in result.output
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2
    bad = CliRunner().invoke(app, ["synth", str(tmp_path), "--classes", "1"])
    assert bad.exit_code == 2 and "num_classes" in bad.output


def test_shift_profile_changes_rates_channels_sizes_and_counts(tmp_path: Path) -> None:
    """The `shift` profile: 24/25/30 fps sources, 44.1/48 kHz stereo, smaller objects, up to
    four per clip; tracks stay on the 10 fps grid and the loader still reads every file."""
    from soundloc.media import load_clip

    prof = synth.PROFILES["shift"]
    make_synthetic_dataset(tmp_path, num_clips=6, seed=7, seconds=1.0, num_classes=6, val_fraction=0.5,
                           workers=1, size=64, profile="shift")
    tracks = json.loads((tmp_path / "tracks.json").read_text())
    assert json.loads((tmp_path / "synth.json").read_text())["profile"]["name"] == "shift"
    rates, layouts, counts = set(), set(), []
    for clip_id, track in tracks.items():
        path = tmp_path / "videos" / f"{clip_id}.mp4"
        with av.open(str(path)) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            n_frames = sum(1 for _ in c.decode(video=0))
            assert a.sample_rate == track["source_sample_rate"] and a.channels == 2
            rates.add(int(v.average_rate))
            layouts.add(a.layout.name)
        assert n_frames == track["source_fps"] and track["source_fps"] in prof.fps
        assert track["source_sample_rate"] in prof.sample_rates
        counts.append(len(track["objects"]))
        for obj in track["objects"]:
            assert len(obj["boxes"]) == 10
            x0, y0, x1, y1 = obj["boxes"][0]
            assert (x1 - x0) * (y1 - y0) <= prof.area_range[1] * 1.34 + 1e-3  # area x the widest aspect
        clip = load_clip(path, seconds=1.0)  # 10 fps, 16 kHz mono whatever the source
        assert clip.frames.shape[0] == 10 and len(clip.audio) == 16000 and clip.audio.ndim == 1
    assert rates == {t["source_fps"] for t in tracks.values()} == {24, 25, 30} and layouts == {"stereo"}
    assert max(counts) > 3 >= min(counts) >= 2  # up to four objects (seed 7 draws two fours)


def test_varied_profile_unties_texture_from_class_and_keeps_heldouts_own_unseen(tmp_path: Path) -> None:
    """`varied` (training data): any object wears any training texture, whatever its class,
    while shape and colour stay the class's; boxes of 4-45 % of the frame, below the default's
    10 %; nothing that `heldout` keeps for final figures (its textures, decoys, sound families)."""
    prof, held = synth.PROFILES["varied"], synth.PROFILES["heldout"]
    assert set(prof.textures) == set(scenes.TEXTURES) and set(prof.textures).isdisjoint(held.textures)
    assert not prof.decoy_shapes and prof.sounds == ("steady",) and prof.offscreen == 0
    cls = synth_classes(10)
    rng = np.random.default_rng(0)
    worn = {c.name: set() for c in cls[:3]}
    for _ in range(40):
        looks = synth._looks(prof, list(cls[:3]), rng)
        assert [(k.name, k.shape, k.colour) for k in looks] == [(c.name, c.shape, c.colour) for c in cls[:3]]
        for k in looks:
            worn[k.name].add(k.texture)
    assert all(t == set(scenes.TEXTURES) for t in worn.values()), worn  # each class in all four
    assert synth._looks(synth.PROFILES["default"], list(cls[:3]), rng) == list(cls[:3])
    make_synthetic_dataset(tmp_path, num_clips=8, seed=5, seconds=1.0, num_classes=6, val_fraction=0.5,
                           workers=1, size=64, profile="varied")
    objects = [o for t in json.loads((tmp_path / "tracks.json").read_text()).values() for o in t["objects"]]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (o["boxes"][0] for o in objects)]
    assert min(areas) < scenes.AREA_RANGE[0] and max(areas) <= prof.area_range[1] * 1.34 + 1e-3, areas
    assert {o["texture"] for o in objects} <= set(scenes.TEXTURES) and len({o["texture"] for o in objects}) > 1


def test_unknown_profile_raises(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="unknown profile 'nope'"):
        make_synthetic_dataset(tmp_path, num_clips=2, seconds=1.0, profile="nope")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("heldout")
    make_synthetic_dataset(out, num_clips=8, seed=3, seconds=2.0, num_classes=6, val_fraction=0.5,
                           workers=1, size=96, profile="heldout")
    return out


def test_heldout_profile_differs_where_shift_does_not(heldout: Path) -> None:
    """`heldout`: 15-35 % box heights, two or three objects, a third one a silent decoy of a
    shape no class has, bursts/chirps/clicks, 25 fps and 44.1 kHz stereo; the sounding object is
    always the clip's class and its track is the VGG-SS box."""
    prof = synth.PROFILES["heldout"]
    assert set(prof.decoy_shapes).isdisjoint(scenes.SHAPES) and set(prof.textures).isdisjoint(scenes.TEXTURES)
    assert "steady" not in prof.sounds and set(prof.sounds) <= set(scenes.SOUND_FAMILIES)
    tracks = json.loads((heldout / "tracks.json").read_text())
    boxes = {b["file"]: b for b in json.loads((heldout / "vggss.json").read_text())}
    names = {c.name for c in synth_classes(6)}
    counts, decoys, sounds = [], 0, set()
    for clip_id, track in tracks.items():
        objects = track["objects"]
        counts.append(len(objects))
        assert objects[track["sounding"]]["class"] == track["label"] in names
        for k, obj in enumerate(objects):
            b = np.array(obj["boxes"])
            assert np.all((b[:, 3] - b[:, 1] >= 0.15 - 1e-3) & (b[:, 3] - b[:, 1] <= 0.35 + 1e-3))
            assert obj["texture"] in prof.textures  # recorded, and never a training texture
            is_decoy = obj["class"].startswith("decoy ")
            decoys += is_decoy
            assert not is_decoy or (k == 2 and obj["class"][6:] in prof.decoy_shapes)
        assert (len(objects) == 3) == objects[-1]["class"].startswith("decoy ")
        sounds.add(track["sound"])
        assert (track["source_fps"], track["source_sample_rate"]) == (25, 44_100)
        if clip_id in boxes:
            assert boxes[clip_id]["bbox"] == [objects[0]["boxes"][10]] and boxes[clip_id]["class"] == track["label"]
        with av.open(str(heldout / "videos" / f"{clip_id}.mp4")) as c:
            assert c.streams.audio[0].channels == 2 and c.streams.audio[0].sample_rate == 44_100
            assert sum(1 for _ in c.decode(video=0)) == 50
    assert set(counts) == {2, 3} and decoys >= 1 and len(sounds) >= 2  # seed 3: both counts, two families


def test_heldout_pixels_show_the_sounding_object_in_its_class_colour(heldout: Path) -> None:
    """Ground truth matches the pixels: at the middle frame, the sounding box holds the class's
    colour (whatever held-out texture it wears), the background outside every box does not."""
    tracks = json.loads((heldout / "tracks.json").read_text())
    colours = {c.name: np.array(c.colour) for c in synth_classes(6)}
    for clip_id, track in tracks.items():
        with av.open(str(heldout / "videos" / f"{clip_id}.mp4")) as c:
            frame = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][25].astype(float) / 255
        size = frame.shape[0]
        chroma = frame / (frame.sum(-1, keepdims=True) + 1e-6)
        target = colours[track["label"]] / colours[track["label"]].sum()
        near = np.abs(chroma - target).sum(-1) < 0.12
        x0, y0, x1, y1 = (np.array(track["objects"][0]["boxes"][10]) * size).round().astype(int)
        outside = np.ones((size, size), bool)
        for obj in track["objects"]:
            a0, b0, a1, b1 = (np.array(obj["boxes"][10]) * size).round().astype(int)
            outside[max(b0 - 2, 0): b1 + 2, max(a0 - 2, 0): a1 + 2] = False
        assert near[y0:y1, x0:x1].mean() > 0.05, clip_id  # 0.10-0.57 here (shapes, textures, tints)
        assert near[outside].mean() < 0.01, clip_id  # 0.0 here


def test_heldout_profile_is_deterministic(heldout: Path, tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path, num_clips=8, seed=3, seconds=2.0, num_classes=6, val_fraction=0.5,
                           workers=2, size=96, profile="heldout")
    for name in ("vggss.json", "tracks.json", "intervals.json", "vggsound.csv"):
        assert (heldout / name).read_bytes() == (tmp_path / name).read_bytes(), name
    clip = min((heldout / "videos").iterdir()).name
    assert (heldout / "videos" / clip).read_bytes() == (tmp_path / "videos" / clip).read_bytes()


@pytest.mark.parametrize("family", ["bursts", "chirp", "clicks"])
def test_sound_families_keep_the_class_pitch_and_shape_it_in_time(family: str) -> None:
    """Each held-out family keeps the class's fundamental as the strongest partial (within the
    chirp's +-0.15 octave) and changes the envelope or pitch track that `steady` has."""
    cls = synth_classes(10)[3]
    rate, seconds = 16_000, 2.0
    steady = scenes.render_audio(cls, [[0.0, seconds]], seconds, np.random.default_rng(0), rate)
    other = scenes.render_audio(cls, [[0.0, seconds]], seconds, np.random.default_rng(0), rate, family)
    spec = np.abs(np.fft.rfft(other))
    freqs = np.fft.rfftfreq(len(other), 1 / rate)
    strongest = freqs[np.argmax(spec)]
    assert cls.f0 * 2 ** -0.2 < strongest < cls.f0 * 2 ** 0.2
    env = np.sqrt(np.convolve(other.astype(float) ** 2, np.ones(800) / 800, mode="valid"))
    env0 = np.sqrt(np.convolve(steady.astype(float) ** 2, np.ones(800) / 800, mode="valid"))
    if family == "bursts":  # on and off: some 50 ms windows hold only the hiss
        assert env.min() < 0.2 * np.median(env) and env0.min() > 0.2 * np.median(env0)
    elif family == "chirp":  # the pitch moves: short-time peaks differ over the clip
        peaks = [np.argmax(np.abs(np.fft.rfft(other[i: i + 2048]))) for i in range(0, len(other) - 2048, 4000)]
        assert max(peaks) - min(peaks) >= 3
    else:  # clicks: a spiky envelope (crest factor over 1 ms windows far above steady's)
        short = np.sqrt(np.convolve(other.astype(float) ** 2, np.ones(16) / 16, mode="valid"))
        short0 = np.sqrt(np.convolve(steady.astype(float) ** 2, np.ones(16) / 16, mode="valid"))
        assert short.max() / np.median(short) > 2 * short0.max() / np.median(short0)
    with pytest.raises(SynthError, match="unknown sound family"):
        scenes.render_audio(cls, [[0.0, seconds]], seconds, np.random.default_rng(0), rate, "whoosh")


def test_default_profile_clips_are_unchanged_by_the_heldout_options(made) -> None:
    """The default profile draws nothing new: its tracks say `steady` and keep class textures."""
    out, _ = made
    tracks = json.loads((out / "tracks.json").read_text())
    names = {c.name for c in synth_classes(5)}
    assert all(t["sound"] == "steady" and {o["class"] for o in t["objects"]} <= names for t in tracks.values())
    textures = {c.name: c.texture for c in synth_classes(5)}
    assert all(o["texture"] == textures[o["class"]] for t in tracks.values() for o in t["objects"])


def test_negatives_profile_marks_clips_without_a_visible_source(tmp_path: Path) -> None:
    """Half the test clips are negatives, the kinds in turn; the ground truth says so in the
    same files (no box in vggss.json, ``visible: false`` in tracks.json); what is rendered
    matches: an occluded source sits behind a grey panel, a silent clip is below the runtime's
    -40 dBFS gate, a noise clip is broadband and loud, an off-screen source is not drawn."""
    from soundloc.media import load_clip

    make_synthetic_dataset(tmp_path, num_clips=16, seed=4, seconds=1.0, num_classes=4, val_fraction=0.99,
                           workers=1, size=64, profile="negatives")
    tracks = json.loads((tmp_path / "tracks.json").read_text())
    boxes = {e["file"]: e for e in json.loads((tmp_path / "vggss.json").read_text())}
    intervals = json.loads((tmp_path / "intervals.json").read_text())
    kinds = [t["negative"] for cid, t in tracks.items() if cid in boxes and t["negative"]]
    assert sorted(kinds) == sorted(list(synth.NEGATIVE_KINDS) * 2)  # 8 of the 15 test clips, balanced
    train = [cid for cid in tracks if cid not in boxes]
    assert train and all(tracks[c]["visible"] for c in train)  # training clips always show their source
    for cid, entry in boxes.items():
        track, kind = tracks[cid], tracks[cid]["negative"]
        assert track["visible"] == (kind is None) and (entry["bbox"] == []) == (kind is not None)
        assert entry.get("negative") == kind
        clip = load_clip(tmp_path / "videos" / f"{cid}.mp4", seconds=1.0)
        rms_db = 10 * np.log10(np.mean(clip.audio.astype(np.float64) ** 2) + 1e-12)
        mid = clip.frames[5].astype(float) / 255
        x0, y0, x1, y1 = (int(round(v * 64)) for v in track["objects"][0]["boxes"][5])
        inside = mid[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
        if kind == "occluded":
            # flat grey up to H.264's chroma bleed at the panel's edges (an object would be textured)
            assert abs(np.median(inside) - synth.OCCLUDER_GREY) < 0.05 and inside.std() < 0.08
        if kind == "silence":
            assert rms_db < -40 and intervals[cid] == [] and track["sounding"] is None
        if kind == "noise":
            assert rms_db > -40 and intervals[cid] == [] and track["sounding"] is None
            spec = np.abs(np.fft.rfft(clip.audio)) ** 2
            flatness = np.exp(np.mean(np.log(spec[1:] + 1e-20))) / np.mean(spec[1:])
            assert flatness > 0.3  # broadband, not a tone
        if kind in (None, "offscreen", "occluded"):
            assert track["sounding"] == 0 and intervals[cid]
        if kind == "offscreen":  # nothing of the source's colour where its box would be
            colour = np.asarray(synth_classes(4)[[c.name for c in synth_classes(4)].index(track["label"])].colour)
            assert np.abs(inside - colour * 0.7).sum(-1).min() > 0.15 or inside.size == 0
