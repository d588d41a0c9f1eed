"""How one output tensor of a conversion is made (`Step`) and its bytes: a kernel copy, a row permutation of raw
bytes, an FP8 weight dequantized by the rule (`hubtools.model.fp8`), or a cast through torch that must not
overflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubtools.checkpoint.reader import Checkpoint, TensorSource
from hubtools.checkpoint.safetensors_format import dtype_name, torch_dtype
from hubtools.checkpoint.writer import PlannedTensor, copy_segments, tensor_bytes, write_all
from hubtools.errors import InvalidValueError
from hubtools.model import fp8
from hubtools.model.names import Layout, TensorSpec
from hubtools.model.transforms import Transform


@dataclass(frozen=True)
class Step:
    """How one output tensor is made: from `source`, by `transform` (or a byte copy), cast to `dtype`; an FP8
    weight with a `scale` is dequantized by the rule of `hubtools.model.fp8`."""

    spec: TensorSpec
    source: TensorSource
    out: PlannedTensor
    target: Layout
    scale: TensorSource | None = None

    @property
    def is_copy(self) -> bool:
        return (
            self.spec.transform is Transform.IDENTITY
            and self.out.code == self.source.code
            and self.source.view is None
            and self.scale is None
        )


def write_step(ckpt: Checkpoint, step: Step, fd: int, path: Path) -> None:
    """Write one output tensor: a kernel byte copy, a row permutation of raw bytes, or (cast) via torch."""
    if step.is_copy:
        copy_segments(fd, step.source.segments, path, ckpt.fd)
        return
    write_all(fd, converted_bytes(ckpt, step, ckpt.read_bytes(step.source.segments)), path)


def converted_bytes(ckpt: Checkpoint, step: Step, raw: np.ndarray) -> memoryview:
    """The output bytes of one step from its source bytes `raw`: as is, a row permutation of raw bytes,
    or (a cast or a strided source) through torch.

    Raises:
        InvalidValueError: a cast that overflows (see `_check_cast`).
    """
    src = step.source
    if step.is_copy:
        return memoryview(raw.data).cast("B")
    transform = step.spec.transform
    if step.scale is not None:
        weight, scale = ckpt.tensor_from(src, raw), ckpt.read(step.scale.name)
        dequantized = fp8.dequantize(weight, scale, torch_dtype(step.out.code))
        _check_cast(src, fp8.dequantize(weight, scale, torch_dtype("F32")), dequantized)
        return tensor_bytes(transform.towards(step.target, dequantized, ckpt.params).contiguous())
    if step.out.code == src.code and src.view is None and len(src.shape) == 2:
        rows = raw.reshape(src.shape[0], -1)  # [rows, cols * itemsize] bytes
        return memoryview(np.ascontiguousarray(transform.towards(step.target, rows, ckpt.params)).data).cast("B")
    source = transform.towards(step.target, ckpt.tensor_from(src, raw), ckpt.params)
    tensor = source.to(step.out.dtype)
    _check_cast(src, source, tensor)
    return tensor_bytes(tensor)


def _check_cast(src: TensorSource, before: Any, after: Any) -> None:
    """A cast must not turn finite values into infinities (bfloat16 values above 65504 in float16).

    Raises:
        InvalidValueError: naming the tensor, how many values overflow and the dtypes.
    """
    import torch

    if not after.is_floating_point():
        return
    overflow = int((torch.isinf(after) & torch.isfinite(before)).sum())
    if overflow:
        raise InvalidValueError(
            f"{src.name}: expected values that fit {dtype_name(after.dtype)}, found {overflow} of "
            f"{after.numel()} that overflow to inf (keep {dtype_name(before.dtype)} or cast to bfloat16)"
        )
