"""The structure audit of `hubtools verify`: an HF folder (made by hubtools or downloaded from the Hub)
against the native checkpoint it claims to be.

The HF folder is indexed leniently (any shard names its index lists, duplicates and broken shards
reported, not raised), so every fault is named in the report instead of stopping at the first one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hubtools.checkpoint.hf_index import check_index, index_safetensors, indexed_files, read_weight_map
from hubtools.checkpoint.layout import Layout, TensorSource, WeightFiles, WeightFormat
from hubtools.checkpoint.reader import Checkpoint, split_fusions
from hubtools.checkpoint.safetensors_format import dtype_name
from hubtools.errors import MappingError, ParamsError
from hubtools.filenames import CONFIG, GENERATION_CONFIG, HF_TOKENIZER_FILES, is_spm_model
from hubtools.model import fp8
from hubtools.model.family import ModelParams
from hubtools.model.hf_config import ConfigOverrides, config_rope_theta, to_hf_config
from hubtools.model.names import NameTable
from hubtools.model.params import MAX_JSON_BYTES

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
class HfFolder:
    """A leniently indexed HF folder: what could be read, and what is wrong with it."""

    folder: Path
    config: dict[str, Any] | None
    files: tuple[Path, ...]
    tensors: dict[str, TensorSource]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def split(self, params: ModelParams) -> HfFolder:
        """This folder with its fused tensors as their parts (`split_fusions`); a bad fusion is a problem."""
        try:
            return replace(self, tensors=split_fusions(params, self.tensors, where="HF"))
        except (MappingError, ParamsError) as exc:
            return replace(self, problems=(*self.problems, str(exc)))

    def checkpoint(self, params: ModelParams) -> Checkpoint:
        """A reader over the tensors that could be indexed (first copy of a duplicate)."""
        weights = WeightFiles(Layout.HF, WeightFormat.SAFETENSORS, self.files)
        return Checkpoint(self.folder, weights, params, self.tensors, None)


class _Unreadable:
    """What _read_json returns for a file it could not parse (its problem is already named)."""


_UNREADABLE = _Unreadable()


def _read_json(path: Path, problems: list[str]) -> Any:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    if path.stat().st_size > MAX_JSON_BYTES:
        problems.append(f"{path.name}: {path.stat().st_size} bytes (at most {MAX_JSON_BYTES} accepted)")
        return _UNREADABLE
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        problems.append(f"{path.name}: not valid JSON ({str(exc)[:200]})")
        return _UNREADABLE
    problems.extend(f"{path.name}: key '{k}' appears twice" for k in duplicates)
    return data


def _json_kind(value: Any) -> str:
    """What a parsed JSON value is, in words: "a list", "a string", "a number", "a boolean" (null is "null")."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def index_hf_folder(folder: Path) -> HfFolder:
    """Index an HF folder's config, index and shards, collecting every problem instead of raising.

    Example:
        >>> hf = index_hf_folder(Path("mixtral-hf"))  # doctest: +SKIP
        >>> hf.problems  # doctest: +SKIP
        ()
    """
    problems: list[str] = []
    notes: list[str] = []
    config_path = folder / CONFIG
    config = _read_json(config_path, problems) if config_path.is_file() else _UNREADABLE
    if not config_path.is_file():
        problems.append(f"{config_path}: expected the model's config, found no file")
    elif config is not _UNREADABLE and not isinstance(config, dict):
        problems.append(f"{config_path.name}: expected a JSON object, found {_json_kind(config)}")
    weight_map = read_weight_map(folder, problems)
    files, tensors = index_safetensors(indexed_files(folder, weight_map, problems), problems)
    if weight_map is not None:
        check_index(folder, weight_map, tensors, problems, notes)
    config = config if isinstance(config, dict) else None
    problems += side_file_problems(folder, config)
    return HfFolder(folder, config, tuple(files), tensors, tuple(problems), tuple(notes))


def side_file_problems(folder: Path, config: dict[str, Any] | None) -> list[str]:
    """The files transformers reads beside the weights and no other check does: the JSON ones must parse,
    a SentencePiece `tokenizer.model` must parse with as many pieces as config.json's vocab_size (a
    truncated one may still parse, shorter)."""
    from hubtools.errors import HubtoolsError
    from hubtools.tokenization.sentencepiece_model import read_sentencepiece_model

    problems: list[str] = []
    for name in (GENERATION_CONFIG, *HF_TOKENIZER_FILES[1:]):
        if (folder / name).is_file():
            _read_json(folder / name, problems)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_spm_model(p.name)):
        try:
            pieces = len(read_sentencepiece_model(path).pieces)
        except HubtoolsError as exc:
            problems.append(str(exc))
            continue
        vocab = (config or {}).get("vocab_size")
        if isinstance(vocab, int) and pieces != vocab:
            problems.append(f"{path.name}: expected {vocab} pieces (config.json vocab_size), found {pieces}")
    return problems


def _named(names: list[str], template: str) -> list[str]:
    out = [template.format(n) for n in names[:MAX_NAMED]]
    if len(names) > MAX_NAMED:
        out.append(f"... and {len(names) - MAX_NAMED} more like '{names[MAX_NAMED]}'")
    return out


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    rope = config.get("rope_parameters")
    return rope if isinstance(rope, dict) else {}


def _found(config: dict[str, Any], key: str) -> Any:
    if key == "rope_theta":
        return config_rope_theta(config)
    if key == "num_key_value_heads":
        return config.get(key) or config.get("num_attention_heads")
    if key == "head_dim":
        heads, hidden = config.get("num_attention_heads"), config.get("hidden_size", 0)
        derivable = _is_int(heads) and _is_int(hidden) and heads != 0
        return config.get(key) or (hidden // heads if derivable else None)
    if key == "tie_word_embeddings":
        return config.get(key, False)
    return config.get(key)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(expected: Any, found: Any) -> bool:
    """Floats within 1e-9; an integer only as an integer and a boolean only as a boolean (64.0 and true are not
    sizes transformers builds modules from, and 0 is not false)."""
    if isinstance(expected, float) and isinstance(found, (int, float)) and not isinstance(found, bool):
        return math.isclose(expected, found, rel_tol=1e-9)
    if isinstance(expected, bool) or isinstance(found, bool):
        return type(expected) is type(found) and expected == found
    if _is_int(expected) or _is_int(found):
        return _is_int(expected) and _is_int(found) and expected == found
    return bool(expected == found)


def _fmt(value: Any, *, like: Any = None) -> str:
    """A value as the message shows it: floats by %g, except where an integer was expected (64.0, not 64)."""
    if isinstance(value, float) and not _is_int(like):
        return f"{value:g}"
    return json.dumps(value)


WRAPPER_FIELDS = (  # a vision model's config.json keys outside text_config and vision_config
    "model_type",
    "architectures",
    "image_token_index",
    "projector_hidden_act",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "multimodal_projector_bias",
    "spatial_merge_size",
    "tie_word_embeddings",
)
VISION_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "head_dim",
    "hidden_act",
    "rope_theta",
)


def _sections(
    expected: dict[str, Any], config: dict[str, Any]
) -> list[tuple[str, dict[str, Any], dict[str, Any], tuple[str, ...]]]:
    """(key prefix, expected, found, keys) for each part of config.json: the whole one, or a vision model's
    wrapper keys, its text_config and its vision_config."""
    if not isinstance(expected.get("text_config"), dict):
        return [("", expected, config, COMPARED_FIELDS)]
    parts: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str, ...]]] = [("", expected, config, WRAPPER_FIELDS)]
    for key, fields in (("text_config", COMPARED_FIELDS), ("vision_config", VISION_FIELDS)):
        found = config.get(key)
        want = dict(expected[key])
        if key == "vision_config":
            want["rope_theta"] = want["rope_parameters"]["rope_theta"]
        parts.append((f"{key}.", want, found if isinstance(found, dict) else {}, fields))
    return parts


def config_problems(config: dict[str, Any], params: ModelParams, *, rope_theta: float | None = None) -> list[str]:
    """Every config.json field the native params determine, compared; rope_theta by the documented rule.

    Args:
        rope_theta: an explicit value for the native model (else params.json's, else the default rule).
    """
    expected = to_hf_config(params, dtype="float32", overrides=ConfigOverrides(rope_theta=rope_theta))
    why = {"rope_theta": expected.rules[0].split(" ", 1)[1]}
    problems = []
    for prefix, want_config, found_config, keys in _sections(expected.config, config):
        for key in keys:
            want, got = want_config.get(key), _found(found_config, key)
            if key not in want_config:
                continue
            if not _same(want, got):
                reason = f" {why[key]}" if key in why and prefix != "vision_config." else ""
                problems.append(
                    f"config.json {prefix}{key}: expected {_fmt(want)}{reason}, found {_fmt(got, like=want)}"
                )
    problems += _quantization_problems(config, params)
    wrapped = isinstance(expected.config.get("text_config"), dict)
    prefix = "text_config." if wrapped else ""
    want_text = expected.config["text_config"] if wrapped else expected.config
    text = config.get("text_config") if wrapped else config
    text = text if isinstance(text, dict) else {}
    if text.get("rope_parameters") is not None and not isinstance(text["rope_parameters"], dict):
        problems.append(
            f"config.json {prefix}rope_parameters: expected an object, found {_fmt(text['rope_parameters'])}"
        )
    rope = want_text.get("rope_parameters")
    if rope is None:
        rope = {"rope_type": "default"}
        if _scales_rope(text.get("rope_scaling")):  # transformers 4.x's key
            problems.append(f"config.json {prefix}rope_scaling: expected null, found {_fmt(text['rope_scaling'])}")
    found = {"rope_type": "default", **_rope_parameters(text)}
    for key, want in rope.items():  # a family's rotary scaling (YaRN, llama-4) field by field
        if not _same(want, found.get(key)):
            reason = f" {why['rope_theta']}" if key == "rope_theta" else ""
            got = _fmt(found.get(key), like=want)
            problems.append(f"config.json {prefix}rope_parameters.{key}: expected {_fmt(want)}{reason}, found {got}")
    kinds, found_kinds = want_text.get("layer_types"), text.get("layer_types")
    if kinds is not None and not _same(kinds, found_kinds):
        problems.append(f"config.json {prefix}layer_types: expected {_fmt(kinds)}, found {_fmt(found_kinds)}")
    problems += _family_problems(text, params.text.family.checked_config_fields(params.text), prefix)
    return problems


def _family_problems(config: dict[str, Any], fields: dict[str, Any], prefix: str = "") -> list[str]:
    """The family's own config.json fields (an object compared key by key), beyond `COMPARED_FIELDS`."""
    problems = []
    for key, want in fields.items():
        if key in COMPARED_FIELDS:
            continue
        found = config.get(key)
        if isinstance(want, dict):
            inner = found if isinstance(found, dict) else {}
            pairs = [(f"{key}.{k}", v, inner.get(k)) for k, v in want.items()]
        else:
            pairs = [(key, want, found)]
        problems += [
            f"config.json {prefix}{name}: expected {_fmt(want)}, found {_fmt(got, like=want)}"
            for name, want, got in pairs
            if not _same(want, got)
        ]
    return problems


def _quantization_problems(config: dict[str, Any], params: ModelParams) -> list[str]:
    """`quantization_config` present exactly when the HF side keeps FP8, and one hubtools reads."""
    try:
        found = fp8.parse_hf(config.get(fp8.HF_FIELD), source="config.json")
    except ParamsError as exc:
        return [str(exc)]
    if (found is None) != (params.quantization is None):
        want = "FP8 (params.json quantization)" if params.quantization is not None else "none (dequantized)"
        return [f"config.json {fp8.HF_FIELD}: expected {want}, found {_fmt(config.get(fp8.HF_FIELD))}"]
    return []


def _scales_rope(rope_scaling: Any) -> bool:
    """Whether a transformers 4.x rope_scaling changes the rotary embedding (null, {} and a "default" type do not)."""
    if not rope_scaling:
        return False
    if not isinstance(rope_scaling, dict):
        return True
    return rope_scaling.get("rope_type", rope_scaling.get("type")) != "default"


SIZE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "num_local_experts",
)


def size_mismatches(config: dict[str, Any] | None, params: ModelParams) -> list[str]:
    """The config.json keys that size the transformers modules and disagree with params (or all when
    there is no config): a forward built from them would allocate what the config claims."""
    if config is None:
        return list(SIZE_FIELDS)
    expected = to_hf_config(params, dtype="float32").config
    mismatched = []
    for prefix, want, found, _ in _sections(expected, config):
        if prefix or "text_config" not in expected:  # a vision model's wrapper keys size nothing
            mismatched += [prefix + k for k in SIZE_FIELDS if k in want and not _same(want[k], _found(found, k))]
    return mismatched


def mapping_problems(
    table: NameTable, names: list[str], shapes: dict[str, tuple[int, ...]], *, layout: Layout, where: str
) -> list[str]:
    """Unknown and missing tensors, and shapes the params contradict, for one side."""
    key = Layout.parse(layout).value
    index = table.index(layout)
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
    """HF tensors share one dtype, and it is the one config.json declares (torch_dtype or dtype); with a
    `quantization_config`, FP8 weights and their scales aside (`hubtools.checkpoint.fp8_tensors` checks them)."""
    if config.get(fp8.HF_FIELD) is not None:
        scales = fp8.scale_suffixes(hf=True)
        tensors = {n: t for n, t in tensors.items() if t.code != fp8.FP8_CODE and not n.endswith(scales)}
    dtypes = sorted({dtype_name(t.code) for t in tensors.values()})
    problems = []
    if len(dtypes) > 1:
        problems.append(f"HF tensors have mixed dtypes {dtypes} (expected one)")
    declared = config.get("dtype") or config.get("torch_dtype")
    if isinstance(declared, str) and dtypes and declared not in dtypes:
        key = "dtype" if config.get("dtype") else "torch_dtype"
        problems.append(f'config.json {key}: declares "{declared}", the tensors are {", ".join(dtypes)}')
    return problems
