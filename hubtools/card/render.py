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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from hubtools.card.rules import validate_card_text
from hubtools.card.source import CardSource, load_card_source, resolve_card_source
from hubtools.destination import FILE_MARKER, check_destination, write_file
from hubtools.errors import CardError
from hubtools.filenames import CHAT_TEMPLATE, CONFIG, TOKENIZER_CONFIG
from hubtools.units import human_count, size_both
from hubtools.verification.report import (
    CHECKS,
    LogitsCheck,
    StructureCheck,
    TensorsCheck,
    TokenizerCheck,
    VerifyReport,
    is_skipped,
)

logger = logging.getLogger(__name__)

EXAMPLE_CONVERSATION = (
    {"role": "user", "content": "What is your favourite condiment?"},
    {
        "role": "assistant",
        "content": "Well, I'm quite partial to a good squeeze of fresh lemon juice. It adds just the right amount "
        "of zesty flavour to whatever I'm cooking up in the kitchen!",
    },
    {"role": "user", "content": "Do you have mayonnaise recipes?"},
)


@dataclass(frozen=True)
class ModelFacts:
    """What a converted model folder tells the card: real parameter counts and its chat template."""

    parameters: int
    active_parameters: int | None
    architecture: str = ""
    chat_template: str | None = None
    chat_template_file: str | None = None
    bos_token: str = "<s>"
    eos_token: str = "</s>"


def read_model_facts(model_dir: Path, *, counts: tuple[int, int] | None = None) -> ModelFacts:
    """Count the converted model's parameters and read its chat template (`chat_template.jinja` or
    `tokenizer_config.json`'s `chat_template`) and BOS/EOS tokens.

    Args:
        counts: (total, active) parameters when already known (a release whose shards are gone).

    Raises:
        `CardError`: unreadable tokenizer_config.json. Errors of the parameter count propagate.
    """
    from hubtools.checkpoint.layout import Layout
    from hubtools.checkpoint.reader import open_checkpoint
    from hubtools.inspection import parameter_counts

    if counts is not None:  # a release whose shards are already uploaded: config.json names the architecture
        total, active = counts
        config_file = model_dir / CONFIG
        names = (
            json.loads(config_file.read_text(encoding="utf-8")).get("architectures") if config_file.is_file() else None
        )
        architecture = names[0] if isinstance(names, list) and names else ""
    else:
        with open_checkpoint(model_dir, prefer=Layout.HF) as ckpt:
            total, active = parameter_counts(ckpt)
            architecture = ckpt.params.architecture
    config_path = model_dir / TOKENIZER_CONFIG
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CardError(f"{config_path}: not valid JSON ({exc})") from exc
    template, where = _chat_template(model_dir, config)
    return ModelFacts(
        parameters=total,
        active_parameters=active if active != total else None,
        architecture=architecture,
        chat_template=template,
        chat_template_file=where,
        bos_token=_token(config.get("bos_token"), "<s>"),
        eos_token=_token(config.get("eos_token"), "</s>"),
    )


def _chat_template(model_dir: Path, config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    jinja_file = model_dir / CHAT_TEMPLATE
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), jinja_file.name
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return (template, TOKENIZER_CONFIG) if isinstance(template, str) and template.strip() else (None, None)


def _token(value: Any, default: str) -> str:
    if isinstance(value, Mapping):  # serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else default


def render_chat_example(facts: ModelFacts) -> str | None:
    """The example conversation rendered through the model's own chat template, as transformers does it.

    Raises:
        `CardError`: the template fails on the example conversation.
    """
    if facts.chat_template is None:
        return None
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        # transformers annotates `-> str`, but it returns (rendered chats, generation indices)
        rendered, _ = render_jinja_template(  # type: ignore[str-unpack]
            conversations=[list(EXAMPLE_CONVERSATION)],
            chat_template=facts.chat_template,
            add_generation_prompt=True,
            bos_token=facts.bos_token,
            eos_token=facts.eos_token,
        )
    except Exception as exc:  # jinja2 errors and the template's own raise_exception
        raise CardError(f"{facts.chat_template_file}: chat template fails on the example conversation ({exc})") from exc
    return rendered[0]


def reference_prompt(tokenizer: str) -> str:
    """The instruct format as mistral-common (the reference) lays out a user/assistant/user conversation."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    messages: list[UserMessage | AssistantMessage] = [
        UserMessage(content="Instruction"),
        AssistantMessage(content="Model answer"),
        UserMessage(content="Follow-up instruction"),
    ]
    encoded = getattr(MistralTokenizer, tokenizer)().encode_chat_completion(ChatCompletionRequest(messages=messages))
    return str(encoded.text).replace("▁", " ")


def render_card(
    source: CardSource,
    *,
    runs: Sequence[EvalRun] = (),
    model: ModelFacts | None = None,
    report: VerifyReport | None = None,
) -> str:
    """Render the README.md text: validated front matter plus the Jinja body.

    Args:
        source (`CardSource`): the release's card source.
        runs (`Sequence[EvalRun]`, *optional*): imported lm-evaluation-harness results; they override the
            card source's results for the same benchmark.
        model (`ModelFacts`, *optional*): facts read from the converted model (`read_model_facts`).
        report (`Mapping`, *optional*): a `hubtools verify --json` report to summarise.

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
        _environment().get_template("model_card.md.jinja").render(**_context(source, benchmarks, runs, model, report))
    )
    text = f"---\n{card_data.to_yaml()}\n---\n\n{body.strip()}\n"
    validate_card_text(text, where=str(source.path))
    try:
        ModelCard(text)
    except ValueError as exc:
        raise CardError(f"{source.path}: huggingface_hub cannot read the rendered card ({exc})") from exc
    return text


def _environment() -> jinja2.Environment:
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
    instruct = source.kind == "instruct"
    return {
        "title": source.title,
        "description": source.description,
        "sections": source.sections,
        "repo_id": source.repo_id,
        "architecture": source.architecture,
        "tokenizer": source.tokenizer,
        "context_length": source.context_length,
        "sliding_window": source.sliding_window,
        "instruct": instruct,
        "params": {
            "total_exact": f"{total:,}",
            "total_short": human_count(total, digits=".3g"),
            "origin": origin,
            "active": active,
            "active_short": human_count(active, digits=".3g") if active else None,
        },
        "conversation": [json.dumps(message, ensure_ascii=False) for message in EXAMPLE_CONVERSATION],
        "reference_prompt": reference_prompt(source.tokenizer) if instruct else None,
        "chat_example": render_chat_example(model) if model else None,
        "chat_template_file": model.chat_template_file if model else None,
        "memory": memory_rows(total),
        "results": results_tables(benchmarks, runs, source.details_urls),
        "verify": verify_summary(report) if report is not None else None,
    }


PARAMETER_TOLERANCE = 0.005  # a card source may state a rounded count (46.7B); more than this is another model


def check_model_matches(source: CardSource, model: ModelFacts) -> None:
    """A card must describe the model it is rendered for: same architecture, same parameter count.

    Raises:
        CardError: naming the card source, what it states and what the model folder holds.
    """
    if model.architecture and source.architecture and model.architecture != source.architecture:
        raise CardError(
            f"{source.path}: expected a {source.architecture} model folder (--model), found {model.architecture}"
        )
    if abs(model.parameters - source.parameters) > PARAMETER_TOLERANCE * source.parameters:
        raise CardError(
            f"{source.path}: expected about {source.parameters:,d} parameters as the card states, found "
            f"{model.parameters:,d} in the model folder (--model is another model, or the card is wrong)"
        )


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
    """Rows for the verify report table: one per check, with its verdict and headline figures."""
    rows = [
        {"name": name, "result": _verdict(check), "details": _check_details(check).replace("|", "\\|")}
        for name, check in ((name, getattr(report, name)) for name in CHECKS)
    ]
    verdict = "passed" if report.passed else "FAILED"
    return {"version": report.hubtools_version, "verdict": verdict, "rows": rows}


def _verdict(check: Any) -> str:
    return "not run" if is_skipped(check) else "passed" if check.passed else "FAILED"


def _check_details(check: Any) -> str:
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
        for key, label in (
            ("max_abs_dlogit", "max abs dlogit"),
            ("nmse", "NMSE"),
            ("mean_kl", "mean KL"),
            ("max_kl", "max KL"),
            ("top1_agreement", "top-1 agreement"),
        ):
            value = check.metric(key)
            if value is not None:
                parts.append(f"{label} {_percent(value) if key == 'top1_agreement' else _number(value)}")
        if check.tokens:
            parts.append(f"on {check.tokens} tokens")
    if getattr(check, "error", None):
        parts.append(f"error: {check.error}")
    return ", ".join(parts)


def _percent(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_card(text: str, dest: Path, *, force: bool = False) -> Path:
    """Write the card atomically, mode 0644, with hubtools' marker comment at its end (so `--force` may
    replace it later, and never a README someone else wrote).

    Raises:
        `DestinationError`: `dest` exists without `force`, is not a card hubtools wrote, is a folder, or its
            parent folder is missing.
    """
    return write_file(dest, f"{text.rstrip()}\n\n{FILE_MARKER}\n", force=force)


def load_report(path: Path) -> VerifyReport:
    """Read a `hubtools verify --json` report into the typed report.

    Raises:
        `CardError`: not JSON, or not a verify report (the first missing or malformed field is named).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: expected a hubtools verify report (JSON), found invalid JSON ({exc})") from None
    try:
        return VerifyReport.from_dict(data)
    except KeyError as exc:
        raise CardError(f"{path}: expected a hubtools verify report, found no field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise CardError(f"{path}: expected a hubtools verify report, found a malformed one ({exc})") from None


def build_card(
    spec: str,
    output: str | os.PathLike[str],
    *,
    cards_dir: str | os.PathLike[str] = "cards",
    results: Sequence[str | os.PathLike[str]] = (),
    model_dir: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
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
    text = render_card(
        source,
        runs=[load_lm_eval_results(Path(path)) for path in results],
        model=read_model_facts(Path(model_dir)) if model_dir is not None else None,
        report=load_report(Path(report)) if report is not None else None,
    )
    return write_card(text, output, force=force)
