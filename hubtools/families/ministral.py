"""Ministral: Mistral whose layers alternate full and sliding-window attention (Ministral 8B 2410;
`MinistralForCausalLM`).

What differs from `mistral`: params.json's `sliding_window` is a list, one entry per layer of a pattern
repeated over the layers, `null` for full attention (Ministral 8B: `[null, W, W, W]`, as vLLM reads it).
config.json holds the pattern spelled out (`layer_types`: "full_attention" / "sliding_attention" per layer)
and the one window value (`sliding_window`). transformers' `MistralForCausalLM` ignores `layer_types` (it
warns and slides every layer); `MinistralForCausalLM` (model_type `ministral`, which transformers' own
documentation loads Ministral-8B-Instruct-2410 as) applies each layer's. Back to params.json the pattern is
the shortest period of `layer_types` (the same model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hubtools.errors import ParamsError
from hubtools.families.mistral import Mistral
from hubtools.model.family import ModelParams
from hubtools.model.params import context_field, parse_common

FULL, SLIDING = "full_attention", "sliding_attention"


class Ministral(Mistral):
    name = "ministral"
    architecture = "MinistralForCausalLM"
    model_type = "ministral"
    gguf_unsupported = (
        "llama.cpp's convert_hf_to_gguf.py has no MinistralForCausalLM, and the `llama` architecture it uses for "
        "MistralForCausalLM applies no per-layer sliding window"
    )

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        return isinstance(raw.get("sliding_window"), list) and not raw.get("moe")

    def parse_params(
        self, raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None = None
    ) -> ModelParams:
        pattern = _pattern(raw.get("sliding_window"), raw.get("n_layers"), source)
        window = next((w for w in pattern if w is not None), None)
        key, positions = context_field(raw, source)
        common = parse_common({**raw, "sliding_window": window, "max_seq_len": positions}, source=source, names=names)
        options = (("window_pattern", pattern),) + ((("max_positions_key", key),) if key != "max_seq_len" else ())
        return ModelParams(**common, family=self, options=options)

    def params_json(self, params: ModelParams) -> dict[str, Any]:
        return {**super().params_json(params), "sliding_window": list(params.option("window_pattern"))}

    def config_fields(self, params: ModelParams) -> dict[str, Any]:
        kinds = [FULL if self.layer_window(params, i) is None else SLIDING for i in range(params.n_layers)]
        return {**super().config_fields(params), "layer_types": kinds}

    def config_to_params(self, config: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, str]]:
        raw, keys = super().config_to_params(config, source=source)
        kinds, layers, window = config.get("layer_types"), raw.get("n_layers"), raw.get("sliding_window")
        if not isinstance(kinds, list) or len(kinds) != layers or not set(kinds) <= {FULL, SLIDING}:
            raise ParamsError(
                f'{source}: field \'layer_types\' must list "{FULL}" or "{SLIDING}" for each of the '
                f"{layers} layers, got {str(kinds)[:60]}"
            )
        period = next(
            p for p in range(1, len(kinds) + 1) if len(kinds) % p == 0 and kinds == kinds[:p] * (len(kinds) // p)
        )
        raw["sliding_window"] = [window if kind == SLIDING else None for kind in kinds[:period]]
        keys["sliding_window"] = "sliding_window"
        return raw, keys

    def layer_window(self, params: ModelParams, layer: int) -> int | None:
        pattern = params.option("window_pattern")
        return pattern[layer % len(pattern)]


def _pattern(value: Any, n_layers: Any, source: str) -> tuple[int | None, ...]:
    """The per-layer window pattern of params.json's `sliding_window` list, checked."""
    valid = bool(value) and all(w is None or (isinstance(w, int) and not isinstance(w, bool) and w > 0) for w in value)
    if not valid:
        raise ParamsError(
            f"{source}: field 'sliding_window' must list positive integers or null, got {str(value)[:60]}"
        )
    if len({w for w in value if w is not None}) > 1:
        raise ParamsError(
            f"{source}: field 'sliding_window' holds several window sizes {value} (config.json holds one window)"
        )
    if isinstance(n_layers, int) and n_layers % len(value):
        raise ParamsError(
            f"{source}: field 'sliding_window' has {len(value)} entries, which do not repeat evenly over "
            f"n_layers {n_layers}"
        )
    return tuple(value)


FAMILY = Ministral()
