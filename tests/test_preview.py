"""The live preview server: binding, endpoints, MJPEG stream, prompt close, and the page
in a real headless Chromium driven over the DevTools protocol."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from soundloc.runtime.preview import BOUNDARY, PreviewServer, is_loopback
from soundloc.runtime.results import StepResult
from soundloc.runtime.sinks import SinkError

CHROMIUM = Path("/usr/bin/chromium")
RED, BLUE = (230, 20, 20), (20, 20, 230)


def solid(color: tuple[int, int, int], height: int = 240, width: int = 320) -> np.ndarray:
    return np.full((height, width, 3), color, np.uint8)


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def jpeg_colour(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3).mean(axis=0)


@pytest.fixture
def server():
    preview = PreviewServer(port=0, log=io.StringIO())
    yield preview
    preview.close()


def test_binds_loopback_by_default_without_warning():
    log = io.StringIO()
    with PreviewServer(port=0, log=log) as preview:
        assert preview._httpd.server_address[0] == "127.0.0.1"
        assert preview.url == f"http://127.0.0.1:{preview.port}/"
    assert log.getvalue() == ""


def test_non_loopback_host_prints_a_warning():
    log = io.StringIO()
    with PreviewServer(host="0.0.0.0", port=0, log=log):
        pass
    assert "warning" in log.getvalue() and "visible" in log.getvalue()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("192.168.1.2")


def test_busy_port_is_a_one_line_error(server):
    with pytest.raises(SinkError, match=f"127.0.0.1:{server.port}"):
        PreviewServer(port=server.port, log=io.StringIO())


def test_page_status_and_still(server):
    status, kind, page = get(server.url)
    assert status == 200 and kind.startswith("text/html")
    assert b'<img id="view" src="/stream.mjpg"' in page and b"/status.json" in page
    assert get(server.url + "frame.jpg")[0] == 503  # nothing published yet
    server.publish(solid(RED), {"index": 7, "score": float("nan")})
    status, kind, body = get(server.url + "status.json")
    assert status == 200 and kind == "application/json"
    assert json.loads(body) == {"index": 7, "score": None, "frame": 1}
    status, kind, body = get(server.url + "frame.jpg")
    assert status == 200 and kind == "image/jpeg"
    np.testing.assert_allclose(jpeg_colour(body), RED, atol=6)
    assert get(server.url + "nope")[0] == 404


def test_write_publishes_the_overlay(server):
    heatmap = np.zeros((7, 7), np.float32)
    heatmap[3, 3] = 1.0
    step = StepResult(4, 0.4, solid((90, 90, 90)), np.zeros(1600, np.float32), heatmap, 0.8,
                      None, False, 0.0, 0.02, 0.5)
    server.write(step)
    _, _, body = get(server.url + "frame.jpg")
    centre = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))[120, 160].astype(int)
    assert centre[0] > centre[1] + 40  # the hot map cell, turbo red
    assert json.loads(get(server.url + "status.json")[2])["index"] == 4


def read_part(stream) -> bytes:
    """One JPEG from a multipart/x-mixed-replace body."""
    headers = {}
    line = stream.readline()
    while line.strip() in (b"", b"--" + BOUNDARY):
        line = stream.readline()
    while line.strip():
        key, value = line.decode().split(":", 1)
        headers[key.strip().lower()] = value.strip()
        line = stream.readline()
    assert headers["content-type"] == "image/jpeg"
    return stream.read(int(headers["content-length"]))


def test_mjpeg_stream_sends_each_new_frame_and_close_ends_it(server):
    server.publish(solid(RED), {})
    response = urllib.request.urlopen(server.url + "stream.mjpg", timeout=5)
    assert response.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}"
    np.testing.assert_allclose(jpeg_colour(read_part(response)), RED, atol=6)
    server.publish(solid(BLUE), {})
    np.testing.assert_allclose(jpeg_colour(read_part(response)), BLUE, atol=6)
    server.close()
    # EOF instead of waiting for frames: a read still waiting would raise the 5 s socket timeout
    # (no wall-clock bound here: on a loaded machine that would be a flaky test).
    assert response.read() is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fds 3 and 4, JSON messages
    ended by NUL). ``--screenshot`` cannot be used: it waits for the page's load to finish
    and an MJPEG stream never finishes; the protocol lets one page run while we shoot it."""

    def __init__(self, profile: Path, width: int = 640, height: int = 480) -> None:
        args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                f"--window-size={width},{height}", "about:blank"]
        to_read, self._to = os.pipe()
        self._from, from_write = os.pipe()
        # The shell moves our pipes to fds 3 and 4, where Chromium expects them.
        command = "exec " + shlex.join(args) + " 3<&0 4>&1 </dev/null >/dev/null"
        # Its own session: a signal Chromium (or anything it starts) sends to its process group,
        # or a terminal's Ctrl-C, never reaches the test process.
        self.proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=to_read, stdout=from_write,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_read)
        os.close(from_write)
        self._buffer, self._id = b"", 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            ready, _, _ = select.select([self._from], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"chromium did not answer {method}")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buffer += chunk

    def screenshot(self, session: str) -> np.ndarray:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self._to)
            os.close(self._from)


def share_of(image: np.ndarray, color: tuple[int, int, int]) -> float:
    return float(np.all(np.abs(image.astype(int) - color) < 30, axis=2).mean())


@pytest.mark.skipif(not CHROMIUM.exists() or shutil.which("sh") is None, reason="chromium not installed")
def test_page_in_headless_chromium_shows_a_frame_that_changes(server, tmp_path):
    colour = [RED]
    stop = threading.Event()

    def publisher() -> None:  # a 10 fps "stream"
        index = 0
        while not stop.is_set():
            server.publish(solid(colour[0]), {"index": index, "fps": 10.0})
            index += 1
            time.sleep(0.1)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": server.url})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        deadline = time.monotonic() + 15
        first = browser.screenshot(session)
        while share_of(first, RED) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.2)
            first = browser.screenshot(session)
        colour[0] = BLUE
        time.sleep(1.0)
        second = browser.screenshot(session)
        text = browser.send("Runtime.evaluate", {"expression": "document.getElementById('status').textContent"},
                            session)["result"]["value"]
    finally:
        browser.close()
        stop.set()
        thread.join()
    assert share_of(first, RED) > 0.3 and share_of(first, BLUE) < 0.01
    assert share_of(second, BLUE) > 0.3 and share_of(second, RED) < 0.01
    assert "index" in text and "fps 10" in text  # status polled from /status.json


# -- issue 21, case 7: connections capped, idle ones closed -------------------------------------------
def test_connections_beyond_the_cap_get_a_503_and_slots_come_back():
    with PreviewServer(port=0, max_clients=4, idle_timeout=60) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            assert extra.recv(100).startswith(b"HTTP/1.1 503")  # before: a thread per connection, no cap
        finally:
            extra.close()
            for s in idle:
                s.close()
        deadline = time.monotonic() + 60  # a hang guard: the handlers see the hang-ups and free their slots
        while True:
            try:
                assert get(server.url)[0] == 200
                break
            except (urllib.error.HTTPError, AssertionError):
                assert time.monotonic() < deadline, "the slots never came back"
                time.sleep(0.1)


def test_a_silent_connection_is_closed_after_the_idle_timeout():
    with PreviewServer(port=0, idle_timeout=0.5) as server:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        try:
            assert conn.recv(1) == b""  # the server hung up; before: held open (and a thread) forever
        finally:
            conn.close()
