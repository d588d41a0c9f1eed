"""The checks a verify report is made of, each with its JSON form (`to_dict` / `from_dict`), and the pass
rules of the logits check (`THRESHOLDS`, `NEAR_TIE`) defined once for `hubtools verify` on HF folders and GGUF files.

JSON conventions: a check's `passed` is true, false, or null when the check was skipped ("not run");
numbers that could not be measured are null (never a bare NaN, which is not JSON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Bound(str, Enum):
    """Whether a threshold is the most (`ceiling`) or the least (`floor`) a metric may be."""

    CEILING = "ceiling"
    FLOOR = "floor"


@dataclass(frozen=True)
class Threshold:
    """One pass condition of the logits check.

    Example:
        >>> Threshold("top1_agreement", 1.0, Bound.FLOOR).holds(0.99)
        False
    """

    metric: str
    limit: float
    bound: Bound

    def holds(self, value: float | None) -> bool:
        """True when `value` is within the bound; an unmeasured or NaN value never passes."""
        if value is None or not math.isfinite(value):
            return False
        return value <= self.limit if self.bound is Bound.CEILING else value >= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "limit": self.limit, "bound": self.bound.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        return cls(str(data["metric"]), float(data["limit"]), Bound(data["bound"]))


THRESHOLDS: dict[str, tuple[Threshold, ...]] = {
    "float32": (Threshold("max_abs_dlogit", 1e-4, Bound.CEILING), Threshold("top1_agreement", 1.0, Bound.FLOOR)),
    "bfloat16": (Threshold("mean_kl", 1e-3, Bound.CEILING), Threshold("top1_near_tie_agreement", 0.99, Bound.FLOOR)),
}


# A top-1 flip to a token whose reference logit is within this of the reference maximum is a near-tie:
# bfloat16 compute moves logits by up to ~0.1, so such flips say nothing about the conversion.
NEAR_TIE = {"float32": 0.0, "bfloat16": 0.1}

# A token whose top-k experts differ between the sides with their scores this close (relative to the top score,
# on transformers' scores) is a routing near-tie: it takes the reference's experts (`verification.near_ties`).
# bfloat16 routers see inputs a few ulps apart: enough to swap scores up to ~2% apart (measured: 1.7% on a tiny
# random Mistral 4, 1.3% at Small 4's size), never a fault that changes most choices.
ROUTING_NEAR_TIE = {"float32": 0.0, "bfloat16": 2**-5}


def finite_or_none(value: float | None) -> float | None:
    """A metric as JSON can hold it: NaN and infinities become null."""
    return value if value is None or math.isfinite(value) else None


@dataclass(frozen=True)
class StructureCheck:
    """Config vs params, the tensor mapping, shapes, dtypes and the index. `problems` fail the check."""

    passed: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "problems": list(self.problems), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StructureCheck:
        return cls(bool(data["passed"]), tuple(data["problems"]), tuple(data.get("notes", ())))


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorsCheck:
        return cls(
            bool(data["passed"]),
            int(data["compared"]),
            int(data["expected"]),
            tuple(data["mismatched"]),
            dict(data.get("differences", {})),
            tuple(data.get("notes", ())),
        )


@dataclass(frozen=True)
class TokenizerCheck:
    """Tokenizer parity: sequences compared, how many agreed, and the parity report's details."""

    passed: bool
    sequences: int = 0
    agreed: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.sequences if self.sequences else None

    def to_dict(self) -> dict[str, Any]:
        out = {**self.details, "sequences": self.sequences, "agreed": self.agreed, "agreement": self.agreement}
        out["passed"] = None if self.skipped else self.passed
        out.update({k: getattr(self, k) for k in ("skipped", "error") if getattr(self, k)})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerCheck:
        own = {"passed", "sequences", "agreed", "agreement", "skipped", "error"}
        return cls(
            bool(data["passed"]),
            int(data.get("sequences") or 0),
            int(data.get("agreed") or 0),
            {k: v for k, v in data.items() if k not in own},
            data.get("skipped"),
            data.get("error"),
        )


VISION_STEM, VISION_PROJECTOR = -1, 1 << 20  # the `LayerDiff.layer` of a vision encoder's stem and projector


@dataclass(frozen=True)
class LayerDiff:
    """The hidden-state difference after one decoder layer (max |dh| and ||dh|| / ||h_ref||)."""

    layer: int
    max_abs_dh: float | None
    rel_dh: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "max_abs_dh": finite_or_none(self.max_abs_dh),
            "rel_dh": finite_or_none(self.rel_dh),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerDiff:
        return cls(int(data["layer"]), data.get("max_abs_dh"), data.get("rel_dh"))


METRICS = ("max_abs_dlogit", "nmse", "mean_kl", "max_kl", "top1_agreement", "top1_near_tie_agreement")


@dataclass(frozen=True)
class LogitsCheck:
    """Reference vs transformers logits. `skipped`: not run on purpose; `error`: could not run (fails)."""

    passed: bool
    dtype: str
    max_abs_dlogit: float | None = None
    nmse: float | None = None
    mean_kl: float | None = None
    max_kl: float | None = None
    top1_agreement: float | None = None
    top1_near_tie_agreement: float | None = None
    near_tie: float = 0.0
    layers: tuple[LayerDiff, ...] = ()
    vision: tuple[LayerDiff, ...] = ()  # a vision model's encoder: after the stem (-1), each layer, the projector
    sequences: int = 0
    tokens: int = 0
    prompts: str = ""
    thresholds: tuple[Threshold, ...] = ()
    nonfinite: tuple[str, ...] = ()  # where each side first held NaN or inf: the check cannot pass
    routing_near_ties: tuple[str, ...] = ()  # tokens that took the reference's experts on a near tie
    skipped: str | None = None
    error: str | None = None

    def metric(self, name: str) -> float | None:
        """One of `METRICS` by name."""
        if name not in METRICS:
            raise KeyError(name)
        value: float | None = getattr(self, name)
        return value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": None if self.skipped else self.passed, "dtype": self.dtype}
        out.update({name: finite_or_none(self.metric(name)) for name in METRICS})
        out.update(
            near_tie=self.near_tie,
            sequences=self.sequences,
            tokens=self.tokens,
            prompts=self.prompts,
            thresholds=[t.to_dict() for t in self.thresholds],
            nonfinite=list(self.nonfinite),
            layers=[d.to_dict() for d in self.layers],
        )
        if self.vision:
            out["vision"] = [d.to_dict() for d in self.vision]
        if self.routing_near_ties:
            out["routing_near_ties"] = list(self.routing_near_ties)
        out.update({k: getattr(self, k) for k in ("skipped", "error") if getattr(self, k)})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogitsCheck:
        return cls(
            passed=bool(data["passed"]),
            dtype=str(data["dtype"]),
            **{name: data.get(name) for name in METRICS},
            near_tie=float(data.get("near_tie", 0.0)),
            layers=tuple(LayerDiff.from_dict(d) for d in data.get("layers", ())),
            vision=tuple(LayerDiff.from_dict(d) for d in data.get("vision", ())),
            sequences=int(data.get("sequences", 0)),
            tokens=int(data.get("tokens", 0)),
            prompts=str(data.get("prompts", "")),
            thresholds=tuple(Threshold.from_dict(t) for t in data.get("thresholds", ())),
            nonfinite=tuple(str(n) for n in data.get("nonfinite", ())),
            routing_near_ties=tuple(str(n) for n in data.get("routing_near_ties", ())),
            skipped=data.get("skipped"),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class Check:
    """A check of a GGUF report: `problems` name what failed, `details` its figures; `skipped` says why it did
    not run."""

    passed: bool
    problems: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"passed": None if self.skipped else self.passed, "problems": list(self.problems), **self.details}
        return out | ({"skipped": self.skipped} if self.skipped else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        details = {k: v for k, v in data.items() if k not in ("passed", "problems", "skipped")}
        skipped = data.get("skipped")
        return cls(bool(data["passed"]) or bool(skipped), tuple(data["problems"]), details, skipped)


def is_skipped(check: Any) -> bool:
    return bool(getattr(check, "skipped", None))
