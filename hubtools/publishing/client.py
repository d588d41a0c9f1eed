"""The Hub calls `publish` makes, each wrapped in bounded retries and turned into one-line `PublishError`s.

Transient answers (408, 429, 5xx, dropped connections) are retried with bounded exponential backoff on top
of the client's own retries; a failed name lookup (no network) is not transient and fails at once. The token
never appears in a message.
"""

from __future__ import annotations

import importlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from hubtools.errors import PublishError
from hubtools.version import __version__

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
COMMIT_RETRY_STATUS = frozenset({429, 503})  # a commit answered 500/502/504 may have been applied
HINTS = {
    401: ". Check HF_TOKEN (or `hf auth login`)",
    403: ". The token cannot write to this repo",
    429: ". Rate limited by the Hub",
}
PATHS_PER_REQUEST = 100


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for our own Hub calls (on top of the client's retries)."""

    attempts: int = 5
    base_delay: float = 2.0
    max_delay: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


@dataclass(frozen=True)
class HubClient:
    """The Hub calls `publish` makes, each wrapped in bounded retries and turned into `PublishError`."""

    api: HfApi
    repo_id: str
    retry: RetryPolicy

    def call(
        self, step: str, fn: Callable[[], T], retry_on: frozenset[int] = TRANSIENT_STATUS, retry_dropped: bool = True
    ) -> T:
        """Run `fn`, retrying answers in `retry_on` (and dropped connections if `retry_dropped`)."""
        caught: tuple[type[BaseException], ...] = (
            HfHubHTTPError,
            OSError,
            ValueError,
            RuntimeError,
            *_transport_errors(),
        )
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return fn()
            except caught as exc:
                status, retry_after = _status(exc)
                transient = status in retry_on or (retry_dropped and status is None and _is_transport_error(exc))
                if not transient or attempt == self.retry.attempts:
                    raise PublishError(f"{step} failed for '{self.repo_id}': {self._describe(exc, attempt)}") from exc
                delay = retry_after if retry_after is not None else self.retry.base_delay * 2 ** (attempt - 1)
                delay = min(delay, self.retry.max_delay)
                logger.warning(
                    "%s: %s; retry %d/%d in %.1fs",
                    step,
                    status or type(exc).__name__,
                    attempt,
                    self.retry.attempts - 1,
                    delay,
                )
                self.retry.sleep(delay)
        raise AssertionError("unreachable")

    def remote_files(self, paths: list[str], revision: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(paths), PATHS_PER_REQUEST):
            chunk = paths[start : start + PATHS_PER_REQUEST]
            infos = self.call(
                f"read remote files at '{revision[:12]}'",
                lambda: self.api.get_paths_info(self.repo_id, chunk, revision=revision),
            )
            found.update((info.path, info) for info in infos)
        return found

    def stored(self, ops: list[CommitOperationAdd]) -> set[str]:
        """The paths of `ops` whose bytes the Hub's LFS store already holds (an interrupted run sent them).

        Asks the git-lfs batch API, which answers such objects without upload actions. Only a report: if
        the Hub cannot answer, no path is called stored (preupload skips them anyway).
        """
        token = self.api.token
        if not ops or isinstance(token, bool):  # False: no token at all, which this call cannot say; True: deprecated
            return set()
        from huggingface_hub.lfs import post_lfs_batch_info

        try:
            objects, _, _ = self.call(
                "ask the LFS store",
                lambda: post_lfs_batch_info(
                    [op.upload_info for op in ops],
                    token=token,
                    repo_type="model",
                    repo_id=self.repo_id,
                    endpoint=self.api.endpoint,
                    headers=self.api.headers,
                ),
            )
        except PublishError:
            return set()
        held = {o.get("oid") for o in objects if isinstance(o, dict) and not o.get("actions") and not o.get("error")}
        return {op.path_in_repo for op in ops if op.upload_info.sha256.hex() in held}

    def commit(
        self, ops: list[CommitOperationAdd], *, revision: str, create_pr: bool, parent: str | None
    ) -> CommitInfo:
        summary = f"Upload {len(ops)} file(s) with hubtools {__version__}"
        return self.call(
            "commit",
            lambda: self.api.create_commit(
                self.repo_id,
                ops,
                commit_message=summary,
                commit_description="\n".join(op.path_in_repo for op in ops),
                revision=revision,
                create_pr=create_pr,
                parent_commit=parent,
            ),
            retry_on=COMMIT_RETRY_STATUS,
            retry_dropped=False,
        )  # the commit may have landed: a re-run checks

    def tag(self, tag: str, target: str) -> None:
        refs = self.call("list refs", lambda: self.api.list_repo_refs(self.repo_id))
        existing = next((ref.target_commit for ref in refs.tags if ref.name == tag), None)
        if existing is None:
            self.call(f"tag '{tag}'", lambda: self.api.create_tag(self.repo_id, tag=tag, revision=target))
        elif existing != target:
            raise PublishError(f"tag '{tag}' already exists on '{self.repo_id}' at {existing} (expected {target})")

    def _describe(self, exc: BaseException, attempts: int) -> str:
        """One line: the HTTP answer (status, request, server message) or the error, a hint, no token."""
        response = next((r for e in _chain(exc) if (r := getattr(e, "response", None)) is not None), None)
        if response is not None:
            server = next((m for e in _chain(exc) if (m := getattr(e, "server_message", None))), None)
            url = str(response.request.url).split("?")[0]  # drop query strings: upload URLs carry signatures
            text = f"HTTP {response.status_code} on {response.request.method} {url}"
            text += f" ({server})" if server else ""
            text += HINTS.get(response.status_code, "")
        else:
            text = "; ".join(dict.fromkeys(str(e) or type(e).__name__ for e in _chain(exc)))
        if attempts > 1:
            text += f"; gave up after {attempts} attempts, re-run to resume"
        text = " ".join(text.split())
        token = self.api.token
        return text.replace(token, "***") if isinstance(token, str) and token else text


def _status(exc: BaseException) -> tuple[int | None, float | None]:
    """HTTP status and Retry-After seconds of the first response found along the exception chain."""
    for err in _chain(exc):
        response = getattr(err, "response", None)
        if response is not None and getattr(response, "status_code", None):
            try:
                retry_after = float(response.headers.get("Retry-After"))
            except (TypeError, ValueError):
                retry_after = None
            return response.status_code, retry_after
    return None, None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Dropped connections and timeouts: httpx2's (huggingface_hub 2.x) or httpx's (1.x), and the builtins."""
    for name in ("httpx2", "httpx"):
        try:
            return (importlib.import_module(name).TransportError, ConnectionError, TimeoutError)
        except ImportError:
            continue
    return (ConnectionError, TimeoutError)


def _is_transport_error(exc: BaseException) -> bool:
    errors = list(_chain(exc))
    if any(isinstance(err, (OfflineModeIsEnabled, socket.gaierror)) for err in errors):
        return False  # offline, or no name resolution: retrying only delays the same answer
    if any("Name or service not known" in str(err) or "nodename nor servname" in str(err) for err in errors):
        return False
    return any(isinstance(err, _transport_errors()) for err in errors)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
