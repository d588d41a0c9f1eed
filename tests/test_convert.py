"""Conversion: every native layout, both directions, bit-exact round trips, determinism, transformers load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.converter import convert
from hubtools.model.transforms import interleaved_to_half
from hubtools.testing import LAYOUTS, synthetic_tensors, tiny_params
from tests.helpers import same_bytes, tensors_of


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_native_layout_reads_the_tensors_written(make_native: Callable[..., Path], layout: str) -> None:
    params = tiny_params()
    folder = make_native(layout, params, layout=layout, tokenizer=None)
    assert dict(synthetic_tensors(params)).keys() == tensors_of(folder).keys()
    for name, expected in synthetic_tensors(params):
        assert same_bytes(tensors_of(folder)[name], expected), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_native_to_hf_to_native_is_bit_exact(make_native: Callable[..., Path], tmp_path: Path, layout: str) -> None:
    native = make_native("src", layout=layout, tokenizer="v1")
    convert(native, tmp_path / "hf", max_shard_size=1_000_000)
    convert(tmp_path / "hf", tmp_path / "back")
    original, back = tensors_of(native), tensors_of(tmp_path / "back")
    assert list(back) == list(original)  # same names in the same order
    assert all(same_bytes(original[n], back[n]) for n in original)
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == (native / "tokenizer.model").read_bytes()
    params = json.loads((tmp_path / "back" / "params.json").read_text())
    assert params["rope_theta"] == 1e6 and params["moe"] == {"num_experts": 4, "num_experts_per_tok": 2}


def test_hf_output_layout_index_and_grouping(make_native: Callable[..., Path], tmp_path: Path) -> None:
    native = make_native(tokenizer=None)
    result = convert(native, tmp_path / "hf", max_shard_size=2_000_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    sizes = {n: src.nbytes for n, src in open_checkpoint(tmp_path / "hf").tensors.items()}
    assert index["metadata"]["total_size"] == sum(sizes.values()) == result.bytes
    order = list(index["weight_map"])
    layer_of = [int(n.split(".")[2]) for n in order if n.startswith("model.layers.")]
    assert layer_of == sorted(layer_of) and order[0] == "model.embed_tokens.weight"


def test_conversion_is_deterministic(make_native: Callable[..., Path], tmp_path: Path) -> None:
    native = make_native(layout="pth", tokenizer=None)
    convert(native, tmp_path / "a", max_shard_size=1_500_000)
    convert(native, tmp_path / "b", max_shard_size=1_500_000)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_untouched_tensors_are_byte_copies_and_qk_are_permuted(
    make_native: Callable[..., Path], tmp_path: Path
) -> None:
    params = tiny_params(n_heads=4, n_kv_heads=1)
    native = make_native(params=params, tokenizer=None)
    result = convert(native, tmp_path / "hf")
    assert result.copied_tensors == result.tensors - 2 * params.n_layers
    src, out = tensors_of(native), tensors_of(tmp_path / "hf")
    wk = src["layers.0.attention.wk.weight"]
    half = wk.shape[0] // 2
    assert torch.equal(out["model.layers.0.self_attn.k_proj.weight"][:half], wk[0::2])


def test_dtype_cast_and_config(make_native: Callable[..., Path], tmp_path: Path) -> None:
    native = make_native(params=tiny_params(moe=False, sliding_window=16), tokenizer=None)
    convert(native, tmp_path / "hf", dtype=torch.float16)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"] and config["model_type"] == "mistral"
    assert config["rope_theta"] == 1e4 and config["sliding_window"] == 16 and config["torch_dtype"] == "float16"
    assert {s.dtype for s in open_checkpoint(tmp_path / "hf").tensors.values()} == {torch.float16}


@pytest.mark.parametrize("moe", [True, False])
def test_transformers_loads_the_output_and_matches_the_expected_weights(
    make_native: Callable[..., Path], tmp_path: Path, moe: bool
) -> None:
    from transformers import AutoModelForCausalLM

    native = make_native(params=tiny_params(moe=moe), tokenizer=None)
    convert(native, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    state = model.state_dict()
    src = tensors_of(native)
    assert torch.equal(state["model.embed_tokens.weight"], src["tok_embeddings.weight"])
    assert torch.equal(state["lm_head.weight"], src["output.weight"])
    assert model(torch.tensor([[1, 5, 9]])).logits.shape == (1, 3, 32000)


def test_to_native_splits_above_the_shard_size_and_reads_back(make_native: Callable[..., Path], tmp_path: Path) -> None:
    native = make_native(tokenizer="v3", params=tiny_params(vocab_size=32768))
    convert(native, tmp_path / "hf")
    result = convert(tmp_path / "hf", tmp_path / "back", to="native", max_shard_size=3_000_000)
    shards = sorted(p.name for p in (tmp_path / "back").glob("consolidated*.safetensors"))
    assert len(shards) > 1 and shards == [
        f"consolidated-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)
    ]
    assert set(result.files) >= {"params.json", "tokenizer.model.v3", *shards}
    original, back = tensors_of(native), tensors_of(tmp_path / "back")
    assert all(same_bytes(original[n], back[n]) for n in original)


def test_folder_with_both_layouts_needs_a_direction(make_native: Callable[..., Path], tmp_path: Path) -> None:
    from hubtools.errors import LayoutError

    native = make_native(tokenizer=None)
    convert(native, tmp_path / "hf")
    for f in (tmp_path / "hf").iterdir():
        (native / f.name).write_bytes(f.read_bytes())
    with pytest.raises(LayoutError, match="expected one layout, found both native"):
        convert(native, tmp_path / "x")
    convert(native, tmp_path / "x", to="hf")
    assert (tmp_path / "x" / "config.json").exists()


def test_converting_without_a_cast_never_imports_torch(make_native: Callable[..., Path], tmp_path: Path) -> None:
    """Start-up matters on small files: the byte path (copies + q/k row permutation) runs on numpy alone."""
    import subprocess
    import sys

    native = make_native(layout="pth-split", tokenizer="v1")
    script = (
        f"import sys; from hubtools.converter import convert; from pathlib import Path; "
        f"convert(Path({str(native)!r}), Path({str(tmp_path / 'hf')!r})); "
        f"from hubtools.inspection import summarize; summarize(Path({str(tmp_path / 'hf')!r})); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
    original, converted = tensors_of(native), tensors_of(tmp_path / "hf")
    wq = original["layers.1.attention.wq.weight"]
    assert same_bytes(converted["model.layers.1.self_attn.q_proj.weight"], interleaved_to_half(wq, 4))
