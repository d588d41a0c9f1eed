"""GGUF tensors from the family's name table, in the order llama.cpp's converter writes them.

Each row of a family's table names its GGUF tensor (gguf-py's names for the family's llama.cpp
architecture); the experts of a layer share one GGUF name and are stacked into one 3-D tensor per
projection ([n_experts, rows, cols]), as llama.cpp's converter does.

Order: the converter reads an HF folder shard by shard (files sorted), each shard's tensors sorted by
name, and emits a layer's merged experts when its last expert tensor arrives. From a native checkpoint
the HF folder `hubtools convert` would write (same shard plan) gives the same order, so a file made from
native equals the converter's output on hubtools' HF conversion, tensor for tensor.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from hubtools.model.family import ModelParams
from hubtools.model.names import NameTable, TensorSpec
from hubtools.model.rows import Part, Role


@dataclass(frozen=True)
class GgufTensor:
    """One GGUF tensor: its name, its native sources (one, or one per expert, stacked) and numpy shape; `row`:
    one row of its single source alone (a token's embedding)."""

    name: str
    sources: tuple[TensorSpec, ...]
    shape: tuple[int, ...]
    row: int | None = None


def gguf_tensors(
    params: ModelParams, hf_order: Iterable[str], *, parts: Collection[Part] | None = None
) -> list[GgufTensor]:
    """Every GGUF tensor, in the converter's order for an HF folder whose tensors it reads in `hf_order`.

    Args:
        hf_order: HF tensor names in the order llama.cpp's converter reads them (see `converter_order`).
        parts: only the tensors of these parts (a vision model's text model, or its encoder and projector:
            the converter writes them to two files); None: all.
    """
    table, family = NameTable(params), params.family
    pending: dict[int, list[TensorSpec]] = {}  # per layer: its expert tensors read so far
    out: list[GgufTensor] = []
    for hf in hf_order:
        spec = table.spec(hf, layout="hf")
        if spec.row.role is not Role.TENSOR or (parts is not None and spec.part not in parts):
            continue  # an FP8 scale: spent on its weight (dequantized), as llama.cpp's converter does
        if spec.expert is None:
            out.append(GgufTensor(spec.gguf, (spec,), spec.shape))
            continue
        layer = pending.setdefault(spec.unit, [])
        layer.append(spec)
        rows = family.expert_rows(params, spec.unit)
        if len(layer) == len(rows) * family.experts(params, spec.unit):
            for row in rows:
                group = tuple(sorted((s for s in layer if s.row is row), key=lambda s: s.expert or 0))
                out.append(GgufTensor(group[0].gguf, group, (len(group), *group[0].shape)))
    return out


def converter_order(shards: Iterable[Iterable[str]]) -> list[str]:
    """HF tensor names in llama.cpp's reading order: shard files in name order, names sorted in each."""
    return [name for shard in shards for name in sorted(shard)]


def hf_shards_of_native(params: ModelParams, codes: dict[str, str], max_shard_size: int) -> list[list[str]]:
    """The HF shards (tensor names per file) `hubtools convert` writes for a native checkpoint.

    Args:
        codes: native tensor name -> safetensors dtype code (kept by a conversion without --dtype).
    """
    from hubtools.checkpoint.writer import PlannedTensor, plan_shards

    planned = [PlannedTensor(s.hf, codes[s.native], s.shape) for s in NameTable(params).specs]
    return [
        [t.name for t in shard.tensors] for shard in plan_shards(planned, max_shard_size=max_shard_size, stem="model")
    ]
