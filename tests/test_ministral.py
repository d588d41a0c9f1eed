"""Ministral 8B 2410: a `sliding_window` list (null = full attention) becomes `layer_types` + one window in a
`MinistralForCausalLM`, whose per-layer windows transformers applies (its `MistralForCausalLM` does not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hubtools.converter import convert
from hubtools.errors import ParamsError
from hubtools.families import from_hf_config, parse_params
from hubtools.model.hf_config import to_hf_config, to_native_params
from hubtools.testing import synthetic_tensors, tiny_ministral_params, write_native_checkpoint
from hubtools.verification.reference import forward
from hubtools.verification.run import verify
from tests.helpers import edit_json, tensors_of

TOKENS = (torch.arange(1, 21)[None] * 37) % 1000  # 20 positions: well past the window of 4


def test_the_window_list_becomes_layer_types_and_one_window_and_comes_back() -> None:
    params = tiny_ministral_params(pattern=(None, 4, 4), n_layers=6)
    config = to_hf_config(params, dtype="bfloat16").config
    assert (config["architectures"], config["model_type"], config["sliding_window"]) == (
        ["MinistralForCausalLM"],
        "ministral",
        4,
    )
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"] * 2
    assert from_hf_config(config) == params
    assert to_native_params(from_hf_config(config))["sliding_window"] == [None, 4, 4]


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ([None, 4, 8], "holds several window sizes [None, 4, 8] (config.json holds one window)"),
        ([None, 4], "has 2 entries, which do not repeat evenly over n_layers 3"),
        ([], "must list positive integers or null, got []"),
        ([None, 0, 4], "must list positive integers or null, got [None, 0, 4]"),
    ],
)
def test_window_lists_config_json_cannot_hold_are_refused(window: list[int | None], message: str) -> None:
    raw = {**to_native_params(tiny_ministral_params()), "sliding_window": window}
    with pytest.raises(ParamsError) as info:
        parse_params(raw, source="params.json")
    assert str(info.value) == f"params.json: field 'sliding_window' {message}"


def test_it_round_trips_loads_as_ministral_and_matches_the_per_layer_reference(tmp_path: Path) -> None:
    params = tiny_ministral_params()
    native = write_native_checkpoint(tmp_path / "native", params, dtype=torch.float32, tokenizer=None)
    assert convert(native, tmp_path / "hf").architecture == "MinistralForCausalLM"
    convert(tmp_path / "hf", tmp_path / "back", to="native")
    original, back = tensors_of(native), tensors_of(tmp_path / "back")
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    assert json.loads((tmp_path / "back" / "params.json").read_text()) == json.loads(
        (native / "params.json").read_text()
    )

    weights = dict(synthetic_tensors(params, dtype=torch.float32))
    reference = forward(TOKENS, weights.__getitem__, params, rope_theta=1e8)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager")
    assert type(model).__name__ == "MinistralForCausalLM"
    state, hf = model.state_dict(), tensors_of(tmp_path / "hf")
    assert all(torch.equal(state[name], tensor) for name, tensor in hf.items())  # every parameter, as loaded
    assert (model(input_ids=TOKENS).logits - reference).abs().max() <= 1e-4
    report = verify(native, tmp_path / "hf")
    assert report.passed and report.logits is not None and report.logits.max_abs_dlogit <= 1e-4

    # transformers' MistralForCausalLM class with the same config slides every layer: another model (AutoConfig
    # of transformers 5.x reads a "mistral" config with layer_types as "ministral"; hubtools writes that directly)
    from transformers import MistralForCausalLM

    mistral = MistralForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager")
    assert (mistral(input_ids=TOKENS).logits - reference).abs().max() > 1e-3


def test_a_wrong_layer_type_fails_verify_named(tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_ministral_params(), dtype=torch.float32, tokenizer=None)
    convert(native, tmp_path / "hf")
    edit_json(tmp_path / "hf" / "config.json", lambda c: c["layer_types"].__setitem__(0, "sliding_attention"))
    report = verify(native, tmp_path / "hf")
    problems = report.to_dict()["checks"]["structure"]["problems"]
    assert not report.passed and any(p.startswith("config.json layer_types: expected") for p in problems)
    assert report.logits is not None and not report.logits.passed
