"""llama.cpp's own runtime computes the same Mistral 4 as hubtools' clean-room reference forward (issue 19).

A tiny Mistral Small 4 (`Mistral3ForConditionalGeneration` around MLA + routed and shared experts, YaRN,
llama-4 scaling, tekken; or the bare text model) is made into an F32 GGUF (architecture `mistral4`) twice: by
hubtools (`export`, the engine of `hubtools gguf SRC DST --quant f32`) from the native checkpoint and by
llama.cpp's converter from hubtools' HF conversion. llama.cpp runs both (tests/llama_cpp_logits.cpp: llama.h, one
sequence, F32 KV cache, no flash attention) on the built-in prompts' token ids (positions below 40); its logits
on hubtools' file are held against `hubtools.verification.reference.forward` on the native weights, in float32,
and equal its logits on the converter's file bit for bit.

Measured: max |dlogit| 4.0e-6 (float32 rounding), top-1 100%; 5.7e-6 with a leading dense layer, 5.3e-6 with a
routed scale of 1.5 as well; 3.8e-6 at Small 4's attention widths (one layer, dim 256). Understood differences,
asserted as such (slow):
- two or more expert groups: llama.cpp (like transformers' Mistral4) scores a group by the sum of its top-2
  expert probabilities, the reference (vLLM's `grouped_topk` without a correction bias) by its best one: with
  the reference's group score swapped for the top-2 sum, they agree to 5e-6 (3.9 and top-1 83.5% before; Small 4
  has one group);
- llama-4 scaling: the converter writes neither `mistral4.attention.temperature_scale` nor `.temperature_length`,
  so past `original_max_position_embeddings` llama.cpp's queries are not scaled; with the two keys added
  (beta, original_max), llama.cpp's deepseek2 graph applies `1 + beta * ln(1 + floor(pos / max))` and agrees
  (0.89 past position 16 before, with original_max 16); hubtools writes them (its one difference from the
  converter's file), so its file agrees everywhere;
- flash attention (llama.cpp's default `auto` turns it on on the CPU) rounds through F16: max |dlogit| 5.6e-3
  (the default F16 KV cache alone, measured by hand: 2.8e-3); hence the F32 cache and no flash attention.

Skipped without llama.cpp's tree and its build (tests/llama_cpp_peer.py); `pytest -m slow` runs the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hubtools.converter import convert
from hubtools.model.params import ModelParams
from hubtools.testing import TOKENIZERS, tiny_mistral4_params, tiny_vision_params, write_native_checkpoint
from hubtools.verification import reference
from hubtools.verification.logits import prompt_tokens
from tests import llama_cpp_peer as peer

pytestmark = pytest.mark.skipif(
    peer.tree() is None or peer.build_tree() is None, reason="llama.cpp's tree or build not found (HUBTOOLS_LLAMA_CPP)"
)

FLOAT32 = 1e-4  # max |dlogit| of two float32 forwards of the same model (measured 4e-6)
SMALL_4 = {  # bench/mistral4.py's mistral4_params(tiny=True): no dense layer, one group, Small 4's YaRN and llama-4
    "n_layers": 2, "moe_first_k_dense_replace": 0, "moe_routed_scale": 1.0, "moe_num_experts_per_tok": 4,
    "yarn_factor": 128.0, "yarn_original_max_position_embeddings": 8192, "max_position_embeddings": 1048576,
    "llama_4_scaling": {"beta": 0.1, "original_max_position_embeddings": 8192},
}  # fmt: skip
SMALL_4_ATTENTION = {  # Small 4's attention widths (32 heads, q_lora 1024, kv_lora 256, rope 64 + nope 64, v 128)
    "n_layers": 1, "dim": 256, "hidden_dim": 768, "n_heads": 32, "n_kv_heads": 32, "q_lora_rank": 1024,
    "kv_lora_rank": 256, "qk_rope_head_dim": 64, "qk_nope_head_dim": 64, "v_head_dim": 128, "moe_num_experts": 4,
    "moe_expert_hidden_dim": 256,
}  # fmt: skip


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = peer.logits_program(tmp_path_factory.mktemp("llama_cpp_logits"))
    if exe is None:
        pytest.skip("no C++ compiler for tests/llama_cpp_logits.cpp")
    return exe


def small_4(folder: Path, *, wrapped: bool = True, **changes: Any) -> tuple[Path, ModelParams, Path]:
    """A tiny Small 4 (native, float32; in its vision wrapper or bare), hubtools' HF conversion, and llama.cpp's
    F32 GGUF of it (the bare `Mistral4ForCausalLM`, which the converter does not register, mapped to its class)."""
    text = tiny_mistral4_params(vocab_size=TOKENIZERS["tekken"][2], **{**SMALL_4, **changes})
    params = tiny_vision_params(text=text) if wrapped else text
    native = write_native_checkpoint(folder / "native", params, dtype=torch.float32, tokenizer="tekken")
    convert(native, folder / "hf")
    register = None if wrapped else "Mistral4ForCausalLM:mistral3:Mistral3Model"
    return native, params, peer.convert_hf(folder / "hf", folder / "peer.F32.gguf", "f32", register=register)


def prompts(native: Path, params: ModelParams, count: int) -> list[list[int]]:
    found = prompt_tokens(native / TOKENIZERS["tekken"][1], params.text.vocab_size)
    return [found.tokens[i, :n].tolist() for i, n in enumerate(found.lengths[:count])]


def logits(
    program: Path, gguf: Path, native: Path, params: ModelParams, *, count: int = 4, flash_attn: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(reference, llama.cpp) logits `[positions, vocab]` per prompt."""
    weights = load_file(native / "consolidated.safetensors")
    out = []
    for ids in prompts(native, params, count):
        ref = reference.forward(torch.tensor([ids]), weights.__getitem__, params, rope_theta=10000.0)[0]
        out.append((ref.float().numpy(), peer.runtime_logits(program, gguf, ids, gguf.parent, flash_attn=flash_attn)))
    return out


def max_dlogit(pairs: list[tuple[np.ndarray, np.ndarray]], rows: slice = slice(None)) -> float:
    return max((float(np.abs(ref[rows] - got[rows]).max()) for ref, got in pairs if len(ref[rows])), default=0.0)


def top1(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    same = [ref.argmax(-1) == got.argmax(-1) for ref, got in pairs]
    return float(np.concatenate(same).mean())


def assert_agree(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    figures = {"max_dlogit": max_dlogit(pairs), "top1": top1(pairs)}
    assert figures["max_dlogit"] < FLOAT32 and figures["top1"] == 1.0, figures


@pytest.mark.parametrize(
    ("wrapped", "changes"),
    [
        pytest.param(True, {}, id="small-4"),
        pytest.param(True, {"n_layers": 3, "moe_first_k_dense_replace": 1}, id="dense-lead", marks=pytest.mark.slow),
        pytest.param(
            True,
            {"n_layers": 3, "moe_first_k_dense_replace": 1, "moe_routed_scale": 1.5, "moe_num_experts_per_tok": 2},
            id="dense-lead-routed-scale",
            marks=pytest.mark.slow,
        ),
        pytest.param(True, SMALL_4_ATTENTION, id="small-4-attention-dims", marks=pytest.mark.slow),
        pytest.param(False, {}, id="bare-text-model", marks=pytest.mark.slow),
    ],
)
def test_llama_cpp_runs_both_small_4_ggufs_as_the_reference(
    program: Path, tmp_path: Path, wrapped: bool, changes: dict[str, Any]
) -> None:
    """hubtools' F32 GGUF (`hubtools gguf SRC DST --quant f32`'s engine): llama.cpp's logits agree with the
    reference and equal, bit for bit, its logits on llama.cpp's converter's file."""
    from hubtools.gguf.export import export
    from hubtools.gguf.quant import parse_quants

    native, params, converted = small_4(tmp_path, wrapped=wrapped, **changes)
    result = export(native, tmp_path / "out", quants=parse_quants("f32"), name="m")
    count = 4 if changes or not wrapped else 2
    ours = logits(program, tmp_path / "out" / result.outputs[0].files[0], native, params, count=count)
    assert_agree(ours)
    theirs = logits(program, converted, native, params, count=count)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(ours, theirs, strict=True))


def top_2_sum_grouped_top_k(
    x: torch.Tensor, gate: torch.Tensor, k: int, *, groups: int, groups_per_token: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`hubtools.model.mla.grouped_top_k` with a group scored by the sum of its two best experts (llama.cpp's
    and transformers' rule) instead of its best one."""
    flat = x.reshape(-1, x.shape[-1])
    scores = torch.softmax(F.linear(flat, gate).float(), dim=-1)
    per_group = scores.view(flat.shape[0], groups, -1)
    best_groups = per_group.topk(2, dim=-1).values.sum(-1).topk(groups_per_token, dim=-1).indices
    allowed = torch.zeros_like(per_group[..., 0], dtype=torch.bool).scatter_(1, best_groups, True)
    chosen = scores.masked_fill(~allowed.repeat_interleave(per_group.shape[-1], dim=1), 0.0).topk(k, dim=-1).indices
    weights = scores.gather(1, chosen)
    return flat, chosen, (weights / weights.sum(-1, keepdim=True) * scale).type_as(x)


@pytest.mark.slow
def test_two_expert_groups_differ_by_the_group_score_alone(
    program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp scores a group by its top-2 sum, the reference by its best expert: that is the whole difference."""
    from hubtools.model import mla

    groups = {"moe_num_expert_groups": 2, "moe_num_expert_groups_per_tok": 1, "moe_num_experts_per_tok": 2}
    native, params, gguf = small_4(tmp_path, **groups)
    assert max_dlogit(logits(program, gguf, native, params)) > 0.1  # other experts chosen
    monkeypatch.setattr(mla, "grouped_top_k", top_2_sum_grouped_top_k)
    assert_agree(logits(program, gguf, native, params))


def with_keys(src: Path, dst: Path, keys: dict[str, tuple[Any, Any]]) -> Path:
    """A copy of a GGUF file with metadata keys added (name -> (value, GGUFValueType))."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        if field.name != "general.architecture" and not field.name.startswith("GGUF."):
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    for name, (value, kind) in keys.items():
        writer.add_key_value(name, value, kind)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data)
    writer.close()
    return dst


@pytest.mark.slow
def test_llama_4_scaling_needs_the_temperature_keys_the_converter_omits(program: Path, tmp_path: Path) -> None:
    """original_max_position_embeddings 16: the converter's file agrees up to position 15 and not beyond;
    with `temperature_scale` (beta) and `temperature_length` (original_max) added it agrees everywhere, and so
    does hubtools' file, which writes them."""
    import gguf

    short = {"yarn_original_max_position_embeddings": 16, "max_position_embeddings": 2048}
    native, params, converted = small_4(
        tmp_path, **short, llama_4_scaling={"beta": 0.1, "original_max_position_embeddings": 16}
    )
    before = logits(program, converted, native, params, count=3)
    assert max_dlogit(before, slice(None, 16)) < FLOAT32 < 0.01 < max_dlogit(before, slice(16, None))
    keys = {
        "mistral4.attention.temperature_scale": (0.1, gguf.GGUFValueType.FLOAT32),
        "mistral4.attention.temperature_length": (16, gguf.GGUFValueType.UINT32),
    }
    fixed = with_keys(converted, tmp_path / "keys.F32.gguf", keys)
    assert_agree(logits(program, fixed, native, params, count=3))
    from hubtools.gguf.export import export  # hubtools writes the two keys: its own file agrees everywhere

    result = export(native, tmp_path / "out", quants="f32", name="m")
    assert_agree(logits(program, tmp_path / "out" / result.outputs[0].files[0], native, params, count=3))


@pytest.mark.slow
def test_flash_attention_rounds_through_f16(program: Path, tmp_path: Path) -> None:
    native, params, gguf = small_4(tmp_path)
    assert FLOAT32 < max_dlogit(logits(program, gguf, native, params, flash_attn=True)) < 0.02
