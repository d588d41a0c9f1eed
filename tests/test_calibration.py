"""The calibration and held-out sets shipped with hubtools, the `--calibration` JSONL reader, and the token rows
(chats rendered in the model's own format)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from hubtools.errors import InvalidValueError
from hubtools.tokenization.calibration import (
    Sample,
    SampleEncoder,
    builtin_calibration,
    builtin_heldout,
    calibration_rows,
    describe_samples,
    load_calibration,
)
from hubtools.tokenization.parity import hf_chat_ids
from tests.helpers import SHIPPED_TOKENIZERS


def _sentences(samples: tuple[Sample, ...]) -> set[str]:
    texts = [s.text or "\n".join(m["content"] for m in s.messages or ()) for s in samples]
    return {p.strip() for t in texts for p in re.split(r"[.!?。\n]", t) if len(p.strip()) >= 30}


def test_the_builtin_calibration_set_covers_languages_code_and_chat() -> None:
    samples = builtin_calibration()
    tags = {s.tag for s in samples}
    assert {"en", "fr", "de", "es", "it", "pt"} <= tags
    assert len({t for t in tags if t.startswith("code-")}) >= 6
    assert sum(s.is_chat for s in samples) >= 10 and all(s.messages for s in samples if s.is_chat)
    assert {t.removeprefix("chat-") for t in tags if t.startswith("chat-")} >= {"en", "fr", "de", "es", "code"}
    assert describe_samples(samples).startswith(f"{len(samples)} samples: prose (en ")


def test_the_heldout_set_is_disjoint_from_the_calibration_set() -> None:
    heldout, calibration = builtin_heldout(), builtin_calibration()
    assert len(heldout) >= 10 and {"en", "fr", "de"} <= {s.tag for s in heldout}
    assert any(s.is_chat for s in heldout) and any(s.tag.startswith("code-") for s in heldout)
    assert not _sentences(heldout) & _sentences(calibration)


def test_a_calibration_file_takes_texts_and_conversations_in_four_shapes(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    lines = ['"plain text"', json.dumps(chat), '{"text": "tagged", "tag": "fr"}', "", json.dumps({"messages": chat})]
    path = tmp_path / "cal.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    samples = load_calibration(path)
    assert [s.text for s in samples] == ["plain text", None, "tagged", None]
    assert samples[1].messages == tuple(chat) and samples[2].tag == "fr" and samples[0].tag == "user"
    assert samples[4 - 1].origin == f"{path} line 5"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "line 2: expected JSON, found Expecting property name"),
        ('""', "line 2: expected a non-empty text, found an empty string"),
        ("42", "line 2: expected a non-empty text, found int"),
        ("{}", "line 2: expected a string, a list of messages, or an object"),
        ('{"text": "a", "weight": 2}', "found an object with keys text, weight"),
        ('{"text": "a", "messages": []}', "found an object with keys messages, text"),
        ('[{"role": "narrator", "content": "x"}]', "line 2: expected messages as a non-empty list"),
        ('[{"role": "assistant", "content": "only an answer"}]', "with at least one user turn"),
        ('[{"role": "user", "content": 3}]', "line 2: expected messages"),
        ("[]", "line 2: expected messages"),
    ],
)
def test_a_bad_calibration_line_is_named_in_one_line(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "cal.jsonl"
    path.write_text('"fine"\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InvalidValueError) as info:
        load_calibration(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_an_empty_or_missing_calibration_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InvalidValueError, match="expected at least one calibration sample, found none"):
        load_calibration(tmp_path / "empty.jsonl")
    with pytest.raises(InvalidValueError, match="found a folder"):
        load_calibration(tmp_path)
    (tmp_path / "latin1.jsonl").write_bytes(b'"caf\xe9"\n')
    with pytest.raises(InvalidValueError, match="expected a readable UTF-8 calibration file"):
        load_calibration(tmp_path / "latin1.jsonl")


@pytest.mark.parametrize("kind", ["v1", "v3", "tekken"])
def test_a_chat_renders_in_the_models_own_format_with_its_answer(
    hf_tokenizer: Callable[[str], Path], kind: str
) -> None:
    """A chat ending in an answer is the prompt, the answer and EOS: exactly the start of the template's own
    rendering of the conversation continued by one more user turn."""
    folder = hf_tokenizer(kind)
    encoder = SampleEncoder.for_folder(folder)
    chat = ({"role": "user", "content": "Bonjour !"}, {"role": "assistant", "content": "Salut, ça va ?"})
    ids = encoder.encode(Sample(None, chat, "chat-fr", "test"))
    import transformers

    tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    longer = hf_chat_ids(tok, [*chat, {"role": "user", "content": "Oui."}])
    assert ids == longer[: len(ids)] and ids[-1] == tok.eos_token_id and ids[0] == tok.bos_token_id
    assert "chat template" in encoder.describe


def test_a_native_folder_encodes_as_its_hf_conversion(hf_tokenizer: Callable[[str], Path], tmp_path: Path) -> None:
    """mistral-common on the native file and the HF folder's template give the same rows."""
    shutil.copyfile(SHIPPED_TOKENIZERS["v3"], tmp_path / "tokenizer.model.v3")
    native = SampleEncoder.for_folder(tmp_path)
    hf = SampleEncoder.for_folder(hf_tokenizer("v3"))
    samples = builtin_calibration()[::4]
    assert "mistral-common" in native.describe
    assert calibration_rows(samples, native, count=40, seq_len=64) == calibration_rows(
        samples, hf, count=40, seq_len=64
    )


def test_calibration_rows_are_capped_led_by_bos_and_mixed(hf_tokenizer: Callable[[str], Path]) -> None:
    encoder = SampleEncoder.for_folder(hf_tokenizer("v3"))
    samples = builtin_calibration()
    rows = calibration_rows(samples, encoder, count=30, seq_len=48)
    assert len(rows) == 30 and all(2 <= len(r) <= 48 and r[0] == encoder.bos_id for r in rows)
    assert len({tuple(r) for r in rows}) == 30
    first_tags = {s.tag for s in samples[: len({s.tag for s in samples})]}
    assert len(first_tags) > 1
    everything = calibration_rows(samples, encoder, count=10_000, seq_len=48)
    assert len(everything) > len(samples)  # long samples go on in further rows
    with pytest.raises(InvalidValueError, match="--seq-len: expected at least 2"):
        calibration_rows(samples, encoder, count=4, seq_len=1)


def test_rows_interleave_prose_code_and_chat() -> None:
    """A fake encoder that returns the sample's index shows the order: one row per tag in turn."""
    samples = [Sample("a", None, "en", "0"), Sample("b", None, "en", "1"), Sample("c", None, "code-c", "2")]
    encoder = SampleEncoder(lambda t, bos: [0, ord(t)] * 3, lambda m: [0], 0, 1, "fake")
    rows = calibration_rows(samples, encoder, count=3, seq_len=16)
    assert [r[1] for r in rows] == [ord("a"), ord("c"), ord("b")]
