"""verify asks transformers' own loader whether the HF folder loads as it is (`verification.loadable`).

The fault planted here is the one verify once missed: a family table that writes Mistral 4's experts unfused on
both sides, so hubtools' own checks agree with themselves while transformers re-initializes the experts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hubtools.converter import convert
from hubtools.families.mistral4 import Mistral4
from hubtools.testing import tiny_mistral4_params, tiny_params, write_native_checkpoint
from hubtools.verification.loadable import load_problems
from hubtools.verification.run import verify
from hubtools.verification.structure import index_hf_folder


def test_a_folder_hubtools_writes_loads_with_no_key_left(tmp_path: Path) -> None:
    for name, params in (("mixtral", tiny_params()), ("mistral4", tiny_mistral4_params())):
        hf = tmp_path / f"{name}-hf"
        convert(write_native_checkpoint(tmp_path / name, params), hf)
        folder = index_hf_folder(hf)
        assert load_problems(hf, folder.config, folder.tensors) == [], name


def test_unfused_experts_fail_verify_though_the_tables_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Mistral4, "fusions", lambda self, params: ())  # experts written (and read) one by one
    native = write_native_checkpoint(tmp_path / "native", tiny_mistral4_params())
    convert(native, tmp_path / "hf")
    report = verify(native, tmp_path / "hf", check_logits=False)
    assert report.tensors.passed  # hubtools' own view: every tensor where its table says
    assert not report.structure.passed
    problem = next(p for p in report.structure.problems if "transformers" in p)
    assert "missing (re-initialized at load): 'model.layers.1.mlp.experts.down_proj'" in problem


def test_a_renamed_key_and_a_wrong_shape_are_named(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    convert(write_native_checkpoint(tmp_path / "native", tiny_params(moe=False)), hf)
    folder = index_hf_folder(hf)
    tensors = dict(folder.tensors)
    q = "model.layers.0.self_attn.q_proj.weight"
    tensors["model.layers.0.self_attn.q_projx.weight"] = tensors.pop(q)
    problems = load_problems(hf, folder.config, tensors)
    assert any("missing" in p and f"'{q}'" in p for p in problems)
    assert any("unexpected" in p and "q_projx" in p for p in problems)
    tensors = dict(folder.tensors)
    k = "model.layers.1.self_attn.k_proj.weight"
    source = tensors[k]
    tensors[k] = type(source)(k, source.code, (source.shape[0] + 1, source.shape[1]), source.segments)
    assert any("shape mismatched" in p and f"'{k}'" in p for p in load_problems(hf, folder.config, tensors))
    config = {**folder.config, "architectures": ["NoSuchForCausalLM"]}  # type: ignore[dict-item]
    assert "names no class" in load_problems(hf, config, folder.tensors)[0]


def test_fp8_kept_is_put_to_the_loader_as_on_a_gpu(tmp_path: Path) -> None:
    """A CPU dequantizes FP8 at load; the FP8-kept form is for GPUs, so it is checked as a GPU loads it. There,
    transformers 5.25's Mixtral weight conversion cannot concatenate per-tensor (0-d) expert scales: noted."""
    hf = tmp_path / "hf"
    convert(write_native_checkpoint(tmp_path / "native", tiny_params(fp8=True)), hf)
    folder = index_hf_folder(hf)
    (problem,) = load_problems(hf, folder.config, folder.tensors, gpu=True)
    assert "on a GPU" in problem and "conversion" in problem
    assert load_problems(hf, folder.config, folder.tensors) == []  # on a CPU, dequantized: loads
    report = verify(tmp_path / "native", hf, check_logits=False)
    assert report.structure.passed and any("on a GPU" in n for n in report.structure.notes)
