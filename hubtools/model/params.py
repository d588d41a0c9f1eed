"""params.json in native terms, parsed and checked: the fields every family shares, and the rules for them.

`parse_common` validates the shared fields (a family adds its own, `hubtools.families`); `read_json_file`
decodes a small JSON file defensively; `default_rope_theta` is the documented rule for an absent base.
"""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

from hubtools.errors import ParamsError
from hubtools.filenames import PARAMS
from hubtools.model.family import ModelParams
from hubtools.model.fp8 import parse_native

_REQUIRED = ("dim", "n_layers", "n_heads", "norm_eps", "vocab_size")
_INT_FIELDS = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size")
MAX_JSON_BYTES = 16 * 1024 * 1024
Bad = Callable[[str, str, Any], ParamsError]


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_number(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


def bad_value(source: str, names: Mapping[str, str] | None) -> Bad:
    """A maker of the one-line error for a field of `source` (named as `names` calls it) and its bad value."""

    def bad(key: str, rule: str, value: Any) -> ParamsError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ParamsError(f"{source}: field '{(names or {}).get(key, key)}' must be {rule}, got {shown}")

    return bad


def positive_int(raw: Mapping[str, Any], key: str, bad: Bad) -> int:
    """`raw[key]` when it is a positive integer (not a bool)."""
    value = raw.get(key)
    if not _is_int(value) or value <= 0:
        raise bad(key, "a positive integer", value)
    return value


def context_field(raw: Mapping[str, Any], source: str) -> tuple[str, Any]:
    """params.json's context length and the name it goes by: `max_seq_len` (Small 3 2501) or
    `max_position_embeddings` (Small 3.1 on, Ministral 3); both present must agree.

    Raises:
        ParamsError: both present with different values, naming them.
    """
    seq, positions = raw.get("max_seq_len"), raw.get("max_position_embeddings")
    if positions is None:
        return "max_seq_len", seq
    if seq is not None and seq != positions:
        raise ParamsError(
            f"{source}: fields 'max_seq_len' ({seq}) and 'max_position_embeddings' ({positions}) disagree "
            "(expected one context length)"
        )
    return "max_position_embeddings", positions


def parse_common(raw: Any, *, source: str = PARAMS, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Validate the fields of a decoded params.json that every family shares: `ModelParams` keyword arguments.

    Args:
        names: how each native field is called in `source` (config.json keys), for the messages.

    Raises:
        ParamsError: a required field is missing, or a value has the wrong type or range, or values
            are inconsistent; the message names the file and the field.
    """
    bad = bad_value(source, names)
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    missing = [(names or {}).get(k, k) for k in _REQUIRED if raw.get(k) is None]
    if missing:
        raise ParamsError(f"{source}: missing required field(s) {', '.join(missing)}")
    if raw.get("hidden_dim") is None:
        raise ParamsError(f"{source}: missing required field {(names or {}).get('hidden_dim', 'hidden_dim')}")
    for key in (*_INT_FIELDS, "max_seq_len"):
        if raw.get(key) is not None and (not _is_int(raw[key]) or raw[key] <= 0):
            raise bad(key, "a positive integer", raw[key])
    window = raw.get("sliding_window")
    if window is not None and (not _is_int(window) or window <= 0):
        name = (names or {}).get("sliding_window", "sliding_window")
        raise ParamsError(f"{source}: {name} must be a positive integer or absent, got {window!r}")
    for key in ("norm_eps", "rope_theta"):
        if raw.get(key) is not None and not _positive_number(raw[key]):
            raise bad(key, "a finite number > 0", raw[key])
    if raw["norm_eps"] >= 1:
        raise bad("norm_eps", "a finite number in (0, 1)", raw["norm_eps"])
    n_heads: int = raw["n_heads"]
    n_kv: int = raw.get("n_kv_heads") or n_heads
    if n_heads % n_kv:
        raise ParamsError(f"{source}: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv}")
    head_dim = raw.get("head_dim") or raw["dim"] // n_heads
    if head_dim <= 0 or head_dim % 2:
        raise bad("head_dim", "a positive even integer (rotary embeddings pair its halves)", head_dim)
    return {
        "dim": raw["dim"],
        "n_layers": raw["n_layers"],
        "head_dim": head_dim,
        "hidden_dim": raw["hidden_dim"],
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "norm_eps": float(raw["norm_eps"]),
        "vocab_size": raw["vocab_size"],
        "rope_theta": float(raw["rope_theta"]) if raw.get("rope_theta") is not None else None,
        "sliding_window": raw.get("sliding_window"),
        "max_seq_len": raw.get("max_seq_len"),
        "quantization": parse_native(
            raw.get("quantization"), source=source, block_value=raw.get("quantization_config")
        ),
    }


def read_json_file(path: Path, *, limit: int = MAX_JSON_BYTES, invalid: str = "not valid JSON") -> Any:
    """Decode a small JSON file (params.json, config.json) that a user or a download may have broken.

    Raises:
        ParamsError: not a regular file, larger than `limit`, not UTF-8 JSON, or nested too deeply.
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ParamsError(f"{path}: not a regular file")
    if info.st_size > limit:
        raise ParamsError(f"{path}: {info.st_size} bytes, expected a JSON file of at most {limit}")
    try:
        with path.open("rb") as f:
            return json.loads(f.read(limit + 1).decode("utf-8"))
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise ParamsError(f"{path}: {invalid} ({str(exc).splitlines()[0][:120]})") from None


def default_rope_theta(params: ModelParams) -> float:
    """The documented rule for an absent rope_theta: 1e4 with a sliding window, else 1e6.

    This is mistral-inference's rule of Dec 2023, under which Mistral 7B v0.1 (window 4096) was
    released with 1e4 and the Mixtral torrents with 1e6. An explicit value always wins.
    """
    if params.rope_theta is not None:
        return params.rope_theta
    return 1e4 if params.sliding_window else 1e6
