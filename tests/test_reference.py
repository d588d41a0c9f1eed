"""The clean-room reference forward against transformers, and the layer-by-layer transformers path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.converter import convert
from hubtools.model import ops
from hubtools.model.family import ModelParams
from hubtools.model.params import default_rope_theta
from hubtools.model.transforms import interleaved_to_half
from hubtools.testing import synthetic_tensors, tiny_params, write_native_checkpoint
from hubtools.verification import reference
from hubtools.verification.hf_forward import LayeredModel, load_config, whole_model_logits

VOCAB = 512
MODELS = {
    "mixtral-gqa": tiny_params(vocab_size=VOCAB),
    "mistral-gqa": tiny_params(moe=False, vocab_size=VOCAB),
    "mistral-mqa": tiny_params(moe=False, vocab_size=VOCAB, n_kv_heads=1),
    "mixtral-head-dim-24": tiny_params(vocab_size=VOCAB, head_dim=24, top_k=1),
    "mistral-window-6": tiny_params(moe=False, vocab_size=VOCAB, sliding_window=6),
    "mixtral-window-5-theta-1e4": tiny_params(vocab_size=VOCAB, sliding_window=5, rope_theta=1e4, n_kv_heads=1),
}
TOKENS = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ModelParams]:
    root = tmp_path_factory.mktemp(request.param)
    params = MODELS[request.param]
    native = write_native_checkpoint(root / "native", params, dtype=torch.float32, tokenizer=None)
    convert(native, root / "hf")
    return native, root / "hf", params


def reference_logits(native: Path, params: ModelParams) -> torch.Tensor:
    with open_checkpoint(native) as ckpt:
        return reference.forward(TOKENS, ckpt.read, params, rope_theta=default_rope_theta(params))


def layered_logits(hf: Path) -> torch.Tensor:
    with open_checkpoint(hf) as ckpt:
        model = LayeredModel(load_config(hf), ckpt.read, torch.float32)
        h = model.embed(TOKENS)
        for layer in range(ckpt.params.n_layers):
            h = model.layer(h, layer)
        return model.head(h)


def test_reference_equals_transformers_whole_model_in_float32(pair: tuple[Path, Path, ModelParams]) -> None:
    native, hf, params = pair
    expected = whole_model_logits(hf, TOKENS, torch.float32)
    assert (reference_logits(native, params) - expected).abs().max() <= 1e-4


def test_layered_transformers_equals_whole_model(pair: tuple[Path, Path, ModelParams]) -> None:
    _, hf, _ = pair
    layered = layered_logits(hf)
    assert (layered - whole_model_logits(hf, TOKENS, torch.float32)).abs().max() <= 1e-6
    default_kernels = whole_model_logits(hf, TOKENS, torch.float32, attention=None, experts=None)  # sdpa, grouped_mm
    assert (layered - default_kernels).abs().max() <= 1e-5


def test_rope_theta_is_explicit_and_matters(pair: tuple[Path, Path, ModelParams]) -> None:
    native, _, params = pair
    with open_checkpoint(native) as ckpt:
        wrong = reference.forward(TOKENS, ckpt.read, params, rope_theta=default_rope_theta(params) * 7)
    assert (wrong - reference_logits(native, params)).abs().max() > 1e-3


def test_interleaved_rotary_equals_rotate_half_after_the_conversion_permutation() -> None:
    from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

    heads, head_dim, seq = 2, 8, 5
    weight = torch.randn(heads * head_dim, 16, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, seq, 16, generator=torch.Generator().manual_seed(1))
    native = (x @ weight.T).view(1, seq, heads, head_dim)
    rotated = ops.apply_rotary(native, ops.rotary_angles(torch.arange(seq), head_dim, 1e4))
    hf = (x @ interleaved_to_half(weight, heads).T).view(1, seq, heads, head_dim).transpose(1, 2)
    freqs = 1e4 ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(seq).float(), freqs)
    cos, sin = torch.cat([angles, angles], -1).cos()[None], torch.cat([angles, angles], -1).sin()[None]
    hf_rotated, _ = apply_rotary_pos_emb(hf, hf, cos, sin)
    assert torch.allclose(
        interleaved_to_half(rotated.reshape(seq, -1).T, heads).T, hf_rotated.transpose(1, 2).reshape(seq, -1), atol=1e-6
    )


def test_sliding_window_keeps_the_last_w_keys_including_the_query() -> None:
    mask = ops.attention_mask(torch.arange(6), 3)
    allowed = (mask == 0).int()
    assert allowed[5].tolist() == [0, 0, 0, 1, 1, 1]
    assert allowed[1].tolist() == [1, 1, 0, 0, 0, 0]
    assert (ops.attention_mask(torch.arange(6), None) == 0).int().tril().sum() == 21


def test_moe_softmax_over_top_k_equals_softmax_all_then_renormalise() -> None:
    logits = torch.randn(10, 8, generator=torch.Generator().manual_seed(2))
    top, _ = torch.topk(logits, 2)
    probs, _ = torch.topk(torch.softmax(logits, -1), 2)
    assert torch.allclose(torch.softmax(top, -1), probs / probs.sum(-1, keepdim=True), atol=1e-6)


def test_a_layer_loads_only_its_own_tensors_and_experts_on_demand() -> None:
    params = tiny_params(vocab_size=VOCAB, num_experts=8, top_k=1)
    weights = dict(synthetic_tensors(params, dtype=torch.float32))
    asked: list[str] = []

    def get(name: str) -> torch.Tensor:
        asked.append(name)
        return weights[name]

    model = reference.ReferenceModel(params, get, rope_theta=1e6)
    model.layer(model.embed(TOKENS[:, :3]), 1)
    layer_names = asked[1:]
    assert all(n.startswith("layers.1.") for n in layer_names)
    experts = {n.split(".")[4] for n in layer_names if ".experts." in n}
    assert 0 < len(experts) <= 6  # 6 tokens, top-1: unrouted experts are never loaded


def test_packed_prompts_give_the_padded_logits_on_both_sides(pair: tuple[Path, Path, ModelParams]) -> None:
    from hubtools.verification.logits import Prompts

    native, hf, params = pair
    lengths = (20, 7, 1, 13)  # a one-token sequence too: its position 0 follows another's 0
    padded = Prompts(TOKENS.repeat(2, 1), lengths, "test")
    packed = padded.pack()
    assert packed.tokens.shape == (1, sum(lengths)) and bool(packed.valid.all())
    theta = default_rope_theta(params)
    with open_checkpoint(native) as ckpt:
        ref_padded = reference.forward(padded.tokens, ckpt.read, params, rope_theta=theta)[padded.valid]
        ref = reference.ReferenceModel(params, ckpt.read, rope_theta=theta, positions=packed.positions)
        h = ref.embed(packed.tokens)
        for layer in range(params.n_layers):
            h = ref.layer(h, layer)
        ref_packed = ref.head(h)[0]
    assert (ref_packed - ref_padded).abs().max() <= 1e-5
    with open_checkpoint(hf) as ckpt:
        model = LayeredModel(load_config(hf), ckpt.read, torch.float32, positions=packed.positions)
        h = model.embed(packed.tokens)
        for layer in range(ckpt.params.n_layers):
            h = model.layer(h, layer)
        hf_packed = model.head(h)[0]
    assert (hf_packed - ref_padded).abs().max() <= 1e-4
    assert (hf_packed - whole_model_logits(hf, padded.tokens, torch.float32)[padded.valid]).abs().max() <= 1e-5
