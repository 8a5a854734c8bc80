"""The HTTP side of ``asapnet paint``: a local web server for the painting page.

Server stack: the standard library's ``http.server.ThreadingHTTPServer``. The tool serves one
person on their own machine with a few tabs open; what it needs is a handful of routes, request
bodies up to ~17 MiB, keep-alive, and a thread per connection that may block while its frame is
computed. The standard library does all of that with no dependency to install, pin or audit; an
async framework would not make a frame faster (one model runs one frame at a time either way) and
a WSGI/ASGI stack would add a server and a framework for five routes. What the standard library
does not do is added here: a cap on connections (one more gets a 503 at once), a read timeout
(a silent client cannot hold a thread), JSON errors instead of HTML error pages, and no traceback
ever sent to a client (unexpected errors are logged on the server and answered with a 500).

Routes (every error is JSON ``{"error": message}`` with a 4xx/5xx status):

- ``GET /``, ``GET /static/<file>``: the page (HTML, CSS, JS from the package; nothing external).
- ``GET /api/model``: the model: input kind, classes, colours, raw values, sizes, examples.
- ``GET /api/examples/<i>``: held-out example ``i`` as a class-index grid (see below).
- ``POST /api/labels``: a label-map PNG (raw values of the model's label convention) checked and
  returned as a class-index grid.
- ``POST /api/translate?client=ID&seq=N&size=S``: a label-map PNG (or, for image models, an
  image PNG) in, the photo out as a PNG, ``S`` pixels on its longer side (256..2048); headers
  ``X-LR-Stream-Ms``, ``X-HR-Stream-Ms``, ``X-Queue-Ms``, ``X-Seq``. ``ID`` names the tab and ``N``
  numbers its requests: a request replaced by a newer one of the same tab before it ran is
  answered ``204 No Content`` with ``X-Paint-Dropped: stale``. Both answers carry
  ``X-Frame-Ms``, the model's time for the latest frame of any tab (the page paces its requests
  by it).
- ``GET /api/stats``: counts of frames served, dropped as stale, errors; waiting tabs.

A class-index grid is ``application/octet-stream``: height x width little-endian uint16 class
indices, row by row, with ``X-Label-Height`` and ``X-Label-Width`` headers.
"""

from __future__ import annotations

import io
import json
import logging
import re
import select
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
from PIL import Image

from .engine import MAX_UPLOAD_BYTES, Busy, FrameScheduler, Job, PaintModel, UploadError

__all__ = ["PaintServer", "make_server"]

log = logging.getLogger("asapnet_triton.paint")

_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
FRAME_TIMEOUT_S = 600  # a frame that waits longer than this is answered 504


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the package's static/ folder, read once: name -> (bytes, content type)."""
    files = {}
    for entry in resources.files("asapnet_triton.paint").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    if "index.html" not in files:
        raise RuntimeError("asapnet_triton/paint/static/index.html is missing from the installed package")
    return files


def _label_grid(labels: torch.Tensor) -> bytes:
    return labels.to(torch.int32).numpy().astype("<u2").tobytes()


def encode_png(photo: np.ndarray) -> bytes:
    """(H, W, 3) uint8 as PNG bytes; compression level 1: a 2048 x 2048 frame encodes in tens of
    milliseconds instead of about a second at PIL's default, for files ~10% larger."""
    buffer = io.BytesIO()
    Image.fromarray(photo, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class PaintServer(ThreadingHTTPServer):
    """The paint web server around one :class:`PaintModel`; ``serve_forever()`` runs it.

    ``max_connections`` caps open connections (each holds one thread, a browser tab uses two to
    six); ``max_waiting`` caps tabs waiting for a frame; ``cpu_slots`` caps uploads decoded and
    photos encoded at once (each holds up to a 2048 x 2048 image). The memory is then bounded:
    request bodies at most ``max_connections`` x ``MAX_UPLOAD_BYTES`` (17 MiB), decoded maps
    waiting their turn at most ``max_waiting`` x 4 MiB (uint8 class indices at 2048 x 2048), the
    decoders' and encoders' work ``cpu_slots`` images, and one frame of the model at a time.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        model: PaintModel,
        *,
        max_connections: int = 32,
        max_waiting: int = 16,
        cpu_slots: int = 2,
        verbose: bool = False,
    ):
        self.model = model
        self.info_json = json.dumps(model.info()).encode()
        self.static = _static_files()
        self.scheduler = FrameScheduler(max_waiting=max_waiting)
        self.cpu_slots = threading.BoundedSemaphore(cpu_slots)
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.verbose = verbose
        self.started = time.time()
        super().__init__(address, PaintHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def process_request(self, request, client_address):
        if not self.connection_slots.acquire(blocking=False):
            try:
                body = b'{"error": "too many open connections to the paint server; close some tabs"}'
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def handle_error(self, request, client_address):
        # Called for exceptions escaping a handler: the client is gone or sent garbage; log
        # (never to the client) and keep serving.
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, _DISCONNECTS):
            log.debug("client %s disconnected: %s", client_address, error)
        else:
            log.exception("error while handling a request from %s", client_address)

    def server_close(self):
        self.scheduler.close()
        super().server_close()


class PaintHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a painting tab sends many requests
    server_version = "asapnet-paint"
    timeout = 30  # seconds a connection may stay silent before it is closed
    server: PaintServer

    # -- responses --------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self._send(status, body, "application/json", headers)

    def send_error(self, code, message=None, explain=None):
        # http.server's own errors (bad request line, unsupported method, header too long): JSON
        # like ours instead of its HTML page.
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # an unparsable request line: still answer with a status line
        self._json(code, {"error": message or phrase})

    def log_message(self, format, *args):
        if self.server.verbose:
            log.info("%s %s", self.address_string(), format % args)

    # -- dispatch ---------------------------------------------------------------------------
    # method -> (exact paths, path prefixes) -> handler method name
    ROUTES = {
        "GET": (
            {"/": "_index", "/api/model": "_model", "/api/stats": "_stats"},
            {"/static/": "_static_file", "/api/examples/": "_example"},
        ),
        "POST": ({"/api/translate": "_translate", "/api/labels": "_labels"}, {}),
    }

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _route(self, method: str, path: str):
        exact, prefixes = self.ROUTES[method]
        if path in exact:
            return getattr(self, exact[path]), ()
        for prefix, name in prefixes.items():
            if path.startswith(prefix):
                return getattr(self, name), (path[len(prefix) :],)
        return None, ()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self._body_read = False
        try:
            handler, arguments = self._route(self.command, url.path)
            if handler is None:
                other = "POST" if self.command == "GET" else "GET"
                if self._route(other, url.path)[0] is not None:
                    self._refuse(405, f"{url.path} takes {other}, not {self.command}", {"Allow": other})
                else:
                    self._refuse(404, f"no such page: {url.path}")
                return
            try:
                query = parse_qs(url.query, keep_blank_values=True, max_num_fields=16, strict_parsing=False)
            except ValueError as error:
                raise UploadError(400, f"bad query string: {error}") from error
            handler(*arguments, query)
        except UploadError as error:
            self._refuse(error.status, str(error))
        except _DISCONNECTS:
            self.close_connection = True  # the client went away; nothing to answer
        except Exception:
            log.exception("unexpected error serving %s %s", self.command, url.path)
            self.close_connection = True
            try:
                self._drop_unread_body()
                self._json(500, {"error": "internal error in the paint server (details are in its log)"})
            except _DISCONNECTS:
                pass

    def _refuse(self, status: int, message: str, headers: dict | None = None) -> None:
        self._drop_unread_body()
        self._json(status, {"error": message}, headers)

    def _drop_unread_body(self) -> None:
        if self.command == "POST" and not self._body_read:
            self.close_connection = True  # the rest of the stream is not a request: no keep-alive
            self._discard_body()

    def _discard_body(self, limit: int = 4 * MAX_UPLOAD_BYTES) -> None:
        """Read and drop an oversized body (up to ``limit`` bytes, 64 KiB at a time), so that
        closing the connection after the 413 does not reset it under the client before the client
        has read the answer."""
        length = self.headers.get("Content-Length", "")
        left = min(int(length), limit) if length.isdigit() else 0
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    # -- GET --------------------------------------------------------------------------------
    def _index(self, query):
        body, kind = self.server.static["index.html"]
        self._send(200, body, kind)

    def _static_file(self, name, query):
        found = self.server.static.get(name)  # the exact names in the package: no paths at all
        if found is None:
            raise UploadError(404, f"no such file: /static/{name}")
        self._send(200, *found)

    def _model(self, query):
        self._json(200, self.server.info_json)

    def _stats(self, query):
        scheduler = self.server.scheduler
        counts = dict(scheduler.counts)
        self._json(
            200,
            {
                "served": counts.get("done", 0),
                "dropped_stale": counts.get("stale", 0),
                "errors": counts.get("error", 0),
                "busy": counts.get("busy", 0),
                "gone": counts.get("gone", 0),
                "waiting": scheduler.waiting(),
                "uptime_s": round(time.time() - self.server.started, 3),
            },
        )

    def _example(self, name, query):
        examples = self.server.model.examples
        if not name.isdigit() or int(name) >= len(examples):
            raise UploadError(404, f"no example {name!r}; there are {len(examples)} (0..{len(examples) - 1})")
        labels = examples[int(name)]
        self._send(
            200,
            _label_grid(labels),
            "application/octet-stream",
            {"X-Label-Height": labels.shape[0], "X-Label-Width": labels.shape[1]},
        )

    # -- POST -------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise UploadError(411, "chunked uploads are not accepted; send the PNG with a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise UploadError(411, f"a Content-Length header is required, got {length!r}")
        length = int(length)
        if length > MAX_UPLOAD_BYTES:
            raise UploadError(
                413, f"upload is {length} bytes; the largest accepted is {MAX_UPLOAD_BYTES} bytes (a 2048 x 2048 PNG)"
            )
        if length == 0:
            raise UploadError(400, "the request has no body; send a PNG")
        data = self.rfile.read(length)
        self._body_read = True
        if len(data) < length:
            self.close_connection = True
            raise UploadError(400, f"upload ended after {len(data)} of {length} bytes")
        return data

    def _read_input(self):
        data = self._read_body()
        with self.server.cpu_slots:
            return self.server.model.read_input(data)

    def _labels(self, query):
        data = self._read_body()
        with self.server.cpu_slots:
            labels = self.server.model.read_labels(data)
        self._send(
            200,
            _label_grid(labels),
            "application/octet-stream",
            {"X-Label-Height": labels.shape[0], "X-Label-Width": labels.shape[1]},
        )

    def _translate(self, query):
        client = _one(query, "client")
        if not _CLIENT_ID.fullmatch(client):
            raise UploadError(400, f"client must be 1 to 64 letters, digits, '-' or '_', got {client!r}")
        seq = _int_argument(query, "seq", 0, 2**53)
        size = _int_argument(query, "size", None, None)
        model = self.server.model
        model.check_size(size)
        x = self._read_input()
        job = Job(client, seq, lambda: model.translate(x, size), client_gone=self._client_gone)
        try:
            self.server.scheduler.submit(job)
        except Busy as error:
            self._refuse(503, f"the paint server is busy: {error}; try again", {"Retry-After": 1})
            return
        if not job.done.wait(FRAME_TIMEOUT_S):
            job.client_gone = lambda: True  # do not compute it when its turn comes
            self._json(504, {"error": f"no frame within {FRAME_TIMEOUT_S} s"})
            return
        if job.status in ("stale", "gone"):
            self._send(
                204,
                b"",
                "application/octet-stream",
                {"X-Paint-Dropped": job.status, "X-Seq": seq, "X-Frame-Ms": self._frame_ms()},
            )
            return
        if job.status == "error":
            raise job.error  # an UploadError is answered with its status, anything else 500 and logged
        frame = job.frame
        with self.server.cpu_slots:
            body = encode_png(frame.photo)
        queue_ms = 1e3 * (job.started_at - job.queued_at)
        self._send(
            200,
            body,
            "image/png",
            {
                "X-LR-Stream-Ms": f"{frame.lr_ms:.2f}",
                "X-HR-Stream-Ms": f"{frame.hr_ms:.2f}",
                "X-Queue-Ms": f"{queue_ms:.2f}",
                "X-Seq": seq,
                "X-Frame-Ms": self._frame_ms(),
                "X-Photo-Height": frame.photo.shape[0],
                "X-Photo-Width": frame.photo.shape[1],
            },
        )

    def _frame_ms(self) -> str:
        return f"{self.server.scheduler.last_work_ms:.2f}"

    def _client_gone(self) -> bool:
        """Whether the client closed its connection while its request waited (no compute for it):
        the socket is readable and a peek reads end-of-stream (or an error)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # reset, or already closed
            return True


def _one(query: dict, name: str) -> str:
    values = query.get(name)
    if not values:
        raise UploadError(400, f"the query parameter {name} is required")
    if len(values) > 1:
        raise UploadError(400, f"the query parameter {name} is given {len(values)} times")
    return values[0]


def _int_argument(query: dict, name: str, low: int | None, high: int | None) -> int:
    text = _one(query, name)
    if not re.fullmatch(r"\d{1,16}", text):
        raise UploadError(400, f"{name} must be a non-negative integer, got {text!r}")
    value = int(text)
    if (low is not None and value < low) or (high is not None and value > high):
        raise UploadError(400, f"{name} must lie in {low}..{high}, got {value}")
    return value


def make_server(model: PaintModel, *, host: str = "127.0.0.1", port: int = 8765, **options) -> PaintServer:
    """A :class:`PaintServer` bound to ``host:port`` (port 0: any free port; see ``server.url``)."""
    return PaintServer((host, port), model, **options)
