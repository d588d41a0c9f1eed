"""The checks of every value a user gives, shared by the CLI, the Python API and dry runs.

Each command (and its `--dry-run`) calls these before any work, whatever the entry point, so a value is
refused the same way (same error class, same one-line message naming the value) by `hubtools convert
--dtype int8` and by `hubtools.convert(..., dtype="int8")`, and a dry run that passes is followed by a
real run that does not fail on input. Messages name the value, not a CLI flag: "{name} '{value}':
expected ..., found ...".

Pure: values in, values out; nothing here touches the disk (huggingface_hub's repo-id rule is imported
when a repo id is checked). Quant types need gguf-py: `hubtools.gguf.quant.parse_quants` is their check.

Example:
    >>> cast_dtype("float16"), byte_size("2GB", name="max_shard_size"), split_size(None)
    (<DType.FLOAT16: 'float16'>, 2000000000, 0)
    >>> cast_dtype("int8")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    hubtools.errors.InvalidValueError: dtype 'int8': expected one of bfloat16, float16, float32 (...)
"""

from __future__ import annotations

import re
from typing import Any

from hubtools.dtypes import CAST_DTYPES, COMPUTE_DTYPES, DType
from hubtools.errors import DestinationError, InvalidValueError, PublishError
from hubtools.units import parse_size

STEM_MAX = 200  # bytes of a GGUF file stem: NAME.QUANT-0000K-of-0000N.gguf.verify.json stays under 255


def _shown(value: Any) -> str:
    """A value quoted on one line: 'a/b' as is, control characters escaped ('a\\nb')."""
    text = str(value)
    return f"'{text}'" if text.isprintable() else repr(text)


def cast_dtype(value: Any) -> DType | None:
    """The dtype a conversion casts to: one of the floating types a release can ship, or None (keep).

    Accepts a name ("bfloat16"), a safetensors code ("BF16"), a torch dtype or a `DType`.

    Raises:
        InvalidValueError: any other value (an integer or float8 type, a typo), naming it.
    """
    if value is None:
        return None
    return _one_of(value, CAST_DTYPES, "the floating types a release ships")


def compute_dtype(value: Any) -> DType:
    """The dtype the logits check computes in (float32 catches conversion bugs; bfloat16 is faster).

    Raises:
        InvalidValueError: any other value, naming it.
    """
    return _one_of(value, COMPUTE_DTYPES, "the logits check's compute dtypes")


def _one_of(value: Any, allowed: tuple[DType, ...], what: str) -> DType:
    try:
        dtype = DType.parse(value)
    except InvalidValueError:
        dtype = None
    if dtype not in allowed:
        names = ", ".join(sorted(DType.values(*allowed)))
        raise InvalidValueError(f"dtype {_shown(str(value).removeprefix('torch.'))}: expected one of {names} ({what})")
    return dtype


def byte_size(value: Any, *, name: str) -> int:
    """A positive byte count from '5GB', '500MiB' or an integer; `name` is the setting (max_shard_size).

    Raises:
        InvalidValueError: "max_shard_size 'lots': expected a size such as 5GB, 500MB or 2GiB".
    """
    try:
        return parse_size(value)
    except InvalidValueError as exc:
        raise InvalidValueError(f"{name} {exc}") from None


def split_size(value: Any) -> int:
    """GGUF's split threshold in bytes: None or 0 (never split), else a positive size.

    Raises:
        InvalidValueError: naming the value.
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
        return 0
    return byte_size(value, name="split_max_size")


def file_stem(name: Any) -> str:
    """A GGUF file stem (`NAME` of NAME.QUANT.gguf): one plain file name, not hidden, printable.

    Raises:
        DestinationError: "name 'a/b': expected a file stem (e.g. mixtral-8x7b-instruct-v0.1)".
    """
    text = name if isinstance(name, str) else ""
    if (
        not text.strip()
        or "/" in text
        or "\\" in text
        or text.startswith(".")
        or not text.isprintable()
        or len(text.encode()) > STEM_MAX
    ):
        raise DestinationError(
            f"name {_shown(name)}: expected a file stem (e.g. mixtral-8x7b-instruct-v0.1; no '/', no leading '.', "
            f"at most {STEM_MAX} bytes)"
        )
    return text


def repo_id(value: Any) -> str:
    """A model repo id 'namespace/name' by the Hub's own rule (huggingface_hub's `validate_repo_id`).

    Raises:
        PublishError: naming the id and the rule it breaks ('a/b/c', empty parts, characters the Hub refuses).

    Example:
        >>> repo_id("user/bad..name")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        hubtools.errors.PublishError: 'user/bad..name': expected a repo id 'namespace/name', found an invalid one...
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
        if value.count("/") != 1:
            raise HFValidationError("a model repo id needs its namespace")
    except HFValidationError as exc:
        rule = str(exc).split(":")[0].removesuffix(".").strip()
        raise PublishError(
            f"{_shown(value)}: expected a repo id 'namespace/name', found an invalid one ({rule})"
        ) from None
    return str(value)


_REF_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def ref_name(value: Any, *, name: str) -> str | None:
    """A branch or tag name by git's rules (`git check-ref-format`), or None; `name` is the setting.

    Raises:
        PublishError: naming the value ("tag 'v 1': expected a git ref name ...").
    """
    if value is None:
        return None
    text = value if isinstance(value, str) else ""
    parts = text.split("/")
    if (
        not text
        or _REF_BAD.search(text)
        or text.startswith(("-", "/"))
        or text.endswith(("/", ".", ".lock"))
        or text == "@"
        or any(p.startswith(".") or p.endswith(".lock") for p in parts)
    ):
        raise PublishError(
            f"{name} {_shown(value)}: expected a git ref name (no spaces, '..', '~^:?*[\\', leading '-' or "
            "'.', trailing '/', '.' or '.lock')"
        )
    return text
