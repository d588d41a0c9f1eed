"""Mistral 4 (MLA + routed and shared experts, grouped routing, leading dense layers): params, convert both
ways, transformers loading the result, the clean-room reference against transformers, planted faults."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.errors import ParamsError
from hubtools.families import from_hf_config, parse_params
from hubtools.model.hf_config import to_hf_config, to_native_params
from hubtools.model.transforms import interleaved_to_half
from hubtools.testing import copy_tokenizer, synthetic_tensors, tiny_mistral4_params, write_native_checkpoint
from hubtools.verification import reference
from hubtools.verification.run import verify
from tests.helpers import edit_json, same_bytes, tensors_of

HF_SHARD = "model-00001-of-00001.safetensors"
EXPERT_WIDTH, EXPERTS = 32, 8  # tiny_mistral4_params' moe.expert_hidden_dim and num_experts


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(native, hf): a bf16 tiny Mistral 4 (layer 0 dense, layers 1-2 MoE) and its conversion."""
    root = tmp_path_factory.mktemp("mistral4")
    native = write_native_checkpoint(root / "native", tiny_mistral4_params(), tokenizer=None)
    convert(native, root / "hf")
    return native, root / "hf"


def test_params_json_round_trips_through_config_json() -> None:
    params = tiny_mistral4_params()
    config = to_hf_config(params, dtype="bfloat16").config
    assert (config["architectures"], config["first_k_dense_replace"], config["n_shared_experts"]) == (
        ["Mistral4ForCausalLM"], 1, 1,
    )  # fmt: skip
    assert config["rope_parameters"]["llama_4_scaling_beta"] == 0.1 and config["rope_interleave"] is True
    assert from_hf_config(json.loads(json.dumps(config))) == params
    assert parse_params(to_native_params(params)) == params


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sparse_attention": True}, "unknown field 'sparse_attention'"),
        ({"moe_gate_bias": 0.1}, "unknown field 'moe.gate_bias'"),
        ({"moe_use_load_balancing_bias": True}, "field 'moe.use_load_balancing_bias' must be False"),
        ({"moe_num_expert_groups": 3}, "field 'moe.num_expert_groups' must be a divisor of 8 experts"),
        ({"head_dim": 32}, "field 'head_dim' must be qk_nope_head_dim + qk_rope_head_dim = 24"),
        ({"n_kv_heads": 2}, "field 'n_kv_heads' must be n_heads (4)"),
        ({"yarn": None}, "Mistral 4 needs 'yarn'"),
        ({"llama_4_scaling": {"beta": 0.1, "original_max_position_embeddings": 8}}, "must be yarn's (1024)"),
        ({"tied_embeddings": True}, "field 'tied_embeddings' must be False"),
    ],
)
def test_a_field_that_cannot_be_mapped_is_refused_with_its_name(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=None) as caught:
        tiny_mistral4_params(**change)
    assert message in str(caught.value)


def test_convert_fuses_the_experts_as_transformers_stores_them_and_goes_back_bit_exact(
    converted: tuple[Path, Path], tmp_path: Path
) -> None:
    native, hf = converted
    source, stored = tensors_of(native), load_file(hf / HF_SHARD)
    gate_up, down = stored["model.layers.1.mlp.experts.gate_up_proj"], stored["model.layers.1.mlp.experts.down_proj"]
    assert (gate_up.shape, down.shape) == ((EXPERTS, 2 * EXPERT_WIDTH, 64), (EXPERTS, 64, EXPERT_WIDTH))
    for e in range(EXPERTS):
        assert same_bytes(gate_up[e, :EXPERT_WIDTH], source[f"layers.1.experts.{e}.w1.weight"])
        assert same_bytes(gate_up[e, EXPERT_WIDTH:], source[f"layers.1.experts.{e}.w3.weight"])
        assert same_bytes(down[e], source[f"layers.1.experts.{e}.w2.weight"])
    assert same_bytes(stored["model.layers.0.mlp.gate_proj.weight"], source["layers.0.feed_forward.w1.weight"])
    assert same_bytes(
        stored["model.layers.1.mlp.shared_experts.up_proj.weight"], source["layers.1.shared_experts.w3.weight"]
    )
    assert same_bytes(stored["model.layers.2.self_attn.q_b_proj.weight"], source["layers.2.attention.wq_b.weight"])
    convert(hf, tmp_path / "back")
    assert (tmp_path / "back/consolidated.safetensors").read_bytes() == (
        native / "consolidated.safetensors"
    ).read_bytes()


def test_transformers_loads_the_conversion_with_no_missing_or_unexpected_keys(converted: tuple[Path, Path]) -> None:
    from transformers import Mistral4ForCausalLM

    _, hf = converted
    model, info = Mistral4ForCausalLM.from_pretrained(hf, dtype=torch.float32, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    stored = load_file(hf / HF_SHARD)
    assert torch.equal(
        model.model.layers[2].mlp.experts.gate_up_proj, stored["model.layers.2.mlp.experts.gate_up_proj"].float()
    )


def test_the_reference_on_native_names_matches_the_whole_transformers_model(converted: tuple[Path, Path]) -> None:
    from transformers import Mistral4ForCausalLM

    native, hf = converted
    params = tiny_mistral4_params()
    weights = {name: t.float() for name, t in tensors_of(native).items()}
    tokens = torch.randint(0, params.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    ours = reference.forward(tokens, weights.__getitem__, params, rope_theta=10000.0)
    model = Mistral4ForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager",
                                                experts_implementation="eager")  # fmt: skip
    with torch.no_grad():
        theirs = model(input_ids=tokens).logits
    assert (ours - theirs).abs().max() < 1e-4


def test_verify_passes_layer_by_layer_in_float32_with_the_tokenizer(
    converted: tuple[Path, Path], tmp_path: Path
) -> None:
    native = Path(shutil.copytree(converted[0], tmp_path / "native"))
    copy_tokenizer("v1", native)
    convert(native, tmp_path / "hf")
    report = verify(native, tmp_path / "hf")
    assert report.passed and report.tokenizer.skipped is None, report
    assert report.logits.max_abs_dlogit is not None and report.logits.max_abs_dlogit < 1e-4
    assert len(report.logits.layers) == 3 and report.tensors.compared == report.tensors.expected


def _edit_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(folder / HF_SHARD)
    change(tensors)
    save_file(tensors, folder / HF_SHARD, metadata={"format": "pt"})


def _swap_shared_and_routed(t: dict[str, torch.Tensor]) -> None:
    layer = "model.layers.1.mlp."
    shared = t[layer + "shared_experts.gate_proj.weight"].clone()
    t[layer + "shared_experts.gate_proj.weight"] = t[layer + "experts.gate_up_proj"][3, :EXPERT_WIDTH].clone()
    t[layer + "experts.gate_up_proj"][3, :EXPERT_WIDTH] = shared


def _rotary_half_permuted(t: dict[str, torch.Tensor]) -> None:
    """q_b_proj's rope slice of each head in rotate-half order (a converter treating it as Llama's)."""
    name = "model.layers.2.self_attn.q_b_proj.weight"
    heads = t[name].view(4, 24, -1).clone()
    heads[:, 8:] = interleaved_to_half(heads[:, 8:].reshape(4 * 16, -1), 4).view(4, 16, -1)
    t[name] = heads.reshape(4 * 24, -1)


FAULTS = {
    "shared and routed expert swapped": (_swap_shared_and_routed, None, "model.layers.1.mlp.shared_experts.gate_proj"),
    "rotary half permuted": (_rotary_half_permuted, None, "model.layers.2.self_attn.q_b_proj.weight"),
    "routed_scale wrong": (None, ("routed_scaling_factor", 1.0), "config.json routed_scaling_factor"),
    "group count wrong": (None, ("n_group", 2), "config.json n_group"),
}


def planted(hf: Path, tmp_path: Path, fault: str) -> Path:
    """A copy of the HF folder `hf` with `fault` (of `FAULTS`) planted in its weights or config.json."""
    broken = Path(shutil.copytree(hf, tmp_path / "hf"))
    weights, field, _ = FAULTS[fault]
    if weights:
        _edit_weights(broken, weights)
    if field:
        edit_json(broken / "config.json", lambda config: config.__setitem__(*field))
    return broken


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_planted_fault_fails_verify_and_is_named(converted: tuple[Path, Path], tmp_path: Path, fault: str) -> None:
    native, hf = converted
    broken = planted(hf, tmp_path, fault)
    named = FAULTS[fault][2]
    report = verify(native, broken)
    assert not report.passed and not report.logits.passed, fault
    found = [*report.structure.problems, *report.tensors.mismatched]
    assert any(named in line for line in found), (named, found)
    assert report.logits.layers[0].max_abs_dh < 1e-4  # the dense layer 0 is untouched by every fault


def test_transformers_groups_experts_by_their_top_two_sum_where_vllm_takes_the_best_one(tmp_path: Path) -> None:
    """With num_expert_groups_per_tok < num_expert_groups, transformers 5.25's Mistral4TopkRouter scores a group
    by its two best experts (DeepSeek-V3's rule for a correction bias) and vLLM, which runs the native format,
    by its best one (its rule without a bias, Mistral's case): the two models differ, and verify says so."""
    params = tiny_mistral4_params(moe_num_expert_groups=4, moe_num_expert_groups_per_tok=2)
    native = write_native_checkpoint(tmp_path / "native", params, tokenizer=None)
    convert(native, tmp_path / "hf")
    report = verify(native, tmp_path / "hf")
    assert report.structure.passed and report.tensors.passed and not report.logits.passed
    assert report.logits.layers[0].max_abs_dh < 1e-4 < report.logits.layers[1].max_abs_dh
    assert any("keeps 2 of 4 expert groups" in n for n in report.structure.notes)  # said, beside the failure
    one_group = write_native_checkpoint(tmp_path / "one", tiny_mistral4_params(), tokenizer=None)
    convert(one_group, tmp_path / "one-hf")
    assert not any("expert groups" in n for n in verify(one_group, tmp_path / "one-hf").structure.notes)


def test_the_fused_tensors_split_back_into_one_tensor_per_row(converted: tuple[Path, Path]) -> None:
    native, hf = converted
    params = tiny_mistral4_params()
    names = {name for name, _ in synthetic_tensors(params)}
    assert set(tensors_of(native)) == names
    split = tensors_of(hf)
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in split and len(split) == len(names)


def _convert_peak_anon(tmp_path: Path, dim: int) -> tuple[int, int]:
    """Peak anonymous memory of `hubtools convert` native -> HF and back, for a Mistral 4 of width `dim`."""
    import sys

    from bench.convert import run_measured

    params = tiny_mistral4_params(
        dim=dim, hidden_dim=3 * dim, n_layers=2, n_heads=dim // 128, n_kv_heads=dim // 128, q_lora_rank=dim // 4,
        kv_lora_rank=dim // 16, qk_rope_head_dim=64, qk_nope_head_dim=64, v_head_dim=128,
        moe_num_experts=16, moe_expert_hidden_dim=dim // 2, moe_num_experts_per_tok=4,
    )  # fmt: skip
    root = tmp_path / str(dim)
    write_native_checkpoint(root / "native", params, tokenizer="v1")
    cli = [sys.executable, "-m", "hubtools.cli", "convert"]
    there = run_measured([*cli, str(root / "native"), str(root / "hf")])
    back = run_measured([*cli, str(root / "hf"), str(root / "back")])
    shutil.rmtree(root)
    return int(there["peak_anon"]), int(back["peak_anon"])


@pytest.mark.slow
def test_convert_memory_is_flat_as_the_width_grows(tmp_path: Path) -> None:
    """16x the bytes (1024 -> 4096 wide: 0.2 -> 1.8 GB), the same peak anonymous memory both ways (measured:
    ~75 MiB to HF, ~40 MiB back), though every MoE layer's experts are fused into two tensors."""
    narrow, wide = _convert_peak_anon(tmp_path, 1024), _convert_peak_anon(tmp_path, 4096)
    for a, b in zip(narrow, wide, strict=True):
        assert b < a + 32 * 2**20, (narrow, wide)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_small_4_shape_a_vision_wrapper_around_mistral_4_converts_loads_and_verifies(fp8: bool, tmp_path: Path) -> None:
    """Mistral Small 4: `Mistral3ForConditionalGeneration` around a Mistral 4 text model (fused experts under the
    wrapper's prefix), FP8 or not: both ways bit-exact, transformers loads it with no missing or unexpected key,
    and verify passes (encoder, MLA + MoE layers, tokenizer with images)."""
    import dataclasses

    from transformers import Mistral3ForConditionalGeneration

    from hubtools.model.fp8 import Fp8
    from hubtools.testing import TOKENIZERS, tiny_vision_params

    text = tiny_mistral4_params(vocab_size=TOKENIZERS["tekken"][2])
    params = tiny_vision_params(text=dataclasses.replace(text, quantization=Fp8()) if fp8 else text)
    assert (params.architecture, params.text.architecture) == (
        "Mistral3ForConditionalGeneration",
        "Mistral4ForCausalLM",
    )
    native = write_native_checkpoint(
        tmp_path / "native", params, dtype=torch.bfloat16 if fp8 else torch.float32, tokenizer="tekken"
    )
    if fp8:  # a release calibrates one input scale for an expert's gate and up (they read the same input)
        tensors = load_file(native / "consolidated.safetensors")
        for name in [n for n in tensors if ".experts." in n and n.endswith(".w3.qscale_act")]:
            tensors[name] = tensors[name.replace(".w3.", ".w1.")].clone()
        save_file(tensors, native / "consolidated.safetensors", metadata={"format": "pt"})
    convert(native, tmp_path / "hf")
    if not fp8:  # FP8 fused experts load only on an FP8 GPU in 5.25 (README, Mistral 4): not on this CPU
        _, info = Mistral3ForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert verify(native, tmp_path / "hf").passed
    convert(tmp_path / "hf", tmp_path / "back", to="native")
    source, back = (
        load_file(native / "consolidated.safetensors"),
        load_file(tmp_path / "back" / "consolidated.safetensors"),
    )
    assert source.keys() == back.keys()  # (the FP8 source was re-saved above: safetensors sorts it by name)
    assert all(same_bytes(source[name].reshape(-1), back[name].reshape(-1)) for name in source)
