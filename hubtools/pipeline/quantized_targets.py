"""The `quantized:` list of a recipe: the GPTQ / AWQ repos released beside the HF one, validated like the rest.

    quantized:
      - {method: gptq, bits: 4, group_size: 128}                 # repo: <repo_id>-GPTQ
      - {method: awq, bits: 4, group_size: 128, repo: org/Name-AWQ}

Each entry: `method` (gptq or awq), `bits` (4 or 8), `group_size` (a power of two from 32 to 1024), optional
`repo` (default `<repo_id>-GPTQ` / `-AWQ`), optional `samples` and `seq_len` (calibration rows and their length).
An unknown key, a bad value or two entries for one repo is refused, naming the entry and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubtools.errors import RecipeError

METHODS = ("gptq", "awq")
BITS = (4, 8)
GROUP_SIZES = tuple(2**n for n in range(5, 11))
_KEYS = {"method", "bits", "group_size", "repo", "samples", "seq_len"}


@dataclass(frozen=True)
class QuantizedTarget:
    """One quantized repo of a release.

    Example:
        >>> QuantizedTarget("gptq", 4, 128, "org/Model-GPTQ").suffix
        'GPTQ'
    """

    method: str
    bits: int
    group_size: int
    repo: str
    samples: int | None = None
    seq_len: int | None = None

    @property
    def suffix(self) -> str:
        return self.method.upper()

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _int(entry: dict[str, Any], key: str, allowed: tuple[int, ...] | None, where: str) -> int | None:
    value = entry.get(key)
    if value is None and key in ("samples", "seq_len"):
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and (value in allowed if allowed else value > 0)
    if not ok:
        expected = f"one of {', '.join(map(str, allowed))}" if allowed else "a positive integer"
        raise RecipeError(f"{where}: '{key}' is {value!r} (expected {expected})")
    return int(value)  # type: ignore[arg-type]


def parse_target(entry: Any, repo_id: str, where: str) -> QuantizedTarget:
    """One entry of `quantized:`.

    Raises:
        RecipeError: naming the entry and the key.
    """
    if not isinstance(entry, dict):
        raise RecipeError(f"{where}: expected a mapping with method, bits, group_size (and repo), got {entry!r}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise RecipeError(f"{where}: unknown key '{unknown[0]}' (expected some of {', '.join(sorted(_KEYS))})")
    method = entry.get("method")
    if method not in METHODS:
        raise RecipeError(f"{where}: 'method' is {method!r} (expected one of {', '.join(METHODS)})")
    bits = _int(entry, "bits", BITS, where)
    group = _int(entry, "group_size", GROUP_SIZES, where)
    repo = entry.get("repo", f"{repo_id}-{method.upper()}")
    if not isinstance(repo, str) or repo.count("/") != 1 or repo == repo_id:
        raise RecipeError(f"{where}: 'repo' is {repo!r} (expected an org/name repo id other than {repo_id})")
    samples, seq_len = _int(entry, "samples", None, where), _int(entry, "seq_len", None, where)
    return QuantizedTarget(method, bits or 4, group or 128, repo, samples, seq_len)


def parse_quantized_targets(value: Any, repo_id: str, where: str) -> tuple[QuantizedTarget, ...]:
    """The recipe's `quantized:` list (none when absent).

    Raises:
        RecipeError: not a list, a bad entry, or two entries for one repo.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecipeError(f"{where}: 'quantized' must be a list of {{method, bits, group_size, repo}}, got {value!r}")
    targets = tuple(parse_target(entry, repo_id, f"{where}: quantized[{i}]") for i, entry in enumerate(value))
    repos = [t.repo for t in targets]
    twice = next((r for r in repos if repos.count(r) > 1), None)
    if twice:
        raise RecipeError(f"{where}: quantized: two entries publish to '{twice}' (give each its own repo)")
    return targets
