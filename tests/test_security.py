"""Security (issue 7): a checkpoint that would run code is refused by every path that loads one
and its payload never runs; the preview binds 127.0.0.1 unless told otherwise (and warns);
file names from annotation files stay inside the dataset root; nothing is downloaded at run
time (no network client in the package, and the stream works with no network at all).

Covered elsewhere and not repeated: ``load_checkpoint`` refusing the same pickle
(test_checkpoint), PreviewServer's bind address and warning as a library (test_preview),
``safe_join`` / the dataset CSV readers refusing ``..`` and absolute names (test_annotations,
test_dataset).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) needed to write checkpoints")

from soundloc.model.checkpoint import CheckpointError, load_video_weights, read_checkpoint  # noqa: E402
from test_bad_inputs import assert_one_line_error, run_cli, write_media  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "soundloc"


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path, like: Path | None = None) -> Path:
    """A checkpoint (a real one's dict, when ``like`` is given) with the payload inside."""
    data = torch.load(like, weights_only=True) if like is not None else {"format": "soundloc-checkpoint"}
    data["optimizer"] = _Payload(marker)
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from soundloc.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, num_clips=2, seconds=1.0, num_classes=2, val_fraction=0.0, workers=1, size=64)
    return root


# -- malicious pickles ----------------------------------------------------------------------------
def test_payload_really_runs_under_plain_pickle(tmp_path):
    # the fixture is dangerous for real: an unsafe torch.load would create the marker
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_library_loaders_refuse_the_payload(tmp_path, tiny):
    from soundloc.config import preset
    from soundloc.model.classifier import AVClassifier
    from soundloc.runtime.backend_spec import load_step_model

    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, like=tiny.ckpt)
    for load in (read_checkpoint, lambda p: load_video_weights(AVClassifier(preset("tiny", num_classes=4)), p),
                 lambda p: load_step_model(p, "torch")):
        with pytest.raises(CheckpointError, match="refused") as e:
            load(path)
        assert "\n" not in str(e.value)
    assert not marker.exists()


CLI_PATHS = {
    "info": lambda ckpt, d, tmp: ["info", ckpt],
    "export": lambda ckpt, d, tmp: ["export", ckpt, "--out", tmp / "exp"],
    "stream-torch": lambda ckpt, d, tmp: ["stream", ckpt, "--backend", "torch", "--video",
                                          next((d / "videos").glob("*.mp4"))],
    "eval": lambda ckpt, d, tmp: ["eval", ckpt, "--videos", d, "--annotations", d / "vggss.json"],
    "train-init-video": lambda ckpt, d, tmp: ["train", d, "--out", tmp / "run", "--init-video", ckpt,
                                              "--preset", "tiny", "--epochs", "1", "--val-split", "none"],
}


@pytest.mark.parametrize("command", list(CLI_PATHS))
def test_cli_refuses_the_payload_in_one_line(tmp_path, tiny, data_dir, command):
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, like=tiny.ckpt)
    r = run_cli(*CLI_PATHS[command](path, data_dir, tmp_path))
    assert_one_line_error(r, "refused", "evil.pt")
    assert not marker.exists()
    assert not (tmp_path / "exp" / "soundloc.json").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_train_resume_refuses_a_planted_last_pt(tmp_path, tiny, data_dir):
    marker = tmp_path / "pwned"
    (tmp_path / "run").mkdir()
    evil_checkpoint(tmp_path / "run" / "last.pt", marker, like=tiny.ckpt)
    for extra in ([], ["--preset", "tiny"]):  # the config read (no preset) and the weight restore
        r = run_cli("train", data_dir, "--out", tmp_path / "run", "--resume", "--epochs", "2",
                    "--val-split", "none", *extra)
        assert_one_line_error(r, "refused", "last.pt")
    assert not marker.exists()


# -- the preview server's address --------------------------------------------------------------------
def test_cli_preview_binds_loopback_by_default_and_warns_for_other_hosts(tmp_path, tiny):
    clip = write_media(tmp_path / "clip.mp4", n=10)
    r = run_cli("stream", tiny.export, "--video", clip, "--preview", "--port", "0")
    assert r.returncode == 0, r.stderr
    assert "preview: http://127.0.0.1:" in r.stdout and "warning" not in (r.stdout + r.stderr).lower()
    r = run_cli("stream", tiny.export, "--video", clip, "--preview", "--port", "0", "--host", "0.0.0.0")
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "preview: http://0.0.0.0:" in text
    assert "warning" in text.lower() and "0.0.0.0" in text


# -- names from annotation files stay inside the root --------------------------------------------------
def test_find_video_never_leaves_the_videos_folder(tmp_path):
    from soundloc.data.annotations import AnnotationError
    from soundloc.data.annotations import find_video

    (tmp_path / "videos").mkdir()
    (tmp_path / "secret_000000.mp4").write_bytes(b"outside")  # exists, one level up
    write_media(tmp_path / "videos" / "ok_000000.mp4", n=2)
    assert find_video(tmp_path / "videos", "ok_000000") == tmp_path / "videos" / "ok_000000.mp4"
    for clip_id in ("../secret_000000", "videos/../../secret_000000", str(tmp_path / "secret_000000")):
        with pytest.raises(AnnotationError, match="unsafe file name"):
            find_video(tmp_path / "videos", clip_id)
    os.symlink(tmp_path / "secret_000000.mp4", tmp_path / "videos" / "link_000000.mp4")
    with pytest.raises(AnnotationError, match="resolves outside"):
        find_video(tmp_path / "videos", "link_000000")


def test_eval_with_escaping_ids_in_vggss_json_is_one_line(tmp_path, tiny, data_dir):
    (tmp_path / "secret_000000.mp4").write_bytes((next((data_dir / "videos").glob("*.mp4"))).read_bytes())
    shutil.copytree(data_dir / "videos", tmp_path / "videos")
    ann = [{"file": "../secret_000000", "class": "x", "bbox": [[0.1, 0.1, 0.5, 0.5]]}]
    (tmp_path / "vggss.json").write_text(json.dumps(ann))
    r = run_cli("eval", tiny.ckpt, "--videos", tmp_path / "videos", "--annotations", tmp_path / "vggss.json")
    assert "Traceback" not in r.stderr
    assert r.returncode != 0 or "skipped" in r.stdout.lower(), (r.stdout, r.stderr)
    assert "unsafe file name" in r.stderr + r.stdout


@pytest.mark.parametrize("csv_text, where", [("../../etc/passwd,0,cat,train\n", "vggsound.csv"),
                                             ("/etc/passwd,cat\n", "list.csv")])
def test_train_cli_refuses_escaping_names_in_one_line(tmp_path, csv_text, where):
    target = tmp_path / "data"
    target.mkdir()
    (target / where).write_text(csv_text)
    r = run_cli("train", target / where if where == "list.csv" else target, "--out", tmp_path / "run",
                "--preset", "tiny", "--epochs", "1", "--val-split", "none")
    line = assert_one_line_error(r, where)
    assert "dataset root" in line or "path separator" in line


# -- nothing downloaded at run time ------------------------------------------------------------------------
NETWORK_MODULES = {"socket", "ssl", "http.client", "http.server", "urllib.request", "urllib3", "requests", "httpx",
                   "aiohttp", "ftplib", "smtplib", "torch.hub", "huggingface_hub", "pip", "ensurepip"}
ALLOWED = {"runtime/preview.py": {"http.server", "socket"}}  # the local preview page, 127.0.0.1 by default


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names.add(f"{node.value.id}.{node.attr}")  # torch.hub.load(...), urllib.request.urlopen
    return {n for n in names if any(n == m or n.startswith(m + ".") for m in NETWORK_MODULES)}


def test_no_network_client_in_the_package():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        hits = _imports(path)
        if hits:
            found[path.relative_to(PACKAGE).as_posix()] = {h if h in NETWORK_MODULES else h.rsplit(".", 1)[0]
                                                           for h in hits}
    assert found == ALLOWED
    for path in PACKAGE.rglob("*.py"):  # no `pip install` run by the code (hints in messages are fine)
        text = path.read_text()
        assert not ("subprocess" in text and ('"pip"' in text or "'pip'" in text)), path


AUDIT = r"""
import sys
events = []
def hook(event, args):
    if event.startswith("socket.") and event != "socket.__new__":
        events.append((event, repr(args)[:120]))
sys.addaudithook(hook)
import atexit
atexit.register(lambda: print("SOCKET_EVENTS", events, file=sys.stderr))
sys.argv = ["soundloc", *sys.argv[1:]]
from soundloc.cli import main
main()
"""


def _offline_prefix() -> list[str]:
    """``unshare -n`` (a network namespace with nothing in it) where this user may create one."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if probe.returncode == 0 else []


def test_stream_runs_offline_and_opens_no_socket(tmp_path, tiny):
    clip = write_media(tmp_path / "clip.mp4", n=20)
    prefix = _offline_prefix()
    r = subprocess.run([*prefix, sys.executable, "-c", AUDIT, "stream", str(tiny.export), "--video", str(clip),
                        "--out", str(tmp_path / "o.mp4"), "--events", str(tmp_path / "ev.jsonl")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "SOCKET_EVENTS []" in r.stderr, r.stderr[-2000:]  # not one connect, bind or lookup
    assert (tmp_path / "o.mp4").stat().st_size > 0 and len((tmp_path / "ev.jsonl").read_text().splitlines()) == 20
    if not prefix:
        pytest.skip("ran without network isolation: `unshare -n` is not permitted here (the audit hook still "
                    "saw no socket use)")


def test_bundled_demo_runs_offline(tmp_path):
    prefix = _offline_prefix()
    if not prefix:
        pytest.skip("`unshare -n` is not permitted here: cannot take the network away")
    r = subprocess.run([*prefix, sys.executable, "-c", AUDIT, "demo", "--out", str(tmp_path / "demo"),
                        "--seconds", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SOCKET_EVENTS []" in r.stderr
    assert (tmp_path / "demo" / "demo.mp4").stat().st_size > 0
