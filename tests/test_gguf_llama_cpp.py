"""hubtools' GGUF files equal llama.cpp's converter's output on hubtools' own HF conversion, tensor for
tensor (name, order, shape, type, bytes) and in every metadata key except general.*; llama.cpp's own
tokenizer on hubtools' GGUF equals mistral-common; K-quants go through llama-quantize.

Skipped when the peer (llama.cpp's tree, see tests/llama_cpp_peer.py and the README) is absent; marked
slow (each converter run costs seconds): `pytest -m slow tests/test_gguf_llama_cpp.py` runs the matrix
(MoE and dense; odd head_dim, MQA, sliding window; v1/v3/v7/tekken; f32/f16/bf16/q8_0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hubtools.converter import convert
from hubtools.gguf.export import export
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
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: (f.types, f.contents()) for k, f in reader.fields.items() if not k.startswith(("general.", "GGUF."))}


def _tensors(path: Path) -> list[tuple[str, str, list[int], bytes]]:
    from gguf import GGUFReader

    return [
        (t.name, t.tensor_type.name, [int(n) for n in t.shape], np.asarray(t.data).tobytes())
        for t in GGUFReader(path).tensors
    ]


def assert_same_gguf(ours: Path, theirs: Path) -> None:
    a, b = _fields(ours), _fields(theirs)
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
