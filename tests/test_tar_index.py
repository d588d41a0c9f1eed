"""hubtools.checkpoint.tar_index: a tar archive indexed by its headers agrees with Python's tarfile.

Archives are built in memory with `tarfile` in each header style (ustar with a prefix, GNU long names,
pax path and size); `index_tar` must give every regular member the data offset and size tarfile gives.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

import pytest

from hubtools.checkpoint.remote import SubRange, read_range
from hubtools.checkpoint.tar_index import TarMember, index_tar, tar_folder
from hubtools.errors import CorruptFileError

URL = "mem://release.tar"
LONG_DIR = "mixtral-tiny/" + "d" * 120  # too long for the 100-byte name field
FILES = [
    ("mixtral-tiny/params.json", b'{"dim": 64}'),
    ("mixtral-tiny/consolidated.safetensors", bytes(range(256)) * 5),  # 1280 bytes: three blocks
    (f"{LONG_DIR}/tokenizer.model.v3", b"x" * 512),  # exactly one block
    ("mixtral-tiny/empty.txt", b""),
]


@dataclass(frozen=True)
class BytesFile:
    """A `RangeFile` over bytes in memory."""

    data: bytes
    url: str = URL

    @property
    def size(self) -> int:
        return len(self.data)

    def pread_into(self, view: memoryview, offset: int) -> None:
        view[:] = self.data[offset : offset + len(view)]


def archive(files: list[tuple[str, bytes]], fmt: int, *, directories: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name in directories:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tarfile_members(data: bytes) -> list[TarMember]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [TarMember(m.name, m.offset_data, m.size) for m in tar.getmembers() if m.isfile()]


def header_blocks(data: bytes, name: bytes) -> list[int]:
    return [i for i in range(0, len(data), 512) if data[i : i + 100].split(b"\0", 1)[0] == name]


def with_field(data: bytes, block: int, start: int, value: bytes) -> bytes:
    """`data` with bytes start..start+len(value) of the header at `block` replaced, its checksum recomputed."""
    header = bytearray(data[block : block + 512])
    header[start : start + len(value)] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return data[:block] + bytes(header) + data[block + 512 :]


@pytest.mark.parametrize(
    ("fmt", "style"),
    [
        (tarfile.USTAR_FORMAT, b"ustar\x0000"),
        (tarfile.GNU_FORMAT, b"ustar  \x00"),
        (tarfile.PAX_FORMAT, b"ustar\x0000"),
    ],
    ids=["ustar-prefix", "gnu-longname", "pax-path"],
)
def test_index_matches_tarfile_in_each_header_style(fmt: int, style: bytes) -> None:
    data = archive(FILES, fmt, directories=("mixtral-tiny",))
    assert data[257:265] == style  # the archive really is in that style
    members = index_tar(BytesFile(data))
    assert members == tarfile_members(data)
    assert [m.name for m in members] == [name for name, _ in FILES]  # directories are not listed
    for member, (_, content) in zip(members, FILES, strict=True):
        assert read_range(BytesFile(data), member.offset, member.size) == content


def test_ustar_prefix_holds_the_directory() -> None:
    data = archive(FILES, tarfile.USTAR_FORMAT)
    (block,) = header_blocks(data, b"tokenizer.model.v3")
    assert data[block + 345 : block + 500].split(b"\0", 1)[0] == LONG_DIR.encode()
    assert index_tar(BytesFile(data))[2] == TarMember(f"{LONG_DIR}/tokenizer.model.v3", block + 512, 512)


def test_gnu_long_name_and_pax_path_headers_are_not_members() -> None:
    gnu = archive(FILES, tarfile.GNU_FORMAT)
    assert header_blocks(gnu, b"././@LongLink")  # an `L` header precedes the long member
    assert f" path={LONG_DIR}/tokenizer.model.v3\n".encode() in archive(FILES, tarfile.PAX_FORMAT)
    pax = archive([("mixtral-tiny/modèle.bin", b"abc")], tarfile.PAX_FORMAT)  # non-ASCII: a pax `path`
    assert b"path=mixtral-tiny/mod\xc3\xa8le.bin\n" in pax
    (member,) = index_tar(BytesFile(pax))
    assert member == TarMember("mixtral-tiny/modèle.bin", 1536, 3) == tarfile_members(pax)[0]


def test_pax_size_overrides_the_header_size() -> None:
    """Python's default format writes sizes of 8 GiB and more as a pax `size`, the header's size field 0."""
    info = tarfile.TarInfo("mixtral-tiny/consolidated.safetensors")
    info.size, info.pax_headers = 0, {"size": "1000"}
    data = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + b"z" * 1000 + bytes(24 + 1024)
    assert index_tar(BytesFile(data)) == [TarMember("mixtral-tiny/consolidated.safetensors", 1536, 1000)]
    assert tarfile_members(data) == index_tar(BytesFile(data))


def test_gnu_base_256_size_field() -> None:
    """Sizes of 8 GiB and more in GNU format are base-256 (first byte 0x80); tarfile reads them too."""
    data = archive([("a.bin", b"q" * 700), ("b.bin", b"r")], tarfile.GNU_FORMAT)
    patched = with_field(data, 0, 124, b"\x80" + (700).to_bytes(11, "big"))
    assert index_tar(BytesFile(patched)) == [TarMember("a.bin", 512, 700), TarMember("b.bin", 2048, 1)]
    assert tarfile_members(patched) == index_tar(BytesFile(patched))


def test_dot_slash_prefix_removed() -> None:
    data = archive([("./params.json", b"{}")], tarfile.USTAR_FORMAT)
    assert index_tar(BytesFile(data)) == [TarMember("params.json", 512, 2)]


def test_symlinks_are_not_members() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        link = tarfile.TarInfo("rel/link.json")
        link.type, link.linkname = tarfile.SYMTYPE, "params.json"
        tar.addfile(link)
        info = tarfile.TarInfo("rel/params.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    assert index_tar(BytesFile(buf.getvalue())) == [TarMember("rel/params.json", 1024, 2)]


def test_empty_archive_has_no_members() -> None:
    assert index_tar(BytesFile(archive([], tarfile.USTAR_FORMAT))) == []
    assert index_tar(BytesFile(b"")) == []


def test_member_running_past_the_end_is_truncated() -> None:
    data = archive(FILES, tarfile.USTAR_FORMAT)[: 1024 + 1000]  # the safetensors data: bytes 1536..2816
    with pytest.raises(CorruptFileError) as err:
        index_tar(BytesFile(data))
    assert str(err.value) == f"{URL}: truncated: a member needs bytes up to 2816, the archive has 2024"


def test_checksum_mismatch() -> None:
    data = bytearray(archive(FILES, tarfile.USTAR_FORMAT))
    data[1024] ^= 1  # the name of the second header
    with pytest.raises(CorruptFileError) as err:
        index_tar(BytesFile(bytes(data)))
    assert str(err.value) == f"{URL}: corrupt tar header at byte 1024 (checksum mismatch)"


def test_size_field_not_octal() -> None:
    data = with_field(archive(FILES, tarfile.USTAR_FORMAT), 0, 124, b"00000000009\0")
    with pytest.raises(CorruptFileError) as err:
        index_tar(BytesFile(data))
    assert str(err.value) == f"{URL}: corrupt tar header (size field b'00000000009')"


def test_cut_inside_the_trailing_zero_blocks_loses_nothing() -> None:
    data = archive(FILES, tarfile.USTAR_FORMAT)
    end = 512 + 512 + 512 + 1536 + 512 + 512 + 512  # the last member (empty) has a header and no data
    assert data[end:] == bytes(len(data) - end)
    assert index_tar(BytesFile(data[: end + 100])) == index_tar(BytesFile(data))


def test_cut_inside_a_header_ends_the_archive_as_tarfile_does() -> None:
    """A partial last block ends the archive (tarfile and GNU tar also list only the members before it)."""
    data = archive(FILES, tarfile.USTAR_FORMAT)[: 1024 + 100]  # inside the second member's header
    assert index_tar(BytesFile(data)) == [TarMember("mixtral-tiny/params.json", 512, 11)] == tarfile_members(data)


def test_pax_sized_member_running_past_the_end_is_truncated() -> None:
    info = tarfile.TarInfo("mixtral-tiny/consolidated.safetensors")
    info.size, info.pax_headers = 0, {"size": "1000"}
    data = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + b"z" * 500
    with pytest.raises(CorruptFileError) as err:
        index_tar(BytesFile(data))
    assert str(err.value) == f"{URL}: truncated: a member needs bytes up to 2536, the archive has 2036"


def test_tar_folder_strips_the_folder_holding_params_json() -> None:
    data = archive(FILES, tarfile.PAX_FORMAT)
    folder = tar_folder(BytesFile(data))
    # the long-named tokenizer sits in a subfolder of the release folder: not part of it
    assert sorted(folder) == ["consolidated.safetensors", "empty.txt", "params.json"]
    safetensors = folder["consolidated.safetensors"]
    assert isinstance(safetensors, SubRange)
    assert (safetensors.base, safetensors.size) == (1536, 1280)
    assert safetensors.url == f"{URL}!mixtral-tiny/consolidated.safetensors"
    assert read_range(safetensors, 0, 1280) == FILES[1][1]
    assert read_range(folder["params.json"], 0, 100) == b'{"dim": 64}'
    assert read_range(folder["empty.txt"], 0, 10) == b""


def test_tar_folder_drops_files_outside_the_release_folder() -> None:
    files = [("README.md", b"top"), ("rel/params.json", b"{}"), ("rel/w.bin", b"w"), ("other/w.bin", b"o")]
    folder = tar_folder(BytesFile(archive(files, tarfile.USTAR_FORMAT)))
    assert {name: read_range(f, 0, 10) for name, f in folder.items()} == {"params.json": b"{}", "w.bin": b"w"}


def test_tar_folder_at_top_level() -> None:
    files = [("params.json", b"{}"), ("w.bin", b"w"), ("sub/x.bin", b"x")]
    assert sorted(tar_folder(BytesFile(archive(files, tarfile.USTAR_FORMAT)))) == ["params.json", "w.bin"]


def test_tar_folder_without_a_single_params_json_keeps_the_top_level() -> None:
    """No params.json, or two of them: nothing is stripped, only top-level files are kept."""
    none = [("a/w.bin", b"w"), ("top.bin", b"t")]
    two = [("a/params.json", b"{}"), ("b/params.json", b"{}"), ("top.bin", b"t")]
    assert sorted(tar_folder(BytesFile(archive(none, tarfile.USTAR_FORMAT)))) == ["top.bin"]
    assert sorted(tar_folder(BytesFile(archive(two, tarfile.USTAR_FORMAT)))) == ["top.bin"]


def test_pax_size_not_a_number_is_corrupt() -> None:
    info = tarfile.TarInfo("mixtral-tiny/consolidated.safetensors")
    info.size, info.pax_headers = 0, {"size": "1e3"}
    data = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + bytes(1024)
    with pytest.raises(CorruptFileError) as err:
        index_tar(BytesFile(data))
    assert str(err.value) == f"{URL}: corrupt tar header (pax size '1e3')"
