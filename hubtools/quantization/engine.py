"""The layer-by-layer calibration engine: one decoder layer's weights in memory at a time.

The calibration tokens (in chunks of packed sequences) are embedded; then, for each layer, its weights
are read (native names and layout, float32, on the compute device), the family's own forward runs once
with the inputs of every quantized weight recorded (`capture.LinearInputs`) and, in an MoE layer, EVERY
token sent through EVERY expert at weight 1 (`Family.every_token`: no expert goes uncalibrated, however
rarely the router picks it; the real routing is only counted); the weights are quantized (GPTQ from the
recorded Hessians, or AWQ scales folded then rounded, or plain rounding); and the layer runs again, with
the quantized weights and the real routing, to make the next layer's inputs. The hidden states of the
calibration tokens are the only state carried from layer to layer, so depth does not change peak memory.

What it yields per tensor (`Quantized`) goes straight to the writer; the engine never spells a tensor
name (it asks the family: `input_groups`, `tensor_specs`). A vision wrapper's text model is calibrated with
its own family's forward (`ModelParams.text`); the encoder and projector pass through unquantized.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from hubtools.errors import QuantizeError
from hubtools.model.family import ModelParams
from hubtools.model.input_group import InputGroup
from hubtools.model.names import NameTable, TensorSpec
from hubtools.quantization.awq import clipped_round_to_nearest, search_scales
from hubtools.quantization.capture import InputStats, LinearInputs
from hubtools.quantization.gptq import gptq
from hubtools.quantization.scheme import QuantizeOptions, check_group_size, round_to_nearest

Reader = Callable[[TensorSpec], torch.Tensor]  # a native tensor, float32, on the compute device


@dataclass(frozen=True)
class Chunk:
    """Packed calibration sequences: tokens `[1, n]` and positions restarting at 0 for each sequence."""

    tokens: torch.Tensor
    positions: torch.Tensor


@dataclass
class Quantized:
    """One output tensor: the native `spec`, its (possibly AWQ-folded) value, and the grid when quantized."""

    spec: TensorSpec
    weight: torch.Tensor  # dequantized when `scales` is set
    scales: torch.Tensor | None = None


@dataclass
class LayerRecord:
    """What the report says of one layer."""

    layer: int
    calibrated: list[int] = field(default_factory=list)  # tokens each expert was calibrated on
    routed: list[int] = field(default_factory=list)  # tokens the router sent to each expert
    awq: list[dict[str, Any]] = field(default_factory=list)  # per scaled group: alpha and error vs rounding


def group_names(group: InputGroup, layer: int, experts: int) -> list[tuple[list[str], str | None, list[str]]]:
    """(reader names, source name, passenger names) of each instance of `group` in `layer`."""

    def names(rows: tuple[Any, ...], expert: int | None) -> list[str]:
        return [row.native_name(layer, expert) for row in rows]

    if group.experts == "each":
        return [
            (
                names(group.readers, e),
                group.source.native_name(layer, e) if group.source else None,
                names(group.passengers, e),
            )
            for e in range(experts)
        ]
    readers = (
        [n for e in range(experts) for n in names(group.readers, e)]
        if group.experts == "all"
        else names(group.readers, None)
    )
    source = group.source.native_name(layer, None) if group.source else None
    return [(readers, source, names(group.passengers, None))]


class LayerEngine:
    """Quantizes a model one layer at a time (see the module docstring)."""

    def __init__(
        self, params: ModelParams, read: Reader, chunks: list[Chunk], options: QuantizeOptions, *, rope_theta: float
    ) -> None:
        self.read, self.options, self.theta = read, options, rope_theta
        self.table = NameTable(params)  # a vision wrapper's: encoder, projector and text tensors
        self.params, self.family = params.text, params.text.family  # the calibrated forward: the text model's
        self.chunks = chunks
        self.hidden: list[torch.Tensor] = []
        self.input_scales: dict[str, torch.Tensor] = {}  # AWQ: the scales a reader's input is divided by

    def run(self, progress: Callable[[str], None]) -> Iterator[Quantized | LayerRecord]:
        """Every tensor of the model in canonical order (and each layer's record after its tensors); a vision
        wrapper's encoder and projector first, as they are (only the text layers are calibrated)."""
        yield from (Quantized(s, self.read(s)) for s in self.table.specs if s.unit < -1)
        specs = [s for s in self.table.specs if s.unit == -1]
        weights = {s.native: self.read(s) for s in specs}
        with torch.no_grad():
            self.hidden = [self.family.embed(c.tokens, weights.__getitem__) for c in self.chunks]
        yield from (Quantized(s, weights[s.native]) for s in specs)
        del weights  # not held while the layers run
        for layer in range(self.params.n_layers):
            progress(f"layer {layer + 1}/{self.params.n_layers}")
            with torch.no_grad():
                yield from self._layer(layer)
        specs = [s for s in self.table.specs if s.unit > self.params.n_layers]
        yield from (Quantized(s, self.read(s)) for s in specs)

    def _layer(self, layer: int) -> Iterator[Quantized | LayerRecord]:
        specs = [s for s in self.table.specs if s.unit == layer]
        weights = {s.native: self.read(s) for s in specs}
        groups = self.family.input_groups(self.params, layer)
        experts = self.family.experts(self.params, layer)
        quantized = [n for g in groups for readers, _, _ in group_names(g, layer, experts) for n in readers]
        for name in quantized:
            check_group_size(weights[name].shape[1], self.options.group_size, self.table.by_native[name].hf)
        record = LayerRecord(layer)
        stats = self._capture(layer, weights, quantized, experts, record)
        if self.options.method == "awq":
            self._fold_awq(layer, groups, experts, weights, stats, record)
        grids = {name: self._quantize(name, weights[name], stats[name]) for name in quantized}
        self.input_scales.clear()
        live = dict(weights)
        live.update({name: deq for name, (deq, _) in grids.items()})
        self.hidden = [
            self.family.layer_forward(h, layer, live.__getitem__, self.params, c.positions, self.theta)
            for h, c in zip(self.hidden, self.chunks, strict=True)
        ]
        for spec in specs:
            deq, scales = grids.get(spec.native, (weights[spec.native], None))
            yield Quantized(spec, deq, scales)
        yield record

    def _capture(
        self, layer: int, weights: dict[str, torch.Tensor], quantized: list[str], experts: int, record: LayerRecord
    ) -> dict[str, InputStats]:
        """Run the layer once with the original weights, recording the inputs of every quantized weight."""
        get, params = weights.__getitem__, self.params
        routed = [0] * experts
        with LinearInputs({n: weights[n] for n in quantized}) as seen:
            for h, chunk in zip(self.hidden, self.chunks, strict=True):
                h_mid = self.family.attention_block(h, layer, get, params, chunk.positions, self.theta)
                if not experts:
                    self.family.feed_forward_block(h_mid, layer, get, params)
                    continue
                routing = self.family.route(h_mid, layer, get, params)
                routed = [a + b for a, b in zip(routed, self.family.routed_tokens(routing, experts), strict=True)]
                for expert in range(experts):
                    self.family.add_expert(self.family.every_token(routing, expert), layer, expert, get)
        missing = [n for n in quantized if n not in seen.stats or seen.stats[n].tokens == 0]
        if missing:
            raise QuantizeError(f"{self.table.by_native[missing[0]].hf}: received no calibration token")
        if experts:
            row = next(g.readers[0] for g in self.family.input_groups(params, layer) if g.experts != "none")
            record.routed = routed
            record.calibrated = [seen.stats[row.native_name(layer, e)].tokens for e in range(experts)]
        return seen.stats

    def _fold_awq(
        self,
        layer: int,
        groups: tuple[InputGroup, ...],
        experts: int,
        weights: dict[str, torch.Tensor],
        stats: dict[str, InputStats],
        record: LayerRecord,
    ) -> None:
        """AWQ: search each group's scales and fold them (readers x s, source / s, passengers x s)."""
        o = self.options
        for group in groups:
            if group.source is None:
                continue
            for readers, source, passengers in group_names(group, layer, experts):
                seen = stats[readers[0]]
                choice = search_scales(
                    [weights[n] for n in readers], seen.magnitude, seen.gram, bits=o.bits, group_size=o.group_size,
                    grid=o.awq_grid, power_of_two=bool(passengers), duo=o.awq_duo,
                )  # fmt: skip
                s = choice.scales
                for name in [*readers, *passengers]:
                    weights[name] = weights[name] * s
                for name in readers:  # their input is now x / s: its Gram matrix follows
                    self.input_scales[name] = s
                assert source is not None
                weights[source] = weights[source] / (s if weights[source].ndim == 1 else s[:, None])
                hf = self.table.by_native[readers[0]].hf
                record.awq.append(
                    {
                        "first": hf,
                        "readers": len(readers),
                        "alpha": choice.alpha,
                        "duo": choice.duo,
                        "error_vs_rtn": round(choice.error_vs_rtn, 4),
                    }  # fmt: skip
                )

    def _quantize(self, name: str, w: torch.Tensor, seen: InputStats) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        if o.method == "awq":
            gram = seen.gram.float()
            if name in self.input_scales:
                s = self.input_scales[name]
                gram = gram / (s[:, None] * s[None, :])
            return clipped_round_to_nearest(w, gram, bits=o.bits, group_size=o.group_size)
        if o.method == "gptq":
            return gptq(
                w, seen.hessian.matrix(), bits=o.bits, group_size=o.group_size, damp=o.damp, act_order=o.act_order
            )
        return round_to_nearest(w, o.bits, o.group_size)
