""" "Flags > recipe > defaults" (`hubtools.pipeline.overlay`): one rule, one case per command that uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hubtools.dtypes import DType
from hubtools.errors import InvalidValueError
from hubtools.gguf.quant import QuantizeError, parse_quants
from hubtools.model.names import Layout
from hubtools.pipeline.overlay import convert_options, gguf_options, pick, release_options
from hubtools.pipeline.recipe import Recipe, parse_recipe
from hubtools.tokenization.choices import ChatTemplate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def recipe() -> Recipe:
    """A recipe whose every setting differs from the defaults (and from the flags below)."""
    raw = yaml.safe_load((ROOT / "converters" / "mixtral-8x7b-instruct-v0.1.yaml").read_text())
    raw.update(dtype="float16", max_shard_size="3GB", chat_template="chatml", gguf=["Q8_0", "Q4_K_M"])
    return parse_recipe(raw, where="recipe.yaml")


def test_pick_is_flag_then_recipe_then_default() -> None:
    assert pick(1, 2, 3) == 1
    assert pick(None, 2, 3) == 2
    assert pick(None, None, 3) == 3
    assert pick(0, 2, 3) == 0  # a given falsy value is still given


def test_convert_flags_win_over_the_recipe_and_the_recipe_over_defaults(recipe: Recipe) -> None:
    plain = convert_options(None)
    assert (plain.to, plain.dtype, plain.max_shard_size, plain.chat_template) == (None, None, 5 * 10**9, "auto")
    assert plain.check is None and plain.overrides.rope_theta is None
    from_recipe = convert_options(recipe)
    assert (from_recipe.dtype, from_recipe.max_shard_size) == (DType.FLOAT16, 3 * 10**9)
    assert from_recipe.chat_template is ChatTemplate.CHATML and from_recipe.check is not None
    assert (from_recipe.overrides.rope_theta, from_recipe.overrides.max_position_embeddings) == (1e6, 32768)
    flags = convert_options(
        recipe, to="hf", dtype="float32", max_shard_size="2GB", max_position_embeddings=4096, chat_template="none"
    )
    assert (flags.to, flags.dtype, flags.max_shard_size) == (Layout.HF, DType.FLOAT32, 2 * 10**9)
    assert flags.chat_template is ChatTemplate.NONE
    assert (flags.overrides.rope_theta, flags.overrides.max_position_embeddings) == (1e6, 4096)  # field by field


def test_gguf_flags_win_over_the_recipe_and_the_recipe_over_defaults(recipe: Recipe) -> None:
    plain = gguf_options(None)
    assert [q.name for q in plain.quants] == ["F16"] and plain.split_max_size == 0
    assert (plain.name, plain.chat_template, plain.overrides, plain.check) == (None, None, None, None)
    from_recipe = gguf_options(recipe)
    assert [q.name for q in from_recipe.quants] == ["Q8_0", "Q4_K_M"]
    assert (from_recipe.name, from_recipe.chat_template) == ("mixtral-8x7b-instruct-v0.1", ChatTemplate.CHATML)
    assert from_recipe.overrides is not None and from_recipe.overrides.max_position_embeddings == 32768
    flags = gguf_options(recipe, quants="bf16", name="x", chat_template="mistral", split_max_size="50GB")
    assert [q.name for q in flags.quants] == ["BF16"] and flags.split_max_size == 50 * 10**9
    assert (flags.name, flags.chat_template) == ("x", ChatTemplate.MISTRAL)
    assert [q.name for q in gguf_options(None, quants=parse_quants("q4_0")).quants] == ["Q4_0"]


def test_release_flags_win_over_the_recipe_and_the_recipe_over_defaults(recipe: Recipe) -> None:
    plain = release_options(None)
    assert (plain.max_shard_size, plain.dtype, plain.overrides, plain.card) == (5 * 10**9, None, None, None)
    assert (plain.chat_template, plain.verify_dtype, plain.check) == (ChatTemplate.AUTO, DType.FLOAT32, None)
    from_recipe = release_options(recipe)
    assert (from_recipe.max_shard_size, from_recipe.dtype) == (3 * 10**9, DType.FLOAT16)
    assert (from_recipe.chat_template, from_recipe.card) == (ChatTemplate.CHATML, "cards/mixtral-8x7b-instruct-v0.1.md")
    assert from_recipe.check is not None
    flags = release_options(recipe, max_shard_size="1GB", card="other.md", verify_dtype="bfloat16", tag="v1")
    assert (flags.max_shard_size, flags.card, flags.verify_dtype, flags.tag) == (
        10**9,
        "other.md",
        DType.BFLOAT16,
        "v1",
    )


def test_bad_values_name_the_value_not_a_flag() -> None:
    with pytest.raises(InvalidValueError, match=r"^dtype 'float8': expected one of bfloat16, float16, float32"):
        convert_options(None, dtype="float8")
    with pytest.raises(InvalidValueError, match=r"^chat_template 'jinja': expected one of auto, mistral"):
        convert_options(None, chat_template="jinja")
    with pytest.raises(InvalidValueError, match=r"^max_shard_size 'lots': expected a size"):
        release_options(None, max_shard_size="lots")
    with pytest.raises(QuantizeError, match=r"^unknown quant type 'q9' \(expected one of"):
        gguf_options(None, quants="q9")
