"""The torch operations of the clean-room reference forward, on weights passed in (no tensor names here).

Semantics are mistral-inference's (the shape of mlx-examples' `llms/mixtral/mixtral.py`): RMSNorm in
float32; RoPE on interleaved pairs as a complex rotation by `pos * theta^(-2i/D)`, in float32; GQA with kv
heads repeated (repeat_interleave), scale `head_dim^-0.5`, causal mask, a sliding window W keeping the last
W keys; SwiGLU feed-forward `w2(silu(w1 x) * w3 x)`. The families (`hubtools.families`) assemble these into
their blocks, naming the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`x * rsqrt(mean(x^2) + eps) * w`, normalised in float32 and cast back before the weight."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Unit complex numbers `exp(i * pos * theta^(-2i/D))`, shape `[seq, head_dim // 2]`, float32.

    Example:
        >>> rotary_angles(torch.arange(3), 4, 1e4).shape
        torch.Size([3, 2])
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = torch.outer(positions.to(torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs `(x[2i], x[2i+1])` of `x [batch, seq, heads, head_dim]` by `cis [seq, D/2]`."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = torch.view_as_real(pairs * cis[None, :, None, :]).flatten(3)
    return rotated.type_as(x)


def attention_mask(positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """Additive float32 mask `[seq, seq]`: 0 where query i may see key j (j <= i, and i - j < window).

    Sequences packed back to back (positions restarting at 0) see only themselves: block-diagonal causal.

    Example:
        >>> (attention_mask(torch.tensor([0, 1, 0, 1]), None) == 0).int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    """
    distance = positions[:, None] - positions[None, :]
    sequence = torch.cumsum(positions == 0, 0)
    allowed = (distance >= 0) & (sequence[:, None] == sequence[None, :])
    if window is not None:
        allowed &= distance < window
    return torch.zeros(allowed.shape, device=positions.device).masked_fill(~allowed, float("-inf"))


def grouped_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, head_dim: int
) -> torch.Tensor:
    """Softmax attention of `q [b, s, heads, d]` over `k`, `v [b, s, kv_heads, d]` (kv heads repeated)."""
    batch, seq, heads, _ = q.shape
    k = k.repeat_interleave(heads // k.shape[2], dim=2)
    v = v.repeat_interleave(heads // v.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
    probs = torch.softmax(scores.float() + mask, dim=-1).type_as(q)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, heads * head_dim)


def swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """`w2(silu(w1 x) * w3 x)`: the feed-forward block (and each expert)."""
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def top_k_routing(x: torch.Tensor, gate: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens as rows `[n, dim]`, the k experts chosen per token, and their softmax weights (over the k)."""
    flat = x.reshape(-1, x.shape[-1])
    top, chosen = torch.topk(F.linear(flat, gate), k, dim=-1)
    return flat, chosen, torch.softmax(top.float(), dim=-1).type_as(x)
