"""Local checks of model-card metadata against the rules the Hub enforces on README.md front matter.

The Hub validates metadata server-side (`/api/validate-yaml`) and rejects a push with messages such as
`model-index[0].results[0].dataset.config must be a string`. These checks run before anything is
uploaded and name the field and the bad value, one problem per clause, on one line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml

from hubtools.errors import CardError

# https://huggingface.co/docs/hub/repositories-licenses (the list the Hub's "license must be one of" quotes).
LICENSES = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda
    cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0
    cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0
    cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0
    etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research
    intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openmdw-1.0 openmdw-1.1
    openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
    fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 grok2-community
    gemma unknown other
    """.split()
)

# huggingface.js packages/tasks/src/pipelines.ts, PIPELINE_DATA keys.
PIPELINE_TAGS = frozenset(
    """
    biology text-classification token-classification table-question-answering question-answering
    zero-shot-classification translation summarization feature-extraction text-generation
    text2text-generation fill-mask sentence-similarity text-to-speech text-to-audio
    automatic-speech-recognition audio-to-audio audio-classification audio-text-to-text
    voice-activity-detection depth-estimation image-classification object-detection image-segmentation
    text-to-image image-to-text image-to-image image-to-video unconditional-image-generation
    video-classification reinforcement-learning robotics tabular-classification tabular-regression
    tabular-to-text table-to-text multiple-choice text-ranking text-retrieval time-series-forecasting
    text-to-video image-text-to-text visual-question-answering document-question-answering
    zero-shot-image-classification graph-ml mask-generation zero-shot-object-detection text-to-3d
    image-to-3d image-feature-extraction video-text-to-text keypoint-detection visual-document-retrieval
    any-to-any other
    """.split()
)

BASE_MODEL_RELATIONS = ("adapter", "finetune", "merge", "quantized")
SPECIAL_LANGUAGES = frozenset({"code", "multilingual"})

_LANGUAGE = re.compile(r"[a-z]{2,3}")
_LICENSE_NAME = re.compile(r"[a-z0-9][a-z0-9.+-]*")
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")


def metadata_problems(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """Every rule of the Hub's metadata schema that `meta` breaks, as short clauses.

    Args:
        meta (`Mapping[str, Any]`): README front matter as `yaml.safe_load` reads it.

    Returns:
        `tuple[str, ...]`: one clause per problem (field, rule, bad value); empty when the metadata is valid.

    Example:
        >>> metadata_problems({"license": "other"})
        ("license 'other' needs license_name and license_link",)
    """
    if not isinstance(meta, Mapping):
        return (f"metadata must be a mapping, got {meta!r}",)
    return (
        *_license_problems(meta),
        *_language_problems(meta.get("language")),
        *_string_list_problems("tags", meta.get("tags"), allow_string=False),
        *_string_list_problems("datasets", meta.get("datasets"), allow_string=True),
        *_base_model_problems(meta),
        *_scalar_problems(meta),
        *_model_index_problems(meta.get("model-index")),
    )


def validate_metadata(meta: Mapping[str, Any], *, where: str = "card metadata") -> None:
    """Raise `CardError` naming every broken rule when `meta` would be rejected by the Hub.

    Args:
        meta (`Mapping[str, Any]`): README front matter.
        where (`str`, *optional*, defaults to `"card metadata"`): what the message names (a file path).

    Raises:
        `CardError`: "<where>: <problem>; <problem>".

    Example:
        >>> validate_metadata({"license": "apache-2.0", "pipeline_tag": "text-generation"})
    """
    problems = metadata_problems(meta)
    if problems:
        raise CardError(f"{where}: {'; '.join(problems)}")


def validate_card_text(text: str, *, where: str = "README.md") -> dict[str, Any]:
    """Parse a README's YAML front matter and validate it; return the metadata.

    Args:
        text (`str`): the whole README.md.
        where (`str`, *optional*): name used in messages.

    Returns:
        `dict[str, Any]`: the metadata as the Hub will read it.

    Raises:
        `CardError`: no front matter, invalid YAML, or a broken rule.
    """
    match = _YAML_BLOCK.search(text)
    if match is None:
        raise CardError(f"{where}: no YAML front matter (expected the file to start with '---')")
    try:
        meta = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        raise CardError(f"{where}: front matter is not valid YAML ({' '.join(str(exc).split())})") from exc
    meta = {} if meta is None else meta
    validate_metadata(meta, where=where)
    return dict(meta)


def _license_problems(meta: Mapping[str, Any]) -> Iterator[str]:
    license_id = meta.get("license")
    if license_id is not None and (not isinstance(license_id, str) or license_id not in LICENSES):
        yield f"license must be a Hub license id such as 'apache-2.0' or 'other', got {license_id!r}"
    if license_id == "other" and (meta.get("license_name") is None or meta.get("license_link") is None):
        yield "license 'other' needs license_name and license_link"
    name = meta.get("license_name")
    if name is not None and (not isinstance(name, str) or not _LICENSE_NAME.fullmatch(name)):
        yield f"license_name must be a lowercase id like 'my-license-1.0', got {name!r}"
    link = meta.get("license_link")
    if link is not None and (not isinstance(link, str) or not link.strip()):
        yield f"license_link must be a URL or a file name in the repo such as 'LICENSE', got {link!r}"


def _language_problems(value: Any) -> Iterator[str]:
    for field, code in _items("language", value):
        if isinstance(code, str) and (_LANGUAGE.fullmatch(code) or code in SPECIAL_LANGUAGES):
            continue
        hint = " (YAML reads an unquoted no/yes/on/off as a boolean: quote it)" if isinstance(code, bool) else ""
        yield (
            f"{field} must be an ISO 639-1/2/3 code (2 or 3 lowercase letters) or 'code'/'multilingual', "
            f"got {code!r}{hint}"
        )


def _string_list_problems(key: str, value: Any, *, allow_string: bool) -> Iterator[str]:
    if value is not None and not isinstance(value, list) and not (allow_string and isinstance(value, str)):
        yield f"{key} must be an array of strings, got {value!r}"
        return
    for field, item in _items(key, value):
        if not isinstance(item, str) or not item.strip():
            yield f"{field} must be a non-empty string, got {item!r}"


def _base_model_problems(meta: Mapping[str, Any]) -> Iterator[str]:
    base = meta.get("base_model")
    if base is not None and not isinstance(base, (str, list)):
        yield f"base_model must be a model id 'owner/name' or a list of them, got {base!r}"
    else:
        for field, repo in _items("base_model", base):
            if not isinstance(repo, str) or not _REPO_ID.fullmatch(repo):
                yield f"{field} must be a Hub model id like 'owner/name', got {repo!r}"
    relation = meta.get("base_model_relation")
    if relation is None:
        return
    if relation not in BASE_MODEL_RELATIONS:
        yield f"base_model_relation must be one of {', '.join(BASE_MODEL_RELATIONS)}, got {relation!r}"
    if base is None:
        yield f"base_model_relation {relation!r} needs base_model"


def _scalar_problems(meta: Mapping[str, Any]) -> Iterator[str]:
    tag = meta.get("pipeline_tag")
    if tag is not None and (not isinstance(tag, str) or tag not in PIPELINE_TAGS):
        yield f"pipeline_tag must be a Hub pipeline type such as 'text-generation', got {tag!r}"
    library = meta.get("library_name")
    if library is not None and (not isinstance(library, str) or not library.strip()):
        yield f"library_name must be a string such as 'transformers', got {library!r}"
    if "widget" in meta and not isinstance(meta["widget"], list):
        yield f"widget must be an array, got {meta['widget']!r}"


def _model_index_problems(index: Any) -> Iterator[str]:
    if index is None:
        return
    if not isinstance(index, list) or not index:
        yield f"model-index must be a non-empty array, got {index!r}"
        return
    for i, entry in enumerate(index):
        where = f"model-index[{i}]"
        if not isinstance(entry, Mapping):
            yield f"{where} must be a mapping, got {entry!r}"
            continue
        yield from _require(where, entry, "name", _is_str, "a string")
        results = entry.get("results")
        if not isinstance(results, list):
            yield f"{where}.results must be an array, got {results!r}"
            continue
        for j, result in enumerate(results):
            yield from _result_problems(f"{where}.results[{j}]", result)


def _result_problems(where: str, result: Any) -> Iterator[str]:
    if not isinstance(result, Mapping):
        yield f"{where} must be a mapping, got {result!r}"
        return
    yield from _block(where, result, "task", required=("type",), optional=("name",))
    yield from _block(where, result, "dataset", required=("type", "name"), optional=("config", "split", "revision"))
    args = result.get("dataset", {}).get("args") if isinstance(result.get("dataset"), Mapping) else None
    if args is not None and not isinstance(args, (Mapping, str)):
        yield f"{where}.dataset.args must be a mapping, got {args!r}"
    metrics = result.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        yield f"{where}.metrics must be a non-empty array, got {metrics!r}"
    else:
        for k, metric in enumerate(metrics):
            yield from _metric_problems(f"{where}.metrics[{k}]", metric)
    if "source" in result:
        yield from _source_problems(f"{where}.source", result["source"])


def _metric_problems(where: str, metric: Any) -> Iterator[str]:
    if not isinstance(metric, Mapping):
        yield f"{where} must be a mapping, got {metric!r}"
        return
    yield from _require(where, metric, "type", _is_str, "a string")
    if "value" not in metric:
        yield f"{where}.value is required"
    elif not _is_metric_value(metric["value"]):
        yield f"{where}.value must be a finite number or a string, got {metric['value']!r}"
    for key in ("name", "config"):
        if key in metric and not _is_str(metric[key]):
            yield f"{where}.{key} must be a string, got {metric[key]!r}"


def _source_problems(where: str, source: Any) -> Iterator[str]:
    if not isinstance(source, Mapping):
        yield f"{where} must be a mapping, got {source!r}"
        return
    if "name" in source and "url" not in source:
        yield f"{where}.name needs {where}.url"
    for key in ("name", "url"):
        if key in source and not _is_str(source[key]):
            yield f"{where}.{key} must be a string, got {source[key]!r}"


def _block(
    where: str, result: Mapping[str, Any], key: str, *, required: tuple[str, ...], optional: tuple[str, ...]
) -> Iterator[str]:
    block = result.get(key)
    if not isinstance(block, Mapping):
        yield f"{where}.{key} must be a mapping, got {block!r}"
        return
    for field in required:
        yield from _require(f"{where}.{key}", block, field, _is_str, "a string")
    for field in optional:
        if field in block and not _is_str(block[field]):
            yield f"{where}.{key}.{field} must be a string, got {block[field]!r}"


def _require(
    where: str, block: Mapping[str, Any], key: str, check: Callable[[Any], bool], expected: str
) -> Iterator[str]:
    if key not in block or block[key] is None:
        yield f"{where}.{key} is required"
    elif not check(block[key]):
        yield f"{where}.{key} must be {expected}, got {block[key]!r}"


def _items(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    if value is None:
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield f"{key}[{i}]", item
    else:
        yield key, value


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_metric_value(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str) and bool(value.strip())
