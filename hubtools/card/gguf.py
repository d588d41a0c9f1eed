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

from hubtools.card.render import jinja_environment
from hubtools.card.rules import validate_card_text
from hubtools.card.source import CardSource, ModelKind
from hubtools.errors import CardError, VerifyError
from hubtools.filenames import GGUF_FILE, GGUF_SUFFIX, gguf_include_pattern, report_name
from hubtools.gguf.files import check_gguf_files
from hubtools.units import size_both
from hubtools.verification.report import GgufReport, load_report
from hubtools.verification.report_text import gguf_quality

MAX_RAM_EXTRA = 2.5e9  # TheBloke's "max RAM required": the file size plus 2.5 GB
_NOMINAL_BITS = {"F32": 32, "F16": 16, "BF16": 16}


@dataclass(frozen=True)
class GgufRelease:
    """One quant of the release: its files (split parts together), size and measured quality."""

    quant: str
    files: tuple[str, ...]
    size: int
    report: GgufReport | None

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
        if match:
            groups.setdefault(match["quant"], []).append(path)
    if not groups:
        raise CardError(f"{folder}: no GGUF files (expected <name>.<QUANT>.gguf, as `hubtools gguf` writes)")
    check_gguf_files([p for paths in groups.values() for p in paths])  # a card never describes a broken file
    given = [_gguf_report(p) for p in reports]
    found = []
    for quant, paths in groups.items():
        beside = folder / report_name(paths[0].name)
        report = _gguf_report(beside) if beside.is_file() else _matching(given, paths[0].name)
        found.append(GgufRelease(quant, tuple(p.name for p in paths), sum(p.stat().st_size for p in paths), report))
    return sorted(found, key=lambda r: r.size)


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
    if not instruct:
        return "{prompt}"
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    request: ChatCompletionRequest = ChatCompletionRequest(messages=[UserMessage(content="{prompt}")])
    text = str(getattr(MistralTokenizer, tokenizer)().encode_chat_completion(request).text).replace("▁", " ")
    return text.removeprefix("<s>").strip()


def render_gguf_card(source: CardSource, releases: Sequence[GgufRelease], *, repo_id: str | None = None) -> str:
    """The README.md of the GGUF repo: validated front matter plus `templates/gguf_card.md.jinja`.

    Raises:
        CardError: the metadata breaks a Hub rule.
    """
    repo = repo_id or f"{source.repo_id}-GGUF"
    instruct = source.kind is ModelKind.INSTRUCT
    rows = [_row(r, repo) for r in releases]
    template = prompt_template(source.tokenizer.value, instruct)
    meta = {k: v for k, v in source.metadata.items() if k not in ("base_model", "base_model_relation", "library_name")}
    tags = sorted({*(meta.pop("tags", None) or []), "gguf", "llama.cpp"})
    data = ModelCardData(
        **meta,
        tags=tags,
        base_model=source.repo_id,
        base_model_relation="quantized",
        model_creator=str(source.metadata.get("model_creator", "Mistral AI")),
        model_name=source.title,
        quantized_by="hubtools",
        prompt_template=template,
        inference=False,
    )
    context = {
        "title": source.title,
        "repo_id": repo,
        "base_repo": source.repo_id,
        "prompt_template": template,
        "context_length": source.context_length or 32768,
        "instruct": instruct,
        "rows": rows,
        "example": next((r for r in rows if r["quant"] == "Q4_K_M"), rows[len(rows) // 2]),
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
        **gguf_quality(release.report),
    }


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
