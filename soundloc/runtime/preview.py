"""A live preview page: the annotated stream as MJPEG plus a status line, stdlib HTTP only.

``GET /`` a page with ``<img src="/stream.mjpg">`` and status polled from ``/status.json``;
``/stream.mjpg`` multipart/x-mixed-replace JPEGs, one per published frame; ``/frame.jpg``
the latest still. ``PreviewGrid`` serves several streams (``soundloc serve``) as one mosaic,
a tile per stream, with every stream's status in ``/status.json``. JPEGs are encoded lazily, once per frame whoever asks, so with nobody
watching publishing costs nothing but a reference swap.

At most ``MAX_CLIENTS`` connections are served at once (more get a 503 and are closed), and a
connection that sends nothing for ``IDLE_TIMEOUT_S`` (or cannot take a frame that long) is
closed, so idle or stuck viewers cannot pile up threads.

It binds 127.0.0.1 unless told otherwise: the stream shows whatever the camera sees, so
exposing it on the network is the user's explicit choice and a warning is printed.
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import sys
import math
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

import numpy as np
from PIL import Image, ImageDraw

from ..config import SERVE_MOSAIC_MAX, SERVE_PREVIEW_PERIOD_S, SERVE_TILE
from .render import Labeler, render_step
from .results import StepResult
from .sinks import SinkError, json_safe

BOUNDARY = b"soundloc-frame"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>soundloc preview</title>
<style>
 body { margin: 0; background: #111; color: #ddd; font: 14px system-ui, sans-serif; }
 #view { display: block; width: 100vw; height: calc(100vh - 2.2em); object-fit: contain; }
 #status { height: 2.2em; line-height: 2.2em; padding: 0 .8em; white-space: nowrap; }
</style></head>
<body>
<img id="view" src="/stream.mjpg" alt="live localization">
<div id="status">waiting for the first frame&hellip;</div>
<script>
const fields = ["index", "pts", "fps", "latency_ms", "drops", "gated", "score", "label", "confidence", "visible"];
async function poll() {
  try {
    const s = await (await fetch("/status.json", {cache: "no-store"})).json();
    document.getElementById("status").textContent = fields
      .filter(k => k in s).map(k => k + " " + s[k]).join("  |  ");
  } catch (e) {
    document.getElementById("status").textContent = "stream stopped";
  }
  setTimeout(poll, 500);
}
poll();
</script>
</body></html>
"""


MAX_CLIENTS = 32  # connections served at once; a live page needs two (the stream and status polls)
IDLE_TIMEOUT_S = 10.0  # a connection silent (or not taking data) this long is closed


class PreviewServer:
    """Serve the latest frame on ``http://host:port/`` from a daemon thread; also a Sink.

    ``port=0`` picks a free port (read ``.port`` or ``.url``). ``publish(frame, status)``
    takes an (H, W, 3) uint8 RGB frame and a JSON-able dict; ``write(result)`` draws the
    step's overlay and publishes it with ``result.event()``. ``close()`` stops the server,
    ends every open stream at once and joins the thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        quality: int = 80,
        alpha: float = 0.45,
        labeler: Labeler | None = None,
        log: TextIO | None = None,
        page: str = PAGE,
        max_clients: int = MAX_CLIENTS,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.quality, self.alpha, self.labeler, self.page = quality, alpha, labeler, page
        self.status_now: Callable[[], dict] | None = None
        self._log = log if log is not None else sys.stderr
        self._changed = threading.Condition()
        self._frame: np.ndarray | None = None
        self._status: dict = {}
        self._seq = 0
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._jpeg_lock = threading.Lock()
        self._closing = threading.Event()
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        try:
            self._httpd = _Server((host, port), _Handler, self, max_clients, idle_timeout)
        except OSError as exc:
            raise SinkError(f"cannot serve the preview on {host}:{port}: {exc.strerror or exc}") from exc
        self.host, self.port = host, self._httpd.server_address[1]
        if not is_loopback(host):
            print(f"soundloc: warning: the preview on {self.url} is visible to every machine "
                  "that can reach this host; it shows what the camera sees", file=self._log)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="soundloc-preview", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else (self.host or "0.0.0.0")
        return f"http://{host}:{self.port}/"

    def __enter__(self) -> PreviewServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def publish(self, frame_rgb: np.ndarray, status: dict | None = None) -> None:
        """Make ``frame_rgb`` (H, W, 3) uint8 the latest frame; the array must not change after."""
        if frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
            raise ValueError(f"frame must be (H, W, 3) uint8 RGB, got {frame_rgb.dtype} {frame_rgb.shape}")
        with self._changed:
            self._frame = frame_rgb
            self._status = json_safe(dict(status or {}))
            self._seq += 1
            self._changed.notify_all()

    def write(self, result: StepResult) -> None:
        self.publish(render_step(result, alpha=self.alpha, labeler=self.labeler), result.event())

    def close(self) -> None:
        """Stop serving: end open streams, shut the listener, join the server thread."""
        if self._closing.is_set():
            return
        self._closing.set()
        with self._changed:
            self._changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._clients_lock:
            clients = list(self._clients)
        for conn in clients:
            _hang_up(conn)
        self._thread.join(timeout=5)

    # --- used by the request handler threads ---------------------------------------

    def status(self) -> dict:
        """What ``/status.json`` answers: the last published status, or ``status_now()``'s
        (a grid's statuses, fresh at each request without recomposing its mosaic)."""
        with self._changed:
            seq, status = self._seq, self._status
        if self.status_now is not None:
            status = json_safe(self.status_now())
        return {**status, "frame": seq}

    def wait_frame(self, after: int, timeout: float) -> int:
        """Block until a frame newer than ``after`` is published; return its number (or
        ``after`` on timeout or close)."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > after or self._closing.is_set(), timeout)
            return self._seq

    def jpeg(self) -> tuple[int, bytes]:
        """(frame number, JPEG bytes) of the latest frame, encoded once per frame."""
        with self._changed:
            seq, frame = self._seq, self._frame
        with self._jpeg_lock:
            if self._jpeg[0] != seq and frame is not None:
                buffer = io.BytesIO()
                Image.fromarray(frame, "RGB").save(buffer, "JPEG", quality=self.quality)
                self._jpeg = (seq, buffer.getvalue())
            return self._jpeg

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._clients_lock:
            (self._clients.add if add else self._clients.discard)(conn)


GRID_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>soundloc serve</title>
<style>
 body { margin: 0; background: #111; color: #ddd; font: 14px system-ui, sans-serif; }
 #view { display: block; width: 100vw; max-height: 75vh; object-fit: contain; }
 table { border-collapse: collapse; margin: .5em; } td, th { padding: .15em .7em; text-align: right; }
</style></head>
<body>
<img id="view" src="/stream.mjpg" alt="every stream">
<table id="status"><tr><td>waiting for the first frame&hellip;</td></tr></table>
<script>
const fields = ["state", "index", "score", "gated", "latency_ms", "drops", "behind"];
async function poll() {
  const table = document.getElementById("status");
  try {
    const s = await (await fetch("/status.json", {cache: "no-store"})).json();
    const rows = Object.entries(s.streams || {}).map(([name, st]) =>
      "<tr><th>" + name + "</th>" + fields.map(k => "<td>" + (k in st ? st[k] : "") + "</td>").join("") + "</tr>");
    table.innerHTML = "<tr><th></th>" + fields.map(k => "<th>" + k + "</th>").join("") + "</tr>" + rows.join("");
  } catch (e) {
    table.innerHTML = "<tr><td>stopped</td></tr>";
  }
  setTimeout(poll, 500);
}
poll();
</script>
</body></html>
"""


class PreviewGrid:
    """Several streams on one preview page: each stream's latest frame, drawn as ``soundloc
    stream`` draws it, shrunk into a tile of one mosaic (rows of ``ceil(sqrt(n))`` tiles, named,
    in the order given); ``/status.json`` is ``{"streams": {name: latest event + state}, ...extra()}``.
    ``tile(name)`` is the stream's Sink. The mosaic is recomposed at most every
    ``SERVE_PREVIEW_PERIOD_S``, so many streams cost a few compositions a second."""

    def __init__(self, names: list[str], host: str = "127.0.0.1", port: int = 8080, *,
                 extra: Callable[[], dict] = dict, tile: tuple[int, int] = SERVE_TILE, **kwargs) -> None:
        self.names, self.extra = list(names), extra
        self._index = {n: k for k, n in enumerate(self.names)}
        self.cols = max(1, math.ceil(math.sqrt(len(self.names))))
        rows = max(1, math.ceil(len(self.names) / self.cols))
        # tiles shrink so the mosaic stays within SERVE_MOSAIC_MAX: its copies and JPEGs cost the
        # same for 2000 streams as for 20, and each update is O(1)
        scale = min(1.0, SERVE_MOSAIC_MAX[0] / (self.cols * tile[0]), SERVE_MOSAIC_MAX[1] / (rows * tile[1]))
        self.size = tile = (max(8, int(tile[0] * scale)), max(8, int(tile[1] * scale)))
        self._mosaic = np.zeros((rows * tile[1], self.cols * tile[0], 3), np.uint8)
        self._status: dict[str, dict] = {n: {"state": "starting"} for n in self.names}
        self._lock = threading.Lock()
        self._last = -math.inf
        self.server = PreviewServer(host, port, page=GRID_PAGE, **kwargs)
        self.server.status_now = self._status_now
        self.url = self.server.url

    def tile(self, name: str, stats: Callable[[], dict] = dict) -> "_Tile":
        """The Sink of stream ``name``; ``stats()`` is merged into its status at each step."""
        return _Tile(self, name, stats)

    def update(self, name: str, image: np.ndarray | None, status: dict) -> None:
        """Put ``image`` (H, W, 3) uint8 into ``name``'s tile, set its status, publish if due."""
        small = None if image is None else self._fit(image, name)
        with self._lock:
            if small is not None:
                k = self._index[name]
                y, x = (k // self.cols) * self.size[1], (k % self.cols) * self.size[0]
                self._mosaic[y:y + self.size[1], x:x + self.size[0]] = small
            self._status[name] = status
            now = time.monotonic()
            if image is None or now - self._last < SERVE_PREVIEW_PERIOD_S:  # status is read fresh
                return  # (``_status_now``): N streams ending at once must not recompose the mosaic N times
            self._last = now
            frame = self._mosaic.copy()
            status = {"streams": dict(self._status), **self.extra()}
        self.server.publish(frame, status)

    def status(self, name: str) -> dict:
        with self._lock:
            return dict(self._status[name])

    def _status_now(self) -> dict:
        with self._lock:
            streams = dict(self._status)
        return {"streams": streams, **self.extra()}

    def _fit(self, image: np.ndarray, name: str) -> np.ndarray:
        """The image scaled to fit the tile (aspect kept, centred on black), its name on top."""
        w, h = self.size
        scale = min(w / image.shape[1], h / image.shape[0])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        tile = Image.new("RGB", (w, h))
        tile.paste(Image.fromarray(np.ascontiguousarray(image), "RGB").resize(size, Image.BILINEAR),
                   ((w - size[0]) // 2, (h - size[1]) // 2))
        draw = ImageDraw.Draw(tile)
        draw.rectangle(draw.textbbox((2, 2), name), fill=(0, 0, 0))
        draw.text((2, 2), name, fill=(255, 255, 255))
        return np.asarray(tile)

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> "PreviewGrid":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Tile:
    """One stream's Sink into a ``PreviewGrid``."""

    def __init__(self, grid: PreviewGrid, name: str, stats: Callable[[], dict]) -> None:
        self.grid, self.name, self.stats = grid, name, stats
        self.steps = 0
        self.closed = False

    def write(self, result: StepResult) -> None:
        self.steps += 1
        image = render_step(result, alpha=self.grid.server.alpha, labeler=self.grid.server.labeler)
        self.grid.update(self.name, image, {"state": "running", **result.event(), **self.stats()})

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.grid.update(self.name, None, {**self.grid.status(self.name), "state": "ended", **self.stats()})


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks the process from exiting
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, preview: PreviewServer, max_clients: int,
                 idle_timeout: float) -> None:
        self.preview, self.idle_timeout = preview, idle_timeout
        self._slots = threading.BoundedSemaphore(max_clients)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


    def process_request(self, request: socket.socket, client_address: object) -> None:
        """A thread per connection, up to the cap; beyond it a 503 from this (the listening)
        thread, which must not wait on the client: a short timeout, then closed."""
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n"
        b"Connection: close\r\n\r\ntoo many viewers; try again\n")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # StreamRequestHandler sets it on the socket
        super().setup()
        self.server.preview.track(self.connection, add=True)

    def finish(self) -> None:
        self.server.preview.track(self.connection, add=False)
        try:
            super().finish()
        except OSError:
            return  # the client or close() hung up first: nothing left to flush

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        route = self.path.split("?", 1)[0]
        try:
            if route in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.server.preview.page.encode())
            elif route == "/status.json":
                body = json.dumps(self.server.preview.status(), allow_nan=False).encode()
                self._send(HTTPStatus.OK, "application/json", body)
            elif route == "/frame.jpg":
                self._send_still()
            elif route == "/stream.mjpg":
                self._stream()
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True  # the viewer went away: normal for a live page

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        return  # one line per request would drown the terminal status line

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_still(self) -> None:
        seq, body = self.server.preview.jpeg()
        if not body:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
        else:
            self._send(HTTPStatus.OK, "image/jpeg", body)

    def _stream(self) -> None:
        """One JPEG part per new frame; each part is closed by the next boundary right away,
        since browsers show a part only once its end is known."""
        preview = self.server.preview
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"--" + BOUNDARY + b"\r\n")
        sent = 0
        while not preview.closing:
            if preview.wait_frame(sent, timeout=0.5) == sent:
                continue
            sent, body = preview.jpeg()
            head = b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
            self.wfile.write(head + body + b"\r\n--" + BOUNDARY + b"\r\n")
            self.wfile.flush()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; "" and 0.0.0.0 mean every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hang_up(conn: socket.socket) -> None:
    """End a client's connection now; it may already be gone (that is fine)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        return
