"""FP8 weights in verify: each side dequantized by its own rule before the forwards, and a dequantized HF
output checked against the rule.

The reference dequantizes by the native rule (`hubtools.model.fp8.native_dequantize`, in bfloat16); the HF
side by transformers' own dequantizer (`Fp8Dequantize`, what `from_pretrained` runs on a machine without an
FP8 GPU), into bfloat16 as a bfloat16 model loads. A weight the conversion dequantized is compared bit for
bit with `fp8.dequantize(native weight, native scale, its dtype)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hubtools.checkpoint.reader import Checkpoint
from hubtools.model import fp8, fp8_block
from hubtools.model.family import ModelParams
from hubtools.model.names import TensorSpec


@dataclass(frozen=True)
class Scales:
    """The weight scales of one FP8 weight: the native one, and the HF one (None: HF holds it dequantized)."""

    native: torch.Tensor
    hf: torch.Tensor | None


def read_scales(native: Checkpoint, hf: Checkpoint, spec: TensorSpec, hf_params: ModelParams) -> Scales | None:
    """The scales of `spec` when it is an FP8 weight of the native checkpoint, else None."""
    if not fp8.is_quantized(native.params, spec):
        return None
    hf_name = fp8.weight_scale(hf_params, spec, "hf")
    kept = fp8.is_quantized(hf_params, spec) and hf_name in hf.tensors
    return Scales(native.read(fp8.weight_scale(native.params, spec, "native")), hf.read(hf_name) if kept else None)


def hf_dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """transformers' dequantization of one FP8 weight, into bfloat16: per-tensor, its load path without an FP8
    GPU (`Fp8Dequantize`); block-wise, its block rule with the config's 128x128 blocks (`_dequantize_fp8_weight`,
    what its FP8 kernels compute), since `Fp8Dequantize` derives the block from the grid and so misreads a
    weight whose last blocks are partial (see README, block-wise FP8)."""
    from transformers.integrations import finegrained_fp8

    if scale.ndim >= 2 and weight.ndim == 2:
        return finegrained_fp8._dequantize_fp8_weight(weight, scale, list(fp8_block.BLOCK), torch.bfloat16)  # type: ignore[no-untyped-call]
    return finegrained_fp8.Fp8Dequantize(None)._dequantize_one(weight, scale, output_dtype=torch.bfloat16)  # type: ignore[no-untyped-call]


def forward_weights(native: torch.Tensor, hf: torch.Tensor, scales: Scales | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (native, HF) weights the forwards use: FP8 ones dequantized, each side by its own rule."""
    if scales is None:
        return native, hf
    hf_weight = hf_dequantize(hf, scales.hf) if scales.hf is not None else hf
    return fp8.native_dequantize(native, scales.native), hf_weight
