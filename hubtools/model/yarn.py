"""YaRN rotary scaling and llama-4 query scaling: the reference forward's operations, from the published formulas.

YaRN (Peng et al. 2023, arXiv:2309.00071, section 3 and eq. 21): each rotary frequency `theta^(-2i/D)` is
blended between extrapolation (kept) and interpolation (divided by `factor`) by a linear ramp over the
dimensions whose wavelength, in rotations per `original_max_position_embeddings` positions, lies between
`beta_fast` (above: kept) and `beta_slow` (below: interpolated). The correction dimension of `r` rotations
is `D * ln(L / (2 pi r)) / (2 ln theta)`, floored (fast) and ceiled (slow), clamped to `[0, D - 1]`. The
attention is sharpened by `mscale = 0.1 * ln(factor) + 1` applied to both q and k (so the logits by its
square) when `apply_scale` holds, else 1.

llama-4 scaling (Mistral's `llama_4_scaling`, vLLM's `_get_llama_4_attn_scale`): after the rotary, queries
are multiplied by `1 + beta * ln(1 + floor(pos / original_max_position_embeddings))` (1 within the original
context).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the forward, not with the params (convert runs without it)
    import torch


@dataclass(frozen=True)
class Yarn:
    """params.json's `yarn` object: `beta` is beta_fast, `alpha` beta_slow; `apply_scale` turns mscale on."""

    factor: float
    original_max_positions: int
    beta_fast: float
    beta_slow: float
    apply_scale: bool

    @property
    def mscale(self) -> float:
        """The factor on q and k: `0.1 * ln(factor) + 1` when applied (and factor > 1), else 1.

        Example:
            >>> round(Yarn(16.0, 16384, 32.0, 1.0, True).mscale, 6), Yarn(16.0, 16384, 32.0, 1.0, False).mscale
            (1.277259, 1.0)
        """
        if not self.apply_scale or self.factor <= 1:
            return 1.0
        return 0.1 * math.log(self.factor) + 1.0


def _correction_dim(rotations: float, head_dim: int, theta: float, positions: int) -> float:
    return head_dim * math.log(positions / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_frequencies(head_dim: int, theta: float, yarn: Yarn) -> torch.Tensor:
    """The blended inverse frequencies `[head_dim // 2]`, float32.

    Example:
        >>> import torch
        >>> f = yarn_frequencies(8, 1e4, Yarn(4.0, 64, 8.0, 1.0, True))
        >>> bool(f[0] == 1.0), round(float(f[-1]) * 4 / 1e4 ** -0.75, 5)
        (True, 1.0)
    """
    import torch

    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    kept = 1.0 / (theta**exponents)
    interpolated = kept / yarn.factor
    low = max(math.floor(_correction_dim(yarn.beta_fast, head_dim, theta, yarn.original_max_positions)), 0)
    high = min(math.ceil(_correction_dim(yarn.beta_slow, head_dim, theta, yarn.original_max_positions)), head_dim - 1)
    span = (high - low) or 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / span).clamp(0, 1)
    return kept * (1 - ramp) + interpolated * ramp


def yarn_rotary(positions: torch.Tensor, head_dim: int, theta: float, yarn: Yarn) -> torch.Tensor:
    """Complex rotations `mscale * exp(i * pos * f)` `[seq, head_dim // 2]` (see `ops.apply_rotary`)."""
    import torch

    angles = torch.outer(positions.to(torch.float32), yarn_frequencies(head_dim, theta, yarn))
    return torch.polar(torch.full_like(angles, yarn.mscale), angles)


def llama4_query_scale(positions: torch.Tensor, beta: float, original_max_positions: int) -> torch.Tensor:
    """`1 + beta * ln(1 + floor(pos / original))` per position `[seq]`, float32.

    Example:
        >>> import torch
        >>> [round(x, 5) for x in llama4_query_scale(torch.tensor([0, 15, 16, 48]), 0.1, 16).tolist()]
        [1.0, 1.0, 1.06931, 1.13863]
    """
    import torch

    blocks = torch.floor(positions.to(torch.float32) / original_max_positions)
    return 1 + beta * torch.log1p(blocks)
