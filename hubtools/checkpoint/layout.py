"""Which files make a checkpoint, and in which layout and storage format.

- `Layout` (native or HF, defined with the name table) and `WeightFormat` (safetensors, pth, pth-split), typed;
- `detect_layout`, which picks a folder's weight files by the name rules of `hubtools.filenames` and checks
  that shard series and split parts are complete;
- `TensorSource`: where one stored tensor's bytes are.

The safetensors index of an HF folder is `hubtools.checkpoint.hf_index`; the native tokenizer file of a
folder is `hubtools.checkpoint.tokenizer_file`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from hubtools.checkpoint.pth import Segment, TensorRef
from hubtools.checkpoint.safetensors_format import nbytes, torch_dtype
from hubtools.errors import LayoutError
from hubtools.filenames import (
    CONFIG,
    HF_SHARD,
    INDEX,
    NATIVE_SHARD,
    NATIVE_SINGLE,
    NATIVE_STEM,
    PARAMS,
    PTH,
    PTH_SPLIT,
    shard_names,
)
from hubtools.model.names import Layout

if TYPE_CHECKING:
    import torch

__all__ = [
    "Layout",
    "TensorSource",
    "WeightFiles",
    "WeightFormat",
    "check_not_in_target",
    "detect_layout",
    "layouts_present",
]


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
    if (found["safetensors"] or found["pth"] or found["pth-split"]) and PARAMS in names:
        present.add(Layout.NATIVE)
    if (found["hf"] or INDEX in names) and CONFIG in names:
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


def check_not_in_target(src: Path, target: Layout) -> None:
    """A source to convert to `target` must hold the other layout's weights, not only `target`'s.

    Raises:
        LayoutError: "SRC: expected an HF checkpoint to convert to native, found a native one (...)".
    """
    try:
        detect_layout(src, layout=target.other)
    except LayoutError:
        try:
            detect_layout(src, layout=target)
        except LayoutError:
            return  # not a checkpoint of either layout: opening it says what is wrong
        article = {Layout.HF: "an HF", Layout.NATIVE: "a native"}
        raise LayoutError(
            f"{src}: expected {article[target.other]} checkpoint to convert to {target.value}, found "
            f"{article[target]} one (it is already in the {target.value} layout: nothing to convert)"
        ) from None


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
    expected = shard_names(NATIVE_STEM, total)
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


def pth_view_is_exact(ref: TensorRef, shape: tuple[int, ...]) -> bool:
    """A .pth tensor that covers its whole storage contiguously can be copied as bytes."""
    return ref.contiguous and ref.offset == 0 and ref.storage.numel == math.prod(shape)
