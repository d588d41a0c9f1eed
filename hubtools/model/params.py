"""The model hyper-parameters in native (`params.json`) terms, parsed and checked.

`ModelParams` is the one description of an architecture that the name table, the
config translation, the reference forward and the verifier share.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hubtools.errors import ParamsError

_REQUIRED = ("dim", "n_layers", "n_heads", "norm_eps", "vocab_size")
_INT_FIELDS = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size")


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


def parse_params(raw: Any, *, source: str = "params.json") -> ModelParams:
    """Validate a decoded params.json mapping into `ModelParams`.

    Raises:
        ParamsError: a required field is missing, or a value has the wrong type or is inconsistent.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ParamsError(f"{source}: missing required field(s) {', '.join(missing)}")
    for key in _INT_FIELDS:
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] <= 0):
            raise ParamsError(f"{source}: field '{key}' must be a positive integer, got {raw[key]!r}")
    n_heads: int = raw["n_heads"]
    n_kv: int = raw.get("n_kv_heads", n_heads)
    if n_heads % n_kv:
        raise ParamsError(f"{source}: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv}")
    head_dim = raw.get("head_dim") or raw["dim"] // n_heads
    if "hidden_dim" not in raw:
        raise ParamsError(f"{source}: missing required field hidden_dim")
    moe = raw.get("moe") or {}
    if moe and not ({"num_experts", "num_experts_per_tok"} <= set(moe)):
        raise ParamsError(f"{source}: 'moe' needs num_experts and num_experts_per_tok, got {sorted(moe)}")
    if moe and not 0 < moe["num_experts_per_tok"] <= moe["num_experts"]:
        raise ParamsError(
            f"{source}: moe.num_experts_per_tok {moe['num_experts_per_tok']} "
            f"must be in 1..num_experts ({moe['num_experts']})"
        )
    window = raw.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window <= 0):
        raise ParamsError(f"{source}: sliding_window must be a positive integer or absent, got {window!r}")
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
        sliding_window=window,
        max_seq_len=raw.get("max_seq_len"),
        num_experts=int(moe.get("num_experts", 0)),
        num_experts_per_tok=int(moe.get("num_experts_per_tok", 0)),
    )


def load_params(path: Path) -> ModelParams:
    """Read and validate a params.json file.

    Raises:
        ParamsError: the file is missing, is not JSON, or fails `parse_params`.
    """
    if not path.is_file():
        raise ParamsError(f"{path}: not found (a native checkpoint needs params.json beside the weights)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: not valid JSON ({exc})") from None
    return parse_params(raw, source=str(path))


def default_rope_theta(params: ModelParams) -> float:
    """The documented rule for an absent rope_theta: 1e4 with a sliding window, else 1e6.

    This is mistral-inference's rule of Dec 2023, under which Mistral 7B v0.1 (window 4096) was
    released with 1e4 and the Mixtral torrents with 1e6. An explicit value always wins.
    """
    if params.rope_theta is not None:
        return params.rope_theta
    return 1e4 if params.sliding_window else 1e6
