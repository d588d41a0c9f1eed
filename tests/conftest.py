"""Shared fixtures: tiny synthetic checkpoints (written by hubtools.testing) and a CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hubtools.cli import cli
from hubtools.model.params import ModelParams
from hubtools.testing import tiny_params, write_native_checkpoint


@pytest.fixture
def make_native(tmp_path: Path) -> Callable[..., Path]:
    """make_native(name, params=None, **kwargs) -> a native checkpoint folder under tmp_path."""

    def make(name: str = "native", params: ModelParams | None = None, **kwargs: object) -> Path:
        return write_native_checkpoint(tmp_path / name, params or tiny_params(), **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """run_cli(*args) -> click Result, with stderr separate."""

    def run(*args: object) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """A failed command: non-zero exit, exactly one line on stderr naming what is wrong, no traceback."""
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
