"""Stress run: random function-calling conversations, hubtools' chat templates vs mistral-common.

    python bench/tool_calls.py --count 3000 [--seed 0] [--versions v2 v3 v7 tekken ...] [--json OUT [--force]]

For every tokenizer with tool tokens that mistral-common ships (v2, v3, v7, v7m1 SentencePiece;
tekken_240718 and tekken_240911, which are v3; and tekken_240911 read as v7, the Mistral Small 3 format),
the HF folder is written by `write_hf_tokenizer` and loaded with `AutoTokenizer`; each conversation from
`random_tool_chat` is rendered with `apply_chat_template(messages, tools=...)` and compared with
`encode_chat_completion(ChatCompletionRequest(messages=..., tools=...))`. A conversation counts as identical
(same ids), rejected by both, or a mismatch (different ids, or rejected by one side only).
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

from hubtools.destination import check_destination, write_file
from hubtools.errors import DestinationError  # noqa: E402
from hubtools.testing import mistral_common_data  # noqa: E402
from hubtools.tokenization.files import write_hf_tokenizer  # noqa: E402
from hubtools.tokenization.parity import hf_chat, reference_chat_ids  # noqa: E402
from hubtools.tokenization.random_chats import random_tool_chat  # noqa: E402

FILES = {
    "v2": "mistral_instruct_tokenizer_240216.model.v2",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
    "v7": "mistral_instruct_tokenizer_241114.model.v7",
    "v7m1": "mistral_instruct_tokenizer_241114.model.v7m1",
    "tekken": "tekken_240911.json",
    "tekken_240718": "tekken_240718.json",
    "tekken-v7": "tekken_240911.json",
}


def tokenizer_pair(name: str, workdir: Path) -> tuple[Any, Any]:
    """(HF tokenizer loaded from the written folder, mistral-common tokenizer) for a version name."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from transformers import AutoTokenizer

    native = mistral_common_data() / FILES[name]
    if name == "tekken-v7":  # the same vocabulary in the v7 instruct format (Mistral Small 3)
        data = json.loads(native.read_text(encoding="utf-8"))
        data["config"]["version"] = "v7"
        native = workdir / "tekken_v7.json"
        native.write_text(json.dumps(data), encoding="utf-8")
    folder = workdir / name
    folder.mkdir()
    write_hf_tokenizer(native, folder, chat_template="mistral")
    return AutoTokenizer.from_pretrained(str(folder)), MistralTokenizer.from_file(str(native))


def compare(tok: Any, mt: Any, chat: dict[str, Any]) -> tuple[str, str]:
    """("identical" | "rejected" | "mismatch", detail) for one conversation."""
    hf = hf_chat(tok, chat["messages"], chat["tools"])
    ref = reference_chat_ids(mt, chat["messages"], "mistral", chat["tools"])
    if isinstance(hf, str) and isinstance(ref, str):
        return "rejected", ref
    if hf == ref:
        return "identical", ""
    shown = [side if isinstance(side, str) else f"{len(side)} ids" for side in (hf, ref)]
    return "mismatch", f"hf: {shown[0]} / reference: {shown[1]}"


def run(count: int, seed: int, versions: list[str]) -> dict[str, Any]:
    """Counts per version, the first mismatches, and seconds spent."""
    chats = [random_tool_chat(random.Random(seed * 1_000_003 + i)) for i in range(count)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in versions:
            tok, mt = tokenizer_pair(name, Path(tmp))
            counts = {"identical": 0, "rejected": 0, "mismatch": 0}
            examples = []
            start = time.perf_counter()
            for index, chat in enumerate(chats):
                verdict, detail = compare(tok, mt, chat)
                counts[verdict] += 1
                if verdict == "mismatch" and len(examples) < 5:
                    examples.append({"index": index, "detail": detail, "chat": chat})
            results[name] = {**counts, "conversations": count, "seconds": time.perf_counter() - start}
            results[name]["mismatches"] = examples
            print(
                f"{name:<14} {count} conversations: {counts['identical']} identical, {counts['rejected']} "
                f"rejected by both, {counts['mismatch']} mismatches ({results[name]['seconds']:.0f} s)",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--versions", nargs="+", default=list(FILES), choices=list(FILES))
    parser.add_argument("--json", type=Path, help="write the counts and the first mismatches here")
    parser.add_argument("--force", action="store_true", help="replace a --json file hubtools wrote earlier")
    args = parser.parse_args()
    try:
        if args.json:
            check_destination(args.json, force=args.force)  # before the run: hubtools' rule for every output
    except DestinationError as exc:
        sys.exit(f"error: {exc}")
    results = run(args.count, args.seed, args.versions)
    if args.json:
        write_file(args.json, json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n", force=args.force)
    sys.exit(1 if any(r["mismatch"] for r in results.values()) else 0)


if __name__ == "__main__":
    main()
