"""Fuzz worker: runs one hubtools reader per request in a process with bounded memory.

Started by tests/test_fuzz.py as `python -m tests.fuzz_worker`. Reads JSON lines {"reader", "path"} on
stdin and answers one JSON line each: {"outcome": "ok" | "hubtools" | "other", "type", "message"}.
Its address space is capped at start-up size + `LIMIT` bytes, so a reader that would allocate without
bound fails here with MemoryError ("other") instead of exhausting the machine; a crash or a hang shows
up in the parent as a missing answer. torch is never imported: the readers do not need it.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubtools.checkpoint.pth import read_pth_index
from hubtools.checkpoint.safetensors_format import read_header
from hubtools.errors import HubtoolsError
from hubtools.families import from_hf_config, load_params
from hubtools.model.params import read_json_file
from hubtools.tokenization.files import build_hf_tokenizer, tokenizer_version, tokenizer_vocab_size
from hubtools.tokenization.sentencepiece_model import read_sentencepiece_model

LIMIT = 1 << 30


def _spm(path: Path) -> Any:
    read_sentencepiece_model(path)
    return tokenizer_version(path)


def _tekken(path: Path) -> Any:
    tokenizer_vocab_size(path)
    return build_hf_tokenizer(path)


READERS: dict[str, Callable[[Path], Any]] = {
    "safetensors": read_header,
    "pth": lambda p: read_pth_index([p]),
    "params": load_params,
    "config": lambda p: from_hf_config(read_json_file(p), source=str(p)),
    "spm": _spm,
    "tekken": _tekken,
}


def answer(reader: str, path: Path) -> dict[str, str]:
    try:
        READERS[reader](path)
    except HubtoolsError as exc:
        return {"outcome": "hubtools", "type": type(exc).__name__, "message": str(exc)[:500]}
    except BaseException as exc:  # everything else is a finding, MemoryError included
        return {"outcome": "other", "type": type(exc).__name__, "message": str(exc)[:500]}
    return {"outcome": "ok", "type": "", "message": ""}


def main() -> None:
    import mistral_common.tokens.tokenizers.tekken  # noqa: F401  (loaded now, outside the memory cap)

    with open("/proc/self/statm") as f:
        base = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (base + LIMIT, resource.RLIM_INFINITY))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(answer(request["reader"], Path(request["path"]))), flush=True)


if __name__ == "__main__":
    main()
