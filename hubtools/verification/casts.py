"""The value rule of verify's tensor check: what a dtype cast between the source and the HF tensor may change.

Being bit-identical to `source.to(hf_dtype)` proves only that the HF tensor is that cast; whether the cast
keeps what the model computes is this module's rule, applied to every tensor whose dtype differs from the
source's, before the bit comparison:

- a cast to a type that is not floating point (int8, uint8, bool, ...) fails: such a type cannot hold
  the weights (the report counts the values it changed);
- a float cast fails when a finite source value becomes inf or NaN (overflow: bfloat16 values above
  65504 in float16);
- a float cast fails when it loses more than the target's rounding: measured over the whole tensor,
  ||cast - source||_2 must not exceed u * ||source||_2, u being the target's unit roundoff (2**-11 for
  float16, 2**-8 for bfloat16, 2**-24 for float32). Round to nearest within the target's normal range
  never exceeds u for any value, so only values below the target's smallest normal number (flushed to 0
  or rounded to a subnormal) can break the bound: a tensor that float16 flushes (wholly or in a part that
  carries its weight) fails, while the few stray values below 6.1e-5 that every real bfloat16 model holds
  leave the bound, and a real bfloat16 -> float16 conversion, intact.

A widening cast (float16 or bfloat16 -> float32) represents every source value exactly and is not checked.
"""

from __future__ import annotations

from typing import Any

import torch

from hubtools.checkpoint.safetensors_format import dtype_name

CHUNK = 1 << 22  # elements per float64 slice when measuring the change (32 MiB)


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1.0 to the next value: the largest relative error of rounding to nearest."""
    return float(torch.finfo(dtype).eps) / 2


def cast_damage(source: torch.Tensor, cast: torch.Tensor) -> dict[str, Any] | None:
    """None when `cast` (`source` cast to another dtype) keeps the values as the rule above asks; else the
    report's description of what it broke (`differences[name]` in the JSON report)."""
    target, of = cast.dtype, source.numel()
    if not source.is_floating_point() or torch.promote_types(source.dtype, target) == target:
        return None  # integer sources are compared bit for bit; widening float casts are exact
    if not target.is_floating_point:
        changed = int(cast.to(source.dtype).ne(source).sum())
        return {"not_float": changed, "of": of, "dtype": dtype_name(target)}
    finite = torch.isfinite(source)
    overflow = int((finite & ~torch.isfinite(cast)).sum())
    if overflow:
        return {"overflow": overflow, "of": of, "dtype": dtype_name(target)}
    small = finite & source.ne(0) & (source.abs() < torch.finfo(target).tiny)
    below = int(small.sum())
    if not below:
        return None  # every value in the target's normal range: within its rounding by construction
    change, size = 0.0, 0.0
    flat_source, flat_cast, flat_finite = source.reshape(-1), cast.reshape(-1), finite.reshape(-1)
    for start in range(0, of, CHUNK):
        keep = flat_finite[start : start + CHUNK]
        x = flat_source[start : start + CHUNK][keep].double()
        change += float((flat_cast[start : start + CHUNK][keep].double() - x).square().sum())
        size += float(x.square().sum())
    relative, bound = (change / size) ** 0.5, unit_roundoff(target)
    if relative <= bound:
        return None
    flushed = int((small & cast.eq(0)).sum())
    return {
        "underflow": below,
        "flushed": flushed,
        "of": of,
        "dtype": dtype_name(target),
        "relative_error": relative,
        "bound": bound,
    }
