"""Mistral 4's own params.json fields (`moe`, the MLA ranks, `yarn`, `llama_4_scaling`) <-> config.json, pure.

Every field is mapped or refused with one line (the family is `hubtools.families.mistral4`):

| params.json | config.json (`Mistral4Config`) |
|---|---|
| q_lora_rank, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim | the same names |
| head_dim | head_dim; must be qk_nope_head_dim + qk_rope_head_dim when present |
| n_kv_heads | num_key_value_heads; must equal n_heads (MLA expands keys per head) |
| max_position_embeddings | max_position_embeddings (max_seq_len wins, as for every family) |
| moe.num_experts, num_experts_per_tok | n_routed_experts, num_experts_per_tok |
| moe.expert_hidden_dim, num_shared_experts | moe_intermediate_size, n_shared_experts (at least 1) |
| moe.routed_scale | routed_scaling_factor |
| moe.num_expert_groups, num_expert_groups_per_tok | n_group, topk_group |
| moe.first_k_dense_replace | first_k_dense_replace (those layers use hidden_dim / intermediate_size) |
| moe.route_every_n, expert_parallel, expert_model_parallel | refused unless 1 (vLLM's defaults; not written) |
| moe.renorm_strategy, use_load_balancing_bias | refused unless "WEIGHTS" / false (norm_topk_prob true, no bias) |
| yarn.factor, original_max_position_embeddings, beta, alpha | rope_parameters.factor, ..., beta_fast, beta_slow |
| yarn.apply_scale | false -> rope_parameters.attention_factor 1.0 (vLLM's rule); true or absent: nothing |
| llama_4_scaling.beta | rope_parameters.llama_4_scaling_beta (absent -> 0.0: no scaling) |
| llama_4_scaling.original_max_position_embeddings | must equal yarn's (transformers reads yarn's) |
| tied_embeddings, sliding_window | refused unless false / null |
| quantization | FP8 per-tensor (`hubtools.model.fp8`); anything else refused |
| quantization_config | FP8 blocks 128x128, compressed-tensors (`hubtools.model.fp8_block`); anything else refused |
| no yarn | refused: transformers 5.25's default rotary for Mistral4 spans the whole head, not the rope slice |

Written as transformers' script writes them: `rope_parameters.mscale` and `mscale_all_dim` 1.0,
`partial_rotary_factor` rope / (nope + rope), `rope_interleave` true, `norm_topk_prob` true, pad id 11.
Unlike transformers' script, an absent `llama_4_scaling` is no scaling (vLLM applies it only when present;
the script writes beta 0.1) and `first_k_dense_replace` layers are read (the script's renamings omit
`feed_forward.w1/w2/w3`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubtools.errors import ParamsError
from hubtools.model.family import Family, ModelParams
from hubtools.model.params import bad_value, parse_common, positive_int

if TYPE_CHECKING:
    import torch

TOP_LEVEL = frozenset({
    "dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "norm_eps", "vocab_size", "rope_theta",
    "max_seq_len", "max_position_embeddings", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim",
    "qk_nope_head_dim", "v_head_dim", "moe", "yarn", "llama_4_scaling", "tied_embeddings", "sliding_window",
    "quantization", "quantization_config",
})  # fmt: skip
RANKS = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
MOE = {  # params.json moe key -> config.json key
    "num_experts": "n_routed_experts", "num_experts_per_tok": "num_experts_per_tok",
    "expert_hidden_dim": "moe_intermediate_size", "num_shared_experts": "n_shared_experts",
    "routed_scale": "routed_scaling_factor", "num_expert_groups": "n_group",
    "num_expert_groups_per_tok": "topk_group", "first_k_dense_replace": "first_k_dense_replace",
}  # fmt: skip
MOE_FIXED = {"route_every_n": 1, "expert_parallel": 1, "expert_model_parallel": 1, "renorm_strategy": "WEIGHTS",
             "use_load_balancing_bias": False}  # fmt: skip
YARN = {"factor": "factor", "original_max_position_embeddings": "original_max_position_embeddings",
        "beta": "beta_fast", "alpha": "beta_slow"}  # fmt: skip
PAD_TOKEN_ID = 11  # transformers' script and Mistral4Config


@dataclass(frozen=True)
class Mla:
    """Mistral 4's own fields, parsed (`ModelParams.option("mla")`)."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    expert_hidden_dim: int
    num_shared_experts: int
    routed_scale: float
    num_expert_groups: int
    num_expert_groups_per_tok: int
    first_k_dense_replace: int
    yarn_factor: float
    yarn_original_max: int
    yarn_beta: float
    yarn_alpha: float
    yarn_apply_scale: bool | None = None  # None: params.json leaves it out
    llama_4_beta: float | None = None
    max_position_embeddings: int | None = None


def mla(params: ModelParams) -> Mla:
    found: Mla = params.option("mla")
    return found


def _refuse_unknown(raw: Mapping[str, Any], known: Iterable[str], where: str, source: str) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ParamsError(f"{source}: unknown field '{where}{unknown[0]}' for Mistral 4 (expected some of "
                          f"{', '.join(sorted(known))}); refusing rather than dropping it")  # fmt: skip


def _number(raw: Mapping[str, Any], key: str, bad: Any, default: float | None = None) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise bad(key, "a finite number > 0", value)
    return float(value)


def parse(raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None, family: Family) -> ModelParams:
    """A Mistral 4 params.json (or config.json translated by `config_to_params`), validated.

    Raises:
        ParamsError: an unknown or refused field, or a value of the wrong type or range, named.
    """
    bad = bad_value(source, names)
    _refuse_unknown(raw, TOP_LEVEL, "", source)
    for key, allowed in (("tied_embeddings", False), ("sliding_window", None)):
        if raw.get(key, allowed) != allowed:
            raise bad(key, f"{allowed} for Mistral 4 (not supported)", raw.get(key))
    ranks: dict[str, Any] = {key: positive_int(raw, key, bad) for key in RANKS}
    head = ranks["qk_nope_head_dim"] + ranks["qk_rope_head_dim"]
    if raw.get("head_dim") not in (None, head):
        raise bad("head_dim", f"qk_nope_head_dim + qk_rope_head_dim = {head}", raw.get("head_dim"))
    common = parse_common({**raw, "head_dim": head}, source=source, names=names)
    if common["n_kv_heads"] != common["n_heads"]:
        raise bad("n_kv_heads", f"n_heads ({common['n_heads']}) for multi-head latent attention", common["n_kv_heads"])
    if ranks["qk_rope_head_dim"] % 2:
        raise bad("qk_rope_head_dim", "even (rotary pairs)", ranks["qk_rope_head_dim"])
    moe, yarn, scaling = (raw.get(k) for k in ("moe", "yarn", "llama_4_scaling"))
    experts, top_k, moe_fields = _moe(moe, common["n_layers"], source, names)
    yarn_fields = _yarn(yarn, scaling, source, names)
    positions = raw.get("max_position_embeddings")
    if positions is not None:
        positive_int(raw, "max_position_embeddings", bad)
    found = Mla(**ranks, **moe_fields, **yarn_fields, max_position_embeddings=positions)
    return ModelParams(
        **common, num_experts=experts, num_experts_per_tok=top_k, family=family, options=(("mla", found),)
    )


def _moe(moe: Any, n_layers: int, source: str, names: Mapping[str, str] | None) -> tuple[int, int, dict[str, Any]]:
    bad = bad_value(source, {k: (names or {}).get(f"moe.{k}", f"moe.{k}") for k in (*MOE, *MOE_FIXED)})
    if not isinstance(moe, dict):
        raise bad_value(source, names)("moe", "an object", moe)
    _refuse_unknown(moe, {*MOE, *MOE_FIXED}, "moe.", source)
    for key, fixed in MOE_FIXED.items():
        if moe.get(key, fixed) != fixed or type(moe.get(key, fixed)) is not type(fixed):
            raise bad(key, f"{fixed!r} (the only value the Mistral 4 runtimes implement)", moe.get(key))
    counts = {k: positive_int(moe, k, bad) for k in ("num_experts", "num_experts_per_tok", "expert_hidden_dim")}
    counts.update({k: positive_int({k: moe.get(k, 1)}, k, bad) for k in
                   ("num_shared_experts", "num_expert_groups", "num_expert_groups_per_tok")})  # fmt: skip
    dense = moe.get("first_k_dense_replace", 0)
    if isinstance(dense, bool) or not isinstance(dense, int) or not 0 <= dense < n_layers:
        raise bad("first_k_dense_replace", f"an integer in 0..{n_layers - 1}", dense)
    experts, groups, per_token = counts["num_experts"], counts["num_expert_groups"], counts["num_expert_groups_per_tok"]
    if experts % groups or per_token > groups:
        raise bad(
            "num_expert_groups", f"a divisor of {experts} experts, >= num_expert_groups_per_tok {per_token}", groups
        )
    if counts["num_experts_per_tok"] > experts // groups * per_token:
        raise bad("num_experts_per_tok", f"at most the {experts // groups * per_token} experts the chosen groups hold",
                  counts["num_experts_per_tok"])  # fmt: skip
    fields: dict[str, Any] = {k: counts[k] for k in ("expert_hidden_dim", "num_shared_experts", "num_expert_groups",
                                     "num_expert_groups_per_tok")}  # fmt: skip
    fields.update(routed_scale=_number(moe, "routed_scale", bad, 1.0), first_k_dense_replace=dense)
    return experts, counts["num_experts_per_tok"], fields


def _yarn(yarn: Any, scaling: Any, source: str, names: Mapping[str, str] | None) -> dict[str, Any]:
    bad = bad_value(source, {k: (names or {}).get(f"yarn.{k}", f"yarn.{k}") for k in (*YARN, "apply_scale")})
    if not isinstance(yarn, dict):
        raise ParamsError(f"{source}: Mistral 4 needs 'yarn' (transformers 5.25's Mistral4 has no correct rotary "
                          f"without it: its default one spans the whole head), got {yarn!r}")  # fmt: skip
    _refuse_unknown(yarn, {*YARN, "apply_scale"}, "yarn.", source)
    apply_scale = yarn.get("apply_scale")
    if apply_scale is not None and not isinstance(apply_scale, bool):
        raise bad("apply_scale", "true or false", apply_scale)
    out = {"yarn_factor": _number(yarn, "factor", bad), "yarn_beta": _number(yarn, "beta", bad),
           "yarn_alpha": _number(yarn, "alpha", bad), "yarn_apply_scale": apply_scale,
           "yarn_original_max": positive_int(yarn, "original_max_position_embeddings", bad)}  # fmt: skip
    if scaling is None:
        return out
    if not isinstance(scaling, dict):
        raise bad_value(source, names)("llama_4_scaling", "an object", scaling)
    _refuse_unknown(scaling, {"beta", "original_max_position_embeddings"}, "llama_4_scaling.", source)
    scaled_bad = bad_value(source, {k: f"llama_4_scaling.{k}" for k in scaling})
    beta = scaling.get("beta")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise scaled_bad("beta", "a finite number >= 0", beta)
    original = scaling.get("original_max_position_embeddings", out["yarn_original_max"])
    if original != out["yarn_original_max"]:
        raise scaled_bad("original_max_position_embeddings", f"yarn's ({out['yarn_original_max']}): transformers "
                         "scales by that one", original)  # fmt: skip
    return {**out, "llama_4_beta": float(beta)}


def to_params_json(params: ModelParams) -> dict[str, Any]:
    """The params.json form: the common fields, the ranks, `moe`, `yarn` and `llama_4_scaling`."""
    m = mla(params)
    out = params.common()
    out.pop("num_experts"), out.pop("num_experts_per_tok")
    out.update({key: getattr(m, key) for key in RANKS})
    if m.max_position_embeddings is not None:
        out["max_position_embeddings"] = m.max_position_embeddings
    moe = {"num_experts": params.num_experts, "num_experts_per_tok": params.num_experts_per_tok}
    out["moe"] = {**moe, **{k: getattr(m, k) for k in MOE if k not in moe}}
    yarn = {"factor": m.yarn_factor, "original_max_position_embeddings": m.yarn_original_max,
            "beta": m.yarn_beta, "alpha": m.yarn_alpha}  # fmt: skip
    out["yarn"] = yarn if m.yarn_apply_scale is None else {**yarn, "apply_scale": m.yarn_apply_scale}
    if m.llama_4_beta is not None:
        out["llama_4_scaling"] = {"beta": m.llama_4_beta, "original_max_position_embeddings": m.yarn_original_max}
    return out


def rope_parameters(params: ModelParams, rope_theta: float) -> dict[str, Any]:
    """config.json's `rope_parameters`, as transformers' script writes them (and `attention_factor` for
    `apply_scale: false`)."""
    m = mla(params)
    rope = {
        "rope_type": "yarn", "rope_theta": rope_theta, "factor": m.yarn_factor,
        "original_max_position_embeddings": m.yarn_original_max, "beta_fast": m.yarn_beta,
        "beta_slow": m.yarn_alpha, "mscale": 1.0, "mscale_all_dim": 1.0,
        "llama_4_scaling_beta": m.llama_4_beta or 0.0,
        "partial_rotary_factor": m.qk_rope_head_dim / (m.qk_rope_head_dim + m.qk_nope_head_dim),
    }  # fmt: skip
    return rope if m.yarn_apply_scale is not False else {**rope, "attention_factor": 1.0}


def config_fields(params: ModelParams) -> dict[str, Any]:
    """config.json's Mistral 4 keys."""
    from hubtools.model.params import default_rope_theta

    m = mla(params)
    out: dict[str, Any] = {key: getattr(m, key) for key in RANKS}
    out.update({hf: getattr(m, native) for native, hf in MOE.items() if hasattr(m, native)})
    out.update(n_routed_experts=params.num_experts, num_experts_per_tok=params.num_experts_per_tok)
    out.update(norm_topk_prob=True, rope_interleave=True, attention_bias=False, pad_token_id=PAD_TOKEN_ID)
    out.update(qk_head_dim=m.qk_nope_head_dim + m.qk_rope_head_dim, pretraining_tp=1)  # as transformers saves them
    out["rope_parameters"] = rope_parameters(params, default_rope_theta(params))
    if m.max_position_embeddings is not None and params.max_seq_len is None:
        out["max_position_embeddings"] = m.max_position_embeddings
    return out


def config_to_params(
    config: dict[str, Any], raw: dict[str, Any], keys: dict[str, str], *, source: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """config.json's Mistral 4 keys into the params.json-shaped `raw` (the common ones already there).

    Raises:
        ParamsError: a rope_parameters or routing value that params.json cannot express, named.
    """
    found_rope = config.get("rope_parameters")
    rope: dict[str, Any] = found_rope if isinstance(found_rope, dict) else {}
    fixed = {"rope_type": "yarn", "mscale": 1.0, "mscale_all_dim": 1.0, "norm_topk_prob": True, "rope_interleave": True}
    for key, want in fixed.items():
        found = rope.get(key) if key in ("rope_type", "mscale", "mscale_all_dim") else config.get(key, want)
        if found != want:
            raise ParamsError(f"{source}: field '{key}' must be {want!r} for Mistral 4, got {found!r}")
    raw.update({key: config.get(key) for key in RANKS})
    raw["moe"] = {native: config.get(hf) for native, hf in MOE.items()}
    raw["yarn"] = {native: rope.get(hf) for native, hf in YARN.items()}
    if rope.get("attention_factor") is not None:
        if rope["attention_factor"] != 1.0:
            raise ParamsError(
                f"{source}: rope_parameters.attention_factor must be 1.0, got {rope['attention_factor']!r}"
            )
        raw["yarn"]["apply_scale"] = False
    if rope.get("llama_4_scaling_beta"):
        raw["llama_4_scaling"] = {"beta": rope["llama_4_scaling_beta"]}
    raw["max_position_embeddings"] = config.get("max_position_embeddings")
    raw["rope_theta"] = rope.get("rope_theta", raw.get("rope_theta"))
    keys.update({key: key for key in RANKS})
    keys.update({f"moe.{native}": hf for native, hf in MOE.items()})
    keys.update({f"yarn.{native}": f"rope_parameters.{hf}" for native, hf in YARN.items()})
    return {k: v for k, v in raw.items() if v is not None or k in ("moe", "yarn")}, keys


def check_dense_layers(params: ModelParams, expert_layers: set[int], *, source: str) -> None:
    """The layers holding experts must be exactly those after `first_k_dense_replace`.

    Raises:
        ParamsError: naming the first layer that disagrees.
    """
    dense = mla(params).first_k_dense_replace
    wrong = sorted(expert_layers.symmetric_difference(range(dense, params.n_layers)))
    if wrong:
        kind = "holds experts" if wrong[0] in expert_layers else "holds no experts"
        raise ParamsError(f"{source}: layer {wrong[0]} {kind}, but first_k_dense_replace is {dense}")


def inverse_frequencies(params: ModelParams, rope_theta: float) -> torch.Tensor:
    """The rope slice's YaRN inverse frequencies."""
    from hubtools.model.mla import yarn_inverse_frequencies

    m = mla(params)
    return yarn_inverse_frequencies(
        m.qk_rope_head_dim, rope_theta, m.yarn_factor, m.yarn_original_max, m.yarn_beta, m.yarn_alpha
    )


def softmax_scale(params: ModelParams) -> float:
    """`qk_head_dim^-0.5 * mscale^2` (`mscale_all_dim` 1)."""
    from hubtools.model.mla import yarn_mscale

    m = mla(params)
    return float((m.qk_nope_head_dim + m.qk_rope_head_dim) ** -0.5 * yarn_mscale(m.yarn_factor) ** 2)


def query_scale(params: ModelParams, positions: torch.Tensor) -> torch.Tensor:
    """The llama-4 query scale per position (ones without `llama_4_scaling`)."""
    import torch

    from hubtools.model.mla import llama_4_query_scale

    m = mla(params)
    if not m.llama_4_beta:
        return torch.ones(positions.shape, dtype=torch.float32)
    return llama_4_query_scale(positions, m.llama_4_beta, m.yarn_original_max)
