"""GGUF export with gguf-py on tiny synthetic models: names, order, types, values, metadata, tokenizers,
splits, atomic output and --force, from native and from HF (the same bytes)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from gguf import GGMLQuantizationType, GGUFWriter, TokenType, quants

from hubtools.converter import convert
from hubtools.errors import CorruptFileError, DestinationError
from hubtools.gguf.export import export
from hubtools.gguf.files import FastReader
from hubtools.gguf.quant import QuantizeError, parse_quants, tensor_type
from hubtools.testing import TOKENIZERS, synthetic_tensors, tiny_params
from hubtools.tokenization.chat_template import build_chat_template
from hubtools.tokenization.sentencepiece_model import CONTROL, read_sentencepiece_model
from tests.helpers import assert_one_line_error

Q = GGMLQuantizationType


def reader(folder: Path, name: str) -> FastReader:
    return FastReader(folder / name)


def field(r: FastReader, key: str) -> object:
    return r.fields[key].contents()


def as_float(t: object) -> np.ndarray:
    data = np.asarray(t.data)  # type: ignore[attr-defined]
    qtype = t.tensor_type  # type: ignore[attr-defined]
    if qtype in (Q.F32, Q.F16):
        return data.astype(np.float32)
    return quants.dequantize(data, qtype)


@pytest.fixture(scope="module")
def moe_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A tiny Mixtral (v1 tokenizer) exported to F16 and Q8_0, and its native tensors."""
    from hubtools.testing import write_native_checkpoint

    root = tmp_path_factory.mktemp("gguf")
    params = tiny_params(moe=True)
    native = write_native_checkpoint(root / "native", params, tokenizer="v1")
    export(native, root / "out", quants=parse_quants("f16,q8_0"), name="tiny")
    return native, root / "out", dict(synthetic_tensors(params))


def test_mixtral_tensors_follow_llama_cpp_names_order_and_types(moe_files: tuple[Path, Path, dict]) -> None:
    _, out, _ = moe_files
    f16, q8 = reader(out, "tiny.F16.gguf"), reader(out, "tiny.Q8_0.gguf")
    names = [t.name for t in f16.tensors]
    assert names[:2] == ["output.weight", "token_embd.weight"] and names[-1] == "output_norm.weight"
    layer0 = [n.removeprefix("blk.0.").removesuffix(".weight") for n in names if n.startswith("blk.0.")]
    assert layer0 == [
        "ffn_gate_exps", "ffn_down_exps", "ffn_up_exps", "ffn_gate_inp",
        "attn_norm", "ffn_norm", "attn_k", "attn_output", "attn_q", "attn_v",
    ]  # fmt: skip
    types16 = {t.name: t.tensor_type for t in f16.tensors}
    types8 = {t.name: t.tensor_type for t in q8.tensors}
    assert types16["blk.0.ffn_gate_inp.weight"] == types8["blk.0.ffn_gate_inp.weight"] == Q.F32
    assert types16["blk.1.attn_norm.weight"] == types8["output_norm.weight"] == Q.F32
    assert types16["blk.1.ffn_down_exps.weight"] == Q.F16
    assert types8["blk.1.ffn_down_exps.weight"] == types8["token_embd.weight"] == types8["output.weight"] == Q.Q8_0
    assert field(f16, "general.architecture") == "llama" and field(q8, "general.file_type") == 7


def test_values_are_the_native_tensors_experts_stacked_and_qk_unpermuted(moe_files: tuple[Path, Path, dict]) -> None:
    _, out, native = moe_files
    tensors = {t.name: t for t in reader(out, "tiny.F16.gguf").tensors}
    q = native["layers.1.attention.wq.weight"].float().half().float().numpy()
    assert np.array_equal(as_float(tensors["blk.1.attn_q.weight"]), q)
    stacked = torch.stack([native[f"layers.0.feed_forward.experts.{e}.w2.weight"] for e in range(4)])
    assert np.array_equal(as_float(tensors["blk.0.ffn_down_exps.weight"]), stacked.float().half().float().numpy())
    gate = native["layers.0.feed_forward.gate.weight"].float().numpy()
    assert np.array_equal(as_float(tensors["blk.0.ffn_gate_inp.weight"]), gate)
    q8 = {t.name: t for t in reader(out, "tiny.Q8_0.gguf").tensors}
    w1 = native["layers.1.feed_forward.experts.3.w1.weight"].float().numpy()
    expected = quants.quantize(w1, Q.Q8_0)
    assert np.array_equal(np.asarray(q8["blk.1.ffn_gate_exps.weight"].data)[3], expected)


def test_model_metadata_matches_params(moe_files: tuple[Path, Path, dict]) -> None:
    _, out, _ = moe_files
    r = reader(out, "tiny.Q8_0.gguf")
    expected = {
        "llama.block_count": 2, "llama.context_length": 32768, "llama.embedding_length": 64,
        "llama.feed_forward_length": 128, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.freq_base": 1e6, "llama.expert_count": 4, "llama.expert_used_count": 2,
        "llama.attention.key_length": 16, "llama.attention.value_length": 16, "llama.vocab_size": 32000,
        "llama.rope.dimension_count": 16,
    }  # fmt: skip
    assert {k: field(r, k) for k in expected} == expected
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert not any("sliding" in k for k in r.fields)


def test_sentencepiece_vocab_has_real_scores_and_control_types(moe_files: tuple[Path, Path, dict]) -> None:
    native, out, _ = moe_files
    r = reader(out, "tiny.F16.gguf")
    pieces = read_sentencepiece_model(native / "tokenizer.model").pieces
    assert field(r, "tokenizer.ggml.model") == "llama" and field(r, "tokenizer.ggml.pre") == "default"
    assert field(r, "tokenizer.ggml.tokens") == [p.piece for p in pieces]
    assert field(r, "tokenizer.ggml.scores") == pytest.approx([p.score for p in pieces])
    types = field(r, "tokenizer.ggml.token_type")
    assert types[:3] == [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]  # type: ignore[index]
    assert types[3] == TokenType.BYTE  # type: ignore[index]
    ids = (field(r, "tokenizer.ggml.bos_token_id"), field(r, "tokenizer.ggml.eos_token_id"))
    assert ids == (1, 2) and field(r, "tokenizer.ggml.add_bos_token") is True


@pytest.mark.parametrize("version", ["v3", "v7"])
def test_instruct_sentencepiece_control_tokens_and_chat_template(
    make_native: Callable[..., Path], tmp_path: Path, version: str
) -> None:
    params = tiny_params(moe=False, n_layers=1, vocab_size=TOKENIZERS[version][2])
    native = make_native(version, params, tokenizer=version)
    export(native, tmp_path / "out", quants=parse_quants("f16"), name="m")
    r = reader(tmp_path / "out", "m.F16.gguf")
    model = read_sentencepiece_model(next(native.glob("tokenizer.model*")))
    tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    controls = [i for i, p in enumerate(model.pieces) if p.type == CONTROL]
    assert tokens[3] == "[INST]" and all(types[i] == TokenType.CONTROL for i in controls)  # type: ignore[index]
    assert field(r, "tokenizer.chat_template") == build_chat_template("mistral", version, spm=True)


def test_tekken_is_byte_level_bpe_with_the_tekken_pre_tokenizer(tmp_path: Path) -> None:
    from hubtools.gguf.vocab import add_vocab, hf_tokenizer_dir
    from hubtools.model.hf_config import to_hf_config
    from hubtools.testing import copy_tokenizer

    native = copy_tokenizer("tekken", tmp_path)
    config = to_hf_config(tiny_params(vocab_size=131072), dtype="bfloat16").config
    writer = GGUFWriter(path=None, arch="llama")
    add_vocab(writer, native, hf_tokenizer_dir(native, config, chat_template="auto", workdir=tmp_path), 131072)
    kv = {k: v.value for k, v in writer.kv_data[0].items()}
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "tekken"
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == 131072 and tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert set(types[:1000]) == {TokenType.CONTROL} and types[1000] == TokenType.NORMAL
    assert tokens[1000 + 65] == "A" and tokens[1000 + 32] == "\u0120"  # byte-level: " " is "Ġ"
    assert len(kv["tokenizer.ggml.merges"]) > 100_000
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"]) == (1, 2)


def test_from_hf_gives_the_same_bytes_as_from_native(moe_files: tuple[Path, Path, dict], tmp_path: Path) -> None:
    native, out, _ = moe_files
    convert(native, tmp_path / "hf")  # the shard plan export assumes for a native source
    export(tmp_path / "hf", tmp_path / "out", quants=parse_quants("q8_0"), name="tiny")
    assert (tmp_path / "out" / "tiny.Q8_0.gguf").read_bytes() == (out / "tiny.Q8_0.gguf").read_bytes()


def test_from_hf_in_other_shards_gives_the_same_metadata_and_tensors_in_its_reading_order(
    moe_files: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    native, out, _ = moe_files
    convert(native, tmp_path / "hf", max_shard_size=2_000_000)
    export(tmp_path / "hf", tmp_path / "out", quants=parse_quants("q8_0"), name="tiny")
    a, b = reader(tmp_path / "out", "tiny.Q8_0.gguf"), reader(out, "tiny.Q8_0.gguf")
    assert {key: field(a, key) for key in a.fields} == {key: field(b, key) for key in b.fields}
    tensors_a = {t.name: bytes(np.asarray(t.data)) for t in a.tensors}
    assert tensors_a == {t.name: bytes(np.asarray(t.data)) for t in b.tensors}
    names = list(tensors_a)  # lm_head.weight, first in one sorted shard, now comes with the last shard
    assert (names[0], names[-2:]) == ("token_embd.weight", ["output_norm.weight", "output.weight"])


def test_rows_not_a_multiple_of_the_block_fall_back_to_f16() -> None:
    assert tensor_type("blk.0.attn_output.weight", (64, 80), Q.Q8_0) == Q.F16
    assert tensor_type("blk.0.attn_output.weight", (64, 96), Q.Q8_0) == Q.Q8_0
    assert tensor_type("token_embd.weight", (10, 64), Q.Q4_0) == Q.Q4_0


def test_split_files_follow_llama_cpp_convention(moe_files: tuple[Path, Path, dict], tmp_path: Path) -> None:
    native, out, _ = moe_files
    result = export(native, tmp_path / "s", quants=parse_quants("f16"), name="tiny", split_max_size=3_000_000)
    files = result.outputs[0].files
    assert len(files) > 1 and files[0] == f"tiny.F16-00001-of-{len(files):05d}.gguf"
    parts = [FastReader(tmp_path / "s" / f) for f in files]
    assert [field(p, "split.no") for p in parts] == list(range(len(files)))
    assert {field(p, "split.count") for p in parts} == {len(files)}
    split = {t.name: bytes(np.asarray(t.data)) for p in parts for t in p.tensors}
    whole = {t.name: bytes(np.asarray(t.data)) for t in reader(out, "tiny.F16.gguf").tensors}
    assert split == whole


def test_existing_output_is_refused_and_force_replaces_only_its_own_files(
    moe_files: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    native, _, _ = moe_files
    dst = tmp_path / "out"
    export(native, dst, quants=parse_quants("f16"), name="tiny", split_max_size=3_000_000)
    (dst / "README.md").write_text("mine")
    with pytest.raises(DestinationError, match="tiny.F16-00001-of-0000.\\.gguf: already exists"):
        export(native, dst, quants=parse_quants("f16"), name="tiny")
    export(native, dst, quants=parse_quants("f16"), name="tiny", force=True)
    assert sorted(p.name for p in dst.iterdir()) == [".hubtools", "README.md", "tiny.F16.gguf"]  # README.md: untouched
    assert (dst / "README.md").read_text() == "mine"


def test_a_failure_leaves_nothing_behind(make_native: Callable[..., Path], tmp_path: Path) -> None:
    native = make_native("bad", tiny_params(), tokenizer="v1")
    weights = native / "consolidated.safetensors"
    size = os.path.getsize(weights)
    with weights.open("r+b") as f:
        f.truncate(size - 100)
    truncated = f"{weights}: truncated (header needs {size} bytes, file has {size - 100})"
    with pytest.raises(CorruptFileError, match=f"^{re.escape(truncated)}$"):
        export(native, tmp_path / "out", quants=parse_quants("f16"), name="m")
    assert not (tmp_path / "out").exists()


def test_unknown_quant_and_missing_llama_quantize_are_one_line_errors(
    moe_files: tuple[Path, Path, dict], tmp_path: Path, run_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(QuantizeError, match="unknown quant type 'q9'"):
        parse_quants("f16,q9")
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_cli("gguf", moe_files[0], tmp_path / "k", "--quant", "q4_k_m")
    assert_one_line_error(result, "llama-quantize: not found on PATH", "install llama.cpp")
    assert not (tmp_path / "k").exists()


def test_cli_json_summary(moe_files: tuple[Path, Path, dict], tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    import json

    result = run_cli("gguf", moe_files[0], tmp_path / "o", "--quant", "bf16", "--name", "x", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["outputs"] == [{"quant": "BF16", "files": ["x.BF16.gguf"], "bytes": summary["outputs"][0]["bytes"]}]
    assert (tmp_path / "o" / "x.BF16.gguf").stat().st_size == summary["outputs"][0]["bytes"]


@pytest.mark.parametrize("name", ["a/b", ".hidden", "a\\b"])
def test_a_name_that_is_not_a_file_stem_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    with pytest.raises(DestinationError, match=rf"^name '{re.escape(name)}': expected a file stem"):
        export(tmp_path, tmp_path / "out", quants=parse_quants("f16"), name=name)
