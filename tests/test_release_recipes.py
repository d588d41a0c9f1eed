"""Each release recipe against convert: a synthetic native checkpoint of the release's shape, scaled down in
width and depth only (`tests/release_shapes.py`), converted with the recipe, gives exactly the config.json
fields the recipe expects (`expect_config`); `check_source` accepts it and refuses a planted mismatch naming
the field. The real-size params also give those fields on paper (no weights)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.errors import ParamsError, RecipeError
from hubtools.families import parse_params
from hubtools.model.hf_config import to_hf_config
from hubtools.pipeline.recipe import architectures, check_source, config_mismatches, load_recipe
from hubtools.testing import write_native_checkpoint, write_tekken_version
from tests.release_shapes import scaled_params

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "converters").glob("*.yaml"))
NEW_RELEASES = sorted(p for p in RECIPES if not p.stem.startswith(("mistral-7b-", "mixtral-")))
FAMILY_OF = {  # the architectures of families that live on other branches until merged
    "LlavaForConditionalGeneration": "pixtral (branch vision)",
    "Mistral3ForConditionalGeneration": "mistral3 (branch vision)",
}


def _raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _params_json(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in recipe["expect"].items() if k not in ("tokenizer", "tokenizer_version")}


def _unsupported(path: Path) -> str | None:
    """Why this branch cannot convert the release yet (None: it can)."""
    raw = _raw(path)
    params = _params_json(raw)
    if raw["architecture"] not in architectures():
        return f"family {FAMILY_OF.get(raw['architecture'], raw['architecture'])} is not merged into this branch"
    if "moe" in params and "q_lora_rank" in params and "mistral4" not in json.dumps(architectures()).lower():
        return "family mistral4 (branch mla) is not merged into this branch"
    return None


def _cases(paths: list[Path]) -> list[Any]:
    return [
        pytest.param(
            p, id=p.stem, marks=[pytest.mark.xfail(reason=why, strict=True)] if (why := _unsupported(p)) else []
        )
        for p in paths
    ]


def test_new_release_recipes_cover_both_generations() -> None:
    names = {p.stem for p in NEW_RELEASES}
    assert len(names) == 27
    assert {"mistral-small-4-119b-2603", "mistral-large-3-675b-instruct-2512", "devstral-2-123b-instruct-2512"} <= names
    assert {
        f"ministral-3-{s}-{k}-2512" for s in ("3b", "8b", "14b") for k in ("base", "instruct", "reasoning")
    } <= names


@pytest.mark.parametrize("path", _cases(NEW_RELEASES))
def test_real_size_params_give_the_expected_config_on_paper(path: Path) -> None:
    recipe = load_recipe(path)
    params = parse_params(_params_json(_raw(path)), source=path.name)
    config = to_hf_config(params, dtype="bfloat16", overrides=recipe.config_overrides()).config
    assert config_mismatches(recipe.expect_config, config) == []
    assert recipe.expect_config["architectures"] == [recipe.architecture] == config["architectures"]


@pytest.mark.parametrize("path", _cases(NEW_RELEASES))
def test_scaled_release_converts_to_the_expected_config(
    path: Path, run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    raw = _raw(path)
    small = scaled_params(_params_json(raw))
    src = _write_release(tmp_path / "native", small)
    scaled_recipe = tmp_path / path.name
    scaled_recipe.write_text(yaml.safe_dump({**raw, "expect": {**small, "tokenizer": raw["expect"]["tokenizer"]}}))
    recipe = load_recipe(scaled_recipe)
    with open_checkpoint(src) as ckpt:
        check_source(recipe, ckpt)  # accepted
        field, planted = _plant(small)
        wrong = load_recipe(_write(tmp_path / "planted" / path.name, {**raw, "expect": planted}))
        with pytest.raises(RecipeError, match=f"params '{field}' is .*, recipe expects"):
            check_source(wrong, ckpt)
    result = run_cli("convert", src, tmp_path / "hf", "--recipe", scaled_recipe)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config_mismatches(recipe.expect_config, config) == []
    key, value = next(iter(recipe.expect_config.items()))
    assert config_mismatches({key: [value, "planted"]}, config) == [(key, [value, "planted"], config[key])]


def _write_release(folder: Path, small: dict[str, Any]) -> Path:
    """A synthetic checkpoint of the scaled params, its params.json as the release writes it (names, nulls); FP8
    experts get one input scale for gate and up, as a release calibrates them (they read the same input)."""
    src = write_native_checkpoint(folder, parse_params(small), tokenizer=None)
    (src / "params.json").write_text(json.dumps(small, indent=2))
    if small.get("quantization") and small.get("moe"):
        from safetensors.torch import load_file, save_file

        path = src / "consolidated.safetensors"
        tensors = load_file(path)
        for name in [n for n in tensors if re.search(r"experts\.\d+\.w3\.qscale_act$", n)]:
            tensors[name] = tensors[name.replace(".w3.", ".w1.")].clone()
        save_file(tensors, path, metadata={"format": "pt"})
    return src


def _plant(small: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A wrong value in the release's most special field (nested ones first), and the field's dotted name."""
    for section, key in (("yarn", "factor"), ("moe", "num_experts"), ("vision_encoder", "patch_size")):
        if isinstance(small.get(section), dict):
            return f"{section}.{key}", {**small, section: {**small[section], key: small[section][key] * 2}}
    if isinstance(small.get("sliding_window"), list):
        return "sliding_window", {**small, "sliding_window": [None] * len(small["sliding_window"])}
    return "rope_theta", {**small, "rope_theta": small["rope_theta"] * 10}


def _write(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("version,accepted", [("v11", True), ("v13", False)])
def test_a_recipe_checks_the_tekken_instruct_version(version: str, accepted: bool, tmp_path: Path) -> None:
    path = ROOT / "converters" / "magistral-small-2506.yaml"
    raw = _raw(path)
    small = {**scaled_params(_params_json(raw)), "vocab_size": 131072}  # the tekken file's vocabulary
    src = write_native_checkpoint(tmp_path / "native", parse_params(small), tokenizer=None)
    write_tekken_version(src, version)
    expect = {**small, "tokenizer": "tekken", "tokenizer_version": "v11"}
    recipe = load_recipe(_write(tmp_path / path.name, {**raw, "expect": expect}))
    with open_checkpoint(src) as ckpt:
        if accepted:
            check_source(recipe, ckpt)
        else:
            with pytest.raises(RecipeError, match="tokenizer tekken.json is tekken v13, recipe expects tekken v11"):
                check_source(recipe, ckpt)


@pytest.mark.parametrize("family_fields", [{}, {"sliding_window": [None, 8]}])
def test_params_context_field_is_read_under_either_name(family_fields: dict[str, Any]) -> None:
    from hubtools.errors import ParamsError

    base = {"dim": 64, "n_layers": 2, "head_dim": 16, "hidden_dim": 128, "n_heads": 4, "n_kv_heads": 2,
            "norm_eps": 1e-5, "vocab_size": 1000, "rope_theta": 1e9, **family_fields}  # fmt: skip
    for key in ("max_position_embeddings", "max_seq_len"):
        params = parse_params({**base, key: 131072})
        assert params.max_seq_len == 131072 and params.to_dict()[key] == 131072
        assert to_hf_config(params, dtype="bfloat16").config["max_position_embeddings"] == 131072
    with pytest.raises(
        ParamsError, match="'max_seq_len' \\(32768\\) and 'max_position_embeddings' \\(131072\\) disagree"
    ):
        parse_params({**base, "max_seq_len": 32768, "max_position_embeddings": 131072})


def _text_cases() -> list[Any]:
    """Vision releases whose text model a family of this branch converts alone (the wrapper aside)."""
    out = []
    for path in NEW_RELEASES:
        params = _params_json(_raw(path))
        if "vision_encoder" not in params or "quantization_config" in params:
            continue
        text = {k: v for k, v in params.items() if k != "vision_encoder"}
        try:
            parse_params(scaled_params(text))
        except ParamsError as exc:
            out.append(pytest.param(path, id=path.stem, marks=[pytest.mark.xfail(reason=str(exc), strict=True)]))
            continue
        out.append(pytest.param(path, id=path.stem))
    return out


@pytest.mark.parametrize("path", _text_cases())
def test_scaled_text_model_converts_to_the_expected_text_config(
    path: Path, run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    raw = _raw(path)
    small = {k: v for k, v in scaled_params(_params_json(raw)).items() if k != "vision_encoder"}
    src = _write_release(tmp_path / "native", small)
    result = run_cli("convert", src, tmp_path / "hf", *_override_flags(raw))
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    expected = {
        k.removeprefix("text_config."): v for k, v in raw["expect_config"].items() if k.startswith("text_config.")
    }
    assert config_mismatches(expected, config) == []


def _override_flags(raw: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in (raw.get("overrides") or {}).items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags
