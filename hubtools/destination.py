"""Where commands write: the one rule for every output folder and file (convert, demo, card, gguf, release).

- An output never contains its source nor lies inside it (both directions, `--force` or not).
- An existing output is replaced only with `--force`, and only when hubtools wrote it: an empty folder,
  a folder holding hubtools' marker file, or a file carrying hubtools' marker text. Anything else is
  refused, naming the first file that is not hubtools'. Nothing a user owns is ever deleted.
- The parent folder must exist (no silent `mkdir -p`).
- Work happens in a temporary sibling of the output (beside the output itself, also when it is a symbolic
  link) that is renamed into place at the end; after a failure, Ctrl-C, SIGTERM or SIGHUP nothing is left,
  and messages name the output, never the temporary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hubtools.errors import DestinationError, HubtoolsError

MARKER = ".hubtools"
MARKER_TEXT = "This folder was written by hubtools; `--force` may replace it.\n"
FILE_MARKER = "<!-- written by hubtools: `--force` may replace this file -->"
OUTPUT_MODE = 0o644


def _overlap(src: Path, dst: Path) -> bool:
    s, d = src.resolve(), dst.resolve()
    return s == d or s in d.parents or d in s.parents


def _first_foreign(folder: Path) -> Path | None:
    if (folder / MARKER).is_file():
        return None
    return next(iter(sorted(folder.iterdir())), None)


def check_outside(dst: Path, *, sources: tuple[Path, ...]) -> None:
    """An output never is, contains or lies inside one of its sources.

    Raises:
        DestinationError: naming the output and the source.
    """
    for src in sources:
        if _overlap(src, dst):
            s, d = src.resolve(), dst.resolve()
            where = "is the source" if s == d else "lies inside the source" if s in d.parents else "contains the source"
            raise DestinationError(f"{dst}: expected an output outside the source {src}, found it {where}")


def check_destination(dst: Path, *, sources: tuple[Path, ...] = (), force: bool = False) -> None:
    """Refuse an output that would overlap a source or replace what hubtools did not write.

    Raises:
        DestinationError: naming the output (and the first foreign file when `--force` cannot apply).

    Example:
        >>> check_destination(Path("/"), sources=(Path("/tmp"),))
        Traceback (most recent call last):
        hubtools.errors.DestinationError: /: expected an output outside the source /tmp, found it contains the source
    """
    check_outside(dst, sources=sources)
    if not dst.parent.resolve().is_dir():
        raise DestinationError(f"{dst}: expected an existing parent folder, found no {dst.parent}")
    if not (dst.exists() or dst.is_symlink()):
        return
    if not force:
        raise DestinationError(f"{dst}: already exists (use --force to replace what hubtools wrote there)")
    if dst.is_dir():
        foreign = _first_foreign(dst)
        if foreign is not None:
            raise DestinationError(
                f"{dst}: expected an empty folder or one hubtools wrote, found {foreign.name}, which is not "
                "hubtools' (--force replaces only hubtools' output; choose another folder)"
            )
    elif dst.is_file() and not written_by_hubtools(dst):
        raise DestinationError(
            f"{dst}: expected a file hubtools wrote, found another file (--force will not replace it)"
        )


def written_by_hubtools(path: Path) -> bool:
    """A file whose text carries hubtools' marker (cards), read from its last 4 KiB."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            return FILE_MARKER.encode() in handle.read()
    except OSError:
        return False


def _same_filesystem(dst: Path) -> None:
    if dst.is_symlink() and dst.exists() and os.stat(dst).st_dev != os.stat(dst.parent).st_dev:
        raise DestinationError(
            f"{dst}: expected an output on the filesystem of {dst.parent}, found a link to {dst.resolve()} on "
            "another filesystem (pass the link's target itself)"
        )


def _discard(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextmanager
def atomic_folder(dst: Path, *, sources: tuple[Path, ...] = (), force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dst`; on success it becomes `dst` (with hubtools' marker).

    On any exception (Ctrl-C included) the temporary folder is removed and `dst` is untouched; error
    messages that name the temporary folder are rewritten to name `dst`.

    Raises:
        DestinationError: see `check_destination`; a write that failed (disk full, permissions).
    """
    dst = Path(os.path.abspath(dst))
    check_destination(dst, sources=sources, force=force)
    _same_filesystem(dst)
    tmp = dst.with_name(f".{dst.name}.hubtools-partial")
    _discard(tmp)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text(MARKER_TEXT)
        _replace(tmp, dst)
    except HubtoolsError as exc:
        _discard(tmp)
        message = str(exc).replace(str(tmp), str(dst))
        if message != str(exc):
            raise type(exc)(message) from None
        raise
    except OSError as exc:
        _discard(tmp)
        reason = exc.strerror or str(exc).replace(str(tmp), str(dst))
        raise DestinationError(f"{dst}: could not be written ({reason}); nothing was left there") from None
    except BaseException:
        _discard(tmp)
        raise


def _replace(tmp: Path, dst: Path) -> None:
    """Move the finished folder into place; an old output (or a link to one) goes only after."""
    old = dst.with_name(f".{dst.name}.hubtools-old")
    if dst.exists() or dst.is_symlink():
        _discard(old)
        dst.rename(old)  # a link is renamed, never followed
    tmp.rename(dst)
    _discard(old)


def write_file(dst: Path, text: str, *, force: bool = False) -> Path:
    """Write a text file atomically (temporary sibling, then rename), mode 0644, with the same rules.

    Raises:
        DestinationError: see `check_destination`, or `dst` is a folder.
    """
    dst = Path(dst)
    if dst.is_dir():
        raise DestinationError(f"{dst}: expected a file path (such as {dst / 'README.md'}), found a folder")
    check_destination(dst, force=force)
    tmp = dst.with_name(f".{dst.name}.hubtools-partial")
    try:
        tmp.write_text(text, encoding="utf-8", newline="\n")
        os.chmod(tmp, OUTPUT_MODE)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DestinationError(f"{dst}: could not be written ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst
