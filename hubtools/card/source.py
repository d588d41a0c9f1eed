"""Card sources: `cards/<release>.md`, Markdown with YAML front matter, parsed into a `CardSource`.

Front matter keys: `title`, `repo_id`, `kind` (base or instruct), `tokenizer` (mistral-common version; for
tekken optionally `tokenizer_version`, its instruct format v3 ... v15),
`parameters` (and optional `active_parameters`, `context_length`, `sliding_window`, `architecture`,
`model_name`), `metadata` (the Hub front matter) and `results` (groups of benchmarks sharing a source,
see `hubtools.card.eval_results.benchmarks_from_source`). The prose before the first `## ` heading is the
description; the sections after it close the card.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from hubtools.card.eval_results import Benchmark, benchmarks_from_source
from hubtools.errors import CardError
from hubtools.tokenization.choices import TEKKEN_VERSIONS, TokenizerVersion


class ModelKind(str, Enum):
    """Whether a release is a base model or an instruct (chat) model."""

    BASE = "base"
    INSTRUCT = "instruct"


KINDS = tuple(k.value for k in ModelKind)
TOKENIZERS = tuple(v.value for v in TokenizerVersion)  # the card quotes mistral-common's prompt for each
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.S)
SOURCE_SUFFIXES = (".md", ".markdown")  # a SPEC ending so names a file: never read as a release name
_REQUIRED = {"title": str, "repo_id": str, "kind": str, "tokenizer": str, "parameters": int, "metadata": dict}


@dataclass(frozen=True)
class CardSource:
    """A parsed `cards/<release>.md`: what the body needs, the Hub metadata, results and prose."""

    path: Path
    title: str
    repo_id: str
    kind: ModelKind
    tokenizer: TokenizerVersion
    parameters: int
    metadata: Mapping[str, Any]
    model_name: str
    architecture: str = "MixtralForCausalLM"
    active_parameters: int | None = None
    context_length: int | None = None
    sliding_window: int | None = None
    tokenizer_version: str | None = None  # tekken's instruct format, when the release's is known
    benchmarks: tuple[Benchmark, ...] = ()
    details_urls: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    sections: str = ""


def resolve_card_source(spec: str, *, cards_dir: Path) -> Path:
    """Turn a card source path or a release name (`cards/<name>.*`) into the card source path.

    A SPEC with a path separator or a Markdown suffix is a path: when nothing is there, the message names
    the path (not a release).

    Raises:
        `CardError`: nothing or more than one file matches.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.exists():
        raise CardError(f"{spec}: expected a card source file, found a folder")
    if "/" in spec or "\\" in spec or path.suffix.lower() in SOURCE_SUFFIXES:
        raise CardError(f"{spec}: expected a card source file, found no such path")
    found = sorted(p for p in cards_dir.glob("*") if p.is_file() and p.stem == spec)
    if len(found) != 1:
        what = "no card source" if not found else f"{len(found)} card sources ({', '.join(p.name for p in found)})"
        raise CardError(
            f"release '{spec}': {what} in {cards_dir}/ (expected exactly one {spec}.<ext>; "
            "run from the repository root or pass the card source path)"
        )
    return found[0]


def load_card_source(path: Path) -> CardSource:
    """Parse a card source file.

    Raises:
        `CardError`: no front matter, invalid YAML, a missing or mistyped key.

    Example:
        >>> load_card_source(Path("cards/mixtral-8x22b-v0.1.md")).model_name
        'Mixtral-8x22B-v0.1'
    """
    match = _FRONT_MATTER.match(path.read_text(encoding="utf-8"))
    if match is None:
        raise CardError(f"{path}: no YAML front matter (expected the file to start with '---')")
    try:
        data = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: front matter is not valid YAML ({' '.join(str(exc).split())})") from exc
    _check_source(data, path)
    description, _, rest = ("\n" + match.group(2).strip()).partition("\n## ")
    return CardSource(
        path=path,
        title=data["title"],
        repo_id=data["repo_id"],
        kind=ModelKind(data["kind"]),
        tokenizer=TokenizerVersion(data["tokenizer"]),
        parameters=data["parameters"],
        metadata=data["metadata"],
        model_name=data.get("model_name", data["repo_id"].rsplit("/", 1)[-1]),
        architecture=data.get("architecture", "MixtralForCausalLM"),
        active_parameters=data.get("active_parameters"),
        context_length=data.get("context_length"),
        sliding_window=data.get("sliding_window"),
        tokenizer_version=data.get("tokenizer_version"),
        benchmarks=benchmarks_from_source(data.get("results"), where=str(path)),
        details_urls={
            g.get("source") or "": g["details_url"]
            for g in data.get("results") or ()
            if isinstance(g, Mapping) and g.get("details_url")
        },
        description=description.strip(),
        sections=f"## {rest.strip()}" if rest.strip() else "",
    )


def _check_source(data: Any, path: Path) -> None:
    if not isinstance(data, dict):
        raise CardError(f"{path}: front matter must be a mapping, got {data!r}")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise CardError(f"{path}: '{key}' must be a {kind.__name__}, got {data.get(key)!r}")
    if data["kind"] not in KINDS:
        raise CardError(f"{path}: 'kind' must be one of {', '.join(KINDS)}, got {data['kind']!r}")
    if data["tokenizer"] not in TOKENIZERS:
        raise CardError(f"{path}: 'tokenizer' must be one of {', '.join(TOKENIZERS)}, got {data['tokenizer']!r}")
    version = data.get("tokenizer_version")
    if version is not None and (data["tokenizer"] != "tekken" or version not in TEKKEN_VERSIONS):
        raise CardError(
            f"{path}: 'tokenizer_version' must be one of {', '.join(TEKKEN_VERSIONS)} with tokenizer tekken, "
            f"got {version!r} with {data['tokenizer']!r}"
        )
    reserved = sorted({"model-index", "eval_results", "model_name"} & set(data["metadata"]))
    if reserved:
        raise CardError(f"{path}: metadata must not set {', '.join(reserved)} (list benchmarks under 'results')")
    for key in ("active_parameters", "context_length", "sliding_window"):
        if data.get(key) is not None and (not isinstance(data[key], int) or isinstance(data[key], bool)):
            raise CardError(f"{path}: '{key}' must be an int, got {data[key]!r}")
