"""Helpers shared by the test files: CLI error assertions, whole-checkpoint reads, the shipped tokenizers.

Fixtures live in conftest.py; plain functions and constants live here, imported as
`from tests.helpers import ...` (the one import convention of the suite; pytest's pythonpath is ".").
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from click.testing import Result

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.testing import TOKENIZERS, mistral_common_data

RunCli = Callable[..., Result]  # the `run_cli` fixture: run_cli(*args) -> click Result
MakeNative = Callable[..., Path]  # the `make_native` fixture: make_native(name, params=None, **kwargs) -> folder

# kind ("v1", "v3", "v7", "tekken") -> the tokenizer file mistral-common ships
SHIPPED_TOKENIZERS = {kind: mistral_common_data() / shipped for kind, (shipped, _, _) in TOKENIZERS.items()}


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """A failed command: non-zero exit, exactly one line on stderr naming what is wrong, no traceback."""
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, read through `open_checkpoint`."""
    with open_checkpoint(folder) as ckpt:
        return {name: ckpt.read(name) for name in ckpt.tensors}


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN-safe, unlike `torch.equal` on floats)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def open_fd_count() -> int:
    """How many file descriptors this process holds (Linux), to prove a reader or writer closed its files."""
    return len(os.listdir("/proc/self/fd"))


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a JSON file after `change` edits its decoded object in place."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))
