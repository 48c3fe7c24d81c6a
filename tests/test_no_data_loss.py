"""Never destroy a user's file (issue 13, data loss): each case as a user meets it, through the
``soundloc`` command in a subprocess, on real H.264/AAC files, a real onnxruntime session, real
FIFOs, links and character devices; then one property test of the writer rule in ``fileio``.

Character devices: as root the tests make their own null/full device nodes in the test folder
(``mknod``), so a regression could never replace the machine's /dev/null; as another user they
use /dev/null and /dev/full, which such a user cannot rename over anyway.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from soundloc.fileio import OutputError, atomic_write_bytes, check_outputs
from soundloc.runtime.sinks import JsonlSink

CLIP_SECONDS = 3.0


# -- helpers ------------------------------------------------------------------------------------------
def soundloc(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soundloc", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(r: subprocess.CompletedProcess) -> str:
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


def char_device(tmp_path: Path, name: str) -> Path:
    """A character device node like /dev/<name> (null: 1,3; full: 1,7), see the module docstring."""
    if os.geteuid() != 0:
        return Path("/dev") / name
    node = tmp_path / f"dev-{name}"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, {"null": 3, "full": 7}[name]))
    try:
        os.close(os.open(node, os.O_WRONLY))
    except OSError as e:  # a filesystem mounted nodev
        pytest.skip(f"cannot open a device node made in {tmp_path}: {e.strerror}")
    return node


class FifoReader(threading.Thread):
    """Reads everything written into a FIFO until the writer closes it."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.data = path, b""

    def run(self) -> None:
        with open(self.path, "rb") as f:
            self.data = f.read()


def frames_in(mp4: Path | bytes) -> int:
    source = io.BytesIO(mp4) if isinstance(mp4, bytes) else str(mp4)
    with av.open(source) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A real synthetic clip: H.264 + AAC, 3 s."""
    from soundloc.data.synth import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, num_clips=1, seed=3, seconds=CLIP_SECONDS, workers=1, size=64)
    return next((out / "videos").glob("*.mp4"))


@pytest.fixture
def export(tiny):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")
    return tiny.export


@pytest.fixture
def video(clip: Path, tmp_path: Path) -> Path:
    """The user's own copy of the clip, which nothing may touch."""
    path = tmp_path / "in.mp4"
    path.write_bytes(clip.read_bytes())
    return path


def stream(export: Path, video: Path, *args) -> subprocess.CompletedProcess:
    return soundloc("stream", export, "--video", video, "--backend", "onnxruntime-cpu", *args)


# -- 1, 2: an output that is the input ---------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--events", "--out", "--json"])
@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(export, video, tmp_path, flag, how):
    before = digest(video)
    target = {"same path": video, "symlink": tmp_path / "link.mp4", "hard link": tmp_path / "hard.mp4"}[how]
    if how == "symlink":
        target.symlink_to(video)
    elif how == "hard link":
        os.link(video, target)
    r = stream(export, video, flag, target)
    assert r.returncode == 2 and "is the input" in one_line_error(r)
    assert digest(video) == before and target.exists() and digest(target) == before
    assert (how != "symlink") or target.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({video.name, target.name})  # no temp left


def test_events_equal_to_out_is_refused(export, video, tmp_path):
    r = stream(export, video, "--out", tmp_path / "x.mp4", "--events", tmp_path / "x.mp4")
    assert r.returncode == 2 and "same file" in one_line_error(r)
    assert not (tmp_path / "x.mp4").exists()


def test_outputs_onto_the_input_refused_by_other_commands(tiny, video, tmp_path):
    """The same rule in every command that writes: the checkpoint is the input here."""
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(tiny.ckpt.read_bytes())
    before = digest(ckpt)
    for args in (["info", ckpt, "--json", ckpt],
                 ["annotate", ckpt, tmp_path, "--out", ckpt],
                 ["export", ckpt, "--out", tmp_path / "exp", "--json", ckpt]):
        r = soundloc(*args)
        assert r.returncode == 2 and "is the input" in one_line_error(r), args
    assert digest(ckpt) == before


# -- 3: FIFOs and character devices are written into, never replaced ------------------------------
def test_out_and_events_into_fifos(export, video, tmp_path):
    fifos = {name: tmp_path / name for name in ("video.fifo", "events.fifo")}
    readers = {}
    for name, path in fifos.items():
        os.mkfifo(path)
        readers[name] = FifoReader(path)
        readers[name].start()
    r = stream(export, video, "--out", fifos["video.fifo"], "--events", fifos["events.fifo"])
    assert r.returncode == 0, r.stderr
    for reader in readers.values():
        reader.join(timeout=30)
    assert all(stat.S_ISFIFO(os.lstat(p).st_mode) for p in fifos.values())  # still FIFOs
    events = [json.loads(line) for line in readers["events.fifo"].data.decode().splitlines()]
    steps = round(CLIP_SECONDS * 10)
    assert [e["index"] for e in events] == list(range(steps))
    assert frames_in(readers["video.fifo"].data) == steps  # a playable fragmented mp4 came through
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([video.name, *fifos])  # no temp left


def test_complete_run_into_a_null_device_exits_0(export, video, tmp_path):
    null = char_device(tmp_path, "null")
    r = stream(export, video, "--out", null, "--events", null, "--json", null)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_events_into_a_full_device_reports_no_space(export, video, tmp_path):
    full = char_device(tmp_path, "full")
    r = stream(export, video, "--events", full)
    assert r.returncode != 0
    line = one_line_error(r)
    assert "disk full" in line and "Invalid argument" not in r.stderr
    assert stat.S_ISCHR(os.lstat(full).st_mode)


# -- 4: a run that fails at start keeps the existing events ----------------------------------------
def write_video(path: Path, seconds: float = 2.0, *, audio: bool = True) -> Path:
    """H.264 video at 10 fps (64x48), with a 440 Hz AAC tone or without an audio track."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = c.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(round(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 250, np.uint8), format="rgb24")
            frame.pts = i
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
        if aus is not None:
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * 16000)) / 16000)).astype(np.float32)
            for i in range(0, tone.size, 1024):
                frame = av.AudioFrame.from_ndarray(tone[None, i:i + 1024], format="flt", layout="mono")
                frame.sample_rate, frame.pts = 16000, i
                c.mux(aus.encode(frame))
            c.mux(aus.encode())
    return path


@pytest.mark.parametrize("why", ["mistyped input", "no audio track"])
def test_failed_start_keeps_existing_events_and_mp4(export, tmp_path, why):
    video = tmp_path / "mistyped.mp4" if why == "mistyped input" else write_video(tmp_path / "silent.mp4", audio=False)
    events, out = tmp_path / "events.jsonl", tmp_path / "out.mp4"
    events.write_text('{"index": 0}\n')
    out.write_bytes(b"last night's recording")
    r = stream(export, video, "--events", events, "--out", out)
    assert r.returncode != 0
    one_line_error(r)
    assert events.read_text() == '{"index": 0}\n' and out.read_bytes() == b"last night's recording"
    new_events = tmp_path / "new.jsonl"
    assert stream(export, video, "--events", new_events).returncode != 0
    assert not new_events.exists()  # no empty events file left behind
    assert not list(tmp_path.glob("*partial*"))


def test_export_onto_an_existing_file_is_a_usage_error(tiny, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    r = soundloc("export", tiny.ckpt, "--out", target)
    assert r.returncode == 2 and "not a directory" in one_line_error(r)
    assert target.read_text() == "mine"


def test_stream_without_outputs_says_nothing_is_kept(export, video):
    r = stream(export, video)
    assert r.returncode == 0, r.stderr
    assert "nothing of them is kept" in r.stdout.splitlines()[0]


# -- 5: synth onto an existing dataset ---------------------------------------------------------------
def test_synth_refuses_a_non_empty_folder_unless_forced(tmp_path):
    data = tmp_path / "vggsound"
    (data / "videos").mkdir(parents=True)
    (data / "vggsound.csv").write_text("---g-f_I2yQ,1,people marching,test\n")
    (data / "videos" / "---g-f_I2yQ_000001.mp4").write_bytes(b"a real clip")
    args = ["synth", data, "--clips", "1", "--seconds", "1", "--size", "32", "--workers", "1"]
    r = soundloc(*args)
    assert r.returncode == 2 and "--force" in one_line_error(r)
    assert (data / "vggsound.csv").read_text() == "---g-f_I2yQ,1,people marching,test\n"
    assert [p.name for p in (data / "videos").iterdir()] == ["---g-f_I2yQ_000001.mp4"]
    forced = soundloc(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "people marching" not in (data / "vggsound.csv").read_text()
    assert len(list((data / "videos").glob("*.mp4"))) == 2
    (tmp_path / "empty").mkdir()
    assert soundloc("synth", tmp_path / "empty", *args[2:]).returncode == 0  # an empty folder is fine
    r = soundloc("synth", data / "vggsound.csv", *args[2:])
    assert r.returncode == 2 and "not a directory" in one_line_error(r)


# -- 6: interruptions -------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this OS")
def test_sighup_finalises_the_mp4_and_events(export, clip, tmp_path):
    out, events = tmp_path / "hup.mp4", tmp_path / "hup.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "soundloc", "stream", str(export), "--video", str(clip),
                             "--realtime", "--backend", "onnxruntime-cpu", "--out", str(out),
                             "--events", str(events)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob("*.partial.jsonl")):
        time.sleep(0.05)
    while time.monotonic() < deadline and not any(p.stat().st_size for p in tmp_path.glob("*.partial.jsonl")):
        time.sleep(0.05)  # the first step is out: the stream loop runs
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != -signal.SIGHUP, err  # not killed by it: it ended the run
    n = frames_in(out)
    lines = events.read_text().splitlines()
    assert 1 <= n < CLIP_SECONDS * 10 and len(lines) == n
    assert not list(tmp_path.glob("*partial*"))


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, even when the test run was started as a background
    job of a shell without job control (which starts it, and so every child, with SIGINT ignored:
    Python then installs no KeyboardInterrupt handler and the command rightly ignores Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _opened(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux /proc)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


def _annotate_once_clip_is_open(args: list, clip: Path, before_retry=lambda: None) -> subprocess.Popen:
    """``soundloc annotate ARGS`` in a child, returned once it is seen decoding ``clip``. The clip
    is open only while it is decoded, so a starved poll can miss it: up to three runs
    (``before_retry`` after each missed one)."""
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "soundloc", "annotate", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)
        deadline = time.monotonic() + 120
        while not (seen := _opened(proc.pid, clip.resolve())) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        if seen:
            return proc
        proc.communicate(timeout=120)
        before_retry()
    raise AssertionError(f"never saw {clip.name} open in three runs")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc to see which clip is open")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_annotate_interrupted_keeps_finished_clips_and_resumes(tiny, tmp_path, signum):
    """Ctrl-C, a kill or a closed terminal while the third clip (a long one) is being read,
    after two finished."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a_000000", "b_000000", "d_000000"):
        write_video(folder / f"{name}.mp4", 2.0)
    long = write_video(folder / "c_000000.mp4", 180.0)  # open for a while: decoding 1,800 frames
    out = tmp_path / "boxes.json"
    proc = _annotate_once_clip_is_open([tiny.ckpt, folder, "--out", out], long,
                                       before_retry=lambda: out.unlink(missing_ok=True))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    kept = [e["file"] for e in json.loads(out.read_text())]
    assert kept in (["a_000000", "b_000000"], ["a_000000", "b_000000", "c_000000"])  # all it finished
    r = soundloc("annotate", tiny.ckpt, folder, "--out", out)
    assert r.returncode == 0, r.stderr
    final = json.loads(out.read_text())
    assert [e["file"] for e in final] == ["a_000000", "b_000000", "c_000000", "d_000000"]
    assert "4 clips" in r.stdout


# -- the rule itself: random inputs, outputs, links, FIFOs -------------------------------------------
def _world(root: Path, rng: random.Random) -> tuple[list[Path], list[Path]]:
    """Input files with random content and every kind of path an output might name."""
    inputs = []
    for i in range(3):
        path = root / f"in{i}.bin"
        path.write_bytes(rng.randbytes(rng.randrange(1, 4000)))
        inputs.append(path)
    other = root / "other.txt"
    other.write_text("not an input")
    names = [*inputs, other, root / "new.out", root / "sub" / "new.out", root / "dir"]
    (root / "dir").mkdir()
    for i, target in enumerate([*inputs, other, root / "missing"]):
        (root / f"sym{i}").symlink_to(target)
        names.append(root / f"sym{i}")
        if target.exists():
            os.link(target, root / f"hard{i}")
            names.append(root / f"hard{i}")
    os.mkfifo(root / "pipe")
    names.append(root / "pipe")
    return inputs, names


def _collides(outputs: list[Path], inputs: list[Path]) -> bool:
    def key(p: Path):
        return (os.stat(p).st_dev, os.stat(p).st_ino) if p.exists() else os.path.realpath(p)

    keys = [key(p) for p in outputs]
    return (len(set(keys)) < len(keys) or any(key(i) == k for i in inputs for k in keys)
            or any(p.is_dir() for p in outputs))


def _write(outputs: list[Path], rng: random.Random) -> None:
    for path in outputs:
        if not path.parent.exists():  # only atomic_write makes the folder
            atomic_write_bytes(path, b"new")
            continue
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK) if path.exists() and stat.S_ISFIFO(
            os.stat(path).st_mode) else None  # a FIFO needs a reader; small writes fit its buffer
        try:
            if rng.random() < 0.5:
                atomic_write_bytes(path, b"new")
            else:
                with JsonlSink(path) as sink:
                    sink.write(_step())
        finally:
            if reader is not None:
                os.close(reader)


def _step():
    from soundloc.runtime.results import StepResult

    return StepResult(0, 0.0, np.zeros((4, 4, 3), np.uint8), None, None, 0.0, None, True, 0.0, 0.0, 0.0, {})


def _snapshot(root: Path) -> dict[str, tuple]:
    """Kind and, for links, where they point, of every path (not following links)."""
    out = {}
    for p in root.rglob("*"):
        st = os.lstat(p)
        out[p.name] = (stat.S_IFMT(st.st_mode), os.readlink(p) if p.is_symlink() else None)
    return out


def test_writer_rule_never_modifies_an_input(tmp_path):
    rng = random.Random(13)
    refused = written = 0
    for trial in range(150):
        root = tmp_path / str(trial)
        root.mkdir()
        inputs, names = _world(root, rng)
        declared = rng.sample(inputs, rng.randrange(0, len(inputs) + 1))
        outputs = rng.sample(names, rng.randrange(1, 4))
        before = {p: digest(p) for p in inputs}
        kinds = _snapshot(root)
        try:
            check_outputs(outputs, declared)
        except OutputError:
            refused += 1
            assert _collides(outputs, declared), (outputs, declared)
        else:
            assert not _collides(outputs, declared), (outputs, declared)
            _write(outputs, rng)
            written += 1
        assert {p: digest(p) for p in declared} == {p: before[p] for p in declared}, (outputs, declared)
        after = _snapshot(root)
        assert {k: v for k, v in after.items() if k in kinds} == kinds  # no link or FIFO replaced
        assert not [k for k in after if k not in kinds and k != "new.out" and k != "sub" and k != "missing"]
    assert refused > 20 and written > 20  # both branches were exercised


def test_staged_block_publishes_on_success_and_keeps_the_old_file_on_error(tmp_path):
    from soundloc.fileio import Staged

    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with Staged(out) as staged:
            staged.temp.write_bytes(b"half")
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with Staged(out) as staged:
        staged.temp.write_bytes(b"new")
        assert out.read_bytes() == b"old"  # not before the block ends
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


# -- the rule through missing folders and inside input folders and exports ----------------------------
def _layout(root: Path, rng: random.Random) -> tuple[list[Path], list[Path], list[Path]]:
    """Inputs (files, a dataset folder, an export folder), and every kind of file and folder path
    an output might name: through folders that do not exist, inside the input folders, links."""
    for rel in ("in0.bin", "in1.bin", "data/vggsound.csv", "data/videos/a.mp4", "exp/soundloc.json",
                "exp/step.onnx", "other.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rng.randbytes(rng.randrange(1, 2000)))
    (root / "link_exp").symlink_to("exp")
    os.link(root / "in0.bin", root / "hard0")
    inputs = [root / n for n in ("in0.bin", "in1.bin", "data", "exp", "data/videos/a.mp4")]
    files = [root / n for n in (
        "in0.bin", "nothere/../in0.bin", "a/b/../../in1.bin", "hard0", "nothere/../hard0", "other.txt",
        "nothere/../other.txt", "new.out", "sub/new.out", "data/vggsound.csv", "data/new.json",
        "nothere/x/../../data/vggsound.csv", "data/videos/a.mp4", "data/videos/nothere/../a.mp4",
        "exp/soundloc.json", "exp/nothere/../step.onnx", "link_exp/soundloc.json", "link_exp/events.jsonl",
        "exp/new.jsonl")]
    folders = [root / n for n in ("outdir", "exp", "nothere/../exp", "data/runs", "data", ".", "link_exp",
                                  "data/videos", "nothere/../outdir2")]
    return inputs, files, folders


def _oracle(files: list[Path], folders: list[Path], inputs: list[Path]) -> bool:
    """Whether the outputs collide, decided from what the writes will actually touch."""
    real = [os.path.realpath(p) for p in files]
    existing = [r for r in real if os.path.exists(r)]
    if len({(os.stat(r).st_dev, os.stat(r).st_ino) for r in existing}) < len(existing) or len(set(real)) < len(real):
        return True
    for i in map(os.path.realpath, inputs):
        for r in existing:
            if os.path.samefile(r, i) or (os.path.isdir(i) and r.startswith(i + os.sep)):
                return True
        for d in map(os.path.realpath, folders):
            if d == i or i.startswith(d + os.sep):
                return True
    return False


def _protected(inputs: list[Path]) -> dict[str, str]:
    """Digest of every input file and of every file already inside an input folder."""
    out = {}
    for i in inputs:
        for p in ([i] if i.is_file() else [q for q in i.rglob("*") if q.is_file()]):
            out[os.path.realpath(p)] = digest(p)
    return out


def writer_rule_violations(tmp_path: Path, seed: int, trials: int) -> list[str]:
    """Random layouts: every refusal must be a real collision, every allowed run (files written
    with ``atomic_write_bytes``, folders filled with files named like the inputs) must leave every
    input and every file inside an input folder as it was."""
    rng, problems, refused, written = random.Random(seed), [], 0, 0
    for trial in range(trials):
        root = tmp_path / f"{seed}-{trial}"
        root.mkdir()
        inputs, files, folders = _layout(root, rng)
        declared = rng.sample(inputs, rng.randrange(1, len(inputs) + 1))
        outs = rng.sample(files, rng.randrange(1, 3))
        dirs = rng.sample(folders, rng.randrange(0, 2))
        before = _protected(declared)
        try:
            check_outputs(outs, declared, dirs=dirs)
        except OutputError:
            refused += 1
            if not _oracle(outs, dirs, declared):
                problems.append(f"refused without a collision: {outs} {dirs} {declared}")
            continue
        written += 1
        for path in outs:
            atomic_write_bytes(path, b"new")
        for folder in dirs:
            for name in ("in0.bin", "soundloc.json", "step.onnx", "vggsound.csv", "a.mp4"):
                atomic_write_bytes(folder / name, b"new")
        after = _protected(declared)  # new files inside an input folder are fine; changed ones are not
        if any(after.get(path) != was for path, was in before.items()):
            problems.append(f"an input changed: outputs {outs}, folders {dirs}, inputs {declared}")
    if refused < 10 or written < 10:
        problems.append(f"one branch barely ran: {refused} refused, {written} written")
    return problems


def test_writer_rule_holds_through_missing_folders_and_inside_input_folders(tmp_path):
    assert writer_rule_violations(tmp_path, seed=21, trials=120) == []


def _old_identity(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


@pytest.mark.parametrize("broken", ["identity without resolving missing folders", "no inside-folder rule"])
def test_writer_rule_property_fails_when_the_rule_is_broken(tmp_path, monkeypatch, broken):
    import soundloc.fileio as fileio

    if broken.startswith("identity"):
        monkeypatch.setattr(fileio, "_identity", _old_identity)
    else:
        monkeypatch.setattr(fileio, "_inside", lambda path, folder: False)
    assert any("an input changed" in p for p in writer_rule_violations(tmp_path, seed=21, trials=120))


# -- issue 21, cases 1, 2, 5 through the real command ---------------------------------------------------
def test_output_through_a_missing_folder_is_refused(export, video, tmp_path):
    before = digest(video)
    for flag in ("--events", "--out", "--json"):
        r = stream(export, video, flag, tmp_path / "nothere" / ".." / video.name)
        assert r.returncode == 2 and "is the input" in one_line_error(r), (flag, r.stderr)
    toml = tmp_path / "streams.toml"  # serve's TOML out, through a missing folder onto the input
    toml.write_text(f'[[stream]]\nname = "a"\nvideo = "{video}"\nout = "{tmp_path}/gone/../{video.name}"\n')
    r = soundloc("serve", export, "--sources", toml, "--backend", "onnxruntime-cpu")
    assert r.returncode == 2 and "is the input" in one_line_error(r), r.stderr
    ann = tmp_path / "vggss.json"
    ann.write_text('[{"file": "c0", "class": "x", "bbox": [[0.1, 0.1, 0.6, 0.6]]}]\n')
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(b"an EZ-VSL checkpoint")
    kept = {p: digest(p) for p in (ann, ckpt)}
    for args in (["eval", "--baseline", "center", "--annotations", ann, "--json", tmp_path / "x" / ".." / ann.name],
                 ["import", "ezvsl", ckpt, "--out", tmp_path / "x" / "y" / ".." / ".." / ckpt.name]):
        r = soundloc(*args)
        assert r.returncode == 2 and "is the input" in one_line_error(r), (args, r.stderr)
    assert digest(video) == before and not (tmp_path / "nothere").exists() and not (tmp_path / "x").exists()
    assert {p: digest(p) for p in (ann, ckpt)} == kept


def test_outputs_inside_input_folders_and_exports_are_refused(tiny, clip, export, tmp_path):
    import shutil

    data, exp, run = tmp_path / "data", tmp_path / "exp", tmp_path / "self"
    (data / "videos").mkdir(parents=True)
    (data / "videos" / clip.name).write_bytes(clip.read_bytes())
    (data / "vggsound.csv").write_text(f"{clip.stem[:-7]},{clip.stem[-6:]},dog,test\n")
    shutil.copytree(export, exp)
    run.mkdir()
    (run / "step.onnx").write_bytes(tiny.ckpt.read_bytes())
    (tmp_path / "dw" / "full-size").mkdir(parents=True)
    (tmp_path / "dw" / "full-size" / "soundloc.json").write_text("{}")
    protected = [data / "vggsound.csv", data / "videos" / clip.name, exp / "soundloc.json", run / "step.onnx",
                 tmp_path / "dw" / "full-size" / "soundloc.json"]
    before = {p: digest(p) for p in protected}
    cases = [
        (["train", data, "--out", tmp_path / "r", "--json", data / "vggsound.csv"], "inside the input folder"),
        (["moments", tiny.ckpt, data, "--json", data / "videos" / clip.name], "inside the input folder"),
        (["stream", exp, "--video", data / "videos" / clip.name, "--events", exp / "soundloc.json"],
         "inside the input folder"),
        (["bench", exp, "--json", exp / "soundloc.json"], "inside the input folder"),
        (["export", run / "step.onnx", "--out", run], "holds the input"),
        (["doctor", "--workdir", tmp_path / "dw"], "not empty"),
        (["train", data, "--out", tmp_path / "r", "--json", tmp_path / "r" / "last.pt"], "same file"),
        (["export", tiny.ckpt, "--out", tmp_path / "e", "--json", tmp_path / "e" / "soundloc.json"], "same file"),
    ]
    for args, needle in cases:
        r = soundloc(*args)
        assert r.returncode == 2 and needle in one_line_error(r), (args, r.stderr)
    assert {p: digest(p) for p in protected} == before


def test_files_named_by_a_lavfi_graph_are_inputs(export, video):
    before = digest(video)
    r = soundloc("stream", export, "--video", f"lavfi:movie={video}", "--audio", f"lavfi:amovie={video}",
                 "--out", video, "--backend", "onnxruntime-cpu")
    assert r.returncode == 2 and "is the input" in one_line_error(r), r.stderr
    assert digest(video) == before


# -- issue 21, case 4: a FIFO with no reader never holds off the stop signal -------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stop_signal_ends_a_stream_waiting_for_a_fifo_reader(export, video, tmp_path, signum):
    fifo, out = tmp_path / "ev.fifo", tmp_path / "o.mp4"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "soundloc", "stream", str(export), "--video", str(video),
                             "--backend", "onnxruntime-cpu", "--out", str(out), "--events", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # a hang guard: the mp4 sink opens just before the FIFO's
    while time.monotonic() < deadline and not list(tmp_path.glob("o.*.partial.mp4")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    stdout, err = proc.communicate(timeout=60)  # before the fix: blocked in open() until SIGKILL
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "waiting for a reader" in stdout
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([video.name, fifo.name])  # no temp left


def test_sigterm_ends_serve_while_one_stream_waits_for_a_fifo_reader(export, video, tmp_path):
    fifo = tmp_path / "a.fifo"
    os.mkfifo(fifo)
    toml = tmp_path / "streams.toml"
    toml.write_text(f'[[stream]]\nname = "a"\nvideo = "{video}"\nevents = "{fifo}"\n\n'
                    f'[[stream]]\nname = "b"\nvideo = "{video}"\nout = "{tmp_path}/b.mp4"\n')
    proc = subprocess.Popen([sys.executable, "-m", "soundloc", "serve", str(export), "--sources", str(toml),
                             "--backend", "onnxruntime-cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # a hang guard: stream b finishes and publishes its mp4
    while time.monotonic() < deadline and not (tmp_path / "b.mp4").exists() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # before the fix: never exited
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert frames_in(tmp_path / "b.mp4") == round(CLIP_SECONDS * 10) and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_events_into_a_fifo_whose_reader_stopped_reading_end_on_stop(tmp_path):
    """A reader that opened the FIFO but reads nothing: once the pipe is full a write no longer
    blocks the run when a stop signal has come (``SinkStopped``); before, ``os.write`` blocked."""
    from soundloc.runtime.sinks import SinkStopped

    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    stop = threading.Event()
    stop.set()
    try:
        sink = JsonlSink(fifo, stop=stop)
        with pytest.raises(SinkStopped, match="not reading"):
            for _ in range(100_000):  # the pipe holds 64 KiB: it fills long before this
                sink.write(_step())
        assert sink.lines_written > 10
        sink.close()
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_mp4_into_a_fifo_whose_reader_stopped_reading_ends_on_stop(tmp_path):
    """The mp4 sink writes a FIFO through a non-blocking writer of its own: once the pipe is full
    and a stop signal has come, ``write`` raises ``SinkStopped`` (FFmpeg's own blocking write
    held the signal off), and ``close`` then returns at once, leaving the FIFO a FIFO."""
    from soundloc.runtime.results import StepResult
    from soundloc.runtime.sinks import Mp4Sink, SinkStopped

    fifo = tmp_path / "o.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    stop = threading.Event()
    stop.set()
    rng = np.random.default_rng(0)
    try:
        sink = Mp4Sink(fifo, stop=stop)
        with pytest.raises(SinkStopped, match="not reading"):
            for i in range(1000):  # noise compresses badly: the 64 KiB pipe fills within a few steps
                noise = rng.integers(0, 256, (240, 320, 3), np.uint8)
                sink.write(StepResult(i, i / 10, noise, None, None, 0.0, None, True, 0.0, 0.0, 0.0, {}))
        assert sink.frames_written >= 1
        sink.close()
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_sigterm_ends_a_stream_whose_mp4_fifo_reader_stopped_reading(export, tmp_path):
    """Through the real command: the reader opens the mp4 FIFO and never reads; once the pipe is
    full the stream waits in its write, and SIGTERM still ends it (exit 143, no traceback)."""
    import fcntl
    import termios

    noisy = tmp_path / "noise.mp4"
    rng = np.random.default_rng(1)
    with av.open(str(noisy), "w") as c:
        vs = c.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        for i in range(200):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (240, 320, 3), np.uint8), format="rgb24")
            frame.pts = i
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
    fifo = tmp_path / "o.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "soundloc", "stream", str(export), "--video", str(noisy),
                                 "--backend", "onnxruntime-cpu", "--video-only", "--out", str(fifo)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Wait until the pipe is full: bytes are waiting unread and their count stopped growing
        # for 2 s (the stream runs faster than real time, so it is stuck in its write).
        deadline = time.monotonic() + 120  # a hang guard
        last, since, pending = -1, time.monotonic(), bytearray(4)
        while time.monotonic() < deadline and proc.poll() is None:
            fcntl.ioctl(reader, termios.FIONREAD, pending)
            now = int.from_bytes(pending, sys.byteorder)
            if now != last:
                last, since = now, time.monotonic()
            elif now > 0 and time.monotonic() - since > 2.0:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # before: blocked in FFmpeg's write until SIGKILL
    finally:
        os.close(reader)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# -- issue 21, case 3: annotate --restart replaces the old result only with finished clips ------------
def test_annotate_restart_with_no_clip_keeps_the_old_result(tiny, tmp_path):
    out, empty = tmp_path / "boxes.json", tmp_path / "empty"
    empty.mkdir()
    out.write_text('[{"file": "old_000000", "bbox": []}]\n')
    before = digest(out)
    r = soundloc("annotate", tiny.ckpt, empty, "--out", out, "--restart")
    assert r.returncode == 0 and "left as it was" in r.stdout, r.stderr
    assert digest(out) == before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc to see which clip is open")
def test_annotate_restart_stopped_before_its_first_clip_keeps_the_old_result(tiny, tmp_path):
    folder, out = tmp_path / "clips", tmp_path / "boxes.json"
    folder.mkdir()
    long = write_video(folder / "a_000000.mp4", 120.0)  # open for a while: decoding 1,200 frames
    out.write_text('[{"file": "old_000000", "bbox": []}]\n')
    before = digest(out)

    def finished_then_reset() -> None:
        assert digest(out) != before  # it finished the clip: now it may replace the old result
        out.write_text('[{"file": "old_000000", "bbox": []}]\n')

    proc = _annotate_once_clip_is_open([tiny.ckpt, folder, "--out", out, "--restart"], long,
                                       before_retry=finished_then_reset)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert digest(out) == before  # before the fix: []


def test_annotate_resume_file_with_entries_that_are_not_objects_is_one_line(tiny, tmp_path):
    out, empty = tmp_path / "boxes.json", tmp_path / "empty"
    empty.mkdir()
    out.write_text("[1, 2, 3]\n")
    r = soundloc("annotate", tiny.ckpt, empty, "--out", out)
    assert r.returncode == 2 and "cannot resume" in one_line_error(r), r.stderr
    assert out.read_text() == "[1, 2, 3]\n"
