"""Native tensor names -> GGUF tensor names, in the order llama.cpp's converter writes them.

Names come from gguf-py's own table (`TensorNameMap` for `MODEL_ARCH.LLAMA`, which lists the native
"llama-pth" names); a Mixtral layer's experts are merged into one 3-D tensor per projection
(`blk.N.ffn_{gate,down,up}_exps.weight`, [n_experts, rows, cols]), as `conversion/llama.py` does.

Order: the converter reads an HF folder shard by shard (files sorted), each shard's tensors sorted by
name, and emits a layer's merged experts when its last expert tensor arrives (w1, w2, w3). From a native
checkpoint the HF folder `hubtools convert` would write (same shard plan) gives the same order, so a
file made from native equals the converter's output on hubtools' HF conversion, tensor for tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import gguf

from hubtools.errors import MappingError
from hubtools.model.names import NameTable, TensorSpec
from hubtools.model.params import ModelParams


@dataclass(frozen=True)
class GgufTensor:
    """One GGUF tensor: its name, its native sources (one, or one per expert, stacked) and numpy shape."""

    name: str
    sources: tuple[TensorSpec, ...]
    shape: tuple[int, ...]


def name_map(params: ModelParams) -> gguf.TensorNameMap:
    """gguf-py's name table for llama-architecture models with this many layers."""
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, params.n_layers)


def gguf_name(native: str, table: gguf.TensorNameMap) -> str:
    """The GGUF name of a native tensor name (or a merged expert name `layers.N.feed_forward.experts.w1`).

    Raises:
        MappingError: gguf-py's table has no such tensor.
    """
    name = table.get_name(native, try_suffixes=(".weight",))
    if name is None:
        raise MappingError(f"no GGUF name for tensor '{native}' (gguf-py's llama table has none)")
    return name


def _merged(specs: Sequence[TensorSpec], table: gguf.TensorNameMap) -> list[GgufTensor]:
    layer = specs[0].layer
    out = []
    for wid in ("w1", "w2", "w3"):
        group = tuple(sorted((s for s in specs if s.native.endswith(f".{wid}.weight")), key=lambda s: s.expert or 0))
        merged = f"layers.{layer}.feed_forward.experts.{wid}.weight"
        out.append(GgufTensor(gguf_name(merged, table), group, (len(group), *group[0].shape)))
    return out


def gguf_tensors(params: ModelParams, hf_order: Iterable[str]) -> list[GgufTensor]:
    """Every GGUF tensor, in the converter's order for an HF folder whose tensors it reads in `hf_order`.

    Args:
        hf_order: HF tensor names in the order llama.cpp's converter reads them (see `converter_order`).
    """
    table, names = NameTable(params), name_map(params)
    experts: dict[int, list[TensorSpec]] = {}
    out: list[GgufTensor] = []
    for hf in hf_order:
        spec = table.spec(hf, layout="hf")
        if spec.expert is None:
            out.append(GgufTensor(gguf_name(spec.native, names), (spec,), spec.shape))
            continue
        layer = experts.setdefault(spec.layer or 0, [])
        layer.append(spec)
        if len(layer) == 3 * params.num_experts:
            out.extend(_merged(layer, names))
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
