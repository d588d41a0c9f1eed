"""params.json <-> config.json / generation_config.json, pure.

Every default for a field params.json leaves out is an explicit rule, reported in `HfConfig.rules`
and overridable (recipe or flag):
- rope_theta: params value, else override, else 1e4 with a sliding window and 1e6 without
  (`params.default_rope_theta`).
- max_position_embeddings: override, else params `max_seq_len`, else the family's default (32768, Mixtral
  8x7B's published value, for Mistral and Mixtral; 8x22B recipes override it with 65536).
- sliding_window: params value or null; bos/eos ids 1/2 (every Mistral tokenizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hubtools.errors import InvalidValueError, ParamsError
from hubtools.model import fp8
from hubtools.model.family import ModelParams
from hubtools.model.params import default_rope_theta

DEFAULT_MAX_POSITIONS = 32768
_HF_REQUIRED = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "rms_norm_eps",
    "vocab_size",
)
HF_FIELDS = {  # config.json key -> params.json field, for the fields every family shares
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "intermediate_size": "hidden_dim",
    "rms_norm_eps": "norm_eps",
    "vocab_size": "vocab_size",
    "head_dim": "head_dim",
    "rope_theta": "rope_theta",
    "sliding_window": "sliding_window",
}


@dataclass(frozen=True)
class ConfigOverrides:
    """Values that win over params.json and the default rules (from a recipe or CLI flags)."""

    rope_theta: float | None = None
    max_position_embeddings: int | None = None
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        """Refuse values that would write an invalid or silently wrong config.json.

        Raises:
            InvalidValueError: rope_theta not finite and > 0, max_position_embeddings not a positive integer.
        """
        theta = self.rope_theta
        if theta is not None and (
            isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta <= 0
        ):
            raise InvalidValueError(f"rope_theta {theta!r}: expected a finite number > 0")
        positions = self.max_position_embeddings
        if positions is not None and (isinstance(positions, bool) or not isinstance(positions, int) or positions <= 0):
            raise InvalidValueError(f"max_position_embeddings {positions!r}: expected a positive integer")


@dataclass(frozen=True)
class HfConfig:
    config: dict[str, Any]
    generation: dict[str, Any]
    rules: tuple[str, ...] = field(default=())


def _rope_theta(params: ModelParams, overrides: ConfigOverrides) -> tuple[float, str]:
    if overrides.rope_theta is not None:
        return overrides.rope_theta, f"rope_theta={overrides.rope_theta:g} (override)"
    if params.rope_theta is not None:
        return params.rope_theta, f"rope_theta={params.rope_theta:g} (params.json)"
    theta = default_rope_theta(params)
    why = "sliding window" if params.sliding_window else "no sliding window"
    return theta, f"rope_theta={theta:g} (default rule: {why})"


def _max_positions(params: ModelParams, overrides: ConfigOverrides) -> tuple[int, str]:
    if overrides.max_position_embeddings is not None:
        value = overrides.max_position_embeddings
        return value, f"max_position_embeddings={value} (override)"
    if params.max_seq_len is not None:
        key = params.option("max_positions_key", "max_seq_len")
        return params.max_seq_len, f"max_position_embeddings={params.max_seq_len} (params.json {key})"
    default = params.family.default_max_positions
    return default, f"max_position_embeddings={default} (default rule)"


def to_hf_config(params: ModelParams, *, dtype: str, overrides: ConfigOverrides | None = None) -> HfConfig:
    """Build config.json and generation_config.json for `params`; `dtype` is the torch name of the weights' dtype
    ('bfloat16'), written as `torch_dtype`.

    Example:
        >>> from hubtools.testing import tiny_params
        >>> to_hf_config(tiny_params(sliding_window=4096), dtype="bfloat16").config["rope_theta"]
        10000.0
    """
    overrides = overrides or ConfigOverrides()
    theta, theta_rule = _rope_theta(params, overrides)
    positions, positions_rule = _max_positions(params, overrides)
    config: dict[str, Any] = {
        "hidden_size": params.dim,
        "intermediate_size": params.hidden_dim,
        "num_hidden_layers": params.n_layers,
        "num_attention_heads": params.n_heads,
        "num_key_value_heads": params.n_kv_heads,
        "head_dim": params.head_dim,
        "rms_norm_eps": params.norm_eps,
        "vocab_size": params.vocab_size,
        "rope_theta": theta,
        "max_position_embeddings": positions,
        "sliding_window": params.sliding_window,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": overrides.bos_token_id,
        "eos_token_id": overrides.eos_token_id,
        "torch_dtype": dtype,
    }
    if params.quantization is not None:
        config[fp8.HF_FIELD] = fp8.hf_config(params)
    own = params.family.config_fields(params)
    config.update(own)
    if "rope_parameters" in own:  # transformers 5.x's form holds the base
        config["rope_parameters"] = {"rope_theta": config.pop("rope_theta"), **own["rope_parameters"]}
    config = params.family.outer_config(params, config)
    generation = {"bos_token_id": overrides.bos_token_id, "eos_token_id": overrides.eos_token_id}
    generation.update(params.family.generation_fields(params))
    config["transformers_version"] = transformers_version()
    generation["transformers_version"] = config["transformers_version"]
    return HfConfig(dict(sorted(config.items())), generation, (theta_rule, positions_rule))


def transformers_version() -> str:
    """The installed transformers' version, from package metadata (transformers itself is not imported).

    Written into config.json as transformers does: without it, transformers 5.x takes the config for a
    pre-4.x one and warns, falsely, that a tekken tokenizer's regex is wrong.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "5.23.0"  # the lowest version hubtools is tested with


def config_rope_theta(config: dict[str, Any]) -> Any:
    """config.json's rotary base: top-level `rope_theta` (transformers 4.x) or `rope_parameters.rope_theta` (5.x).

    Example:
        >>> config_rope_theta({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
        1000000.0
    """
    parameters = config.get("rope_parameters")
    nested = parameters.get("rope_theta") if isinstance(parameters, dict) else None
    return config.get("rope_theta") or nested


def config_to_common(config: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The shared fields of a config.json as a params.json-shaped dict, and params field -> config key.

    Raises:
        ParamsError: a required field is missing (named by its config.json key).
    """
    missing = [k for k in _HF_REQUIRED if config.get(k) is None]
    if missing:
        raise ParamsError(f"{source}: missing field {missing[0]}")
    keys = {native: hf for hf, native in HF_FIELDS.items()}
    raw: dict[str, Any] = {native: config.get(hf) for hf, native in HF_FIELDS.items()}
    raw["n_kv_heads"] = raw["n_kv_heads"] or raw["n_heads"]
    raw["rope_theta"] = config_rope_theta(config)
    if config.get("rope_theta") is None:
        keys["rope_theta"] = "rope_parameters.rope_theta"
    raw["quantization"] = fp8.parse_hf(config.get(fp8.HF_FIELD), source=source)
    keys["quantization"] = fp8.HF_FIELD
    return raw, keys


def to_native_params(params: ModelParams) -> dict[str, Any]:
    """params.json as mistral-inference loads it: the params as read (rope_theta only when known), no max_seq_len."""
    out = params.to_dict()
    out.pop("max_seq_len", None)
    return out
