"""Render a release's model card (README.md) from its card source in cards/.

A card source is Markdown with YAML front matter: facts the body needs (title, repo id, kind,
tokenizer, parameter counts), the Hub `metadata`, `results` groups, and prose (the description before
the first `## ` heading, further sections after it). `render_card` builds the front matter through
huggingface_hub's `ModelCardData`/`EvalResult`, the body from `templates/model_card.md.jinja`, and
checks the metadata locally against the Hub's rules before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData

from hubtools.card.eval_results import (
    Benchmark,
    EvalRun,
    average,
    load_lm_eval_results,
    merge_benchmarks,
    to_eval_results,
)
from hubtools.card.model_facts import (
    EXAMPLE_CONVERSATION,
    ModelFacts,
    check_model_matches,
    read_model_facts,
    render_chat_example,
)
from hubtools.card.rules import validate_card_text
from hubtools.card.source import CardSource, ModelKind, load_card_source, resolve_card_source
from hubtools.destination import FILE_MARKER, check_destination, write_file
from hubtools.errors import CardError, VerifyError
from hubtools.units import human_count, size_both
from hubtools.verification.report import GgufReport, VerifyReport, load_report
from hubtools.verification.report_text import check_details, status, verdict

if TYPE_CHECKING:
    from hubtools.card.forms import Form

logger = logging.getLogger(__name__)
MODEL_CLASSES = {"image-text-to-text": "AutoModelForImageTextToText"}  # pipeline_tag -> transformers' auto class


def mistral_tokenizer(tokenizer: str, native: Path | None = None) -> Any:
    """mistral-common's tokenizer for a version: the model's own file when known, else the one mistral-common
    ships (`MistralTokenizer.v1()` ... `.v7()`; tekken: `MistralTokenizer.v3(is_tekken=True)`)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    if native is not None:
        return MistralTokenizer.from_file(str(native))
    if tokenizer == "tekken":
        return MistralTokenizer.v3(is_tekken=True)
    return getattr(MistralTokenizer, tokenizer)()


def reference_prompt(tokenizer: str, native: Path | None = None) -> str:
    """The instruct format as mistral-common (the reference) lays out a user/assistant/user conversation."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    messages: list[UserMessage | AssistantMessage] = [
        UserMessage(content="Instruction"),
        AssistantMessage(content="Model answer"),
        UserMessage(content="Follow-up instruction"),
    ]
    encoded = mistral_tokenizer(tokenizer, native).encode_chat_completion(ChatCompletionRequest(messages=messages))
    return str(encoded.text).replace("▁", " ")


def render_card(
    source: CardSource,
    *,
    runs: Sequence[EvalRun] = (),
    model: ModelFacts | None = None,
    report: VerifyReport | None = None,
    forms: Sequence[Form] = (),
) -> str:
    """Render the README.md text: validated front matter plus the Jinja body.

    Args:
        source (`CardSource`): the release's card source.
        runs (`Sequence[EvalRun]`, *optional*): imported lm-evaluation-harness results; they override the
            card source's results for the same benchmark.
        model (`ModelFacts`, *optional*): facts read from the converted model (`read_model_facts`).
        report (`Mapping`, *optional*): a `hubtools verify --json` report to summarise.
        forms (`Sequence[Form]`, *optional*): the released forms (`hubtools.card.forms.release_forms`) for the
            "Quantizations" table.

    Returns:
        `str`: the card, ready to be written as README.md.

    Raises:
        `CardError`: the metadata breaks a Hub rule, or the results cannot form a model-index.
    """
    benchmarks = merge_benchmarks(source.benchmarks, [b for run in runs for b in run.benchmarks])
    try:
        card_data = ModelCardData(
            **dict(source.metadata),
            eval_results=to_eval_results(benchmarks) or None,
            model_name=source.model_name if benchmarks else None,
        )
    except (TypeError, ValueError) as exc:
        raise CardError(f"{source.path}: metadata cannot be turned into a model card ({exc})") from exc
    body = (
        jinja_environment()
        .get_template("model_card.md.jinja")
        .render(**_context(source, benchmarks, runs, model, report), forms=list(forms))
    )
    text = f"---\n{card_data.to_yaml()}\n---\n\n{body.strip()}\n"
    validate_card_text(text, where=str(source.path))
    try:
        ModelCard(text)
    except ValueError as exc:
        raise CardError(f"{source.path}: huggingface_hub cannot read the rendered card ({exc})") from exc
    return text


def jinja_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hubtools.card", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def _context(
    source: CardSource,
    benchmarks: Sequence[Benchmark],
    runs: Sequence[EvalRun],
    model: ModelFacts | None,
    report: VerifyReport | None,
) -> dict[str, Any]:
    total = model.parameters if model else source.parameters
    active = model.active_parameters if model else source.active_parameters
    if model:
        check_model_matches(source, model)
    origin = "counted in the safetensors headers of the converted model" if model else "as stated by the release"
    instruct = source.kind is ModelKind.INSTRUCT
    native = model.folder / model.tokenizer_file if model and model.folder and model.tokenizer_file else None
    return {
        **_tokenizer_context(source, model, native),
        "title": source.title,
        "description": source.description,
        "sections": source.sections,
        "repo_id": source.repo_id,
        "architecture": source.architecture,
        "tokenizer": source.tokenizer.value,
        "tokenizer_version": source.tokenizer_version,
        "model_class": MODEL_CLASSES.get(str(source.metadata.get("pipeline_tag")), "AutoModelForCausalLM"),
        "context_length": source.context_length or (model.context_length if model else None),
        "config_context_length": model.context_length if model and source.context_length else None,
        "sliding_window": model.sliding_window if model and model.folder else source.sliding_window,
        "instruct": instruct,
        "params": {
            "total_exact": f"{total:,}",
            "total_short": human_count(total, digits=".3g"),
            "origin": origin,
            "active": active,
            "active_short": human_count(active, digits=".3g") if active else None,
        },
        "conversation": [json.dumps(message, ensure_ascii=False) for message in EXAMPLE_CONVERSATION],
        "reference_prompt": reference_prompt(source.tokenizer.value, native) if instruct else None,
        "chat_example": render_chat_example(model) if model else None,
        "chat_template_file": model.chat_template_file if model else None,
        "memory": memory_rows(total),
        "results": results_tables(benchmarks, runs, source.details_urls),
        "verify": verify_summary(report) if report is not None else None,
    }


def _tokenizer_context(source: CardSource, model: ModelFacts | None, native: Path | None) -> dict[str, Any]:
    """How the usage examples reach the tokenizer and the chat format, from what the model folder holds.

    `chat_route` (instruct cards): "template" when the folder ships a chat template (or no folder is given:
    the release's own), "mistral-common" when it ships none but a native tokenizer file
    (`MistralCommonBackend` applies mistral-common's format), "prompt" when it ships neither (the prompt is
    written out in mistral-common's layout). `mistral_common_file`: the native file the mistral-common
    example downloads (tekken has no built-in `MistralTokenizer.<version>()`).
    """
    if model is None or model.chat_template is not None:
        route = "template"
    else:
        route = "mistral-common" if native is not None else "prompt"
    tekken = source.tokenizer.value == "tekken"
    return {
        "chat_route": route,
        "no_template_in": model.folder is not None and model.chat_template is None if model else False,
        "written_prompt": user_turn(source.tokenizer.value, native, EXAMPLE_CONVERSATION[0]["content"])
        if route == "prompt"
        else None,
        "mistral_common_file": (model.tokenizer_file if model and model.tokenizer_file else "tekken.json")
        if tekken
        else None,
    }


def user_turn(tokenizer: str, native: Path | None, content: str) -> str:
    """One user turn as mistral-common lays it out, without the BOS the tokenizer adds."""
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    request: ChatCompletionRequest = ChatCompletionRequest(messages=[UserMessage(content=content)])
    text = str(mistral_tokenizer(tokenizer, native).encode_chat_completion(request).text).replace("▁", " ")
    return text.removeprefix("<s>").strip()


def memory_rows(parameters: int) -> list[dict[str, str]]:
    """Memory for the weights at 16, 8 and 4 bits per parameter, in GB (1e9 bytes) and GiB."""
    rows = []
    for label, bits in (("16-bit (bfloat16 / float16)", 16), ("8-bit (bitsandbytes)", 8), ("4-bit (bitsandbytes)", 4)):
        size = parameters * bits // 8
        rows.append({"label": label, "bytes_per_param": f"{bits / 8:g}", "size": size_both(size)})
    return rows


def results_tables(
    benchmarks: Sequence[Benchmark], runs: Sequence[EvalRun], details_urls: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One Metric/Value table (with the leaderboard-style `Avg.`) per result source, in card order."""
    groups: dict[tuple[str | None, str | None], list[Benchmark]] = {}
    for bench in benchmarks:
        groups.setdefault((bench.source_name, bench.source_url), []).append(bench)
    tables = []
    for (name, url), members in groups.items():
        mean = average(members)
        measured = f"Measured with lm-evaluation-harness: {', '.join(run.label for run in runs)}."
        notes = [measured] if runs and not name else []
        tables.append(
            {
                "title": f"{name} Evaluation Results" if name else "Evaluation Results",
                "url": url.split("?", 1)[0] if url else None,
                "details_url": details_urls.get(name or ""),
                "notes": notes,
                "average": None if mean is None else f"{mean:.2f}",
                "rows": [(bench.name, _value(bench.metrics[0].value)) for bench in members],
                "width": max(len(bench.name) for bench in members),
            }
        )
    return tables


def _value(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def verify_summary(report: VerifyReport) -> dict[str, Any]:
    """Rows for the verify report table: one per check, with its status and headline figures."""
    rows = [
        {"name": name, "result": status(check).value, "details": check_details(check).replace("|", "\\|")}
        for name, check in report.checks().items()
    ]
    return {"version": report.hubtools_version, "verdict": verdict(report.passed), "rows": rows}


def write_card(text: str, dest: Path, *, force: bool = False) -> Path:
    """Write the card atomically, mode 0644, recorded in its folder's `.hubtools` (so `--force` may replace
    it later while unchanged, and never a README someone else wrote); a comment at its end says who wrote it.

    Raises:
        `DestinationError`: `dest` exists without `force`, is not a card hubtools wrote, is a folder, or its
            parent folder is missing.
    """
    return write_file(dest, f"{text.rstrip()}\n\n{FILE_MARKER}\n", force=force)


def build_card(
    spec: str,
    output: str | os.PathLike[str],
    *,
    cards_dir: str | os.PathLike[str] = "cards",
    results: Sequence[str | os.PathLike[str]] = (),
    model_dir: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    forms: Sequence[str | os.PathLike[str]] = (),
    force: bool = False,
) -> Path:
    """Resolve, render, validate and write a card: what `hubtools card` does.

    Args:
        spec (`str`): a card source path or a release name (resolved to `cards_dir/<name>.*`).
        output (`Path`): where to write README.md.
        cards_dir (`Path`): the folder of card sources.
        results (`Sequence[Path]`, *optional*): lm-evaluation-harness `results_*.json` files.
        model_dir (`Path`, *optional*): the converted model (parameter count, chat template).
        report (`Path`, *optional*): a `hubtools verify --json` report.
        forms (`Sequence[Path]`, *optional*): released quantized and GGUF folders for the "Quantizations" table
            (with `model_dir`, the unquantized form leads it).
        force (`bool`, *optional*, defaults to `False`): overwrite an existing output.

    Returns:
        `Path`: the written card.

    Raises:
        `DestinationError`: the output exists without `force`. `CardError`: any card problem.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "README.md"
        >>> build_card("mixtral-8x22b-v0.1", out, cards_dir="cards") == out
        True
    """
    output = Path(output)
    check_destination(output, force=force)  # before any work
    source = load_card_source(resolve_card_source(spec, cards_dir=Path(cards_dir)))
    model = read_model_facts(Path(model_dir)) if model_dir is not None else None
    rows: list[Form] = []
    if forms:
        from hubtools.card.forms import release_forms

        parameters = model.parameters if model else source.parameters
        rows = release_forms(Path(model_dir) if model_dir else None, [Path(f) for f in forms], parameters)
    text = render_card(
        source,
        runs=[load_lm_eval_results(Path(path)) for path in results],
        model=model,
        report=_verify_report(Path(report)) if report is not None else None,
        forms=rows,
    )
    return write_card(text, output, force=force)


def _verify_report(path: Path) -> VerifyReport:
    """The report of an HF conversion to summarise in the card (a GGUF report belongs on the GGUF card).

    Raises:
        VerifyError: the file is not a verify report, or is a GGUF one.
    """
    report = load_report(path)
    if isinstance(report, GgufReport):
        raise VerifyError(
            f"{path}: expected the verify report of an HF conversion, found a GGUF one (it belongs on the GGUF card)"
        )
    return report
