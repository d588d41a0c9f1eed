"""The GGUF repo card (seed 004's shape, measured quality) and the recipe's gguf list."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from huggingface_hub import ModelCard

from hubtools.card.gguf import build_gguf_card, find_releases, prompt_template
from hubtools.card.source import load_card_source
from hubtools.errors import CardError, RecipeError
from hubtools.gguf.quant import parse_quants
from hubtools.pipeline.recipe import load_recipe, parse_recipe
from hubtools.verification.checks import Check, LogitsCheck
from hubtools.verification.report import GgufReport

CARD = Path(__file__).resolve().parents[1] / "cards" / "mixtral-8x7b-instruct-v0.1.md"


def report(name: str, kl: float, top1: float) -> dict[str, object]:
    logits = LogitsCheck(True, "float32", mean_kl=kl, top1_agreement=top1)
    return GgufReport(
        "/x/src", (f"/x/{name}",), name.split(".")[1], Check(True), Check(True), Check(True), logits
    ).to_dict()


def gguf_of_size(size: int) -> bytes:
    """A well-formed GGUF file of exactly `size` bytes: alignment 1 and one int8 tensor filling the rest
    (publish and card refuse files that are not complete GGUFs)."""
    from gguf import GGMLQuantizationType, GGUFValueType

    def text(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + text("general.alignment")
    head += struct.pack("<II", GGUFValueType.UINT32, 1) + text("t")
    n = size - len(head) - struct.calcsize("<IQIQ")
    return head + struct.pack("<IQIQ", 1, n, GGMLQuantizationType.I8, 0) + bytes(n)


@pytest.fixture
def release_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "gguf"
    folder.mkdir()
    for name, size in (("m.Q4_K_M.gguf", 3000), ("m.Q8_0.gguf", 5000), ("m.F16-00001-of-00002.gguf", 6000)):
        (folder / name).write_bytes(gguf_of_size(size))
    (folder / "m.F16-00002-of-00002.gguf").write_bytes(gguf_of_size(4000))
    (folder / "m.Q8_0.gguf.verify.json").write_text(json.dumps(report("m.Q8_0.gguf", 3.1e-4, 0.985)))
    return folder


def test_releases_are_grouped_sized_and_matched_to_their_reports(release_dir: Path, tmp_path: Path) -> None:
    given = tmp_path / "q4.json"
    given.write_text(json.dumps(report("m.Q4_K_M.gguf", 2.5e-2, 0.91)))
    releases = find_releases(release_dir, [given])
    assert [(r.quant, r.files, r.size, r.bits) for r in releases] == [
        ("Q4_K_M", ("m.Q4_K_M.gguf",), 3000, 4),
        ("Q8_0", ("m.Q8_0.gguf",), 5000, 8),
        ("F16", ("m.F16-00001-of-00002.gguf", "m.F16-00002-of-00002.gguf"), 10000, 16),
    ]
    assert [r.report is not None for r in releases] == [True, True, False]


def test_card_has_seed_004_front_matter_and_a_measured_provided_files_table(release_dir: Path) -> None:
    text = build_gguf_card(load_card_source(CARD), release_dir)
    card = ModelCard(text)
    assert card.data.base_model == "mistral-community/Mixtral-8x7B-Instruct-v0.1"
    assert card.data.quantized_by == "hubtools" and card.data.model_creator == "Mistral AI"
    assert card.data.prompt_template == "[INST] {prompt} [/INST]"
    assert "gguf" in card.data.tags
    row = next(line for line in text.splitlines() if line.startswith("| [m.Q8_0.gguf]"))
    assert "| Q8_0 | 8 | 5.0 KB (4.9 KiB) | 2.5 GB (2.3 GiB) | 3.10e-04 | 98.5% | passed |" in row
    assert "| [m.F16-00001-of-00002.gguf]" in text and "(2 parts)" in text and "not measured" in text
    assert 'hf download mistral-community/Mixtral-8x7B-Instruct-v0.1-GGUF --include "m.Q4_K_M.gguf"' in text
    assert 'llama-cli -m m.Q4_K_M.gguf -c 32768 --temp 0.7 -p "[INST] {prompt} [/INST]"' in text


def test_prompt_template_follows_the_tokenizer_version() -> None:
    assert prompt_template("v3", True) == "[INST] {prompt}[/INST]"  # control tokens: no space before [/INST]
    assert prompt_template("v1", False) == "{prompt}"


def test_a_folder_without_gguf_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="no GGUF files"):
        find_releases(tmp_path)


def test_cli_card_gguf(
    release_dir: Path, tmp_path: Path, run_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CARD.parents[1])
    out = tmp_path / "README.md"
    result = run_cli("card", "mixtral-8x7b-instruct-v0.1", "--gguf", release_dir, "-o", out)
    assert result.exit_code == 0, result.output
    assert "## Provided files" in out.read_text()


def test_recipes_take_a_gguf_list_of_known_quant_types() -> None:
    recipe = load_recipe(CARD.parents[1] / "converters" / "mixtral-8x7b-instruct-v0.1.yaml")
    names = [q.name for q in recipe.gguf]  # QuantType, validated when the recipe loads
    assert names[0] == "Q8_0" and "Q4_K_M" in names
    assert [q.name for q in parse_quants(names)] == names
    raw = yaml.safe_load((CARD.parents[1] / "converters" / "mixtral-8x7b-instruct-v0.1.yaml").read_text())
    with pytest.raises(RecipeError, match="'gguf' must be a list of quant types"):
        parse_recipe({**raw, "gguf": "Q8_0"}, where="r.yaml")
    with pytest.raises(RecipeError, match=r"^r\.yaml: gguf: unknown quant type 'Q9' \(expected one of"):
        parse_recipe({**raw, "gguf": ["Q8_0", "Q9"]}, where="r.yaml")


def test_a_gguf_folder_publishes_as_weights_and_only_with_complete_split_sets(release_dir: Path) -> None:
    from hubtools.errors import PublishError
    from hubtools.publishing.upload import plan_upload

    plan = plan_upload(release_dir)
    roles = {f.path: (f.role, f.lfs) for f in plan.files}
    assert roles["m.Q8_0.gguf"] == roles["m.F16-00002-of-00002.gguf"] == ("weights", True)
    assert roles["m.Q8_0.gguf.verify.json"][0] == "other"
    (release_dir / "m.F16-00001-of-00002.gguf").unlink()
    with pytest.raises(PublishError, match="expected a complete GGUF split set, found no m.F16-00001-of-00002.gguf"):
        plan_upload(release_dir)
