"""bench/scale_on_paper.py runs and its counts agree with the cards' (counted from the name table, another way)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from hubtools.card.source import load_card_source

ROOT = Path(__file__).resolve().parents[1]


def _script():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("scale_on_paper", ROOT / "bench" / "scale_on_paper.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_scale_check_runs_and_agrees_with_the_cards(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _script().main([])
    table = capsys.readouterr().out
    assert table.count("\n") == 12 and "peer script RAM" in table
    for row in rows:
        card = load_card_source(ROOT / "cards" / f"{row['release']}.md")
        assert (row["total"], row["weights"]["active"]) == (card.parameters, card.active_parameters)
        kept, dequantized = row["convert"]["fp8_kept"], row["convert"]["to_bfloat16"]
        assert kept["read"] == kept["written"] == row["peer"]["ram_fp8"] < dequantized["written"] == 2 * row["total"]
        assert row["convert"]["peak_fused_gate_up_bf16"] < row["verify"]["bfloat16"]["peak"] < row["peer"]["ram_fp8"]
    small4, large3 = rows
    assert 119e9 < small4["total"] < 120e9 and 675e9 < large3["total"] < 677e9
    assert small4["weights"]["fused_gate_up"] == 128 * 2 * 2048 * 4096  # E x 2I x H
