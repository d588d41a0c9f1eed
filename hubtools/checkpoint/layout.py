"""Which files make a checkpoint: the one home of every file-name and layout rule.

- `Layout` (native or HF, defined with the name table) and `WeightFormat` (safetensors, pth, pth-split), typed;
- the file-name patterns (`consolidated-0000K-of-0000N.safetensors`, `model-0000K-of-0000N.safetensors`,
  `consolidated.00.pth-splitN`, the index name) and `detect_layout`, which picks a folder's weights;
- `index_safetensors` and `check_index`: the safetensors indexing and the index-vs-shards check, each
  strict (raise at the first fault) or lenient (collect every fault in a list, for `verify`'s audit);
- `find_tokenizer_file`: a folder's native tokenizer file, by name (bytes on disk need no tokenizer code).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hubtools.checkpoint.file_limits import check_tokenizer_file, read_tokenizer_bytes
from hubtools.checkpoint.pth import Segment, TensorRef
from hubtools.checkpoint.safetensors_format import nbytes, read_header, torch_dtype
from hubtools.errors import CorruptFileError, HubtoolsError, LayoutError, MappingError, ParamsError
from hubtools.model.names import Layout
from hubtools.model.params import read_json_file

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
NATIVE_SINGLE = "consolidated.safetensors"
NATIVE_SHARD = re.compile(r"consolidated-(\d{5})-of-(\d{5})\.safetensors")
HF_SHARD = re.compile(r"model(?:-(\d{5})-of-(\d{5}))?\.safetensors")
PTH = re.compile(r"consolidated\.\d+\.pth")
PTH_SPLIT = re.compile(r"(consolidated\.\d+\.pth)-split(\d+)")
SPM_NAME = re.compile(r"\.model(?:\.(v\d+)(?:m\d+)?)?$")


class WeightFormat(str, Enum):
    """How the weights are stored on disk."""

    SAFETENSORS = "safetensors"
    PTH = "pth"
    PTH_SPLIT = "pth-split"


@dataclass(frozen=True)
class TensorSource:
    """One stored tensor. `segments` are its exact bytes when `view` is None; otherwise they hold the
    whole storage and `view` says how the tensor sits in it (a strided .pth view)."""

    name: str
    code: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]
    view: TensorRef | None = None

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.code)

    @property
    def nbytes(self) -> int:
        return nbytes(self.code, self.shape)

    @property
    def file(self) -> Path:
        """The file holding the first byte of this tensor."""
        return self.segments[0][0]


@dataclass(frozen=True)
class WeightFiles:
    """A folder's weight files, in reading order, with their layout and storage format."""

    layout: Layout
    format: WeightFormat
    files: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def _weight_names(names: list[str]) -> dict[str, list[str]]:
    return {
        "safetensors": [n for n in names if n == NATIVE_SINGLE or NATIVE_SHARD.fullmatch(n)],
        "pth": [n for n in names if PTH.fullmatch(n)],
        "pth-split": [n for n in names if PTH_SPLIT.fullmatch(n)],
        "hf": [n for n in names if HF_SHARD.fullmatch(n)],
    }


def layouts_present(folder: Path) -> set[Layout]:
    """The layouts whose weights and metadata file a folder holds (no validation; `detect_layout` checks).

    Example:
        >>> layouts_present(Path("/nonexistent"))
        set()
    """
    if not folder.is_dir():
        return set()
    names = sorted(p.name for p in folder.iterdir())
    found = _weight_names(names)
    present = set()
    if (found["safetensors"] or found["pth"] or found["pth-split"]) and "params.json" in names:
        present.add(Layout.NATIVE)
    if (found["hf"] or INDEX_NAME in names) and "config.json" in names:
        present.add(Layout.HF)
    return present


def detect_layout(
    folder: Path,
    *,
    layout: Layout | str | None = None,
    prefer: Layout | str | None = None,
    names: list[str] | None = None,
) -> WeightFiles:
    """Find the weight files of a checkpoint folder and say which layout they are.

    Args:
        layout: read only this layout's weights (a folder holding both is then fine).
        prefer: when the folder holds both layouts and `layout` is None, read this one instead of refusing.
        names: the folder's file names when it is not local (a remote listing); `folder` is then not read.

    Raises:
        LayoutError: not a folder, no weights, an ambiguous folder, missing shards or split parts.

    Example:
        >>> detect_layout(Path("/nonexistent"))
        Traceback (most recent call last):
        hubtools.errors.LayoutError: /nonexistent: expected a checkpoint folder, found nothing
    """
    if names is None:
        if not folder.is_dir():
            found_kind = "a file" if folder.exists() else "nothing"
            raise LayoutError(f"{folder}: expected a checkpoint folder, found {found_kind}")
        names = sorted(p.name for p in folder.iterdir())
    found = _weight_names(names)
    has = {
        Layout.NATIVE: bool(found["safetensors"] or found["pth"] or found["pth-split"]),
        Layout.HF: bool(found["hf"]),
    }
    wanted = Layout.parse(layout) if layout is not None else None
    if wanted is None and all(has.values()):
        if prefer is None:
            raise LayoutError(
                f"{folder}: expected one layout, found both native (consolidated.*) and HF (model*.safetensors) "
                "weights; say which to read (--to hf reads the native ones)"
            )
        wanted = Layout.parse(prefer)
    chosen = wanted or next((k for k, v in has.items() if v), None)
    if chosen is None or not has[chosen]:
        bins = (
            " (.bin weights are not supported: convert them to safetensors first)"
            if any(n.endswith(".bin") for n in names)
            else ""
        )
        what = chosen.value if chosen else "native or HF"
        raise LayoutError(
            f"{folder}: expected {what} weights (consolidated*.safetensors, consolidated.00.pth[-splitN] "
            f"or model*.safetensors), found none{bins}"
        )
    if chosen is Layout.HF:
        return WeightFiles(Layout.HF, WeightFormat.SAFETENSORS, tuple(folder / n for n in found["hf"]))
    return _native_weights(folder, found)


def _native_weights(folder: Path, found: dict[str, list[str]]) -> WeightFiles:
    kinds = [k for k in ("safetensors", "pth", "pth-split") if found[k]]
    if len(kinds) > 1:
        raise LayoutError(
            f"{folder}: expected one native weight format, found {' and '.join(kinds)} weights (remove the others)"
        )
    kind = WeightFormat(kinds[0])
    if kind is WeightFormat.SAFETENSORS:
        return WeightFiles(Layout.NATIVE, kind, tuple(folder / n for n in _check_shards(folder, found[kind.value])))
    if kind is WeightFormat.PTH:
        if len(found["pth"]) > 1:
            raise LayoutError(
                f"{folder}: expected one .pth file, found {len(found['pth'])} "
                "(tensor-parallel checkpoints are not supported)"
            )
        return WeightFiles(Layout.NATIVE, kind, (folder / found["pth"][0],))
    return WeightFiles(Layout.NATIVE, kind, tuple(folder / n for n in _check_splits(folder, found["pth-split"])))


def _check_shards(folder: Path, names: list[str]) -> list[str]:
    if names == [NATIVE_SINGLE]:
        return names
    if NATIVE_SINGLE in names:
        raise LayoutError(f"{folder}: expected {NATIVE_SINGLE} or consolidated-N-of-M shards, found both (ambiguous)")
    totals = sorted({int(NATIVE_SHARD.fullmatch(n).group(2)) for n in names})  # type: ignore[union-attr]
    if len(totals) > 1:
        raise LayoutError(f"{folder}: expected one series of shards, found -of-{totals[0]:05d} and -of-{totals[1]:05d}")
    total = totals[0]
    expected = [f"consolidated-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)]
    foreign = [n for n in names if n not in expected]
    if foreign:
        raise LayoutError(f"{folder}: {foreign[0]} is not a shard of a {total}-file series (numbered 1..{total})")
    missing = [n for n in expected if n not in names]
    if missing or len(names) != total:
        raise LayoutError(
            f"{folder}: incomplete shards: expected {total} files, found {len(names)} "
            f"(missing {missing[0] if missing else 'none'})"
        )
    return expected


def _check_splits(folder: Path, names: list[str]) -> list[str]:
    matches = [PTH_SPLIT.fullmatch(n) for n in names]
    ordered = sorted(names, key=lambda n: int(PTH_SPLIT.fullmatch(n).group(2)))  # type: ignore[union-attr]
    stems = sorted({m.group(1) for m in matches if m})
    numbers = [int(PTH_SPLIT.fullmatch(n).group(2)) for n in ordered]  # type: ignore[union-attr]
    if len(stems) > 1:
        raise LayoutError(f"{folder}: expected split parts of one file, found parts of {' and '.join(stems)}")
    twice = next((i for i in range(1, len(numbers)) if numbers[i] == numbers[i - 1]), None)
    if twice is not None:
        raise LayoutError(
            f"{folder}: split part -split{numbers[twice]} appears twice ({ordered[twice - 1]}, {ordered[twice]})"
        )
    if numbers != list(range(len(numbers))):
        gap = next((i for i, n in enumerate(numbers) if n != i), len(numbers))
        raise LayoutError(f"{folder}: expected split parts -split0..-split{len(numbers) - 1}, found no -split{gap}")
    return ordered


def _fail(problems: list[str] | None, error: HubtoolsError) -> None:
    """Raise `error` (strict) or record its message (lenient)."""
    if problems is None:
        raise error
    problems.append(str(error))


def index_safetensors(
    files: tuple[Path, ...] | list[Path],
    problems: list[str] | None = None,
    open_stream: Callable[[Path], tuple[BinaryIO, int]] | None = None,
) -> tuple[list[Path], dict[str, TensorSource]]:
    """Index the tensors of safetensors files from their headers: (readable files, name -> source).

    Strict when `problems` is None (the first unreadable file or duplicate tensor raises); lenient
    otherwise (it is recorded, the file or the second copy skipped). `open_stream(path) -> (stream, size)`
    reads headers from elsewhere (a remote file) instead of opening `path`.

    Raises:
        CorruptFileError, MappingError: in strict mode.
    """
    tensors: dict[str, TensorSource] = {}
    readable = []
    for path in files:
        try:
            stream, size = open_stream(path) if open_stream else (None, None)
            entries, _ = read_header(path, stream=stream, size=size)
        except CorruptFileError as exc:
            _fail(problems, exc)
            continue
        readable.append(path)
        for e in entries:
            if e.name in tensors:
                _fail(
                    problems,
                    MappingError(f"{path}: tensor '{e.name}' is stored twice (also in {tensors[e.name].file.name})"),
                )
                continue
            tensors[e.name] = TensorSource(e.name, e.code, e.shape, ((path, e.offset, e.length),))
    return readable, tensors


def read_weight_map(folder: Path, problems: list[str] | None = None) -> dict[str, str] | None:
    """The index's tensor -> file map, or None when the folder has no index.

    Raises:
        CorruptFileError: (strict) the index is not JSON with a `weight_map` object of strings.
    """
    path = folder / INDEX_NAME
    if not path.is_file():
        return None
    try:
        weight_map = read_json_file(path)["weight_map"]  # bounded; deep or huge-number JSON refused
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except (ParamsError, KeyError, TypeError):
        _fail(problems, CorruptFileError(f"{path}: expected a JSON object with a 'weight_map' of file names"))
        return None
    return {str(k): v for k, v in weight_map.items()}


def indexed_files(folder: Path, weight_map: dict[str, str] | None, problems: list[str] | None = None) -> list[Path]:
    """The shard files of an HF folder: those its index names (present ones), else `model*.safetensors`.

    Raises:
        LayoutError: (strict) the index names a missing or unsafe file, several shards without an index,
            or no weights at all.
    """
    if weight_map is not None:
        listed = list(dict.fromkeys(weight_map.values()))
        present = []
        for name in listed:
            if Path(name).name != name or name in ("", ".", ".."):
                _fail(
                    problems, LayoutError(f"{folder / INDEX_NAME}: expected file names in the folder, found '{name}'")
                )
            elif not (folder / name).is_file():
                count = sum(1 for f in weight_map.values() if f == name)
                _fail(
                    problems,
                    LayoutError(f"{folder / INDEX_NAME}: maps {count} tensor(s) to '{name}', which is missing"),
                )
            else:
                present.append(folder / name)
        return present
    found = sorted(p for p in folder.iterdir() if HF_SHARD.fullmatch(p.name))
    if len(found) > 1:
        _fail(problems, LayoutError(f"{folder}: expected {INDEX_NAME} beside {len(found)} model shards, found none"))
    if not found:
        _fail(problems, LayoutError(f"{folder}: expected {INDEX_NAME} or model.safetensors, found neither"))
    return found


def check_index(
    folder: Path,
    weight_map: dict[str, str],
    tensors: dict[str, TensorSource],
    problems: list[str] | None = None,
    notes: list[str] | None = None,
) -> None:
    """The index against the shards: each tensor stored where the index says, none left out of it.

    Raises:
        MappingError: (strict) a tensor in the wrong shard, in no shard, or in a shard but not the index.
    """
    where = folder / INDEX_NAME
    for name, file in weight_map.items():
        stored = tensors[name].file.name if name in tensors else None
        if stored is not None and stored != file:
            _fail(problems, MappingError(f"{where}: tensor '{name}' is mapped to '{file}' but stored in '{stored}'"))
        elif stored is None and Path(file).name == file and (folder / file).is_file():
            _fail(problems, MappingError(f"{where}: tensor '{name}' is mapped to '{file}', which does not hold it"))
    unlisted = [n for n in tensors if n not in weight_map]
    for name in unlisted[: 20 if problems is not None else 1]:
        _fail(
            problems,
            MappingError(f"{where}: tensor '{name}' is in a shard but not in the index (loaders will not see it)"),
        )
    if problems is not None and len(unlisted) > 20:
        problems.append(f"{where}: ... and {len(unlisted) - 20} more tensors missing from the index")
    if notes is not None:
        on_disk = {p.name for p in folder.iterdir() if HF_SHARD.fullmatch(p.name)}
        notes += [
            f"'{n}' is not referenced by {INDEX_NAME} (ignored)" for n in sorted(on_disk - set(weight_map.values()))
        ]
        _total_size(folder, tensors, notes)


def _total_size(folder: Path, tensors: dict[str, TensorSource], notes: list[str]) -> None:
    try:
        total = read_json_file(folder / INDEX_NAME)["metadata"]["total_size"]
    except (ParamsError, KeyError, TypeError):
        return
    actual = sum(t.nbytes for t in tensors.values())
    if total != actual:
        notes.append(f"{INDEX_NAME}: metadata.total_size is {total}, the tensors hold {actual} bytes")


def index_hf_weights(folder: Path, files: tuple[Path, ...]) -> dict[str, TensorSource]:
    """Strictly index an HF folder's shards and check them against its index.

    Raises:
        LayoutError, CorruptFileError, MappingError: the first fault found.
    """
    weight_map = read_weight_map(folder)
    if weight_map is None:
        indexed_files(folder, None)  # several shards without an index
        return index_safetensors(files)[1]
    indexed = indexed_files(folder, weight_map)
    _, tensors = index_safetensors(tuple(indexed) if indexed else files)
    check_index(folder, weight_map, tensors)
    return tensors


# --- tokenizer files ---


def is_tekken_name(name: str) -> bool:
    return "tekken" in name and name.endswith(".json")


def is_tokenizer_name(name: str) -> bool:
    """A native tokenizer file name: `tokenizer.model[.vN]`, `*.model.vN` or `tekken*.json`."""
    return is_tekken_name(name) or SPM_NAME.search(name) is not None


def _specificity(path: Path) -> tuple[int, int]:
    if is_tekken_name(path.name):
        return (2, 0)
    match = SPM_NAME.search(path.name)
    version = match.group(1) if match else None
    return (1, int(version[1:])) if version else (0, 0)


def find_tokenizer_file(folder: Path) -> Path | None:
    """The native tokenizer file of a folder (or `folder` itself when it is such a file).

    Several names with the same bytes are one tokenizer (e.g. `tokenizer.model` beside
    `tokenizer.model.v3`); the most specific name wins.

    Returns:
        The file, or None when the folder holds none.

    Raises:
        LayoutError: tokenizer files with different contents, or a file that is not a native tokenizer.
        TokenizerError: a tokenizer-named entry that is a FIFO, device, dangling symlink or too large.

    Example:
        >>> find_tokenizer_file(Path("/nonexistent")) is None
        True
    """
    if folder.is_file():
        if not is_tokenizer_name(folder.name):
            raise LayoutError(f"{folder}: expected a native tokenizer file (tokenizer.model[.vN] or tekken*.json)")
        return folder
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.iterdir() if is_tokenizer_name(p.name)),
        key=lambda p: (_specificity(p), p.name),
        reverse=True,
    )
    sizes = [check_tokenizer_file(p) for p in found]  # a FIFO, device or dangling link is named, never read
    if len(found) > 1:
        first = read_tokenizer_bytes(found[0])
        other = next(
            (p for p, n in zip(found[1:], sizes[1:], strict=True) if n != sizes[0] or read_tokenizer_bytes(p) != first),
            None,
        )
        if other is not None:
            raise LayoutError(
                f"{folder}: expected one native tokenizer, found '{found[0].name}' and '{other.name}' with "
                "different contents (remove one or pass the file itself)"
            )
    return found[0] if found else None


def pth_view_is_exact(ref: TensorRef, shape: tuple[int, ...]) -> bool:
    """A .pth tensor that covers its whole storage contiguously can be copied as bytes."""
    return ref.contiguous and ref.offset == 0 and ref.storage.numel == math.prod(shape)


def json_object(path: Path) -> dict[str, Any]:
    """A JSON object file (config.json, params.json).

    Raises:
        CorruptFileError: not readable JSON, or not an object.
    """
    try:
        data = read_json_file(
            path, invalid="expected valid JSON, found"
        )  # bounded size, a regular file, deep or huge-number JSON refused
    except ParamsError as exc:
        raise CorruptFileError(str(exc)) from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
