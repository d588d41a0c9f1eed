"""publish checks what it would send before a single request: the folder, the repo id, the token."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hubtools.converter import convert
from hubtools.errors import PublishError
from hubtools.publishing.plan import plan_upload
from hubtools.testing import tiny_params, write_native_checkpoint
from hubtools.validation import repo_id as check_repo_id
from tests.helpers import assert_one_line_error


@pytest.fixture
def converted(tmp_path: Path) -> Path:
    native = write_native_checkpoint(tmp_path / "native", tiny_params(vocab_size=1000), tokenizer=None)
    convert(native, tmp_path / "hf", max_shard_size=400_000)
    return tmp_path / "hf"


@pytest.mark.parametrize("repo_id", ["a/b/c", "not a repo", "user/-bad", "user/bad..name", "noslash", ""])
def test_invalid_repo_ids_are_refused_even_in_a_dry_run(converted: Path, run_cli, repo_id: str) -> None:
    with pytest.raises(PublishError, match="expected a repo id 'namespace/name'"):
        check_repo_id(repo_id)
    assert_one_line_error(run_cli("publish", converted, repo_id, "--dry-run"), "expected a repo id")


def test_a_truncated_shard_is_refused_before_any_request(converted: Path, run_cli) -> None:
    shard = sorted(converted.glob("model-*.safetensors"))[1]
    os.truncate(shard, shard.stat().st_size // 2)
    for args in (("--dry-run",), ()):
        assert_one_line_error(run_cli("publish", converted, "me/model", *args), shard.name, "truncated")


def test_a_shard_missing_from_disk_or_from_the_index_is_refused(converted: Path, tmp_path: Path) -> None:
    shards = sorted(converted.glob("model-*.safetensors"))
    shutil.copy(shards[0], tmp_path / "keep.safetensors")
    shards[0].unlink()
    with pytest.raises(PublishError, match=f"names {shards[0].name}, which is missing"):
        plan_upload(converted)
    shutil.copy(tmp_path / "keep.safetensors", shards[0])
    shutil.copy(shards[0], converted / "model-00009-of-00009.safetensors")
    with pytest.raises(PublishError, match="expected every weight file to be named, found model-00009-of-00009"):
        plan_upload(converted)


def test_a_config_without_the_fields_its_architecture_needs_is_refused(converted: Path, run_cli) -> None:
    config = json.loads((converted / "config.json").read_text())
    del config["num_hidden_layers"]
    (converted / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_cli("publish", converted, "me/model", "--dry-run"), "config.json", "num_hidden_layers")
    (converted / "config.json").write_text("{not json")
    assert_one_line_error(run_cli("publish", converted, "me/model", "--dry-run"), "config.json", "expected valid JSON")


def test_no_token_is_one_line_and_no_request(converted: Path, run_cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there; nothing may be asked
    result = run_cli("publish", converted, "me/model")
    assert_one_line_error(result, "me/model: expected a Hugging Face token to publish, found none")
