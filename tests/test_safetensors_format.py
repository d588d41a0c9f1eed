"""The safetensors container as bytes: our headers against the safetensors library's own files, dtype codes."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from hubtools.checkpoint.safetensors_format import (
    build_header,
    dtype_code,
    dtype_name,
    itemsize,
    nbytes,
    read_header,
    torch_dtype,
)
from hubtools.errors import CorruptFileError, InvalidValueError

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def sample(dtype: torch.dtype, shape: tuple[int, ...] = (3, 5)) -> torch.Tensor:
    return (torch.arange(15, dtype=torch.float32).reshape(shape) - 7).to(dtype)


def write_with_our_header(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with path.open("wb") as f:
        f.write(build_header([(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], metadata))
        for t in tensors.values():
            f.write(t.contiguous().view(torch.uint8).numpy().tobytes())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_codes_match_what_the_safetensors_library_writes(tmp_path: Path, dtype: torch.dtype) -> None:
    save_file({"t": sample(dtype)}, tmp_path / "x.safetensors")
    (entry,), _ = read_header(tmp_path / "x.safetensors")
    assert entry.code == dtype_code(dtype) == dtype_code(str(dtype)) == dtype_code(dtype_name(entry.code))
    assert torch_dtype(entry.code) is dtype and entry.dtype is dtype
    assert itemsize(entry.code) == dtype.itemsize and entry.length == nbytes(entry.code, (3, 5)) == 15 * dtype.itemsize


def test_an_unknown_dtype_has_no_code() -> None:
    with pytest.raises(InvalidValueError, match=r"^dtype 'torch\.complex64': expected one of float64, float32, "):
        dtype_code(torch.complex64)


def test_read_header_locates_every_tensor_of_a_library_written_file(tmp_path: Path) -> None:
    tensors = {"b.weight": sample(torch.bfloat16), "a.bias": sample(torch.float32, (15,)), "c": sample(torch.int8)}
    path = tmp_path / "lib.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    entries, metadata = read_header(path)
    assert metadata == {"format": "pt", "note": "x"}
    assert [e.offset for e in entries] == sorted(e.offset for e in entries)  # data order
    data = path.read_bytes()
    for e in entries:
        expected = tensors[e.name]
        assert (e.code, e.shape) == (dtype_code(expected.dtype), tuple(expected.shape))
        assert data[e.offset : e.offset + e.length] == expected.contiguous().view(torch.uint8).numpy().tobytes()
    assert {e.name for e in entries} == set(tensors)


def test_files_with_our_header_load_in_the_library_with_the_same_values(tmp_path: Path) -> None:
    tensors = {f"t{i}": sample(d) for i, d in enumerate(DTYPES)}
    path = tmp_path / "ours.safetensors"
    write_with_our_header(path, tensors, {"format": "pt"})
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name].view(torch.uint8), t.view(torch.uint8))
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_build_then_read_round_trips_names_codes_shapes_order_and_metadata(tmp_path: Path) -> None:
    layout = [("z", "BF16", (4, 2)), ("a", "F32", (3,)), ("m", "I64", ()), ("e", "U8", (0, 7))]
    header = build_header(layout, {"format": "pt"})
    path = tmp_path / "x.safetensors"
    path.write_bytes(header + bytes(sum(nbytes(code, shape) for _, code, shape in layout)))
    entries, metadata = read_header(path)
    assert [(e.name, e.code, e.shape) for e in entries] == layout
    assert entries[0].offset == len(header) and metadata == {"format": "pt"}


@pytest.mark.parametrize("name", ["a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"])
def test_our_file_is_byte_identical_to_the_librarys_with_its_padding(name: str) -> None:
    tensors = {name: sample(torch.float32), f"{name}.z": sample(torch.float32, (5, 3))}  # the library's order
    ours = build_header([(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], {"format": "pt"})
    ours += b"".join(t.view(torch.uint8).numpy().tobytes() for t in tensors.values())
    assert ours == save(tensors, metadata={"format": "pt"})
    (length,) = struct.unpack("<Q", ours[:8])
    assert length % 8 == 0 and ours[8 + length - 1 : 8 + length] in (b" ", b"}")


def corrupt(tmp_path: Path, header: dict[str, object] | bytes, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"", 1 << 40, "header length 1099511627776"),
        (b"{not json", b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "expected a JSON object"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "truncated (header needs"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "tensor 't' has 8 bytes"),
        (
            {"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "unsupported safetensors dtype 'C64'",
        ),
        ({"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "corrupt header entry for tensor 't'"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "tensor 'b' starts at byte 4 of the data, expected 8",
        ),
    ],
)
def test_a_corrupt_file_is_refused_naming_the_file_and_the_fault(
    tmp_path: Path, header: dict[str, object] | bytes, data: bytes, length: int | None, message: str
) -> None:
    path = corrupt(tmp_path, header, data, length)
    with pytest.raises(CorruptFileError, match=f"^{re.escape(str(path))}: .*{re.escape(message)}"):
        read_header(path)


def test_a_file_shorter_than_the_length_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\0" * 3)
    with pytest.raises(CorruptFileError, match=r"short.safetensors: truncated safetensors file \(3 bytes"):
        read_header(path)
