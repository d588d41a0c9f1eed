"""`DType`: one home for a tensor dtype's three spellings: its name ("bfloat16", as configs, reports and
options say it), its safetensors code ("BF16") and its torch dtype (looked up lazily: importing this
module does not import torch).

Example:
    >>> DType.parse("BF16"), DType.parse("bfloat16").code, DType.BFLOAT16.itemsize
    (<DType.BFLOAT16: 'bfloat16'>, 'BF16', 2)
    >>> f"{DType.FLOAT32}"
    'float32'
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from hubtools.errors import InvalidValueError


class DType(str, Enum):
    """A tensor dtype; its value is its name. `str()` and f-strings give the name."""

    FLOAT64 = "float64"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT64 = "int64"
    INT32 = "int32"
    INT16 = "int16"
    INT8 = "int8"
    UINT8 = "uint8"
    BOOL = "bool"
    FLOAT8_E4M3 = "float8_e4m3fn"
    FLOAT8_E5M2 = "float8_e5m2"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def code(self) -> str:
        """The safetensors code, e.g. "BF16"."""
        return _CODES[self][0]

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _CODES[self][1]

    @property
    def torch(self) -> Any:
        """The torch dtype (imports torch on first use)."""
        import torch

        return getattr(torch, self.value)

    @classmethod
    def parse(cls, value: Any) -> DType:
        """A `DType` from a name ("bfloat16"), a safetensors code ("BF16"), a torch dtype or a `DType`.

        Raises:
            InvalidValueError: naming the value and the accepted names.
        """
        if isinstance(value, cls):
            return value
        text = str(value).removeprefix("torch.")
        for dtype in cls:
            if text in (dtype.value, _CODES[dtype][0]):
                return dtype
        raise InvalidValueError(f"dtype '{value}': expected one of {', '.join(d.value for d in cls)}")

    @classmethod
    def values(cls, *members: DType) -> list[str]:
        """The names of `members` (default: all), for choices and messages."""
        return [d.value for d in members or tuple(cls)]


_CODES: dict[DType, tuple[str, int]] = {
    DType.FLOAT64: ("F64", 8),
    DType.FLOAT32: ("F32", 4),
    DType.FLOAT16: ("F16", 2),
    DType.BFLOAT16: ("BF16", 2),
    DType.INT64: ("I64", 8),
    DType.INT32: ("I32", 4),
    DType.INT16: ("I16", 2),
    DType.INT8: ("I8", 1),
    DType.UINT8: ("U8", 1),
    DType.BOOL: ("BOOL", 1),
    DType.FLOAT8_E4M3: ("F8_E4M3", 1),
    DType.FLOAT8_E5M2: ("F8_E5M2", 1),
}

CAST_DTYPES = (DType.BFLOAT16, DType.FLOAT16, DType.FLOAT32)  # what a conversion may cast to
COMPUTE_DTYPES = (DType.FLOAT32, DType.BFLOAT16)  # what the logits check may compute in
