"""The safetensors files of a checkpoint and the index of an HF folder, read from their headers.

- `index_safetensors`: every tensor of safetensors files, from their headers;
- `read_weight_map`, `indexed_files`, `check_index`: the index (`model.safetensors.index.json`) against the
  shards: each strict (raise at the first fault) or lenient (collect every fault in a list, for `verify`'s audit);
- `json_object`: a small JSON object file (config.json, params.json), bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from hubtools.checkpoint.layout import TensorSource
from hubtools.checkpoint.safetensors_format import read_header
from hubtools.errors import CorruptFileError, HubtoolsError, LayoutError, MappingError, ParamsError
from hubtools.filenames import HF_SHARD, INDEX
from hubtools.model.params import read_json_file


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
    path = folder / INDEX
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
                _fail(problems, LayoutError(f"{folder / INDEX}: expected file names in the folder, found '{name}'"))
            elif not (folder / name).is_file():
                count = sum(1 for f in weight_map.values() if f == name)
                _fail(
                    problems,
                    LayoutError(f"{folder / INDEX}: maps {count} tensor(s) to '{name}', which is missing"),
                )
            else:
                present.append(folder / name)
        return present
    found = sorted(p for p in folder.iterdir() if HF_SHARD.fullmatch(p.name))
    if len(found) > 1:
        _fail(problems, LayoutError(f"{folder}: expected {INDEX} beside {len(found)} model shards, found none"))
    if not found:
        _fail(problems, LayoutError(f"{folder}: expected {INDEX} or model.safetensors, found neither"))
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
    where = folder / INDEX
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
        notes += [f"'{n}' is not referenced by {INDEX} (ignored)" for n in sorted(on_disk - set(weight_map.values()))]
        _total_size(folder, tensors, notes)


def _total_size(folder: Path, tensors: dict[str, TensorSource], notes: list[str]) -> None:
    try:
        total = read_json_file(folder / INDEX)["metadata"]["total_size"]
    except (ParamsError, KeyError, TypeError):
        return
    actual = sum(t.nbytes for t in tensors.values())
    if total != actual:
        notes.append(f"{INDEX}: metadata.total_size is {total}, the tensors hold {actual} bytes")


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
