"""Field accounting: every params.json / config.json field is mapped or refused naming it, never dropped; published
configs and configs transformers saves still convert; keys with no effect on the model are accepted whatever
their value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hubtools.errors import ParamsError
from hubtools.families import from_hf_config, parse_params
from hubtools.model.accounting import NEUTRAL_CONFIG_KEYS
from hubtools.model.family import ModelParams
from hubtools.model.hf_config import to_hf_config, to_native_params
from hubtools.testing import tiny_ministral3_params, tiny_ministral_params, tiny_params, write_native_checkpoint
from tests.helpers import RunCli, assert_one_line_error, edit_json

COMMON = {
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True,
}  # fmt: skip
PUBLISHED = {  # config.json of the Hub repos as published (mistralai/...)
    "Mistral-7B-v0.1": {
        **COMMON, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "rope_theta": 10000.0,
        "sliding_window": 4096, "transformers_version": "4.34.0.dev0", "vocab_size": 32000,
    },
    "Mistral-7B-Instruct-v0.3": {
        **COMMON, "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "model_type": "mistral",
        "rope_theta": 1000000.0, "sliding_window": None, "transformers_version": "4.42.0.dev0", "vocab_size": 32768,
    },
    "Mixtral-8x7B-v0.1": {
        **COMMON, "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "model_type": "mixtral",
        "num_experts_per_tok": 2, "num_local_experts": 8, "output_router_logits": False, "rope_theta": 1e6,
        "router_aux_loss_coef": 0.02, "sliding_window": None, "transformers_version": "4.36.0.dev0",
        "vocab_size": 32000,
    },
}  # fmt: skip
KINDS: dict[str, ModelParams] = {
    "mistral": tiny_params(moe=False, sliding_window=4096, rope_theta=1e4),
    "mixtral": tiny_params(rope_theta=1e6),
    "ministral": tiny_ministral_params(),
    "ministral3": tiny_ministral3_params(tied=True),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_still_convert(name: str) -> None:
    params = from_hf_config(PUBLISHED[name])
    assert (params.dim, params.n_layers, params.architecture) == (4096, 32, PUBLISHED[name]["architectures"][0])


@pytest.mark.parametrize("kind", KINDS)
def test_a_config_transformers_saved_is_accepted_and_reads_back_the_same(kind: str, tmp_path: Path) -> None:
    from transformers import AutoConfig

    params = KINDS[kind]
    config = to_hf_config(params, dtype="bfloat16").config
    AutoConfig.for_model(**config).save_pretrained(tmp_path)  # transformers 5's own spelling of every key
    import json

    saved = json.loads((tmp_path / "config.json").read_text())
    assert from_hf_config(saved) == from_hf_config(config) == params


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"foo": 1}, "config.json: unknown field 'foo' for a {arch} (hubtools maps or refuses every field"),
        ({"hidden_act": "gelu"}, 'config.json: field \'hidden_act\' is "gelu", expected "silu" for a {arch}'),
        ({"eos_token_id": 32000}, "config.json: field 'eos_token_id' is 32000, expected 2 for a {arch}"),
        ({"attention_bias": True}, "config.json: unknown field 'attention_bias'"),
    ],
)
def test_a_config_key_that_would_be_dropped_or_changed_is_refused_naming_it(
    kind: str, change: dict[str, Any], message: str
) -> None:
    params = KINDS[kind]
    config = {**to_hf_config(params, dtype="bfloat16").config, **change}
    with pytest.raises(ParamsError) as info:
        from_hf_config(config)
    assert str(info.value).startswith(message.format(arch=params.architecture))


def test_keys_that_change_neither_weights_nor_forward_are_accepted_with_any_value() -> None:
    config = to_hf_config(KINDS["mixtral"], dtype="bfloat16").config
    neutral = {"initializer_range": 0.5, "attention_dropout": 0.1, "pad_token_id": 0, "router_aux_loss_coef": 0.001}
    assert set(neutral) <= NEUTRAL_CONFIG_KEYS
    assert from_hf_config({**config, **neutral, "_name_or_path": "x"}) == from_hf_config(config)


@pytest.mark.parametrize(
    ("config_change", "message"),
    [
        (lambda c: c.update(tie_word_embeddings=True), "field 'tie_word_embeddings' is true, expected false"),
        (lambda c: c.update(rope_scaling={"type": "yarn", "factor": 4.0}), "unknown field 'rope_scaling'"),
        (lambda c: c.update(layer_types=["full_attention"] * 2), "unknown field 'layer_types'"),
    ],
)
def test_a_mistral_config_with_another_model_s_fields_is_refused(config_change: Any, message: str) -> None:
    config = to_hf_config(tiny_params(moe=False), dtype="bfloat16").config
    config_change(config)
    with pytest.raises(ParamsError, match=f"^config.json: {message}"):
        from_hf_config(config)


def test_unknown_rope_parameters_of_a_ministral3_are_refused_naming_them() -> None:
    config = to_hf_config(KINDS["ministral3"], dtype="bfloat16").config
    config["rope_parameters"]["attention_factor"] = 1.0
    with pytest.raises(ParamsError, match=r"^config.json: unknown field 'rope_parameters.attention_factor'"):
        from_hf_config(config)
    config["rope_parameters"].pop("attention_factor")
    config["rope_parameters"]["mscale"] = 0.5  # not representable by yarn.apply_scale
    with pytest.raises(ParamsError, match=r"^config.json: field 'rope_parameters.mscale' is 0.5, expected 1.0$"):
        from_hf_config(config)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("change", "field"),
    [({"foo": 1}, "foo"), ({"audio_encoder": {"dim": 8}}, "audio_encoder"), ({"lora": {"rank": 8}}, "lora")],
)
def test_an_unknown_params_field_is_refused_naming_it(kind: str, change: dict[str, Any], field: str) -> None:
    raw = {**to_native_params(KINDS[kind]), **change}
    with pytest.raises(ParamsError, match=rf"^params.json: unknown field '{field}' for a {KINDS[kind].architecture}"):
        parse_params(raw, source="params.json")


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("mixtral", lambda r: r["moe"].update(route_every_n=1), "unknown field 'moe.route_every_n'"),
        ("ministral3", lambda r: r["yarn"].update(temperature=1), "unknown field 'yarn.temperature'"),
        ("ministral3", lambda r: r["llama_4_scaling"].update(x=1), "unknown field 'llama_4_scaling.x'"),
        ("ministral3", lambda r: r["yarn"].update(factor=0.5), "field 'yarn.factor' must be a number >= 1"),
        ("ministral3", lambda r: r["yarn"].update(apply_scale="yes"), "field 'yarn.apply_scale' must be true or false"),
        (
            "ministral3",
            lambda r: r["llama_4_scaling"].update(original_max_position_embeddings=16),
            "field 'llama_4_scaling.original_max_position_embeddings' is 16, expected 8 (yarn's",
        ),
        ("mistral", lambda r: r.update(tied_embeddings=True), "field 'tied_embeddings' must be false for a Mistral"),
    ],
)
def test_a_nested_or_unrepresentable_params_field_is_refused_naming_it(kind: str, edit: Any, message: str) -> None:
    raw = to_native_params(KINDS[kind])
    edit(raw)
    with pytest.raises(ParamsError, match=f"^params.json: {message}".replace("(", r"\(").replace(")", r"\)")):
        parse_params(raw, source="params.json")


def test_fields_a_family_maps_as_absent_are_accepted_with_that_value() -> None:
    raw = to_native_params(tiny_params(moe=False))
    assert parse_params({**raw, "tied_embeddings": False, "moe": None}) == parse_params(raw)
    ministral3 = to_native_params(KINDS["ministral3"])
    assert parse_params({**ministral3, "q_lora_rank": None, "kv_lora_rank": None}) == KINDS["ministral3"]


def test_convert_refuses_a_params_json_with_an_unknown_field_in_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_params(moe=False), dtype=torch.float32, tokenizer=None)
    edit_json(native / "params.json", lambda p: p.update(rope_scaling={"factor": 4}))
    result = run_cli("convert", native, tmp_path / "hf")
    assert_one_line_error(result, "params.json: unknown field 'rope_scaling' for a MistralForCausalLM")
    assert not (tmp_path / "hf").exists()
