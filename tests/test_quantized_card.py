"""The -GPTQ / -AWQ repo card (card/quantized.py) and the original's table of released forms (card/forms.py),
rendered for a tiny quantized Mixtral with its verify report; the card's transformers snippet RUNS against
the folder (offline, the repo id replaced by the folder), and what it loads is checked: no parameter
re-initialised (transformers' load report), generation works."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hubtools.card.forms import release_forms
from hubtools.card.model_facts import read_model_facts
from hubtools.card.quantized import read_release, render_quantized_card
from hubtools.card.render import render_card
from hubtools.card.source import load_card_source
from hubtools.converter import convert
from hubtools.errors import CardError
from hubtools.quantization.run import quantize
from hubtools.quantization.scheme import QuantizeOptions
from hubtools.quantization.verify import verify_quantized
from hubtools.testing import add_outlier_channels, tiny_params, write_native_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "cards" / "mixtral-8x7b-instruct-v0.1.md"
REPO = "mistral-community/Mixtral-8x7B-Instruct-v0.1-GPTQ"


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Mixtral (v1 tokenizer, mistral chat template), its HF conversion, its GPTQ folder and verify report."""
    root = tmp_path_factory.mktemp("quantized-card")
    params = tiny_params(moe=True, dim=64, hidden_dim=128, n_heads=4, n_kv_heads=2, num_experts=4)
    native = add_outlier_channels(write_native_checkpoint(root / "native", params), params)
    hf = root / "hf"
    convert(native, hf, chat_template="mistral")
    gptq = root / "gptq"
    quantize(hf, gptq, QuantizeOptions(method="gptq", group_size=32, samples=8, seq_len=64))
    report = verify_quantized(hf, gptq).to_json()
    (root / "gptq.verify.json").write_text(json.dumps(report))
    return {"native": native, "hf": hf, "gptq": gptq, "report": root / "gptq.verify.json"}


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_the_quantized_card_has_the_seeds_shape_and_the_measured_figures(released: dict[str, Path]) -> None:
    card = render_quantized_card(load_card_source(SOURCE), read_release(released["gptq"]))
    meta = _front_matter(card)
    assert meta["base_model"] == "mistral-community/Mixtral-8x7B-Instruct-v0.1"
    assert (meta["base_model_relation"], meta["quantized_by"]) == ("quantized", "hubtools")
    assert {"gptq", "compressed-tensors", "4-bit"} <= set(meta["tags"])
    assert "## Provided files" in card and f"https://huggingface.co/{REPO}/tree/main" in card
    quality = json.loads(released["report"].read_text())["quality"]
    row = next(line for line in card.splitlines() if line.startswith("| [main]"))
    assert f"{quality['quantized']['mean_kl']:.4f}" in row and f"{quality['rtn']['mean_kl']:.4f}" in row
    assert f"{100 * quality['quantized']['top1_agreement']:.1f}%" in row and "| passed |" in row
    assert "| 4 | 4.50 | 32 | no (symmetric) |" in row  # 4 bits + one 16-bit scale per 32 weights
    assert f"{quality['tokens']:,} tokens" in card and "round-to-nearest" in card.lower()
    assert "pip install -U transformers compressed-tensors" in card and f'LLM(model="{REPO}")' in card


def test_a_card_without_a_verify_report_says_not_measured(released: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "gptq"
    copy.mkdir()
    for path in released["gptq"].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    card = render_quantized_card(load_card_source(SOURCE), read_release(copy))
    assert "| not measured |" in card and "| not verified |" in card


def test_a_folder_that_is_not_quantized_is_refused(released: dict[str, Path]) -> None:
    with pytest.raises(CardError, match="expected a compressed-tensors quantization_config, found none"):
        read_release(released["hf"])


def test_the_cards_transformers_snippet_loads_every_parameter_and_generates(
    released: dict[str, Path], tmp_path: Path
) -> None:
    card = render_quantized_card(load_card_source(SOURCE), read_release(released["gptq"]))
    section = card.split("### transformers", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    code = code.replace(f'"{REPO}"', repr(str(released["gptq"])))
    try:
        import accelerate  # noqa: F401
    except ImportError:
        code = code.replace(', device_map="auto"', "")
    script = tmp_path / "snippet.py"
    script.write_text(
        code + "\nimport json\nprint(json.dumps({'dtype': str(next(model.parameters()).dtype)}))\n", encoding="utf-8"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="warning")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MISSING" not in done.stderr and "newly initialized" not in done.stderr, done.stderr[-3000:]
    assert "UNEXPECTED" not in done.stderr, done.stderr[-3000:]


def test_the_original_card_tabulates_every_released_form(released: dict[str, Path]) -> None:
    model = read_model_facts(released["hf"])
    source = dataclasses.replace(
        load_card_source(SOURCE), parameters=model.parameters, active_parameters=model.active_parameters
    )
    forms = release_forms(released["hf"], [released["gptq"]], model.parameters)
    card = render_card(source, model=model, forms=forms)
    table = card.split("## Quantizations", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Form")]
    assert [r.split(" | ")[0] for r in rows] == ["| BF16", "| GPTQ 4-bit (group 32)"]
    assert 15.9 < float(rows[0].split(" | ")[1]) <= 16.1  # the files' bits over the model's parameters
    assert float(rows[1].split(" | ")[1]) < float(rows[0].split(" | ")[1])  # the embeddings dominate a tiny model
    kl = json.loads(released["report"].read_text())["quality"]["quantized"]["mean_kl"]
    assert f"{kl:.4f}" in rows[1] and "hubtools verify" in rows[1]


def test_a_form_that_is_neither_quantized_nor_gguf_is_refused(released: dict[str, Path]) -> None:
    with pytest.raises(CardError, match="expected a quantized HF folder"):
        release_forms(None, [released["native"]], 10**6)
