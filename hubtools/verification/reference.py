"""A small, clean-room torch forward of Mistral / Mixtral on NATIVE tensor names and native rotary.

Semantics are mistral-inference's (the shape of mlx-examples' `llms/mixtral/mixtral.py`):
RMSNorm in float32; RoPE on interleaved pairs as a complex rotation by `pos * theta^(-2i/D)`, in
float32; GQA with kv heads repeated (repeat_interleave), scale `head_dim^-0.5`, causal mask, a sliding
window W keeping the last W keys; MoE: gate logits -> top-k -> softmax over those k -> sum of
`weight * w2(silu(w1 x) * w3 x)`; pre-norm residual blocks; final norm; output projection.

It runs layer by layer: every function takes `get(native_name) -> Tensor`, which loads one tensor on
demand (already in the compute dtype), so only one layer's weights (for MoE: one expert's) need to be
in memory at a time. Hidden states are `[batch, seq, dim]`; sequences are right-padded, which a causal
mask makes harmless for the real positions, or packed in one row with positions restarting at 0 for
each (`attention_mask` then keeps each within itself).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hubtools.model.params import ModelParams

Getter = Callable[[str], torch.Tensor]


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
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
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
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


def attention(
    x: torch.Tensor, prefix: str, get: Getter, params: ModelParams, cis: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Grouped-query self-attention of one layer (`prefix` = "layers.N.attention.")."""
    batch, seq, _ = x.shape
    heads, kv_heads, head_dim = params.n_heads, params.n_kv_heads, params.head_dim
    q = F.linear(x, get(prefix + "wq.weight")).view(batch, seq, heads, head_dim)
    k = F.linear(x, get(prefix + "wk.weight")).view(batch, seq, kv_heads, head_dim)
    v = F.linear(x, get(prefix + "wv.weight")).view(batch, seq, kv_heads, head_dim)
    q, k = apply_rotary(q, cis), apply_rotary(k, cis)
    k = k.repeat_interleave(heads // kv_heads, dim=2)
    v = v.repeat_interleave(heads // kv_heads, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
    probs = torch.softmax(scores.float() + mask, dim=-1).type_as(x)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, heads * head_dim)
    return F.linear(out, get(prefix + "wo.weight"))


def swiglu(x: torch.Tensor, prefix: str, get: Getter) -> torch.Tensor:
    """`w2(silu(w1 x) * w3 x)` for the feed-forward (or expert) whose names start with `prefix`."""
    gate = F.silu(F.linear(x, get(prefix + "w1.weight")))
    return F.linear(gate * F.linear(x, get(prefix + "w3.weight")), get(prefix + "w2.weight"))


def mixture_of_experts(x: torch.Tensor, prefix: str, get: Getter, params: ModelParams) -> torch.Tensor:
    """Top-k routed experts; softmax over the k chosen gate logits. Loads only experts that are chosen."""
    flat, chosen, weights = route(x, prefix, get, params)
    out = torch.zeros_like(flat)
    for expert in range(params.num_experts):
        add_expert(out, flat, chosen, weights, f"{prefix}experts.{expert}.", expert, get)
    return out.view_as(x)


def route(
    x: torch.Tensor, prefix: str, get: Getter, params: ModelParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The router: tokens as rows `[n, dim]`, the k experts chosen per token, and their softmax weights."""
    flat = x.reshape(-1, x.shape[-1])
    logits = F.linear(flat, get(prefix + "gate.weight"))
    top, chosen = torch.topk(logits, params.num_experts_per_tok, dim=-1)
    return flat, chosen, torch.softmax(top.float(), dim=-1).type_as(x)


def add_expert(
    out: torch.Tensor,
    flat: torch.Tensor,
    chosen: torch.Tensor,
    weights: torch.Tensor,
    prefix: str,
    expert: int,
    get: Getter,
) -> None:
    """Add expert `expert`'s weighted output (names under `prefix`) for the tokens routed to it, in place."""
    rows, slot = torch.where(chosen == expert)
    if rows.numel():
        y = swiglu(flat[rows], prefix, get)
        out.index_add_(0, rows, weights[rows, slot, None] * y)


def embed(tokens: torch.Tensor, get: Getter) -> torch.Tensor:
    """Token ids `[batch, seq]` -> hidden states `[batch, seq, dim]`."""
    return get("tok_embeddings.weight")[tokens]


def layer_forward(
    h: torch.Tensor, layer: int, get: Getter, params: ModelParams, positions: torch.Tensor, *, rope_theta: float
) -> torch.Tensor:
    """One pre-norm decoder block: `h + attn(norm(h))`, then `+ ffn(norm(.))`.

    Args:
        h: hidden states `[batch, seq, dim]` in the compute dtype.
        get: loads a native tensor by name, in the compute dtype.
        positions: `[seq]` positions of the sequence (0..seq-1 for a prompt).
        rope_theta: the rotary base; explicit because params.json may omit it.
    """
    prefix = f"layers.{layer}."
    h = attention_block(h, layer, get, params, positions, rope_theta=rope_theta)
    normed = rms_norm(h, get(prefix + "ffn_norm.weight"), params.norm_eps)
    if params.is_moe:
        return h + mixture_of_experts(normed, prefix + "feed_forward.", get, params)
    return h + swiglu(normed, prefix + "feed_forward.", get)


def attention_block(
    h: torch.Tensor, layer: int, get: Getter, params: ModelParams, positions: torch.Tensor, *, rope_theta: float
) -> torch.Tensor:
    """The first half of a decoder block: `h + attn(norm(h))`."""
    prefix = f"layers.{layer}."
    cis = rotary_angles(positions, params.head_dim, rope_theta)
    mask = attention_mask(positions, params.sliding_window)
    normed = rms_norm(h, get(prefix + "attention_norm.weight"), params.norm_eps)
    return h + attention(normed, prefix + "attention.", get, params, cis, mask)


def head(h: torch.Tensor, get: Getter, params: ModelParams) -> torch.Tensor:
    """Final norm and output projection: hidden states -> logits `[batch, seq, vocab]`."""
    return F.linear(rms_norm(h, get("norm.weight"), params.norm_eps), get("output.weight"))


@torch.no_grad()
def forward(tokens: torch.Tensor, get: Getter, params: ModelParams, *, rope_theta: float) -> torch.Tensor:
    """The whole model, still one layer's weights at a time: token ids `[batch, seq]` -> logits.

    Example:
        >>> from hubtools.testing import synthetic_tensors, tiny_params
        >>> p = tiny_params(vocab_size=50)
        >>> w = dict(synthetic_tensors(p, dtype=torch.float32))
        >>> forward(torch.tensor([[1, 2, 3]]), w.__getitem__, p, rope_theta=1e6).shape
        torch.Size([1, 3, 50])
    """
    positions = torch.arange(tokens.shape[1])
    h = embed(tokens, get)
    for layer in range(params.n_layers):
        h = layer_forward(h, layer, get, params, positions, rope_theta=rope_theta)
    return head(h, get, params)
