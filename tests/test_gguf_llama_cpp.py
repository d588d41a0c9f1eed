"""hubtools' GGUF files equal llama.cpp's converter's output on hubtools' own HF conversion, tensor for
tensor (name, order, shape, type, bytes) and in every metadata key except general.*; llama.cpp's own
tokenizer on hubtools' GGUF equals mistral-common; K-quants go through llama-quantize.

Skipped when the peer (llama.cpp's tree, see tests/llama_cpp_peer.py and the README) is absent; marked
slow (each converter run costs seconds): `pytest -m slow tests/test_gguf_llama_cpp.py` runs the matrix
(MoE and dense; odd head_dim, MQA, sliding window; v1/v3/v7/tekken; f32/f16/bf16/q8_0).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hubtools.converter import convert
from hubtools.gguf.export import export
from hubtools.gguf.files import FastReader
from hubtools.gguf.quant import parse_quants
from hubtools.testing import TOKENIZERS, tiny_params, write_native_checkpoint
from tests import llama_cpp_peer as peer

pytestmark = pytest.mark.skipif(peer.tree() is None, reason="llama.cpp's tree not found (HUBTOOLS_LLAMA_CPP)")

MODELS = {  # name -> (params kwargs, tokenizer)
    "moe-v3": ({"moe": True}, "v3"),
    "moe-v1-mqa-window": ({"moe": True, "n_kv_heads": 1, "sliding_window": 4096}, "v1"),
    "dense-v7-odd-head-dim": ({"moe": False, "head_dim": 20}, "v7"),
    "moe-tekken-odd-head-dim": ({"moe": True, "head_dim": 24, "n_heads": 4, "n_kv_heads": 1}, "tekken"),
}
MATRIX = [(m, t) for m in MODELS for t in ("f32", "f16", "bf16", "q8_0")]


def make_model(tmp_path: Path, model: str) -> tuple[Path, Path]:
    kwargs, tokenizer = MODELS[model]
    params = tiny_params(vocab_size=TOKENIZERS[tokenizer][2], **kwargs)  # type: ignore[arg-type]
    native = write_native_checkpoint(tmp_path / model, params, tokenizer=tokenizer)
    hf = tmp_path / f"{model}-hf"
    convert(native, hf)
    return native, hf


def _fields(path: Path) -> dict[str, object]:
    reader = FastReader(path)
    return {k: (f.types, f.contents()) for k, f in reader.fields.items() if not k.startswith(("general.", "GGUF."))}


def _tensors(path: Path) -> list[tuple[str, str, list[int], bytes]]:
    return [
        (t.name, t.tensor_type.name, [int(n) for n in t.shape], np.asarray(t.data).tobytes())
        for t in FastReader(path).tensors
    ]


def assert_same_gguf(ours: Path, theirs: Path, *, added: tuple[str, ...] = ()) -> None:
    """Equal key for key (general.* aside) and tensor for tensor; `added`: keys only hubtools writes."""
    a, b = _fields(ours), _fields(theirs)
    assert all(key in a and key not in b for key in added), added
    for key in added:
        a.pop(key)
    assert list(a) == list(b)
    for key in a:
        assert a[key] == b[key], key
    ta, tb = _tensors(ours), _tensors(theirs)
    assert [t[:3] for t in ta] == [t[:3] for t in tb]
    differing = [x[0] for x, y in zip(ta, tb, strict=True) if x[3] != y[3]]
    assert differing == []


def check_equal_to_converter(tmp_path: Path, model: str, outtype: str) -> None:
    native, hf = make_model(tmp_path, model)
    theirs = peer.convert_hf(hf, tmp_path / f"peer.{outtype}.gguf", outtype)
    result = export(native, tmp_path / "out", quants=parse_quants(outtype), name="m")
    assert_same_gguf(tmp_path / "out" / result.outputs[0].files[0], theirs)
    from_hf = export(hf, tmp_path / "out-hf", quants=parse_quants(outtype), name="m")
    assert_same_gguf(tmp_path / "out-hf" / from_hf.outputs[0].files[0], theirs)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "outtype"), MATRIX)
def test_gguf_from_native_and_from_hf_equals_llama_cpp_converter(tmp_path: Path, model: str, outtype: str) -> None:
    check_equal_to_converter(tmp_path, model, outtype)


LLAMA_TOKENIZE, LLAMA_QUANTIZE = peer.binary("llama-tokenize"), peer.binary("llama-quantize")


LLAMA_CPP_MISSES = {  # llama.cpp's own tokenizer vs mistral-common on the built-in corpus (87 texts)
    "v1": [],
    # user-defined pieces: sentencepiece matches them whole; the converter types them NORMAL, and llama.cpp
    # would not add sentencepiece's "▁" before them even typed USER_DEFINED (measured)
    "v3": ["text 82: 'x[REFERENCE_DOC_3]y'"],
    "v7": ["text 80: '[REF]'", "text 81: '[REF] cite'", "text 82: 'x[REFERENCE_DOC_3]y'"],
    "tekken": ["text 49: 'हिन्दी पाठ'"],  # llama.cpp's tekken regex splits a Devanagari vowel sign
}


@pytest.mark.slow
@pytest.mark.skipif(LLAMA_TOKENIZE is None, reason="llama-tokenize not built (see tests/llama_cpp_peer.py)")
@pytest.mark.parametrize("version", ["v1", "v3", "v7", "tekken"])
def test_llama_cpp_tokenizer_on_hubtools_gguf_matches_mistral_common_but_known_misses(
    tmp_path: Path, version: str
) -> None:
    from hubtools.gguf.files import read_gguf
    from hubtools.gguf.quality import check_gguf_tokenizer
    from hubtools.gguf.source import open_source
    from hubtools.gguf.verify import quant_of

    params = tiny_params(moe=False, n_layers=1, vocab_size=TOKENIZERS[version][2])
    native = write_native_checkpoint(tmp_path / version, params, tokenizer=version)
    path = tmp_path / "out" / export(native, tmp_path / "out", quants=parse_quants("f16"), name="m").outputs[0].files[0]
    files, source = read_gguf(path), open_source(native)
    with source.ckpt:
        check = check_gguf_tokenizer(
            source, files, quant_of(files), path, readback=False, llama_tokenize=LLAMA_TOKENIZE
        )
    llama = check.details["llama_cpp"]
    assert llama["misses"] == LLAMA_CPP_MISSES[version]
    assert llama["agreed"] == llama["texts"] - len(LLAMA_CPP_MISSES[version]) and llama["texts"] >= 87
    assert check.passed, check.problems


@pytest.mark.slow
@pytest.mark.skipif(LLAMA_QUANTIZE is None, reason="llama-quantize not built (see tests/llama_cpp_peer.py)")
def test_k_quants_go_through_llama_quantize_and_verify_reports_their_quality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubtools.gguf.verify import verify_gguf

    assert LLAMA_QUANTIZE is not None
    monkeypatch.setenv("PATH", f"{LLAMA_QUANTIZE.parent}:{os.environ['PATH']}")
    params = tiny_params(moe=True, dim=256, n_heads=4, n_kv_heads=2, hidden_dim=512, vocab_size=32000)
    native = write_native_checkpoint(tmp_path / "n", params, tokenizer="v1")
    result = export(native, tmp_path / "out", quants=parse_quants("q4_k_m"), name="m")
    assert result.outputs[0].files == ("m.Q4_K_M.gguf",) and not (tmp_path / "out" / "intermediate").exists()
    path = tmp_path / "out" / "m.Q4_K_M.gguf"
    report = verify_gguf(native, path, readback=False)
    assert report.quant == "Q4_K_M" and report.structure.passed, report.structure.problems
    assert report.tensors.details["by"] == "llama-quantize" and report.tensors.passed
    assert report.logits.mean_kl is not None and report.passed
    from tests.test_gguf_verify import flip_expert_value

    flip_expert_value(path, "blk.1.ffn_down_exps.weight", 2)
    broken = verify_gguf(native, path, readback=False, check_logits=False)
    assert not broken.passed and broken.tensors.problems[0].startswith("tensor 'blk.1.ffn_down_exps.weight' (expert 2)")
