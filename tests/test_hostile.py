"""Hardening (issue 8, items 8 and 9): verify never passes what it cannot measure, and hostile or broken
files end in one line naming the file, within bounded time and memory.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

from hubtools.checkpoint.safetensors_format import build_header
from hubtools.testing import TOKENIZERS, tiny_params, write_native_checkpoint
from tests.conftest import assert_one_line_error

RunCli = Callable[..., Result]


def _strict_json(text: str) -> object:
    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in the JSON report")

    return json.loads(text, parse_constant=refuse)


def _convert(run_cli: RunCli, src: Path, dst: Path, *args: object) -> Path:
    result = run_cli("convert", src, dst, "--quiet", *args)
    assert result.exit_code == 0, result.output + result.stderr
    return dst


# --- item 8: verify must not pass what it cannot measure ---


def test_nan_weights_fail_verify_and_the_json_report_stays_valid(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    path = src / "consolidated.safetensors"
    tensors = load_file(path)
    tensors["layers.1.ffn_norm.weight"][3] = float("nan")  # both sides hold the same NaN: bit-exact
    save_file(tensors, path)
    hf = _convert(run_cli, src, tmp_path / "hf")
    result = run_cli("verify", src, hf, "--json", tmp_path / "report.json", "--quiet")
    assert result.exit_code == 1
    assert "verify FAILED" in result.output and "NaN or inf" in result.output
    report = _strict_json((tmp_path / "report.json").read_text())
    logits = report["checks"]["logits"]  # type: ignore[index]
    assert logits["passed"] is False
    assert logits["nonfinite"][0].startswith("reference hidden state after layer 1")
    assert logits["max_abs_dlogit"] is None or math.isfinite(logits["max_abs_dlogit"])
    assert report["checks"]["tensors"]["passed"] is True  # type: ignore[index]


def test_float16_overflow_fails_verify(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    path = src / "consolidated.safetensors"
    tensors = load_file(path)
    tensors["layers.0.attention.wv.weight"][0, :4] = 1e6  # fine in bfloat16, inf in float16
    save_file(tensors, path)
    hf = _convert(run_cli, src, tmp_path / "hf", "--dtype", "float16")
    result = run_cli("verify", src, hf, "--json", tmp_path / "report.json", "--quiet")
    assert result.exit_code == 1
    assert "4 of 2048 finite native values are inf in float16" in result.output
    report = _strict_json((tmp_path / "report.json").read_text())
    diff = report["checks"]["tensors"]["differences"]["model.layers.0.self_attn.v_proj.weight"]  # type: ignore[index]
    assert diff == {"overflow": 4, "of": 2048, "dtype": "float16"}
    assert report["checks"]["logits"]["passed"] is False  # type: ignore[index]


def test_logit_metrics_do_not_hide_nan() -> None:
    from hubtools.verification.logits import THRESHOLDS, logit_metrics, passes

    ref = torch.tensor([[[1.0, 2.0], [float("nan"), 0.0]]])
    metrics = logit_metrics(ref, ref.clone(), torch.ones(1, 2, dtype=torch.bool))
    assert math.isnan(metrics["max_abs_dlogit"])
    assert not passes(metrics, THRESHOLDS["float32"])


@pytest.mark.parametrize("version", sorted(TOKENIZERS))
def test_verify_passes_on_every_tokenizer_version(version: str, run_cli: RunCli, tmp_path: Path) -> None:
    vocab = TOKENIZERS[version][2]
    params = tiny_params(vocab_size=vocab, dim=32, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1, num_experts=2)
    src = write_native_checkpoint(tmp_path / "native", params, tokenizer=version, dtype=torch.float32)
    hf = _convert(run_cli, src, tmp_path / "hf")
    result = run_cli("verify", src, hf, "--json", tmp_path / "report.json")
    assert result.exit_code == 0, result.output + result.stderr
    report = _strict_json((tmp_path / "report.json").read_text())
    tokenizer = report["checks"]["tokenizer"]  # type: ignore[index]
    assert tokenizer["passed"] is True and tokenizer["agreement"] == 1.0
    assert tokenizer["hf_vocab_size"] == vocab
