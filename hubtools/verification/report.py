"""The reports of `hubtools verify`, defined once: what `verify` and `verify_gguf` return, what `--json` writes
and what `hubtools card` reads back (`load_report`).

Both reports share `Report`: four named checks (structure, tensors, tokenizer, logits), `passed` only when
each passed (a skipped check does not fail the report; its JSON `passed` is null, "not run"), and one JSON
form (`to_dict` / `from_dict`). A `VerifyReport` compares an HF folder with its native checkpoint, a
`GgufReport` a GGUF file (or split set) with its source; `load_report` tells them apart by their fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from hubtools.errors import VerifyError
from hubtools.verification.checks import Check, LogitsCheck, StructureCheck, TensorsCheck, TokenizerCheck
from hubtools.version import __version__

CHECKS = ("structure", "tensors", "tokenizer", "logits")


class Report:
    """What a verify run found: the four checks by name, the version that ran them, and what was compared.

    Subclasses are frozen dataclasses with a field per name in `CHECKS`; they say what was compared
    (`subjects`) and how to read it back (`_from_subjects`).
    """

    hubtools_version: str

    def checks(self) -> dict[str, Any]:
        """name -> check, in report order."""
        return {name: getattr(self, name) for name in CHECKS}

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks().values())

    def failed(self) -> list[str]:
        """The names of the checks that failed, in report order."""
        return [name for name, check in self.checks().items() if not check.passed]

    def summary(self) -> str:
        """'failed: tensors, logits': the one line a failed run is told in."""
        return "failed: " + ", ".join(self.failed())

    def subjects(self) -> dict[str, Any]:
        """What was compared, as JSON fields (the folders, or the source and the GGUF files)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "hubtools_version": self.hubtools_version,
            **self.subjects(),
            "checks": {name: check.to_dict() for name, check in self.checks().items()},
        }

    def to_json(self) -> str:
        """The JSON file `load_report` reads (`<file>.verify.json`, a release's `verify.json`)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Read back what `to_dict` wrote.

        Raises:
            KeyError, TypeError, ValueError, AttributeError: `data` is not such a report (`load_report` names
                the file).
        """
        stored = data["checks"]
        checks = {  # a skipped check is stored with passed null
            name: {**check, "passed": True} if check.get("passed") is None else check
            for name, check in ((name, stored[name]) for name in CHECKS)
        }
        return cls._from_subjects(data, checks, str(data.get("hubtools_version", "")))

    @classmethod
    def _from_subjects(cls, data: Mapping[str, Any], checks: dict[str, Any], version: str) -> Self:
        raise NotImplementedError


@dataclass(frozen=True)
class VerifyReport(Report):
    """Everything `verify` found on a native checkpoint and its HF conversion."""

    native: str
    hf: str
    structure: StructureCheck
    tensors: TensorsCheck
    tokenizer: TokenizerCheck
    logits: LogitsCheck
    hubtools_version: str = __version__

    def subjects(self) -> dict[str, Any]:
        return {"native": self.native, "hf": self.hf}

    @classmethod
    def _from_subjects(cls, data: Mapping[str, Any], checks: dict[str, Any], version: str) -> VerifyReport:
        return cls(
            native=str(data["native"]),
            hf=str(data["hf"]),
            structure=StructureCheck.from_dict(checks["structure"]),
            tensors=TensorsCheck.from_dict(checks["tensors"]),
            tokenizer=TokenizerCheck.from_dict(checks["tokenizer"]),
            logits=LogitsCheck.from_dict(checks["logits"]),
            hubtools_version=version,
        )


@dataclass(frozen=True)
class GgufReport(Report):
    """Everything `verify_gguf` found on a GGUF file (or split set) and the checkpoint it was exported from."""

    source: str
    files: tuple[str, ...]
    quant: str
    structure: Check
    tensors: Check
    tokenizer: Check
    logits: LogitsCheck
    hubtools_version: str = __version__

    def subjects(self) -> dict[str, Any]:
        return {"native": self.source, "gguf": list(self.files), "quant": self.quant}

    @classmethod
    def _from_subjects(cls, data: Mapping[str, Any], checks: dict[str, Any], version: str) -> GgufReport:
        files = data["gguf"]
        if not isinstance(files, list):
            raise TypeError(f"'gguf' is {type(files).__name__}, not a list of files")
        return cls(
            source=str(data["native"]),
            files=tuple(str(f) for f in files),
            quant=str(data["quant"]),
            structure=Check.from_dict(checks["structure"]),
            tensors=Check.from_dict(checks["tensors"]),
            tokenizer=Check.from_dict(checks["tokenizer"]),
            logits=LogitsCheck.from_dict(checks["logits"]),
            hubtools_version=version,
        )


def report_from_dict(data: Any) -> VerifyReport | GgufReport:
    """The typed report of a decoded JSON report: a `GgufReport` when it names GGUF files, else a `VerifyReport`.

    Raises:
        KeyError, TypeError, ValueError, AttributeError: not such a report.
    """
    if not isinstance(data, dict):
        raise TypeError(f"a JSON {type(data).__name__}, not an object")
    return GgufReport.from_dict(data) if "gguf" in data else VerifyReport.from_dict(data)


def load_report(path: Path) -> VerifyReport | GgufReport:
    """Read a `hubtools verify --json` report (of an HF folder or of a GGUF file) into its typed report.

    Raises:
        VerifyError: naming the file: unreadable, not JSON, or not a verify report (the first missing or
            malformed field is named).

    Example:
        >>> load_report(Path("/nonexistent/verify.json"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        hubtools.errors.VerifyError: /nonexistent/verify.json: expected a hubtools verify report, found no file...
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VerifyError(f"{path}: expected a hubtools verify report, found no file") from None
    except OSError as exc:
        raise VerifyError(f"{path}: expected a hubtools verify report, found an unreadable file ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"{path}: expected a hubtools verify report (JSON), found invalid JSON ({exc})") from None
    try:
        return report_from_dict(data)
    except KeyError as exc:
        raise VerifyError(f"{path}: expected a hubtools verify report, found no field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise VerifyError(f"{path}: expected a hubtools verify report, found a malformed one ({exc})") from None
