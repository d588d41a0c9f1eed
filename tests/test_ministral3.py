"""Ministral 3 / Devstral 2 (`Ministral3ForCausalLM`): YaRN with and without mscale, llama-4 query scaling, tied
embeddings. Each kind converts both ways bit-exactly, loads in transformers with every parameter equal, gives the
clean-room reference's logits within 1e-4 in float32, and verifies; a wrong YaRN or llama-4 field fails, named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hubtools.converter import convert
from hubtools.families import from_hf_config, parse_params
from hubtools.model.hf_config import to_hf_config, to_native_params
from hubtools.model.yarn import Yarn, llama4_query_scale, yarn_frequencies
from hubtools.testing import synthetic_tensors, tiny_ministral3_params, write_native_checkpoint
from hubtools.verification.hf_forward import whole_model_logits
from hubtools.verification.reference import forward
from hubtools.verification.run import verify
from tests.helpers import edit_json, tensors_of

KINDS = {  # the releases' shapes, scaled down
    "ministral3-untied": {"tied": False, "llama4": True, "apply_scale": False},  # Ministral 3 8B/14B
    "ministral3-tied": {"tied": True, "llama4": True, "apply_scale": False},  # Ministral 3 3B
    "devstral2": {"tied": False, "llama4": False, "apply_scale": True},  # Devstral 2 123B: text only
    "tied-scaled": {"tied": True, "llama4": False, "apply_scale": True},
}
TOKENS = (torch.arange(1, 31)[None] * 31) % 1000  # 30 positions: past the YaRN original context (8), 3 blocks of it


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_round_trips_loads_in_transformers_and_matches_the_reference(kind: str, tmp_path: Path) -> None:
    params = tiny_ministral3_params(**KINDS[kind])  # type: ignore[arg-type]
    native = write_native_checkpoint(tmp_path / "native", params, dtype=torch.float32, tokenizer=None)
    result = convert(native, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (result.architecture, config["model_type"]) == ("Ministral3ForCausalLM", "ministral3")
    assert config["tie_word_embeddings"] is KINDS[kind]["tied"]
    hf = tensors_of(tmp_path / "hf")
    assert ("lm_head.weight" in hf) is not KINDS[kind]["tied"]

    convert(tmp_path / "hf", tmp_path / "back", to="native")
    original, back = tensors_of(native), tensors_of(tmp_path / "back")
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    assert json.loads((tmp_path / "back" / "params.json").read_text()) == to_native_params(params)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager")
    assert type(model).__name__ == "Ministral3ForCausalLM"
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in hf.items())  # every parameter, as loaded
    assert torch.equal(state["lm_head.weight"], hf["lm_head.weight" if "lm_head.weight" in hf else EMBED])
    weights = dict(synthetic_tensors(params, dtype=torch.float32))
    reference = forward(TOKENS, weights.__getitem__, params, rope_theta=1e6)
    assert (model(input_ids=TOKENS).logits - reference).abs().max() <= 1e-4

    report = verify(native, tmp_path / "hf")
    assert report.passed, report.to_dict()["checks"]["structure"]
    assert report.logits is not None and report.logits.max_abs_dlogit <= 1e-4


EMBED = "model.embed_tokens.weight"


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("factor", 8.0, "rope_parameters.factor: expected 4, found 8"),
        ("beta_fast", 16.0, "rope_parameters.beta_fast: expected 32, found 16"),
        ("llama_4_scaling_beta", 0.2, "rope_parameters.llama_4_scaling_beta: expected 0.1, found 0.2"),
        ("mscale_all_dim", 0.0, "rope_parameters.mscale_all_dim: expected 1, found 0"),
    ],
)
def test_a_wrong_yarn_or_llama4_field_in_config_json_fails_verify_named(
    field: str, value: float, named: str, tmp_path: Path
) -> None:
    # YaRN's ramp moves with beta only where the original context spans some rotations: 4096 here, 8 for the
    # llama-4 case (the prompt must pass it for the query scaling to act)
    original = 8 if field == "llama_4_scaling_beta" else 4096
    params = tiny_ministral3_params(n_layers=1, original_max_positions=original)
    native = write_native_checkpoint(tmp_path / "native", params, dtype=torch.float32, tokenizer=None)
    convert(native, tmp_path / "hf")
    edit_json(tmp_path / "hf" / "config.json", lambda c: c["rope_parameters"].update({field: value}))
    report = verify(native, tmp_path / "hf")
    assert not report.passed
    problems = report.to_dict()["checks"]["structure"]["problems"]
    assert f"config.json {named}" in problems
    assert report.logits is not None and not report.logits.passed  # transformers ran the planted value


def test_yarn_frequencies_and_mscale_are_transformers_computation_of_the_same_fields() -> None:
    """The clean-room YaRN (the paper's formulas) against transformers' `_compute_yarn_parameters`."""
    from transformers import Ministral3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for apply_scale in (False, True):
        params = tiny_ministral3_params(apply_scale=apply_scale, factor=16.0, original_max_positions=64, head_dim=32)
        config = Ministral3Config(**to_hf_config(params, dtype="float32").config)
        freqs, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
        yarn: Yarn = params.option("yarn")
        assert torch.allclose(yarn_frequencies(32, 1e6, yarn), freqs, rtol=1e-6, atol=0)
        assert math.isclose(yarn.mscale, attention_factor, rel_tol=1e-12)
    assert yarn.mscale == pytest.approx(0.1 * math.log(16) + 1)


def test_llama4_scaling_is_one_inside_the_original_context_and_grows_by_blocks() -> None:
    scale = llama4_query_scale(torch.tensor([0, 7, 8, 15, 16, 24]), 0.1, 8)
    assert scale.tolist() == pytest.approx([1, 1, 1 + 0.1 * math.log(2), 1 + 0.1 * math.log(2), 1.1098612, 1.1386294])


SCRIPT_RULE = {  # transformers' convert_ministral3_weights_to_hf.py, convert_config: how it fills rope_parameters
    "mscale": 1.0,
    "mscale_all_dim": lambda is_vision: 1.0 if is_vision else 0.0,  # `yarn.apply_scale` is never read
}


def test_transformers_script_derives_mscale_from_the_vision_tower_not_apply_scale_which_the_reference_reads(
    tmp_path: Path,
) -> None:
    """A text-only checkpoint with `yarn.apply_scale: false`: vLLM (`attention_factor: 1.0`) and llama.cpp's
    native path (`yarn_log_mul 1.0`) apply no scale; the script writes `mscale_all_dim: 0.0` because there is no
    vision encoder, and transformers then scales q and k by 0.1 ln(factor) + 1. hubtools follows the field."""
    params = tiny_ministral3_params(apply_scale=False, llama4=False, n_layers=1)
    native = write_native_checkpoint(tmp_path / "native", params, dtype=torch.float32, tokenizer=None)
    convert(native, tmp_path / "hf")
    weights = dict(synthetic_tensors(params, dtype=torch.float32))
    reference = forward(TOKENS, weights.__getitem__, params, rope_theta=1e6)
    ours = whole_model_logits(tmp_path / "hf", TOKENS, torch.float32)
    assert (ours - reference).abs().max() <= 1e-4

    script = {**SCRIPT_RULE, "mscale_all_dim": SCRIPT_RULE["mscale_all_dim"](False)}  # type: ignore[operator]
    edit_json(tmp_path / "hf" / "config.json", lambda c: c["rope_parameters"].update(script))
    theirs = whole_model_logits(tmp_path / "hf", TOKENS, torch.float32)
    assert (theirs - reference).abs().max() > 1e-2  # a different model: attention sharpened by 1.139^2


def test_a_devstral2_params_json_converts_as_ministral3_not_as_a_default_rope_mistral() -> None:
    raw = to_native_params(tiny_ministral3_params(llama4=False, apply_scale=True))
    params = parse_params(raw)
    assert params.architecture == "Ministral3ForCausalLM"
    config = to_hf_config(params, dtype="bfloat16").config
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["rope_parameters"]["mscale_all_dim"] == 0.0
    assert config["rope_parameters"]["llama_4_scaling_beta"] == 0.0 and "rope_theta" not in config
    assert from_hf_config(config) == params


def test_a_recipe_names_ministral3_expects_its_yarn_and_supplies_the_context(tmp_path: Path) -> None:
    """What a release recipe needs: the architecture, expected nested fields, and overrides for what params.json
    omits (here max_position_embeddings and rope_theta)."""
    from hubtools.checkpoint.reader import open_checkpoint
    from hubtools.pipeline.recipe import check_source, parse_recipe

    params = tiny_ministral3_params(llama4=False, apply_scale=True)
    native = write_native_checkpoint(tmp_path / "native", params, dtype=torch.float32, tokenizer=None)
    edit_json(native / "params.json", lambda p: [p.pop("max_position_embeddings"), p.pop("rope_theta")])
    raw = {
        "name": "devstral-2-tiny",
        "source": {"url": "https://example.invalid/devstral.tar"},
        "architecture": "Ministral3ForCausalLM",
        "expect": {"yarn": to_native_params(params)["yarn"], "tied_embeddings": False},
        "overrides": {"max_position_embeddings": 65536, "rope_theta": 1e7},
        "repo_id": "me/devstral-2-tiny",
        "card": "cards/x.md",
    }
    recipe = parse_recipe(raw, where="recipe")
    with open_checkpoint(native) as ckpt:
        check_source(recipe, ckpt)
    result = convert(native, tmp_path / "hf", overrides=recipe.config_overrides())
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["max_position_embeddings"], config["rope_parameters"]["rope_theta"]) == (65536, 1e7)
    assert "rope_theta=1e+07 (override)" in result.rules


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_fp8_releases_keep_fp8_with_the_published_kept_list_and_verify(tied: bool, tmp_path: Path) -> None:
    """Ministral 3 Instruct and Devstral 2 ship FP8: kept bit-exactly both ways, with the modules_to_not_convert
    list transformers' script and the published repos write, and verified (values, scales and logits)."""
    import dataclasses

    from hubtools.model.fp8 import Fp8

    params = dataclasses.replace(tiny_ministral3_params(tied=tied), quantization=Fp8())
    native = write_native_checkpoint(tmp_path / "native", params, tokenizer=None)
    convert(native, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["quantization_config"]["modules_to_not_convert"] == [
        "model.vision_tower", "model.multi_modal_projector", "lm_head",
    ]  # fmt: skip
    assert verify(native, tmp_path / "hf").passed
    from hubtools.quantization.verify import is_quantized_folder

    assert not is_quantized_folder(tmp_path / "hf")  # `hubtools verify` treats it as a conversion, not a GPTQ/AWQ
    convert(tmp_path / "hf", tmp_path / "back", to="native")
    assert (tmp_path / "back" / "consolidated.safetensors").read_bytes() == (
        native / "consolidated.safetensors"
    ).read_bytes()
