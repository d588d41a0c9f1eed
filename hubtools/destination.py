"""Where commands write: the one ownership rule for every output (convert, demo, card, gguf, verify --json,
release's work dir, the benches' --json). The record: every folder hubtools writes into holds `.hubtools`
(JSON, never published), {"hubtools": 1, "files": {"<relative/posix/name>": {"size": N, "sha256": "<hex>"}}},
listing exactly the files hubtools wrote there, as written. A folder output (convert, demo) records every
file under it (a nested `.hubtools` is one of them). A file output (a card README.md, a `verify --json`
report, GGUF files and split parts) is recorded in the `.hubtools` of the folder it lies in, beside that
folder's other entries (a card written into a converted folder joins its record).

The rule: an output never contains its source nor lies inside it, and its parent folder must exist. An
existing output is replaced only with `force`, and only when it is hubtools' unchanged output: a folder
(or an empty one) holding nothing but files recorded in its `.hubtools` with the same size and sha256; a
file recorded, unchanged, in its folder's `.hubtools`. Anything else (a user's file, a changed file, a
folder hubtools did not make, a user's file at the output's name, an old marker without a record) is
refused before any work starts, in one line naming the file, and nothing is deleted; so a folder output
into which a user put files is refused, and their files stay byte-identical. The check runs again just
before the output is put in place.

Atomic: work happens in a temporary `.NAME.hubtools-partial` beside a folder output, or inside the folder
of file outputs; after a failure or Ctrl-C (SIGTERM, SIGHUP alike) it is removed and messages name the
output, never the temporary ("nothing was written"). The swap (old output aside, new one in, record
written, old one removed) holds those signals back until it is done, then raises `OutputInPlace` ("the new
output is in place"). After a kill -9 mid-swap of a folder, the next run first puts `.NAME.hubtools-old`
back (or removes it when the new output is in).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hubtools.errors import DestinationError, HubtoolsError, OutputInPlace

MARKER = ".hubtools"
PARTIAL = ".hubtools-partial"
OLD = ".hubtools-old"
OUTPUT_MODE = 0o644
FILE_MARKER = "<!-- written by hubtools -->"  # a card's last line; ownership is the record, not this comment
Record = dict[str, dict[str, Any]]
_HASHES: dict[tuple[str, int, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256, computed once per version of it (path, inode, size, mtime) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def remember_sha256(path: Path, digest: str, size: int) -> None:
    """`digest` of `path`'s first `size` bytes, computed while it was written, stands for the whole file (when
    that is its size) until the file changes: `sha256_of` then needs no second read."""
    st = path.stat()
    if st.st_size == size:
        _HASHES[(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)] = digest


def read_record(folder: Path) -> Record:
    """The files hubtools recorded in `folder/.hubtools` ({} when there is none, or an unreadable one)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = data["files"]
        return {str(k): dict(v) for k, v in files.items()} if isinstance(files, dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _entry(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": sha256_of(path)}


def _unchanged(path: Path, entry: dict[str, Any] | None) -> bool:
    if entry is None or path.is_symlink() or not path.is_file():
        return False
    return path.stat().st_size == entry.get("size") and sha256_of(path) == entry.get("sha256")


def _record_text(files: Record) -> str:
    return json.dumps({"hubtools": 1, "files": dict(sorted(files.items()))}, indent=1) + "\n"


def record_folder(folder: Path) -> None:
    """Write `folder/.hubtools` recording every file under it (a finished folder output)."""
    files = {p.relative_to(folder).as_posix(): _entry(p) for p in _walk(folder) if p.is_file() and p != folder / MARKER}
    (folder / MARKER).write_text(_record_text(files), encoding="utf-8")


def _walk(folder: Path) -> Iterator[Path]:
    """Every entry under `folder`, sorted, depth first; a folder is yielded only when it holds nothing."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            inside = list(_walk(entry))
            yield from inside if inside else [entry]
        else:
            yield entry


def _not_ours_in_folder(folder: Path) -> str | None:
    """Why `folder` is not hubtools' unchanged output (naming the first file at fault), or None."""
    files = read_record(folder)
    for path in _walk(folder):
        rel = path.relative_to(folder).as_posix()
        if rel == MARKER:
            continue
        if rel not in files:
            return f"found {rel}, which is not hubtools'"
        if not _unchanged(path, files[rel]):
            return f"found {rel}, which hubtools wrote but has changed since"
    return None


def _not_ours_file(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return "found something other than a file"
    entry = read_record(path.parent).get(path.name)
    if entry is None:
        return "found another file"
    return None if _unchanged(path, entry) else "found it changed since hubtools wrote it"


def check_outside(dst: Path, *, sources: tuple[Path, ...]) -> None:
    """An output never is, contains or lies inside one of its sources (DestinationError naming both)."""
    for src in sources:
        s, d = src.resolve(), dst.resolve()
        if s == d or s in d.parents or d in s.parents:
            where = "is the source" if s == d else "lies inside the source" if s in d.parents else "contains the source"
            raise DestinationError(f"{dst}: expected an output outside the source {src}, found it {where}")


def check_parent(dst: Path) -> None:
    """The folder an output goes into must exist."""
    if not dst.parent.resolve().is_dir():
        raise DestinationError(f"{dst}: expected an existing parent folder, found no {dst.parent}")


def check_destination(dst: Path, *, sources: tuple[Path, ...] = (), force: bool = False) -> None:
    """Refuse an output that would overlap a source or replace what hubtools did not write (module docstring).

    Raises:
        DestinationError: naming the output (and the first file at fault when `force` cannot apply).

    Example:
        >>> check_destination(Path("/"), sources=(Path("/tmp"),))
        Traceback (most recent call last):
        hubtools.errors.DestinationError: /: expected an output outside the source /tmp, found it contains the source
    """
    check_outside(dst, sources=sources)
    check_parent(dst)
    if not os.path.lexists(dst):
        return
    if not force:
        raise DestinationError(f"{dst}: already exists (use --force to replace what hubtools wrote there)")
    if dst.is_dir():
        why = _not_ours_in_folder(dst)
        if why is not None:
            raise DestinationError(
                f"{dst}: expected an empty folder or one hubtools wrote, {why} (--force replaces only the "
                f"unchanged files hubtools recorded in {MARKER}; nothing was deleted: move it or choose another folder)"
            )
        return
    why = _not_ours_file(dst)
    if why is not None:
        raise DestinationError(f"{dst}: expected a file hubtools wrote, unchanged, {why} (--force will not replace it)")


def _recover(dst: Path) -> None:
    """After a kill -9: a stale temporary goes; an old output set aside goes back (or goes, if the new one is in)."""
    old = dst.with_name(f".{dst.name}{OLD}")
    if old.is_dir() and (old / MARKER).is_file():
        discard(old) if os.path.lexists(dst) else old.rename(dst)
    discard(dst.with_name(f".{dst.name}{PARTIAL}"))


def recover_files(folder: Path, stem: str) -> None:
    """After a kill -9 mid-swap of file outputs (`atomic_files(folder, stem)`): unless its record was committed
    (renamed out of the temporary), the new files placed go and the old ones set aside come back; then the
    temporary goes. Run before the destination is checked: the next run of the same output starts clean."""
    tmp = folder / f".{stem}{PARTIAL}"
    if (tmp / OLD).is_dir() and (tmp / MARKER).is_file():
        before = read_record(folder)
        for name, entry in read_record(tmp).items():
            if before.get(name) != entry and not (tmp / name).exists() and _unchanged(folder / name, entry):
                (folder / name).unlink()
        for old in (tmp / OLD).iterdir():
            os.replace(old, folder / old.name)
    discard(tmp)


def _same_filesystem(dst: Path) -> None:
    if dst.is_symlink() and dst.exists() and os.stat(dst).st_dev != os.stat(dst.parent).st_dev:
        raise DestinationError(
            f"{dst}: expected an output on the filesystem of {dst.parent}, found a link to {dst.resolve()} on "
            "another filesystem (pass the link's target itself)"
        )


def discard(path: Path) -> None:
    """Remove a file, a link or a folder at `path` (nothing when there is none)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _discard_finishing(path: Path, held: list[int]) -> None:
    """Remove `path`; a Ctrl-C meanwhile is noted and the removal finished (it holds only the old output)."""
    for _ in range(3):
        try:
            discard(path)
            return
        except KeyboardInterrupt as exc:
            held.append(getattr(exc, "signum", signal.SIGINT))


def _nothing() -> None:
    return None


def _hold(held: list[int]) -> Callable[[], None]:
    """Until the returned function is called, SIGINT, SIGTERM and SIGHUP are noted in `held` (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append(signum))

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore


def _rename_committing(src: Path, dst: Path) -> BaseException | None:
    """`os.replace(src, dst)`; an exception raised once the rename took effect is returned, not raised."""
    try:
        os.replace(src, dst)
        return None
    except BaseException as exc:
        if not os.path.lexists(src) and os.path.lexists(dst):
            return exc
        raise


def _after_commit(dst: Path, held: list[int], late: BaseException | None) -> None:
    if held or late is not None:
        raise OutputInPlace(dst, getattr(late, "signum", held[0] if held else signal.SIGINT))


def _rewrite(exc: BaseException, tmp: Path, dst: Path) -> BaseException:
    """The error to raise once `tmp` is gone: messages name `dst`; an OSError becomes a DestinationError."""
    if isinstance(exc, OutputInPlace):  # an output written inside this one is in place, this one is not
        return KeyboardInterrupt(exc.signum)
    if not isinstance(exc, HubtoolsError | OSError):
        return exc
    if isinstance(exc, HubtoolsError):
        message = str(exc).replace(str(tmp), str(dst))
        return type(exc)(message) if message != str(exc) else exc
    reason = exc.strerror or str(exc).replace(str(tmp), str(dst))
    return DestinationError(f"{dst}: could not be written ({reason}); nothing was written")


@contextmanager
def atomic_folder(dst: Path, *, sources: tuple[Path, ...] = (), force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dst`; on success it becomes `dst`, recorded in its `.hubtools`.
    On any exception before the swap (Ctrl-C included) the temporary is removed and `dst` untouched (messages
    name `dst`). Raises DestinationError (`check_destination`, a failed write) or OutputInPlace (interrupted
    during the swap's last step: the new output is complete at `dst`)."""
    dst = Path(os.path.abspath(dst))
    check_outside(dst, sources=sources)
    check_parent(dst)
    _recover(dst)
    check_destination(dst, sources=sources, force=force)
    _same_filesystem(dst)
    tmp, old = dst.with_name(f".{dst.name}{PARTIAL}"), dst.with_name(f".{dst.name}{OLD}")
    held: list[int] = []
    release = _nothing  # nothing held until the swap
    try:
        tmp.mkdir()
        yield tmp
        record_folder(tmp)
        check_destination(dst, sources=sources, force=force)  # again: nothing of a user's appeared meanwhile
        release = _hold(held)  # the swap: a Ctrl-C now waits until it is done
        if os.path.lexists(dst):
            os.rename(dst, old)  # a link is renamed, never followed
        late = _rename_committing(tmp, dst)
    except BaseException as exc:
        if os.path.lexists(old):
            os.rename(old, dst)
        discard(tmp)
        release()
        raise _rewrite(exc, tmp, dst) from None
    _discard_finishing(old, held)
    release()
    _after_commit(dst, held, late)


class FileSet:
    """File outputs being written into `folder`: write each into `tmp` and add its name to `names`."""

    def __init__(self, folder: Path, tmp: Path) -> None:
        self.folder, self.tmp, self.names = folder, tmp, list[str]()


@contextmanager
def atomic_files(folder: Path, stem: str, *, replaces: Iterable[Path] = (), force: bool = False) -> Iterator[FileSet]:
    """Write file outputs into the existing `folder` at once: files in `FileSet.tmp` (inside `folder`) move
    into place at the end, replacing `replaces` and any file of the same name (each must pass
    `check_destination`, checked before and again at the end), and are recorded in `folder/.hubtools`.

    Raises:
        DestinationError: see `check_destination`; a write that failed. OutputInPlace: see `atomic_folder`.
    """
    folder = Path(os.path.abspath(folder))
    recover_files(folder, stem)
    replaces = list(replaces)
    for path in replaces:
        check_destination(path, force=force)
    tmp = folder / f".{stem}{PARTIAL}"
    out = FileSet(folder, tmp)
    held: list[int] = []
    release = _nothing  # nothing held until the swap
    aside, placed, gone = tmp / OLD, list[str](), list[Path]()
    try:
        tmp.mkdir()
        yield out
        gone = sorted({*replaces, *(folder / n for n in out.names if os.path.lexists(folder / n))})
        for path in gone:  # again: nothing of a user's appeared meanwhile
            check_destination(path, force=force)
        files = read_record(folder)
        for path in gone:
            files.pop(path.name, None)
        for name in out.names:
            os.chmod(tmp / name, OUTPUT_MODE)
            files[name] = _entry(tmp / name)
        (tmp / MARKER).write_text(_record_text(files), encoding="utf-8")
        release = _hold(held)  # the swap: a Ctrl-C now waits until it is done
        aside.mkdir()
        for path in gone:
            os.rename(path, aside / path.name)
        for name in out.names:
            os.rename(tmp / name, folder / name)
            placed.append(name)
        late = _rename_committing(tmp / MARKER, folder / MARKER)  # the record is the commit
    except BaseException as exc:
        for name in placed:
            os.rename(folder / name, tmp / name)
        for path in gone:
            if os.path.lexists(aside / path.name):
                os.rename(aside / path.name, path)
        discard(tmp)
        release()
        raise _rewrite(exc, tmp, folder) from None
    _discard_finishing(tmp, held)
    release()
    _after_commit(folder / out.names[0] if len(out.names) == 1 else folder, held, late)


def write_file(dst: Path, text: str | bytes, *, force: bool = False) -> Path:
    """Write one file output atomically, mode 0644, recorded in its folder's `.hubtools` (DestinationError:
    see `check_destination`, or `dst` is a folder)."""
    dst = Path(dst)
    if dst.is_dir():
        raise DestinationError(f"{dst}: expected a file path (such as {dst / 'README.md'}), found a folder")
    recover_files(dst.parent, dst.name)
    check_destination(dst, force=force)
    with atomic_files(dst.parent, dst.name, replaces=[dst] if os.path.lexists(dst) else [], force=force) as out:
        data = text.encode("utf-8") if isinstance(text, str) else text
        (out.tmp / dst.name).write_bytes(data)
        out.names.append(dst.name)
    return dst
