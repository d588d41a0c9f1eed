"""A release's params.json scaled down in width and depth only, for the recipe tests (`test_release_recipes.py`).

What stays: the head structure (query heads per key/value head), every special field (YaRN, llama-4 scaling,
tied embeddings, window lists, FP8, MoE routing and expert counts, leading dense layers, the vision encoder's
patch geometry and merger), context lengths and rotary bases. What shrinks: widths (model, FFN, heads' size,
MLA ranks, vocabulary, vision width; a block-FP8 release's experts keep a whole 128-row block) and depth
(the fewest layers that keep a window pattern or the leading dense layers plus one MoE layer; one vision layer).
"""

from __future__ import annotations

import copy
from typing import Any

WIDTH = 64  # model and FFN widths are divided by this
HEAD = 8  # head sizes and rotary slices by this
KV_HEADS = 2  # at most this many key/value heads; query heads keep their ratio to them
VOCAB = 128  # the vocabulary by this
VISION_HEAD = 16  # the vision encoder's head size (its 2-D rotary needs a multiple of 4)


def scaled_params(raw: dict[str, Any]) -> dict[str, Any]:
    """A params.json of the same shape as `raw` (a release's), scaled down (see the module docstring)."""
    out = copy.deepcopy(raw)
    for key in ("dim", "hidden_dim"):
        out[key] = raw[key] // WIDTH
    kv = raw.get("n_kv_heads") or raw["n_heads"]
    out["n_kv_heads"] = min(kv, KV_HEADS)
    out["n_heads"] = out["n_kv_heads"] * (raw["n_heads"] // kv)
    for key in ("head_dim", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
        if raw.get(key) is not None:
            out[key] = raw[key] // HEAD
    for key in ("q_lora_rank", "kv_lora_rank"):
        if raw.get(key) is not None:
            out[key] = raw[key] // WIDTH
    out["vocab_size"] = raw["vocab_size"] // VOCAB
    moe = raw.get("moe")
    dense = 0
    if isinstance(moe, dict):
        out["moe"]["expert_hidden_dim"] = moe["expert_hidden_dim"] // WIDTH
        if raw.get("quantization_config"):  # FP8 blocks: transformers fuses w1 and w3 block grids, so whole blocks
            out["moe"]["expert_hidden_dim"] = max(out["moe"]["expert_hidden_dim"], 128)
        dense = moe.get("first_k_dense_replace", 0)
    windows = raw.get("sliding_window")
    period = len(windows) if isinstance(windows, list) else 1
    out["n_layers"] = max(2, dense + 1, period)
    vision = raw.get("vision_encoder")
    if isinstance(vision, dict):
        heads = 2
        ratio = vision["intermediate_size"] // vision["hidden_size"]
        out["vision_encoder"].update(
            hidden_size=heads * VISION_HEAD,
            num_attention_heads=heads,
            intermediate_size=ratio * heads * VISION_HEAD,
            num_hidden_layers=1,
        )
    return out
