"""A local static file server with HTTP range requests, for tests and benchmarks (127.0.0.1 only).

Serves a folder like `python -m http.server` (index pages included), plus `Range: bytes=a-b` answers
(206 with Content-Range). Test hooks: `drop_every` (cut a response short after that many bytes, as a
dropped connection does, for the first `drops` responses), `fail_status` (answer the first `fails`
GETs with that status), and counters of requests and bytes served.
"""

from __future__ import annotations

import os
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class RangeServer:
    """`RangeServer(root).start()`; `url` is the root's URL; `stop()` when done."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, range header)
        self.bytes_sent = 0
        self.drop_every = 0
        self.drops = 0
        self.fail_status = 0
        self.fails = 0
        self.index_pages = True  # False: folders answer 404, as most object stores and CDNs do
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> RangeServer:
        handler = partial(_Handler, directory=str(self.root), owner=self)
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients dropping connections are part of the tests


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *args: Any, owner: RangeServer, **kwargs: Any) -> None:
        self.owner = owner
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        owner = self.owner
        with owner.lock:
            owner.requests.append((self.command, self.path, self.headers.get("Range", "")))
            fail = not head and owner.fails > 0
            owner.fails -= int(fail)
        path = Path(self.translate_path(self.path))
        if path.is_dir() and not owner.index_pages:
            self.send_error(404)
            return
        if path.is_dir() or not path.is_file():
            return super().do_HEAD() if head else super().do_GET()
        if fail:
            self.send_error(owner.fail_status)
            return
        size = path.stat().st_size
        first, last, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            first, last, status = int(match[1]), min(int(match[2] or size - 1), size - 1), 206
            if first >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if not head:
            self._body(path, first, last - first + 1)

    def _body(self, path: Path, offset: int, length: int) -> None:
        owner = self.owner
        with owner.lock:
            drop = owner.drops > 0 and owner.drop_every and length > owner.drop_every
            owner.drops -= int(bool(drop))
        limit = owner.drop_every if drop else length
        with path.open("rb") as f:
            f.seek(offset)
            sent = 0
            while sent < limit:
                chunk = f.read(min(1 << 20, limit - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        with owner.lock:
            owner.bytes_sent += sent
        if drop:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # SHUT_RDWR: the client sees the body end early


def serve(root: Path) -> RangeServer:
    return RangeServer(root).start()


if __name__ == "__main__":
    import sys

    server = serve(Path(sys.argv[1]))
    print(server.url, flush=True)
    threading.Event().wait()
    os._exit(0)
