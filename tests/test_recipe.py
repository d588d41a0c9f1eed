from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import Result

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.errors import RecipeError
from hubtools.pipeline.recipe import architectures, check_source, config_mismatches, load_recipe, parse_recipe
from hubtools.testing import tiny_params
from tests.helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "converters").glob("*.yaml"))
SEED_RELEASES = {
    "mistral-7b-v0.1",
    "mixtral-8x7b-v0.1",
    "mixtral-8x7b-instruct-v0.1",
    "mixtral-8x22b-v0.1",
    "mixtral-8x22b-instruct-v0.1",
}
MISTRAL_3_GENERATION = {
    "pixtral-12b-base-2409", "pixtral-12b-2409", "ministral-8b-instruct-2410",
    "mistral-small-24b-base-2501", "mistral-small-24b-instruct-2501",
    "mistral-small-3.1-24b-base-2503", "mistral-small-3.1-24b-instruct-2503", "mistral-small-3.2-24b-instruct-2506",
    "magistral-small-2506", "magistral-small-2507", "magistral-small-2509",
    "devstral-small-2505", "devstral-small-2507", "devstral-small-2-24b-instruct-2512", "devstral-2-123b-instruct-2512",
    *(f"ministral-3-{s}-{k}-2512" for s in ("3b", "8b", "14b") for k in ("base", "instruct", "reasoning")),
}  # fmt: skip
MISTRAL_4_GENERATION = {
    "mistral-small-4-119b-2603", "mistral-large-3-675b-base-2512", "mistral-large-3-675b-instruct-2512",
}  # fmt: skip
BASE_MODELS = {"pixtral-12b-base-2409", "mistral-large-3-675b-base-2512"}  # base without "base" in the name
UNMERGED = {"LlavaForConditionalGeneration", "Mistral3ForConditionalGeneration"}  # families of branch vision


def test_one_recipe_per_release() -> None:
    assert {p.stem for p in RECIPES} == SEED_RELEASES | MISTRAL_3_GENERATION | MISTRAL_4_GENERATION


def _parse_cases() -> list[object]:
    out: list[object] = []
    for path in RECIPES:
        arch = yaml.safe_load(path.read_text())["architecture"]
        if arch in UNMERGED and arch not in architectures():
            out.append(pytest.param(path, id=path.stem, marks=pytest.mark.xfail(reason=f"{arch}: branch vision")))
        else:
            out.append(pytest.param(path, id=path.stem))
    return out


@pytest.mark.parametrize("path", _parse_cases())
def test_every_recipe_parses_and_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.repo_id.count("/") == 1 and recipe.source_url
    assert (ROOT / recipe.card).parent.name == "cards"
    if recipe.name in SEED_RELEASES:
        is_moe = "moe" in recipe.expect
        assert recipe.architecture == ("MixtralForCausalLM" if is_moe else "MistralForCausalLM")
    else:
        assert recipe.expect_config["architectures"] == [recipe.architecture]
    base = (
        "base" in recipe.name
        or recipe.name in BASE_MODELS
        or recipe.name.startswith("mixtral-")
        and "instruct" not in recipe.name
    )
    assert recipe.chat_template == ("none" if base or recipe.name == "mistral-7b-v0.1" else "mistral")
    assert (recipe.dtype is None) == ("quantization" in recipe.expect or "quantization_config" in recipe.expect)


def test_8x22b_recipes_keep_their_vocab_sizes_apart() -> None:
    base = load_recipe(ROOT / "converters/mixtral-8x22b-v0.1.yaml")
    instruct = load_recipe(ROOT / "converters/mixtral-8x22b-instruct-v0.1.yaml")
    assert (base.expect["vocab_size"], base.tokenizer) == (32000, "v1")
    assert (instruct.expect["vocab_size"], instruct.tokenizer) == (32768, "v3")
    assert base.config_overrides().max_position_embeddings == 65536


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"dtype": "int4"}, "r.yaml: dtype 'int4': expected one of bfloat16, float16, float32"),
        ({"dtype": None}, "r.yaml: dtype 'None': expected one of bfloat16, float16, float32"),
        (
            {"architecture": "LlamaForCausalLM"},
            "'architecture' is 'LlamaForCausalLM' (expected one of MinistralForCausalLM, Ministral3ForCausalLM",
        ),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"dtype": "float8"}, "r.yaml: dtype 'float8': expected one of bfloat16, float16, float32"),
        ({"expect": ["dim"]}, "r.yaml: 'expect' must be a mapping of field names to values"),
        ({"expect_config": {"rope_parameters..factor": 1}}, "'expect_config' key 'rope_parameters..factor'"),
        ({"expect": {"tokenizer": "tekken", "tokenizer_version": "v9"}}, "'expect.tokenizer_version' is 'v9'"),
        ({"expect": {"tokenizer": "v3", "tokenizer_version": "v7"}}, "'expect.tokenizer_version' is for tekken"),
        ({"overrides": {"rope_scaling": 2}}, "unknown override 'rope_scaling'"),
        ({"max_shard_size": "lots"}, "max_shard_size 'lots': expected a size such as 5GB"),
        ({"overrides": {"rope_theta": float("nan")}}, "overrides.rope_theta nan: expected a finite number > 0"),
        ({"overrides": {"rope_theta": -5}}, "overrides.rope_theta -5: expected a finite number > 0"),
        ({"overrides": {"rope_theta": "fast"}}, "overrides.rope_theta 'fast': expected a finite number > 0"),
        ({"overrides": {"max_position_embeddings": 0}}, "overrides.max_position_embeddings 0: expected a positive"),
        ({"overrides": {"max_position_embeddings": 1.5}}, "overrides.max_position_embeddings 1.5: expected a positive"),
    ],
)
def test_invalid_recipes_name_the_key(edit: dict[str, object], message: str) -> None:
    raw = yaml.safe_load((ROOT / "converters/mixtral-8x7b-v0.1.yaml").read_text())
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe({**raw, **edit}, where="r.yaml")


def test_recipe_rejects_a_wrong_source(
    make_native: Callable[..., Path], run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    dense = make_native("dense", params=tiny_params(moe=False), tokenizer=None)
    recipe = ROOT / "converters/mixtral-8x7b-v0.1.yaml"
    assert_one_line_error(
        run_cli("convert", dense, tmp_path / "o", "--recipe", recipe),
        "architecture is MistralForCausalLM, recipe expects MixtralForCausalLM",
    )
    moe = make_native("moe", tokenizer=None)
    with open_checkpoint(moe) as ckpt, pytest.raises(RecipeError, match="params 'dim' is 64, recipe expects 4096"):
        check_source(load_recipe(recipe), ckpt)
    assert not (tmp_path / "o").exists()


def test_recipe_supplies_overrides_dtype_and_shard_size(
    make_native: Callable[..., Path], run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    import json

    src = make_native(tokenizer="v1")
    recipe = yaml.safe_load((ROOT / "converters/mixtral-8x22b-v0.1.yaml").read_text())
    recipe["expect"] = {"dim": 64, "tokenizer": "v1"}
    recipe["dtype"], recipe["max_shard_size"], recipe["name"] = "float16", "3MB", "tiny"
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    result = run_cli("convert", src, tmp_path / "hf", "--recipe", tmp_path / "tiny.yaml", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "max_position_embeddings=65536 (override)" in summary["rules"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["torch_dtype"] == "float16" and config["max_position_embeddings"] == 65536
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) == 3


def test_flags_win_over_the_recipe_and_the_recipe_over_defaults() -> None:
    from hubtools.pipeline.overlay import convert_options

    recipe = load_recipe(ROOT / "converters/mixtral-8x22b-v0.1.yaml")
    plain = convert_options(None)
    assert (plain.dtype, plain.max_shard_size, plain.chat_template) == (None, 5 * 10**9, "auto")
    assert plain.overrides.rope_theta is None and plain.overrides.max_position_embeddings is None
    from_recipe = convert_options(recipe)
    assert from_recipe.dtype == recipe.dtype and from_recipe.chat_template == recipe.chat_template
    assert from_recipe.overrides.max_position_embeddings == 65536
    flags = convert_options(
        recipe,
        dtype="float32",
        max_shard_size="2GB",
        rope_theta=5e5,
        max_position_embeddings=4096,
        chat_template="none",
    )
    assert (flags.dtype, flags.max_shard_size, flags.chat_template) == ("float32", 2 * 10**9, "none")
    assert (flags.overrides.rope_theta, flags.overrides.max_position_embeddings) == (5e5, 4096)


def test_recipe_accepts_a_release_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert load_recipe("mixtral-8x7b-v0.1").name == "mixtral-8x7b-v0.1"
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe("no-such-release")


def test_recipe_keep_dtype_and_nested_expectations(tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "converters/devstral-2-123b-instruct-2512.yaml")
    assert recipe.dtype is None and recipe.expect["yarn"]["apply_scale"] is True
    assert recipe.expect_config["rope_parameters.mscale_all_dim"] == 0.0
    assert config_mismatches({"a.b": 1, "c": True}, {"a": {"b": 1}, "c": 1}) == [("c", True, 1)]
    assert config_mismatches({"a.b": 1}, {"a": 2}) == [("a.b", 1, "absent")]


def test_nested_params_mismatch_is_named(make_native: Callable[..., Path]) -> None:
    from hubtools.testing import tiny_ministral3_params

    src = make_native("m3", params=tiny_ministral3_params(), tokenizer=None)
    raw = yaml.safe_load((ROOT / "converters/devstral-2-123b-instruct-2512.yaml").read_text())
    raw["expect"] = {"yarn": {"factor": 64}, "q_lora_rank": None}
    with (
        open_checkpoint(src) as ckpt,
        pytest.raises(RecipeError, match="params 'yarn.factor' is 4.0, recipe expects 64"),
    ):
        check_source(parse_recipe(raw, where="r.yaml"), ckpt)
