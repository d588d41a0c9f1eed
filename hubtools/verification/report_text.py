"""Verify reports in words, one vocabulary for the terminal and the model cards.

- a check's status (`Status`): passed, FAILED or not run; the terminal table writes it short (PASS, FAIL, SKIP);
- a report's verdict (`verdict`): passed or FAILED (the terminal headline writes it in capitals);
- each logits metric's label (`METRIC_LABELS`), and a figure not measured (`NOT_MEASURED`);
- `format_report`: the terminal table of either report; `check_details` and `gguf_quality`: what the
  HF card's verify table and the GGUF card's quality columns say of a check.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from hubtools.verification.checks import (
    VISION_PROJECTOR,
    VISION_STEM,
    Bound,
    Check,
    LogitsCheck,
    StructureCheck,
    TensorsCheck,
    TokenizerCheck,
    is_skipped,
)
from hubtools.verification.report import GgufReport, VerifyReport


class Status(str, Enum):
    """What became of one check; `short` is its form in the terminal table."""

    PASSED = "passed"
    FAILED = "FAILED"
    NOT_RUN = "not run"

    @property
    def short(self) -> str:
        return {"passed": "PASS", "FAILED": "FAIL", "not run": "SKIP"}[self.value]


def status(check: Any) -> Status:
    """The status of any check of either report.

    Example:
        >>> status(Check(True)).short, status(Check(True, skipped="no tokenizer")).value
        ('PASS', 'not run')
    """
    if is_skipped(check):
        return Status.NOT_RUN
    return Status.PASSED if check.passed else Status.FAILED


def verdict(passed: bool) -> str:
    """A report's verdict: 'passed' or 'FAILED'."""
    return (Status.PASSED if passed else Status.FAILED).value


METRIC_LABELS = {
    "max_abs_dlogit": "max abs dlogit",
    "nmse": "NMSE",
    "mean_kl": "mean KL",
    "max_kl": "max KL",
    "top1_agreement": "top-1 agreement",
    "top1_near_tie_agreement": "top-1 agreement counting near-ties",
}
NOT_MEASURED = "not measured"
NOT_VERIFIED = "not verified"


def _limit(metric: str, bound: Bound, limit: float) -> str:
    return f"{metric} {'<=' if bound is Bound.CEILING else '>='} {limit:g}"


def logits_line(c: LogitsCheck) -> str:
    """The logits check in one terminal line: its figures and the limits they are judged by."""
    if c.skipped or c.error:
        return str(c.skipped or c.error)
    if c.nonfinite:
        return f"{c.dtype}: cannot be measured, NaN or inf in " + "; ".join(c.nonfinite)
    label = METRIC_LABELS
    limits = ", ".join(_limit(t.metric, t.bound, t.limit) for t in c.thresholds)
    ties = f" ({100 * (c.top1_near_tie_agreement or 0):.1f}% within {c.near_tie:g} near-ties)" if c.near_tie else ""
    routed = (
        f"; {len(c.routing_near_ties)} token(s) took the reference's experts on a routing near-tie"
        if c.routing_near_ties
        else ""
    )
    return (
        f"{c.dtype}: {label['max_abs_dlogit']} {c.max_abs_dlogit:.2e}, {label['nmse']} {c.nmse:.2e}, "
        f"{label['mean_kl']} {c.mean_kl:.2e}, {label['max_kl']} {c.max_kl:.2e}, "
        f"{label['top1_agreement']} {100 * (c.top1_agreement or 0):.1f}%{ties} on {c.tokens} tokens; "
        f"limits: {limits}{routed}"
    )


def tokenizer_line(c: TokenizerCheck) -> str:
    if c.skipped or c.error:
        return str(c.skipped or c.error)
    shown = f"{100 * c.agreement:.1f}%" if c.agreement is not None else "n/a"
    images = c.details.get("images")
    if isinstance(images, dict):  # a vision model's conversations with images
        with_images = f"{images.get('agreed')}/{images.get('sequences')} with images"
        return f"agreement {shown} on {c.sequences} sequences ({with_images}, {images.get('processor')})"
    return f"agreement {shown} on {c.sequences} sequences"


def _check_line(check: Check) -> str:
    if check.skipped:
        return check.skipped
    parts = [f"{k} {v}" for k, v in check.details.items() if isinstance(v, (int, float, bool))]
    return ", ".join(parts) or f"{len(check.problems)} problem(s)"


def _table(report: VerifyReport | GgufReport, subjects: list[str], lines: dict[str, str]) -> list[str]:
    head = [f"hubtools verify {verdict(report.passed).upper()}", *subjects, ""]
    return head + [f"  {name:<10} {status(check).short:<5} {lines[name]}" for name, check in report.checks().items()]


def format_report(report: VerifyReport | GgufReport, *, max_names: int = 10) -> str:
    """The report as a readable terminal table (checks, per-layer differences, problems)."""
    if isinstance(report, GgufReport):
        return format_gguf_report(report)
    s, t = report.structure, report.tensors
    lines = _table(
        report,
        [f"  native: {report.native}", f"  hf:     {report.hf}"],
        {
            "structure": f"{len(s.problems)} problem(s)",
            "tensors": f"{t.compared - len(t.mismatched)}/{t.expected} bit-identical",
            "tokenizer": tokenizer_line(report.tokenizer),
            "logits": logits_line(report.logits),
        },
    )
    if report.logits.layers:
        lines += ["", f"  {'layer':>5}  {'max|dh|':>10}  {'rel dh':>10}"]
        lines += [f"  {d.layer:>5}  {d.max_abs_dh:>10.2e}  {d.rel_dh:>10.2e}" for d in report.logits.layers]
    if report.logits.vision:
        lines += ["", f"  {'vision':>6}  {'max|dh|':>10}  {'rel dh':>10}"]
        lines += [f"  {_stage(d.layer):>6}  {d.max_abs_dh:>10.2e}  {d.rel_dh:>10.2e}" for d in report.logits.vision]
    findings = list(s.problems) + [
        f"tensor differs: '{n}' ({describe_difference(t.differences.get(n, {}))})" for n in t.mismatched
    ]
    if findings:
        lines += ["", "  problems:"] + [f"    - {p}" for p in findings[:max_names]]
        if len(findings) > max_names:
            lines.append(f"    ... and {len(findings) - max_names} more (see the JSON report)")
    notes = list(s.notes) + list(t.notes)
    if notes:
        lines += ["", "  notes:"] + [f"    - {n}" for n in notes]
    return "\n".join(lines)


def describe_difference(diff: dict[str, Any]) -> str:
    """One tensor's difference (`TensorTally`'s, the cast rule's in `verification.casts`) in words."""
    if "not_float" in diff:
        return f"cast to {diff['dtype']}, not a floating type: {diff['not_float']} of {diff['of']} values changed"
    if "overflow" in diff:
        return f"{diff['overflow']} of {diff['of']} finite native values are inf in {diff['dtype']}"
    if "underflow" in diff:
        return (
            f"{diff['underflow']} of {diff['of']} non-zero native values are below {diff['dtype']}'s normal range "
            f"({diff['flushed']} flushed to 0): relative error {diff['relative_error']:.2g} > "
            f"{diff['bound']:.2g} ({diff['dtype']}'s rounding)"
        )
    if "elements" in diff:
        return f"{diff['elements']} of {diff['of']} elements, max |d| {diff['max_abs']:.3g}"
    return f"dtype {diff.get('dtype')}, expected {diff.get('expected_dtype')}"


def format_gguf_report(report: GgufReport) -> str:
    """The GGUF report as a terminal table: one line per check, then the problems (each names its tensor/key)."""
    checks = (report.structure, report.tensors, report.tokenizer)
    lines = _table(
        report,
        [f"  source: {report.source}", f"  gguf:   {', '.join(report.files)} ({report.quant})"],
        {
            "structure": _check_line(report.structure),
            "tensors": _check_line(report.tensors),
            "tokenizer": _check_line(report.tokenizer),
            "logits": logits_line(report.logits),
        },
    )
    llama = report.tokenizer.details.get("llama_cpp", {})
    readback = report.tokenizer.details.get("transformers", {})
    for label, info in (("llama.cpp tokenizer", llama), ("transformers read-back", readback)):
        if "agreed" in info:
            lines.append(f"  {label}: {info['agreed']}/{info['texts']} texts equal to mistral-common")
    problems = [p for c in checks for p in c.problems]
    if problems:
        lines += ["", "  problems:"] + [f"    - {p}" for p in problems]
    return "\n".join(lines)


def check_details(check: Any) -> str:
    """What the card's verify table says of one check of a `VerifyReport`."""
    if is_skipped(check):
        return f"skipped: {check.skipped}"
    parts = []
    if isinstance(check, StructureCheck) and check.problems:
        parts.append(f"{len(check.problems)} problem(s), first: {check.problems[0]}")
    elif isinstance(check, TensorsCheck):
        parts.append(f"{check.compared} tensors compared, {len(check.mismatched)} mismatched")
    elif isinstance(check, TokenizerCheck) and check.agreement is not None:
        parts.append(f"{_percent(check.agreement)} agreement over {check.sequences} sequences")
    elif isinstance(check, LogitsCheck):
        parts.append(f"dtype {check.dtype}")
        for key in ("max_abs_dlogit", "nmse", "mean_kl", "max_kl", "top1_agreement"):
            value = check.metric(key)
            if value is not None:
                parts.append(f"{METRIC_LABELS[key]} {_percent(value) if key == 'top1_agreement' else _number(value)}")
        if check.tokens:
            parts.append(f"on {check.tokens} tokens")
    if getattr(check, "error", None):
        parts.append(f"error: {check.error}")
    return ", ".join(parts)


def _percent(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def gguf_quality(report: GgufReport | None) -> dict[str, str]:
    """The GGUF card's quality columns: mean KL and top-1 agreement vs the original (float32 forward) and
    the verdict, or "not measured".

    Example:
        >>> gguf_quality(None)
        {'kl': 'not measured', 'top1': 'not measured', 'verified': 'not verified'}
    """
    if report is None or report.logits.mean_kl is None:
        return {"kl": NOT_MEASURED, "top1": NOT_MEASURED, "verified": NOT_VERIFIED}
    logits = report.logits
    return {
        "kl": f"{logits.mean_kl:.2e}",
        "top1": f"{100 * (logits.top1_agreement or 0):.1f}%",
        "verified": verdict(report.passed),
    }


def _stage(layer: int) -> str:
    """A vision stage's label: the stem, an encoder layer, or the projector (`vision_pass`)."""
    return {VISION_STEM: "stem", VISION_PROJECTOR: "proj"}.get(layer, str(layer))
