"""The rule "flags > recipe > defaults", written once and shared by `convert`, `gguf` and `release`.

Each command's settings come from three places: what the caller passed explicitly (the CLI's flags;
None when not given), the recipe (`converters/NAME.yaml`, when there is one) and hubtools' defaults.
`pick` is the rule; `convert_options`, `gguf_options` and `release_options` apply it to each command's
settings and return typed options (`DType`, `ChatTemplate`, `Layout`, `QuantType`), validated here by
the functions the Python API calls (`hubtools.validation`, `parse_quants`), so both refuse a value alike.
This module stays light (no torch, huggingface_hub or gguf-py at import): every command imports it.

Example:
    >>> pick(None, 7, 5), pick(3, 7, 5), pick(None, None, 5)
    (7, 3, 5)
    >>> convert_options(None, max_shard_size="2GB").max_shard_size
    2000000000
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hubtools.checkpoint.reader import Checkpoint
from hubtools.dtypes import DType
from hubtools.filenames import DEFAULT_SHARD_SIZE
from hubtools.model.hf_config import ConfigOverrides
from hubtools.model.names import Layout
from hubtools.pipeline.quantized_targets import QuantizedTarget
from hubtools.pipeline.recipe import Recipe, check_source
from hubtools.tokenization.choices import ChatTemplate
from hubtools.validation import byte_size, cast_dtype, compute_dtype, file_stem, split_size

if TYPE_CHECKING:  # gguf-py imports mistral-common (seconds): `convert` and `release` never need it
    from hubtools.gguf.quant import QuantType

T = TypeVar("T")
DEFAULT_QUANTS = "f16"
Check = Callable[[Checkpoint], None]


def pick(flag: T | None, recipe: T | None, default: T) -> T:
    """The rule: an explicit value wins, then the recipe's, then the default."""
    if flag is not None:
        return flag
    return recipe if recipe is not None else default


def _from(recipe: Recipe | None, attribute: str) -> Any:
    return getattr(recipe, attribute) if recipe is not None else None


def _dtype(value: str | DType | None) -> DType | None:
    return cast_dtype(value)


def _template(value: str | ChatTemplate | None) -> ChatTemplate | None:
    return None if value is None else ChatTemplate.parse(value)


def _size(value: str | int | None) -> int | None:
    return None if value is None else byte_size(value, name="max_shard_size")


def _overrides(recipe: Recipe | None, rope_theta: float | None, max_position_embeddings: int | None) -> ConfigOverrides:
    base = recipe.config_overrides() if recipe is not None else ConfigOverrides()
    return ConfigOverrides(
        rope_theta=pick(rope_theta, base.rope_theta, None),
        max_position_embeddings=pick(max_position_embeddings, base.max_position_embeddings, None),
    )


def source_check(recipe: Recipe | None) -> Check | None:
    """The recipe's check of a source (`recipe.check_source`), or None without a recipe."""
    if recipe is None:
        return None
    return lambda ckpt: check_source(recipe, ckpt)


@dataclass(frozen=True)
class ConvertOptions:
    """The settings of one conversion once flags, the recipe and the defaults are combined."""

    to: Layout | None = None
    dtype: DType | None = None
    max_shard_size: int = DEFAULT_SHARD_SIZE
    overrides: ConfigOverrides = field(default_factory=ConfigOverrides)
    chat_template: ChatTemplate = ChatTemplate.AUTO
    check: Check | None = None


def convert_options(
    recipe: Recipe | None,
    *,
    to: str | Layout | None = None,
    dtype: str | DType | None = None,
    max_shard_size: str | int | None = None,
    rope_theta: float | None = None,
    max_position_embeddings: int | None = None,
    chat_template: str | ChatTemplate | None = None,
) -> ConvertOptions:
    """`convert`'s settings: a flag wins over the recipe, the recipe over the defaults.

    Raises:
        InvalidValueError: a malformed shard size, dtype or chat template.
        LayoutError: an unknown target layout.
    """
    return ConvertOptions(
        to=None if to is None else Layout.parse(to),
        dtype=pick(_dtype(dtype), _from(recipe, "dtype"), None),
        max_shard_size=pick(_size(max_shard_size), _from(recipe, "max_shard_size"), DEFAULT_SHARD_SIZE),
        overrides=_overrides(recipe, rope_theta, max_position_embeddings),
        chat_template=pick(_template(chat_template), _from(recipe, "chat_template"), ChatTemplate.AUTO),
        check=source_check(recipe),
    )


@dataclass(frozen=True)
class GgufOptions:
    """The settings of one GGUF export once flags, the recipe and the defaults are combined.

    `chat_template` None means: an HF source's own template, else auto (`gguf.export`'s default)."""

    quants: tuple[QuantType, ...]
    name: str | None = None
    chat_template: ChatTemplate | None = None
    overrides: ConfigOverrides | None = None
    split_max_size: int = 0
    check: Check | None = None


def gguf_options(
    recipe: Recipe | None,
    *,
    quants: str | Sequence[QuantType] | None = None,
    name: str | None = None,
    chat_template: str | ChatTemplate | None = None,
    split_max_size: str | int | None = None,
) -> GgufOptions:
    """`gguf`'s settings: a flag wins over the recipe, the recipe over the defaults (f16, no split).

    Raises:
        QuantizeError: an unknown quant type, or none ('' or []). InvalidValueError: a malformed split size or
            chat template. DestinationError: a name that is not a file stem.
    """
    from hubtools.gguf.quant import parse_quants

    given = None if quants is None else parse_quants(quants)  # '' or [] is an error, not the default
    chosen = pick(given, list(recipe.gguf) if recipe is not None and recipe.gguf else None, None)
    stem = pick(name, _from(recipe, "name"), None)
    stem = None if stem is None else file_stem(stem)
    split = split_size(split_max_size)  # in `export_gguf`'s order: quants, name, split size, chat template
    return GgufOptions(
        quants=tuple(chosen if chosen is not None else parse_quants(DEFAULT_QUANTS)),
        name=stem,
        chat_template=pick(_template(chat_template), _from(recipe, "chat_template"), None),
        overrides=recipe.config_overrides() if recipe is not None else None,
        split_max_size=split,
        check=source_check(recipe),
    )


@dataclass(frozen=True)
class ReleaseOptions:
    """Everything `release` needs besides the source and the repo (`release_options` fills it from flags,
    a recipe and the defaults)."""

    max_shard_size: int = DEFAULT_SHARD_SIZE
    dtype: DType | None = None
    overrides: ConfigOverrides | None = None
    chat_template: ChatTemplate = ChatTemplate.AUTO
    card: str | None = None
    cards_dir: Path = Path("cards")
    verify_dtype: DType = DType.FLOAT32
    work_dir: Path | None = None
    revision: str | None = None
    create_pr: bool = False
    private: bool = False
    tag: str | None = None
    check: Check | None = None
    quantized: tuple[QuantizedTarget, ...] = ()  # the recipe's GPTQ / AWQ repos (`quantized_release`)

    def __post_init__(self) -> None:
        """The values are checked however the options are made (`release_options` or the constructor).

        Raises:
            InvalidValueError: a dtype, size or chat template `convert` and `verify` would refuse.
        """
        object.__setattr__(self, "max_shard_size", byte_size(self.max_shard_size, name="max_shard_size"))
        object.__setattr__(self, "dtype", cast_dtype(self.dtype))
        object.__setattr__(self, "verify_dtype", compute_dtype(self.verify_dtype))
        object.__setattr__(self, "chat_template", ChatTemplate.parse(self.chat_template))


def release_options(
    recipe: Recipe | None,
    *,
    max_shard_size: str | int | None = None,
    card: str | None = None,
    verify_dtype: str | DType | None = None,
    work_dir: Path | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    private: bool = False,
    tag: str | None = None,
) -> ReleaseOptions:
    """`release`'s settings: a flag wins over the recipe, the recipe over the defaults.

    Raises:
        InvalidValueError: a malformed shard size or dtype.
    """
    return ReleaseOptions(
        max_shard_size=pick(_size(max_shard_size), _from(recipe, "max_shard_size"), DEFAULT_SHARD_SIZE),
        dtype=_from(recipe, "dtype"),
        overrides=recipe.config_overrides() if recipe is not None else None,
        chat_template=pick(None, _from(recipe, "chat_template"), ChatTemplate.AUTO),
        card=pick(card, _from(recipe, "card"), None),
        verify_dtype=pick(None if verify_dtype is None else compute_dtype(verify_dtype), None, DType.FLOAT32),
        work_dir=work_dir,
        revision=revision,
        create_pr=create_pr,
        private=private,
        tag=tag,
        check=source_check(recipe),
        quantized=recipe.quantized if recipe is not None else (),
    )
