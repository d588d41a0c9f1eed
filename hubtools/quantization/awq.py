"""AWQ (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration"): per input channel scales that protect the channels with large activations.

For a group of weights reading one input (`InputGroup`), with the mean magnitude `m` of each input
channel over the calibration tokens: for alpha on a grid in [0, 1), `s = m^alpha / sqrt(max * min)`; the
readers are rounded as `Q(W diag(s)) diag(s)^-1` and the alpha whose outputs stay closest to the original
ones on the calibration inputs wins (alpha 0 is plain rounding, so the search never does worse on them).
The output error of a reader is `||X E^T||^2 = sum((E G) * E)` with `E` its weight error and `G = X^T X`
the Gram matrix the GPTQ Hessian also needs, so no activation is stored.

The scales are then folded so the model's function is unchanged before rounding: the readers' columns are
multiplied by `s`, the source (the norm weight, or the rows of the linear making the input) divided by it,
and every passenger (the MoE router reading the same normalised input) has its columns multiplied by `s`
too, so it computes exactly what it computed before. Where a group has passengers the scales are rounded
to powers of two: dividing and multiplying by them is exact in any float format, so the router's logits
stay bit-identical, not merely close.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from hubtools.quantization.scheme import round_to_nearest


def output_error(w: torch.Tensor, deq: torch.Tensor, gram: torch.Tensor) -> float:
    """`||X (deq - w)^T||^2` from the Gram matrix `G = X^T X` of the inputs."""
    err = (deq - w).float()
    return float(((err @ gram) * err).sum())


def weight_magnitude(readers: Sequence[torch.Tensor], group_size: int) -> torch.Tensor:
    """Per input column, the mean over every reader's rows of `|w|` divided by its group's `max|w|`: the weight
    statistic of AWQ's "duo" scales (llm-compressor's `duo_scaling`)."""
    total, rows = torch.zeros(readers[0].shape[1], device=readers[0].device), 0
    for w in readers:
        grouped = w.float().abs().reshape(w.shape[0], -1, group_size)
        total += (grouped / (grouped.amax(-1, keepdim=True) + 1e-6)).reshape(w.shape).sum(0)
        rows += w.shape[0]
    return total / rows


def candidate_scales(
    magnitude: torch.Tensor, alpha: float, power_of_two: bool, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """AWQ's scales for one alpha: `m^alpha` (or, duo, `m^alpha / w^(1 - alpha)` with `w` from
    `weight_magnitude`) normalised by `sqrt(max * min)` (powers of two if asked)."""
    s = magnitude.float().clamp_min(1e-4).pow(alpha)
    if weights is not None:
        s = s / (weights.pow(1 - alpha) + 1e-4)
    s = s.clamp_min(1e-4)
    s = s / (s.max() * s.min()).sqrt()
    if power_of_two:
        s = torch.exp2(torch.round(torch.log2(s)))
    return s


class ScaleChoice(NamedTuple):
    """What the search chose for one group: the scales, the exponent, whether they are duo scales, and the
    output error relative to plain rounding's (1.0 when alpha 0 wins)."""

    scales: torch.Tensor
    alpha: float
    duo: bool
    error_vs_rtn: float


def search_scales(
    readers: Sequence[torch.Tensor],
    magnitude: torch.Tensor,
    gram: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    grid: int,
    power_of_two: bool,
    duo: bool = False,
) -> ScaleChoice:
    """The best scales for `readers [rows_i, columns]` reading one input; `duo` adds the duo candidates
    (`m^alpha / w^(1 - alpha)`, alpha in [0, 1]) to the plain ones (`m^alpha`, alpha in [0, 1))."""
    gram = gram.float()
    candidates: list[tuple[float, torch.Tensor | None]] = [(step / grid, None) for step in range(grid)]
    if duo:
        weights = weight_magnitude(readers, group_size)
        candidates += [(step / grid, weights) for step in range(grid + 1)]
    losses: list[tuple[float, float, torch.Tensor, bool]] = []
    for alpha, weights_or_none in candidates:
        s = candidate_scales(magnitude, alpha, power_of_two, weights_or_none)
        loss = 0.0
        for w in readers:
            deq, _ = round_to_nearest(w.float() * s, bits, group_size)
            loss += output_error(w, deq / s, gram)
        losses.append((loss, alpha, s, weights_or_none is not None))
    baseline = losses[0][0]  # alpha 0, plain scales: round-to-nearest
    loss, alpha, s, is_duo = min(losses, key=lambda c: c[0])  # the first of equals: rounding before any scaling
    return ScaleChoice(s, alpha, is_duo, loss / baseline if baseline > 0 else 1.0)


def clipped_round_to_nearest(
    w: torch.Tensor, gram: torch.Tensor, *, bits: int, group_size: int, grid: int = 20, shrink: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ's clipping search, then rounding: per row and group, the scale `ratio * max|w| / half-range`
    (ratio from 1 down to `shrink`) whose rounding error on the inputs, `e G_gg e^T` with `G_gg` the group's
    block of the Gram matrix, is smallest. Returns (dequantized weight, scales `[rows, groups]`)."""
    from hubtools.quantization.scheme import SCALE_DTYPE, code_range, fake_quantize

    rows, columns = w.shape
    groups = columns // group_size
    qmin, qmax = code_range(bits)
    grouped = w.float().reshape(rows, groups, group_size)
    blocks = torch.stack(
        [gram[g * group_size : (g + 1) * group_size, g * group_size : (g + 1) * group_size] for g in range(groups)]
    ).float()
    absmax = grouped.abs().amax(-1, keepdim=True)
    best_err = torch.full((rows, groups), float("inf"), device=w.device)
    best_deq, best_scale = torch.zeros_like(grouped), torch.ones(rows, groups, 1, device=w.device)
    for step in range(grid):
        ratio = 1.0 - (1.0 - shrink) * step / grid
        scale = (absmax * ratio / ((qmax - qmin) / 2)).to(SCALE_DTYPE).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        deq = fake_quantize(grouped, scale, bits)
        err = (deq - grouped).transpose(0, 1)  # [groups, rows, group_size]
        cost = (torch.bmm(err, blocks) * err).sum(-1).T
        better = cost < best_err
        best_err = torch.where(better, cost, best_err)
        best_deq = torch.where(better[..., None], deq, best_deq)
        best_scale = torch.where(better[..., None], scale, best_scale)
    return best_deq.reshape(rows, columns), best_scale.reshape(rows, groups)
