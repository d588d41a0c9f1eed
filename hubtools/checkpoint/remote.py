"""Remote files read in place with HTTP range requests: nothing is copied whole to disk.

A `RangeFile` is a file of known size that answers `pread_into(view, offset)`. `HttpFile` fetches a
range with one GET (`Range: bytes=a-b`), splits large reads into chunks fetched in parallel, resumes a
dropped transfer from the byte where it stopped, and retries with bounded exponential backoff (the
failure count resets whenever a retry makes progress, so a flaky link cannot loop forever and a slow
one is not given up on). `SubRange` is a window of another file (a member of a tar archive).
`RangeStream` turns a `RangeFile` into the seekable binary stream that header parsers (safetensors,
zip) expect, reading ahead in blocks so small reads do not become one request each.

Errors name the URL: a file shorter than announced raises `CorruptFileError` ("truncated"), a server
that keeps failing raises `SourceError`.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from hubtools.errors import CorruptFileError, SourceError

logger = logging.getLogger(__name__)

CHUNK = 16 * 1024 * 1024  # one range request per chunk of a large read
READ_AHEAD = 1024 * 1024  # block size of RangeStream's cache
CONNECTIONS = 8
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RangeFile(Protocol):
    """A remote (or local) file of known size read by byte ranges; `url` names it in messages."""

    @property
    def url(self) -> str: ...

    @property
    def size(self) -> int: ...

    def pread_into(self, view: memoryview, offset: int) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff: `attempts` failures in a row without progress end the read."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def delay(self, failures: int) -> float:
        return float(min(self.max_delay, self.base_delay * 2 ** (failures - 1)))


def transport_errors() -> tuple[type[BaseException], ...]:
    """Dropped connections and timeouts of the HTTP client (httpx2, as huggingface_hub 2.x uses)."""
    import httpx2

    return (httpx2.TransportError, httpx2.StreamError, ConnectionError, TimeoutError)


def plain_client() -> Any:
    """An HTTP client for plain URLs: follows redirects, pools connections for the parallel reads."""
    import httpx2

    limits = httpx2.Limits(max_connections=2 * CONNECTIONS, max_keepalive_connections=2 * CONNECTIONS)
    return httpx2.Client(follow_redirects=True, timeout=httpx2.Timeout(60.0, connect=20.0), limits=limits)


@dataclass
class HttpFile:
    """A file behind an HTTP(S) URL whose server answers range requests.

    Args:
        url: the file's URL (redirects are followed on every request, so signed CDN URLs never go stale).
        size: its size in bytes (`probe_size` finds it).
        client: an httpx2-compatible client (`plain_client()`, or huggingface_hub's session).
        headers: extra request headers (e.g. the Hub token); never logged.
    """

    url: str
    size: int
    client: Any
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    backoff: Backoff = field(default_factory=Backoff)
    connections: int = CONNECTIONS
    chunk: int = CHUNK

    def pread_into(self, view: memoryview, offset: int) -> None:
        """Fill `view` with the bytes at `offset`; chunks of a large read are fetched in parallel.

        Raises:
            CorruptFileError: the range lies beyond the end of the file, or the server ran out of bytes.
            SourceError: the server kept failing (after `backoff.attempts` tries without progress).
        """
        view = view.cast("B")
        if offset + len(view) > self.size:
            raise CorruptFileError(
                f"{self.url}: truncated: bytes {offset}..{offset + len(view)} requested, the file has {self.size}"
            )
        spans = [(start, min(self.chunk, len(view) - start)) for start in range(0, len(view), self.chunk)]
        if len(spans) == 1:
            self._fetch(view, offset)
            return
        with ThreadPoolExecutor(max_workers=min(self.connections, len(spans))) as pool:
            jobs = [pool.submit(self._fetch, view[s : s + n], offset + s) for s, n in spans]
            for job in jobs:
                job.result()

    def _fetch(self, view: memoryview, offset: int) -> None:
        """One range, resumed from where a dropped transfer stopped (`got[0]` bytes are kept)."""
        got, failures = [0], 0
        retryable: tuple[type[BaseException], ...] = (*transport_errors(), _Retryable)
        while got[0] < len(view):
            before = got[0]
            try:
                self._stream(view, offset, got)
            except retryable as exc:
                failures = 0 if got[0] > before else failures + 1
                self._pause(failures, f"{str(exc) or type(exc).__name__} (at byte {offset + got[0]})")

    def _stream(self, view: memoryview, offset: int, got: list[int]) -> None:
        first, last = offset + got[0], offset + len(view) - 1
        headers = {**self.headers, "Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
        with self.client.stream("GET", self.url, headers=headers) as response:
            status = response.status_code
            if status in RETRY_STATUS:
                raise _Retryable(f"HTTP {status}")
            if status == 416:
                raise CorruptFileError(f"{self.url}: truncated: no bytes at {first} (expected {self.size} bytes)")
            if status == 200 and first != 0:
                raise SourceError(f"{self.url}: the server ignores range requests (expected HTTP 206, got 200)")
            if status not in (200, 206):
                raise SourceError(f"{self.url}: HTTP {status} (expected 206 Partial Content)")
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) != self.size:
                raise CorruptFileError(
                    f"{self.url}: truncated or changed: the server has {int(total)} bytes, expected {self.size}"
                )
            for part in response.iter_raw():
                take = min(len(part), len(view) - got[0])
                view[got[0] : got[0] + take] = part[:take]
                got[0] += take
                if got[0] == len(view):
                    break
        if got[0] < len(view):
            raise _Retryable("connection closed early")

    def _pause(self, failures: int, what: str) -> None:
        if failures >= self.backoff.attempts:
            raise SourceError(f"{self.url}: {what}; gave up after {failures} attempts without progress (re-run)")
        delay = self.backoff.delay(max(failures, 1)) if failures else 0.0
        logger.warning("%s: %s; retrying in %.1fs", self.url, what, delay)
        self.backoff.sleep(delay)


class _Retryable(Exception):
    """A transient answer (5xx, 429, a body cut short): retried with backoff."""


def probe_size(client: Any, url: str, headers: dict[str, str] | None = None, *, attempts: int = 3) -> int | None:
    """The size of the file at `url` (HEAD, else a one-byte range GET), or None when there is none (404).

    Raises:
        SourceError: the server answers neither with a size, or cannot be reached (`attempts` tries).
    """
    for attempt in range(1, attempts + 1):
        try:
            return _probe(client, url, {**(headers or {}), "Accept-Encoding": "identity"})
        except transport_errors() as exc:  # e.g. a keep-alive connection the server had closed
            if attempt == attempts:
                raise SourceError(f"{url}: cannot reach the server ({type(exc).__name__}: {exc})") from None
    raise AssertionError("unreachable")


def _probe(client: Any, url: str, headers: dict[str, str]) -> int | None:
    response = client.head(url, headers=headers)
    if response.status_code == 404:
        return None
    length = response.headers.get("Content-Length")
    if response.status_code == 200 and length is not None:
        return int(length)
    with client.stream("GET", url, headers={**headers, "Range": "bytes=0-0"}) as ranged:
        if ranged.status_code == 404:
            return None
        total = ranged.headers.get("Content-Range", "").rpartition("/")[2]
        if ranged.status_code == 206 and total.isdigit():
            return int(total)
    raise SourceError(f"{url}: HTTP {response.status_code} without a size (expected Content-Length)")


@dataclass(frozen=True)
class SubRange:
    """Bytes `base .. base + size` of another file (a tar member read in place)."""

    parent: RangeFile
    base: int
    size: int
    url: str

    def pread_into(self, view: memoryview, offset: int) -> None:
        if offset + len(view) > self.size:
            raise CorruptFileError(f"{self.url}: truncated: bytes up to {offset + len(view)} asked, has {self.size}")
        self.parent.pread_into(view, self.base + offset)


def read_range(file: RangeFile, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` (fewer at the end of the file)."""
    buf = bytearray(max(0, min(length, file.size - offset)))
    if buf:
        file.pread_into(memoryview(buf), offset)
    return bytes(buf)


class RangeStream(io.RawIOBase):
    """A seekable, read-only binary stream over a `RangeFile`, reading ahead in blocks."""

    def __init__(self, file: RangeFile, *, block: int = READ_AHEAD) -> None:
        self.file, self.size, self.block = file, file.size, block
        self.pos = 0
        self._cache: tuple[int, bytes] = (0, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, {0: 0, 1: self.pos, 2: self.size}[whence] + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self.pos))
        start, data = self._cache
        if not (start <= self.pos and self.pos + want <= start + len(data)):
            start, data = self.pos, read_range(self.file, self.pos, max(want, self.block))
            self._cache = (start, data)
        view[:want] = data[self.pos - start : self.pos - start + want]
        self.pos += want
        return want
