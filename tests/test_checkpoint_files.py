"""The checkpoint file modules reached directly: hf_index (safetensors headers and the index), tokenizer_file
(a folder's native tokenizer), layout (which weights a folder holds) and pages (file ranges as memory)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hubtools.checkpoint.hf_index import (
    check_index,
    index_hf_weights,
    index_safetensors,
    indexed_files,
    json_object,
    read_weight_map,
)
from hubtools.checkpoint.layout import Layout, WeightFormat, detect_layout, layouts_present
from hubtools.checkpoint.pages import map_range
from hubtools.checkpoint.tokenizer_file import find_tokenizer_file
from hubtools.errors import CorruptFileError, LayoutError, MappingError
from tests.helpers import SHIPPED_TOKENIZERS


def shards(folder: Path, layout: dict[str, list[str]], index: dict[str, str] | None = None) -> Path:
    """Write safetensors files (file -> tensor names, each a 2x2 bfloat16) and, when given, the index."""
    folder.mkdir(exist_ok=True)
    for file, names in layout.items():
        save_file({n: torch.zeros(2, 2, dtype=torch.bfloat16) for n in names}, str(folder / file))
    if index is not None:
        weight_map = {"metadata": {"total_size": 8 * len(index)}, "weight_map": index}
        (folder / "model.safetensors.index.json").write_text(json.dumps(weight_map))
    (folder / "config.json").write_text("{}")
    return folder


# --- hf_index ---


def test_index_safetensors_reads_every_header(tmp_path: Path) -> None:
    folder = shards(
        tmp_path / "m", {"model-00001-of-00002.safetensors": ["a", "b"], "model-00002-of-00002.safetensors": ["c"]}
    )
    files, tensors = index_safetensors(sorted(folder.glob("*.safetensors")))
    assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert {n: (t.code, t.shape, t.file.name) for n, t in tensors.items()} == {
        "a": ("BF16", (2, 2), "model-00001-of-00002.safetensors"),
        "b": ("BF16", (2, 2), "model-00001-of-00002.safetensors"),
        "c": ("BF16", (2, 2), "model-00002-of-00002.safetensors"),
    }


def test_a_tensor_stored_twice_raises_or_is_recorded(tmp_path: Path) -> None:
    folder = shards(
        tmp_path / "m", {"model-00001-of-00002.safetensors": ["a"], "model-00002-of-00002.safetensors": ["a"]}
    )
    files = sorted(folder.glob("*.safetensors"))
    message = f"{files[1]}: tensor 'a' is stored twice (also in model-00001-of-00002.safetensors)"
    with pytest.raises(MappingError) as raised:
        index_safetensors(files)
    assert str(raised.value) == message
    problems: list[str] = []
    _, tensors = index_safetensors(files, problems)
    assert problems == [message] and tensors["a"].file == files[0]


def test_the_index_against_the_shards(tmp_path: Path) -> None:
    folder = shards(
        tmp_path / "m",
        {"model-00001-of-00002.safetensors": ["a"], "model-00002-of-00002.safetensors": ["b", "c"]},
        index={"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    )
    weight_map = read_weight_map(folder)
    assert weight_map == {"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    assert [p.name for p in indexed_files(folder, weight_map)] == ["model-00002-of-00002.safetensors"]
    _, tensors = index_safetensors(sorted(folder.glob("*.safetensors")))
    problems: list[str] = []
    notes: list[str] = []
    check_index(folder, weight_map, tensors, problems, notes)
    where = folder / "model.safetensors.index.json"
    assert problems == [
        f"{where}: tensor 'a' is mapped to 'model-00002-of-00002.safetensors' but stored in "
        "'model-00001-of-00002.safetensors'",
        f"{where}: tensor 'c' is in a shard but not in the index (loaders will not see it)",
    ]
    assert notes == [
        "'model-00001-of-00002.safetensors' is not referenced by model.safetensors.index.json (ignored)",
        "model.safetensors.index.json: metadata.total_size is 16, the tensors hold 24 bytes",
    ]
    with pytest.raises(MappingError) as raised:  # strict: only the indexed shard is read
        index_hf_weights(folder, tuple(sorted(folder.glob("*.safetensors"))))
    assert (
        str(raised.value)
        == f"{where}: tensor 'a' is mapped to 'model-00002-of-00002.safetensors', which does not hold it"
    )


def test_an_index_that_names_a_missing_or_unsafe_file(tmp_path: Path) -> None:
    folder = shards(
        tmp_path / "m", {"model.safetensors": ["a"]}, index={"a": "model.safetensors", "b": "../x", "c": "gone"}
    )
    problems: list[str] = []
    present = indexed_files(folder, read_weight_map(folder), problems)
    where = folder / "model.safetensors.index.json"
    assert [p.name for p in present] == ["model.safetensors"]
    assert problems == [
        f"{where}: expected file names in the folder, found '../x'",
        f"{where}: maps 1 tensor(s) to 'gone', which is missing",
    ]


def test_no_index_several_shards_and_a_broken_index(tmp_path: Path) -> None:
    folder = shards(
        tmp_path / "m", {"model-00001-of-00002.safetensors": ["a"], "model-00002-of-00002.safetensors": ["b"]}
    )
    assert read_weight_map(folder) is None
    with pytest.raises(LayoutError) as raised:
        indexed_files(folder, None)
    assert str(raised.value) == f"{folder}: expected model.safetensors.index.json beside 2 model shards, found none"
    (folder / "model.safetensors.index.json").write_text('{"weight_map": [1]}')
    with pytest.raises(CorruptFileError) as corrupt:
        read_weight_map(folder)
    assert str(corrupt.value) == (
        f"{folder / 'model.safetensors.index.json'}: expected a JSON object with a 'weight_map' of file names"
    )


def test_json_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"a": 1}')
    assert json_object(path) == {"a": 1}
    path.write_text("[1]")
    with pytest.raises(CorruptFileError) as raised:
        json_object(path)
    assert str(raised.value) == f"{path}: expected a JSON object, found list"


# --- tokenizer_file ---


def test_the_most_specific_of_identical_tokenizer_files_wins(tmp_path: Path) -> None:
    v3 = SHIPPED_TOKENIZERS["v3"]
    for name in ("tokenizer.model", "tokenizer.model.v3"):
        shutil.copyfile(v3, tmp_path / name)
    assert find_tokenizer_file(tmp_path) == tmp_path / "tokenizer.model.v3"
    shutil.copyfile(SHIPPED_TOKENIZERS["tekken"], tmp_path / "tekken.json")
    with pytest.raises(LayoutError) as raised:
        find_tokenizer_file(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path}: expected one native tokenizer, found 'tekken.json' and 'tokenizer.model.v3' with different "
        "contents (remove one or pass the file itself)"
    )


def test_a_file_given_must_be_named_as_a_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("x")
    with pytest.raises(LayoutError) as raised:
        find_tokenizer_file(path)
    assert str(raised.value) == f"{path}: expected a native tokenizer file (tokenizer.model[.vN] or tekken*.json)"
    assert find_tokenizer_file(tmp_path) is None


# --- layout ---


def test_layouts_present_and_detected(tmp_path: Path) -> None:
    folder = shards(tmp_path / "m", {"model.safetensors": ["a"]})
    assert layouts_present(folder) == {Layout.HF}
    weights = detect_layout(folder)
    assert (weights.layout, weights.format, [p.name for p in weights.files]) == (
        Layout.HF,
        WeightFormat.SAFETENSORS,
        ["model.safetensors"],
    )


def test_an_incomplete_native_shard_series_is_named(tmp_path: Path) -> None:
    folder = shards(tmp_path / "n", {"consolidated-00001-of-00003.safetensors": ["a"]})
    (folder / "params.json").write_text("{}")
    assert layouts_present(folder) == {Layout.NATIVE}  # config.json without model*.safetensors is no HF folder
    with pytest.raises(LayoutError) as raised:
        detect_layout(folder)
    assert str(raised.value) == (
        f"{folder}: incomplete shards: expected 3 files, found 1 (missing consolidated-00002-of-00003.safetensors)"
    )


# --- pages ---


def test_map_range_maps_the_bytes_and_names_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 40)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert map_range(fd, path, 5000, 4).tolist() == [136, 137, 138, 139]
        assert map_range(fd, path, 0, 0).size == 0
        with pytest.raises(CorruptFileError) as raised:
            map_range(fd, path, 10_000, 300)
    finally:
        os.close(fd)
    assert str(raised.value) == (
        f"{path}: expected at least 10300 bytes (a tensor ends there), found 10240: "
        "the file is truncated or changed while it was read"
    )
