"""GGUF tensors from the family's name table, in the order llama.cpp's converter writes them.

Each row of a family's table names its GGUF tensor (gguf-py's names for the family's llama.cpp
architecture); the experts of a layer share one GGUF name and are stacked into one 3-D tensor per
projection ([n_experts, rows, cols]), as llama.cpp's converter does. Where the HF folder stores experts fused
(`Family.fusions`: Mistral 4's `gate_up_proj`), the fused tensor is one GGUF tensor, its parts in stored
order; where the converter splits a tensor (`Family.gguf_pieces`: MLA's `kv_b`), each piece is one.

Order: the converter reads an HF folder shard by shard (files sorted), each shard's stored tensors sorted by
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
    piece: str | None = None  # a piece of its single source (`Family.gguf_cut`)


def gguf_tensors(
    params: ModelParams, hf_order: Iterable[str], *, parts: Collection[Part] | None = None
) -> list[GgufTensor]:
    """Every GGUF tensor, in the converter's order for an HF folder whose tensors it reads in `hf_order`.

    Args:
        hf_order: stored HF tensor names (a fusion's own name, not its parts') in the order llama.cpp's converter
            reads them (see `converter_order`).
        parts: only the tensors of these parts (a vision model's text model, or its encoder and projector:
            the converter writes them to two files); None: all.
    """
    table, family = NameTable(params), params.family
    fusions = {f.hf: f for f in family.fusions(params)}
    pending: dict[int, list[TensorSpec]] = {}  # per layer: its expert tensors read so far
    out: list[GgufTensor] = []
    for hf in hf_order:
        fusion = fusions.get(hf)
        specs = tuple(table.spec(p, layout="hf") for p in fusion.parts) if fusion else (table.spec(hf, layout="hf"),)
        spec = specs[0]
        if spec.row.role is not Role.TENSOR or (parts is not None and spec.part not in parts):
            continue  # an FP8 scale: spent on its weight (dequantized), as llama.cpp's converter does
        if fusion is not None:
            if fusion.gguf is None:
                raise AssertionError(f"the family gives fused '{hf}' no GGUF name")
            out.append(GgufTensor(fusion.gguf, specs, fusion.shape))
            continue
        if spec.expert is None:
            pieces = family.gguf_pieces(params, spec)
            out.extend(GgufTensor(p.gguf, (spec,), p.shape, piece=p.piece) for p in pieces)
            if not pieces:
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


def stored_names(params: ModelParams, names: Iterable[str]) -> list[str]:
    """HF table names as a folder stores them: each fusion's parts as the fused tensor, where its first part is."""
    fusions = params.family.fusions(params)
    first = {f.parts[0]: f.hf for f in fusions}
    inside = {p for f in fusions for p in (*f.parts, *(a for a, _ in f.aliases))}
    return [first.get(n, n) for n in names if n in first or n not in inside]


def hf_shards_of_native(params: ModelParams, codes: dict[str, str], max_shard_size: int) -> list[list[str]]:
    """The HF shards (stored tensor names per file) `hubtools convert` writes for a native checkpoint.

    Args:
        codes: native tensor name -> safetensors dtype code (kept by a conversion without --dtype).
    """
    from hubtools.checkpoint.writer import PlannedTensor, fuse_planned, plan_shards

    planned = [PlannedTensor(s.hf, codes[s.native], s.shape) for s in NameTable(params).specs]
    planned = fuse_planned(planned, params.family.fusions(params), lambda _: b"")  # the plan only: no alias read
    return [
        [t.name for t in shard.tensors] for shard in plan_shards(planned, max_shard_size=max_shard_size, stem="model")
    ]
