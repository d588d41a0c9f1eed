"""The GGUF repo card (seed 004's shape, measured quality) and the recipe's gguf list."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import yaml
from click.testing import Result
from huggingface_hub import ModelCard

from hubtools.card.gguf import build_gguf_card, find_releases, prompt_template
from hubtools.card.source import load_card_source
from hubtools.errors import CardError, RecipeError
from hubtools.filenames import GGUF_FILE
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


V1_TOKENS = ("<unk>", "<s>", "</s>", "▁[", "INST", "]")  # no [INST] token: a v1 vocabulary
V3_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[PREFIX]")


def write_stub_gguf(
    path: Path, size: int, *, chat_template: str | None = "{{ messages }}", tokens: tuple[str, ...] = V1_TOKENS
) -> int:
    """A small real GGUF file of about `size` bytes (metadata a card reads, one padding tensor); its size."""
    match = GGUF_FILE.fullmatch(path.name)
    name = match["quant"] if match else "F16"
    file_type = gguf.LlamaFileType.ALL_F32 if name == "F32" else gguf.LlamaFileType[f"MOSTLY_{name}"]

    def write(pad: int) -> int:
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_context_length(32768)
        writer.add_file_type(file_type)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(list(tokens))
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        writer.add_tensor("pad", np.zeros(max(pad, 1), dtype=np.int8))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.stat().st_size

    return write(size - write(1) + 1)


@pytest.fixture
def release_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "gguf"
    folder.mkdir()
    for name, size in (
        ("m.Q4_K_M.gguf", 3000),
        ("m.Q8_0.gguf", 5000),
        ("m.F16-00001-of-00002.gguf", 6000),
        ("m.F16-00002-of-00002.gguf", 4000),
    ):
        write_stub_gguf(folder / name, size)
    (folder / "m.Q8_0.gguf.verify.json").write_text(json.dumps(report("m.Q8_0.gguf", 3.1e-4, 0.985)))
    return folder


def sizes(folder: Path, *names: str) -> int:
    return sum((folder / name).stat().st_size for name in names)


def test_releases_are_grouped_sized_and_matched_to_their_reports(release_dir: Path, tmp_path: Path) -> None:
    given = tmp_path / "q4.json"
    given.write_text(json.dumps(report("m.Q4_K_M.gguf", 2.5e-2, 0.91)))
    releases = find_releases(release_dir, [given])
    f16 = ("m.F16-00001-of-00002.gguf", "m.F16-00002-of-00002.gguf")
    assert [(r.quant, r.files, r.size, r.bits) for r in releases] == [
        ("Q4_K_M", ("m.Q4_K_M.gguf",), sizes(release_dir, "m.Q4_K_M.gguf"), 4),
        ("Q8_0", ("m.Q8_0.gguf",), sizes(release_dir, "m.Q8_0.gguf"), 8),
        ("F16", f16, sizes(release_dir, *f16), 16),
    ]
    assert all(r.facts.chat_template and r.facts.tokenizer == "v1" for r in releases)
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


# --- what the card says about the chat template, the tokenizer and the quant follows each file's metadata ---


def render(folder: Path) -> str:
    return build_gguf_card(load_card_source(CARD), folder)


def test_the_chat_template_claim_follows_each_files_metadata(tmp_path: Path) -> None:
    write_stub_gguf(tmp_path / "m.Q8_0.gguf", 3000)
    write_stub_gguf(tmp_path / "m.F16.gguf", 5000)
    text = render(tmp_path)
    assert "The chat template is embedded in every file (`tokenizer.chat_template`)." in text
    assert "For a chat, use `llama-cli -m m.F16.gguf -cnv`" in text  # the example file

    write_stub_gguf(tmp_path / "m.F16.gguf", 5000, chat_template=None)  # as v1 files exported without one
    text = render(tmp_path)
    assert "embedded in every file" not in text
    assert "The chat template (`tokenizer.chat_template`) is embedded only in m.Q8_0.gguf; the other files" in text
    assert "For a chat, use `llama-cli -m m.Q8_0.gguf -cnv`" in text  # a file that has one

    write_stub_gguf(tmp_path / "m.Q8_0.gguf", 3000, chat_template=None)
    text = render(tmp_path)
    assert "None of these files carries a chat template (`tokenizer.chat_template`)" in text
    assert "embedded" not in text and "-cnv" not in text


def test_the_card_names_only_the_ways_the_present_quants_were_made(tmp_path: Path) -> None:
    write_stub_gguf(tmp_path / "m.Q8_0.gguf", 3000)
    text = render(tmp_path)
    assert "The Q8_0 files equal llama.cpp's `convert_hf_to_gguf.py` output byte for byte." in text
    assert "llama-quantize" not in text and "K-quants" not in text
    write_stub_gguf(tmp_path / "m.Q4_K_M.gguf", 2000)
    assert "The Q4_K_M files come from llama.cpp's `llama-quantize`." in render(tmp_path)


def test_a_file_that_contradicts_the_card_is_refused_naming_it(tmp_path: Path) -> None:
    write_stub_gguf(tmp_path / "m.Q8_0.gguf", 3000, tokens=V3_TOKENS)
    with pytest.raises(CardError) as tokenizer:
        render(tmp_path)
    assert str(tokenizer.value) == (
        f"m.Q8_0.gguf: expected a v1 tokenizer as {CARD} states, found v3 in its vocabulary"
    )
    write_stub_gguf(tmp_path / "m.Q8_0.gguf", 3000)
    (tmp_path / "m.Q8_0.gguf").rename(tmp_path / "m.Q4_0.gguf")
    with pytest.raises(
        CardError,
        match=r"^m.Q4_0.gguf: expected general.file_type MOSTLY_Q4_0 as its name says, "
        r"found MOSTLY_Q8_0$",
    ):
        render(tmp_path)
