"""Mistral 4 FP8 experts: what transformers 5.25 loads, and why transformers' conversion script loses values.

transformers' `convert_mistral4_weight_to_hf.py` (its `FP8RescaleMergeAndConcatenate` / `_rescale_fp8`) gives
each expert's gate and up halves one common scale, the larger of the two, and re-quantizes both to it:
`(w.to(bfloat16) * (scale / common)).clamp(-448, 448).to(float8_e4m3fn)`; it then writes
`gate_up_proj_scale_inv` as [E, 1, 1]. The rule is restated here (the script is not vendored) and held against
the values and against the FP8 experts transformers 5.25 builds.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.model import fp8
from hubtools.testing import tiny_mistral4_params, write_native_checkpoint
from hubtools.verification.run import verify
from tests.helpers import RunCli, assert_one_line_error, same_bytes, tensors_of

FP8 = torch.float8_e4m3fn


def _script_rescale(weight: torch.Tensor, scale: torch.Tensor, common: torch.Tensor) -> torch.Tensor:
    """The script's `_rescale_fp8`: FP8 `weight` with `scale` re-quantized to the scale `common`."""
    finfo = torch.finfo(FP8)
    return (weight.to(torch.bfloat16) * (scale / common)).clamp(min=finfo.min, max=finfo.max).to(FP8)


def _dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.float32) * scale.to(torch.float32)


def test_the_script_s_common_scale_loses_the_smaller_half_s_values() -> None:
    generator = torch.Generator().manual_seed(0)
    gate = (torch.randn(64, 32, generator=generator) * 100).to(FP8)
    up = (torch.randn(64, 32, generator=generator) * 100).to(FP8)
    gate_scale, up_scale = torch.tensor(0.01, dtype=torch.bfloat16), torch.tensor(0.0625, dtype=torch.bfloat16)
    common = torch.max(gate_scale, up_scale)
    rescaled = _script_rescale(gate, gate_scale, common)
    before, after = _dequantize(gate, gate_scale), _dequantize(rescaled, common)
    changed = (before != after).float().mean().item()
    assert changed > 0.5, changed  # most of the gate half no longer dequantizes to what the release holds
    assert torch.equal(_dequantize(_script_rescale(up, up_scale, common), common), _dequantize(up, up_scale))
    # one scale per half (what hubtools writes) keeps every value: the halves are stored as they are
    halves = torch.cat([gate, up]).view(2, 64, 32)
    scales = torch.stack([gate_scale, up_scale]).view(2, 1, 1)
    assert torch.equal(_dequantize(halves, scales)[0], before)


def test_transformers_fp8_experts_take_one_weight_scale_per_half_and_refuse_the_script_s_shape() -> None:
    from transformers import Mistral4Config
    from transformers.integrations.finegrained_fp8 import FP8Experts

    config = Mistral4Config(
        hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
    )  # fmt: skip
    experts = FP8Experts(config, activation_scheme="static")
    shapes = {name: tuple(t.shape) for name, t in experts.state_dict().items()}
    assert shapes["gate_up_proj_scale_inv"] == (8, 2, 1) and shapes["down_proj_scale_inv"] == (8, 1, 1)
    assert shapes["gate_up_proj_activation_scale"] == (8,)  # one input scale for both halves
    state = experts.state_dict()
    state["gate_up_proj_scale_inv"] = torch.ones(8, 1, 1)  # what the script writes
    with pytest.raises(RuntimeError, match="size mismatch for gate_up_proj_scale_inv"):
        experts.load_state_dict(state)


FP8_PARAMS = {"quantization": {"qformat_weight": "fp8_e4m3", "qscheme_act": "TENSOR"}}
NATIVE_FILE, HF_SHARD = "consolidated.safetensors", "model-00001-of-00001.safetensors"
EXPERTS, WIDTH = 8, 32


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """`same_bytes` for tensors of any rank (scales are scalars)."""
    return a.shape == b.shape and same_bytes(a.reshape(-1), b.reshape(-1))


def _edit(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _one_input_scale_per_expert(tensors: dict[str, torch.Tensor]) -> None:
    """An expert's gate and up read the same input: a release calibrates one input scale for both."""
    for name in [n for n in tensors if re.search(r"experts\.\d+\.w3\.qscale_act$", n)]:
        tensors[name] = tensors[name.replace(".w3.", ".w1.")].clone()


@pytest.fixture(scope="module")
def fp8_converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(native, hf kept FP8, hf dequantized to bfloat16) of a tiny FP8 Mistral 4."""
    root = tmp_path_factory.mktemp("mistral4_fp8")
    native = write_native_checkpoint(root / "native", tiny_mistral4_params(**FP8_PARAMS), tokenizer=None)
    _edit(native / NATIVE_FILE, _one_input_scale_per_expert)
    convert(native, root / "hf")
    convert(native, root / "bf16", dtype="bfloat16")
    return native, root / "hf", root / "bf16"


def test_fp8_experts_are_fused_with_one_scale_per_half_and_go_back_bit_exact(
    fp8_converted: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    native, hf, _ = fp8_converted
    source, stored = tensors_of(native), load_file(hf / HF_SHARD)
    experts = "model.layers.1.mlp.experts."
    shapes = {k.removeprefix(experts): (tuple(v.shape), v.dtype) for k, v in stored.items() if k.startswith(experts)}
    bf16 = torch.bfloat16
    assert shapes == {
        "gate_up_proj": ((EXPERTS, 2 * WIDTH, 64), FP8), "gate_up_proj_scale_inv": ((EXPERTS, 2, 1), bf16),
        "gate_up_proj_activation_scale": ((EXPERTS,), bf16), "down_proj": ((EXPERTS, 64, WIDTH), FP8),
        "down_proj_scale_inv": ((EXPERTS, 1, 1), bf16), "down_proj_activation_scale": ((EXPERTS,), bf16),
    }  # fmt: skip
    scales = stored[experts + "gate_up_proj_scale_inv"]
    for e in range(EXPERTS):
        assert _same(scales[e, 0, 0], source[f"layers.1.experts.{e}.w1.qscale_weight"])
        assert _same(scales[e, 1, 0], source[f"layers.1.experts.{e}.w3.qscale_weight"])
    assert (
        "layers.1.gate.qscale_weight" not in source and stored["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    )
    assert json.loads((hf / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"
    convert(hf, tmp_path / "back")
    back = tensors_of(tmp_path / "back")
    assert back.keys() == source.keys() and all(_same(back[k], source[k]) for k in source)


def test_transformers_fp8_experts_load_the_fused_tensors_and_dequantize_each_half_by_its_own_scale(
    fp8_converted: tuple[Path, Path, Path],
) -> None:
    from transformers import Mistral4Config
    from transformers.integrations.finegrained_fp8 import FP8Experts

    from hubtools.verification.fp8_weights import hf_dequantize

    native, hf, _ = fp8_converted
    source, stored = tensors_of(native), load_file(hf / HF_SHARD)
    config = Mistral4Config(**{k: v for k, v in json.loads((hf / "config.json").read_text()).items()
                               if k not in ("quantization_config", "architectures", "model_type")})  # fmt: skip
    experts = FP8Experts(config, activation_scheme="static")
    prefix = "model.layers.1.mlp.experts."
    experts.load_state_dict({k.removeprefix(prefix): v for k, v in stored.items() if k.startswith(prefix)}, strict=True)
    gate_up = hf_dequantize(experts.gate_up_proj.data, experts.gate_up_proj_scale_inv.data)
    for e in range(EXPERTS):
        for half, w in ((slice(None, WIDTH), "w1"), (slice(WIDTH, None), "w3")):
            weight, scale = (
                source[f"layers.1.experts.{e}.{w}.weight"],
                source[f"layers.1.experts.{e}.{w}.qscale_weight"],
            )
            assert torch.equal(gate_up[e, half], fp8.dequantize(weight, scale, torch.bfloat16))


@pytest.mark.parametrize("kept", [True, False])
def test_verify_passes_fp8_kept_and_dequantized(fp8_converted: tuple[Path, Path, Path], kept: bool) -> None:
    native, hf, bf16 = fp8_converted
    report = verify(native, hf if kept else bf16)
    assert report.passed, report
    assert report.logits.max_abs_dlogit is not None and report.logits.max_abs_dlogit < 1e-4


def test_one_expert_s_fp8_scale_planted_fails_verify_and_is_named(
    fp8_converted: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    native, hf, _ = fp8_converted
    broken = Path(shutil.copytree(hf, tmp_path / "hf"))

    def plant(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.layers.2.mlp.experts.gate_up_proj_scale_inv"][5, 1, 0] *= 1.5

    _edit(broken / HF_SHARD, plant)
    report = verify(native, broken)
    assert not report.passed and not report.logits.passed
    assert report.tensors.mismatched == ("model.layers.2.mlp.experts.5.up_proj.weight_scale_inv",)


def test_gate_and_up_input_scales_that_differ_are_refused_in_one_line(tmp_path: Path, run_cli: RunCli) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_mistral4_params(**FP8_PARAMS), tokenizer=None)
    _edit(native / NATIVE_FILE, _one_input_scale_per_expert)

    def differ(tensors: dict[str, torch.Tensor]) -> None:
        tensors["layers.2.experts.4.w3.qscale_act"] = tensors["layers.2.experts.4.w3.qscale_act"] * 2

    _edit(native / NATIVE_FILE, differ)
    result = run_cli("convert", native, tmp_path / "hf")
    assert_one_line_error(result, "experts.4.up_proj.activation_scale' differs", "--dtype bfloat16")
    assert run_cli("convert", native, tmp_path / "bf16", "--dtype", "bfloat16").exit_code == 0


@pytest.mark.parametrize("text_family", ["ministral3", "mistral4"])
def test_verify_of_a_dequantized_fp8_vision_wrapper_passes_and_still_names_a_changed_weight(
    text_family: str, tmp_path: Path
) -> None:
    """`convert --dtype bfloat16` of an FP8 `Mistral3ForConditionalGeneration` (Ministral 3, Small 4): verify
    expects no scale on the HF side for the wrapper's text model too (it used to expect them back: "HF: missing
    tensor '...weight_scale_inv'"), and a dequantized weight one value off still fails and is named."""
    import dataclasses

    from hubtools.model.fp8 import Fp8
    from hubtools.testing import TOKENIZERS, tiny_ministral3_params, tiny_vision_params

    vocab = TOKENIZERS["tekken"][2]
    text = tiny_ministral3_params(vocab_size=vocab) if text_family == "ministral3" else tiny_mistral4_params(
        vocab_size=vocab
    )  # fmt: skip
    params = tiny_vision_params(text=dataclasses.replace(text, quantization=Fp8()))
    native = write_native_checkpoint(tmp_path / "native", params, tokenizer=None, shards=1)
    _edit(native / NATIVE_FILE, _one_input_scale_per_expert)
    convert(native, tmp_path / "hf", dtype="bfloat16")
    report = verify(native, tmp_path / "hf")
    assert report.passed, report.structure.problems[:3]
    name = "language_model.model.layers.1.self_attn.o_proj.weight"
    (shard,) = sorted((tmp_path / "hf").glob("*.safetensors"))
    _edit(shard, lambda t: t[name].view(-1)[7].mul_(1.5))
    report = verify(native, tmp_path / "hf", check_logits=False)
    assert not report.passed and report.tensors.mismatched == (name,)
