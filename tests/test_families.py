"""Model families: the built-in ones state llama.cpp's names, recognition picks the most derived family, and a
family added from the test suite alone (`tests/tied_family.py`, a plugin) converts, verifies and exports."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
import torch
from safetensors import safe_open

from hubtools.converter import convert
from hubtools.errors import ParamsError
from hubtools.families import family_named, from_hf_config, known_families, parse_params
from hubtools.families.mistral import Mistral
from hubtools.gguf.export import export
from hubtools.gguf.files import FastReader
from hubtools.gguf.quant import parse_quants
from hubtools.gguf.verify import verify_gguf
from hubtools.model.hf_config import to_hf_config
from hubtools.model.names import NameTable
from hubtools.testing import synthetic_tensors, tiny_params, write_native_checkpoint
from hubtools.verification.run import verify

PLUGIN = "hubtools_test_families-0.1.dist-info"


@pytest.mark.parametrize("moe", [True, False])
def test_gguf_names_of_the_table_are_gguf_py_s_llama_names(moe: bool) -> None:
    """The family rows name GGUF tensors as gguf-py's llama table does (merged experts by their merged name)."""
    params = tiny_params(moe=moe, n_layers=2)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, params.n_layers)
    for spec in NameTable(params).specs:
        native = spec.native if spec.expert is None else spec.native.replace(f".experts.{spec.expert}.", ".experts.")
        assert names.get_name(native, try_suffixes=(".weight",)) == spec.gguf, spec.native
    assert params.family.gguf_architecture == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]


def test_built_in_families_are_found_by_module_and_the_most_derived_one_wins() -> None:
    assert [f.name for f in known_families()] == [
        "ministral",
        "ministral3",
        "mistral",
        "mistral3",
        "mistral4",
        "mixtral",
        "pixtral",
    ]
    moe = {"dim": 8, "n_layers": 1, "hidden_dim": 16, "n_heads": 2, "norm_eps": 1e-5, "vocab_size": 10}
    assert parse_params(moe).family == family_named("mistral")  # Mixtral does not claim a dense model
    with_moe = parse_params({**moe, "moe": {"num_experts": 2, "num_experts_per_tok": 1}})
    assert with_moe.family == family_named("mixtral")  # both claim it: Mixtral derives from Mistral


def test_an_unknown_family_name_lists_the_known_ones() -> None:
    known = "ministral, ministral3, mistral, mistral3, mistral4, mixtral, pixtral"
    with pytest.raises(ParamsError, match=rf"^model family 'llama': expected one of {known}$"):
        family_named("llama")


def test_two_unrelated_families_claiming_a_file_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Other(Mistral):
        name = "other"

    class Another(Mistral):
        name = "another"

    import hubtools.families as families

    monkeypatch.setattr(families, "known_families", lambda: [Other(), Another()])
    raw = {"dim": 8, "n_layers": 1, "hidden_dim": 16, "n_heads": 2, "norm_eps": 1e-5, "vocab_size": 10}
    with pytest.raises(ParamsError, match=r"^x: several model families claim it \(another, other\); expected one$"):
        families.parse_params(raw, source="x")


@pytest.fixture
def tied_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mistral]:
    """`tests.tied_family` installed as a plugin: an entry point in the group `hubtools.families`."""
    info = tmp_path / "site" / PLUGIN
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hubtools-test-families\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hubtools.families]\ntied-mistral = tests.tied_family:FAMILY\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    from tests.tied_family import FAMILY

    yield FAMILY


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return out


def test_a_family_added_from_the_tests_converts_verifies_and_exports(tied_plugin: Mistral, tmp_path: Path) -> None:
    assert [f.name for f in known_families()][-1] == "tied-mistral"
    params = dataclasses.replace(tiny_params(moe=False, n_layers=2), family=tied_plugin)
    native = write_native_checkpoint(tmp_path / "native", params, dtype=torch.float32, tokenizer="v1")
    assert json.loads((native / "params.json").read_text())["tied_embeddings"] is True

    result = convert(native, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (result.architecture, config["tie_word_embeddings"]) == ("MistralForCausalLM", True)
    hf = tensors(tmp_path / "hf")
    assert "lm_head.weight" not in hf and len(hf) == len(NameTable(params).specs)
    assert from_hf_config(config).family == tied_plugin
    assert to_hf_config(params, dtype="float32").config["tie_word_embeddings"] is True

    convert(tmp_path / "hf", tmp_path / "back", to="native")
    original, back = tensors(native), tensors(tmp_path / "back")
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    assert json.loads((tmp_path / "back" / "params.json").read_text())["tied_embeddings"] is True

    report = verify(native, tmp_path / "hf")
    assert report.passed, report.to_dict()
    assert report.logits.top1_agreement == 1.0 and report.logits.max_abs_dlogit <= 1e-4

    export(native, tmp_path / "gguf", quants=parse_quants("f32"), name="tied")
    gguf_file = tmp_path / "gguf" / "tied.F32.gguf"
    names = [t.name for t in FastReader(gguf_file).tensors]
    assert "output.weight" not in names and "token_embd.weight" in names
    assert verify_gguf(native, gguf_file, readback=False).passed


def test_a_planted_fault_in_the_tied_embedding_fails_verify(tied_plugin: Mistral, tmp_path: Path) -> None:
    """The tied head reads the embedding on both sides: a changed embedding row moves the logits and is named."""
    from safetensors.torch import save_file

    params = dataclasses.replace(tiny_params(moe=False, n_layers=1), family=tied_plugin)
    native = write_native_checkpoint(tmp_path / "native", params, dtype=torch.float32, tokenizer="v1")
    convert(native, tmp_path / "hf")
    shard = next((tmp_path / "hf").glob("model-*.safetensors"))
    weights = tensors(tmp_path / "hf")
    weights = {k: v for k, v in weights.items() if k in _keys(shard)}
    weights["model.embed_tokens.weight"][5] *= 2
    save_file(weights, str(shard), metadata={"format": "pt"})
    report = verify(native, tmp_path / "hf")
    assert not report.passed and report.tensors.mismatched == ("model.embed_tokens.weight",)


def _keys(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_synthetic_tensors_follow_the_family_table(tied_plugin: Mistral) -> None:
    params = dataclasses.replace(tiny_params(moe=False, n_layers=1), family=tied_plugin)
    assert [name for name, _ in synthetic_tensors(params)][-1] == "norm.weight"
