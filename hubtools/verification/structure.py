"""The structure audit of `hubtools verify`: an HF folder (made by hubtools or downloaded from the Hub)
against the native checkpoint it claims to be.

The HF folder is indexed leniently (any shard names its index lists, duplicates and broken shards
reported, not raised), so every fault is named in the report instead of stopping at the first one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubtools.checkpoint.reader import Checkpoint, TensorSource, WeightFiles
from hubtools.checkpoint.safetensors_format import read_header
from hubtools.errors import CorruptFileError
from hubtools.model.hf_config import ConfigOverrides, to_hf_config
from hubtools.model.names import NameTable
from hubtools.model.params import ModelParams

INDEX = "model.safetensors.index.json"
MAX_NAMED = 20  # per kind of problem; the rest are counted
COMPARED_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "vocab_size",
    "rope_theta",
    "sliding_window",
    "num_local_experts",
    "num_experts_per_tok",
    "tie_word_embeddings",
)


@dataclass(frozen=True)
class StructureCheck:
    """Config vs params, the tensor mapping, shapes, dtypes and the index. `problems` fail the check."""

    passed: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "problems": list(self.problems), "notes": list(self.notes)}


@dataclass(frozen=True)
class HfFolder:
    """A leniently indexed HF folder: what could be read, and what is wrong with it."""

    folder: Path
    config: dict[str, Any] | None
    files: tuple[Path, ...]
    tensors: dict[str, TensorSource]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def checkpoint(self, params: ModelParams) -> Checkpoint:
        """A reader over the tensors that could be indexed (first copy of a duplicate)."""
        return Checkpoint(self.folder, WeightFiles("hf", "safetensors", self.files), params, self.tensors, None)


def _read_json(path: Path, problems: list[str]) -> Any:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: not valid JSON ({exc})")
        return None
    problems.extend(f"{path.name}: key '{k}' appears twice" for k in duplicates)
    return data


def _weight_map(folder: Path, problems: list[str]) -> dict[str, str] | None:
    if not (folder / INDEX).is_file():
        return None
    index = _read_json(folder / INDEX, problems)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        if index is not None:
            problems.append(f"{INDEX}: expected a JSON object with a 'weight_map' object")
        return None
    return {str(k): str(v) for k, v in weight_map.items()}


def _shard_files(folder: Path, weight_map: dict[str, str] | None, problems: list[str]) -> list[Path]:
    if weight_map is not None:
        listed = list(dict.fromkeys(weight_map.values()))
        for name in listed:
            if not (folder / name).is_file():
                count = sum(1 for f in weight_map.values() if f == name)
                problems.append(f"{INDEX}: maps {count} tensor(s) to '{name}', which is missing")
        return [folder / n for n in listed if (folder / n).is_file()]
    found = sorted(p for p in folder.iterdir() if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", p.name))
    if len(found) > 1:
        problems.append(f"{folder}: {len(found)} model shards but no {INDEX}")
    if not found:
        problems.append(f"{folder}: no HF weights (expected {INDEX} or model.safetensors)")
    return found


def _index_tensors(files: list[Path], problems: list[str]) -> tuple[list[Path], dict[str, TensorSource]]:
    tensors: dict[str, TensorSource] = {}
    readable = []
    for path in files:
        try:
            entries, _ = read_header(path)
        except CorruptFileError as exc:
            problems.append(str(exc))
            continue
        readable.append(path)
        for e in entries:
            if e.name in tensors:
                problems.append(
                    f"tensor '{e.name}' is stored twice: in '{tensors[e.name].segments[0][0].name}' and '{path.name}'"
                )
                continue
            tensors[e.name] = TensorSource(e.name, e.code, e.shape, ((path, e.offset, e.length),))
    return readable, tensors


def _index_consistency(
    folder: Path, weight_map: dict[str, str], tensors: dict[str, TensorSource], problems: list[str], notes: list[str]
) -> None:
    for name, file in weight_map.items():
        source = tensors.get(name)
        stored = source.segments[0][0].name if source else None
        if stored is not None and stored != file:
            problems.append(f"{INDEX}: tensor '{name}' is mapped to '{file}' but stored in '{stored}'")
        elif stored is None and (folder / file).is_file():
            problems.append(f"{INDEX}: tensor '{name}' is mapped to '{file}', which does not hold it")
    unlisted = [n for n in tensors if n not in weight_map]
    problems.extend(_named(unlisted, f"tensor '{{}}' is in a shard but not in {INDEX} (loaders will not see it)"))
    on_disk = {p.name for p in folder.glob("model*.safetensors")}
    for name in sorted(on_disk - set(weight_map.values())):
        notes.append(f"'{name}' is not referenced by {INDEX} (ignored)")


def _total_size(folder: Path, tensors: dict[str, TensorSource], notes: list[str]) -> None:
    try:
        total = json.loads((folder / INDEX).read_text())["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    actual = sum(t.nbytes for t in tensors.values())
    if total != actual:
        notes.append(f"{INDEX}: metadata.total_size is {total}, the tensors hold {actual} bytes")


def index_hf_folder(folder: Path) -> HfFolder:
    """Index an HF folder's config, index and shards, collecting every problem instead of raising.

    Example:
        >>> hf = index_hf_folder(Path("mixtral-hf"))  # doctest: +SKIP
        >>> hf.problems  # doctest: +SKIP
        ()
    """
    problems: list[str] = []
    notes: list[str] = []
    config = _read_json(folder / "config.json", problems) if (folder / "config.json").is_file() else None
    if config is None and not (folder / "config.json").is_file():
        problems.append(f"{folder}: no config.json")
    weight_map = _weight_map(folder, problems)
    files, tensors = _index_tensors(_shard_files(folder, weight_map, problems), problems)
    if weight_map is not None:
        _index_consistency(folder, weight_map, tensors, problems, notes)
        _total_size(folder, tensors, notes)
    config = config if isinstance(config, dict) else None
    return HfFolder(folder, config, tuple(files), tensors, tuple(problems), tuple(notes))


def _named(names: list[str], template: str) -> list[str]:
    out = [template.format(n) for n in names[:MAX_NAMED]]
    if len(names) > MAX_NAMED:
        out.append(f"... and {len(names) - MAX_NAMED} more like '{names[MAX_NAMED]}'")
    return out


def _found(config: dict[str, Any], key: str) -> Any:
    if key == "rope_theta":
        return config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")
    if key == "num_key_value_heads":
        return config.get(key) or config.get("num_attention_heads")
    if key == "head_dim":
        heads = config.get("num_attention_heads")
        return config.get(key) or (config.get("hidden_size", 0) // heads if isinstance(heads, int) else None)
    if key == "tie_word_embeddings":
        return config.get(key, False)
    return config.get(key)


def _same(expected: Any, found: Any) -> bool:
    if isinstance(expected, float) and isinstance(found, (int, float)) and not isinstance(found, bool):
        return math.isclose(expected, found, rel_tol=1e-9)
    return bool(expected == found)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else json.dumps(value)


def config_problems(config: dict[str, Any], params: ModelParams, *, rope_theta: float | None = None) -> list[str]:
    """Every config.json field the native params determine, compared; rope_theta by the documented rule.

    Args:
        rope_theta: an explicit value for the native model (else params.json's, else the default rule).
    """
    expected = to_hf_config(params, dtype=torch.float32, overrides=ConfigOverrides(rope_theta=rope_theta))
    why = {"rope_theta": expected.rules[0].split(" ", 1)[1]}
    problems = []
    for key in COMPARED_FIELDS:
        want, got = expected.config.get(key), _found(config, key)
        if key not in expected.config:
            continue
        if not _same(want, got):
            reason = f" {why[key]}" if key in why else ""
            problems.append(f"config.json {key}: expected {_fmt(want)}{reason}, found {_fmt(got)}")
    rope_type = (config.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type != "default" or config.get("rope_scaling"):
        problems.append(f'config.json rope_parameters.rope_type: expected "default", found {_fmt(rope_type)}')
    return problems


def mapping_problems(
    table: NameTable, names: list[str], shapes: dict[str, tuple[int, ...]], *, layout: str, where: str
) -> list[str]:
    """Unknown and missing tensors, and shapes the params contradict, for one side."""
    key = "native" if layout == "native" else "hf"
    index = table.by_native if layout == "native" else table.by_hf
    problems = _named([n for n in names if n not in index], f"{where}: unknown tensor '{{}}'")
    present = set(names)
    problems += _named(
        [getattr(s, key) for s in table.specs if getattr(s, key) not in present], f"{where}: missing tensor '{{}}'"
    )
    wrong = [n for n in names if n in index and shapes[n] != index[n].shape]
    problems += [
        f"{where}: tensor '{n}' has shape {list(shapes[n])}, expected {list(index[n].shape)}" for n in wrong[:MAX_NAMED]
    ]
    return problems


def dtype_problems(config: dict[str, Any], tensors: dict[str, TensorSource]) -> list[str]:
    """HF tensors share one dtype, and it is the one config.json declares (torch_dtype or dtype)."""
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    problems = []
    if len(dtypes) > 1:
        problems.append(f"HF tensors have mixed dtypes {dtypes} (expected one)")
    declared = config.get("dtype") or config.get("torch_dtype")
    if isinstance(declared, str) and dtypes and declared not in dtypes:
        key = "dtype" if config.get("dtype") else "torch_dtype"
        problems.append(f'config.json {key}: declares "{declared}", the tensors are {", ".join(dtypes)}')
    return problems
