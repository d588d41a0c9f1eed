"""The streaming writer: shard plans, shards and index read back by the safetensors library, failures named."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hubtools.checkpoint.safetensors_format import dtype_code
from hubtools.checkpoint.writer import (
    PlannedTensor,
    Shard,
    copy_segments,
    plan_shards,
    tensor_bytes,
    write_all,
    write_index,
    write_shard,
)
from hubtools.errors import DestinationError
from tests.helpers import open_fd_count, same_bytes


def planned(name: str, numel: int, code: str = "F32") -> PlannedTensor:
    return PlannedTensor(name, code, (numel,))


def tensors_for(shard: Shard) -> dict[str, torch.Tensor]:
    return {
        t.name: (torch.arange(t.shape[0], dtype=torch.float32) + 1000 * i).to(t.dtype)
        for i, t in enumerate(shard.tensors)
    }


def fill_from(tensors: dict[str, torch.Tensor], path: Path) -> Callable[[int, PlannedTensor], None]:
    def fill(fd: int, t: PlannedTensor) -> None:
        write_all(fd, tensor_bytes(tensors[t.name]), path)

    return fill


# --- plan_shards ----------------------------------------------------------------------------------


def test_tensors_are_packed_in_order_up_to_the_budget() -> None:
    tensors = [planned(f"t{i}", 10) for i in range(5)]  # 40 bytes each
    shards = plan_shards(tensors, max_shard_size=100, stem="model")
    assert [[t.name for t in s.tensors] for s in shards] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert [s.file for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [s.nbytes for s in shards] == [80, 80, 40]


def test_a_tensor_bigger_than_the_budget_gets_a_shard_of_its_own() -> None:
    shards = plan_shards([planned("a", 1), planned("big", 100), planned("b", 1)], max_shard_size=10, stem="m")
    assert [[t.name for t in s.tensors] for s in shards] == [["a"], ["big"], ["b"]]


def test_one_shard_takes_the_single_name_and_without_it_keeps_the_pattern() -> None:
    tensors = [planned("a", 2, "BF16"), planned("b", 2, "BF16")]
    assert [s.file for s in plan_shards(tensors, max_shard_size=8, stem="x", single_name="x.safetensors")] == [
        "x.safetensors"
    ]
    assert [s.file for s in plan_shards(tensors, max_shard_size=8, stem="x")] == ["x-00001-of-00001.safetensors"]


def test_an_exact_fit_does_not_open_a_new_shard() -> None:
    shards = plan_shards([planned("a", 5), planned("b", 5)], max_shard_size=40, stem="m")
    assert len(shards) == 1 and shards[0].nbytes == 40


def test_planned_sizes_follow_the_dtype_code() -> None:
    t = PlannedTensor("w", "BF16", (3, 4))
    assert t.nbytes == 24 and t.dtype is torch.bfloat16


# --- write_shard / write_index ---------------------------------------------------------------------


def test_shards_and_index_read_back_in_the_library_bit_exact(tmp_path: Path) -> None:
    plan = [planned("a", 6), planned("b", 3, "BF16"), planned("c", 8, "I64"), planned("d", 0)]
    shards = plan_shards(plan, max_shard_size=32, stem="model")
    written: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors = tensors_for(shard)
        write_shard(tmp_path / shard.file, shard, fill_from(tensors, tmp_path / shard.file))
        loaded = load_file(tmp_path / shard.file)
        assert list(loaded) == [t.name for t in shard.tensors]
        assert all(same_bytes(loaded[n], t) for n, t in tensors.items())
        written.update(tensors)
    write_index(tmp_path / "model.safetensors.index.json", shards)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": sum(t.nbytes for t in plan)}
    assert index["weight_map"] == {t.name: s.file for s in shards for t in s.tensors}
    assert list(index["weight_map"]) == ["a", "b", "c", "d"]  # tensor order, not sorted by file
    assert {dtype_code(t.dtype) for t in written.values()} == {"F32", "BF16", "I64"}


def test_a_fill_that_writes_too_few_bytes_is_named_and_the_file_closed(tmp_path: Path) -> None:
    shard = Shard("s.safetensors", (planned("ok", 2), planned("short", 4)))
    path = tmp_path / shard.file
    before = open_fd_count()

    def fill(fd: int, t: PlannedTensor) -> None:
        write_all(fd, b"\0" * (t.nbytes if t.name == "ok" else 10), path)

    with pytest.raises(DestinationError, match=r"s.safetensors: tensor 'short' wrote 10 bytes, expected 16$"):
        write_shard(path, shard, fill)
    assert open_fd_count() == before


def test_a_failing_fill_propagates_and_leaks_no_descriptor(tmp_path: Path) -> None:
    shard = Shard("s.safetensors", (planned("a", 2),))
    before = open_fd_count()

    def fill(fd: int, t: PlannedTensor) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shard(tmp_path / shard.file, shard, fill)
    assert open_fd_count() == before


def test_a_failed_write_is_a_destination_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ro.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(DestinationError, match=r"ro.bin: write failed: Bad file descriptor"):
            write_all(fd, b"abc", path)
    finally:
        os.close(fd)


def test_tensor_bytes_are_the_contiguous_little_endian_bytes() -> None:
    t = torch.arange(6, dtype=torch.int16).reshape(2, 3).t()  # not contiguous
    assert bytes(tensor_bytes(t)) == b"".join(int(v).to_bytes(2, "little") for v in (0, 3, 1, 4, 2, 5))
    assert bytes(tensor_bytes(torch.empty(0, 4))) == b""


# --- copy_segments -----------------------------------------------------------------------------------


def test_segments_of_several_files_are_copied_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(bytes(range(100)))
    b.write_bytes(bytes(range(100, 200)))
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    sources: dict[Path, int] = {}
    try:
        copy_segments(fd, [(a, 90, 10), (b, 0, 5), (a, 0, 3)], out, lambda p: sources.setdefault(p, os.open(p, 0)))
    finally:
        os.close(fd)
        for s in sources.values():
            os.close(s)
    assert out.read_bytes() == bytes(range(90, 100)) + bytes(range(100, 105)) + bytes(range(3))


def test_a_source_that_ends_early_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 10)
    out = tmp_path / "out"
    fd, sfd = os.open(out, os.O_WRONLY | os.O_CREAT), os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(DestinationError, match=r"out: source .*src ended early at byte 10"):
            copy_segments(fd, [(src, 4, 20)], out, lambda _: sfd)
    finally:
        os.close(fd)
        os.close(sfd)


def test_the_following_hash_equals_the_sha256_of_the_file_it_followed(tmp_path: Path) -> None:
    import hashlib
    import os
    from concurrent.futures import ThreadPoolExecutor

    from hubtools.checkpoint.writer import FollowingHash
    from hubtools.destination import remember_sha256, sha256_of

    path = tmp_path / "shard"
    chunks = [os.urandom(n) for n in (10, 9 << 20, 1, 3 << 20)]  # across the 8 MiB read buffer
    with ThreadPoolExecutor(max_workers=1) as pool:
        follow = FollowingHash(path, pool)
        with path.open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                follow.upto(f.tell())
        got_path, digest, size = follow.result().result()
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    assert (got_path, digest, size) == (path, expected, path.stat().st_size)
    remember_sha256(path, "0" * 64, size - 1)  # a digest of fewer bytes than the file never stands for it
    assert sha256_of(path) == expected
