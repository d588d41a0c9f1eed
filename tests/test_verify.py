"""`hubtools verify`: passes on a correct conversion; each planted fault fails and is named."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.errors import VerifyError
from hubtools.model.transforms import half_to_interleaved
from hubtools.testing import tiny_params, write_native_checkpoint
from hubtools.verification.report_text import format_report
from hubtools.verification.run import verify
from tests.helpers import assert_one_line_error, edit_json

INDEX = "model.safetensors.index.json"
EXPERT = "model.layers.1.block_sparse_moe.experts.2.w3.weight"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny float32 Mixtral (real v1 tokenizer, vocab 32000) and its conversion, in two shards."""
    root = tmp_path_factory.mktemp("pair")
    native = write_native_checkpoint(root / "native", tiny_params(), dtype=torch.float32, tokenizer="v1")
    convert(native, root / "hf", max_shard_size=9_000_000)
    return native, root / "hf"


@pytest.fixture
def broken(pair: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the HF folder to plant a fault in."""
    return Path(shutil.copytree(pair[1], tmp_path / "hf"))


def shard_of(folder: Path, name: str) -> Path:
    return folder / json.loads((folder / INDEX).read_text())["weight_map"][name]


def edit_tensor(folder: Path, name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    path = shard_of(folder, name)
    tensors = load_file(path)
    tensors[name] = change(tensors[name].clone()).contiguous()
    save_file(tensors, path, metadata={"format": "pt"})


def test_a_correct_conversion_passes_every_check(pair: tuple[Path, Path]) -> None:
    report = verify(*pair)
    checks = report.to_dict()["checks"]
    assert report.passed, format_report(report)
    assert checks["structure"]["problems"] == [] and checks["tensors"]["mismatched"] == []
    assert checks["tensors"]["compared"] == checks["tensors"]["expected"] == 2 * (6 + 1 + 4 * 3) + 3
    logits = checks["logits"]
    assert logits["max_abs_dlogit"] <= 1e-4 and logits["top1_agreement"] == 1.0
    assert logits["prompts"].endswith("encoded with tokenizer.model")
    assert [d["layer"] for d in logits["layers"]] == [0, 1]
    assert all(d["max_abs_dh"] < 1e-4 for d in logits["layers"])
    json.dumps(report.to_dict())


def test_prompts_texts_join_the_logits_check(pair: tuple[Path, Path], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    lines = ["Le chat est sur la table.", [{"role": "user", "content": "hi"}], {"text": "def f(x):\n    return x"}]
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = verify(*pair, prompts_path=prompts)
    logits = report.to_dict()["checks"]["logits"]
    assert report.passed and logits["sequences"] == 4 + 2 and report.tokenizer.details["texts"] > 2
    assert logits["prompts"] == "4 built-in texts and 2 --prompts texts encoded with tokenizer.model"


def test_either_argument_order_works(pair: tuple[Path, Path]) -> None:
    report = verify(pair[1], pair[0], check_logits=False)
    assert report.passed and report.native == str(pair[0]) and report.hf == str(pair[1])
    assert report.to_dict()["checks"]["logits"]["passed"] is None  # not run


def test_two_folders_of_the_same_layout_are_refused(pair: tuple[Path, Path]) -> None:
    with pytest.raises(VerifyError, match="both hf checkpoints"):
        verify(pair[1], pair[1])


def test_bfloat16_conversion_passes_bfloat16_thresholds(tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_params(vocab_size=1000), tokenizer=None)
    convert(native, tmp_path / "hf")
    report = verify(native, tmp_path / "hf", dtype=torch.bfloat16)
    assert report.passed, format_report(report)
    assert report.logits.dtype == "bfloat16" and report.logits.mean_kl is not None and report.logits.mean_kl <= 1e-3
    assert "random" in report.logits.prompts


def test_a_dtype_changing_conversion_is_compared_against_the_cast(tmp_path: Path) -> None:
    native = write_native_checkpoint(
        tmp_path / "native", tiny_params(vocab_size=1000), tokenizer=None, dtype=torch.float32
    )
    convert(native, tmp_path / "hf", dtype=torch.bfloat16)
    report = verify(native, tmp_path / "hf", check_logits=False)
    assert report.passed, format_report(report)
    assert any("float32 -> bfloat16" in n for n in report.tensors.notes)


def test_one_flipped_value_in_one_expert_is_named(pair: tuple[Path, Path], broken: Path) -> None:
    def flip(t: torch.Tensor) -> torch.Tensor:
        t[3, 5] = -t[3, 5]
        return t

    edit_tensor(broken, EXPERT, flip)
    report = verify(pair[0], broken)
    assert not report.passed and report.structure.passed
    assert report.tensors.mismatched == (EXPERT,)
    assert report.tensors.differences[EXPERT]["elements"] == 1
    assert EXPERT in format_report(report)


def test_q_proj_without_rotary_permutation_fails_tensors_and_logits_from_layer_0(
    pair: tuple[Path, Path], broken: Path
) -> None:
    names = [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)]
    for name in names:
        edit_tensor(broken, name, lambda t: half_to_interleaved(t, 4))  # what a converter without permute writes
    report = verify(pair[0], broken)
    assert not report.passed and report.structure.passed
    assert set(report.tensors.mismatched) == set(names)
    assert not report.logits.passed and report.logits.max_abs_dlogit is not None
    assert report.logits.max_abs_dlogit > 1e-2
    assert report.logits.layers[0].max_abs_dh > 1e-3  # the divergence starts at layer 0


def test_wrong_rope_theta_in_config_fails_structure_and_logits(pair: tuple[Path, Path], broken: Path) -> None:
    edit_json(broken / "config.json", lambda c: c.update(rope_theta=10000.0))
    report = verify(pair[0], broken)
    assert not report.passed and report.tensors.passed
    assert report.structure.problems == (
        "config.json rope_theta: expected 1e+06 (default rule: no sliding window), found 10000",
    )
    assert not report.logits.passed and report.logits.layers[0].max_abs_dh > 1e-4


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("rms_norm_eps", 1e-6, "config.json rms_norm_eps: expected 1e-05, found 1e-06"),
        ("sliding_window", 4096, "config.json sliding_window: expected null, found 4096"),
        ("num_experts_per_tok", 1, "config.json num_experts_per_tok: expected 2, found 1"),
        ("num_key_value_heads", 4, "config.json num_key_value_heads: expected 2, found 4"),
    ],
)
def test_each_config_field_is_compared_and_named(
    pair: tuple[Path, Path], broken: Path, field: str, value: Any, expected: str
) -> None:
    edit_json(broken / "config.json", lambda c: c.update({field: value}))
    report = verify(pair[0], broken, check_logits=False)  # a structure check: no forward needed
    assert expected in report.structure.problems
    assert not report.passed


def test_a_config_that_is_not_an_object_fails_structure(pair: tuple[Path, Path], broken: Path) -> None:
    (broken / "config.json").write_text("[1, 2]")
    report = verify(pair[0], broken, check_logits=False)
    assert not report.passed and not report.structure.passed
    assert report.structure.problems == ("config.json: expected a JSON object, found a list",)


def test_a_hub_style_repo_with_other_shard_names_and_new_config_keys_is_audited(
    pair: tuple[Path, Path], broken: Path
) -> None:
    weight_map = json.loads((broken / INDEX).read_text())["weight_map"]
    renames = {f: f"weights-part{i}.safetensors" for i, f in enumerate(sorted(set(weight_map.values())))}
    for old, new in renames.items():
        (broken / old).rename(broken / new)
    edit_json(broken / INDEX, lambda d: d.update(weight_map={k: renames[v] for k, v in d["weight_map"].items()}))

    def transformers5_keys(c: dict[str, Any]) -> None:
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": c.pop("rope_theta")}
        c["dtype"] = c.pop("torch_dtype")

    edit_json(broken / "config.json", transformers5_keys)
    (broken / "README.md").write_text("# a card\n")
    (broken / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    report = verify(pair[0], broken)
    assert report.passed, format_report(report)


def test_index_faults_are_reported_not_raised(pair: tuple[Path, Path], broken: Path) -> None:
    name = "model.layers.0.self_attn.k_proj.weight"
    edit_json(broken / INDEX, lambda d: d["weight_map"].update({name: "model-00009-of-00009.safetensors"}))
    report = verify(pair[0], broken, check_logits=False)
    assert (
        f"{broken / INDEX}: maps 1 tensor(s) to 'model-00009-of-00009.safetensors', which is missing"
        in report.structure.problems
    )
    assert (
        f"{broken / INDEX}: tensor '{name}' is mapped to 'model-00009-of-00009.safetensors' but stored in "
        f"'{shard_of(pair[1], name).name}'" in report.structure.problems
    )
    assert not report.passed


def test_missing_and_duplicated_tensors_are_named(pair: tuple[Path, Path], broken: Path) -> None:
    gone, twice = "model.layers.1.self_attn.v_proj.weight", "model.norm.weight"
    first, second = shard_of(broken, gone), shard_of(broken, twice)
    assert (first.name, second.name) == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    tensors = load_file(first)
    tensors.pop(gone)
    tensors[twice] = load_file(second)[twice]  # now in both shards; the index names the second
    save_file(tensors, first, metadata={"format": "pt"})
    report = verify(pair[0], broken)
    assert list(report.structure.problems) == [
        f"{second}: tensor '{twice}' is stored twice (also in {first.name})",
        f"{broken / INDEX}: tensor '{gone}' is mapped to '{first.name}', which does not hold it",
        f"{broken / INDEX}: tensor '{twice}' is mapped to '{second.name}' but stored in '{first.name}'",
        f"HF: missing tensor '{gone}'",
    ]
    assert report.logits.error == "missing or misshapen tensors (see structure) prevent a forward"
    assert not report.passed and report.tensors.compared == report.tensors.expected - 1


def test_swapped_vocab_ids_fail_the_tokenizer_check(pair: tuple[Path, Path], broken: Path) -> None:
    tokenizer = broken / "tokenizer.json"
    assert tokenizer.is_file()  # converted from the native folder's v1 tokenizer.model

    def swap(t: dict[str, Any]) -> None:
        vocab = t["model"]["vocab"]
        vocab["▁the"], vocab["▁of"] = vocab["▁of"], vocab["▁the"]

    edit_json(tokenizer, swap)
    report = verify(pair[0], broken, check_logits=False)
    assert not report.tokenizer.passed and not report.passed
    assert report.structure.passed and report.tensors.passed


def test_cli_exit_codes_table_and_json(
    pair: tuple[Path, Path], broken: Path, tmp_path: Path, run_cli: Callable[..., Result]
) -> None:
    ok = run_cli("verify", pair[0], pair[1], "--json", tmp_path / "ok.json", "--quiet")
    assert ok.exit_code == 0 and ok.output == ""
    assert json.loads((tmp_path / "ok.json").read_text())["passed"] is True
    edit_json(broken / "config.json", lambda c: c.update(rope_theta=10000.0))
    bad = run_cli("verify", broken, pair[0], "--no-logits", "--json", tmp_path / "bad.json")
    assert bad.exit_code == 1
    assert "hubtools verify FAILED" in bad.output and "config.json rope_theta" in bad.output
    saved = json.loads((tmp_path / "bad.json").read_text())
    assert saved["passed"] is False and saved["checks"]["structure"]["passed"] is False
    assert saved["checks"]["logits"]["skipped"] == "logits check disabled (--no-logits)"


def test_cli_refuses_two_native_folders_in_one_line(pair: tuple[Path, Path], run_cli: Callable[..., Result]) -> None:
    assert_one_line_error(run_cli("verify", pair[0], pair[0]), "both native checkpoints")


def test_top1_near_ties_are_counted_separately() -> None:
    from hubtools.verification.checks import Bound, Threshold
    from hubtools.verification.logits import logit_metrics, passes

    ref = torch.tensor([[[5.0, 4.95, 0.0], [0.0, 1.0, 9.0]]])
    hf = torch.tensor([[[4.95, 5.0, 0.0], [0.0, 1.0, 9.0]]])
    metrics = logit_metrics(ref, hf, torch.ones(1, 2, dtype=torch.bool), near_tie=0.1)
    assert metrics["top1_agreement"] == 0.5 and metrics["top1_near_tie_agreement"] == 1.0
    floor = Bound.FLOOR
    assert passes(metrics, (Threshold("top1_near_tie_agreement", 0.99, floor),))
    assert not passes(metrics, (Threshold("top1_agreement", 0.99, floor),))
