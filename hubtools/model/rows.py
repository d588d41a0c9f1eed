"""The rows of a family's name table, and the tensor specs they expand to.

A row is data: native, HF and GGUF name templates with `{layer}` / `{expert}` placeholders, a symbolic
shape and a transform (`hubtools.model.transforms`). `expand` resolves them for one layer (and expert).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, IntEnum

from hubtools.model.transforms import Transform


class Role(str, Enum):
    """What a tensor holds: a weight (or norm), or one of the per-tensor scales of an FP8 weight."""

    TENSOR = "tensor"
    WEIGHT_SCALE = "weight_scale"  # native `qscale_weight`, HF `weight_scale_inv`: dequantized = weight * it
    ACTIVATION_SCALE = "activation_scale"  # native `qscale_act`, HF `activation_scale`: static input scale


class Part(IntEnum):
    """Where a tensor sits in the forward: before the decoder layers, in one, or after them; a vision model's
    encoder (its stem and layers, `layer` set for a layer) and projector run before the embedding."""

    EMBEDDING = 0
    LAYER = 1
    HEAD = 2
    VISION = 3
    PROJECTOR = 4


VISION_STEM_UNIT, VISION_LAYER_UNIT, PROJECTOR_UNIT = -(1 << 21), -(1 << 20), -2  # all before the embedding (-1)


@dataclass(frozen=True)
class Row:
    """One line of a family's name table.

    `native`, `hf` and `gguf` are templates (`{layer}`, `{expert}`); `shape` names `ModelParams`-derived
    sizes (the family's `dims`). A row of experts in GGUF is one merged tensor per layer (its template has
    no `{expert}`): the experts are stacked in expert order. A scale row (`role` not TENSOR) belongs to the
    FP8 weight row `weight`; families never state them (`hubtools.model.fp8` adds them).
    """

    native: str
    hf: str
    gguf: str
    shape: tuple[str, ...]
    transform: Transform = Transform.IDENTITY
    role: Role = Role.TENSOR
    weight: Row | None = None

    def native_name(self, layer: int | None = None, expert: int | None = None) -> str:
        """The native name for one layer (and expert)."""
        return self.native.format(layer=layer, expert=expert)

    def hf_name(self, layer: int | None = None, expert: int | None = None) -> str:
        """The HF name for one layer (and expert)."""
        return self.hf.format(layer=layer, expert=expert)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: its names, expected shape, transform, and where it sits.

    `row` is the family row it came from (tensors of the same row share a role: the same weight of
    every layer or expert).
    """

    native: str
    hf: str
    gguf: str
    shape: tuple[int, ...]
    transform: Transform
    part: Part
    row: Row
    layer: int | None = None
    expert: int | None = None

    @property
    def unit(self) -> int:
        """The forward step that needs this tensor: -1 embedding, the layer index, or 2**30 for the head; a
        vision encoder's stem, its layers and the projector come first (`VISION_*_UNIT`, `PROJECTOR_UNIT`)."""
        if self.part is Part.EMBEDDING:
            return -1
        if self.part is Part.VISION:
            return VISION_STEM_UNIT if self.layer is None else VISION_LAYER_UNIT + self.layer
        if self.part is Part.PROJECTOR:
            return PROJECTOR_UNIT
        return self.layer if self.part is Part.LAYER and self.layer is not None else 1 << 30


@dataclass(frozen=True)
class Fusion:
    """One HF tensor that holds several tensors of the table back to back (transformers' fused experts).

    `parts` are the table's HF names in byte order, each of shape `part_shape`; the stored tensor has
    `shape` (as many elements as the parts together). Readers split it into its parts, writers
    write the parts' bytes one after the other: no part is ever transformed across the join. An alias is a
    table tensor the fused one holds only once (transformers' one activation scale for an expert's gate and
    up halves): it must equal its part, and reads back as it.
    """

    hf: str
    parts: tuple[str, ...]
    shape: tuple[int, ...]
    part_shape: tuple[int, ...]
    aliases: tuple[tuple[str, str], ...] = ()  # (name, part): a tensor stored once, as that part, equal to it
    gguf: str | None = None  # its GGUF name where llama.cpp's converter writes it whole (weights, not scales)

    def prefixed(self, prefix: str) -> Fusion:
        """This fusion with every HF name under `prefix` (a wrapper holding the text model, e.g. a vision one)."""
        return Fusion(
            prefix + self.hf, tuple(prefix + p for p in self.parts), self.shape, self.part_shape,
            tuple((prefix + a, prefix + p) for a, p in self.aliases), self.gguf,
        )  # fmt: skip


@dataclass(frozen=True)
class GgufPiece:
    """One of the GGUF tensors a table tensor is written as where llama.cpp's converter splits it (MLA's
    `kv_b` into `k_b` and `v_b`): its GGUF name, numpy shape and which piece (the family cuts and joins)."""

    gguf: str
    shape: tuple[int, ...]
    piece: str


def expand(
    rows: Iterable[Row], dims: dict[str, int], part: Part, layer: int | None = None, expert: int | None = None
) -> Iterator[TensorSpec]:
    """The specs of `rows` for one layer (and expert), shapes resolved through `dims`."""
    for row in rows:
        yield TensorSpec(
            native=row.native.format(layer=layer, expert=expert),
            hf=row.hf.format(layer=layer, expert=expert),
            gguf=row.gguf.format(layer=layer, expert=expert),
            shape=tuple(dims[s] for s in row.shape),
            transform=row.transform,
            part=part,
            row=row,
            layer=layer,
            expert=expert,
        )
