"""GGUF of Mistral 4 (Mistral Small 4, Mistral Large 3): llama.cpp's architecture `mistral4`, as its converter's
`Mistral3Model.Mistral4Model` (a DeepseekV2Model) writes it: MLA's `kv_b` split into `attn_k_b` (transposed per
head) and `attn_v_b`, the fused experts whole (`ffn_gate_up_exps`, `ffn_down_exps`), one key-value head of width
kv_lora_rank + rope in the metadata.

Default suite: the file verifies against the native checkpoint (every tensor byte for byte, the reference forward
on the read-back weights: exact in F32), from native and from HF alike, bare and in the vision wrapper, from FP8;
planted faults in the file are named. Slow, with the peer: equal to llama.cpp's converter key for key (but for the
llama-4 scaling keys hubtools adds, which the converter's HF path omits: `LLAMA_4_KEYS`) and tensor
for tensor (the wrapper as the converter registers it; the bare `Mistral4ForCausalLM`, which it does not register,
with that name mapped to the same class), and where the converter fails (transformers' FP8 experts), shown.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.families import family_named
from hubtools.gguf.export import export
from hubtools.gguf.files import FastReader
from hubtools.gguf.metadata import LLAMA_4_KEYS
from hubtools.gguf.verify import verify_gguf
from hubtools.model.family import ModelParams
from hubtools.model.fp8 import Fp8
from hubtools.testing import TOKENIZERS, tiny_mistral4_params, tiny_vision, tiny_vision_params, write_native_checkpoint
from tests import llama_cpp_peer as peer

REGISTER = "Mistral4ForCausalLM:mistral3:Mistral3Model"  # the converter's class for Mistral 4, under the bare name
ADDED = tuple(f"mistral4.{key}" for key in LLAMA_4_KEYS)  # what hubtools writes beyond the converter (llama-4)


def mistral4(
    *, wrapped: bool, fp8: str | None = None, dense: int = 1, groups: int = 1, vocab: str = "tekken"
) -> ModelParams:
    """A tiny Mistral 4 (one leading dense layer by default), bare or in Small 4's vision wrapper; FP8 per tensor
    (Small 4) or in 128x128 blocks (Large 3: wide enough for whole blocks)."""
    changes: dict[str, object] = {
        "vocab_size": TOKENIZERS[vocab][2], "moe_first_k_dense_replace": dense, "moe_num_expert_groups": groups,
        "moe_num_expert_groups_per_tok": max(1, groups // 2),
    }  # fmt: skip
    if fp8 == "block":
        changes.update(dim=256, hidden_dim=384, q_lora_rank=128, kv_lora_rank=128, moe_expert_hidden_dim=128)
    text = tiny_mistral4_params(**changes)
    if fp8 is not None:
        text = dataclasses.replace(text, quantization=Fp8(block=True) if fp8 == "block" else Fp8())
    return tiny_vision_params(text=text, vision=tiny_vision(merge=2, layers=3)) if wrapped else text


def write_model(folder: Path, params: ModelParams, vocab: str = "tekken") -> Path:
    fp8 = params.text.quantization is not None
    native = write_native_checkpoint(folder, params, dtype=torch.bfloat16 if fp8 else torch.float32, tokenizer=vocab)
    if fp8 and not params.text.quantization.block:  # type: ignore[union-attr]  # one input scale for gate and up
        shard = next(native.glob("*.safetensors"))
        tensors = load_file(shard)
        for name in [n for n in tensors if ".experts." in n and n.endswith(".w3.qscale_act")]:
            tensors[name] = tensors[name.replace(".w3.", ".w1.")].clone()
        save_file(tensors, shard, metadata={"format": "pt"})
    return native


@pytest.fixture(scope="module")
def small4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small 4's shape (vision wrapper, float32; a v1 vocabulary, quick to check: the slow tests use tekken), its HF
    conversion and its F32 and Q8_0 files from native."""
    root = tmp_path_factory.mktemp("gguf-mistral4")
    write_model(root / "native", mistral4(wrapped=True, vocab="v1"), vocab="v1")
    convert(root / "native", root / "hf")
    export(root / "native", root / "gguf", quants="f32,q8_0", name="m")
    return root


def test_the_file_is_mistral4_with_kv_b_split_and_the_experts_fused_as_the_converter_writes_them(small4: Path) -> None:
    reader = FastReader(small4 / "gguf" / "m.F32.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "mistral4"
    assert fields["mistral4.attention.head_count_kv"] == 1  # MLA read as MQA
    assert fields["mistral4.attention.key_length"] == 16 + 16  # kv_lora_rank + qk_rope_head_dim
    assert (fields["mistral4.attention.key_length_mla"], fields["mistral4.attention.value_length_mla"]) == (24, 16)
    assert fields["mistral4.leading_dense_block_count"] == 1 and fields["mistral4.expert_shared_count"] == 1
    keys = list(fields)  # llama-4 scaling, which llama.cpp's converter omits (README, Mistral 4), after its keys:
    assert keys[keys.index("mistral4.rope.scaling.yarn_log_multiplier") + 1 :][:2] == [*ADDED]
    assert fields[ADDED[1]] == 1024 and abs(fields[ADDED[0]] - 0.1) < 1e-7  # llama_4_scaling's beta and length
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    assert shapes["blk.1.attn_k_b.weight"] == (4, 16, 8)  # [heads, kv_lora_rank, qk_nope]
    assert shapes["blk.1.attn_v_b.weight"] == (4, 16, 16)  # [heads, v_head_dim, kv_lora_rank]
    assert shapes["blk.1.ffn_gate_up_exps.weight"] == (8, 64, 64)  # [experts, 2 x expert width, dim]
    assert shapes["blk.1.ffn_down_exps.weight"] == (8, 64, 32)
    assert "blk.1.attn_kv_b.weight" not in shapes and "blk.0.ffn_gate.weight" in shapes  # layer 0: dense
    names = list(shapes)
    assert names.index("blk.1.ffn_down_exps.weight") + 1 == names.index("blk.1.ffn_gate_up_exps.weight")


def test_k_b_and_v_b_are_cut_from_kv_b_and_join_back_exactly() -> None:
    params = tiny_mistral4_params()
    family = family_named("mistral4")
    kv_b = np.random.default_rng(0).standard_normal((4 * (8 + 16), 16)).astype(np.float32)
    k_b, v_b = family.gguf_cut(params, "k_b", kv_b), family.gguf_cut(params, "v_b", kv_b)
    heads = kv_b.reshape(4, 24, 16)
    assert np.array_equal(k_b, heads[:, :8].transpose(0, 2, 1)) and np.array_equal(v_b, heads[:, 8:])
    assert np.array_equal(family.gguf_join(params, {"k_b": k_b, "v_b": v_b}), kv_b)


@pytest.mark.parametrize("quant", ["F32", pytest.param("Q8_0", marks=pytest.mark.slow)])
def test_verify_passes_every_tensor_and_the_forward_on_the_read_back_weights(small4: Path, quant: str) -> None:
    """F32: the forward on the read-back weights (k_b and v_b joined, experts split) is the original's, exactly."""
    report = verify_gguf(small4 / "native", small4 / "gguf" / f"m.{quant}.gguf", readback=False)
    assert report.passed, report.to_dict()
    logits = report.to_dict()["checks"]["logits"]
    if quant == "F32":
        assert logits["max_abs_dlogit"] == 0.0


def test_from_hf_the_same_file_as_from_native(small4: Path, tmp_path: Path) -> None:
    """The fused HF experts are read in place (each expert's halves in stored order): the same bytes result."""
    export(small4 / "hf", tmp_path, quants="q8_0", name="m")
    ours, native = FastReader(tmp_path / "m.Q8_0.gguf"), FastReader(small4 / "gguf" / "m.Q8_0.gguf")
    assert [t.name for t in ours.tensors] == [t.name for t in native.tensors]
    pairs = zip(ours.tensors, native.tensors, strict=True)
    assert all(np.array_equal(np.asarray(a.data), np.asarray(b.data)) for a, b in pairs)


def _edit_tensor(path: Path, name: str, change: object) -> None:
    """Rewrite tensor `name`'s bytes in the GGUF file in place with `change(array)` (same size)."""
    tensor = next(t for t in FastReader(path).tensors if t.name == name)
    data = np.array(tensor.data)
    new = change(data)  # type: ignore[operator]
    with path.open("r+b") as f:
        f.seek(tensor.data_offset)
        f.write(np.ascontiguousarray(new).tobytes())


def _swap_gate_and_up_of_expert_3(data: np.ndarray) -> np.ndarray:
    out = data.copy()
    half = data.shape[1] // 2
    out[3, :half], out[3, half:] = data[3, half:], data[3, :half]
    return out


def _k_b_heads_swapped(data: np.ndarray) -> np.ndarray:
    return data[[1, 0, 2, 3]]


@pytest.mark.parametrize(
    ("tensor", "change", "named", "logits"),
    [
        ("blk.2.ffn_gate_up_exps.weight", _swap_gate_and_up_of_expert_3, "(expert 3, layers.2.experts.3.w1.weight)",
         False),
        ("blk.1.attn_k_b.weight", _k_b_heads_swapped, "tensor 'blk.1.attn_k_b.weight'", True),
    ],
    ids=["gate-up-swapped", "k_b-heads-swapped"],
)  # fmt: skip
def test_a_planted_fault_in_the_file_fails_verify_named(
    small4: Path, tmp_path: Path, tensor: str, change: object, named: str, logits: bool
) -> None:
    """Named by the tensor check; the k_b fault also moves the logits (the forward reads k_b back through the join)."""
    path = tmp_path / "m.F32.gguf"
    path.write_bytes((small4 / "gguf" / "m.F32.gguf").read_bytes())
    _edit_tensor(path, tensor, change)
    report = verify_gguf(small4 / "native", path, readback=False, check_logits=logits)
    checks = report.to_dict()["checks"]
    assert not report.passed
    assert any(named in p for p in checks["tensors"]["problems"]), checks["tensors"]
    if logits:
        assert not checks["logits"]["passed"] and checks["logits"]["max_abs_dlogit"] > 1e-3


@pytest.mark.parametrize("kind", ["bare-dense0-groups2", "fp8"])
def test_bare_mistral4_and_fp8_sources_verify_exactly(tmp_path: Path, kind: str) -> None:
    """The bare `Mistral4ForCausalLM` (here no leading dense layer, two expert groups) exports as the wrapper's text
    model does; an FP8 source is dequantized per expert half, each by its own scale (the reference's rule: F32 is
    exact)."""
    params = mistral4(wrapped=False, dense=0, groups=2, vocab="v1") if kind != "fp8" else None
    params = params or mistral4(wrapped=False, fp8="tensor", vocab="v1")
    native = write_model(tmp_path / "native", params, vocab="v1")
    export(native, tmp_path / "gguf", quants="f32", name="m")
    report = verify_gguf(native, tmp_path / "gguf" / "m.F32.gguf", readback=False)
    assert report.passed, report.to_dict()
    assert report.to_dict()["checks"]["logits"]["max_abs_dlogit"] == 0.0
    assert FastReader(tmp_path / "gguf" / "m.F32.gguf").fields["general.architecture"].contents() == "mistral4"


# -- equal to llama.cpp's converter (slow, with the peer) ----------------------------------------------------------

needs_peer = pytest.mark.skipif(peer.tree() is None, reason="llama.cpp's tree not found (HUBTOOLS_LLAMA_CPP)")
MATRIX = [
    ("bare", 1, 1, "f32"), ("bare", 0, 2, "q8_0"), ("bare", 2, 1, "bf16"),
    ("wrapped", 0, 2, "f16"), ("wrapped", 1, 1, "q8_0"),
]  # fmt: skip


@pytest.mark.slow
@needs_peer
@pytest.mark.parametrize(("kind", "dense", "groups", "outtype"), MATRIX)
def test_equal_to_llama_cpp_s_converter_from_native_and_from_hf(
    tmp_path: Path, kind: str, dense: int, groups: int, outtype: str
) -> None:
    """The bare class with its name mapped to the converter's `Mistral3Model` (which picks `Mistral4Model` by
    model_type, as for the wrapper): what the converter writes if it registered it."""
    from tests.test_gguf_llama_cpp import assert_same_gguf

    native = write_model(tmp_path / "native", mistral4(wrapped=kind == "wrapped", dense=dense, groups=groups))
    convert(native, tmp_path / "hf")
    register = REGISTER if kind == "bare" else None
    theirs = peer.convert_hf(tmp_path / "hf", tmp_path / f"peer.{outtype}.gguf", outtype, register=register)
    for source, out in ((native, "out"), (tmp_path / "hf", "out-hf")):
        result = export(source, tmp_path / out, quants=outtype, name="m")
        assert_same_gguf(tmp_path / out / result.outputs[0].files[0], theirs, added=ADDED)


@pytest.mark.slow
@needs_peer
def test_the_converter_does_not_register_the_bare_class(tmp_path: Path) -> None:
    native = write_model(tmp_path / "native", mistral4(wrapped=False))
    convert(native, tmp_path / "hf")
    with pytest.raises(RuntimeError, match="Mistral4ForCausalLM"):
        peer.convert_hf(tmp_path / "hf", tmp_path / "peer.gguf", "f16")


@pytest.mark.slow
@needs_peer
def test_fp8_per_tensor_the_converter_fails_on_transformers_layout_and_hubtools_equals_it_on_the_dequantized(
    tmp_path: Path,
) -> None:
    """Small 4's FP8: the converter multiplies the fused `gate_up_proj` [E, 2I, H] by its per-half scales
    `gate_up_proj_scale_inv` [E, 2, 1] (transformers 5.x's layout) and fails to broadcast. hubtools dequantizes each
    half by its own scale: its BF16 file equals the converter's on `convert --dtype bfloat16`, from the FP8 native
    checkpoint and from the FP8 HF folder alike."""
    from tests.test_gguf_llama_cpp import assert_same_gguf

    native = write_model(tmp_path / "native", mistral4(wrapped=True, fp8="tensor"))
    convert(native, tmp_path / "hf")
    with pytest.raises(RuntimeError, match=r"broadcast.*\[8, 2, 1\]"):
        peer.convert_hf(tmp_path / "hf", tmp_path / "peer-fp8.gguf", "bf16")
    convert(native, tmp_path / "hf-bf16", dtype="bfloat16")
    theirs = peer.convert_hf(tmp_path / "hf-bf16", tmp_path / "peer.bf16.gguf", "bf16")
    for source, out in ((native, "out"), (tmp_path / "hf", "out-hf")):
        result = export(source, tmp_path / out, quants="bf16", name="m")
        assert_same_gguf(tmp_path / out / result.outputs[0].files[0], theirs, added=ADDED)


@pytest.mark.slow
@needs_peer
def test_fp8_blocks_equal_the_converter_s_own_dequantization(tmp_path: Path) -> None:
    """Large 3's 128x128 block FP8: the converter dequantizes the fused experts' block scales itself; equal."""
    from tests.test_gguf_llama_cpp import assert_same_gguf

    native = write_model(tmp_path / "native", mistral4(wrapped=True, fp8="block"))
    convert(native, tmp_path / "hf")
    theirs = peer.convert_hf(tmp_path / "hf", tmp_path / "peer.bf16.gguf", "bf16")
    for source, out in ((native, "out"), (tmp_path / "hf", "out-hf")):
        result = export(source, tmp_path / out, quants="bf16", name="m")
        assert_same_gguf(tmp_path / out / result.outputs[0].files[0], theirs, added=ADDED)
