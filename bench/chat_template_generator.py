"""mistral-common's chat-template generator against hubtools' templates, on hubtools' parity corpora.

    python bench/chat_template_generator.py [--versions v1 v2 ... tekken-v13] [--random 200] [--json OUT [--force]]

For each tokenizer the HF folder is written by `write_hf_tokenizer`; `check_tokenizer` (what `hubtools verify`
runs: built-in texts, conversations, tool conversations and, v11/v13, thinking conversations) runs once with
hubtools' template and once with the template of `mistral_common.integrations.chat_templates.generate_chat_template`
(mistral-common 1.13) in its place, with the options each version allows: `spm` for SentencePiece files,
`thinking_support` for v13 (its vocabulary has [THINK]), bos/eos as variables, no image support (the corpora
have no images). `--random N` also compares N random conversations (`random_tool_chat`; v11/v13
`random_tekken_chat`). What decided which template hubtools writes (README, "Chat templates").
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubtools.destination import check_destination, write_file  # noqa: E402
from hubtools.errors import DestinationError  # noqa: E402
from hubtools.filenames import TOKENIZER_CONFIG  # noqa: E402
from hubtools.testing import mistral_common_data, write_tekken_version  # noqa: E402
from hubtools.tokenization.chat_template import TEMPLATE_MARKER  # noqa: E402
from hubtools.tokenization.files import instruct_version, write_hf_tokenizer  # noqa: E402
from hubtools.tokenization.parity import (  # noqa: E402
    check_tokenizer,
    hf_chat,
    load_hf_tokenizer,
    load_reference_tokenizer,
    reference_chat_ids,
    split_chat,
)
from hubtools.tokenization.random_chats import random_tekken_chat, random_tool_chat  # noqa: E402

FILES = {
    "v1": "tokenizer.model.v1",
    "v2": "mistral_instruct_tokenizer_240216.model.v2",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
    "v7": "mistral_instruct_tokenizer_241114.model.v7",
    "tekken": "tekken_240911.json",
    "tekken-v7": "v7",
    "tekken-v11": "v11",
    "tekken-v13": "v13",
}


def native_file(name: str, workdir: Path) -> Path:
    """The shipped tokenizer for `name` (tekken-vN: tekken_240911.json read as instruct version N)."""
    if name.startswith("tekken-"):
        folder = workdir / f"native-{name}"
        folder.mkdir()
        return write_tekken_version(folder, FILES[name])
    return mistral_common_data() / FILES[name]


def generated_template(native: Path) -> str:
    """mistral-common's generated template for the file, marked so that the parity check treats it as Mistral's."""
    from mistral_common.integrations.chat_templates.chat_templates import generate_chat_template
    from mistral_common.tokens.tokenizers.base import TokenizerVersion

    version = TokenizerVersion(instruct_version(native))
    template = generate_chat_template(
        spm=not native.name.endswith(".json"),
        tokenizer_version=version,
        image_support=False,
        audio_support=False,
        thinking_support=version >= TokenizerVersion.v13,
        default_system_prompt=None,
        plain_thinking_support=False,
        use_special_token_variables=True,
        model_settings_fields=None,
        reasoning_effort_values=None,
        reasoning_effort_default=None,
    )
    return f"{{#- {TEMPLATE_MARKER} mistral (mistral-common's generator) -#}}\n" + template


def use_template(folder: Path, template: str) -> None:
    config = json.loads((folder / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    config["chat_template"] = template
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")


def random_agreement(folder: Path, native: Path, count: int, workdir: Path) -> dict[str, int]:
    tok, mt = load_hf_tokenizer(folder), load_reference_tokenizer(native, "tekken", str(workdir))
    v11_or_later = native.name.endswith(".json") and instruct_version(native) in ("v11", "v13")
    counts = {"identical": 0, "rejected": 0, "mismatch": 0}
    for seed in range(count):
        rng = random.Random(seed)
        chat = random_tekken_chat(rng, thinking=instruct_version(native) == "v13") if v11_or_later else None
        messages, tools = split_chat(chat or random_tool_chat(rng))
        hf, ref = hf_chat(tok, messages, tools), reference_chat_ids(mt, messages, "mistral", tools)
        both_rejected = isinstance(hf, str) and isinstance(ref, str)
        counts["rejected" if both_rejected else "identical" if hf == ref else "mismatch"] += 1
    return counts


def measure(name: str, workdir: Path, count: int) -> dict[str, Any]:
    native = native_file(name, workdir)
    result: dict[str, Any] = {}
    for side in ("hubtools", "generator"):
        folder = workdir / f"{name}-{side}"
        folder.mkdir()
        write_hf_tokenizer(native, folder, chat_template="mistral")
        if side == "generator":
            use_template(folder, generated_template(native))
        start = time.perf_counter()
        report = check_tokenizer(folder, native)
        chats = report.conversations
        agreed = chats - sum(m.kind == "chat" for m in report.misses)
        result[side] = {
            "conversations": chats,
            "agreed": agreed,
            "misses": [f"{m.source}[{m.index}]: {m.detail[:160]}" for m in report.misses if m.kind == "chat"][:8],
        }
        if count:
            result[side]["random"] = random_agreement(folder, native, count, workdir)
        result[side]["seconds"] = round(time.perf_counter() - start, 1)
        extra = f"; random: {result[side]['random']}" if count else ""
        print(f"{name:<11} {side:<9} {agreed}/{chats} built-in conversations agree{extra}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", nargs="+", default=list(FILES), choices=list(FILES))
    parser.add_argument("--random", type=int, default=0, help="also compare this many random conversations")
    parser.add_argument("--json", type=Path, help="write the counts and the first misses here")
    parser.add_argument("--force", action="store_true", help="replace a --json file hubtools wrote earlier")
    args = parser.parse_args()
    try:
        if args.json:
            check_destination(args.json, force=args.force)
    except DestinationError as exc:
        sys.exit(f"error: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: measure(name, Path(tmp), args.random) for name in args.versions}
    if args.json:
        write_file(args.json, json.dumps(results, indent=2, ensure_ascii=False) + "\n", force=args.force)


if __name__ == "__main__":
    main()
