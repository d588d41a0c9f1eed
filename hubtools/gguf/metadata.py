"""Model metadata of a GGUF file: the keys and values llama.cpp's converter writes for Mistral, Mixtral and
Ministral 3 (`TextModel.set_gguf_parameters` + `LlamaModel.set_gguf_parameters`, + `Mistral3Model`'s YaRN log
multiplier and llama-4 temperature scale), and for Mistral 4 (+ `DeepseekV2Model.set_gguf_parameters`: MLA as
one key-value head of width kv_lora_rank + rope, the MoE keys), from the config.json hubtools writes (or reads),
in the converter's order, under the family's llama.cpp architecture (`llama`, `mistral3` or `mistral4`); no
sliding-window key (the converter writes none for these architectures).
"""

from __future__ import annotations

from typing import Any

import gguf

from hubtools.errors import ParamsError

MLA_ARCHITECTURE = "mistral4"  # llama.cpp's DeepseekV2-derived architecture (multi-head latent attention)
# llama-4 query scaling for `mistral4`: llama.cpp's runtime reads these two keys (its converter's native path,
# `--mistral-format`, writes them; its HF path omits them, and llama.cpp then leaves the queries unscaled past
# original_max_position_embeddings: 8192 positions for Small 4, measured in tests/test_gguf_mistral4_runtime.py)
LLAMA_4_KEYS = ("attention.temperature_scale", "attention.temperature_length")


def _get(config: dict[str, Any], *keys: str) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def add_general(writer: gguf.GGUFWriter, *, name: str, kind: str = gguf.GGUFType.MODEL) -> None:
    """general.type (`model`, or `mmproj` for a vision projector), general.name and general.size_label (from
    the tensor infos already added)."""
    writer.add_type(kind)
    writer.add_name(name)
    total, shared, expert, count = writer.get_total_parameter_count()
    if total > 0:
        writer.add_size_label(gguf.size_label(total, shared, expert, count))


def add_model_parameters(writer: gguf.GGUFWriter, config: dict[str, Any], file_type: gguf.LlamaFileType) -> None:
    """Hyper-parameters, in the converter's order, then general.file_type and the vocabulary size.

    Raises:
        ParamsError: a field the architecture needs is missing from `config`.
    """
    if writer.arch == MLA_ARCHITECTURE:
        _add_mla_parameters(writer, config, file_type)
        return
    try:
        rope = _add_text_model_keys(writer, config, config.get("num_key_value_heads") or config["num_attention_heads"])
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        if (n_experts := _get(config, "num_local_experts")) is not None:
            writer.add_expert_count(n_experts)
        if (n_used := _get(config, "num_experts_per_tok")) is not None:
            writer.add_expert_used_count(n_used)
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_file_type(file_type)
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
        if config.get("model_type") == "ministral3" and writer.arch == "mistral3":  # Mistral3Model.Ministral3Model
            writer.add_rope_scaling_yarn_log_mul(rope["mscale_all_dim"])
            writer.add_attn_temperature_scale(rope["llama_4_scaling_beta"])
    except KeyError as exc:
        raise ParamsError(f"config.json: missing field {exc.args[0]} (needed for GGUF metadata)") from None
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_mla_parameters(writer: gguf.GGUFWriter, config: dict[str, Any], file_type: gguf.LlamaFileType) -> None:
    """Mistral 4's keys, in the order of the converter's `Mistral4Model` (`TextModel`'s, then `DeepseekV2Model`'s).

    The converter sets `num_key_value_heads` to 1 (MLA read as MQA) and writes `key_length` twice (the config's
    `head_dim`, then kv_lora_rank + rope): gguf-py keeps the second value at the first one's place. One deliberate
    difference: the llama-4 scaling keys (`LLAMA_4_KEYS`), last, which the converter's HF path omits.

    Raises:
        ParamsError: a field the architecture needs is missing from `config`.
    """
    try:
        kv_lora, rope_dim = config.get("kv_lora_rank") or 512, config["qk_rope_head_dim"]
        rope = _add_text_model_keys(writer, config, 1)
        writer.add_layer_norm_rms_eps(config.get("rms_norm_eps") or 1e-6)
        if (n_experts := _get(config, "n_routed_experts")) is not None:
            writer.add_expert_count(n_experts)
        if (n_used := _get(config, "num_experts_per_tok")) is not None:
            writer.add_expert_used_count(n_used)
        if (groups := config.get("n_group")) is not None:
            writer.add_expert_group_count(groups)
        if (groups_used := config.get("topk_group")) is not None:
            writer.add_expert_group_used_count(groups_used)
        if config.get("head_dim") is not None:
            writer.add_key_length(kv_lora + rope_dim)
            writer.add_value_length(kv_lora)
        writer.add_file_type(file_type)
        dense = config.get("first_k_dense_replace")
        writer.add_leading_dense_block_count(dense if dense is not None else 0)
        writer.add_vocab_size(config["vocab_size"])
        if config.get("q_lora_rank") is not None:
            writer.add_q_lora_rank(config["q_lora_rank"])
        writer.add_kv_lora_rank(kv_lora)
        if config.get("head_dim") is None:
            writer.add_key_length(kv_lora + rope_dim)
            writer.add_value_length(kv_lora)
        writer.add_key_length_mla(config["qk_nope_head_dim"] + rope_dim)
        writer.add_value_length_mla(config["v_head_dim"])
        writer.add_expert_feed_forward_length(_get(config, "moe_intermediate_size", "intermediate_size"))
        writer.add_expert_shared_count(config.get("n_shared_experts") or 0)
        if (routed_scale := config.get("routed_scaling_factor")) is not None:
            writer.add_expert_weights_scale(routed_scale)
        if config.get("norm_topk_prob"):
            writer.add_expert_weights_norm(True)
        writer.add_rope_dimension_count(rope_dim)
        if (mscale_all := rope.get("mscale_all_dim")) is not None:
            writer.add_rope_scaling_yarn_log_mul(0.1 * mscale_all)  # the converter's legacy 0.1 factor
        if beta := rope.get("llama_4_scaling_beta"):  # not the converter's HF path: see LLAMA_4_KEYS
            writer.add_attn_temperature_scale(beta)
            writer.add_attn_temperature_length(rope["original_max_position_embeddings"])
    except KeyError as exc:
        raise ParamsError(f"config.json: missing field {exc.args[0]} (needed for GGUF metadata)") from None
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_text_model_keys(writer: gguf.GGUFWriter, config: dict[str, Any], head_count_kv: int) -> dict[str, Any]:
    """The converter's `TextModel.set_gguf_parameters` keys up to the rope base, every architecture's opening;
    returns `rope_parameters`.

    Raises:
        KeyError: a field they need is missing (the callers name it).
    """
    writer.add_block_count(config["num_hidden_layers"])
    if (n_ctx := _get(config, "max_position_embeddings")) is not None:
        writer.add_context_length(n_ctx)
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(head_count_kv)
    rope: dict[str, Any] = config.get("rope_parameters") or {}
    if rope.get("rope_type") == "yarn" and rope.get("factor") is not None:
        _add_yarn(writer, rope)
    if (theta := _get(config, "rope_theta") or rope.get("rope_theta")) is not None:
        writer.add_rope_freq_base(theta)
    return rope


def _add_yarn(writer: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
    """YaRN's keys, as the converter writes them from `rope_parameters` (no log multiplier here)."""
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(rope["factor"])
    writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if (ext_factor := rope.get("extrapolation_factor")) is not None:
        writer.add_rope_scaling_yarn_ext_factor(ext_factor)
    if (attention_factor := rope.get("attention_factor", rope.get("attn_factor"))) is not None:
        writer.add_rope_scaling_yarn_attn_factor(attention_factor)
    if (beta_fast := rope.get("beta_fast")) is not None:
        writer.add_rope_scaling_yarn_beta_fast(beta_fast)
    if (beta_slow := rope.get("beta_slow")) is not None:
        writer.add_rope_scaling_yarn_beta_slow(beta_slow)
