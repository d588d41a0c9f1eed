"""params.json parsed and checked: defaults, MoE, the rope_theta rule, each invalid field named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from hubtools.errors import ParamsError
from hubtools.families import load_params, parse_params
from hubtools.model.family import ModelParams
from hubtools.model.params import default_rope_theta

MIXTRAL_8X7B = {  # params.json of the Mixtral 8x7B torrent
    "dim": 4096,
    "n_layers": 32,
    "head_dim": 128,
    "hidden_dim": 14336,
    "n_heads": 32,
    "n_kv_heads": 8,
    "norm_eps": 1e-05,
    "vocab_size": 32000,
    "moe": {"num_experts_per_tok": 2, "num_experts": 8},
}
MISTRAL_7B_V01 = {  # params.json of Mistral 7B v0.1: no head_dim, no rope_theta, a sliding window
    "dim": 4096,
    "n_layers": 32,
    "hidden_dim": 14336,
    "n_heads": 32,
    "n_kv_heads": 8,
    "norm_eps": 1e-05,
    "sliding_window": 4096,
    "vocab_size": 32000,
}


def test_mixtral_params_parse_as_a_moe_model() -> None:
    p = parse_params(MIXTRAL_8X7B)
    assert (p.num_experts, p.num_experts_per_tok, p.is_moe, p.architecture) == (8, 2, True, "MixtralForCausalLM")
    assert (p.head_dim, p.rope_theta, p.sliding_window, p.max_seq_len) == (128, None, None, None)


def test_absent_fields_take_their_defaults() -> None:
    p = parse_params(MISTRAL_7B_V01)
    assert p.head_dim == 4096 // 32 and p.n_kv_heads == 8 and not p.is_moe
    assert p.architecture == "MistralForCausalLM" and p.num_experts == p.num_experts_per_tok == 0
    no_kv = parse_params({k: v for k, v in MISTRAL_7B_V01.items() if k != "n_kv_heads"})
    assert no_kv.n_kv_heads == no_kv.n_heads == 32  # multi-head attention


def test_the_rope_theta_rule_follows_the_sliding_window_and_an_explicit_value_wins() -> None:
    assert default_rope_theta(parse_params(MISTRAL_7B_V01)) == 1e4
    assert default_rope_theta(parse_params(MIXTRAL_8X7B)) == 1e6
    assert default_rope_theta(parse_params({**MISTRAL_7B_V01, "rope_theta": 1e6})) == 1e6
    assert parse_params({**MIXTRAL_8X7B, "rope_theta": 1000000}).rope_theta == 1e6


@pytest.mark.parametrize("raw", [MIXTRAL_8X7B, MISTRAL_7B_V01, {**MISTRAL_7B_V01, "rope_theta": 1e4, "max_seq_len": 8}])
def test_to_dict_round_trips_through_parse(raw: dict[str, Any]) -> None:
    p = parse_params(raw)
    assert parse_params(p.to_dict()) == p
    assert ("moe" in p.to_dict()) == p.is_moe and None not in p.to_dict().values()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"dim": None}, "missing required field(s) dim"),
        ({"dim": None, "vocab_size": None}, "missing required field(s) dim, vocab_size"),
        ({"hidden_dim": None}, "missing required field hidden_dim"),
        ({"n_layers": "32"}, "field 'n_layers' must be a positive integer, got '32'"),
        ({"n_heads": 0}, "field 'n_heads' must be a positive integer, got 0"),
        ({"vocab_size": True}, "field 'vocab_size' must be a positive integer, got True"),
        ({"n_kv_heads": 5}, "n_heads 32 is not a multiple of n_kv_heads 5"),
        ({"moe": {"num_experts": 8}}, "'moe' needs num_experts and num_experts_per_tok, got ['num_experts']"),
        (
            {"moe": {"num_experts": 8, "num_experts_per_tok": 9}},
            "moe.num_experts_per_tok 9 must be in 1..num_experts (8)",
        ),
        ({"sliding_window": 0}, "sliding_window must be a positive integer or absent, got 0"),
    ],
)
def test_each_invalid_field_is_named(edit: dict[str, Any], message: str) -> None:
    raw = {k: v for k, v in {**MIXTRAL_8X7B, **edit}.items() if v is not None}
    with pytest.raises(ParamsError) as info:
        parse_params(raw, source="x/params.json")
    assert str(info.value) == f"x/params.json: {message}"


def test_a_non_object_is_refused() -> None:
    with pytest.raises(ParamsError, match=r"^params.json: expected a JSON object, got list$"):
        parse_params([1, 2])


def test_load_params_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    with pytest.raises(ParamsError, match=rf"^{path}: not found \(a native checkpoint needs params.json"):
        load_params(path)
    path.write_text("{not json")
    with pytest.raises(ParamsError, match=rf"^{path}: not valid JSON"):
        load_params(path)
    path.write_text(json.dumps({**MIXTRAL_8X7B, "n_layers": -1}))
    with pytest.raises(ParamsError, match=rf"^{path}: field 'n_layers' must be a positive integer, got -1$"):
        load_params(path)
    path.write_text(json.dumps(MIXTRAL_8X7B))
    assert load_params(path) == parse_params(MIXTRAL_8X7B)


def test_model_params_are_frozen() -> None:
    p = parse_params(MIXTRAL_8X7B)
    with pytest.raises(dataclasses.FrozenInstanceError, match="^cannot assign to field 'dim'$"):
        p.dim = 1  # type: ignore[misc]
    assert isinstance(p, ModelParams)
