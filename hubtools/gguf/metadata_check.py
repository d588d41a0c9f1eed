"""The metadata a GGUF file must hold for its source (every key hubtools writes, general.* left out), and the
keys where a file differs, named with the expected and found values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from hubtools.gguf.files import GgufFiles
from hubtools.gguf.metadata import add_model_parameters
from hubtools.gguf.quant import QuantType
from hubtools.gguf.source import GgufSource


def expected_metadata(source: GgufSource, quant: QuantType, tokenizer_dir: Path | None) -> dict[str, Any]:
    """key -> value of every metadata key hubtools writes for this source (general.* left out)."""
    from hubtools.gguf.vocab import add_vocab

    writer = gguf.GGUFWriter(path=None, arch=source.architecture)
    add_model_parameters(writer, source.config, quant.file_type)
    if tokenizer_dir is not None:
        add_vocab(writer, source.tokenizer, tokenizer_dir, source.config["vocab_size"])
    return {k: v.value for k, v in writer.kv_data[0].items() if not k.startswith("general.")}


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float):
        return float(np.float32(value))
    if hasattr(value, "value") and not isinstance(value, (int, str)):
        return int(value.value)
    return value


def metadata_problems(files: GgufFiles, expected: dict[str, Any]) -> list[str]:
    """Keys missing from the file or with another value, named with expected and found values."""
    problems = []
    for key, value in expected.items():
        found = files.fields.get(key)
        if found is None:
            problems.append(f"metadata '{key}': missing (expected {_short(value)})")
        elif _normal(found[1]) != _normal(value):
            problems.append(f"metadata '{key}': expected {_short(value)}, found {_short(found[1])}")
    return problems


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"[{len(value)} values]"
    text = repr(_normal(value))
    return text if len(text) <= 60 else text[:57] + "..."
