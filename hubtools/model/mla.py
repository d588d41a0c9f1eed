"""The torch operations of the Mistral 4 reference forward (multi-head latent attention, YaRN, grouped
routing), on weights passed in; the family (`hubtools.families.mistral4`) names the weights.

Semantics are those of the runtime that reads the native format (vLLM: `DeepseekV2Attention` with
`is_neox_style=False`, `grouped_topk` without a correction bias, as `transformers_utils/configs/mistral.py`
configures them for a params.json with `moe` and `qk_nope_head_dim`):

- rotary only on the last `qk_rope_head_dim` of each query head and on the single shared rope key, pairs
  interleaved (native order), frequencies by YaRN; softmax scale `qk_head_dim^-0.5 * mscale^2` with
  `mscale = 0.1 * ln(factor) + 1` (`mscale_all_dim` 1), the cos/sin unscaled;
- the query scaled by `1 + beta * ln(1 + floor(pos / original_max))` where params.json has `llama_4_scaling`;
- routing: softmax over the router logits (float32); each group scored by its best expert; the
  `num_expert_groups_per_tok` best groups kept; the top-k experts among them; their softmax weights
  renormalised to sum 1, then multiplied by `routed_scale`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def yarn_inverse_frequencies(
    dim: int, base: float, factor: float, original_max: int, beta_fast: float, beta_slow: float
) -> torch.Tensor:
    """YaRN's per-pair inverse frequencies `[dim // 2]`: the fast pairs kept, the slow ones divided by `factor`,
    a linear ramp between (the correction range rounded outwards, as vLLM and transformers do)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    extrapolated = 1.0 / base**exponents
    interpolated = 1.0 / (factor * base**exponents)

    def correction(rotations: float) -> float:
        return (dim * math.log(original_max / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = float(max(math.floor(correction(beta_fast)), 0))
    high = float(min(math.ceil(correction(beta_slow)), dim - 1))
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    return interpolated * (1 - keep) + extrapolated * keep


def yarn_mscale(factor: float) -> float:
    """`0.1 * ln(factor) + 1` (1 for factor <= 1): applied squared to the softmax scale."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def rotation(positions: torch.Tensor, inverse_frequencies: torch.Tensor) -> torch.Tensor:
    """Unit complex numbers `exp(i * pos * f)`, `[seq, pairs]`, for `ops.apply_rotary`."""
    angles = torch.outer(positions.to(torch.float32), inverse_frequencies)
    return torch.polar(torch.ones_like(angles), angles)


def llama_4_query_scale(positions: torch.Tensor, beta: float, original_max: int) -> torch.Tensor:
    """`1 + beta * ln(1 + floor(pos / original_max))` per position, `[seq]` (1 below `original_max`)."""
    return 1 + beta * torch.log1p(torch.floor(positions.to(torch.float32) / original_max))


def latent_attention(
    q: torch.Tensor, k_rope: torch.Tensor, k_nope: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Softmax attention of `q [b, s, h, nope + rope]` over keys `[k_nope [b, s, h, nope], k_rope [b, s, 1, rope]]`
    (the rope key shared by every head), values `v [b, s, h, v]` -> `[b, s, h * v]`."""
    batch, seq, heads, _ = q.shape
    nope = k_nope.shape[-1]
    scores = torch.einsum("bqhd,bkhd->bhqk", q[..., :nope], k_nope)
    scores = scores + torch.einsum("bqhd,bkd->bhqk", q[..., nope:], k_rope[:, :, 0])
    probs = torch.softmax(scores.float() * scale + mask, dim=-1).type_as(q)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, heads * v.shape[-1])


def grouped_top_k(
    x: torch.Tensor, gate: torch.Tensor, k: int, *, groups: int, groups_per_token: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens as rows `[n, dim]`, the k experts chosen per token `[n, k]`, and their weights `[n, k]`.

    Example:
        >>> x, gate = torch.eye(4), torch.eye(4) * 5
        >>> _, chosen, weights = grouped_top_k(x, gate, 1, groups=2, groups_per_token=1, scale=2.0)
        >>> chosen.flatten().tolist(), weights.flatten().tolist()
        ([0, 1, 2, 3], [2.0, 2.0, 2.0, 2.0])
    """
    flat = x.reshape(-1, x.shape[-1])
    scores = torch.softmax(F.linear(flat, gate).float(), dim=-1)
    per_group = scores.view(flat.shape[0], groups, -1)
    best_groups = per_group.amax(-1).topk(groups_per_token, dim=-1).indices
    allowed = torch.zeros_like(per_group[..., 0], dtype=torch.bool).scatter_(1, best_groups, True)
    candidates = scores.masked_fill(~allowed.repeat_interleave(per_group.shape[-1], dim=1), 0.0)
    chosen = candidates.topk(k, dim=-1).indices
    weights = scores.gather(1, chosen)
    weights = weights / weights.sum(-1, keepdim=True) * scale
    return flat, chosen, weights.type_as(x)
