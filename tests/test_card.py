"""Model cards: card sources render and validate, the 8x22B model-index equals the published one,
lm-evaluation-harness results import, Hub metadata rules, memory table, verify summary, CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import Result
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import save_file

from hubtools.card.eval_results import Benchmark, Metric, load_lm_eval_results, merge_benchmarks, to_eval_results
from hubtools.card.model_facts import read_model_facts
from hubtools.card.render import memory_rows, render_card, write_card
from hubtools.card.rules import metadata_problems, validate_card_text, validate_metadata
from hubtools.card.source import load_card_source, resolve_card_source
from hubtools.errors import CardError, DestinationError, VerifyError
from hubtools.pipeline.recipe import load_recipe
from hubtools.verification.checks import THRESHOLDS, LogitsCheck, StructureCheck, TensorsCheck, TokenizerCheck
from hubtools.verification.report import VerifyReport, load_report
from tests.helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "cards").glob("*.md"))
RECIPES = sorted((ROOT / "converters").glob("*.yaml"))
OTHER_LICENSES = {"ministral-8b-instruct-2410", "devstral-2-123b-instruct-2512"}  # MRL, modified MIT
GOLDEN_8X22B = ROOT / "tests" / "golden" / "mixtral-8x22b-v0.1.model-index.yaml"
# the published card's YAML front matter, as the Hub serves it (indentation lost in the copy; compared stripped)
PUBLISHED_8X22B = ROOT / "tests" / "data" / "mixtral-8x22b-v0.1.published-front-matter.txt"
CARD_8X22B = ROOT / "cards" / "mixtral-8x22b-v0.1.md"
LEADERBOARD_TABLE = """\
| Metric                          |Value|
|---------------------------------|----:|
|Avg.                             |74.46|
|AI2 Reasoning Challenge (25-Shot)|70.48|
|HellaSwag (10-Shot)              |88.73|
|MMLU (5-Shot)                    |77.81|
|TruthfulQA (0-shot)              |51.08|
|Winogrande (5-shot)              |84.53|
|GSM8k (5-shot)                   |74.15|
"""


@pytest.fixture(scope="module")
def rendered_8x22b() -> str:
    return render_card(load_card_source(CARD_8X22B))


# --- every card source ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_every_card_source_renders_to_metadata_the_hub_accepts(path: Path) -> None:
    source = load_card_source(path)
    text = render_card(source)
    meta = validate_card_text(text)
    card = ModelCard(text)
    assert str(card) == text  # huggingface_hub reads and writes it back unchanged
    assert card.data.license == ("other" if source.path.stem in OTHER_LICENSES else "apache-2.0")
    vision = source.architecture.endswith("ForConditionalGeneration")
    assert meta["pipeline_tag"] == ("image-text-to-text" if vision else "text-generation")
    assert ("AutoModelForImageTextToText" in text) == vision
    assert f"# {source.title}\n" in text and source.repo_id in text
    assert ("model-index" in meta) == bool(source.benchmarks)
    assert ("[INST]" in text) == (source.kind == "instruct")
    for section in (
        "## Prompt format",
        "## Usage",
        "BitsAndBytesConfig(load_in_4bit=True)",
        'attn_implementation="flash_attention_2"',
        "MistralTokenizer.from_file("
        if source.tokenizer == "tekken"
        else f"MistralTokenizer.{source.tokenizer.value}()",
        "## Memory requirements",
    ):
        assert section in text, section


def _recipe_cases() -> list[Any]:
    """Every recipe; those naming a family not merged into this branch are expected to fail to load."""
    from hubtools.pipeline.recipe import architectures

    out = []
    for path in RECIPES:
        arch = yaml.safe_load(path.read_text())["architecture"]
        why = None if arch in architectures() else f"family of {arch} not merged into this branch"
        out.append(pytest.param(path, id=path.stem, marks=[pytest.mark.xfail(reason=why, strict=True)] if why else []))
    return out


@pytest.mark.parametrize("path", _recipe_cases())
def test_every_recipe_names_a_card_source_that_agrees_with_it(path: Path) -> None:
    recipe = load_recipe(path)
    source = load_card_source(ROOT / recipe.card)
    assert (source.repo_id, source.architecture) == (recipe.repo_id, recipe.architecture)
    assert (source.tokenizer, source.tokenizer_version) == (recipe.tokenizer, recipe.tokenizer_version)
    assert (source.kind == "instruct") == (recipe.chat_template != "none")


def test_every_card_source_has_a_recipe() -> None:
    assert {p.stem for p in CARDS} == {p.stem for p in RECIPES}


def _spec_counts(expect: dict[str, Any]) -> tuple[int, int | None]:
    """(total, active) from the name table of the release's params: every weight (scales aside); active leaves out
    the experts a token's router does not pick."""
    from hubtools.families import parse_params
    from hubtools.model.names import tensor_specs
    from hubtools.model.rows import Role

    raw = {k: v for k, v in expect.items() if k != "quantization_config"}
    params = parse_params(raw)
    total, expert = 0, 0
    for spec in tensor_specs(params):
        if spec.row.role is Role.TENSOR:
            total += math.prod(spec.shape)
            expert += math.prod(spec.shape) if spec.expert is not None else 0
    if not params.is_moe:
        return total, None
    return total, total - expert * (params.num_experts - params.num_experts_per_tok) // params.num_experts


def _architecture_counts(expect: dict[str, Any]) -> tuple[int, int | None]:
    """(total, active) from the recipe's dimensions: embeddings + output + per layer attention, norms, FFN."""
    dim, hidden, vocab = expect["dim"], expect["hidden_dim"], expect["vocab_size"]
    attention = 2 * dim * expect["n_heads"] * expect["head_dim"] + 2 * dim * expect["n_kv_heads"] * expect["head_dim"]
    ffn = 3 * dim * hidden
    moe = expect.get("moe")
    experts, top_k = (moe["num_experts"], moe["num_experts_per_tok"]) if moe else (1, 1)
    router = dim * experts if moe else 0
    layer, active_layer = attention + 2 * dim + router + experts * ffn, attention + 2 * dim + router + top_k * ffn
    outside = 2 * vocab * dim + dim
    total = outside + expect["n_layers"] * layer
    return total, (outside + expect["n_layers"] * active_layer) if moe else None


@pytest.mark.parametrize("path", _recipe_cases())
def test_card_parameter_counts_follow_from_the_recipe_dimensions(path: Path) -> None:
    recipe = load_recipe(path)
    source = load_card_source(ROOT / recipe.card)
    if path.stem.startswith(("mistral-7b-", "mixtral-")):
        assert (source.parameters, source.active_parameters) == _architecture_counts(recipe.expect)
    else:
        assert (source.parameters, source.active_parameters) == _spec_counts(recipe.expect)


# --- the published Mixtral-8x22B-v0.1 model-index ---------------------------------------------------------


def _golden() -> list[dict[str, Any]]:
    return yaml.safe_load(GOLDEN_8X22B.read_text(encoding="utf-8"))["model-index"]


def test_golden_model_index_holds_the_published_card_values_line_for_line() -> None:
    published = PUBLISHED_8X22B.read_text(encoding="utf-8")
    start = published.index("model-index:")
    published_lines = [line.strip() for line in published[start : published.index("\n---", start)].splitlines()]
    golden_lines = [
        line.strip() for line in yaml.safe_dump({"model-index": _golden()}, sort_keys=False, width=1000).splitlines()
    ]
    assert golden_lines == published_lines


def test_8x22b_card_reads_back_the_published_model_index(tmp_path: Path, rendered_8x22b: str) -> None:
    readme = write_card(rendered_8x22b, tmp_path / "README.md")
    assert metadata_load(readme)["model-index"] == _golden()
    card = ModelCard.load(readme)
    name, expected = model_index_to_eval_results(_golden())
    assert card.data.model_name == name == "Mixtral-8x22B-v0.1"
    assert card.data.eval_results == expected
    assert [
        (
            r.dataset_name,
            r.dataset_type,
            r.dataset_config,
            r.dataset_split,
            r.dataset_args["num_few_shot"],
            r.metric_type,
            r.metric_name,
            r.metric_value,
        )
        for r in card.data.eval_results
    ] == [
        (
            "AI2 Reasoning Challenge (25-Shot)",
            "ai2_arc",
            "ARC-Challenge",
            "test",
            25,
            "acc_norm",
            "normalized accuracy",
            70.48,
        ),
        ("HellaSwag (10-Shot)", "hellaswag", None, "validation", 10, "acc_norm", "normalized accuracy", 88.73),
        ("MMLU (5-Shot)", "cais/mmlu", "all", "test", 5, "acc", "accuracy", 77.81),
        ("TruthfulQA (0-shot)", "truthful_qa", "multiple_choice", "validation", 0, "mc2", None, 51.08),
        ("Winogrande (5-shot)", "winogrande", "winogrande_xl", "validation", 5, "acc", "accuracy", 84.53),
        ("GSM8k (5-shot)", "gsm8k", "main", "test", 5, "acc", "accuracy", 74.15),
    ]
    url = "https://huggingface.co/spaces/HuggingFaceH4/open_llm_leaderboard?query=mistral-community/Mixtral-8x22B-v0.1"
    assert {(r.source_name, r.source_url, r.task_type, r.task_name) for r in card.data.eval_results} == {
        ("Open LLM Leaderboard", url, "text-generation", "Text Generation")
    }


def test_8x22b_card_has_the_leaderboard_table_with_its_average(rendered_8x22b: str) -> None:
    assert LEADERBOARD_TABLE in rendered_8x22b
    heading = (
        "## [Open LLM Leaderboard Evaluation Results](https://huggingface.co/spaces/HuggingFaceH4/open_llm_leaderboard)"
    )
    assert heading in rendered_8x22b
    assert "details_mistral-community__Mixtral-8x22B-v0.1" in rendered_8x22b


# --- lm-evaluation-harness import -------------------------------------------------------------------------


def _task(alias: str, **metrics: float) -> dict[str, Any]:
    out: dict[str, Any] = {"alias": alias}
    for key, value in metrics.items():
        metric, _, filt = key.partition("__")
        out[f"{metric},{filt or 'none'}"] = value
        out[f"{metric}_stderr,{filt or 'none'}"] = "N/A" if metric == "exact_match" else 0.0123
    return out


def _config(
    task: str, path: str, name: str | None, *, test: str | None, validation: str | None, shots: int
) -> dict[str, Any]:
    return {
        "task": task,
        "dataset_path": path,
        "dataset_name": name,
        "test_split": test,
        "validation_split": validation,
        "num_fewshot": shots,
        "output_type": "multiple_choice",
        "metadata": {"version": 1.0},
    }


def write_lm_eval_results(folder: Path) -> Path:
    """A results file in lm-evaluation-harness 0.4 shape: 25-shot ARC, 10-shot HellaSwag, an MMLU group of two
    subjects, TruthfulQA mc2, GSM8k with two filters and a task outside the leaderboard (PIQA)."""
    results = {
        "arc_challenge": _task("arc_challenge", acc=0.6834, acc_norm=0.71245),
        "hellaswag": _task("hellaswag", acc=0.6712, acc_norm=0.89004),
        "mmlu": _task("mmlu", acc=0.78123),
        "mmlu_abstract_algebra": _task(" - abstract_algebra", acc=0.52),
        "mmlu_anatomy": _task(" - anatomy", acc=0.74),
        "truthfulqa_mc2": _task("truthfulqa_mc2", acc=0.51234),
        "gsm8k": _task("gsm8k", **{"exact_match__strict-match": 0.7604, "exact_match__flexible-extract": 0.7661}),
        "piqa": _task("piqa", acc=0.8297, acc_norm=0.8422),
    }
    data = {
        "results": results,
        "groups": {"mmlu": results["mmlu"]},
        "group_subtasks": {"mmlu": ["mmlu_abstract_algebra", "mmlu_anatomy"], "arc_challenge": [], "piqa": []},
        "configs": {
            "arc_challenge": _config(
                "arc_challenge", "allenai/ai2_arc", "ARC-Challenge", test="test", validation="validation", shots=25
            ),
            "hellaswag": _config("hellaswag", "Rowan/hellaswag", None, test=None, validation="validation", shots=10),
            "mmlu_abstract_algebra": _config(
                "mmlu_abstract_algebra",
                "hails/mmlu_no_train",
                "abstract_algebra",
                test="test",
                validation="validation",
                shots=5,
            ),
            "mmlu_anatomy": _config(
                "mmlu_anatomy", "hails/mmlu_no_train", "anatomy", test="test", validation="validation", shots=5
            ),
            "truthfulqa_mc2": _config(
                "truthfulqa_mc2", "truthful_qa", "multiple_choice", test=None, validation="validation", shots=0
            ),
            "gsm8k": _config("gsm8k", "gsm8k", "main", test="test", validation=None, shots=5),
            "piqa": _config("piqa", "baber/piqa", None, test=None, validation="validation", shots=0),
        },
        "versions": dict.fromkeys(results, 1.0),
        "n-shot": {
            "arc_challenge": 25,
            "hellaswag": 10,
            "mmlu_abstract_algebra": 5,
            "mmlu_anatomy": 5,
            "truthfulqa_mc2": 0,
            "gsm8k": 5,
            "piqa": 0,
        },
        "higher_is_better": {task: {"acc": True} for task in results},
        "n-samples": {"arc_challenge": {"original": 1172, "effective": 1172}},
        "config": {"model": "hf", "model_args": "pretrained=out/hf,dtype=bfloat16", "batch_size": "auto"},
        "git_hash": "a1b2c3d",
        "date": 1714557600.0,
        "lm_eval_version": "0.4.2",
        "model_name": "out/hf",
    }
    path = folder / "results_2024-05-01T10-00-00.123456.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def test_lm_eval_results_become_percent_benchmarks_with_datasets_and_shots(tmp_path: Path) -> None:
    run = load_lm_eval_results(write_lm_eval_results(tmp_path))
    assert run.label == "results_2024-05-01T10-00-00.123456.json (lm-evaluation-harness 0.4.2)"
    got = {b.name: b for b in run.benchmarks}
    assert list(got) == [
        "AI2 Reasoning Challenge (25-shot)",
        "HellaSwag (10-shot)",
        "MMLU (5-shot)",
        "TruthfulQA (0-shot)",
        "GSM8k (5-shot)",
        "piqa (0-shot)",
    ]  # MMLU subjects folded
    arc = got["AI2 Reasoning Challenge (25-shot)"]
    assert (arc.dataset_type, arc.dataset_config, arc.dataset_split, arc.num_few_shot) == (
        "allenai/ai2_arc",
        "ARC-Challenge",
        "test",
        25,
    )
    assert arc.metrics == (Metric("acc_norm", 71.25, "normalized accuracy"), Metric("acc", 68.34, "accuracy"))
    mmlu = got["MMLU (5-shot)"]
    assert (mmlu.dataset_type, mmlu.dataset_config, mmlu.dataset_split, mmlu.metrics) == (
        "cais/mmlu",
        "all",
        "test",
        (Metric("acc", 78.12, "accuracy"),),
    )
    assert got["HellaSwag (10-shot)"].dataset_split == "validation"
    assert got["TruthfulQA (0-shot)"].metrics == (Metric("mc2", 51.23, None),)
    assert got["GSM8k (5-shot)"].metrics == (
        Metric("exact_match", 76.04, "exact match (strict-match)"),
        Metric("exact_match", 76.61, "exact match (flexible-extract)"),
    )
    assert all(b.source_name is None and b.task_type == "text-generation" for b in run.benchmarks)


def test_imported_results_override_the_card_values_for_the_same_benchmark(tmp_path: Path, run_cli) -> None:
    results = write_lm_eval_results(tmp_path)
    out = tmp_path / "README.md"
    result = run_cli("card", CARD_8X22B, "-o", out, "--results", results)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out}\n"
    index = metadata_load(out)["model-index"][0]["results"]
    by_name = {entry["dataset"]["name"]: entry for entry in index}
    assert list(by_name) == [
        "AI2 Reasoning Challenge (25-Shot)",
        "HellaSwag (10-Shot)",
        "MMLU (5-Shot)",
        "TruthfulQA (0-shot)",
        "Winogrande (5-shot)",
        "GSM8k (5-shot)",
        "piqa (0-shot)",
    ]
    arc = by_name["AI2 Reasoning Challenge (25-Shot)"]
    assert arc["dataset"]["type"] == "ai2_arc" and "source" not in arc  # card's names kept, measured values
    assert arc["metrics"] == [
        {"type": "acc_norm", "value": 71.25, "name": "normalized accuracy"},
        {"type": "acc", "value": 68.34, "name": "accuracy"},
    ]
    assert by_name["TruthfulQA (0-shot)"]["metrics"] == [{"type": "mc2", "value": 51.23}]
    assert by_name["Winogrande (5-shot)"]["metrics"][0]["value"] == 84.53  # not measured: published value kept
    assert by_name["Winogrande (5-shot)"]["source"]["name"] == "Open LLM Leaderboard"
    assert by_name["piqa (0-shot)"]["dataset"] == {
        "name": "piqa (0-shot)",
        "type": "baber/piqa",
        "split": "validation",
        "args": {"num_few_shot": 0},
    }
    text = out.read_text(encoding="utf-8")
    assert "Measured with lm-evaluation-harness: results_2024-05-01T10-00-00.123456.json" in text
    assert "|Winogrande(5-shot)|84.53|" in text.replace(" ", "")


def test_results_file_without_results_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results_x.json"
    path.write_text('{"configs": {}}', encoding="utf-8")
    with pytest.raises(CardError, match=r"results_x.json: not an lm-evaluation-harness results file"):
        load_lm_eval_results(path)


def test_benchmarks_that_huggingface_hub_would_merge_are_refused() -> None:
    five = Benchmark("MMLU (5-shot)", "cais/mmlu", (Metric("acc", 77.8),), "all", "test", 5)
    zero = Benchmark("MMLU (0-shot)", "cais/mmlu", (Metric("acc", 70.1),), "all", "test", 0)
    assert merge_benchmarks([five], [zero]) == (five, zero)
    with pytest.raises(CardError) as info:
        to_eval_results([five, zero])
    assert str(info.value) == (
        "results: 'MMLU (5-shot)' and 'MMLU (0-shot)' share task, dataset, config and split "
        "('text-generation', 'cais/mmlu', 'all', 'test'); a model-index cannot keep both "
        "(use a different dataset config or drop one)"
    )


# --- Hub metadata rules -------------------------------------------------------------------------------------


def _valid_meta() -> dict[str, Any]:
    return {
        "license": "apache-2.0",
        "language": ["fr", "en"],
        "tags": ["moe"],
        "pipeline_tag": "text-generation",
        "library_name": "transformers",
        "base_model": "mistral-community/Mixtral-8x7B-v0.1",
        "base_model_relation": "finetune",
        "datasets": ["org/data"],
        "widget": [{"text": "Hello"}],
        "model-index": _golden(),
    }


def _result0(meta: dict[str, Any]) -> dict[str, Any]:
    return meta["model-index"][0]["results"][0]


RULES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "config-int",
        lambda m: _result0(m)["dataset"].update(config=2019),
        "model-index[0].results[0].dataset.config must be a string, got 2019",
    ),
    ("license-other", lambda m: m.update(license="other"), "license 'other' needs license_name and license_link"),
    (
        "license-unknown",
        lambda m: m.update(license="Apache 2.0"),
        "license must be a Hub license id such as 'apache-2.0' or 'other', got 'Apache 2.0'",
    ),
    (
        "license-name",
        lambda m: m.update(license="other", license_name="My License", license_link="LICENSE"),
        "license_name must be a lowercase id like 'my-license-1.0', got 'My License'",
    ),
    (
        "relation",
        lambda m: m.update(base_model_relation="fine-tune"),
        "base_model_relation must be one of adapter, finetune, merge, quantized, got 'fine-tune'",
    ),
    ("relation-alone", lambda m: m.pop("base_model"), "base_model_relation 'finetune' needs base_model"),
    (
        "base-model-id",
        lambda m: m.update(base_model="Mixtral 8x7B"),
        "base_model must be a Hub model id like 'owner/name', got 'Mixtral 8x7B'",
    ),
    (
        "source-name",
        lambda m: _result0(m)["source"].pop("url"),
        "model-index[0].results[0].source.name needs model-index[0].results[0].source.url",
    ),
    (
        "language",
        lambda m: m.update(language=["fr", "English"]),
        "language[1] must be an ISO 639-1/2/3 code (2 or 3 lowercase letters) or 'code'/'multilingual', got 'English'",
    ),
    (
        "language-norway",
        lambda m: m.update(language=[False]),
        "language[0] must be an ISO 639-1/2/3 code (2 or 3 lowercase letters) or 'code'/'multilingual', got False "
        "(YAML reads an unquoted no/yes/on/off as a boolean: quote it)",
    ),
    (
        "pipeline",
        lambda m: m.update(pipeline_tag="text_generation"),
        "pipeline_tag must be a Hub pipeline type such as 'text-generation', got 'text_generation'",
    ),
    ("widget", lambda m: m.update(widget={"text": "Hello"}), "widget must be an array, got {'text': 'Hello'}"),
    ("tags", lambda m: m.update(tags=["moe", 3]), "tags[1] must be a non-empty string, got 3"),
    ("tags-string", lambda m: m.update(tags="moe"), "tags must be an array of strings, got 'moe'"),
    (
        "metric-nan",
        lambda m: _result0(m)["metrics"][0].update(value=math.nan),
        "model-index[0].results[0].metrics[0].value must be a finite number or a string, got nan",
    ),
    (
        "dataset-type",
        lambda m: _result0(m)["dataset"].pop("type"),
        "model-index[0].results[0].dataset.type is required",
    ),
    (
        "metrics-empty",
        lambda m: _result0(m).update(metrics=[]),
        "model-index[0].results[0].metrics must be a non-empty array, got []",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_metadata_rule_names_the_field_and_the_bad_value(mutate, message: str) -> None:
    assert metadata_problems(_valid_meta()) == ()
    meta = _valid_meta()
    mutate(meta)
    with pytest.raises(CardError) as info:
        validate_metadata(meta, where="README.md")
    assert str(info.value) == f"README.md: {message}"


def test_every_problem_is_reported_on_one_line() -> None:
    meta = _valid_meta() | {"license": "other", "widget": "hi"}
    with pytest.raises(CardError) as info:
        validate_metadata(meta)
    assert str(info.value) == (
        "card metadata: license 'other' needs license_name and license_link; widget must be an array, got 'hi'"
    )


def test_a_card_source_with_a_numeric_config_fails_before_anything_is_written(tmp_path: Path, run_cli) -> None:
    text = CARD_8X22B.read_text(encoding="utf-8").replace("config: ARC-Challenge", "config: 2019")
    source = tmp_path / "bad.md"
    source.write_text(text, encoding="utf-8")
    result = run_cli("card", source, "-o", tmp_path / "README.md")
    assert_one_line_error(result, f"{source}: model-index[0].results[0].dataset.config must be a string, got 2019")
    assert not (tmp_path / "README.md").exists()


def test_card_source_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "x.md"
    path.write_text("---\ntitle: X\nrepo_id: a/b\nkind: chat\ntokenizer: v1\nparameters: 1\nmetadata: {}\n---\n")
    with pytest.raises(CardError, match=r"x.md: 'kind' must be one of base, instruct, got 'chat'$"):
        load_card_source(path)
    path.write_text("no front matter\n")
    with pytest.raises(CardError, match=r"no YAML front matter"):
        load_card_source(path)


def test_release_names_resolve_to_their_card_source() -> None:
    assert resolve_card_source("mixtral-8x22b-v0.1", cards_dir=ROOT / "cards") == CARD_8X22B
    with pytest.raises(CardError, match=r"release 'mixtral-8x22b-v0': no card source in"):
        resolve_card_source("mixtral-8x22b-v0", cards_dir=ROOT / "cards")


# --- memory table and chat template from the converted model --------------------------------------------------


def write_tiny_hf_model(folder: Path, *, chat_template: str | None = None) -> int:
    """A 1-layer Mixtral in HF layout (4 experts, top-2); returns its parameter count."""
    hidden, inter, vocab, heads, kv_heads, head_dim, experts = 8, 12, 16, 2, 1, 4, 4
    folder.mkdir(parents=True)
    config = {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "rope_theta": 1e6,
        "max_position_embeddings": 64,
        "sliding_window": None,
        "num_local_experts": experts,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
        "model.layers.0.input_layernorm.weight": (hidden,),
        "model.layers.0.post_attention_layernorm.weight": (hidden,),
        "model.layers.0.self_attn.q_proj.weight": (heads * head_dim, hidden),
        "model.layers.0.self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        "model.layers.0.self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
        "model.layers.0.self_attn.o_proj.weight": (hidden, heads * head_dim),
        "model.layers.0.block_sparse_moe.gate.weight": (experts, hidden),
    }
    for e in range(experts):
        prefix = f"model.layers.0.block_sparse_moe.experts.{e}."
        shapes |= {
            prefix + "w1.weight": (inter, hidden),
            prefix + "w2.weight": (hidden, inter),
            prefix + "w3.weight": (inter, hidden),
        }
    tensors = {name: torch.full(shape, 0.5, dtype=torch.bfloat16) for name, shape in shapes.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer_config: dict[str, Any] = {"bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>"}
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    write_tokenizer_files(folder)
    return sum(t.numel() for t in tensors.values())


def write_tokenizer_files(folder: Path) -> None:
    """The v1 tokenizer the card's usage examples load: the native file and its tokenizer.json."""
    from hubtools.testing import copy_tokenizer
    from hubtools.tokenization.files import build_hf_tokenizer

    build_hf_tokenizer(copy_tokenizer("v1", folder))[0].save(str(folder / "tokenizer.json"))


V1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def test_memory_table_uses_the_real_parameter_count_of_the_model(tmp_path: Path) -> None:
    total = write_tiny_hf_model(tmp_path / "hf", chat_template=V1_TEMPLATE)
    assert total == 1656  # 2*16*8 + 8 + 2*8 + attention 160 + router 32 + 4 experts * 288
    facts = read_model_facts(tmp_path / "hf")
    assert (facts.parameters, facts.active_parameters) == (1656, 1656 - 2 * 288)
    text = render_card(source_matching(facts), model=facts)
    assert "| 16-bit (bfloat16 / float16) | 2 | 3.3 KB (3.2 KiB) |" in text
    assert "| 8-bit (bitsandbytes) | 1 | 1.7 KB (1.6 KiB) |" in text
    assert "| 4-bit (bitsandbytes) | 0.5 | 828 B (828 B) |" in text
    assert "Computed from 1,656 parameters counted in the safetensors headers of the converted model." in text
    assert "1.66K (1,656), 1.08K active per token" in text
    assert (
        "The chat template shipped in `tokenizer_config.json` renders the conversation of the usage example below "
        "as:\n\n"
        "```\n<s>[INST] What is your favourite condiment? [/INST]Well, I'm quite partial"
    ) in text
    assert "</s>[INST] Do you have mayonnaise recipes? [/INST]\n```" in text


def test_memory_table_without_a_model_uses_the_card_source_count() -> None:
    assert [row["size"] for row in memory_rows(46_702_792_704)] == [
        "93.4 GB (87.0 GiB)",
        "46.7 GB (43.5 GiB)",
        "23.4 GB (21.7 GiB)",
    ]
    text = render_card(load_card_source(ROOT / "cards" / "mixtral-8x7b-v0.1.md"))
    assert "Computed from 46,702,792,704 parameters as stated by the release." in text
    assert "12.9B active per token" in text


def test_chat_template_jinja_file_wins_over_tokenizer_config(tmp_path: Path) -> None:
    write_tiny_hf_model(tmp_path / "hf", chat_template="{{ raise_exception('old template') }}")
    (tmp_path / "hf" / "chat_template.jinja").write_text("{% for m in messages %}<{{ m['role'] }}>{% endfor %}")
    facts = read_model_facts(tmp_path / "hf")
    assert facts.chat_template_file == "chat_template.jinja"
    text = render_card(source_matching(facts), model=facts)
    assert "```\n<user><assistant><user>\n```" in text


def test_a_chat_template_that_fails_is_a_card_error(tmp_path: Path) -> None:
    write_tiny_hf_model(tmp_path / "hf", chat_template="{{ raise_exception('Conversation roles must alternate') }}")
    facts = read_model_facts(tmp_path / "hf")
    with pytest.raises(
        CardError,
        match=r"tokenizer_config.json: chat template fails on the example conversation "
        r"\(Conversation roles must alternate\)",
    ):
        render_card(source_matching(facts), model=facts)


# --- verify summary ----------------------------------------------------------------------------------------


def test_verify_summary_appears_with_report(tmp_path: Path, run_cli) -> None:
    report = VerifyReport(
        native="native",
        hf="hf",
        structure=StructureCheck(True, ()),
        tensors=TensorsCheck(True, compared=995, expected=995),
        tokenizer=TokenizerCheck(True, sequences=200, agreed=200),
        logits=LogitsCheck(
            True,
            "float32",
            max_abs_dlogit=3.1e-06,
            nmse=1.2e-12,
            mean_kl=2.0e-10,
            max_kl=4.5e-09,
            top1_agreement=1.0,
            tokens=512,
            thresholds=THRESHOLDS["float32"],
        ),
        hubtools_version="0.1.0",
    ).to_dict()
    path = tmp_path / "verify.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    out = tmp_path / "README.md"
    assert run_cli("card", CARD_8X22B, "-o", out, "--report", path).exit_code == 0
    text = out.read_text(encoding="utf-8")
    assert (
        "`hubtools verify` (hubtools 0.1.0) compared this conversion with the original checkpoint: **passed**." in text
    )
    assert "| tensors | passed | 995 tensors compared, 0 mismatched |" in text
    assert "| tokenizer | passed | 100.00% agreement over 200 sequences |" in text
    assert (
        "| logits | passed | dtype float32, max abs dlogit 3.1e-06, NMSE 1.2e-12, mean KL 2e-10, max KL 4.5e-09, "
        "top-1 agreement 100.00%, on 512 tokens |"
    ) in text
    assert "## Conversion check" not in render_card(load_card_source(CARD_8X22B))


def test_a_report_that_cannot_be_read_is_refused_naming_the_file_and_field(tmp_path: Path, run_cli) -> None:
    path = tmp_path / "verify.json"
    path.write_text(json.dumps({"passed": False, "checks": {"tensors": {"passed": False, "mismatched": ["a"]}}}))
    with pytest.raises(
        VerifyError, match=r"verify.json: expected a hubtools verify report, found no field 'structure'"
    ):
        load_report(path)
    path.write_text("[1, 2]")
    with pytest.raises(VerifyError, match=r"verify.json: expected a hubtools verify report, found a malformed one"):
        load_report(path)
    assert_one_line_error(
        run_cli("card", CARD_8X22B, "-o", tmp_path / "README.md", "--report", path), "verify.json: expected a hubtools"
    )
    assert not (tmp_path / "README.md").exists()


def test_a_skipped_check_reads_back_as_not_run(tmp_path: Path) -> None:
    report = VerifyReport(
        "n",
        "h",
        StructureCheck(True, ()),
        TensorsCheck(False, compared=3, expected=3, mismatched=("a",)),
        TokenizerCheck(True, skipped="no tokenizer file in the native folder"),
        LogitsCheck(True, "float32", skipped="logits check disabled (--no-logits)"),
    )
    path = tmp_path / "verify.json"
    path.write_text(json.dumps(report.to_dict()))
    assert VerifyReport.from_dict(json.loads(path.read_text())) == report
    text = render_card(load_card_source(CARD_8X22B), report=load_report(path))
    assert "compared this conversion with the original checkpoint: **FAILED**." in text
    assert "| tensors | FAILED | 3 tensors compared, 1 mismatched |" in text
    assert "| logits | not run | skipped: logits check disabled (--no-logits) |" in text


# --- output file ---------------------------------------------------------------------------------------------


def test_existing_output_is_refused_without_force(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "README.md"
    out.write_text("keep me\n", encoding="utf-8")
    result: Result = run_cli("card", CARD_8X22B, "-o", out)
    assert_one_line_error(result, f"{out}: already exists (use --force to replace what hubtools wrote there)")
    assert out.read_text(encoding="utf-8") == "keep me\n"
    assert_one_line_error(run_cli("card", CARD_8X22B, "-o", out, "--force"), "expected a file hubtools wrote")
    out.unlink()
    assert run_cli("card", CARD_8X22B, "-o", out).exit_code == 0
    result = run_cli("card", CARD_8X22B, "-o", out, "--force")  # a card hubtools wrote may be replaced
    assert result.exit_code == 0 and result.stdout == f"{out}\n"
    assert out.read_text(encoding="utf-8").startswith("---\nlanguage:")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hubtools", "README.md"]  # its record; no temporary left


def test_release_name_from_the_repository_root(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "card" / "README.md"
    out.parent.mkdir()
    result = run_cli("card", "mixtral-8x7b-instruct-v0.1", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert metadata_load(out)["base_model"] == "mistral-community/Mixtral-8x7B-v0.1"


def test_write_card_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DestinationError, match=r"found a folder"):
        write_card("x", tmp_path, force=True)


def test_a_model_folder_contradicting_the_card_source_fails(tmp_path: Path, run_cli) -> None:
    from hubtools.converter import convert
    from hubtools.testing import write_native_checkpoint

    native = write_native_checkpoint(tmp_path / "native", tiny_params_for_card(), tokenizer=None)
    convert(native, tmp_path / "hf")
    result = run_cli("card", CARD_8X22B, "-o", tmp_path / "README.md", "--model", tmp_path / "hf")
    assert_one_line_error(result, "mixtral-8x22b-v0.1.md: expected about 140,620,634,112 parameters")
    assert not (tmp_path / "README.md").exists()
    dense = tmp_path / "dense"
    convert(write_native_checkpoint(tmp_path / "n2", tiny_params_for_card(moe=False), tokenizer=None), dense)
    result = run_cli("card", CARD_8X22B, "-o", tmp_path / "README.md", "--model", dense)
    assert_one_line_error(result, "expected a MixtralForCausalLM model folder, found MistralForCausalLM")


def test_a_base_card_with_a_chat_template_does_not_claim_it_has_none(tmp_path: Path) -> None:
    text = render_card(
        load_card_source(CARD_8X22B),
        model=dataclasses_replace_facts(
            chat_template="{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
        ),
    )
    assert "it has no chat format" not in text and "ships a chat template" in text
    assert "it has no chat format" in render_card(load_card_source(CARD_8X22B))


def tiny_params_for_card(**kwargs: Any):  # noqa: ANN201
    from hubtools.testing import tiny_params

    return tiny_params(vocab_size=1000, **kwargs)


def dataclasses_replace_facts(**changes: Any):  # noqa: ANN201
    from hubtools.card.model_facts import ModelFacts

    source = load_card_source(CARD_8X22B)
    facts = ModelFacts(
        parameters=source.parameters,
        active_parameters=source.active_parameters,
        architecture=source.architecture,
        chat_template_file="tokenizer_config.json",
    )
    import dataclasses

    return dataclasses.replace(facts, **changes)


def source_matching(facts: Any) -> Any:
    """The 8x7B instruct card source, stating the tiny test model's parameter counts."""
    import dataclasses

    source = load_card_source(ROOT / "cards" / "mixtral-8x7b-instruct-v0.1.md")
    return dataclasses.replace(source, parameters=facts.parameters, active_parameters=facts.active_parameters)


@pytest.mark.parametrize("spec", ["nosuch.md", "NoSuch.MD", "cards/nosuch", "nosuch.markdown"])
def test_a_missing_card_source_path_is_named_as_a_path(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("card", spec, "-o", tmp_path / "README.md")
    assert_one_line_error(result, f"error: {spec}: expected a card source file, found no such path")
    assert "release" not in result.stderr and not (tmp_path / "README.md").exists()


def test_a_folder_is_not_a_card_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.md").mkdir()
    with pytest.raises(CardError, match=r"^x.md: expected a card source file, found a folder$"):
        resolve_card_source("x.md", cards_dir=ROOT / "cards")


def test_the_card_checks_the_folders_config_and_tokenizer_files(tmp_path: Path) -> None:
    import dataclasses

    write_tiny_hf_model(tmp_path / "hf", chat_template=V1_TEMPLATE)
    facts = read_model_facts(tmp_path / "hf")
    assert (facts.tokenizer_file, facts.tokenizer_version, facts.context_length) == ("tokenizer.model", "v1", 64)
    source = source_matching(facts)  # states a context of 32,768 tokens, no sliding window
    assert "| Context length | 32,768 tokens (config.json allows 64 positions) |" in render_card(source, model=facts)
    with pytest.raises(CardError) as window:
        render_card(dataclasses.replace(source, sliding_window=4096), model=facts)
    assert str(window.value) == (
        f"{source.path}: expected a sliding window of 4,096 tokens as the card states, found none in the model "
        "folder's config.json"
    )
    (tmp_path / "hf" / "tokenizer.json").unlink()
    with pytest.raises(CardError, match=r"hf: expected the tokenizer files the card's usage examples load "):
        render_card(source, model=read_model_facts(tmp_path / "hf"))
