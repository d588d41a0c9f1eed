"""`.pth` archives indexed without torch's unpickler: byte ranges match torch.load, code is refused."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from hubtools.checkpoint.pth import ConcatFile, PthTensor, read_pth_index
from hubtools.checkpoint.safetensors_format import dtype_code
from hubtools.errors import CorruptFileError, UnsafePickleError


def state() -> dict[str, torch.Tensor]:
    return {
        "w": torch.randn(32, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16),
        "b": torch.arange(1000, dtype=torch.float32),
        "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "h": torch.ones(2, dtype=torch.float16),
    }


def bytes_of(t: PthTensor) -> bytes:
    return b"".join(path.read_bytes()[offset : offset + length] for path, offset, length in t.storage_segments)


def split(path: Path, parts: int) -> list[Path]:
    data = path.read_bytes()
    step = -(-len(data) // parts)
    out = [path.with_name(f"{path.name}-split{i}") for i in range(parts)]
    for i, part in enumerate(out):
        part.write_bytes(data[i * step : (i + 1) * step])
    return out


def test_the_index_of_a_torch_saved_file_locates_the_bytes_torch_loads(tmp_path: Path) -> None:
    path = tmp_path / "consolidated.00.pth"
    torch.save(state(), path)
    index = read_pth_index([path])
    loaded = torch.load(path, weights_only=True)
    assert [t.name for t in index] == list(loaded)
    for t in index:
        expected = loaded[t.name]
        assert (t.code, t.shape) == (dtype_code(expected.dtype), tuple(expected.shape))
        assert t.ref.contiguous and t.ref.offset == 0
        assert bytes_of(t) == expected.contiguous().view(torch.uint8).numpy().tobytes()


def test_split_parts_are_read_in_place_as_one_archive(tmp_path: Path) -> None:
    path = tmp_path / "consolidated.00.pth"
    torch.save(state(), path)
    whole = {t.name: bytes_of(t) for t in read_pth_index([path])}
    parts = split(path, 3)
    index = read_pth_index(parts)
    assert {t.name: bytes_of(t) for t in index} == whole
    assert len({p for t in index for p, _, _ in t.storage_segments}) > 1  # some tensors live in other parts


def test_views_into_a_shared_storage_keep_offset_and_stride(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32)
    path = tmp_path / "views.pth"
    torch.save({"tail": base[4:].view(2, 4), "t": base.view(3, 4).t()}, path)
    refs = {t.name: t.ref for t in read_pth_index([path])}
    assert (refs["tail"].offset, refs["tail"].shape, refs["tail"].contiguous) == (4, (2, 4), True)
    assert (refs["t"].shape, refs["t"].stride, refs["t"].contiguous) == ((4, 3), (1, 4), False)
    assert refs["tail"].storage == refs["t"].storage  # one storage, saved once


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_a_pickle_that_references_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    entries[pkl] = pickle.dumps(OrderedDict(w=Payload()), protocol=2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(UnsafePickleError, match=r"evil.pth: refusing to unpickle global 'posix.system'"):
        read_pth_index([path])


def test_a_state_dict_of_something_other_than_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"w": torch.zeros(2), "step": 3}, path)
    with pytest.raises(CorruptFileError, match=r"odd.pth: expected a flat state dict of tensors"):
        read_pth_index([path])


def test_a_file_that_is_not_a_zip_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    path.write_bytes(b"\x80\x02 not a zip")
    with pytest.raises(CorruptFileError, match=r"legacy.pth: not a torch zip archive or truncated"):
        read_pth_index([path])


def test_a_missing_last_part_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "consolidated.00.pth"
    torch.save(state(), path)
    parts = split(path, 3)
    with pytest.raises(CorruptFileError, match=r"consolidated.00.pth-split0 \(\+1 parts\): "):
        read_pth_index(parts[:2])


def test_concat_file_reads_across_part_boundaries(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"0123")
    b.write_bytes(b"456789")
    stream = ConcatFile([a, b])
    try:
        stream.seek(2)
        assert stream.read(4) == b"2345" and stream.tell() == 6
        assert stream.segments(3, 3) == [(a, 3, 1), (b, 0, 2)]
        stream.seek(-2, 2)
        assert stream.read(10) == b"89"
    finally:
        stream.close()
