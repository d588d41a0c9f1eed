"""Release recipes (`converters/*.yaml`): data only, loaded into frozen dataclasses and validated.

A recipe names its source, the architecture and params it expects (used to reject a wrong source),
config overrides, dtype, shard size, chat template, target repo id and card source.
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
from hubtools.tokenization.choices import ChatTemplate, TokenizerVersion
from hubtools.validation import byte_size, cast_dtype

if TYPE_CHECKING:
    from hubtools.gguf.quant import QuantType

CHAT_TEMPLATES = tuple(ChatTemplate.values(auto=False))
TOKENIZERS = tuple(v.value for v in TokenizerVersion)
_KEYS = {
    "name",
    "description",
    "source",
    "architecture",
    "expect",
    "overrides",
    "dtype",
    "max_shard_size",
    "chat_template",
    "repo_id",
    "card",
    "tags",
    "gguf",
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
    dtype: DType = DType.BFLOAT16
    max_shard_size: int = DEFAULT_SHARD_SIZE
    chat_template: ChatTemplate = ChatTemplate.NONE
    tokenizer: TokenizerVersion | None = None
    description: str = ""
    expect: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    gguf: tuple[QuantType, ...] = ()  # GGUF quant types to release (`hubtools gguf`), e.g. Q8_0, Q4_K_M

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
    expect = raw.get("expect") or {}
    overrides = raw.get("overrides") or {}
    bad = sorted(set(overrides) - _OVERRIDES)
    if bad:
        raise RecipeError(f"{where}: unknown override '{bad[0]}' (expected {', '.join(sorted(_OVERRIDES))})")
    try:
        ConfigOverrides(**overrides)
    except InvalidValueError as exc:
        raise RecipeError(f"{where}: overrides.{exc}") from None
    try:  # the checks `convert` and the CLI make (`hubtools.validation`)
        shard = byte_size(raw.get("max_shard_size", DEFAULT_SHARD_SIZE), name="max_shard_size")
        dtype = cast_dtype(str(raw.get("dtype", "bfloat16")))  # str: a null dtype is 'None', refused
    except InvalidValueError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    tokenizer = expect.get("tokenizer")
    if tokenizer is not None:
        _one_of(tokenizer, TOKENIZERS, "expect.tokenizer", where)
    return Recipe(
        name=_need(raw, "name", str, where),
        architecture=_one_of(raw.get("architecture"), architectures(), "architecture", where),
        source_url=_need(source, "url", str, f"{where}: source"),
        source_format=str(source.get("format", "")),
        repo_id=_need(raw, "repo_id", str, where),
        card=_need(raw, "card", str, where),
        dtype=dtype or DType.BFLOAT16,
        max_shard_size=shard,
        chat_template=ChatTemplate(_one_of(raw.get("chat_template", "none"), CHAT_TEMPLATES, "chat_template", where)),
        tokenizer=None if tokenizer is None else TokenizerVersion(tokenizer),
        description=str(raw.get("description", "")),
        expect={k: v for k, v in expect.items() if k != "tokenizer"},
        overrides=dict(overrides),
        path=where,
        gguf=_gguf_list(raw.get("gguf"), where),
    )


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
    actual = ckpt.params.to_dict()
    for key, expected in recipe.expect.items():
        found = actual.get(key)
        if found != expected:
            raise RecipeError(f"{where}: params '{key}' is {found!r}, recipe expects {expected!r}")
    if recipe.tokenizer and ckpt.tokenizer_file is not None:
        from hubtools.tokenization.files import tokenizer_version

        version = tokenizer_version(ckpt.tokenizer_file)
        if version != recipe.tokenizer:
            raise RecipeError(
                f"{where}: tokenizer {ckpt.tokenizer_file.name} is {version}, recipe expects {recipe.tokenizer.value}"
            )


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
