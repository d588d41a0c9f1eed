"""Native tokenizer discovery, versions, vocabulary sizes, and the native -> HF -> native round trip."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sentencepiece
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from transformers import AutoTokenizer

from hubtools.errors import DestinationError, InvalidValueError, LayoutError, TokenizerError
from hubtools.testing import mistral_common_data
from hubtools.tokenization.files import (
    find_tokenizer_file,
    instruct_version,
    restore_native_tokenizer,
    tokenizer_version,
    tokenizer_vocab_size,
    write_hf_tokenizer,
)
from hubtools.tokenization.hf_json import spm_tokenizer
from hubtools.tokenization.sentencepiece_model import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    read_sentencepiece_model,
)
from tests.helpers import SHIPPED_TOKENIZERS

DATA = mistral_common_data()
V1, V3, V7, TEKKEN = (SHIPPED_TOKENIZERS[kind] for kind in ("v1", "v3", "v7", "tekken"))
V2 = DATA / "mistral_instruct_tokenizer_240216.model.v2"
SPM = {"v1": V1, "v3": V3, "v7": V7}


@pytest.fixture(scope="module")
def converted(hf_tokenizer: Callable[[str], Path]) -> dict[str, Path]:
    """v1, v3 and v7 converted (chat template: mistral), shared with the other tokenizer tests."""
    return {version: hf_tokenizer(version) for version in SPM}


def test_find_tokenizer_file_finds_the_file_in_a_folder(tmp_path: Path) -> None:
    shutil.copyfile(V1, tmp_path / "tokenizer.model")
    (tmp_path / "params.json").write_text("{}")
    assert find_tokenizer_file(tmp_path) == tmp_path / "tokenizer.model"


def test_find_tokenizer_file_accepts_mistral_common_file_names() -> None:
    for path in (V1, V3, V7, TEKKEN, DATA / "mistral_instruct_tokenizer_241114.model.v7m1"):
        assert find_tokenizer_file(path) == path


def test_find_tokenizer_file_returns_none_for_a_folder_without_one(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    assert find_tokenizer_file(tmp_path) is None


def test_find_tokenizer_file_rejects_a_file_that_is_not_a_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    path.write_text("{}")
    with pytest.raises(LayoutError, match="params.json: expected a native tokenizer file"):
        find_tokenizer_file(path)


def test_identical_copies_are_not_ambiguous_and_the_versioned_name_wins(tmp_path: Path) -> None:
    shutil.copyfile(V3, tmp_path / "tokenizer.model")
    shutil.copyfile(V3, tmp_path / "tokenizer.model.v3")
    assert find_tokenizer_file(tmp_path) == tmp_path / "tokenizer.model.v3"


def test_two_different_tokenizers_in_a_folder_are_ambiguous(tmp_path: Path) -> None:
    shutil.copyfile(V3, tmp_path / "tokenizer.model.v3")
    shutil.copyfile(TEKKEN, tmp_path / "tekken.json")
    message = "expected one native tokenizer, found 'tekken.json' and 'tokenizer.model.v3' with different contents"
    with pytest.raises(LayoutError, match=message):
        find_tokenizer_file(tmp_path)


def test_tokenizer_version_reads_the_file_name_like_mistral_common() -> None:
    assert [tokenizer_version(p) for p in (V1, V2, V3, V7, TEKKEN)] == ["v1", "v2", "v3", "v7", "tekken"]
    assert instruct_version(TEKKEN) == "v3"


def test_an_unversioned_tokenizer_model_is_read_by_its_control_tokens(tmp_path: Path) -> None:
    for native, expected in ((V1, "v1"), (V2, "v2"), (V3, "v3"), (V7, "v7")):
        path = tmp_path / expected / "tokenizer.model"
        path.parent.mkdir()
        shutil.copyfile(native, path)
        assert tokenizer_version(path) == expected


def test_tokenizer_vocab_size_is_what_the_embedding_needs() -> None:
    assert [tokenizer_vocab_size(p) for p in (V1, V3, V7, TEKKEN)] == [32000, 32768, 32768, 131072]


def test_the_sentencepiece_reader_agrees_with_sentencepiece() -> None:
    model = read_sentencepiece_model(V7)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(V7))
    assert len(model.pieces) == sp.get_piece_size()
    kinds = {NORMAL: 0, CONTROL: 0, BYTE: 0, UNKNOWN: 0, USER_DEFINED: 0}
    for i, piece in enumerate(model.pieces):
        assert (piece.piece, piece.score) == (sp.id_to_piece(i), sp.get_score(i))
        assert (piece.type == CONTROL, piece.type == BYTE, piece.type == UNKNOWN) == (
            sp.is_control(i),
            sp.is_byte(i),
            sp.is_unknown(i),
        )
        kinds[piece.type] += 1
    assert kinds[USER_DEFINED] == 22 and (model.add_dummy_prefix, model.remove_extra_whitespaces) == (True, False)


def test_write_hf_tokenizer_writes_the_files_and_keeps_the_native_file(converted: dict[str, Path]) -> None:
    folder = converted["v3"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", V3.name, "tokenizer.model"]
    )
    assert (folder / V3.name).read_bytes() == V3.read_bytes()
    assert (folder / "tokenizer.model").read_bytes() == V3.read_bytes()  # what llama.cpp's converter reads
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["add_bos_token"] is True
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == ("<s>", "</s>", "<unk>")
    assert "mistral v3" in config["chat_template"].splitlines()[0]
    assert config["model_max_length"] == 32768


@pytest.mark.parametrize("version", ["v1", "v3", "v7"])
def test_round_trip_restores_the_native_file_byte_identical(
    converted: dict[str, Path], tmp_path: Path, version: str
) -> None:
    restored = restore_native_tokenizer(converted[version], tmp_path)
    assert restored == tmp_path / SPM[version].name
    assert restored.read_bytes() == SPM[version].read_bytes()


def test_restore_returns_none_when_the_hf_folder_keeps_no_native_file(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "out").mkdir()
    assert restore_native_tokenizer(tmp_path / "hf", tmp_path / "out") is None


@pytest.mark.parametrize("version", ["v1", "v3", "v7"])
def test_autotokenizer_loads_a_fast_tokenizer_that_adds_bos_like_mistral_common(
    converted: dict[str, Path], version: str
) -> None:
    tok = AutoTokenizer.from_pretrained(str(converted[version]))
    reference = MistralTokenizer.from_file(str(SPM[version])).instruct_tokenizer.tokenizer
    assert tok.is_fast
    for text in ("Hello world", "  two leading spaces", "code:\n    return x  ", " ", ""):
        assert tok(text)["input_ids"] == reference.encode(text, bos=True, eos=False)


def test_special_token_strings_are_parsed_by_default_and_split_on_request(converted: dict[str, Path]) -> None:
    """The documented divergence: HF parses "<s>" in text unless split_special_tokens=True."""
    tok = AutoTokenizer.from_pretrained(str(converted["v3"]))
    reference = MistralTokenizer.from_file(str(V3)).instruct_tokenizer.tokenizer
    text = "say [INST] and <s>"
    assert tok(text, split_special_tokens=True)["input_ids"] == reference.encode(text, bos=True, eos=False)
    assert tok(text)["input_ids"] != reference.encode(text, bos=True, eos=False)
    assert reference.bos_id in tok(text)["input_ids"][1:]


def test_user_defined_symbols_are_matched_in_text_like_sentencepiece(converted: dict[str, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(str(converted["v7"]))
    reference = MistralTokenizer.from_file(str(V7)).instruct_tokenizer.tokenizer
    for text in ("[REF]", "[REF]abc", "x [REF] y", "[REF][INST]", "[REF]<0x41>", "[REF]</s>", "[REFERENCE_DOC_3]"):
        assert tok(text, split_special_tokens=True)["input_ids"] == reference.encode(text, bos=True, eos=False), text


def test_runs_of_spaces_match_sentencepiece(converted: dict[str, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(str(converted["v1"]))
    reference = MistralTokenizer.from_file(str(V1)).instruct_tokenizer.tokenizer
    texts = [f"{a}{' ' * n}{b}" for n in range(1, 70) for a, b in (("", ""), ("x", "y"), ("", "z"), ("w", "\n"))]
    assert list(tok(texts)["input_ids"]) == [reference.encode(t, bos=True, eos=False) for t in texts]


def test_chat_template_auto_is_none_for_v1_and_mistral_from_v2(tmp_path: Path) -> None:
    for native, expected in ((V1, None), (V2, "mistral v2")):
        folder = tmp_path / native.name
        folder.mkdir()
        write_hf_tokenizer(native, folder)
        template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
        assert (template if template is None else template.splitlines()[0].split(": ")[1][:10]) == expected


def test_unknown_chat_template_choice_is_a_tokenizer_error(tmp_path: Path) -> None:
    message = "'llama': expected a chat template, one of auto, mistral, chatml or none"
    with pytest.raises(InvalidValueError, match=message):
        write_hf_tokenizer(V1, tmp_path, chat_template="llama")


def test_destination_must_be_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(DestinationError, match="expected a folder for the tokenizer files"):
        write_hf_tokenizer(V1, tmp_path / "missing")


def test_a_corrupt_sentencepiece_file_is_a_tokenizer_error(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    with pytest.raises(TokenizerError, match="not a SentencePiece model: .*tokenizer.model"):
        write_hf_tokenizer(path, tmp_path)


def test_a_malformed_tekken_file_is_a_tokenizer_error(tmp_path: Path) -> None:
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps({"config": {"pattern": "x"}, "vocab": []}))
    refusal = f"{path}: expected config.default_vocab_size to be an integer in 0..4194304, found None"
    with pytest.raises(TokenizerError, match=f"^{re.escape(refusal)}$"):
        write_hf_tokenizer(path, tmp_path, chat_template="none")


def test_sentencepiece_options_it_cannot_reproduce_are_refused() -> None:
    model = dataclasses.replace(read_sentencepiece_model(V1), remove_extra_whitespaces=True)
    with pytest.raises(TokenizerError, match="unsupported SentencePiece model: 'x.model' .*remove_extra_whitespaces"):
        spm_tokenizer(model, source="x.model")
