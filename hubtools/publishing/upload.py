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

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

from hubtools.errors import PublishError
from hubtools.publishing.client import HubClient, RetryPolicy
from hubtools.publishing.plan import PlannedFile, check_publish_settings, plan_upload
from hubtools.publishing.remote import ProgressEvent, difference, hash_files, verify_remote


class Action(str, Enum):
    """What `publish` did with a file."""

    UPLOADED = "uploaded"
    STORED = "stored"  # committed now, but its bytes were already in the Hub's LFS store (an interrupted run)
    SKIPPED = "skipped"  # the remote already had it


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: `uploaded`, `stored` (committed without sending: an interrupted run had
    sent its bytes) or `skipped` (the remote already had it)."""

    path: str
    size: int
    sha256: str
    action: Action

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "action": self.action.value}


def action_totals(files: tuple[FileResult, ...]) -> dict[str, int]:
    """`{action}_files` and `{action}_bytes` for every action (the summary fields of the JSON results)."""
    totals: dict[str, int] = {}
    for action in Action:
        mine = [f for f in files if f.action is action]
        totals[f"{action.value}_files"] = len(mine)
        totals[f"{action.value}_bytes"] = sum(f.size for f in mine)
    return totals


def files_line(files: tuple[FileResult, ...]) -> str:
    """The one-line summary both `publish` and `release` print.

    Example:
        >>> files_line((FileResult("a", 5, "0" * 64, Action.UPLOADED), FileResult("b", 9, "1" * 64, Action.STORED)))
        'files: 1 uploaded (5 bytes), 1 sent by an interrupted run (9 bytes not re-sent), 0 already on the Hub'
    """
    t = action_totals(files)
    parts = [f"{t['uploaded_files']} uploaded ({t['uploaded_bytes']:,d} bytes)"]
    if t["stored_files"]:
        parts.append(f"{t['stored_files']} sent by an interrupted run ({t['stored_bytes']:,d} bytes not re-sent)")
    parts.append(f"{t['skipped_files']} already on the Hub")
    return "files: " + ", ".join(parts)


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
        return action_totals(self.files)["uploaded_bytes"]

    @property
    def skipped_bytes(self) -> int:
        return action_totals(self.files)["skipped_bytes"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(files=[f.to_dict() for f in self.files], **action_totals(self.files), verified=True)
        return out


def publish(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    api: HfApi | None = None,
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
        api (`HfApi`, *optional*): the client, carrying endpoint and token (default: `HfApi()`, which
            reads HF_ENDPOINT and HF_TOKEN or the stored login).
        revision (`str`, *optional*): branch (created if missing) or `refs/pr/N`; defaults to "main".
        create_pr (`bool`): open a pull request against `revision` instead of committing to it.
        private (`bool`): create the repo private (an existing repo keeps its visibility).
        tag (`str`, *optional*): tag the published commit (not with `create_pr`).
        progress (`Callable`, *optional*): called with a `ProgressEvent` after each hashed/uploaded file.
        retry (`RetryPolicy`, *optional*): backoff for transient Hub answers.

    Returns:
        `PublishResult`: the commit (None if nothing changed), PR, tag and what happened to each file.

    Raises:
        PublishError: a bad repo id, revision or tag (or a tag with `create_pr`), a bad folder, a Hub call
            that failed (after retries), or a remote file that does not match the local one after the upload.

    Example:
        >>> publish(Path("out"), "me/model", api=HfApi(token=token))  # doctest: +SKIP
    """
    check_publish_settings(repo_id, revision=revision, create_pr=create_pr, tag=tag)
    plan = plan_upload(folder)
    api = api or HfApi()
    hub = HubClient(api, repo_id, retry or RetryPolicy())
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
    digests = hash_files(plan, progress)
    remote = hub.remote_files([f.path for f in plan.files], head)
    todo = [f for f in plan.files if difference(f, digests[f.path], remote.get(f.path))]
    commit: CommitInfo | None = None
    stored: set[str] = set()
    if todo:
        ops, stored = _upload(hub, todo, digests, revision=target, create_pr=create_pr, progress=progress)
        commit = hub.commit(ops, revision=target, create_pr=create_pr, parent=None if create_pr else head)
        verify_remote(plan, digests, hub.remote_files([f.path for f in plan.files], commit.oid))
    verified_at = head if commit is None else commit.oid
    if tag:
        hub.tag(tag, verified_at)
    sent = {f.path for f in todo} - stored
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
        files=tuple(FileResult(f.path, f.size, digests[f.path], file_action(f.path, sent, stored)) for f in plan.files),
    )


def _upload(
    hub: HubClient,
    todo: list[PlannedFile],
    digests: dict[str, str],
    *,
    revision: str,
    create_pr: bool,
    progress: Callable[[ProgressEvent], None] | None,
) -> tuple[list[CommitOperationAdd], set[str]]:
    """Pre-upload `todo`; the operations to commit, and the paths whose bytes the Hub's store already held."""
    operations = {f.path: _operation(f, digests[f.path]) for f in todo}
    stored = hub.stored([operations[f.path] for f in todo if f.lfs])
    total, done, ops = sum(f.size for f in todo), 0, []
    large = [[f] for f in todo if f.lfs]
    small = [f for f in todo if not f.lfs]
    for group in large + ([small] if small else []):
        batch = [operations[f.path] for f in group]
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
    return ops, stored


def file_action(path: str, sent: set[str], stored: set[str]) -> Action:
    """UPLOADED if `path` was sent, STORED if committed from bytes the Hub already held, else SKIPPED."""
    if path in sent:
        return Action.UPLOADED
    return Action.STORED if path in stored else Action.SKIPPED


def _operation(f: PlannedFile, sha256: str) -> CommitOperationAdd:
    op = CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.local))
    op.upload_info.sha256 = bytes.fromhex(sha256)  # hashed once per run; the client reuses it
    return op
