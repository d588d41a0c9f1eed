"""Issue 19's scale check on paper: what convert and verify would read, write, hold and take for Mistral Small 4
(119B) and Mistral Large 3 (675B), from the real dimensions in their recipes (`converters/*.yaml`).

Counted per weight from the recipe's params.json fields (MLA ranks, experts, leading dense layers, vision
encoder), so it runs without a checkpoint and without the model families. The rates are hubtools' measured
figures quoted in README.md's Performance section (Mixtral-shaped checkpoints, 2 cores, VM disk):
- convert: 0.75 s per GB (the marginal cost per extra GB, best runs) + 0.30 s per GB for the sha256 ownership
  record = 1.05 s per GB written;
- verify: 1.5 s per GB (bfloat16 compute) and 1.8 s per GB (float32), per GB of one checkpoint, cold cache.
Dequantizing to bfloat16 is costed at convert's rate per GB written: an assumption (not measured; it passes each
weight through user space, which the kept path does not). The peer is transformers' `convert_mistral4_weight_to_hf.py`,
which loads the whole model into RAM.

Run: `python bench/scale_on_paper.py [--json]` (prints the README table).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RELEASES = ("mistral-small-4-119b-2603", "mistral-large-3-675b-instruct-2512")
CONVERT_S_PER_GB = 0.75 + 0.30  # README: marginal convert cost + the ownership record's hash
VERIFY_S_PER_GB = {"bfloat16": 1.5, "float32": 1.8}  # README: verify's extra cost per GB, cold cache
VERIFY_OVERHEAD_GB = 1.4  # README: verify's peak beyond one layer is ~0.4-1.4 GB
GB = 1e9


@dataclass(frozen=True)
class Weights:
    """Parameter counts of one release, split by what is stored in FP8 and what stays 16-bit."""

    fp8: int  # quantized linear weights (1 byte each in the release)
    wide: int  # embeddings, norms, router, lm_head, vision tower, unquantized projections (2 bytes each)
    active: int  # what one token reads (all but the experts its router leaves out)
    scales: int  # FP8 scale bytes (per-tensor: 2 scalars per weight; block 128x128: one float32 per block)
    largest_tensor: int  # parameters of the largest single native tensor (the token embedding or output)
    layer_experts: int  # parameters of one MoE layer's routed experts (what transformers fuses)
    layer_other: int  # one MoE layer's attention, shared expert, router and norms
    expert: int  # one routed expert
    fused_gate_up: int  # one layer's fused gate_up_proj: E x 2I x H

    @property
    def total(self) -> int:
        return self.fp8 + self.wide


def weights(expect: dict[str, Any]) -> Weights:
    """Count a release's weights from its params.json fields (MLA + MoE + vision; see the module docstring)."""
    dim, heads, vocab, layers = expect["dim"], expect["n_heads"], expect["vocab_size"], expect["n_layers"]
    nope, rope, v = expect["qk_nope_head_dim"], expect["qk_rope_head_dim"], expect["v_head_dim"]
    q_lora, kv_lora = expect["q_lora_rank"], expect["kv_lora_rank"]
    moe = expect["moe"]
    experts, top_k, inter = moe["num_experts"], moe["num_experts_per_tok"], moe["expert_hidden_dim"]
    shared, dense = moe["num_shared_experts"], moe["first_k_dense_replace"]
    block = "quantization_config" in expect  # Large 3: compressed-tensors FP8 blocks, q_a / kv_a kept 16-bit
    q_a, kv_a = q_lora * dim, (kv_lora + rope) * dim
    q_b, kv_b, wo = heads * (nope + rope) * q_lora, heads * (nope + v) * kv_lora, dim * heads * v
    attention_fp8 = q_b + kv_b + wo + (0 if block else q_a + kv_a)
    attention_wide = q_lora + kv_lora + 2 * dim + (q_a + kv_a if block else 0)  # norms (+ kept projections)
    expert = 3 * dim * inter
    moe_layers = layers - dense
    fp8 = layers * attention_fp8 + dense * 3 * dim * expect["hidden_dim"] + moe_layers * (experts + shared) * expert
    router = dim * experts
    vision = vision_weights(expect.get("vision_encoder"), dim)
    wide = layers * attention_wide + moe_layers * router + 2 * vocab * dim + dim + vision
    quantized_tensors = layers * (5 if not block else 3) + dense * 3 + moe_layers * 3 * (experts + shared)
    scales = math.ceil(fp8 / (128 * 128)) * 4 if block else quantized_tensors * 2 * 2
    inactive = moe_layers * (experts - top_k) * expert
    return Weights(
        fp8=fp8,
        wide=wide,
        active=fp8 + wide - inactive,
        scales=scales,
        largest_tensor=vocab * dim,
        layer_experts=experts * expert,
        layer_other=q_a + kv_a + q_b + kv_b + wo + shared * expert + router + 2 * dim + q_lora + kv_lora,
        expert=expert,
        fused_gate_up=experts * 2 * inter * dim,
    )


def vision_weights(vision: dict[str, Any] | None, text_dim: int) -> int:
    """The Pixtral encoder, its patch merger and the projector to the text width (no biases)."""
    if not vision:
        return 0
    hidden, inter, depth = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    patch = vision["num_channels"] * vision["patch_size"] ** 2 * hidden
    layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    merge = vision.get("spatial_merge_size", 1)
    merger = hidden * hidden * merge * merge + hidden if vision.get("mm_projector_id") == "patch_merge" else 0
    return patch + hidden + depth * layer + merger + text_dim * hidden + text_dim * text_dim


def scale_check(name: str) -> dict[str, Any]:
    """The figures of one release: counts, bytes, peak memory, wall time, against the peer's RAM."""
    recipe = yaml.safe_load((ROOT / "converters" / f"{name}.yaml").read_text(encoding="utf-8"))
    w = weights(recipe["expect"])
    release = w.fp8 + 2 * w.wide + w.scales  # the FP8 release's bytes
    bf16 = 2 * w.total
    convert = {
        "fp8_kept": {"read": release, "written": release, "seconds": release / GB * CONVERT_S_PER_GB},
        "to_bfloat16": {"read": release, "written": bf16, "seconds": bf16 / GB * CONVERT_S_PER_GB},
        "peak_one_tensor_bf16": 2 * w.largest_tensor,
        "peak_fused_gate_up_fp8": w.fused_gate_up,
        "peak_fused_gate_up_bf16": 2 * w.fused_gate_up,
    }
    verify = {
        dtype: {
            "peak": size * (w.layer_experts + w.layer_other + w.expert) + VERIFY_OVERHEAD_GB * GB,
            "seconds": release / GB * rate,
        }
        for dtype, size, rate in (
            ("bfloat16", 2, VERIFY_S_PER_GB["bfloat16"]),
            ("float32", 4, VERIFY_S_PER_GB["float32"]),
        )
    }
    peer = {"ram_fp8": release, "ram_bfloat16": bf16}
    return {"release": name, "weights": asdict(w), "total": w.total, "convert": convert, "verify": verify, "peer": peer}


def _gb(n: float) -> str:
    return f"{n / GB:,.1f} GB"


def _time(seconds: float) -> str:
    return f"{seconds / 60:,.0f} min" if seconds < 3600 else f"{seconds / 3600:,.1f} h"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table."""
    lines = [
        "| | " + " | ".join(r["release"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]

    def row(label: str, value: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(value(r) for r in rows) + " |")

    row("parameters (total / active)", lambda r: f"{r['total'] / GB:,.1f}B / {r['weights']['active'] / GB:,.1f}B")
    row("release size (FP8 + 16-bit rest)", lambda r: _gb(r["convert"]["fp8_kept"]["read"]))
    row(
        "convert, FP8 kept: read / written",
        lambda r: f"{_gb(r['convert']['fp8_kept']['read'])} / {_gb(r['convert']['fp8_kept']['written'])}",
    )
    row(
        "convert, --dtype bfloat16: read / written",
        lambda r: f"{_gb(r['convert']['to_bfloat16']['read'])} / {_gb(r['convert']['to_bfloat16']['written'])}",
    )
    row("convert peak: largest tensor (bf16)", lambda r: _gb(r["convert"]["peak_one_tensor_bf16"]))
    row(
        "convert peak if a layer's fused gate_up were held (FP8 / bf16)",
        lambda r: f"{_gb(r['convert']['peak_fused_gate_up_fp8'])} / {_gb(r['convert']['peak_fused_gate_up_bf16'])}",
    )
    row(
        "convert wall, FP8 kept / to bf16",
        lambda r: f"{_time(r['convert']['fp8_kept']['seconds'])} / {_time(r['convert']['to_bfloat16']['seconds'])}",
    )
    row(
        "verify peak, bf16 / f32 compute",
        lambda r: f"{_gb(r['verify']['bfloat16']['peak'])} / {_gb(r['verify']['float32']['peak'])}",
    )
    row(
        "verify wall, bf16 / f32 compute",
        lambda r: f"{_time(r['verify']['bfloat16']['seconds'])} / {_time(r['verify']['float32']['seconds'])}",
    )
    row(
        "peer script RAM (whole model: FP8 / bf16)",
        lambda r: f"{_gb(r['peer']['ram_fp8'])} / {_gb(r['peer']['ram_bfloat16'])}",
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    parser.add_argument("releases", nargs="*", default=list(RELEASES), help="recipe names (default: Small 4, Large 3)")
    args = parser.parse_args(argv)
    rows = [scale_check(name) for name in args.releases]
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return rows


if __name__ == "__main__":
    main()
