"""One validation for the CLI, the Python API and dry runs (`hubtools.validation` and the checks built on it).

For each kind of value, the same bad value is refused identically (same error class, same one-line message,
before any work) by every entry point that takes it: the CLI, the Python API, and `--dry-run`. And a release
dry run lists exactly the files the real run then sends.
"""

# ruff: noqa: F811 - the Hub fixtures come from test_publish

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import HfApi

import hubtools
from hubtools.errors import (
    CardError,
    DestinationError,
    HubtoolsError,
    InvalidValueError,
    LayoutError,
    PublishError,
    QuantizeError,
    RecipeError,
    TokenizerError,
)
from hubtools.gguf.verify import verify_gguf
from hubtools.inspection import count_parameters
from hubtools.model.hf_config import ConfigOverrides
from hubtools.pipeline.release import plan_release
from hubtools.publishing.client import RetryPolicy
from hubtools.testing import tiny_params, write_native_checkpoint
from hubtools.validation import byte_size, cast_dtype, compute_dtype, file_stem, ref_name, repo_id, split_size
from tests.fakehub import FakeHub
from tests.helpers import RunCli, assert_one_line_error
from tests.test_publish import TOKEN, api, hub  # noqa: F401 - fixtures

REPO = "acme/valid"
SHARD = 60_000
FAST = RetryPolicy(base_delay=0.0, max_delay=0.0)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tiny_params(n_layers=2, vocab_size=32000, dim=32, n_heads=4, n_kv_heads=2, hidden_dim=96)
    return write_native_checkpoint(tmp_path_factory.mktemp("src") / "native", params, tokenizer="v1")


@pytest.fixture(scope="module")
def converted(native: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "hf"
    hubtools.convert(native, out, max_shard_size=SHARD)
    return out


@pytest.fixture(scope="module")
def gguf_file(native: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "out"
    result = hubtools.export_gguf(native, out, quants="f16", name="m")
    return out / result.outputs[0].files[0]


@pytest.fixture
def hub_env(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The CLI's Hub client points at the local Hub (a check that failed to run first would show as a request)."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub


def api_error(call: Callable[[], Any]) -> tuple[type[HubtoolsError], str]:
    """The class and message of the error `call` raises."""
    with pytest.raises(HubtoolsError) as info:
        call()
    return type(info.value), str(info.value)


def cli_error(result: Any, expected: type[HubtoolsError]) -> tuple[type[HubtoolsError], str]:
    """The message of a CLI failure: one line, the exit code of the error class; returned as `api_error` does."""
    assert_one_line_error(result)
    assert result.exit_code == expected.exit_code, result.stderr
    return expected, result.stderr.strip().removeprefix("error: ")


# --- dtypes ---


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn", "int4", "float64", "uint8"])
def test_a_dtype_a_release_cannot_ship_is_refused_alike(
    native: Path, tmp_path: Path, run_cli: RunCli, dtype: str
) -> None:
    out = tmp_path / "out"
    refused = api_error(lambda: hubtools.convert(native, out, dtype=dtype))
    assert refused[0] is InvalidValueError
    assert refused[1] == (
        f"dtype '{dtype}': expected one of bfloat16, float16, float32 (the floating types a release ships)"
    )
    assert cli_error(run_cli("convert", native, out, "--dtype", dtype), InvalidValueError) == refused
    assert api_error(lambda: hubtools.ReleaseOptions(dtype=dtype)) == refused
    assert not out.exists()


def test_a_torch_integer_dtype_is_refused_like_its_name(native: Path, tmp_path: Path) -> None:
    by_name = api_error(lambda: hubtools.convert(native, tmp_path / "out", dtype="int8"))
    assert api_error(lambda: hubtools.convert(native, tmp_path / "out", dtype=torch.int8)) == by_name
    assert not (tmp_path / "out").exists()


def test_a_recipe_dtype_is_refused_by_the_same_check(native: Path, tmp_path: Path, run_cli: RunCli) -> None:
    recipe = tmp_path / "mixtral-8x7b-v0.1.yaml"
    recipe.write_text(
        (ROOT / "converters/mixtral-8x7b-v0.1.yaml").read_text().replace("dtype: bfloat16", "dtype: int8")
    )
    _, message = api_error(lambda: cast_dtype("int8"))
    for args in (("convert", native, tmp_path / "o"), ("release", native, REPO, "--dry-run")):
        _, line = cli_error(run_cli(*args, "--recipe", recipe), RecipeError)
        assert line == f"{recipe}: {message}"


@pytest.mark.parametrize("dtype", ["int8", "float16", "float64"])
def test_a_compute_dtype_is_refused_alike_by_verify_and_release(
    native: Path, converted: Path, run_cli: RunCli, dtype: str
) -> None:
    refused = api_error(lambda: hubtools.verify(native, converted, dtype=dtype, check_logits=False))
    assert refused == (
        InvalidValueError,
        f"dtype '{dtype}': expected one of bfloat16, float32 (the logits check's compute dtypes)",
    )
    assert (
        cli_error(run_cli("verify", native, converted, "--dtype", dtype, "--no-logits"), InvalidValueError) == refused
    )
    assert api_error(lambda: hubtools.ReleaseOptions(verify_dtype=dtype)) == refused
    dry = run_cli("release", native, REPO, "--dry-run", "--verify-dtype", dtype)
    assert cli_error(dry, InvalidValueError) == refused


@pytest.mark.parametrize("theta", ["-5", "0", "nan", "inf"])
def test_a_bad_rope_theta_is_refused_alike_before_any_work(
    native: Path, converted: Path, gguf_file: Path, tmp_path: Path, run_cli: RunCli, theta: str
) -> None:
    said: list[str] = []
    refused = api_error(
        lambda: hubtools.verify(native, converted, rope_theta=float(theta), check_logits=False, progress=said.append)
    )
    assert refused[0] is InvalidValueError and refused[1].startswith(f"rope_theta {float(theta)!r}: expected")
    assert api_error(lambda: verify_gguf(native, gguf_file, rope_theta=float(theta), progress=said.append)) == refused
    assert api_error(lambda: ConfigOverrides(rope_theta=float(theta))) == refused  # what convert(overrides=...) takes
    assert said == []
    for args in (("verify", native, converted, "--no-logits"), ("convert", native, tmp_path / "out")):
        assert cli_error(run_cli(*args, "--rope-theta", theta), InvalidValueError) == refused
    assert not (tmp_path / "out").exists()


# --- sizes ---


@pytest.mark.parametrize("size", ["lots", "0", "-1MB", "5XB", "inf"])
def test_a_bad_shard_size_is_refused_alike(
    hub_env: FakeHub, native: Path, tmp_path: Path, run_cli: RunCli, size: str
) -> None:
    out = tmp_path / "out"
    refused = api_error(lambda: hubtools.convert(native, out, max_shard_size=size))
    assert refused[0] is InvalidValueError and refused[1].startswith(f"max_shard_size '{size}': expected a")
    assert cli_error(run_cli("convert", native, out, "--max-shard-size", size), InvalidValueError) == refused
    assert api_error(lambda: hubtools.ReleaseOptions(max_shard_size=size)) == refused
    for dry in (("--dry-run",), ()):
        result = run_cli("release", native, REPO, "--max-shard-size", size, *dry)
        assert cli_error(result, InvalidValueError) == refused
    assert not out.exists() and hub_env.requests == []


@pytest.mark.parametrize("size", ["lots", "0", "-1MB"])
def test_a_bad_split_size_is_refused_alike(native: Path, tmp_path: Path, run_cli: RunCli, size: str) -> None:
    out = tmp_path / "out"
    refused = api_error(lambda: hubtools.export_gguf(native, out, quants="f16", split_max_size=size))
    assert refused[0] is InvalidValueError and refused[1].startswith(f"split_max_size '{size}': expected a")
    assert cli_error(run_cli("gguf", native, out, "--split-max-size", size), InvalidValueError) == refused
    assert not out.exists()


# --- quant types and names ---


@pytest.mark.parametrize("quants", ["", " , ", "q9", "f16,q9"])
def test_quant_types_are_refused_alike_and_none_is_not_f16(
    native: Path, tmp_path: Path, run_cli: RunCli, quants: str
) -> None:
    out = tmp_path / "out"
    refused = api_error(lambda: hubtools.export_gguf(native, out, quants=quants))
    assert refused[0] is QuantizeError
    assert cli_error(run_cli("gguf", native, out, "--quant", quants), QuantizeError) == refused
    if not quants.replace(",", "").strip():
        assert refused[1] == f"quants '{quants}': expected one or more quant types (e.g. f16,q8_0), found none"
    assert not out.exists()


def test_an_empty_quant_list_is_an_error_not_f16(native: Path, tmp_path: Path, run_cli: RunCli) -> None:
    empty = api_error(lambda: hubtools.export_gguf(native, tmp_path / "out", quants=[]))
    assert empty == api_error(lambda: hubtools.export_gguf(native, tmp_path / "out", quants=""))
    assert cli_error(run_cli("gguf", native, tmp_path / "out", "--quant", ""), QuantizeError) == empty
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "a\\b", "a\nb", "x" * 201])
def test_a_gguf_name_that_is_not_a_file_stem_is_refused_alike(
    native: Path, tmp_path: Path, run_cli: RunCli, name: str
) -> None:
    out = tmp_path / "out"
    refused = api_error(lambda: hubtools.export_gguf(native, out, quants="f16", name=name))
    assert refused[0] is DestinationError and refused[1].startswith("name ") and "expected a file stem" in refused[1]
    assert cli_error(run_cli("gguf", native, out, "--name", name), DestinationError) == refused
    assert not out.exists()


# --- repo ids, revisions and tags ---


@pytest.mark.parametrize("repo", ["a/b/c", "a//b", "/b", "a/", "a b/c", "noslash", "", "a/b..c", "a/b.git"])
def test_a_repo_id_the_hub_refuses_is_refused_alike_before_any_request(
    hub_env: FakeHub,
    api: HfApi,
    native: Path,
    converted: Path,
    tmp_path: Path,
    run_cli: RunCli,
    repo: str,
) -> None:
    refused = api_error(lambda: hubtools.publish(converted, repo, api=api))
    assert refused[0] is PublishError and "expected a repo id 'namespace/name'" in refused[1]
    assert api_error(lambda: repo_id(repo)) == refused
    options = hubtools.ReleaseOptions(work_dir=tmp_path / "work")
    assert api_error(lambda: hubtools.release(str(native), repo, api=api, options=options)) == refused
    assert api_error(lambda: plan_release(str(native), repo, options=options)) == refused
    for command in (("publish", converted), ("release", native)):
        for dry in (("--dry-run",), ()):
            assert cli_error(run_cli(*command, repo, *dry), PublishError) == refused
    assert hub_env.requests == [] and not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "flags,settings",
    [
        (("--tag", "v 1"), {"tag": "v 1"}),
        (("--tag", "v1..2"), {"tag": "v1..2"}),
        (("--revision", "dev~1"), {"revision": "dev~1"}),
        (("--revision", "-dev"), {"revision": "-dev"}),
        (("--tag", "v1", "--create-pr"), {"tag": "v1", "create_pr": True}),
    ],
)
def test_a_bad_revision_or_tag_is_refused_alike_before_any_request(
    hub_env: FakeHub,
    api: HfApi,
    native: Path,
    converted: Path,
    tmp_path: Path,
    run_cli: RunCli,
    flags: tuple[str, ...],
    settings: dict[str, Any],
) -> None:
    refused = api_error(lambda: hubtools.publish(converted, REPO, api=api, **settings))
    assert refused[0] is PublishError
    options = hubtools.ReleaseOptions(work_dir=tmp_path / "work", **settings)
    assert api_error(lambda: hubtools.release(str(native), REPO, api=api, options=options)) == refused
    assert api_error(lambda: plan_release(str(native), REPO, options=options)) == refused
    for command in (("publish", converted), ("release", native)):
        for dry in (("--dry-run",), ()):
            assert cli_error(run_cli(*command, REPO, *flags, *dry), PublishError) == refused
    assert hub_env.requests == []


# --- card sources and the work folder ---


@pytest.fixture
def bad_cards(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "no-front-matter.md").write_text("Just text.\n")
    (tmp_path / "bad-kind.md").write_text("---\ntitle: T\nkind: huge\n---\nText.\n")
    return {
        "missing file": str(tmp_path / "nosuch.md"),
        "missing name": "nosuch",
        "no front matter": str(tmp_path / "no-front-matter.md"),
        "invalid": str(tmp_path / "bad-kind.md"),
    }


@pytest.mark.parametrize("which", ["missing file", "missing name", "no front matter", "invalid"])
def test_a_bad_card_source_fails_the_dry_run_exactly_as_the_real_run_before_any_work(
    hub_env: FakeHub,
    api: HfApi,
    native: Path,
    tmp_path: Path,
    run_cli: RunCli,
    bad_cards: dict[str, str],
    which: str,
) -> None:
    card = bad_cards[which]
    options = hubtools.ReleaseOptions(work_dir=tmp_path / "work", card=card)
    said: list[str] = []
    refused = api_error(lambda: hubtools.release(str(native), REPO, api=api, options=options, say=said.append))
    assert refused[0] is CardError and said == []
    assert api_error(lambda: plan_release(str(native), REPO, options=options)) == refused
    for dry in (("--dry-run",), ()):
        assert cli_error(run_cli("release", native, REPO, "--card", card, *dry), CardError) == refused
    assert hub_env.requests == [] and not (tmp_path / "work").exists()


@pytest.mark.parametrize("blocker", ["foreign folder", "file"])
def test_a_work_folder_in_the_way_fails_the_dry_run_as_the_real_run(
    hub_env: FakeHub,
    api: HfApi,
    native: Path,
    tmp_path: Path,
    run_cli: RunCli,
    blocker: str,
) -> None:
    parent = tmp_path / "w"
    if blocker == "file":
        parent.write_text("mine")
    else:
        (parent / "hubtools-release-acme--valid").mkdir(parents=True)
        (parent / "hubtools-release-acme--valid" / "notes.txt").write_text("mine")
    options = hubtools.ReleaseOptions(work_dir=parent)
    refused = api_error(lambda: hubtools.release(str(native), REPO, api=api, options=options))
    assert refused[0] is DestinationError
    assert api_error(lambda: plan_release(str(native), REPO, options=options)) == refused
    for dry in (("--dry-run",), ()):
        result = run_cli("release", native, REPO, "--work-dir", parent / "sub" if blocker == "file" else parent, *dry)
        if blocker == "file":  # click refuses a --work-dir that is a file itself; a file above it is ours to find
            assert_one_line_error(result, str(parent))
        else:
            assert cli_error(result, DestinationError) == refused
    assert hub_env.requests == []
    assert (
        parent.read_text() if blocker == "file" else (parent / "hubtools-release-acme--valid" / "notes.txt").read_text()
    ) == "mine"


# --- the dry run lists what the real run sends ---


@pytest.mark.parametrize("with_card", [False, True])
def test_the_release_dry_run_lists_exactly_the_files_the_real_run_sends(
    hub: FakeHub,
    api: HfApi,
    native: Path,
    converted: Path,
    tmp_path: Path,
    with_card: bool,
) -> None:
    card = None
    if with_card:
        card = tmp_path / "tiny.md"
        card.write_text(
            "---\ntitle: Tiny\nrepo_id: acme/valid\nkind: base\ntokenizer: v1\narchitecture: MixtralForCausalLM\n"
            f"parameters: {count_parameters(converted)[0]}\nmetadata:\n  license: apache-2.0\n---\nA tiny model.\n"
        )
    options = hubtools.ReleaseOptions(
        max_shard_size=SHARD, work_dir=tmp_path / "work", card=str(card) if card else None
    )
    planned = plan_release(str(native), REPO, options=options)
    listed = [s["file"] for s in planned["shards"]] + planned["small_files"]
    assert ("README.md" in listed) is with_card and hub.requests == []
    result = hubtools.release(str(native), REPO, api=api, options=options, retry=FAST)
    assert [f.path for f in result.files] == listed  # the same files, in the same order
    assert sorted(set(hub.files(REPO)) - {".gitattributes"}) == sorted(listed)


def test_the_cli_dry_run_prints_the_same_plan(hub_env: FakeHub, native: Path, tmp_path: Path, run_cli: RunCli) -> None:
    result = run_cli("release", native, REPO, "--dry-run", "--json", "--max-shard-size", SHARD)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    planned = plan_release(str(native), REPO, options=hubtools.ReleaseOptions(max_shard_size=SHARD))
    assert printed["small_files"] == planned["small_files"] and "README.md" not in printed["small_files"]
    assert "tokenizer.json" in printed["small_files"] and hub_env.requests == []


# --- prompts, layouts and warnings ---


@pytest.mark.parametrize("line", ["42", "{not json", '[{"content": "no role"}]', "[]", '{"messages": []}'])
def test_a_bad_prompts_line_fails_before_any_work(
    native: Path, converted: Path, gguf_file: Path, tmp_path: Path, run_cli: RunCli, line: str
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"fine"\n' + line + "\n")
    said: list[str] = []
    refused = api_error(
        lambda: hubtools.verify(native, converted, prompts_path=prompts, check_logits=False, progress=said.append)
    )
    assert refused[0] is TokenizerError and refused[1].startswith(f"{prompts}: line 2: expected")
    assert api_error(lambda: verify_gguf(native, gguf_file, prompts_path=prompts, progress=said.append)) == refused
    assert said == []  # nothing ran
    for target in (converted, gguf_file):
        result = run_cli("verify", native, target, "--prompts", prompts, "--no-logits")
        assert cli_error(result, TokenizerError) == refused  # one line: no progress, no table


@pytest.mark.parametrize("to", ["native", "hf"])
def test_converting_to_the_layout_a_source_already_has_says_so(
    native: Path, converted: Path, tmp_path: Path, run_cli: RunCli, to: str
) -> None:
    src = native if to == "native" else converted
    out = tmp_path / "out"
    refused = api_error(lambda: hubtools.convert(src, out, to=to))
    article = "a native" if to == "native" else "an HF"
    assert refused[0] is LayoutError and f"found {article} one (it is already in the {to} layout" in refused[1]
    assert cli_error(run_cli("convert", src, out, "--to", to), LayoutError) == refused
    assert not out.exists()


def test_a_native_folder_without_tokenizer_converts_with_one_warning(tmp_path: Path, run_cli: RunCli) -> None:
    src = write_native_checkpoint(tmp_path / "notok", tiny_params(vocab_size=1000), tokenizer=None)
    result = hubtools.convert(src, tmp_path / "api")
    [warning] = result.warnings
    assert warning.startswith(f"{src}: no tokenizer file") and "no tokenizer" in warning
    assert result.to_dict()["warnings"] == [warning]
    cli = run_cli("convert", src, tmp_path / "cli", "--quiet")
    assert cli.exit_code == 0 and cli.stderr == f"warning: {warning}\n"
    with_json = run_cli("convert", src, tmp_path / "json", "--json")
    assert json.loads(with_json.stdout)["warnings"] == [warning] and with_json.stderr == f"warning: {warning}\n"
    assert hubtools.convert(tmp_path / "api", tmp_path / "back").warnings  # HF -> native: still none to restore


def test_a_folder_with_its_tokenizer_converts_without_warnings(native: Path, tmp_path: Path) -> None:
    assert hubtools.convert(native, tmp_path / "out").warnings == ()


# --- the validators themselves ---


def test_the_validators_accept_what_a_release_uses() -> None:
    assert [cast_dtype(v) for v in ("bfloat16", "F16", torch.float32, None)] == ["bfloat16", "float16", "float32", None]
    assert compute_dtype("bfloat16") == "bfloat16" and compute_dtype(torch.float32) == "float32"
    assert byte_size("5GB", name="max_shard_size") == 5 * 10**9 and split_size(0) == split_size(None) == 0
    assert split_size("50GB") == 50 * 10**9 and file_stem("Mixtral-8x7B v0.1") == "Mixtral-8x7B v0.1"
    assert repo_id("mistralai/Mixtral-8x7B-v0.1") == "mistralai/Mixtral-8x7B-v0.1"
    assert [ref_name(v, name="revision") for v in ("main", "refs/pr/3", "release/v1.0", None)] == [
        "main",
        "refs/pr/3",
        "release/v1.0",
        None,
    ]


@pytest.mark.parametrize("value", ["a\nb/c", "a\x00/b"])
def test_messages_stay_on_one_line_for_any_value(value: str) -> None:
    for check in (repo_id, lambda v: ref_name(v, name="tag"), file_stem, cast_dtype):
        message = api_error(lambda: check(value))[1]
        assert "\n" not in message and "\x00" not in message
