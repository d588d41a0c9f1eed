"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"), as its reference implementation and llm-compressor run it.

For one linear layer `W [rows, columns]` and the Hessian of its layer-wise loss `H = 2 X^T X / n` over the
calibration inputs `X [n, columns]`: dead columns (never active) are zeroed; with act-order the columns are
visited in decreasing `diag(H)`; `H` is damped by `damp * mean(diag(H))`, inverted through Cholesky, and
the upper Cholesky factor of the inverse drives the sweep: each column is rounded onto its group's grid
and its error, divided by the factor's diagonal, is fed back into the columns not yet rounded (lazily, in
blocks of 128). Group scales are fixed from the weights before the sweep ("static" groups, what
compressed-tensors stores without a `g_idx`), so act-order changes only the order of rounding.
"""

from __future__ import annotations

import torch

from hubtools.quantization.scheme import fake_quantize, group_scales

BLOCK = 128


class Hessian:
    """`2 X^T X / n` accumulated over batches of inputs `[..., columns]` (float64: sums of many tokens)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.sum = torch.zeros(columns, columns, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).to(self.sum.device, torch.float64)
        self.sum.addmm_(flat.T, flat)
        self.tokens += flat.shape[0]

    def matrix(self) -> torch.Tensor:
        return (2 * self.sum / max(self.tokens, 1)).float()


def _inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of `(H + damp * mean(diag H) I)^-1`, damping raised until it factors."""
    eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
    level = damp * float(torch.diag(h).mean())
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(h + level * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        level = max(level * 10, 1e-6)
    raise ArithmeticError("the damped Hessian is not positive definite")


def gptq(
    w: torch.Tensor, hessian: torch.Tensor, *, bits: int, group_size: int, damp: float, act_order: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ of `w [rows, columns]`: (dequantized weight float32, scales `[rows, columns / group_size]`)."""
    rows, columns = w.shape
    w = w.float().clone()
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    groups = columns // group_size
    scales = group_scales(w.reshape(rows * groups, group_size), bits).reshape(rows, groups)
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(columns, device=w.device)
    w, h = w[:, order], h[order][:, order]
    column_scales = scales[:, order // group_size]  # each visited column's own group scale
    factor = _inverse_factor(h, damp)
    q = torch.zeros_like(w)
    for start in range(0, columns, BLOCK):
        end = min(start + BLOCK, columns)
        block, errors = w[:, start:end].clone(), torch.zeros(rows, end - start, device=w.device)
        inner = factor[start:end, start:end]
        for i in range(end - start):
            col = block[:, i]
            rounded = fake_quantize(col[:, None], column_scales[:, start + i, None], bits)[:, 0]
            q[:, start + i] = rounded
            err = (col - rounded) / inner[i, i]
            block[:, i:].addmm_(err[:, None], inner[i : i + 1, i:], alpha=-1)  # one pass: err x row, subtracted
            errors[:, i] = err
        w[:, end:] -= errors @ factor[start:end, end:]
    restored = torch.empty_like(q)
    restored[:, order] = q
    return restored, scales
