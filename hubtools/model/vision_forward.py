"""The clean-room Pixtral encoder and projector on native names, from mistral-inference's published formulas.

- stem: each image `[C, H, W]` through the patch convolution (stride = kernel = patch), its patch grid
  flattened row by row, all images concatenated into one sequence, RMSNorm (`ln_pre`);
- 2-D rotary: head_dim/2 frequencies `theta^(-2i/D)`; the even-indexed ones rotate by the patch's row, the
  odd-indexed ones by its column, on interleaved pairs (complex rotation);
- attention is bidirectional and block-diagonal (each image sees only itself); pre-norm blocks with a SwiGLU
  feed-forward, epsilon 1e-5;
- projector: RMSNorm (`pre_mm_projector_norm`) then the patch merger (each `s x s` block of an image's grid
  unfolded channel-major into one vector, then `merging_layer`) where present, then the adapter
  `w_out(gelu(w_in x))`.

Blocks load weights through `get(native_name)`; the rows come from `hubtools.model.vision`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hubtools.model import ops
from hubtools.model.family import Getter
from hubtools.model.vision import (
    LN_PRE,
    MERGER,
    NORM_EPS,
    PATCH_CONV,
    PRE_NORM,
    V_ATTENTION_NORM,
    V_FFN_NORM,
    V_W1,
    V_W2,
    V_W3,
    V_WK,
    V_WO,
    V_WQ,
    V_WV,
    W_IN,
    W_IN_BIAS,
    W_OUT,
    W_OUT_BIAS,
    VisionParams,
)


def patch_grids(images: list[torch.Tensor], patch: int) -> list[tuple[int, int]]:
    """Each image's patch grid (rows, columns)."""
    return [(img.shape[-2] // patch, img.shape[-1] // patch) for img in images]


def stem(images: list[torch.Tensor], get: Getter, vision: VisionParams) -> torch.Tensor:
    """Images -> the normalised patch sequence `[patches, hidden]` (all images back to back)."""
    conv = get(PATCH_CONV.native_name())
    patches = [F.conv2d(img[None].to(conv.dtype), conv, stride=vision.patch_size)[0] for img in images]
    flat = torch.cat([p.flatten(1).T for p in patches])
    return ops.rms_norm(flat, get(LN_PRE.native_name()), NORM_EPS)


def rotary_2d(grids: list[tuple[int, int]], vision: VisionParams) -> torch.Tensor:
    """Unit complex numbers `[patches, head_dim // 2]`: row angles on even frequencies, column angles on odd."""
    dim = vision.head_dim
    freqs = 1.0 / (vision.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    rows = torch.cat([torch.arange(h).repeat_interleave(w) for h, w in grids]).float()
    cols = torch.cat([torch.arange(w).repeat(h) for h, w in grids]).float()
    angles = torch.cat([torch.outer(rows, freqs[0::2]), torch.outer(cols, freqs[1::2])], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def block_mask(grids: list[tuple[int, int]]) -> torch.Tensor:
    """Additive float32 mask `[patches, patches]`: 0 within an image, -inf across images."""
    image = torch.cat([torch.full((h * w,), i) for i, (h, w) in enumerate(grids)])
    return torch.zeros(len(image), len(image)).masked_fill(image[:, None] != image[None, :], float("-inf"))


def encoder_layer(
    h: torch.Tensor, layer: int, get: Getter, vision: VisionParams, cis: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """One pre-norm encoder block on `h [patches, hidden]`."""
    heads, head_dim = vision.num_attention_heads, vision.head_dim
    x = ops.rms_norm(h, get(V_ATTENTION_NORM.native_name(layer)), NORM_EPS)[None]
    q, k, v = (F.linear(x, get(r.native_name(layer))).view(1, -1, heads, head_dim) for r in (V_WQ, V_WK, V_WV))
    q, k = ops.apply_rotary(q, cis), ops.apply_rotary(k, cis)
    h = h + F.linear(ops.grouped_query_attention(q, k, v, mask, head_dim)[0], get(V_WO.native_name(layer)))
    x = ops.rms_norm(h, get(V_FFN_NORM.native_name(layer)), NORM_EPS)
    w1, w2, w3 = (get(r.native_name(layer)) for r in (V_W1, V_W2, V_W3))
    return h + ops.swiglu(x, w1, w2, w3)


def merge_patches(x: torch.Tensor, grids: list[tuple[int, int]], size: int) -> torch.Tensor:
    """Each image's `size x size` blocks (row-major over blocks) as vectors `[blocks, hidden * size**2]`, the
    hidden channel outermost and the position in the block innermost (row, then column)."""
    out = []
    for tokens, (h, w) in zip(x.split([h * w for h, w in grids]), grids, strict=True):
        grid = tokens.view(h // size, size, w // size, size, -1)  # block row, in-block row, block col, col, d
        out.append(grid.permute(0, 2, 4, 1, 3).reshape((h // size) * (w // size), -1))
    return torch.cat(out)


def project(features: torch.Tensor, grids: list[tuple[int, int]], get: Getter, vision: VisionParams) -> torch.Tensor:
    """Encoder output `[patches, hidden]` -> image embeddings `[image tokens, dim]` in the text width."""
    if vision.has_patch_merger:
        features = ops.rms_norm(features, get(PRE_NORM.native_name()), NORM_EPS)
        merged = merge_patches(features, grids, vision.spatial_merge_size)
        features = F.linear(merged, get(MERGER.native_name()))
    bias_in = get(W_IN_BIAS.native_name()) if vision.adapter_bias else None
    bias_out = get(W_OUT_BIAS.native_name()) if vision.adapter_bias else None
    hidden = F.gelu(F.linear(features, get(W_IN.native_name()), bias_in))
    return F.linear(hidden, get(W_OUT.native_name()), bias_out)


def image_token_layout(rows: int, cols: int, vision: VisionParams) -> list[int]:
    """mistral-common's tokens for one image of `rows x cols` image tokens: each row of `[IMG]` ends in
    `[IMG_BREAK]`, the last in `[IMG_END]` (ids 12 and 13, tekken's, where params.json omits them)."""
    brk = vision.image_break_token_id if vision.image_break_token_id is not None else 12
    end = vision.image_end_token_id if vision.image_end_token_id is not None else 13
    tokens = []
    for _ in range(rows):
        tokens += [vision.image_token_id] * cols + [brk]
    tokens[-1] = end
    return tokens
