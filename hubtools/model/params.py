"""The model hyper-parameters in native (`params.json`) terms, parsed and checked.

`ModelParams` is the one description of an architecture that the name table, the
config translation, the reference forward and the verifier share.
"""

from __future__ import annotations

import json
import math
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard

from hubtools.errors import ParamsError

_REQUIRED = ("dim", "n_layers", "n_heads", "norm_eps", "vocab_size")
_INT_FIELDS = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size")
MAX_JSON_BYTES = 16 * 1024 * 1024
_LAYER = re.compile(r"(?:^|\.)layers\.(\d{1,9})\.")  # longer numbers are unknown names
_EXPERT = re.compile(r"\.experts\.(\d{1,9})\.")


@dataclass(frozen=True)
class ModelParams:
    """Native hyper-parameters. `rope_theta` / `max_seq_len` are None when params.json omits them.

    Example:
        >>> p = ModelParams(dim=64, n_layers=2, head_dim=16, hidden_dim=128, n_heads=4,
        ...                 n_kv_heads=2, norm_eps=1e-5, vocab_size=32000)
        >>> p.is_moe
        False
    """

    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    vocab_size: int
    rope_theta: float | None = None
    sliding_window: int | None = None
    max_seq_len: int | None = None
    num_experts: int = 0
    num_experts_per_tok: int = 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def architecture(self) -> str:
        return "MixtralForCausalLM" if self.is_moe else "MistralForCausalLM"

    def to_dict(self) -> dict[str, Any]:
        """The params.json form: absent optional fields are omitted, MoE nested under `moe`."""
        d = asdict(self)
        moe = {"num_experts": d.pop("num_experts"), "num_experts_per_tok": d.pop("num_experts_per_tok")}
        out = {k: v for k, v in d.items() if v is not None}
        if self.is_moe:
            out["moe"] = moe
        return out


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_number(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


def parse_params(raw: Any, *, source: str = "params.json", names: Mapping[str, str] | None = None) -> ModelParams:
    """Validate a decoded params.json mapping into `ModelParams`.

    Args:
        names: how each native field is called in `source` (config.json keys), for the messages.

    Raises:
        ParamsError: a required field is missing, or a value has the wrong type or range, or values
            are inconsistent; the message names the file and the field.
    """

    def bad(key: str, rule: str, value: Any) -> ParamsError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ParamsError(f"{source}: field '{(names or {}).get(key, key)}' must be {rule}, got {shown}")

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
    moe = _moe(raw.get("moe"), source, bad)
    return ModelParams(
        dim=raw["dim"],
        n_layers=raw["n_layers"],
        head_dim=head_dim,
        hidden_dim=raw["hidden_dim"],
        n_heads=n_heads,
        n_kv_heads=n_kv,
        norm_eps=float(raw["norm_eps"]),
        vocab_size=raw["vocab_size"],
        rope_theta=float(raw["rope_theta"]) if raw.get("rope_theta") is not None else None,
        sliding_window=raw.get("sliding_window"),
        max_seq_len=raw.get("max_seq_len"),
        num_experts=moe[0],
        num_experts_per_tok=moe[1],
    )


def _moe(moe: Any, source: str, bad: Callable[[str, str, Any], ParamsError]) -> tuple[int, int]:
    """(num_experts, num_experts_per_tok) of a params.json `moe` object; (0, 0) when absent."""
    if moe is None or moe == {}:
        return 0, 0
    if not isinstance(moe, dict):
        raise bad("moe", "an object with num_experts and num_experts_per_tok", moe)
    if not {"num_experts", "num_experts_per_tok"} <= set(moe):
        raise ParamsError(f"{source}: 'moe' needs num_experts and num_experts_per_tok, got {sorted(moe)}")
    counts = []
    for key in ("num_experts", "num_experts_per_tok"):
        value = moe.get(key)
        if not _is_int(value) or value <= 0:
            raise bad(key, "a positive integer", value)
        counts.append(value)
    if counts[1] > counts[0]:
        raise ParamsError(f"{source}: moe.num_experts_per_tok {counts[1]} must be in 1..num_experts ({counts[0]})")
    return counts[0], counts[1]


def check_counts(params: ModelParams, names: Iterable[str], *, source: str) -> None:
    """n_layers and num_experts must match the layer and expert indices the weights hold.

    Checked before anything the size of n_layers x num_experts is built (a name table for a crafted
    n_layers of 1e9 would never finish).

    Raises:
        ParamsError: the counts disagree, naming the file and what the weights hold.
    """
    layers: set[int] = set()
    experts: set[int] = set()
    for name in names:
        if match := _LAYER.search(name):
            layers.add(int(match.group(1)))
        if match := _EXPERT.search(name):
            experts.add(int(match.group(1)))
    for field, count, found in (("n_layers", params.n_layers, layers), ("num_experts", params.num_experts, experts)):
        if field == "num_experts" and not params.is_moe:
            continue
        if count != len(found) or (found and max(found) + 1 != count):
            held = f"{len(found)} (indices {min(found)}..{max(found)})" if found else "none"
            what = "layers" if field == "n_layers" else "experts"
            raise ParamsError(f"{source}: {field} is {count}, but the weights hold {what}: {held}")


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


def load_params(path: Path) -> ModelParams:
    """Read and validate a params.json file.

    Raises:
        ParamsError: the file is missing, is not JSON, or fails `parse_params`.
    """
    if not path.is_file():
        raise ParamsError(f"{path}: not found (a native checkpoint needs params.json beside the weights)")
    return parse_params(read_json_file(path), source=str(path))


def default_rope_theta(params: ModelParams) -> float:
    """The documented rule for an absent rope_theta: 1e4 with a sliding window, else 1e6.

    This is mistral-inference's rule of Dec 2023, under which Mistral 7B v0.1 (window 4096) was
    released with 1e4 and the Mixtral torrents with 1e6. An explicit value always wins.
    """
    if params.rope_theta is not None:
        return params.rope_theta
    return 1e4 if params.sliding_window else 1e6
