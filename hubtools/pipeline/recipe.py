"""Release recipes (`converters/*.yaml`): data only, loaded into frozen dataclasses and validated.

A recipe names its source, the architecture (one of the known families', `hubtools.families`) and the
params.json fields it expects (nested objects too: `yarn`, `llama_4_scaling`, `moe`, `vision_encoder`,
`quantization`, the MLA ranks; used to reject a wrong source), the tokenizer (`v1`..`v7` SentencePiece or
`tekken`, and for tekken its instruct version `tokenizer_version`: v3, v7, v11, v13, v15), the config.json
fields convert must produce (`expect_config`, dotted keys reach into nested objects), config overrides,
dtype (`keep`: FP8 stays FP8), shard size, chat template, target repo id and card source, and the quantized
releases beside it (`gguf:` types, `quantized:` GPTQ / AWQ repos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hubtools.checkpoint.reader import Checkpoint
from hubtools.dtypes import DType
from hubtools.errors import InvalidValueError, RecipeError
from hubtools.filenames import DEFAULT_SHARD_SIZE
from hubtools.model.hf_config import ConfigOverrides
from hubtools.pipeline.quantized_targets import QuantizedTarget, parse_quantized_targets
from hubtools.tokenization.choices import TEKKEN_VERSIONS, ChatTemplate, TokenizerVersion
from hubtools.validation import byte_size, cast_dtype

if TYPE_CHECKING:
    from hubtools.gguf.quant import QuantType

CHAT_TEMPLATES = tuple(ChatTemplate.values(auto=False))
TOKENIZERS = tuple(v.value for v in TokenizerVersion)
KEEP = "keep"  # `dtype: keep`: the source's dtype (an FP8 release stays FP8)
_KEYS = {
    "name",
    "description",
    "source",
    "architecture",
    "expect",
    "expect_config",
    "overrides",
    "dtype",
    "max_shard_size",
    "chat_template",
    "repo_id",
    "card",
    "tags",
    "gguf",
    "quantized",
}
_OVERRIDES = {"rope_theta", "max_position_embeddings"}


@dataclass(frozen=True)
class Recipe:
    """One release, as `converters/NAME.yaml` describes it."""

    name: str
    architecture: str
    source_url: str
    source_format: str
    repo_id: str
    card: str
    dtype: DType | None = DType.BFLOAT16  # None: keep the source's (FP8 stays FP8)
    max_shard_size: int = DEFAULT_SHARD_SIZE
    chat_template: ChatTemplate = ChatTemplate.NONE
    tokenizer: TokenizerVersion | None = None
    tokenizer_version: str | None = None  # tekken's instruct version (`config.version`)
    description: str = ""
    expect: dict[str, Any] = field(default_factory=dict)
    expect_config: dict[str, Any] = field(default_factory=dict)  # dotted config.json key -> value
    overrides: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    gguf: tuple[QuantType, ...] = ()  # GGUF quant types to release (`hubtools gguf`), e.g. Q8_0, Q4_K_M
    quantized: tuple[QuantizedTarget, ...] = ()  # GPTQ / AWQ repos to release (`hubtools quantize`)

    def config_overrides(self) -> ConfigOverrides:
        return ConfigOverrides(
            rope_theta=self.overrides.get("rope_theta"),
            max_position_embeddings=self.overrides.get("max_position_embeddings"),
        )


def _need(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in raw:
        raise RecipeError(f"{where}: missing required key '{key}'")
    if not isinstance(raw[key], kind):
        raise RecipeError(f"{where}: '{key}' must be a {kind.__name__}, got {raw[key]!r}")
    return raw[key]


def _one_of(value: Any, allowed: tuple[str, ...], key: str, where: str) -> Any:
    if value not in allowed:
        raise RecipeError(f"{where}: '{key}' is '{value}' (expected one of {', '.join(allowed)})")
    return value


def parse_recipe(raw: Any, *, where: str) -> Recipe:
    """Validate a decoded recipe mapping.

    Raises:
        RecipeError: naming the key and the bad value.
    """
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise RecipeError(f"{where}: unknown key '{unknown[0]}' (expected some of {', '.join(sorted(_KEYS))})")
    source = _need(raw, "source", dict, where)
    expect = _mapping(raw.get("expect"), "expect", where)
    expect_config = _mapping(raw.get("expect_config"), "expect_config", where)
    overrides = _mapping(raw.get("overrides"), "overrides", where)
    bad = sorted(set(overrides) - _OVERRIDES)
    if bad:
        raise RecipeError(f"{where}: unknown override '{bad[0]}' (expected {', '.join(sorted(_OVERRIDES))})")
    try:
        ConfigOverrides(**overrides)
    except InvalidValueError as exc:
        raise RecipeError(f"{where}: overrides.{exc}") from None
    try:  # the checks `convert` and the CLI make (`hubtools.validation`)
        shard = byte_size(raw.get("max_shard_size", DEFAULT_SHARD_SIZE), name="max_shard_size")
        dtype_name = str(raw.get("dtype", "bfloat16"))  # str: a null dtype is 'None', refused
        dtype = None if dtype_name == KEEP else cast_dtype(dtype_name)
    except InvalidValueError as exc:
        raise RecipeError(f"{where}: {exc}") from None  # the message `cast_dtype` gives everywhere
    tokenizer, version = _tokenizer(expect, where)
    return Recipe(
        name=_need(raw, "name", str, where),
        architecture=_one_of(raw.get("architecture"), architectures(), "architecture", where),
        source_url=_need(source, "url", str, f"{where}: source"),
        source_format=str(source.get("format", "")),
        repo_id=_need(raw, "repo_id", str, where),
        card=_need(raw, "card", str, where),
        dtype=dtype,
        max_shard_size=shard,
        chat_template=ChatTemplate(_one_of(raw.get("chat_template", "none"), CHAT_TEMPLATES, "chat_template", where)),
        tokenizer=None if tokenizer is None else TokenizerVersion(tokenizer),
        tokenizer_version=version,
        description=str(raw.get("description", "")),
        expect={k: v for k, v in expect.items() if k not in ("tokenizer", "tokenizer_version")},
        expect_config=_config_expectations(expect_config, where),
        overrides=dict(overrides),
        path=where,
        gguf=_gguf_list(raw.get("gguf"), where),
        quantized=parse_quantized_targets(raw.get("quantized"), _need(raw, "repo_id", str, where), where),
    )


def _mapping(value: Any, key: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise RecipeError(f"{where}: '{key}' must be a mapping of field names to values, got {value!r}")
    return value


def _tokenizer(expect: dict[str, Any], where: str) -> tuple[str | None, str | None]:
    """`expect.tokenizer` and, for tekken, `expect.tokenizer_version`, checked."""
    tokenizer, version = expect.get("tokenizer"), expect.get("tokenizer_version")
    if tokenizer is not None:
        _one_of(tokenizer, TOKENIZERS, "expect.tokenizer", where)
    if version is not None:
        if tokenizer != TokenizerVersion.TEKKEN.value:
            raise RecipeError(
                f"{where}: 'expect.tokenizer_version' is for tekken, but 'expect.tokenizer' is {tokenizer!r}"
            )
        _one_of(version, TEKKEN_VERSIONS, "expect.tokenizer_version", where)
    return tokenizer, version


def _config_expectations(expected: dict[str, Any], where: str) -> dict[str, Any]:
    """`expect_config`: dotted config.json keys (`text_config.rope_parameters.factor`) to values."""
    for key in expected:
        if not key or any(not part for part in key.split(".")):
            raise RecipeError(f"{where}: 'expect_config' key {key!r} must be a config.json key, dotted for nesting")
    return dict(expected)


def _gguf_list(value: Any, where: str) -> tuple[QuantType, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RecipeError(f"{where}: 'gguf' must be a list of quant types (e.g. [Q8_0, Q4_K_M]), got {value!r}")
    if not value:
        return ()
    from hubtools.gguf.quant import QuantizeError, parse_quants  # gguf-py (and mistral-common): only when listed

    try:
        return tuple(parse_quants(value))
    except QuantizeError as exc:
        raise RecipeError(f"{where}: gguf: {exc}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate `converters/NAME.yaml` (a path, or a release name looked up in converters/).

    Raises:
        RecipeError: missing file, invalid YAML, or invalid content.
    """
    path = find_recipe(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    recipe = parse_recipe(raw, where=str(path))
    if recipe.name != path.stem:
        raise RecipeError(f"{path}: name '{recipe.name}' does not match the file name '{path.stem}'")
    return recipe


def architectures() -> tuple[str, ...]:
    """The architectures a recipe may name: every known family's (`hubtools.families`)."""
    from hubtools.families import known_families

    return tuple(dict.fromkeys(f.architecture for f in known_families()))


def check_source(recipe: Recipe, ckpt: Checkpoint) -> None:
    """Reject a source that is not the checkpoint this recipe describes.

    Raises:
        RecipeError: naming the field, what the recipe expects and what the source has.
    """
    where = f"{ckpt.folder} (recipe {recipe.name})"
    if ckpt.params.architecture != recipe.architecture:
        raise RecipeError(f"{where}: architecture is {ckpt.params.architecture}, recipe expects {recipe.architecture}")
    for key, expected, found in params_mismatches(recipe.expect, ckpt.params.to_dict()):
        raise RecipeError(f"{where}: params '{key}' is {found!r}, recipe expects {expected!r}")
    if recipe.tokenizer and ckpt.tokenizer_file is not None:
        from hubtools.tokenization.files import instruct_version, tokenizer_version

        file = ckpt.tokenizer_file
        version = tokenizer_version(file)
        if version != recipe.tokenizer:
            raise RecipeError(f"{where}: tokenizer {file.name} is {version}, recipe expects {recipe.tokenizer.value}")
        if recipe.tokenizer_version is not None and instruct_version(file) != recipe.tokenizer_version:
            raise RecipeError(
                f"{where}: tokenizer {file.name} is tekken {instruct_version(file)}, "
                f"recipe expects tekken {recipe.tokenizer_version}"
            )


def params_mismatches(expected: dict[str, Any], actual: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, expected, found) for each expected params field the source differs on.

    Nested objects are compared field by field; an expected null means absent (params.json's unused fields), and
    an expected false flag equals an absent one (a family writes `tied_embeddings: false` by leaving it out).

    Example:
        >>> params_mismatches({"yarn": {"factor": 16}, "q_lora_rank": None}, {"yarn": {"factor": 16.0, "beta": 32}})
        []
    """
    out: list[tuple[str, Any, Any]] = []
    for key, want in expected.items():
        found = actual.get(key)
        if isinstance(want, dict) and isinstance(found, dict):
            out += params_mismatches(want, found, f"{prefix}{key}.")
        elif want != found and not (want is False and found is None):
            out.append((f"{prefix}{key}", want, found))
    return out


def config_mismatches(expected: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, expected, found) for each `expect_config` entry that `config` (a config.json) differs on.

    Example:
        >>> config_mismatches({"rope_parameters.factor": 16.0}, {"rope_parameters": {"factor": 16.0}})
        []
    """
    out = []
    for key, want in expected.items():
        found: Any = config
        for part in key.split("."):
            found = found.get(part, _ABSENT) if isinstance(found, dict) else _ABSENT
        if found is _ABSENT or found != want or isinstance(found, bool) != isinstance(want, bool):
            out.append((key, want, "absent" if found is _ABSENT else found))
    return out


_ABSENT = object()


def find_recipe(name_or_path: str | Path, *, root: Path = Path(".")) -> Path:
    """A recipe file from a path, or from a release name (`mixtral-8x7b-v0.1` -> converters/NAME.yaml).

    Example:
        >>> find_recipe("mixtral-8x7b-v0.1")
        PosixPath('converters/mixtral-8x7b-v0.1.yaml')
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return root / "converters" / f"{name_or_path}.yaml"
