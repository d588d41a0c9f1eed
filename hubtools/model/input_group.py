"""`InputGroup`: the weights of one layer that read the same input, as a family states them for quantization."""

from __future__ import annotations

from dataclasses import dataclass

from hubtools.model.rows import Row


@dataclass(frozen=True)
class InputGroup:
    """Weights of one layer that read the same input, and what makes that input (for quantization).

    `readers` are quantized. `source` makes their input: a norm weight `[dim]` or a linear whose output rows
    are the input's channels (AWQ divides its entries / rows by the scales it multiplies the readers' columns
    by), or None (nothing to fold into: the group is left unscaled). `passengers` read the same input but stay
    unquantized (the router): their columns are multiplied by the scales too, so they compute what they
    computed before. `experts`: "none" (layer rows), "each" (expert rows, the group repeats per expert) or
    "all" (the readers of every expert share the layer's input).
    """

    readers: tuple[Row, ...]
    source: Row | None = None
    passengers: tuple[Row, ...] = ()
    experts: str = "none"
