"""Shared fixtures: tiny synthetic checkpoints (written by hubtools.testing) and a CLI runner.

Plain helper functions and constants are in tests/helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hubtools.cli import cli
from hubtools.model.family import ModelParams
from hubtools.testing import tiny_params, write_native_checkpoint
from hubtools.tokenization.files import write_hf_tokenizer
from tests.helpers import SHIPPED_TOKENIZERS, MakeNative, RunCli


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


@pytest.fixture(scope="session")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """hf_tokenizer(kind) -> a folder holding that shipped tokenizer converted to HF (chat template: mistral).

    Converted once per session on first use, shared by the tokenizer tests: read it, copy it before editing.
    """
    folders: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in folders:
            folders[kind] = tmp_path_factory.mktemp(f"hf_{kind}")
            write_hf_tokenizer(SHIPPED_TOKENIZERS[kind], folders[kind], chat_template="mistral")
        return folders[kind]

    return get
