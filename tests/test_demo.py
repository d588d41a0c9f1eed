from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from tests.helpers import assert_one_line_error


def test_demo_runs_the_whole_release_offline(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    result = run_cli("demo", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for step in (
        "1. wrote a tiny native Mixtral",
        "2. converted to the HF layout",
        "3. transformers MixtralForCausalLM",
        "bit-exact for all 41 tensors",
        "4. verified",
        "PASSED",
        "5. rendered the model card",
        "6. publish plan (dry run",
        "7. exported a Q8_0 GGUF",
    ):
        assert step in out, step
    assert (tmp_path / "demo" / "hf" / "README.md").read_text().startswith("---")
    assert (tmp_path / "demo" / "gguf" / "tiny-mixtral-demo.Q8_0.gguf.verify.json").is_file()
    assert_one_line_error(run_cli("demo", tmp_path / "demo"), "already exists", "--force")  # never silently
    (tmp_path / "demo" / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("demo", tmp_path / "demo", "--force"), "found notes.txt, which is not hubtools'")
    (tmp_path / "demo" / "notes.txt").unlink()
    again = run_cli("demo", tmp_path / "demo", "--force")  # its own folder, unchanged: --force replaces it
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_demo_refuses_a_folder_it_does_not_own(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert_one_line_error(run_cli("demo", tmp_path / "mine"), "already exists", "--force")
    assert_one_line_error(run_cli("demo", tmp_path / "mine", "--force"), "found notes.txt, which is not hubtools'")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_run_demo_refuses_a_foreign_folder_before_writing(tmp_path: Path) -> None:
    from hubtools.errors import DestinationError
    from hubtools.pipeline.demo import run_demo

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    said: list[str] = []
    with pytest.raises(DestinationError, match="already exists"):
        run_demo(tmp_path / "mine", say=said.append)
    assert said == [] and sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
