"""The native tokenizer file of a checkpoint folder, found by name (bytes on disk need no tokenizer code)."""

from __future__ import annotations

from pathlib import Path

from hubtools.checkpoint.file_limits import check_tokenizer_file, read_tokenizer_bytes
from hubtools.errors import LayoutError
from hubtools.filenames import is_tekken_name, is_tokenizer_name, spm_version


def _specificity(path: Path) -> tuple[int, int]:
    if is_tekken_name(path.name):
        return (2, 0)
    version = spm_version(path.name)
    return (1, int(version[1:])) if version else (0, 0)


def find_tokenizer_file(folder: Path) -> Path | None:
    """The native tokenizer file of a folder (or `folder` itself when it is such a file).

    Several names with the same bytes are one tokenizer (e.g. `tokenizer.model` beside
    `tokenizer.model.v3`); the most specific name wins.

    Returns:
        The file, or None when the folder holds none.

    Raises:
        LayoutError: tokenizer files with different contents, or a file that is not a native tokenizer.
        TokenizerError: a tokenizer-named entry that is a FIFO, device, dangling symlink or too large.

    Example:
        >>> find_tokenizer_file(Path("/nonexistent")) is None
        True
    """
    if folder.is_file():
        if not is_tokenizer_name(folder.name):
            raise LayoutError(f"{folder}: expected a native tokenizer file (tokenizer.model[.vN] or tekken*.json)")
        return folder
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.iterdir() if is_tokenizer_name(p.name)),
        key=lambda p: (_specificity(p), p.name),
        reverse=True,
    )
    sizes = [check_tokenizer_file(p) for p in found]  # a FIFO, device or dangling link is named, never read
    if len(found) > 1:
        first = read_tokenizer_bytes(found[0])
        other = next(
            (p for p, n in zip(found[1:], sizes[1:], strict=True) if n != sizes[0] or read_tokenizer_bytes(p) != first),
            None,
        )
        if other is not None:
            raise LayoutError(
                f"{folder}: expected one native tokenizer, found '{found[0].name}' and '{other.name}' with "
                "different contents (remove one or pass the file itself)"
            )
    return found[0] if found else None
