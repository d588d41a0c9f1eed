"""Mistral 4 FP8 experts: what transformers 5.25 loads, and why transformers' conversion script loses values.

transformers' `convert_mistral4_weight_to_hf.py` (its `FP8RescaleMergeAndConcatenate` / `_rescale_fp8`) gives
each expert's gate and up halves one common scale, the larger of the two, and re-quantizes both to it:
`(w.to(bfloat16) * (scale / common)).clamp(-448, 448).to(float8_e4m3fn)`; it then writes
`gate_up_proj_scale_inv` as [E, 1, 1]. The rule is restated here (the script is not vendored) and held against
the values and against the FP8 experts transformers 5.25 builds.
"""

from __future__ import annotations

import pytest
import torch

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
