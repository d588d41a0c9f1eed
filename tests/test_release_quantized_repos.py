"""`hubtools release` with a recipe's `quantized:` repos, against the local Hub: the main repo first, then each
quantized repo (quantize, verify, card, publish); a re-run leaves a repo that already holds this release alone;
`--no-quantized` skips them, `--quantized-only` publishes only them, `--dry-run` lists them."""

# ruff: noqa: F811 - the Hub fixtures come from test_publish

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from hubtools.cli import cli
from hubtools.model.names import NameTable
from hubtools.testing import add_outlier_channels, tiny_params, write_native_checkpoint
from tests.fakehub import FakeHub
from tests.helpers import assert_one_line_error
from tests.test_publish import TOKEN, hub  # noqa: F401 - fixtures

pytest.importorskip("compressed_tensors")

REPO = "acme/tiny-q"
GPTQ = f"{REPO}-GPTQ"
PARAMS = tiny_params(moe=False, n_layers=1, dim=64, n_heads=4, n_kv_heads=2, hidden_dim=128)


@pytest.fixture(scope="module")
def release_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(native source, recipe, card) of a tiny dense model whose recipe lists one GPTQ repo."""
    root = tmp_path_factory.mktemp("qrelease")
    native = add_outlier_channels(write_native_checkpoint(root / "native", PARAMS, tokenizer="v1"), PARAMS)
    parameters = sum(math.prod(s.shape) for s in NameTable(PARAMS).specs)
    card = root / "tiny.md"
    card.write_text(
        f"---\ntitle: Tiny\nrepo_id: {REPO}\nkind: base\ntokenizer: v1\narchitecture: MistralForCausalLM\n"
        f"parameters: {parameters}\nmetadata:\n  license: apache-2.0\n---\nA tiny model.\n"
    )
    recipe = {
        "name": "tiny-q",
        "source": {"url": "https://example.invalid/tiny.tar", "format": "safetensors"},
        "architecture": "MistralForCausalLM",
        "expect": {"dim": 64, "n_layers": 1, "vocab_size": 32000, "tokenizer": "v1"},
        "dtype": "bfloat16",
        "repo_id": REPO,
        "card": str(card),
        "quantized": [{"method": "gptq", "bits": 4, "group_size": 32, "samples": 8, "seq_len": 64}],
    }
    path = root / "tiny-q.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return native, path, card


def _release(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, *args: object) -> Result:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return CliRunner().invoke(cli, ["release", *map(str, args)], catch_exceptions=False)


def test_release_publishes_the_quantized_repo_after_the_main_one_and_a_rerun_leaves_it(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, release_inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    native, recipe, card = release_inputs
    args = (native, REPO, "--recipe", recipe, "--card", card, "--work-dir", tmp_path / "w", "--json")
    first = _release(hub, monkeypatch, *args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert [(q["repo_id"], q["action"]) for q in out["quantized"]] == [(GPTQ, "published")]
    files = hub.files(GPTQ)
    config = json.loads(files["config.json"])
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    stamp = json.loads(files["quantization_report.json"])["release"]
    assert stamp["base_repo"] == REPO and stamp["base_revision"] == out["verified_at"]
    assert "README.md" in files and out["report"]["passed"]
    commits, main_commits = len(hub.repos[GPTQ].commits), len(hub.repos[REPO].commits)

    again = _release(hub, monkeypatch, *args)
    assert again.exit_code == 0, again.output
    rerun = json.loads(again.stdout)
    assert rerun["verified_at"] == out["verified_at"] and len(hub.repos[REPO].commits) == main_commits
    assert [(q["repo_id"], q["action"]) for q in rerun["quantized"]] == [(GPTQ, "unchanged")]
    assert len(hub.repos[GPTQ].commits) == commits

    only = _release(hub, monkeypatch, native, REPO, "--recipe", recipe, "--card", card, "--quantized-only", "--json")
    assert only.exit_code == 0, only.output
    assert json.loads(only.stdout)["quantized"][0]["action"] == "unchanged"


def test_dry_run_lists_the_quantized_repos_and_no_quantized_drops_them(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, release_inputs: tuple[Path, Path, Path]
) -> None:
    native, recipe, card = release_inputs
    plan = _release(hub, monkeypatch, native, REPO, "--recipe", recipe, "--card", card, "--dry-run", "--json")
    assert plan.exit_code == 0, plan.output
    assert [q["repo_id"] for q in json.loads(plan.stdout)["quantized"]] == [GPTQ]
    text = _release(hub, monkeypatch, native, REPO, "--recipe", recipe, "--card", card, "--dry-run")
    assert f"then GPTQ 4-bit, group 32, to '{GPTQ}'" in text.stdout
    skip = _release(hub, monkeypatch, native, REPO, "--recipe", recipe, "--dry-run", "--no-quantized", "--json")
    assert skip.exit_code == 0 and json.loads(skip.stdout)["quantized"] == []
    assert hub.requests == [] or all(r[0] == "GET" for r in hub.requests)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--quantized-only", "--no-quantized"), "--quantized-only and --no-quantized: choose one"),
        (("--create-pr",), "--create-pr / --revision: the quantized repos publish to main"),
        (("--quantized-only",), f"{REPO}: cannot read the main repo"),
    ],
)
def test_quantized_inputs_are_refused_in_one_line_before_anything_is_sent(
    hub: FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    release_inputs: tuple[Path, Path, Path],
    extra: tuple[str, ...],
    fragment: str,
) -> None:
    native, recipe, card = release_inputs
    result = _release(hub, monkeypatch, native, REPO, "--recipe", recipe, "--card", card, *extra)
    assert_one_line_error(result, fragment)
    assert REPO not in hub.repos and GPTQ not in hub.repos


def test_a_remote_source_with_quantized_repos_asks_for_a_local_folder(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, release_inputs: tuple[Path, Path, Path]
) -> None:
    _, recipe, card = release_inputs
    result = _release(hub, monkeypatch, "https://example.invalid/tiny/", REPO, "--recipe", recipe, "--card", card)
    assert_one_line_error(result, "need SRC as a local folder", "--no-quantized")
