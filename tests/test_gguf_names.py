"""hubtools.gguf.names: GGUF tensor names, shapes and sources in llama.cpp's converter order.

The expected names are gguf-py's for the llama architecture, written out by hand (not read from the
family tables); the shard plan is checked against what `convert` really writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hubtools.converter import convert
from hubtools.gguf.names import GgufTensor, converter_order, gguf_tensors, hf_shards_of_native
from hubtools.model.family import ModelParams
from hubtools.model.names import NameTable
from hubtools.testing import tiny_params, write_native_checkpoint

MISTRAL = tiny_params(moe=False, n_layers=2, vocab_size=256)  # dim 64, hidden 128, 4 heads of 16, 2 kv heads
MIXTRAL = tiny_params(n_layers=1, vocab_size=256, num_experts=3)


def hf_names(params: ModelParams) -> list[str]:
    return [s.hf for s in NameTable(params).specs]


def plan(tensors: list[GgufTensor]) -> list[tuple[str, tuple[int, ...], list[str]]]:
    return [(t.name, t.shape, [s.hf for s in t.sources]) for t in tensors]


def test_mistral_in_one_shard() -> None:
    layer = "model.layers.{}."
    expected = [
        ("output.weight", (256, 64), ["lm_head.weight"]),
        ("token_embd.weight", (256, 64), ["model.embed_tokens.weight"]),
    ]
    for i in (0, 1):
        hf = layer.format(i)
        expected += [
            (f"blk.{i}.attn_norm.weight", (64,), [hf + "input_layernorm.weight"]),
            (f"blk.{i}.ffn_down.weight", (64, 128), [hf + "mlp.down_proj.weight"]),
            (f"blk.{i}.ffn_gate.weight", (128, 64), [hf + "mlp.gate_proj.weight"]),
            (f"blk.{i}.ffn_up.weight", (128, 64), [hf + "mlp.up_proj.weight"]),
            (f"blk.{i}.ffn_norm.weight", (64,), [hf + "post_attention_layernorm.weight"]),
            (f"blk.{i}.attn_k.weight", (32, 64), [hf + "self_attn.k_proj.weight"]),
            (f"blk.{i}.attn_output.weight", (64, 64), [hf + "self_attn.o_proj.weight"]),
            (f"blk.{i}.attn_q.weight", (64, 64), [hf + "self_attn.q_proj.weight"]),
            (f"blk.{i}.attn_v.weight", (32, 64), [hf + "self_attn.v_proj.weight"]),
        ]
    expected.append(("output_norm.weight", (64,), ["model.norm.weight"]))
    assert plan(gguf_tensors(MISTRAL, converter_order([hf_names(MISTRAL)]))) == expected


def test_mixtral_experts_merged_per_layer() -> None:
    moe = "model.layers.0.block_sparse_moe."
    tensors = gguf_tensors(MIXTRAL, converter_order([hf_names(MIXTRAL)]))
    assert plan(tensors) == [
        ("output.weight", (256, 64), ["lm_head.weight"]),
        ("token_embd.weight", (256, 64), ["model.embed_tokens.weight"]),
        # the experts are read first in the layer (sorted names); merged when expert 2's w3 arrives
        ("blk.0.ffn_gate_exps.weight", (3, 128, 64), [f"{moe}experts.{e}.w1.weight" for e in range(3)]),
        ("blk.0.ffn_down_exps.weight", (3, 64, 128), [f"{moe}experts.{e}.w2.weight" for e in range(3)]),
        ("blk.0.ffn_up_exps.weight", (3, 128, 64), [f"{moe}experts.{e}.w3.weight" for e in range(3)]),
        ("blk.0.ffn_gate_inp.weight", (3, 64), [f"{moe}gate.weight"]),
        ("blk.0.attn_norm.weight", (64,), ["model.layers.0.input_layernorm.weight"]),
        ("blk.0.ffn_norm.weight", (64,), ["model.layers.0.post_attention_layernorm.weight"]),
        ("blk.0.attn_k.weight", (32, 64), ["model.layers.0.self_attn.k_proj.weight"]),
        ("blk.0.attn_output.weight", (64, 64), ["model.layers.0.self_attn.o_proj.weight"]),
        ("blk.0.attn_q.weight", (64, 64), ["model.layers.0.self_attn.q_proj.weight"]),
        ("blk.0.attn_v.weight", (32, 64), ["model.layers.0.self_attn.v_proj.weight"]),
        ("output_norm.weight", (64,), ["model.norm.weight"]),
    ]
    gate = tensors[2]
    assert [(s.unit, s.expert) for s in gate.sources] == [(0, 0), (0, 1), (0, 2)]
    assert [s.native for s in gate.sources] == [f"layers.0.feed_forward.experts.{e}.w1.weight" for e in range(3)]


def test_lexical_read_order_numeric_expert_order() -> None:
    """Names are read sorted as strings (layers.10 before layers.2, experts.10 before experts.2); the stacked
    sources are still in expert order."""
    params = tiny_params(n_layers=11, vocab_size=256, dim=32, hidden_dim=32, num_experts=11)
    tensors = gguf_tensors(params, converter_order([hf_names(params)]))
    layers = list(dict.fromkeys(t.name.split(".")[1] for t in tensors if t.name.startswith("blk.")))
    assert layers == ["0", "1", "10", "2", "3", "4", "5", "6", "7", "8", "9"]
    stacked = [t for t in tensors if t.name.endswith("_exps.weight")]
    assert len(stacked) == 3 * 11 and all(t.shape[0] == 11 for t in stacked)
    for t in stacked:
        assert [s.expert for s in t.sources] == list(range(11))
    assert [t.name for t in stacked[:3]] == [f"blk.0.ffn_{w}_exps.weight" for w in ("gate", "down", "up")]
    assert len(tensors) == 2 + 11 * (3 + 1 + 6) + 1


def test_merge_waits_for_the_last_expert_of_its_layer() -> None:
    """Across shards a layer's experts merge where its last expert tensor is read, not before."""
    names = hf_names(MIXTRAL)
    late = "model.layers.0.block_sparse_moe.experts.1.w2.weight"
    order = converter_order([[n for n in names if n != late], [late]])
    got = [t.name for t in gguf_tensors(MIXTRAL, order)]
    assert got[-4:] == [
        "output_norm.weight",
        "blk.0.ffn_gate_exps.weight",
        "blk.0.ffn_down_exps.weight",
        "blk.0.ffn_up_exps.weight",
    ]
    assert len(got) == 13


def test_converter_order_sorts_names_within_each_shard_keeps_shard_order() -> None:
    assert converter_order([["b", "a", "c"], ["z", "y"], [], ["m"]]) == ["a", "b", "c", "y", "z", "m"]
    assert converter_order([["z"], ["a"]]) == ["z", "a"]  # shards come in file order from the caller
    assert converter_order([]) == []
    assert converter_order(iter([iter(["b", "a"])])) == ["a", "b"]


def shards_in_index(folder: Path) -> list[list[str]]:
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(file, []).append(name)
    return [by_file[f] for f in sorted(by_file)]


@pytest.mark.parametrize(
    ("params", "dtype", "max_shard_size", "files"),
    [
        (MIXTRAL, torch.bfloat16, 40_000, 8),
        (MIXTRAL, torch.float32, 40_000, 13),
        (MISTRAL, torch.bfloat16, 20_000, 12),
    ],
    ids=["mixtral-bf16", "mixtral-f32", "mistral-bf16"],
)
def test_hf_shards_of_native_is_what_convert_writes(
    tmp_path: Path, params: ModelParams, dtype: torch.dtype, max_shard_size: int, files: int
) -> None:
    native = write_native_checkpoint(tmp_path / "native", params, dtype=dtype, tokenizer=None)
    convert(native, tmp_path / "hf", max_shard_size=max_shard_size)
    code = {torch.bfloat16: "BF16", torch.float32: "F32"}[dtype]
    planned = hf_shards_of_native(params, {s.native: code for s in NameTable(params).specs}, max_shard_size)
    assert planned == shards_in_index(tmp_path / "hf")
    assert len(planned) == files
    # so the GGUF plan from native is the one llama.cpp's converter makes reading the HF shard files
    read = []
    for path in sorted((tmp_path / "hf").glob("model-*.safetensors")):
        with safe_open(path, "pt") as f:
            read.append(list(f.keys()))
    assert gguf_tensors(params, converter_order(planned)) == gguf_tensors(params, converter_order(read))


def test_hf_shards_of_native_one_shard_and_by_dtype() -> None:
    codes = {s.native: "BF16" for s in NameTable(MISTRAL).specs}
    assert hf_shards_of_native(MISTRAL, codes, 10**9) == [hf_names(MISTRAL)]
    embedding = 256 * 64 * 2
    shards = hf_shards_of_native(MISTRAL, codes, embedding)  # the embedding fills a shard on its own
    assert shards[0] == ["model.embed_tokens.weight"] and shards[-1] == ["lm_head.weight"]
    wider = {**codes, "tok_embeddings.weight": "F32"}  # twice the bytes: still alone, and alone at the limit
    assert hf_shards_of_native(MISTRAL, wider, embedding)[0] == ["model.embed_tokens.weight"]
    with pytest.raises(KeyError):
        hf_shards_of_native(MISTRAL, {}, embedding)  # every native tensor needs its dtype code
