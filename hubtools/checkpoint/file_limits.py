"""Reading a native tokenizer file safely: a regular file of bounded size, never a FIFO or a device.

A real `tokenizer.model.vN` is ~0.6 MB and a `tekken.json` ~20 MB; anything above `MAX_TOKENIZER_BYTES`
is refused before a byte is read (a sparse 6 GB file would otherwise be read whole). A FIFO is never
opened (opening one blocks until a writer appears), and a dangling symlink is named, not skipped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hubtools.errors import TokenizerError

MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
_KINDS |= {stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def check_tokenizer_file(path: Path) -> int:
    """The size of a tokenizer file that is safe to read.

    Raises:
        TokenizerError: missing, a dangling symlink, not a regular file, or larger than the bound.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        dangling = path.is_symlink()
        why = f"a dangling symlink to '{os.readlink(path)}'" if dangling else "not found"
        raise TokenizerError(f"{path}: tokenizer file is {why}") from None
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read tokenizer file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise TokenizerError(f"{path}: tokenizer file is {kind} (expected a regular file)")
    if info.st_size > MAX_TOKENIZER_BYTES:
        raise TokenizerError(
            f"{path}: tokenizer file is {info.st_size} bytes (at most {MAX_TOKENIZER_BYTES} accepted; "
            "real ones are under 25 MB)"
        )
    return info.st_size


def read_tokenizer_bytes(path: Path) -> bytes:
    """The bytes of a tokenizer file, checked by `check_tokenizer_file` and read without blocking.

    Raises:
        TokenizerError: as `check_tokenizer_file`, or the file changed into something else meanwhile.
    """
    check_tokenizer_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO swapped in meanwhile must not block
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TokenizerError(f"{path}: tokenizer file is not a regular file")
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(MAX_TOKENIZER_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read tokenizer file ({exc.strerror or exc})") from None
    if len(data) > MAX_TOKENIZER_BYTES:
        raise TokenizerError(f"{path}: tokenizer file grew past {MAX_TOKENIZER_BYTES} bytes while read")
    return data
