"""What a GPTQ / AWQ run is asked for (`QuantizeOptions`), and the integer grid it rounds onto.

The grid is compressed-tensors' symmetric group scheme (`W4A16`): per output row and per `group_size`
input columns one scale, `scale = max|w| / ((qmax - qmin) / 2)`, codes `clamp(round(w / scale), qmin,
qmax)` with `qmin, qmax = -2^(b-1), 2^(b-1) - 1`, no zero point. Scales are rounded to the checkpoint's
scale dtype (bfloat16) before any code is chosen, so the codes written are the codes computed.

Symmetric only, by measurement: transformers 5.25 with compressed-tensors 0.20.1 cannot load asymmetric
pack-quantized checkpoints (packed zero points meet unpacked parameters: size mismatch on dense layers,
an assertion in the MoE expert dequantizer), so AWQ is written symmetric too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubtools.errors import QuantizeError

METHODS = ("gptq", "awq", "rtn")
FORMATS = ("compressed-tensors",)
REFUSED_FORMATS = {  # what users may ask for, and why it is not written (measured / read in transformers 5.25)
    "gptq": "transformers loads quant_method gptq only with optimum and gptqmodel (CUDA torch)",
    "awq": "transformers loads quant_method awq only with gptqmodel (CUDA torch)",
}
DEVICES = ("cpu", "cuda")
SCALE_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class QuantizeOptions:
    """A quantization run: method, grid, calibration and where it computes.

    Example:
        >>> QuantizeOptions(method="gptq", group_size=64).checked().group_size
        64
    """

    method: str = "gptq"
    bits: int = 4
    group_size: int = 128
    samples: int = 128
    seq_len: int = 512
    calibration: Path | None = None
    format: str = "compressed-tensors"
    device: str = "cpu"
    act_order: bool = True
    damp: float = 0.01
    awq_grid: int = 20
    awq_duo: bool = False  # also try AWQ's duo scales, m^alpha / w^(1 - alpha) (llm-compressor's default)
    requested_group_size: int | None = None  # set when the group size was lowered to tile the model

    def checked(self) -> QuantizeOptions:
        """These options, or a `QuantizeError` naming the first bad one."""
        if self.method not in METHODS:
            raise QuantizeError(f"--method: expected one of {', '.join(METHODS)}, found {self.method!r}")
        if self.format in REFUSED_FORMATS:
            raise QuantizeError(
                f"--format {self.format}: not written ({REFUSED_FORMATS[self.format]}); use compressed-tensors"
            )
        if self.format not in FORMATS:
            raise QuantizeError(f"--format: expected one of {', '.join(FORMATS)}, found {self.format!r}")
        if not 2 <= self.bits <= 8:
            raise QuantizeError(f"--bits: expected 2..8, found {self.bits}")
        for name in ("group_size", "samples", "seq_len"):
            if getattr(self, name) < 1:
                raise QuantizeError(
                    f"--{name.replace('_', '-')}: expected a positive number, found {getattr(self, name)}"
                )
        if self.device not in DEVICES:
            raise QuantizeError(f"--device: expected one of {', '.join(DEVICES)}, found {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise QuantizeError("--device cuda: torch sees no CUDA device here (use --device cpu)")
        return self

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["calibration"] = str(self.calibration) if self.calibration else None
        return out


def code_range(bits: int) -> tuple[int, int]:
    """(qmin, qmax) of a signed `bits`-bit code."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def group_scales(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric scales of `w [rows, columns]`, one per row over all its columns: `[rows, 1]`, float32
    holding `SCALE_DTYPE` values (compressed-tensors' min-max rule)."""
    qmin, qmax = code_range(bits)
    absmax = w.abs().amax(dim=1, keepdim=True).float()
    scale = absmax / ((qmax - qmin) / 2)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale.to(SCALE_DTYPE).float().clamp_min(torch.finfo(SCALE_DTYPE).tiny)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """`w` rounded onto the grid of `scale` (broadcast over columns) and back, float32."""
    qmin, qmax = code_range(bits)
    return torch.clamp(torch.round(w.float() / scale), qmin, qmax) * scale


def check_group_size(columns: int, group_size: int, name: str) -> None:
    """The group size must tile the columns (compressed-tensors stores `columns / group_size` scales)."""
    if columns % group_size:
        raise QuantizeError(f"{name}: {columns} input columns are not a multiple of --group-size {group_size}")


def round_to_nearest(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain round-to-nearest (RTN) of `w [rows, columns]`: (dequantized weight, scales `[rows, groups]`)."""
    rows, columns = w.shape
    grouped = w.float().reshape(rows * (columns // group_size), group_size)
    scale = group_scales(grouped, bits)
    deq = fake_quantize(grouped, scale, bits).reshape(rows, columns)
    return deq, scale.reshape(rows, columns // group_size)
