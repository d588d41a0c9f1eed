"""What a converted model folder tells its card: the real parameter counts, the architecture, the context
length and sliding window of its config.json, its tokenizer (native file and version, HF files) and chat
template (rendered on an example conversation as transformers renders it); and the check that the card
describes that model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtools.card.source import CardSource
from hubtools.errors import CardError
from hubtools.filenames import CHAT_TEMPLATE, CONFIG, TOKENIZER_CONFIG, TOKENIZER_JSON

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
    """What a converted model folder tells the card: real parameter counts, config, tokenizer, chat template.

    `tokenizer_version` is that of the native tokenizer file shipped beside the HF files (`tokenizer_file`);
    `hf_tokenizer` says whether transformers finds a tokenizer (`tokenizer.json`); `context_length` and
    `sliding_window` are config.json's `max_position_embeddings` and `sliding_window`. `None` where the
    folder does not say (facts built by hand: nothing to check).
    """

    parameters: int
    active_parameters: int | None
    architecture: str = ""
    chat_template: str | None = None
    chat_template_file: str | None = None
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    folder: Path | None = None
    tokenizer_file: str | None = None
    tokenizer_version: str | None = None
    hf_tokenizer: bool = True
    context_length: int | None = None
    sliding_window: int | None = None


def read_model_facts(model_dir: Path, *, counts: tuple[int, int] | None = None) -> ModelFacts:
    """Count the converted model's parameters and read its chat template (`chat_template.jinja` or
    `tokenizer_config.json`'s `chat_template`) and BOS/EOS tokens.

    Args:
        counts: (total, active) parameters when already known (a release whose shards are gone).

    Raises:
        `CardError`: unreadable tokenizer_config.json. Errors of the parameter count propagate.
    """
    from hubtools.checkpoint.reader import open_checkpoint
    from hubtools.checkpoint.tokenizer_file import find_tokenizer_file
    from hubtools.inspection import parameter_counts
    from hubtools.tokenization.files import tokenizer_version

    model_config = _json_file(model_dir / CONFIG)
    if counts is not None:  # a release whose shards are already uploaded: config.json names the architecture
        total, active = counts
        names = model_config.get("architectures")
        architecture = names[0] if isinstance(names, list) and names else ""
    else:
        with open_checkpoint(model_dir, prefer="hf") as ckpt:
            total, active = parameter_counts(ckpt)
            architecture = ckpt.params.architecture
    nested = model_config.get("text_config")  # a vision model's text model
    text_config = nested if isinstance(nested, dict) else model_config
    config = _json_file(model_dir / TOKENIZER_CONFIG)
    template, where = _chat_template(model_dir, config)
    native = find_tokenizer_file(model_dir)
    return ModelFacts(
        parameters=total,
        active_parameters=active if active != total else None,
        architecture=architecture,
        chat_template=template,
        chat_template_file=where,
        bos_token=_token(config.get("bos_token"), "<s>"),
        eos_token=_token(config.get("eos_token"), "</s>"),
        folder=model_dir,
        tokenizer_file=native.name if native is not None else None,
        tokenizer_version=tokenizer_version(native) if native is not None else None,
        hf_tokenizer=(model_dir / TOKENIZER_JSON).is_file(),
        context_length=_int(text_config.get("max_position_embeddings")),
        sliding_window=_int(text_config.get("sliding_window")),
    )


def _json_file(path: Path) -> dict[str, Any]:
    """A JSON object file of the model folder; {} when absent.

    Raises:
        `CardError`: unreadable, not JSON, or not an object.
    """
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CardError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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


PARAMETER_TOLERANCE = 0.005  # a card source may state a rounded count (46.7B); more than this is another model


def check_model_matches(source: CardSource, model: ModelFacts) -> None:
    """A card must describe the model it is rendered for: same architecture, parameter count, tokenizer
    version and sliding window, and a tokenizer its usage examples can load.

    Raises:
        CardError: naming the card source (or the folder), what it states and what the model folder holds.
    """
    if model.architecture and source.architecture and model.architecture != source.architecture:
        raise CardError(f"{source.path}: expected a {source.architecture} model folder, found {model.architecture}")
    if abs(model.parameters - source.parameters) > PARAMETER_TOLERANCE * source.parameters:
        raise CardError(
            f"{source.path}: expected about {source.parameters:,d} parameters as the card states, found "
            f"{model.parameters:,d} in the model folder (another model, or the card is wrong)"
        )
    if model.folder is None:  # facts built by hand: no files to check against
        return
    if not model.hf_tokenizer:
        raise CardError(
            f"{model.folder}: expected the tokenizer files the card's usage examples load ({TOKENIZER_JSON}, "
            f"{TOKENIZER_CONFIG}), found no {TOKENIZER_JSON}"
        )
    if model.tokenizer_version is not None and model.tokenizer_version != source.tokenizer.value:
        raise CardError(
            f"{source.path}: expected a {source.tokenizer.value} tokenizer as the card states, found "
            f"{model.tokenizer_version} ({model.tokenizer_file}) in the model folder"
        )
    if source.sliding_window is not None and model.sliding_window != source.sliding_window:
        found = f"{model.sliding_window:,d}" if model.sliding_window is not None else "none"
        raise CardError(
            f"{source.path}: expected a sliding window of {source.sliding_window:,d} tokens as the card states, "
            f"found {found} in the model folder's {CONFIG}"
        )
