"""Issue 17, item 4: a truncated or corrupt GGUF ends in one line naming the file, wherever it breaks (the
magic, the header, a metadata key or value, the tensor infos, the alignment padding, the data), through
every command that reads it: `verify NATIVE FILE.gguf`, `card SPEC --gguf DIR`, `publish DIR REPO` (dry
run or not); the API raises a `HubtoolsError` subclass.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hubtools.errors import CorruptFileError, HubtoolsError
from hubtools.gguf.export import export
from hubtools.gguf.files import FastReader, read_gguf
from hubtools.gguf.layout import check_gguf_layout
from hubtools.gguf.quant import parse_quants
from hubtools.publishing.plan import plan_upload
from hubtools.testing import tiny_params, write_native_checkpoint
from tests.helpers import RunCli, assert_one_line_error

CARD_SPEC = "mixtral-8x7b-instruct-v0.1"
REPO = Path(__file__).resolve().parents[1]
NAME = "tiny.Q8_0.gguf"
STEP = 13


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny native checkpoint (v1 tokenizer) and its Q8_0 GGUF."""
    root = tmp_path_factory.mktemp("gguf_broken")
    native = write_native_checkpoint(root / "native", tiny_params(), tokenizer="v1")
    export(native, root / "out", quants=parse_quants("q8_0"), name="tiny")
    return native, root / "out" / NAME


def _field_span(reader: FastReader, key: str) -> tuple[int, int]:
    field = reader.fields[key]
    return field.offset, field.offset + sum(p.nbytes for p in field.parts)


def cut_points(path: Path) -> dict[str, int]:
    """A truncation length inside each part of the file, found from gguf-py's own offsets."""
    reader = FastReader(path)
    arch, arch_end = _field_span(reader, "general.architecture")
    tokens, tokens_end = _field_span(reader, "tokenizer.ggml.tokens")
    info, _ = reader.tensors[0].field.offset, None
    last_info = reader.tensors[-1].field
    infos_end = last_info.offset + sum(p.nbytes for p in last_info.parts)
    first, last = reader.tensors[0], reader.tensors[-1]
    points = {
        "empty": 0,
        "magic": 2,
        "header version": 6,
        "header counts": 17,
        "metadata key length": arch + 3,
        "metadata key": arch + 8 + 5,
        "metadata value type": arch_end - len("llama") - 8 - 2,
        "metadata value": arch_end - 2,
        "metadata array": (tokens + tokens_end) // 2,
        "tensor info name": info + 10,
        "tensor info dims": info + 8 + len(first.name) + 4 + 3,
        "tensor info offset": infos_end - 3,
        "data start": reader.data_offset + 1,
        "data middle": first.data_offset + first.n_bytes // 2,
        "last tensor": last.data_offset + last.n_bytes - 1,
        "200 bytes": 200,
        "3 MB": 3_000_000,
    }
    if reader.data_offset > infos_end:
        points["alignment padding"] = infos_end + (reader.data_offset - infos_end) // 2
    assert "alignment padding" in points, "the tiny export has padding before its data"
    return points


def _truncated_copy(source: Path, folder: Path, length: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NAME
    path.write_bytes(source.read_bytes()[:length])
    return path


def test_every_truncation_point_is_one_line_naming_the_file_everywhere(
    exported: tuple[Path, Path], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    native, good = exported
    check_gguf_layout(good)  # the whole file passes
    points = cut_points(good)
    assert len(points) >= 17
    monkeypatch.chdir(REPO)  # the card spec names cards/*.md
    for where, length in points.items():
        folder = tmp_path / where.replace(" ", "_")
        path = _truncated_copy(good, folder, length)
        with pytest.raises(CorruptFileError) as caught:
            read_gguf(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: truncated: ") and "\n" not in message, (where, message)
        with pytest.raises(HubtoolsError, match="truncated"):
            plan_upload(folder)
        assert_one_line_error(run_cli("verify", native, path, "--no-logits"), str(path), "truncated")
        card = run_cli("card", CARD_SPEC, "--gguf", folder, "-o", tmp_path / f"{where}.md")
        assert_one_line_error(card, str(path), "truncated")
        assert not (tmp_path / f"{where}.md").exists()
        assert_one_line_error(run_cli("publish", folder, "me/model", "--dry-run"), str(path), "truncated")


def test_truncation_at_every_offset_class_through_the_api(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, good = exported
    data = good.read_bytes()
    path = tmp_path / NAME
    lengths = sorted({*range(0, 64), *range(0, len(data), len(data) // 150), len(data) - 1})
    places = set()
    for length in lengths:
        path.write_bytes(data[:length])
        with pytest.raises(CorruptFileError) as caught:
            check_gguf_layout(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: truncated: ") and "\n" not in message, (length, message)
        places.add(message.split(", inside ")[-1].split(" ")[0] if ", inside " in message else "empty")
    assert {"empty", "the", "metadata"} <= places


def test_the_published_gguf_whole_passes_and_a_longer_file_is_not_truncated(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _, good = exported
    folder = tmp_path / "whole"
    folder.mkdir()
    shutil.copy(good, folder / NAME)
    assert [f.path for f in plan_upload(folder).files] == [NAME]
    assert check_gguf_layout(folder / NAME) == len(read_gguf(folder / NAME).tensors)


def _flipped(source: Path, folder: Path, at: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = bytearray(source.read_bytes())
    data[at] ^= 0xFF
    path = folder / NAME
    path.write_bytes(bytes(data))
    return path


def test_a_flipped_byte_anywhere_in_the_metadata_is_refused_or_named(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    # every STEP-th byte of the header, the non-array metadata and the first tensor infos (every byte: two
    # minutes), starting at a different position in each field: the reader either refuses
    # the file in one line naming it, or reads it (a changed key name or value: verify's structure check
    # names it); never another exception
    _, good = exported
    reader = FastReader(good)
    spans = [(0, 24)] + [_field_span(reader, k) for k in reader.fields if not k.startswith(("GGUF.", "tokenizer.ggml"))]
    spans.append((reader.tensors[0].field.offset, reader.tensors[2].field.offset))
    refused = 0
    path = tmp_path / NAME
    shutil.copy(good, path)
    original = good.read_bytes()
    with path.open("r+b") as f:
        for i, (start, end) in enumerate(spans):
            for at in range(start + i % STEP, end, STEP):
                f.seek(at)
                f.write(bytes([original[at] ^ 0xFF]))
                f.flush()
                try:
                    read_gguf(path)
                except HubtoolsError as exc:
                    assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc), (at, str(exc))
                    refused += 1
                f.seek(at)
                f.write(original[at : at + 1])
                f.flush()
    assert refused > 20


@pytest.mark.parametrize("part", ["key length", "value type", "key text", "tensor type"])
def test_a_flipped_metadata_byte_fails_every_command(
    exported: tuple[Path, Path], tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    native, good = exported
    reader = FastReader(good)
    arch, _ = _field_span(reader, "general.architecture")
    first = reader.tensors[0].field
    at = {
        "key length": arch + 7,  # the top byte of the key's length: a length no file holds
        "value type": arch + 8 + len("general.architecture"),
        "key text": arch + 8 + 2,  # 'ge' -> 'g\x9a': not UTF-8
        "tensor type": first.offset + 8 + len(reader.tensors[0].name) + 4 + 8 * len(reader.tensors[0].shape),
    }[part]
    folder = tmp_path / "flipped"
    path = _flipped(good, folder, at)
    with pytest.raises(CorruptFileError, match=f"^{path}: corrupt GGUF: "):
        read_gguf(path)
    assert_one_line_error(run_cli("verify", native, path, "--no-logits"), str(path), "corrupt GGUF")
    monkeypatch.chdir(REPO)
    assert_one_line_error(run_cli("card", CARD_SPEC, "--gguf", folder, "-o", tmp_path / "c.md"), str(path))
    assert_one_line_error(run_cli("publish", folder, "me/model", "--dry-run"), str(path), "corrupt GGUF")
