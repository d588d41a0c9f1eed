"""GGUF of the Mistral 3 text models: Ministral 3 / Devstral 2 (`Ministral3ForCausalLM`) as llama.cpp's `mistral3`
with its YaRN and llama-4 keys, equal to llama.cpp's converter (slow, with the peer); Ministral 8B 2410
(`MinistralForCausalLM`, per-layer windows) refused, naming what llama.cpp lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hubtools.converter import convert
from hubtools.errors import ParamsError
from hubtools.gguf.export import export
from hubtools.gguf.files import FastReader
from hubtools.gguf.quant import parse_quants
from hubtools.gguf.verify import verify_gguf
from hubtools.testing import TOKENIZERS, tiny_ministral3_params, tiny_ministral_params, write_native_checkpoint
from tests import llama_cpp_peer as peer

KINDS = {
    "ministral3-tied": {"tied": True, "llama4": True, "apply_scale": False},
    "devstral2": {"tied": False, "llama4": False, "apply_scale": True},
}


def test_a_ministral3_gguf_carries_yarn_and_llama4_keys_and_verifies(tmp_path: Path) -> None:
    params = tiny_ministral3_params(tied=True, vocab_size=TOKENIZERS["v1"][2], n_layers=1)
    native = write_native_checkpoint(tmp_path / "native", params, dtype=torch.float32, tokenizer="v1")
    export(native, tmp_path / "gguf", quants=parse_quants("f32"), name="m")
    path = tmp_path / "gguf" / "m.F32.gguf"
    fields = {k: f.contents() for k, f in FastReader(path).fields.items()}
    assert fields["general.architecture"] == "mistral3"
    expected = {
        "mistral3.rope.scaling.type": "yarn",
        "mistral3.rope.scaling.factor": 4.0,
        "mistral3.rope.scaling.original_context_length": 8,
        "mistral3.rope.scaling.yarn_beta_fast": 32.0,
        "mistral3.rope.scaling.yarn_beta_slow": 1.0,
        "mistral3.rope.scaling.yarn_log_multiplier": 1.0,  # apply_scale false: llama.cpp's "no mscale"
        "mistral3.attention.temperature_scale": pytest.approx(0.1),
    }
    assert {k: fields[k] for k in expected} == expected
    assert "output.weight" not in [t.name for t in FastReader(path).tensors]
    report = verify_gguf(native, path, readback=False)
    assert report.passed, report.to_dict()


def test_a_ministral_with_per_layer_windows_is_refused_naming_what_llama_cpp_lacks(tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_ministral_params(), dtype=torch.float32, tokenizer=None)
    with pytest.raises(ParamsError, match=r"a MinistralForCausalLM cannot be exported to GGUF \(llama.cpp's conv"):
        export(native, tmp_path / "gguf", quants=parse_quants("f32"), name="m")


@pytest.mark.slow
@pytest.mark.skipif(peer.tree() is None, reason="llama.cpp's tree not found (HUBTOOLS_LLAMA_CPP)")
@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
@pytest.mark.parametrize("kind", KINDS)
def test_ministral3_gguf_equals_llama_cpp_converter_from_native_and_from_hf(
    tmp_path: Path, kind: str, outtype: str
) -> None:
    from tests.test_gguf_llama_cpp import assert_same_gguf

    params = tiny_ministral3_params(vocab_size=TOKENIZERS["tekken"][2], n_layers=2, **KINDS[kind])  # type: ignore[arg-type]
    native = write_native_checkpoint(tmp_path / "native", params, tokenizer="tekken")
    convert(native, tmp_path / "hf")
    theirs = peer.convert_hf(tmp_path / "hf", tmp_path / f"peer.{outtype}.gguf", outtype)
    for source, out in ((native, "out"), (tmp_path / "hf", "out-hf")):
        result = export(source, tmp_path / out, quants=parse_quants(outtype), name="m")
        assert_same_gguf(tmp_path / out / result.outputs[0].files[0], theirs)
