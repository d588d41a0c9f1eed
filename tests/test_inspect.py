from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from click.testing import Result

from hubtools.checkpoint.safetensors_format import build_header
from hubtools.converter import convert
from hubtools.inspection import summarize
from hubtools.model.family import ModelParams
from hubtools.model.names import tensor_specs
from hubtools.testing import tiny_params


def test_inspect_counts_total_and_active_parameters(make_native: Callable[..., Path], tmp_path: Path) -> None:
    params = tiny_params(num_experts=4, top_k=2, dim=64, hidden_dim=128, n_layers=2)
    native = make_native(params=params, tokenizer="v1")
    s = summarize(native)
    expert = 2 * 4 * 3 * 64 * 128
    other = 2 * 32000 * 64 + 64 + 2 * (2 * 64 + 64 * 64 * 2 + 2 * 32 * 64 + 4 * 64)
    assert (s.total_params, s.active_params) == (expert + other, expert // 2 + other)
    assert (s.layout, s.architecture, s.tokenizer) == ("native", "MixtralForCausalLM", "tokenizer.model")
    convert(native, tmp_path / "hf")
    assert summarize(tmp_path / "hf").total_params == s.total_params


def sparse_native(folder: Path, params: ModelParams) -> Path:
    """A full-size native checkpoint whose tensor bytes are a hole in a sparse file (no disk used)."""
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(params.to_dict()))
    specs = tensor_specs(params)
    header = build_header([(s.native, torch.bfloat16, s.shape) for s in specs], {"format": "pt"})
    path = folder / "consolidated.safetensors"
    path.write_bytes(header)
    os.truncate(path, len(header) + sum(2 * math.prod(s.shape) for s in specs))
    return folder


def test_inspect_is_instant_on_a_281_gb_mixtral_8x22b(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    params = tiny_params(
        dim=6144,
        n_layers=56,
        n_heads=48,
        n_kv_heads=8,
        head_dim=128,
        hidden_dim=16384,
        num_experts=8,
        top_k=2,
        vocab_size=32000,
    )
    native = sparse_native(tmp_path / "8x22b", params)
    result = run_cli("inspect", native, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert round(info["total_params"] / 1e9) == 141 and round(info["active_params"] / 1e9) == 39
    assert round(info["bytes_on_disk"] / 1e9) == 281
    human = run_cli("inspect", native).stdout
    assert "MixtralForCausalLM, 56 layers, 8 experts (top-2)" in human and "140.62B" in human
