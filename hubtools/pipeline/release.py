"""`hubtools release`: convert, verify and upload shard by shard in one pass, then commit once.

What lands on the Hub is what `convert` + `verify` + `card` + `publish` would put there, byte for byte
(the same plan, writer, tokenizer files, config and card code), but:
- each source tensor is read once (from a folder, an HTTP folder, a `.tar` URL or `hf://`); its bytes
  are converted and written to the shard, read back from the shard, checked bit for bit against
  `to_hf(native)`, and fed to both forwards (`verification.stream`);
- each shard is pre-uploaded (`preupload_lfs_files`) on a background thread as soon as it is complete,
  then deleted: the work dir holds at most two shards (the one uploading, the one being written) plus
  the small files; a shard with a bit-exact mismatch is never sent;
- the tokenizer check runs, the card is rendered with the verify report, and ONE commit publishes it
  all, only when every check passed, so the repo never shows half a model or an unverified one.
Resume: shards are deterministic, so a re-run after Ctrl-C, kill -9 or a dropped network writes the same
bytes again; files already committed are skipped by sha256 and shards pre-uploaded before the
interruption are answered "already stored" by the Hub's LFS batch API: nothing is sent twice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import CommitOperationAdd, HfApi

from hubtools.checkpoint.reader import Checkpoint
from hubtools.checkpoint.safetensors_format import read_header
from hubtools.checkpoint.source import open_source
from hubtools.checkpoint.writer import PlannedTensor, Shard, write_all, write_shard
from hubtools.converter import ConversionPlan, converted_bytes, plan
from hubtools.dtypes import DType
from hubtools.errors import PublishError, VerifyError
from hubtools.pipeline.overlay import ReleaseOptions
from hubtools.pipeline.release_files import (
    ReleaseResult,
    dry_run_plan,
    small_files,
    write_card,
    write_small_files,
)
from hubtools.pipeline.work_dir import check_work_dir, claim_work_dir, release_work_dir
from hubtools.publishing.client import HubClient, RetryPolicy
from hubtools.publishing.plan import PlannedFile, Role, UploadPlan, check_publish_settings
from hubtools.publishing.remote import difference, verify_remote
from hubtools.publishing.upload import FileResult, file_action
from hubtools.tokenization.choices import ChatTemplate

Say = Callable[[str], None]


def release(
    src: str,
    repo_id: str,
    *,
    api: HfApi,
    options: ReleaseOptions,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    say: Say | None = None,
    retry: RetryPolicy | None = None,
) -> ReleaseResult:
    """Release the native checkpoint SRC to REPO_ID in one streaming pass (see the module docstring).

    Args:
        src: a folder, an http(s) folder URL, a `.tar` URL or `hf://org/name[@rev]`.
        api: the Hub client (endpoint, token).
        progress: called with the number of source bytes each converted tensor consumed.
        on_total: called once with the source bytes the pass will read (for a progress bar's total).
        say: called with a short line as each stage starts.

    Returns:
        `ReleaseResult`: the commit, what happened to each file, the verify report, peak work-dir bytes.

    Raises:
        VerifyError: a check failed (nothing is committed). PublishError: a Hub call failed after retries.
        HubtoolsError subclasses naming the source file or tensor at fault.

    Example:
        >>> release("https://host/mixtral/", "me/mixtral", api=HfApi(), options=ReleaseOptions())  # doctest: +SKIP
    """
    started, say = time.monotonic(), say or (lambda _: None)
    check_release_inputs(repo_id, options)  # what `plan_release` (the dry run) checks too
    work = _work_dir(options.work_dir, repo_id)
    try:
        with _planned(src, work, options, api) as (ckpt, conversion):
            if on_total:
                on_total(sum(step.source.nbytes for step in conversion.steps.values()))
            run = _Run(ckpt, conversion, work, repo_id, api, options, retry or RetryPolicy(), say, progress)
            return run.go(src, started)
    finally:
        release_work_dir(work, WORK_ENTRIES)


def plan_release(src: str, repo_id: str, *, options: ReleaseOptions, api: HfApi | None = None) -> dict[str, Any]:
    """The `--dry-run` plan: output files and sizes, each tensor's source byte ranges; sends nothing.

    It makes every check `release` makes before its first upload (`check_release_inputs` on `repo_id` and
    the options, the recipe's source check, the conversion plan, the small files and the card, written to
    a temporary folder), so a dry run that passes is followed by a release that does not fail on input;
    the plan lists exactly the files the release would send.

    `api` reads an `hf://` source (default: `HfApi()`)."""
    check_release_inputs(repo_id, options)
    work = Path(tempfile.mkdtemp(prefix="hubtools-plan-"))
    try:
        with _planned(src, work, options, api) as (ckpt, conversion):
            out = work / "model"
            out.mkdir()
            write_small_files(ckpt, conversion, out, chat_template=ChatTemplate(options.chat_template).value)
            if options.card:
                write_card(options.card, out, cards_dir=options.cards_dir, ckpt=ckpt, report=None)
            return dry_run_plan(src, ckpt, conversion, [f.path for f, _ in small_files(out)])
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _planned(
    src: str, work: Path, options: ReleaseOptions, api: HfApi | None
) -> Iterator[tuple[Checkpoint, ConversionPlan]]:
    """The source opened in place (small files staged in `work`), checked by the recipe, and its conversion plan:
    what `release` and its dry run both start from."""
    with open_source(src, staging=work / "source", layout="native", api=api) as ckpt:
        if options.check:
            options.check(ckpt)
        yield ckpt, plan(ckpt, dtype=options.dtype, max_shard_size=options.max_shard_size, overrides=options.overrides)


def check_release_inputs(repo_id: str, options: ReleaseOptions) -> None:
    """Every check of `release`'s values that needs no source: the repo id, revision and tag (as
    `publish` checks them), the card source (found and valid), and the work folder. `release` and its
    dry run (`plan_release`) both call it before any work.

    Raises:
        PublishError: see `check_publish_settings`. CardError: a card source that is missing or invalid.
        DestinationError: a work folder that is not ours.
    """
    check_publish_settings(repo_id, revision=options.revision, create_pr=options.create_pr, tag=options.tag)
    if options.card:
        from hubtools.card.source import load_card_source, resolve_card_source

        load_card_source(resolve_card_source(options.card, cards_dir=options.cards_dir))
    _check_work_dir(_work_path(options.work_dir, repo_id))


WORK_ENTRIES = ("source", "model", "verify.json")  # all a release writes in its work dir


def _work_dir(parent: Path | None, repo_id: str) -> Path:
    """Our own folder inside `parent` (default: the system temp dir), one per repo: a folder left behind
    by a killed run is ours (it carries hubtools' marker) and is emptied of our entries, so a resumed run
    stays within two shards; anything else found in it is refused, never deleted (`claim_work_dir`).

    Raises:
        DestinationError: the folder exists without our marker, or holds something that is not ours.
    """
    return claim_work_dir(_work_path(parent, repo_id), WORK_ENTRIES)


def _work_path(parent: Path | None, repo_id: str) -> Path:
    return (parent or Path(tempfile.gettempdir())) / f"hubtools-release-{repo_id.replace('/', '--')}"


def _check_work_dir(work: Path) -> None:
    check_work_dir(work, WORK_ENTRIES)


class _Run:
    """One release: the shard loop with its checks and background uploads, then card and commit."""

    def __init__(
        self,
        ckpt: Checkpoint,
        conversion: ConversionPlan,
        work: Path,
        repo_id: str,
        api: HfApi,
        options: ReleaseOptions,
        retry: RetryPolicy,
        say: Say,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.ckpt, self.conversion, self.options, self.say, self.progress = ckpt, conversion, options, say, progress
        self.work, self.out = work, work / "model"
        self.out.mkdir()
        self.hub = HubClient(api, repo_id, retry)
        self.target = options.revision or "main"
        self.peak = 0
        self.stored: set[str] = set()  # paths whose bytes the Hub's store held before we sent them

    def go(self, src: str, started: float) -> Any:
        from hubtools.pipeline.release_checks import ReleaseChecks

        say, hub, options = self.say, self.hub, self.options
        template = ChatTemplate(options.chat_template).value
        small = write_small_files(self.ckpt, self.conversion, self.out, chat_template=template)
        head = self._prepare_repo()
        names = [s.file for s in self.conversion.shards] + small
        remote = hub.remote_files(names, head)
        verify_dtype = DType.parse(options.verify_dtype)
        checks = ReleaseChecks(self.ckpt, self.conversion, self.out, dtype=verify_dtype, say=say)
        shard_files, ops = self._shards(checks, remote)
        say("tokenizer")
        report = checks.report(src, self.out)
        report_path = self.work / "verify.json"
        report_path.write_text(report.to_json())
        if not report.passed:
            raise VerifyError(f"{src}: verification failed, nothing committed ({report.summary()})")
        if options.card:
            write_card(options.card, self.out, cards_dir=options.cards_dir, ckpt=self.ckpt, report=report)
        files = shard_files + small_files(self.out)
        digests = {f.path: d for f, d in files}
        planned = [f for f, _ in files]
        todo_small = [
            f for f in planned if f.role is not Role.WEIGHTS and difference(f, digests[f.path], remote.get(f.path))
        ]
        ops += self._upload_small(todo_small, digests)
        commit = None
        if ops:
            say("commit")
            commit = hub.commit(
                ops, revision=self.target, create_pr=options.create_pr, parent=None if options.create_pr else head
            )
            _verify_files(planned, digests, hub.remote_files([f.path for f in planned], commit.oid))
        verified_at = head if commit is None else commit.oid
        if options.tag:
            hub.tag(options.tag, verified_at)
        sent = {op.path_in_repo for op in ops} - self.stored
        results = tuple(
            FileResult(f.path, f.size, digests[f.path], file_action(f.path, sent, self.stored)) for f in planned
        )
        return ReleaseResult.build(
            hub.repo_id, self.target, commit, options.tag, verified_at, results, report, self.peak, started
        )

    def _prepare_repo(self) -> str:
        hub, api, options = self.hub, self.hub.api, self.options
        hub.call("create repo", lambda: api.create_repo(hub.repo_id, private=options.private or None, exist_ok=True))
        revision = options.revision
        if revision and not options.create_pr and not revision.startswith("refs/"):
            hub.call(
                f"create branch '{revision}'", lambda: api.create_branch(hub.repo_id, branch=revision, exist_ok=True)
            )
        head = hub.call(f"read revision '{self.target}'", lambda: api.repo_info(hub.repo_id, revision=self.target).sha)
        if head is None:
            raise PublishError(f"read revision '{self.target}' failed for '{hub.repo_id}': no commit sha in the answer")
        return str(head)

    def _shards(
        self, checks: Any, remote: dict[str, Any]
    ) -> tuple[list[tuple[PlannedFile, str]], list[CommitOperationAdd]]:
        """Write, check and hand over each shard; at most one upload runs while the next shard is written."""
        files: list[tuple[PlannedFile, str]] = []
        ops: list[CommitOperationAdd] = []
        pending: Future[None] | None = None
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload")
        try:
            for i, shard in enumerate(self.conversion.shards, 1):
                self.say(f"shard {i}/{len(self.conversion.shards)}: {shard.file}")
                path = self.out / shard.file
                sha = self._write_checked(path, shard, checks)
                self._sample()
                planned = PlannedFile(shard.file, path, path.stat().st_size, Role.WEIGHTS, True)
                files.append((planned, sha))
                if pending is not None:
                    pending.result()
                if difference(planned, sha, remote.get(shard.file)) is None:
                    path.unlink()  # already committed with these bytes
                    continue
                op = _operation(planned, sha)
                ops.append(op)
                pending = pool.submit(self._preupload, op, path)
            if pending is not None:
                pending.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return files, ops

    def _write_checked(self, path: Path, shard: Shard, checks: Any) -> str:
        """Write one shard; every tensor is read back from the file, hashed, and checked as it lands."""
        digest = hashlib.sha256()
        reader: list[int] = []

        def fill(fd: int, t: PlannedTensor) -> None:
            for name in t.names:  # a fused tensor: its parts, back to back
                step = self.conversion.steps[name]
                raw = self.ckpt.read_bytes(step.source.segments)
                start = os.lseek(fd, 0, os.SEEK_CUR)
                if not reader:
                    reader.append(os.open(path, os.O_RDONLY))
                    digest.update(os.pread(reader[0], start, 0))  # the header
                write_all(fd, converted_bytes(self.ckpt, step, raw), path)
                size = step.out.nbytes
                back = np.empty(size, dtype=np.uint8)
                if size and os.preadv(reader[0], [back.data], start) != size:
                    raise PublishError(f"{path}: tensor '{name}' could not be read back after writing")
                digest.update(back.data)
                if not checks.feed(step, raw, back):
                    raise VerifyError(f"{path}: tensor '{name}' differs from to_hf(source) (nothing of it was sent)")
                if self.progress:
                    self.progress(step.source.nbytes)

        try:
            write_shard(path, shard, fill)
        finally:
            for fd in reader:
                os.close(fd)
        entries, _ = read_header(path)
        checks.check_header(path, shard, entries)
        return digest.hexdigest()

    def _preupload(self, op: CommitOperationAdd, path: Path) -> None:
        hub = self.hub
        self.stored |= hub.stored([op])
        hub.call(
            f"upload of '{op.path_in_repo}'",
            lambda: hub.api.preupload_lfs_files(
                hub.repo_id, [op], revision=self.target, create_pr=self.options.create_pr, free_memory=False
            ),
        )
        path.unlink()

    def _upload_small(self, todo: list[PlannedFile], digests: dict[str, str]) -> list[CommitOperationAdd]:
        """The small files: LFS ones (tokenizer.model) one by one, the rest in one batch, as `publish` does."""
        ops = []
        for group in [[f] for f in todo if f.lfs] + (
            [[f for f in todo if not f.lfs]] if any(not f.lfs for f in todo) else []
        ):
            batch = [_operation(f, digests[f.path]) for f in group]
            self.stored |= self.hub.stored([op for op, f in zip(batch, group, strict=True) if f.lfs])
            self.hub.call(
                f"upload of '{group[0].path}'",
                lambda: self.hub.api.preupload_lfs_files(
                    self.hub.repo_id, batch, revision=self.target, create_pr=self.options.create_pr, free_memory=False
                ),
            )
            ops += batch
        return ops

    def _sample(self) -> None:
        size = sum(p.stat().st_size for p in self.work.rglob("*") if p.is_file())
        self.peak = max(self.peak, size)


def _operation(f: PlannedFile, sha256: str) -> CommitOperationAdd:
    op = CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.local))
    op.upload_info.sha256 = bytes.fromhex(sha256)
    return op


def _verify_files(planned: list[PlannedFile], digests: dict[str, str], remote: dict[str, Any]) -> None:
    verify_remote(UploadPlan(Path("."), tuple(planned)), digests, remote)
