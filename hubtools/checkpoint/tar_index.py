"""Index a tar archive by range reads of its member headers, so members are read in place.

A tar member's data is contiguous, right after its 512-byte header, padded to 512 bytes; walking the
headers (one small range read each) gives every member's (name, offset, size) without reading the
data. ustar prefixes, GNU long names (`L`) and pax headers (`x`: path, size) are understood; members
under one top-level folder are named relative to it (Mistral's CDN tars hold `<release>/params.json`).
"""

from __future__ import annotations

from dataclasses import dataclass

from hubtools.checkpoint.remote import RangeFile, SubRange, read_range
from hubtools.errors import CorruptFileError
from hubtools.filenames import PARAMS

BLOCK = 512
REGULAR = (b"0", b"\0", b"7")


@dataclass(frozen=True)
class TarMember:
    name: str
    offset: int  # of the data, in the archive
    size: int


def _number(field: bytes, where: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise CorruptFileError(f"{where}: corrupt tar header (size field {text!r})") from None


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        length = int(data[pos : data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].decode().partition("=")
        out[key], pos = value, pos + length
    return out


def _pax_size(text: str, where: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise CorruptFileError(f"{where}: corrupt tar header (pax size {text!r})")
    return int(text)


def index_tar(archive: RangeFile) -> list[TarMember]:
    """Every regular file of the archive, with the offset and size of its data.

    Raises:
        CorruptFileError: a header with a bad checksum, or a member running past the end (truncated).
    """
    members: list[TarMember] = []
    offset, long_name = 0, None
    pax: dict[str, str] = {}
    while offset + BLOCK <= archive.size:
        header = read_range(archive, offset, BLOCK)
        if header == bytes(BLOCK):
            break
        checksum = _number(header[148:156], archive.url)
        if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise CorruptFileError(f"{archive.url}: corrupt tar header at byte {offset} (checksum mismatch)")
        size, kind = _number(header[124:136], archive.url), header[156:157]
        if kind not in (b"L", b"x") and "size" in pax:  # a pax size replaces the header's (8 GiB and more)
            size = _pax_size(pax["size"], archive.url)
        data = offset + BLOCK
        if data + size > archive.size:
            raise CorruptFileError(
                f"{archive.url}: truncated: a member needs bytes up to {data + size}, the archive has {archive.size}"
            )
        if kind in (b"L", b"x"):
            content = read_range(archive, data, size)
            long_name, pax = (content.rstrip(b"\0").decode(), pax) if kind == b"L" else (long_name, _pax(content))
        else:
            name = pax.get("path") or long_name or _ustar_name(header)
            if kind in REGULAR:
                members.append(TarMember(name.removeprefix("./"), data, size))
            long_name, pax = None, {}
        offset = data + -(-size // BLOCK) * BLOCK
    return members


def _ustar_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0].decode()
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0].decode()
        return f"{prefix}/{name}" if prefix else name
    return name


def tar_folder(archive: RangeFile) -> dict[str, RangeFile]:
    """The archive's files as `SubRange`s by name, relative to the folder that holds params.json."""
    members = index_tar(archive)
    params = [m.name for m in members if m.name.rsplit("/", 1)[-1] == PARAMS]
    root = params[0].rpartition("/")[0] if len(params) == 1 else ""
    prefix = f"{root}/" if root else ""
    return {
        m.name[len(prefix) :]: SubRange(archive, m.offset, m.size, f"{archive.url}!{m.name}")
        for m in members
        if m.name.startswith(prefix) and "/" not in m.name[len(prefix) :]
    }
