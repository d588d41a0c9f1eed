"""Shared fixtures: tiny synthetic checkpoints (written by hubtools.testing) and a CLI runner.

Plain helper functions and constants are in tests/helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hubtools.cli import cli
from hubtools.model.params import ModelParams
from hubtools.testing import tiny_params, write_native_checkpoint
from tests.helpers import MakeNative, RunCli


@pytest.fixture
def make_native(tmp_path: Path) -> MakeNative:
    """make_native(name, params=None, **kwargs) -> a native checkpoint folder under tmp_path."""

    def make(name: str = "native", params: ModelParams | None = None, **kwargs: object) -> Path:
        return write_native_checkpoint(tmp_path / name, params or tiny_params(), **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def run_cli() -> RunCli:
    """run_cli(*args) -> click Result, with stderr separate."""

    def run(*args: object) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run
