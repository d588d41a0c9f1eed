"""A recipe's `quantized:` list (GPTQ / AWQ repos beside the HF one), validated like the rest of the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hubtools.errors import RecipeError
from hubtools.pipeline.quantized_targets import QuantizedTarget
from hubtools.pipeline.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "converters/mixtral-8x7b-v0.1.yaml").read_text())


SEED_RECIPES = sorted(p for p in (ROOT / "converters").glob("*.yaml") if p.stem.startswith(("mistral-7b-", "mixtral-")))


@pytest.mark.parametrize("path", SEED_RECIPES, ids=lambda p: p.stem)
def test_every_seed_recipe_lists_a_gptq_and_an_awq_repo(path: Path) -> None:
    """The seed releases (Mistral 7B, Mixtral: the families `hubtools quantize` calibrates) list both."""
    recipe = load_recipe(path)
    assert [(t.method, t.bits, t.group_size) for t in recipe.quantized] == [("gptq", 4, 128), ("awq", 4, 128)]
    assert [t.repo for t in recipe.quantized] == [f"{recipe.repo_id}-GPTQ", f"{recipe.repo_id}-AWQ"]


def test_a_target_may_name_its_repo_and_calibration() -> None:
    entry = {"method": "awq", "bits": 4, "group_size": 64, "repo": "me/X-AWQ", "samples": 64, "seq_len": 256}
    recipe = parse_recipe({**RAW, "quantized": [entry]}, where="r.yaml")
    assert recipe.quantized == (QuantizedTarget("awq", 4, 64, "me/X-AWQ", 64, 256),)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"method": "gptq", "bits": 4}, "r.yaml: 'quantized' must be a list"),
        (["gptq"], "r.yaml: quantized[0]: expected a mapping with method"),
        (
            [{"method": "hqq", "bits": 4, "group_size": 128}],
            "quantized[0]: 'method' is 'hqq' (expected one of gptq, awq)",
        ),
        ([{"method": "gptq", "bits": 3, "group_size": 128}], "quantized[0]: 'bits' is 3 (expected one of 4, 8)"),
        ([{"method": "gptq", "bits": 4, "group_size": 100}], "quantized[0]: 'group_size' is 100 (expected one of 32"),
        ([{"method": "gptq", "bits": True, "group_size": 128}], "'bits' is True"),
        ([{"method": "gptq", "bits": 4, "group_size": 128, "act": 1}], "quantized[0]: unknown key 'act'"),
        ([{"method": "gptq", "bits": 4, "group_size": 128, "repo": "nope"}], "quantized[0]: 'repo' is 'nope'"),
        ([{"method": "gptq", "bits": 4, "group_size": 128, "samples": 0}], "'samples' is 0 (expected a positive"),
        (
            [{"method": "gptq", "bits": 4, "group_size": 128}, {"method": "gptq", "bits": 8, "group_size": 128}],
            "two entries publish to 'mistral-community/Mixtral-8x7B-v0.1-GPTQ'",
        ),
    ],
)
def test_a_bad_target_is_named(value: object, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe({**RAW, "quantized": value}, where="r.yaml")
    assert message in str(info.value)


def test_the_release_dry_run_lists_the_recipes_quantized_repos(tmp_path: Path) -> None:
    from hubtools.pipeline.overlay import release_options
    from hubtools.pipeline.release import plan_release
    from hubtools.testing import tiny_params, write_native_checkpoint

    params = tiny_params(n_layers=1, dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64)
    native = write_native_checkpoint(tmp_path / "native", params, tokenizer="v1")
    recipe = parse_recipe(RAW, where="r.yaml")
    options = release_options(recipe, card=None)
    options = type(options)(**{**options.__dict__, "check": None, "card": None})  # a tiny source, not 8x7B
    plan = plan_release(str(native), "acme/tiny", options=options)
    assert [(q["repo_id"], q["method"]) for q in plan["quantized"]] == [
        ("mistral-community/Mixtral-8x7B-v0.1-GPTQ", "gptq"),
        ("mistral-community/Mixtral-8x7B-v0.1-AWQ", "awq"),
    ]
    assert all("README" not in f for q in plan["quantized"] for f in q["files"])
