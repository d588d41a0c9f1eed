"""Publish a converted model folder to the Hugging Face Hub: plan, resumable upload, verification.

How a run goes (every step is safe to repeat):
1. `plan_upload` picks the files (weights, index, config, tokenizer, card, small json/md) and refuses a
   folder without weights or whose index names missing shards.
2. The repo is created if needed; the head commit of the target revision is read once, and every file
   the remote already has at that commit (same size and sha256 for LFS files, same git blob sha1 for
   regular ones) is skipped.
3. The other LFS files are pre-uploaded ONE AT A TIME (`preupload_lfs_files`), so an interruption loses
   at most the file in flight: a re-run skips what was committed, and the Hub's storage (LFS batch API,
   or Xet deduplication) answers "already stored" for shards uploaded before the interruption.
4. One `create_commit` (with `parent_commit`) publishes everything at once: the repo never shows a
   half-uploaded model, and `--create-pr` opens exactly one pull request.
5. Every remote file is re-read (paths-info at the new commit) and compared with the local file; any
   difference raises `PublishError` naming the file, what was expected and what was found.
Transient answers (429, 5xx, dropped connections) are retried with bounded exponential backoff on top
of the client's own retries. The token is never logged; error messages are scrubbed of it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from hubtools import __version__
from hubtools.errors import PublishError

logger = logging.getLogger(__name__)
T = TypeVar("T")

INDEX_NAME = "model.safetensors.index.json"
KNOWN_FILES = {
    INDEX_NAME: "index",
    "config.json": "config",
    "generation_config.json": "config",
    "tokenizer.json": "tokenizer",
    "tokenizer_config.json": "tokenizer",
    "special_tokens_map.json": "tokenizer",
    "tekken.json": "tokenizer",
    "chat_template.jinja": "tokenizer",
    "README.md": "card",
}
ROLE_ORDER = ("weights", "index", "config", "tokenizer", "other", "card")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores files from 10 MiB (and binaries) through LFS
OTHER_MAX_SIZE = 10 * 1024 * 1024  # "other" json/md files above this are left out of the plan
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
COMMIT_RETRY_STATUS = frozenset({429, 503})  # a commit answered 500/502/504 may have been applied
HINTS = {
    401: ". Check HF_TOKEN (or `hf auth login`)",
    403: ". The token cannot write to this repo",
    429: ". Rate limited by the Hub",
}
PATHS_PER_REQUEST = 100
HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class PlannedFile:
    """One local file to publish: its name in the repo, size, role and expected storage (LFS or not)."""

    path: str
    local: Path
    size: int
    role: str
    lfs: bool

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "local": str(self.local), "size": self.size, "role": self.role, "lfs": self.lfs}


@dataclass(frozen=True)
class UploadPlan:
    """The files of a folder that `publish` would send, in upload order, and the files it leaves out."""

    folder: Path
    files: tuple[PlannedFile, ...]
    ignored: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "files": [f.to_dict() for f in self.files],
            "ignored": list(self.ignored),
            "total_bytes": self.total_bytes,
            "file_count": len(self.files),
        }


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: `skipped` (the remote already had it) or `uploaded`."""

    path: str
    size: int
    sha256: str
    action: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PublishResult:
    """Outcome of `publish`: the commit (None when nothing changed), PR, tag and per-file actions."""

    repo_id: str
    repo_url: str
    revision: str
    commit_oid: str | None
    commit_url: str | None
    pr_url: str | None
    pr_revision: str | None
    tag: str | None
    verified_at: str
    files: tuple[FileResult, ...]

    @property
    def uploaded_bytes(self) -> int:
        return sum(f.size for f in self.files if f.action == "uploaded")

    @property
    def skipped_bytes(self) -> int:
        return sum(f.size for f in self.files if f.action == "skipped")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            files=list(out["files"]),
            uploaded_bytes=self.uploaded_bytes,
            skipped_bytes=self.skipped_bytes,
            uploaded_files=sum(f.action == "uploaded" for f in self.files),
            skipped_files=sum(f.action == "skipped" for f in self.files),
            verified=True,
        )
        return out


@dataclass(frozen=True)
class ProgressEvent:
    """Progress report: `stage` is "hash" or "upload"; bytes are cumulative within the stage."""

    stage: str
    path: str
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for our own Hub calls (on top of the client's retries)."""

    attempts: int = 5
    base_delay: float = 2.0
    max_delay: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


def plan_upload(folder: Path) -> UploadPlan:
    """List the files of `folder` to publish and check that the weights are complete.

    Args:
        folder (`Path`): a Hugging Face layout model folder (shards, index, config, tokenizer, README.md).

    Returns:
        `UploadPlan`: files in upload order (weights first, card last) plus the names left out.

    Raises:
        PublishError: no `*.safetensors`, an unreadable index, an index naming missing shards, shards the
            index does not name, or several shards without an index.

    Example:
        >>> plan_upload(Path("out/mixtral-8x7b-v0.1")).total_bytes  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"not a folder: '{folder}' (expected a model folder to publish)")
    files, ignored = [], []
    for entry in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        planned = planned_file(entry)
        if planned is None:
            ignored.append(entry.name)
        else:
            files.append(planned)
    _check_weights(folder, {f.path for f in files if f.role == "weights"})
    files.sort(key=lambda f: (ROLE_ORDER.index(f.role), f.path))
    return UploadPlan(folder, tuple(files), tuple(ignored))


def planned_file(entry: Path) -> PlannedFile | None:
    """How `entry` would be published (its role and LFS or not), or None when it is left out."""
    role = _role(entry.name)
    size = entry.stat().st_size
    if role is None or (role == "other" and size > OTHER_MAX_SIZE):
        return None
    lfs = role == "weights" or entry.name.startswith("tokenizer.model") or size >= LFS_MIN_SIZE
    return PlannedFile(entry.name, entry, size, role, lfs)


def _role(name: str) -> str | None:
    if name.endswith(".safetensors"):
        return "weights"
    if name in KNOWN_FILES:
        return KNOWN_FILES[name]
    if name.startswith("tokenizer.model"):
        return "tokenizer"
    return "other" if name.endswith((".json", ".md")) else None


def _check_weights(folder: Path, shards: set[str]) -> None:
    if not shards:
        raise PublishError(f"no weights in '{folder}' (expected *.safetensors files). Run `hubtools convert` first.")
    index_path = folder / INDEX_NAME
    if not index_path.exists():
        if len(shards) > 1:
            raise PublishError(f"{len(shards)} weight files in '{folder}' but no {INDEX_NAME} (expected one index)")
        return
    try:
        named = set(json.loads(index_path.read_text())["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PublishError(f"unreadable index: '{index_path}' (expected JSON with a weight_map; {exc})") from exc
    if missing := sorted(named - shards):
        raise PublishError(f"index names missing shards: {', '.join(missing)} (expected in '{folder}')")
    if extra := sorted(shards - named):
        raise PublishError(f"weight files not named in {INDEX_NAME}: {', '.join(extra)} (remove them or re-convert)")


def publish(
    folder: Path,
    repo_id: str,
    *,
    api: HfApi,
    revision: str | None = None,
    create_pr: bool = False,
    private: bool = False,
    tag: str | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    retry: RetryPolicy | None = None,
) -> PublishResult:
    """Upload `folder` to `repo_id`, skipping what the Hub already has, then verify every remote file.

    Args:
        folder (`Path`): the model folder (see `plan_upload`).
        repo_id (`str`): "namespace/name"; the model repo is created if missing.
        api (`HfApi`): the client, carrying endpoint and token.
        revision (`str`, *optional*): branch (created if missing) or `refs/pr/N`; defaults to "main".
        create_pr (`bool`): open a pull request against `revision` instead of committing to it.
        private (`bool`): create the repo private (an existing repo keeps its visibility).
        tag (`str`, *optional*): tag the published commit (not with `create_pr`).
        progress (`Callable`, *optional*): called with a `ProgressEvent` after each hashed/uploaded file.
        retry (`RetryPolicy`, *optional*): backoff for transient Hub answers.

    Returns:
        `PublishResult`: the commit (None if nothing changed), PR, tag and what happened to each file.

    Raises:
        PublishError: bad folder, a Hub call that failed (after retries), or a remote file that does not
            match the local one after the upload.

    Example:
        >>> publish(Path("out"), "me/model", api=HfApi(token=token))  # doctest: +SKIP
    """
    plan = plan_upload(folder)
    if tag and create_pr:
        raise PublishError(f"--tag '{tag}' with --create-pr: a tag must point at a merged commit (tag after merging)")
    hub = _Hub(api, repo_id, retry or RetryPolicy())
    repo_url = str(hub.call("create repo", lambda: api.create_repo(repo_id, private=private or None, exist_ok=True)))
    target = revision or "main"
    if revision and not create_pr and not revision.startswith("refs/"):
        hub.call(f"create branch '{revision}'", lambda: api.create_branch(repo_id, branch=revision, exist_ok=True))
    head = hub.call(f"read revision '{target}'", lambda: api.repo_info(repo_id, revision=target).sha)
    if head is None:
        raise PublishError(
            f"read revision '{target}' failed for '{repo_id}': the Hub answered without a commit sha "
            "(expected the head commit id)"
        )
    digests = _hash_files(plan, progress)
    remote = hub.remote_files([f.path for f in plan.files], head)
    todo = [f for f in plan.files if _difference(f, digests[f.path], remote.get(f.path))]
    commit: CommitInfo | None = None
    if todo:
        ops = _upload(hub, todo, digests, revision=target, create_pr=create_pr, progress=progress)
        commit = hub.commit(ops, revision=target, create_pr=create_pr, parent=None if create_pr else head)
        _verify(plan, digests, hub.remote_files([f.path for f in plan.files], commit.oid))
    verified_at = head if commit is None else commit.oid
    if tag:
        hub.tag(tag, verified_at)
    uploaded = {f.path for f in todo}
    return PublishResult(
        repo_id=repo_id,
        repo_url=repo_url,
        revision=target,
        commit_oid=None if commit is None else commit.oid,
        commit_url=None if commit is None else commit.commit_url,
        pr_url=None if commit is None else commit.pr_url,
        pr_revision=None if commit is None else commit.pr_revision,
        tag=tag,
        verified_at=verified_at,
        files=tuple(
            FileResult(f.path, f.size, digests[f.path], "uploaded" if f.path in uploaded else "skipped")
            for f in plan.files
        ),
    )


def _hash_files(plan: UploadPlan, progress: Callable[[ProgressEvent], None] | None) -> dict[str, str]:
    """sha256 of every planned file, by path in the repo (each file is read once per run)."""
    digests, done = {}, 0
    for f in plan.files:
        digests[f.path] = _hexdigest(hashlib.sha256(), f.local)
        done += f.size
        if progress:
            progress(ProgressEvent("hash", f.path, done, plan.total_bytes))
    return digests


def _hexdigest(digest: Any, path: Path) -> str:
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


def _difference(f: PlannedFile, sha256: str, remote: Any) -> tuple[str, str] | None:
    """None when the remote file equals the local one, else (expected, found) descriptions.

    LFS files are compared by size and sha256, regular files by size and git blob sha1 (what the Hub reports).
    """
    if remote is not None and getattr(remote, "lfs", None) is not None:
        expected, found = f"size {f.size}, sha256 {sha256}", f"size {remote.lfs.size}, sha256 {remote.lfs.sha256}"
    elif remote is not None and hasattr(remote, "blob_id"):
        blob = _hexdigest(hashlib.sha1(b"blob %d\0" % f.size), f.local)
        expected, found = f"size {f.size}, git blob sha1 {blob}", f"size {remote.size}, git blob sha1 {remote.blob_id}"
    else:
        return f"size {f.size}, sha256 {sha256}", "no such file"
    return None if expected == found else (expected, found)


def _verify(plan: UploadPlan, digests: dict[str, str], remote: dict[str, Any]) -> None:
    for f in plan.files:
        if difference := _difference(f, digests[f.path], remote.get(f.path)):
            raise PublishError(
                f"remote file '{f.path}' does not match the local file after upload "
                f"(expected {difference[0]}; found {difference[1]}). Re-run to re-upload."
            )


def _upload(
    hub: _Hub,
    todo: list[PlannedFile],
    digests: dict[str, str],
    *,
    revision: str,
    create_pr: bool,
    progress: Callable[[ProgressEvent], None] | None,
) -> list[CommitOperationAdd]:
    total, done, ops = sum(f.size for f in todo), 0, []
    large = [[f] for f in todo if f.lfs]
    small = [f for f in todo if not f.lfs]
    for group in large + ([small] if small else []):
        batch = [_operation(f, digests[f.path]) for f in group]
        name = group[0].path if len(group) == 1 else f"{len(group)} small files"
        hub.call(
            f"upload of '{name}'",
            lambda: hub.api.preupload_lfs_files(
                hub.repo_id, batch, revision=revision, create_pr=create_pr, free_memory=False
            ),
        )
        ops += batch
        done += sum(f.size for f in group)
        if progress:
            progress(ProgressEvent("upload", group[-1].path, done, total))
    return ops


def _operation(f: PlannedFile, sha256: str) -> CommitOperationAdd:
    op = CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.local))
    op.upload_info.sha256 = bytes.fromhex(sha256)  # hashed once per run; the client reuses it
    return op


@dataclass(frozen=True)
class _Hub:
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
    if any(isinstance(err, OfflineModeIsEnabled) for err in errors):
        return False
    return any(isinstance(err, _transport_errors()) for err in errors)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
