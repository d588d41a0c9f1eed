"""`hubtools verify`: prove that an HF folder is an exact conversion of a native checkpoint.

Four checks, each reported with the names of what failed:
- structure: config.json vs params.json (every field; rope_theta by the documented rule), every tensor
  mapped exactly once, shapes, dtypes, the index against the shards (`verify_structure`);
- tensors: every HF tensor equals `to_hf(native)` bit for bit (cast first if the conversion changed
  dtype), one pair in memory at a time;
- tokenizer: `tokenizer_parity.check_tokenizer` (HF tokenizer vs the native one);
- logits: the clean-room reference vs transformers' decoder layers, layer by layer (`verify_logits`).

Either folder may be given first; which is native and which HF is detected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubtools import __version__
from hubtools.checkpoint.reader import Checkpoint, open_checkpoint
from hubtools.errors import TokenizerError, VerifyError
from hubtools.model.names import NameTable
from hubtools.model.params import default_rope_theta
from hubtools.verification.logits import THRESHOLDS, LogitsCheck
from hubtools.verification.structure import (
    HfFolder,
    StructureCheck,
    config_problems,
    dtype_problems,
    index_hf_folder,
    mapping_problems,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TensorsCheck:
    """Bit-exact comparison of every tensor present on both sides."""

    passed: bool
    compared: int
    expected: int
    mismatched: tuple[str, ...] = ()
    differences: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "compared": self.compared,
            "expected": self.expected,
            "mismatched": list(self.mismatched),
            "differences": self.differences,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class TokenizerCheck:
    """The tokenizer parity report (its own fields), or why it did not run."""

    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {**self.details, "passed": None if self.skipped else self.passed}
        out.update({k: getattr(self, k) for k in ("skipped", "error") if getattr(self, k)})
        return out


@dataclass(frozen=True)
class VerifyReport:
    """Everything `verify` found. `passed` only if every check passed; a skipped check does not fail
    the report, and its JSON `passed` is null ("not run")."""

    native: str
    hf: str
    structure: StructureCheck
    tensors: TensorsCheck
    tokenizer: TokenizerCheck
    logits: LogitsCheck
    hubtools_version: str = __version__

    @property
    def passed(self) -> bool:
        return all(c.passed for c in (self.structure, self.tensors, self.tokenizer, self.logits))

    def to_dict(self) -> dict[str, Any]:
        checks: dict[str, Any] = {
            "structure": self.structure,
            "tensors": self.tensors,
            "tokenizer": self.tokenizer,
            "logits": self.logits,
        }
        return {
            "passed": self.passed,
            "hubtools_version": self.hubtools_version,
            "native": self.native,
            "hf": self.hf,
            "checks": {k: v.to_dict() for k, v in checks.items()},
        }


def _layouts(folder: Path) -> set[str]:
    """Which layouts a folder could hold; open_checkpoint / the audit give the precise errors later."""
    if not folder.is_dir():
        return set()
    names = {p.name for p in folder.iterdir()}
    found = set()
    if "params.json" in names and any(n.startswith("consolidated") for n in names):
        found.add("native")
    if "config.json" in names and any(n.startswith("model") and ".safetensors" in n for n in names):
        found.add("hf")
    return found


def assign_folders(first: Path, second: Path) -> tuple[Path, Path]:
    """(native, hf) from two folders given in either order; the given order wins when both could be either.

    Raises:
        VerifyError: both folders are the same layout, or one is not a checkpoint.
    """
    a, b = _layouts(first), _layouts(second)
    if "native" in a and "hf" in b:
        return first, second
    if "native" in b and "hf" in a:
        return second, first
    for folder, found in ((first, a), (second, b)):
        if not found:
            raise VerifyError(
                f"{folder}: not a checkpoint (expected params.json with consolidated weights, "
                "or config.json with model*.safetensors)"
            )
    layout = next(iter(a | b))
    raise VerifyError(
        f"{first} and {second} are both {layout} checkpoints (expected a native folder and its HF conversion)"
    )


def check_structure(
    native: Checkpoint, hf: HfFolder, table: NameTable, *, rope_theta: float | None = None
) -> StructureCheck:
    """Config vs params, both sides' tensors against the name table, dtypes and the index."""
    problems = list(hf.problems)
    if hf.config is not None:
        problems += config_problems(hf.config, native.params, rope_theta=rope_theta)
        problems += dtype_problems(hf.config, hf.tensors)
    for ckpt_layout, tensors, where in (("native", native.tensors, "native"), ("hf", hf.tensors, "HF")):
        problems += mapping_problems(
            table, list(tensors), {n: t.shape for n, t in tensors.items()}, layout=ckpt_layout, where=where
        )
    notes = list(hf.notes)
    native_dtypes = _dtype_names(t.dtype for t in native.tensors.values())
    hf_dtypes = _dtype_names(t.dtype for t in hf.tensors.values())
    if hf_dtypes and native_dtypes != hf_dtypes:
        notes.append(f"the conversion changed dtype: native {native_dtypes} -> HF {hf_dtypes}")
    return StructureCheck(not problems, tuple(problems), tuple(notes))


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(sorted({str(d).removeprefix("torch.") for d in dtypes}))


def forward_ready(native: Checkpoint, hf: HfFolder, table: NameTable) -> bool:
    """Every tensor present with its expected shape on both sides (a forward can run)."""
    return all(
        s.native in native.tensors
        and native.tensors[s.native].shape == s.shape
        and s.hf in hf.tensors
        and hf.tensors[s.hf].shape == s.shape
        for s in table.specs
    )


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _difference(expected: torch.Tensor, actual: torch.Tensor) -> dict[str, Any]:
    if actual.dtype != expected.dtype:
        return {
            "dtype": str(actual.dtype).removeprefix("torch."),
            "expected_dtype": str(expected.dtype).removeprefix("torch."),
        }
    differ = _bits(expected).view(-1, expected.element_size()).ne(_bits(actual).view(-1, actual.element_size()))
    delta = (expected.float() - actual.float()).abs()
    return {"elements": int(differ.any(-1).sum()), "of": expected.numel(), "max_abs": float(delta.nan_to_num().max())}


def check_tokenizer_parity(native: Checkpoint, hf_folder: Path, prompts_path: Path | None) -> TokenizerCheck:
    """Tokenizer parity via `hubtools.tokenization.parity`, or why it was skipped."""
    if native.tokenizer_file is None:
        return TokenizerCheck(True, skipped="no tokenizer file in the native folder")
    try:
        from hubtools.tokenization import parity as tokenizer_parity
    except ModuleNotFoundError as exc:
        if exc.name != "hubtools.tokenization.parity":
            raise
        return TokenizerCheck(True, skipped="hubtools.tokenization.parity is not installed")
    try:
        prompts = tokenizer_parity.load_prompts(prompts_path) if prompts_path else None
        report = tokenizer_parity.check_tokenizer(hf_folder, native.tokenizer_file, prompts=prompts, chat=True)
    except TokenizerError as exc:
        return TokenizerCheck(False, error=str(exc))
    return TokenizerCheck(bool(report.passed), report.to_dict())


def verify(
    native: Path,
    hf: Path,
    *,
    dtype: torch.dtype = torch.float32,
    prompts_path: Path | None = None,
    check_logits: bool = True,
    rope_theta: float | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify that an HF folder is an exact conversion of a native checkpoint (arguments in either order).

    Args:
        dtype: compute dtype of the logits check: float32 (catches conversion bugs) or bfloat16.
        prompts_path: prompts for the tokenizer check (`tokenizer_parity.load_prompts`).
        check_logits: run both forwards (the slow part).
        rope_theta: the native model's rotary base when params.json omits it and the default rule is wrong.
        progress: called with a short message as each stage advances.

    Returns:
        A `VerifyReport`; verification that finds differences returns normally with `passed` False.

    Raises:
        VerifyError: the folders are not a native / HF pair, or `dtype` is not supported.
        HubtoolsError subclasses: the native checkpoint cannot be read.

    Example:
        >>> report = verify(Path("mixtral-native"), Path("mixtral-hf"))  # doctest: +SKIP
        >>> report.passed  # doctest: +SKIP
        True
    """
    say = progress or (lambda _: None)
    if str(dtype).removeprefix("torch.") not in THRESHOLDS:
        raise VerifyError(f"unsupported verify dtype '{dtype}' (expected float32 or bfloat16)")
    native, hf = assign_folders(native, hf)
    with open_checkpoint(native, layout="native") as src:
        say("structure")
        audit = index_hf_folder(hf)
        table = NameTable(src.params)
        structure = check_structure(src, audit, table, rope_theta=rope_theta)
        with audit.checkpoint(src.params) as dst:
            theta = rope_theta if rope_theta is not None else default_rope_theta(src.params)
            ready = forward_ready(src, audit, table)
            from hubtools.verification.stream import one_pass

            tensors, logits = one_pass(
                src, dst, hf, table, ready, dtype=dtype, rope_theta=theta, enabled=check_logits, progress=say
            )
            say("tokenizer")
            tokenizer = check_tokenizer_parity(src, hf, prompts_path)
    return VerifyReport(str(native), str(hf), structure, tensors, tokenizer, logits)


def _status(check: Any) -> str:
    if getattr(check, "skipped", None):
        return "SKIP"
    return "PASS" if check.passed else "FAIL"


def _logits_line(c: LogitsCheck) -> str:
    if c.skipped or c.error:
        return str(c.skipped or c.error)
    limits = ", ".join(f"{k} {'>=' if k.startswith('top1') else '<='} {v:g}" for k, v in c.thresholds.items())
    ties = f" ({100 * (c.top1_near_tie_agreement or 0):.1f}% within {c.near_tie:g} near-ties)" if c.near_tie else ""
    return (
        f"{c.dtype}: max|dlogit| {c.max_abs_dlogit:.2e}, NMSE {c.nmse:.2e}, KL mean {c.mean_kl:.2e} "
        f"max {c.max_kl:.2e}, top-1 {100 * (c.top1_agreement or 0):.1f}%{ties} on {c.tokens} tokens; "
        f"limits: {limits}"
    )


def _tokenizer_line(c: TokenizerCheck) -> str:
    if c.skipped or c.error:
        return str(c.skipped or c.error)
    agreement = c.details.get("agreement")
    shown = f"{100 * agreement:.1f}%" if isinstance(agreement, float) else str(agreement)
    return f"agreement {shown} on {c.details.get('sequences', '?')} sequences"


def format_report(report: VerifyReport, *, max_names: int = 10) -> str:
    """The report as a readable terminal table (checks, per-layer differences, problems)."""
    s, t = report.structure, report.tensors
    rows = [
        ("structure", _status(s), f"{len(s.problems)} problem(s)"),
        ("tensors", _status(t), f"{t.compared - len(t.mismatched)}/{t.expected} bit-identical"),
        ("tokenizer", _status(report.tokenizer), _tokenizer_line(report.tokenizer)),
        ("logits", _status(report.logits), _logits_line(report.logits)),
    ]
    lines = [
        f"hubtools verify {'PASSED' if report.passed else 'FAILED'}",
        f"  native: {report.native}",
        f"  hf:     {report.hf}",
        "",
    ]
    lines += [f"  {name:<10} {status:<5} {detail}" for name, status, detail in rows]
    if report.logits.layers:
        lines += ["", f"  {'layer':>5}  {'max|dh|':>10}  {'rel dh':>10}"]
        lines += [f"  {d.layer:>5}  {d.max_abs_dh:>10.2e}  {d.rel_dh:>10.2e}" for d in report.logits.layers]
    findings = list(s.problems) + [
        f"tensor differs: '{n}' ({_describe(t.differences.get(n, {}))})" for n in t.mismatched
    ]
    if findings:
        lines += ["", "  problems:"] + [f"    - {p}" for p in findings[:max_names]]
        if len(findings) > max_names:
            lines.append(f"    ... and {len(findings) - max_names} more (see the JSON report)")
    notes = list(s.notes) + list(t.notes)
    if notes:
        lines += ["", "  notes:"] + [f"    - {n}" for n in notes]
    return "\n".join(lines)


def _describe(diff: dict[str, Any]) -> str:
    if "elements" in diff:
        return f"{diff['elements']} of {diff['of']} elements, max |d| {diff['max_abs']:.3g}"
    return f"dtype {diff.get('dtype')}, expected {diff.get('expected_dtype')}"
