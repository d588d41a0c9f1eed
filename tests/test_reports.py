"""The verify reports reached directly: the checks (verification.checks), the one report base and load_report
(verification.report), the one vocabulary of terminal and cards (verification.report_text), and the GGUF
metadata comparison (gguf.metadata_check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubtools.errors import VerifyError
from hubtools.gguf.files import GgufFiles
from hubtools.gguf.metadata_check import metadata_problems
from hubtools.verification.checks import (
    NEAR_TIE,
    THRESHOLDS,
    Check,
    LogitsCheck,
    StructureCheck,
    TensorsCheck,
    TokenizerCheck,
)
from hubtools.verification.report import GgufReport, Report, VerifyReport, load_report, report_from_dict
from hubtools.verification.report_text import (
    METRIC_LABELS,
    Status,
    check_details,
    format_report,
    gguf_quality,
    logits_line,
    status,
    verdict,
)

LOGITS = LogitsCheck(
    True,
    "bfloat16",
    max_abs_dlogit=0.25,
    nmse=1e-5,
    mean_kl=2e-4,
    max_kl=3e-3,
    top1_agreement=0.98,
    top1_near_tie_agreement=1.0,
    near_tie=NEAR_TIE["bfloat16"],
    tokens=100,
    thresholds=THRESHOLDS["bfloat16"],
)


def hf_report(tensors_pass: bool = True) -> VerifyReport:
    tensors = TensorsCheck(tensors_pass, 3, 3, () if tensors_pass else ("a",))
    tokenizer = TokenizerCheck(True, skipped="no tokenizer file in the native folder")
    return VerifyReport("n", "h", StructureCheck(True, ()), tensors, tokenizer, LOGITS, hubtools_version="9.9")


def gguf_report() -> GgufReport:
    structure = Check(True, (), {"problem_count": 0, "tensors": 3})
    tensors = Check(False, ("tensor 'x': differs from the source at byte 4",), {"compared": 3, "mismatched": 1})
    tokenizer = Check(True, skipped="no tokenizer file in the source folder")
    return GgufReport("src", ("/g/m.Q8_0.gguf",), "Q8_0", structure, tensors, tokenizer, LOGITS, hubtools_version="9.9")


def test_the_near_tie_rule_has_one_home() -> None:
    assert NEAR_TIE == {"float32": 0.0, "bfloat16": 0.1}
    assert set(NEAR_TIE) == set(THRESHOLDS)


def test_both_reports_share_the_base_and_its_json() -> None:
    hf, gguf = hf_report(tensors_pass=False), gguf_report()
    assert isinstance(hf, Report) and isinstance(gguf, Report)
    assert list(hf.checks()) == list(gguf.checks()) == ["structure", "tensors", "tokenizer", "logits"]
    assert (hf.passed, hf.failed(), hf.summary()) == (False, ["tensors"], "failed: tensors")
    assert (gguf.passed, gguf.failed()) == (False, ["tensors"])
    assert list(hf.to_dict()) == ["passed", "hubtools_version", "native", "hf", "checks"]
    assert list(gguf.to_dict()) == ["passed", "hubtools_version", "native", "gguf", "quant", "checks"]
    assert gguf.to_dict()["checks"]["tokenizer"] == {
        "passed": None,
        "problems": [],
        "skipped": "no tokenizer file in the source folder",
    }
    assert VerifyReport.from_dict(json.loads(hf.to_json())) == hf
    assert GgufReport.from_dict(json.loads(gguf.to_json())) == gguf
    assert report_from_dict(json.loads(gguf.to_json())) == gguf


def test_load_report_returns_the_typed_report(tmp_path: Path) -> None:
    for report in (hf_report(), gguf_report()):
        path = tmp_path / "verify.json"
        path.write_text(report.to_json())
        assert load_report(path) == report


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "expected a hubtools verify report (JSON), found invalid JSON (Expecting property name"),
        ("[1]", "expected a hubtools verify report, found a malformed one (a JSON list, not an object)"),
        ('{"checks": {}}', "expected a hubtools verify report, found no field 'structure'"),
        (
            json.dumps({**gguf_report().to_dict(), "gguf": "m.gguf"}),
            "expected a hubtools verify report, found a malformed one ('gguf' is str, not a list of files)",
        ),
        (
            '{"gguf": [], "checks": {"structure": {"passed": true, "problems": []}, "tensors": {}}}',
            "expected a hubtools verify report, found no field 'tokenizer'",
        ),
    ],
)
def test_a_bad_report_is_one_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "verify.json"
    path.write_text(text)
    with pytest.raises(VerifyError) as raised:
        load_report(path)
    assert str(raised.value).startswith(f"{path}: {message}")


def test_a_missing_report_is_named(tmp_path: Path) -> None:
    with pytest.raises(VerifyError) as raised:
        load_report(tmp_path / "gone.json")
    assert str(raised.value) == f"{tmp_path / 'gone.json'}: expected a hubtools verify report, found no file"


def test_the_status_and_verdict_words() -> None:
    assert [(s.value, s.short) for s in Status] == [("passed", "PASS"), ("FAILED", "FAIL"), ("not run", "SKIP")]
    assert status(Check(False)) is Status.FAILED and status(TokenizerCheck(True, skipped="x")) is Status.NOT_RUN
    assert (verdict(True), verdict(False)) == ("passed", "FAILED")


def test_the_terminal_and_the_card_use_the_same_metric_labels() -> None:
    line = logits_line(LOGITS)
    card = check_details(LOGITS)
    for key in ("max_abs_dlogit", "nmse", "mean_kl", "max_kl", "top1_agreement"):
        assert METRIC_LABELS[key] in line and METRIC_LABELS[key] in card
    assert line == (
        "bfloat16: max abs dlogit 2.50e-01, NMSE 1.00e-05, mean KL 2.00e-04, max KL 3.00e-03, top-1 agreement 98.0% "
        "(100.0% within 0.1 near-ties) on 100 tokens; limits: mean_kl <= 0.001, top1_near_tie_agreement >= 0.99"
    )
    assert card == (
        "dtype bfloat16, max abs dlogit 0.25, NMSE 1e-05, mean KL 0.0002, max KL 0.003, top-1 agreement 98.00%, "
        "on 100 tokens"
    )


def test_format_report_tables_both_reports() -> None:
    assert format_report(hf_report()).splitlines()[:8] == [
        "hubtools verify PASSED",
        "  native: n",
        "  hf:     h",
        "",
        "  structure  PASS  0 problem(s)",
        "  tensors    PASS  3/3 bit-identical",
        "  tokenizer  SKIP  no tokenizer file in the native folder",
        f"  logits     PASS  {logits_line(LOGITS)}",
    ]
    assert format_report(gguf_report()).splitlines() == [
        "hubtools verify FAILED",
        "  source: src",
        "  gguf:   /g/m.Q8_0.gguf (Q8_0)",
        "",
        "  structure  PASS  problem_count 0, tensors 3",
        "  tensors    FAIL  compared 3, mismatched 1",
        "  tokenizer  SKIP  no tokenizer file in the source folder",
        f"  logits     PASS  {logits_line(LOGITS)}",
        "",
        "  problems:",
        "    - tensor 'x': differs from the source at byte 4",
    ]


def test_the_gguf_card_quality_columns() -> None:
    assert gguf_quality(gguf_report()) == {"kl": "2.00e-04", "top1": "98.0%", "verified": "FAILED"}
    assert gguf_quality(None) == {"kl": "not measured", "top1": "not measured", "verified": "not verified"}


def test_gguf_metadata_differences_name_key_expected_and_found() -> None:
    files = GgufFiles((Path("m.gguf"),), {}, {"llama.block_count": ([], 2), "llama.rope.freq_base": ([], 1e6)})
    expected = {"llama.block_count": 4, "llama.rope.freq_base": 1e6, "llama.context_length": 32768}
    assert metadata_problems(files, expected) == [
        "metadata 'llama.block_count': expected 4, found 2",
        "metadata 'llama.context_length': missing (expected 32768)",
    ]
