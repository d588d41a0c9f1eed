"""The card of a GGUF release (`hubtools card SPEC --gguf DIR`), in the shape of TheBloke's GGUF repos
(seed 004): front matter with base_model, model_creator, quantized_by and prompt_template; a "Provided
files" table (name, quant method, bits, size, max RAM = size + 2.5 GB as TheBloke computed it) where the
quality column is measured by `hubtools verify SRC FILE.gguf --json` (mean KL and top-1 agreement against
the original in float32) instead of adjectives; download commands with `hf download --include`; a
llama.cpp command with the model's context length and prompt template.

Verify reports are found beside the files (`<file>.verify.json`, what the release pipeline writes) or
given explicitly; a file without a report says "not measured".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from hubtools.card.render import jinja_environment, user_turn
from hubtools.card.rules import validate_card_text
from hubtools.card.source import CardSource, ModelKind
from hubtools.errors import CardError, VerifyError
from hubtools.filenames import GGUF_FILE, GGUF_SUFFIX, MMPROJ_PREFIX, gguf_include_pattern, report_name
from hubtools.gguf.files import check_gguf_files
from hubtools.units import size_both
from hubtools.verification.report import GgufReport, load_report
from hubtools.verification.report_text import gguf_quality

MAX_RAM_EXTRA = 2.5e9  # TheBloke's "max RAM required": the file size plus 2.5 GB
_NOMINAL_BITS = {"F32": 32, "F16": 16, "BF16": 16}


@dataclass(frozen=True)
class GgufFacts:
    """What one GGUF file (the first part of a split set) says about itself in its metadata."""

    chat_template: bool = False  # tokenizer.chat_template present and not empty
    context_length: int | None = None  # <arch>.context_length
    tokenizer: str | None = None  # "v1", "v2", "v3", "v7" or "tekken", read from the vocabulary
    file_type: str | None = None  # general.file_type as a llama.cpp name (MOSTLY_Q8_0)


@dataclass(frozen=True)
class GgufRelease:
    """One quant of the release: its files (split parts together), size, measured quality, metadata facts."""

    quant: str
    files: tuple[str, ...]
    size: int
    report: GgufReport | None
    facts: GgufFacts = GgufFacts()

    @property
    def name(self) -> str:
        return self.files[0]

    @property
    def bits(self) -> int:
        if self.quant in _NOMINAL_BITS:
            return _NOMINAL_BITS[self.quant]
        digits = re.search(r"\d+", self.quant.removeprefix("IQ").removeprefix("Q").removeprefix("TQ"))
        return int(digits.group()) if digits else 0


def find_releases(folder: Path, reports: Sequence[Path] = ()) -> list[GgufRelease]:
    """The GGUF quants in `folder`, smallest first, each with its verify report when one is found.

    Raises:
        CardError: the folder holds no GGUF file.  VerifyError: a report that is not a GGUF verify report.
        CorruptFileError: a GGUF file that is truncated or corrupt, naming it.
    """
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.glob(f"*{GGUF_SUFFIX}")):
        match = GGUF_FILE.fullmatch(path.name)
        if match and not path.name.startswith(MMPROJ_PREFIX):  # a vision projector is not a quant of the model
            groups.setdefault(match["quant"], []).append(path)
    if not groups:
        raise CardError(f"{folder}: no GGUF files (expected <name>.<QUANT>.gguf, as `hubtools gguf` writes)")
    check_gguf_files([p for paths in groups.values() for p in paths])  # a card never describes a broken file
    given = [_gguf_report(p) for p in reports]
    found = []
    for quant, paths in groups.items():
        beside = folder / report_name(paths[0].name)
        report = _gguf_report(beside) if beside.is_file() else _matching(given, paths[0].name)
        size = sum(p.stat().st_size for p in paths)
        found.append(GgufRelease(quant, tuple(p.name for p in paths), size, report, gguf_facts(paths[0])))
    return sorted(found, key=lambda r: r.size)


_VERSION_MARKERS = (("[SYSTEM_PROMPT]", "v7"), ("[IMG]", "v3"), ("[PREFIX]", "v3"), ("[INST]", "v2"))


def gguf_facts(path: Path) -> GgufFacts:
    """Read what the card states about a GGUF file from its metadata.

    Raises:
        CorruptFileError, LayoutError: not a readable GGUF file (or split set), naming the file.
    """
    from hubtools.gguf.files import read_gguf

    fields = read_gguf(path).fields
    value = lambda key: fields.get(key, (None, None))[1]  # noqa: E731
    template = value("tokenizer.chat_template")
    arch = value("general.architecture")
    context = value(f"{arch}.context_length") if isinstance(arch, str) else None
    tokens = value("tokenizer.ggml.tokens")
    if value("tokenizer.ggml.pre") == "tekken":
        tokenizer: str | None = "tekken"
    elif isinstance(tokens, list):
        present = set(tokens)
        tokenizer = next((v for marker, v in _VERSION_MARKERS if marker in present), "v1")
    else:
        tokenizer = None
    file_type = value("general.file_type")
    return GgufFacts(
        chat_template=isinstance(template, str) and bool(template.strip()),
        context_length=int(context) if isinstance(context, int) else None,
        tokenizer=tokenizer,
        file_type=_file_type_name(file_type),
    )


def _file_type_name(value: Any) -> str | None:
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(value)).name if value is not None else None
    except ValueError:
        return str(value)


def _check_release(source: CardSource, release: GgufRelease) -> None:
    """Each file must be what the card says: the card source's tokenizer, the quant its name says.

    Raises:
        CardError: naming the file, what the card (or its name) states and what its metadata holds.
    """
    facts = release.facts
    if facts.tokenizer is not None and facts.tokenizer != source.tokenizer.value:
        raise CardError(
            f"{release.name}: expected a {source.tokenizer.value} tokenizer as {source.path} states, found "
            f"{facts.tokenizer} in its vocabulary"
        )
    from gguf import LlamaFileType

    expected = LlamaFileType.ALL_F32.name if release.quant == "F32" else f"MOSTLY_{release.quant}"
    if facts.file_type is not None and facts.file_type != expected:
        raise CardError(
            f"{release.name}: expected general.file_type {expected} as its name says, found {facts.file_type}"
        )


def _gguf_report(path: Path) -> GgufReport:
    """A `hubtools verify SRC FILE.gguf --json` report.

    Raises:
        VerifyError: not a verify report, or the report of an HF conversion.
    """
    report = load_report(path)
    if not isinstance(report, GgufReport):
        raise VerifyError(f"{path}: expected the verify report of a GGUF file, found one of an HF conversion")
    return report


def _matching(reports: Sequence[GgufReport], name: str) -> GgufReport | None:
    return next((r for r in reports if any(Path(f).name == name for f in r.files)), None)


def prompt_template(tokenizer: str, instruct: bool) -> str:
    """The instruct prompt as mistral-common lays out one user turn, `{prompt}` in place (no BOS)."""
    return user_turn(tokenizer, None, "{prompt}") if instruct else "{prompt}"


def quantized_card_data(
    source: CardSource, tags: Sequence[str], *, drop: Sequence[str] = (), **extra: Any
) -> ModelCardData:
    """Front matter of a quantized form's card (seed 004's shape): the original's metadata less `drop` and its
    base-model fields, `tags` added, base_model / quantized_by / model_creator / prompt_template set."""
    meta = {k: v for k, v in source.metadata.items() if k not in ("base_model", "base_model_relation", *drop)}
    own_tags = meta.pop("tags", None) or []
    return ModelCardData(
        **meta,
        tags=sorted({*own_tags, *tags}),
        base_model=source.repo_id,
        base_model_relation="quantized",
        model_creator=str(source.metadata.get("model_creator", "Mistral AI")),
        model_name=source.title,
        quantized_by="hubtools",
        prompt_template=prompt_template(source.tokenizer.value, source.kind is ModelKind.INSTRUCT),
        **extra,
    )


def render_gguf_card(source: CardSource, releases: Sequence[GgufRelease], *, repo_id: str | None = None) -> str:
    """The README.md of the GGUF repo: validated front matter plus `templates/gguf_card.md.jinja`.

    Raises:
        CardError: the metadata breaks a Hub rule.
    """
    repo = repo_id or f"{source.repo_id}-GGUF"
    instruct = source.kind is ModelKind.INSTRUCT
    for release in releases:
        _check_release(source, release)
    rows = [_row(r, repo) for r in releases]
    example = next((r for r in rows if r["quant"] == "Q4_K_M"), rows[len(rows) // 2] if rows else None)
    if example is None:
        raise CardError(f"{source.path}: no GGUF files to describe")
    with_template = [r for r in rows if r["chat_template"]]
    contexts = {r["context_length"] for r in rows if r["context_length"]}
    template = prompt_template(source.tokenizer.value, instruct)
    creator = str(source.metadata.get("model_creator", "Mistral AI"))
    data = quantized_card_data(source, ("gguf", "llama.cpp"), drop=("library_name",), inference=False)
    context = {
        "title": source.title,
        "creator": creator,
        "repo_id": repo,
        "base_repo": source.repo_id,
        "prompt_template": template,
        # the model's context as the card source states it, else as the files declare it
        "context_length": source.context_length or (max(contexts) if contexts else None),
        "instruct": instruct,
        "rows": rows,
        "example": example,
        "templates": "all" if len(with_template) == len(rows) else "some" if with_template else "none",
        "with_template": [r["name"] for r in with_template],
        "chat_file": example if example["chat_template"] else (with_template[0] if with_template else None),
        "made_by": _made_by([r["quant"] for r in rows]),
    }
    body = jinja_environment().get_template("gguf_card.md.jinja").render(**context)
    text = f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"
    validate_card_text(text, where=str(source.path))
    try:
        ModelCard(text)
    except ValueError as exc:
        raise CardError(f"{source.path}: huggingface_hub cannot read the rendered GGUF card ({exc})") from exc
    return text


def _row(release: GgufRelease, repo: str) -> dict[str, Any]:
    return {
        "name": release.name,
        "url": f"https://huggingface.co/{repo}/blob/main/{release.name}",
        "parts": len(release.files),
        "quant": release.quant,
        "bits": release.bits,
        "size": size_both(release.size),
        "max_ram": size_both(int(release.size + MAX_RAM_EXTRA)),
        "pattern": gguf_include_pattern(release.quant, release.files),
        "chat_template": release.facts.chat_template,
        "context_length": release.facts.context_length,
        **gguf_quality(release.report),
    }


_CONVERTER_TYPES = ("F32", "F16", "BF16", "Q8_0")  # what llama.cpp's convert_hf_to_gguf.py writes itself


def _made_by(quants: Sequence[str]) -> list[str]:
    """One sentence per way the present quants were made (only those the release holds)."""
    from hubtools.gguf.quant import BUILTIN

    same = [q for q in quants if q in _CONVERTER_TYPES]
    gguf_py = [q for q in quants if q in BUILTIN and q not in _CONVERTER_TYPES]
    others = [q for q in quants if q not in BUILTIN]
    lines = []
    if same:
        lines.append(f"The {', '.join(same)} files equal llama.cpp's `convert_hf_to_gguf.py` output byte for byte.")
    if gguf_py:
        lines.append(f"The {', '.join(gguf_py)} files are quantized with gguf-py, as `convert_hf_to_gguf.py` does.")
    if others:
        lines.append(f"The {', '.join(others)} files come from llama.cpp's `llama-quantize`.")
    return lines


def build_gguf_card(
    source: CardSource, folder: Path, *, reports: Sequence[Path] = (), repo_id: str | None = None
) -> str:
    """Find the quants in `folder` and render their card (what `hubtools card SPEC --gguf DIR` does)."""
    return render_gguf_card(source, find_releases(folder, reports), repo_id=repo_id)


def write_gguf_card(
    spec: str, output: Path, folder: Path, *, reports: Sequence[Path] = (), force: bool = False
) -> Path:
    """Resolve SPEC in cards/, render the GGUF card for `folder`, write it atomically.

    Raises:
        DestinationError: the output exists without `force`. CardError: any card problem.
    """
    from hubtools.card.render import write_card
    from hubtools.card.source import load_card_source, resolve_card_source

    source = load_card_source(resolve_card_source(spec, cards_dir=Path("cards")))
    return write_card(build_gguf_card(source, folder, reports=reports), output, force=force)
