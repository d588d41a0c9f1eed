"""params.json <-> config.json: round trips, transformers reads what we write, every default rule reported."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from transformers import MistralConfig, MixtralConfig

from hubtools.errors import ParamsError
from hubtools.families import from_hf_config, parse_params
from hubtools.model.hf_config import ConfigOverrides, to_hf_config, to_native_params
from hubtools.testing import tiny_params
from tests.helpers import MakeNative, RunCli

PARAMS = {
    "mixtral": tiny_params(),
    "mistral-window": tiny_params(moe=False, sliding_window=4096),
    "mixtral-theta-head-dim": tiny_params(rope_theta=1e4, head_dim=32),
}


@pytest.mark.parametrize("name", PARAMS)
def test_from_hf_config_inverts_to_hf_config_with_rope_theta_made_explicit(name: str) -> None:
    params = PARAMS[name]
    back = from_hf_config(to_hf_config(params, dtype="bfloat16").config)
    assert back == replace(params, rope_theta=back.rope_theta)
    assert back.rope_theta == (params.rope_theta or (1e4 if params.sliding_window else 1e6))


@pytest.mark.parametrize("name", PARAMS)
def test_transformers_reads_the_config_we_write(name: str) -> None:
    params = PARAMS[name]
    config = to_hf_config(params, dtype="bfloat16").config
    hf = (MixtralConfig if params.is_moe else MistralConfig)(**config)
    assert (hf.hidden_size, hf.num_hidden_layers, hf.head_dim) == (params.dim, params.n_layers, params.head_dim)
    assert (hf.num_attention_heads, hf.num_key_value_heads) == (params.n_heads, params.n_kv_heads)
    assert (hf.intermediate_size, hf.vocab_size, hf.rms_norm_eps) == (params.hidden_dim, params.vocab_size, 1e-5)
    assert hf.sliding_window == params.sliding_window and config["architectures"] == [params.architecture]
    if params.is_moe:
        assert (hf.num_local_experts, hf.num_experts_per_tok) == (params.num_experts, params.num_experts_per_tok)


@pytest.mark.parametrize("name", PARAMS)
def test_a_config_saved_by_transformers_reads_back_as_the_same_params(name: str) -> None:
    params = PARAMS[name]
    config = to_hf_config(params, dtype="bfloat16").config
    saved = (MixtralConfig if params.is_moe else MistralConfig)(**config).to_dict()  # transformers 5 keys
    assert from_hf_config(saved) == from_hf_config(config)


def test_every_default_is_a_rule_and_overrides_win() -> None:
    params = tiny_params(moe=False)
    default = to_hf_config(params, dtype="float16")
    assert default.rules == (
        "rope_theta=1e+06 (default rule: no sliding window)",
        "max_position_embeddings=32768 (default rule)",
    )
    version = default.config["transformers_version"]
    assert default.config["torch_dtype"] == "float16" and version.count(".") >= 1
    assert default.generation == {"bos_token_id": 1, "eos_token_id": 2, "transformers_version": version}
    window = to_hf_config(tiny_params(sliding_window=4096), dtype="bfloat16")
    assert window.rules[0] == "rope_theta=10000 (default rule: sliding window)"
    explicit = to_hf_config(replace(tiny_params(rope_theta=1e6), max_seq_len=8192), dtype="bfloat16")
    assert explicit.rules == (
        "rope_theta=1e+06 (params.json)",
        "max_position_embeddings=8192 (params.json max_seq_len)",
    )
    overridden = to_hf_config(
        params, dtype="bfloat16", overrides=ConfigOverrides(rope_theta=1e4, max_position_embeddings=65536)
    )
    assert overridden.rules == ("rope_theta=10000 (override)", "max_position_embeddings=65536 (override)")
    assert (overridden.config["rope_theta"], overridden.config["max_position_embeddings"]) == (1e4, 65536)


def test_the_convert_command_prints_the_rules_it_applied(
    make_native: MakeNative, run_cli: RunCli, tmp_path: Path
) -> None:
    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    result = run_cli("convert", src, tmp_path / "hf", "--max-position-embeddings", "4096")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "  rope_theta=1e+06 (default rule: no sliding window)" in lines
    assert "  max_position_embeddings=4096 (override)" in lines


def test_native_params_always_carry_rope_theta_and_never_max_seq_len() -> None:
    params = parse_params({**to_native_params(tiny_params()), "rope_theta": 1e6, "max_seq_len": 4096})
    out = to_native_params(params)
    assert out["rope_theta"] == 1e6 and "max_seq_len" not in out and out["moe"]["num_experts"] == 4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "config.json: expected a JSON object"),
        (
            {"model_type": "llama"},
            "config.json: model_type 'llama' is not supported "
            "(expected 'ministral' or 'ministral3' or 'mistral' or 'mistral3' or 'mistral4' or 'mixtral' or 'llava')",
        ),
        ({"model_type": "mistral", "hidden_size": 8}, "config.json: missing field num_hidden_layers"),
    ],
)
def test_configs_that_are_not_mistral_or_mixtral_are_refused(config: Any, message: str) -> None:
    with pytest.raises(ParamsError) as info:
        from_hf_config(config)
    assert str(info.value) == message
