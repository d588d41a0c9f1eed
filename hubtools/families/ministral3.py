"""Ministral 3: Mistral with YaRN rotary scaling, llama-4 query scaling and optionally tied embeddings
(`Ministral3ForCausalLM`: the text of Ministral 3 3B/8B/14B, and Devstral 2 123B).

What differs from `mistral`, field by field (params.json -> config.json):
- `yarn {factor, original_max_position_embeddings, beta, alpha, apply_scale}` -> `rope_parameters {rope_type:
  yarn, factor, original_max_position_embeddings, beta_fast: beta, beta_slow: alpha, mscale: 1, mscale_all_dim:
  0 if apply_scale else 1}`. transformers' YaRN gives q and k the factor `mscale / mscale_all_dim` of
  `0.1 ln(factor) + 1`, or that factor itself when either is 0: so apply_scale true is the YaRN paper's
  `0.1 ln(factor) + 1` (vLLM and llama.cpp read the native field so), false is 1. Absent means true (vLLM).
- `llama_4_scaling {original_max_position_embeddings, beta}` -> `rope_parameters.llama_4_scaling_beta` (0
  without it); transformers scales queries by the YaRN original context, so the two must agree.
- `tied_embeddings` -> `tie_word_embeddings` (no `output.weight`: the head is the embedding).
- `max_position_embeddings` (or `max_seq_len`) -> `max_position_embeddings`, else 262144 (transformers'
  script's default).
The forward: `hubtools.model.yarn` (frequencies, mscale, query scaling); GGUF: llama.cpp's `mistral3`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from hubtools.errors import ParamsError
from hubtools.families.mistral import EMBEDDING, NORM, OUTPUT, Mistral
from hubtools.model import fp8
from hubtools.model.accounting import check_object_fields
from hubtools.model.family import ModelParams
from hubtools.model.params import Bad, bad_value, context_field, parse_common, positive_int
from hubtools.model.rows import Row
from hubtools.model.yarn import Yarn

if TYPE_CHECKING:
    import torch

YARN_FIELDS = ("factor", "original_max_position_embeddings", "beta", "alpha", "apply_scale")
LLAMA4_FIELDS = ("original_max_position_embeddings", "beta")
TEKKEN_PAD = 11  # tekken's <pad>: Ministral3Config's default, and what transformers' script writes
MLA_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


class Ministral3(Mistral):
    name = "ministral3"
    architecture = "Ministral3ForCausalLM"
    model_type = "ministral3"
    gguf_architecture = "mistral3"
    params_fields = Mistral.params_fields | {"yarn", "llama_4_scaling", "tied_embeddings"}
    params_absent = {"moe": (None, {}), **dict.fromkeys(MLA_FIELDS, (None,))}  # MLA fields null: not MLA
    default_max_positions = 262144

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        return (raw.get("yarn") is not None or raw.get("llama_4_scaling") is not None) and not raw.get("moe")

    def parse_params(
        self, raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None = None
    ) -> ModelParams:
        bad = bad_value(source, names)
        key, positions = context_field(raw, source)
        common = parse_common({**raw, "max_seq_len": positions}, source=source, names=names)
        yarn = _yarn(raw.get("yarn"), source, bad)
        beta = _llama4_beta(raw.get("llama_4_scaling"), yarn, source, bad)
        tied = raw.get("tied_embeddings", False)
        if not isinstance(tied, bool):
            raise bad("tied_embeddings", "true or false", tied)
        options = (("yarn", yarn), ("llama_4_scaling_beta", beta), ("tied", tied), ("max_positions_key", key))
        return ModelParams(**common, family=self, options=options)

    def params_json(self, params: ModelParams) -> dict[str, Any]:
        out = params.common()
        positions = out.pop("max_seq_len", None)
        if positions is not None:
            out[params.option("max_positions_key")] = positions
        yarn: Yarn = params.option("yarn")
        out["yarn"] = {
            "factor": yarn.factor,
            "original_max_position_embeddings": yarn.original_max_positions,
            "beta": yarn.beta_fast,
            "alpha": yarn.beta_slow,
            "apply_scale": yarn.apply_scale,
        }
        if params.option("llama_4_scaling_beta"):
            beta = params.option("llama_4_scaling_beta")
            out["llama_4_scaling"] = {"original_max_position_embeddings": yarn.original_max_positions, "beta": beta}
        out["tied_embeddings"] = params.option("tied")
        return out

    def config_fields(self, params: ModelParams) -> dict[str, Any]:
        yarn: Yarn = params.option("yarn")
        rope = {
            "rope_type": "yarn",
            "factor": float(yarn.factor),
            "original_max_position_embeddings": yarn.original_max_positions,
            "beta_fast": float(yarn.beta_fast),
            "beta_slow": float(yarn.beta_slow),
            "mscale": 1.0,
            "mscale_all_dim": 0.0 if yarn.apply_scale else 1.0,
            "llama_4_scaling_beta": float(params.option("llama_4_scaling_beta") or 0.0),
        }
        own = {"tie_word_embeddings": params.option("tied"), "pad_token_id": TEKKEN_PAD, "rope_parameters": rope}
        return {**super().config_fields(params), **own}

    def generation_fields(self, params: ModelParams) -> dict[str, Any]:
        return {"pad_token_id": TEKKEN_PAD}

    def config_to_params(self, config: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, str]]:
        raw, keys = super().config_to_params(config, source=source)
        rope = config.get("rope_parameters")
        if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type")) != "yarn":
            found = rope.get("rope_type") if isinstance(rope, dict) else rope
            raise ParamsError(
                f"{source}: field 'rope_parameters.rope_type' must be \"yarn\" for a {self.architecture}, got {found!r}"
            )
        scaled = not (rope.get("mscale") == 1 and rope.get("mscale_all_dim") == 1)
        raw["yarn"] = {
            "factor": rope.get("factor"),
            "original_max_position_embeddings": rope.get("original_max_position_embeddings"),
            "beta": rope.get("beta_fast", 32.0),
            "alpha": rope.get("beta_slow", 1.0),
            "apply_scale": scaled,
        }
        beta = rope.get("llama_4_scaling_beta")
        if beta:
            orig = rope.get("original_max_position_embeddings")
            raw["llama_4_scaling"] = {"original_max_position_embeddings": orig, "beta": beta}
        raw["tied_embeddings"] = config.get("tie_word_embeddings", False)
        raw["max_position_embeddings"] = config.get("max_position_embeddings")
        keys.update(
            {
                "yarn.factor": "rope_parameters.factor",
                "yarn.original_max_position_embeddings": "rope_parameters.original_max_position_embeddings",
                "yarn.beta": "rope_parameters.beta_fast",
                "yarn.alpha": "rope_parameters.beta_slow",
                "llama_4_scaling.beta": "rope_parameters.llama_4_scaling_beta",
                "tied_embeddings": "tie_word_embeddings",
                "max_seq_len": "max_position_embeddings",
            }
        )
        return raw, keys

    # -- the name table: a tied model has no output projection --------------------------------------------------

    def fp8_kept_modules(self, params: ModelParams) -> tuple[str, ...]:
        """The list transformers' ministral3 script and the published FP8 repos write (`fp8.PUBLISHED_KEPT`)."""
        return fp8.PUBLISHED_KEPT

    def head_rows(self, params: ModelParams) -> tuple[Row, ...]:
        return (NORM,) if params.option("tied") else (NORM, OUTPUT)

    def output_row(self, params: ModelParams) -> Row:
        return EMBEDDING if params.option("tied") else OUTPUT

    def shared_rows(self, params: ModelParams) -> tuple[Row, ...]:
        return (EMBEDDING,) if params.option("tied") else ()

    # -- the reference forward: YaRN rotary, llama-4 query scaling ------------------------------------------------

    def rotary(self, positions: torch.Tensor, params: ModelParams, rope_theta: float) -> torch.Tensor:
        from hubtools.model.yarn import yarn_rotary

        return yarn_rotary(positions, params.head_dim, rope_theta, params.option("yarn"))

    def scale_queries(self, q: torch.Tensor, positions: torch.Tensor, params: ModelParams) -> torch.Tensor:
        from hubtools.model.yarn import llama4_query_scale

        beta = params.option("llama_4_scaling_beta")
        if not beta:
            return q
        scale = llama4_query_scale(positions, beta, params.option("yarn").original_max_positions)
        return q * scale[None, :, None, None].to(q.dtype)


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _yarn(yarn: Any, source: str, bad: Bad) -> Yarn:
    """params.json's `yarn` object, every field checked (absent `apply_scale` is true, as vLLM reads it)."""
    if not isinstance(yarn, dict):
        raise bad("yarn", "an object with factor, original_max_position_embeddings, beta, alpha", yarn)
    check_object_fields(yarn, YARN_FIELDS, field="yarn", source=source)
    for key in ("factor", "beta", "alpha"):
        if not _number(yarn.get(key)) or yarn[key] <= 0:
            raise bad(f"yarn.{key}", "a finite number > 0", yarn.get(key))
    if yarn["factor"] < 1:
        raise bad("yarn.factor", "a number >= 1 (the context extension)", yarn["factor"])
    original = positive_int(yarn, "original_max_position_embeddings", _nested(bad, "yarn"))
    apply_scale = yarn.get("apply_scale", True)
    if not isinstance(apply_scale, bool):
        raise bad("yarn.apply_scale", "true or false", apply_scale)
    return Yarn(yarn["factor"], original, yarn["beta"], yarn["alpha"], apply_scale)


def _llama4_beta(scaling: Any, yarn: Yarn, source: str, bad: Bad) -> float | None:
    """params.json's `llama_4_scaling` beta (None without it), its context checked against YaRN's."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise bad("llama_4_scaling", "an object with original_max_position_embeddings and beta", scaling)
    check_object_fields(scaling, LLAMA4_FIELDS, field="llama_4_scaling", source=source)
    beta = scaling.get("beta")
    if not _number(beta) or beta <= 0:
        raise bad("llama_4_scaling.beta", "a finite number > 0 (omit llama_4_scaling for none)", beta)
    original = positive_int(scaling, "original_max_position_embeddings", _nested(bad, "llama_4_scaling"))
    if original != yarn.original_max_positions:
        raise ParamsError(
            f"{source}: field 'llama_4_scaling.original_max_position_embeddings' is {original}, expected "
            f"{yarn.original_max_positions} (yarn's: transformers' Ministral3 scales queries by that one alone)"
        )
    return float(beta)


def _nested(bad: Bad, field: str) -> Bad:
    return lambda key, rule, value: bad(f"{field}.{key}", rule, value)


FAMILY = Ministral3()
