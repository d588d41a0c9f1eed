"""One quantization run for bench/quantize.py and bench/quantize_peer.py, in its own process (so its peak RSS and
time are its own), fed the exact token rows the harness wrote (`--rows rows.json`): the same calibration for
every tool.

    llm-compressor (its own venv):  /work/peer/llmc-venv/bin/python bench/quantize_worker.py llmc HF OUT ...
    hubtools (a tree on PYTHONPATH): python bench/quantize_worker.py hubtools SRC OUT ...

llm-compressor: `oneshot` with GPTQModifier, or AWQ (its transform modifier + QuantizationModifier) with
`--awq-mappings router`: explicit Mixtral mappings whose post-attention-norm balance layers include the router
(`mlp.gate`), so the router computes what it computed before scaling, or `default`: its own mappings for the
architecture (Mixtral is not in its registry: the dense default, whose post-attention norm is scaled without the
router). Every expert sees every token (`moe_calibrate_all_experts`, its default). The grid is symmetric, like
hubtools' (`--asymmetric` for its W4A16_ASYM grid). Its `IntermediatesCache.pin_memory` asks for an accelerator;
on CPU it is made a no-op. Output: `save_pretrained(..., save_compressed=True)` (compressed-tensors
pack-quantized).

hubtools: `hubtools.quantization.run.quantize(..., rows=ROWS)`: the rows in place of its own calibration encoding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _scheme(bits: int, group_size: int, symmetric: bool) -> dict[str, Any]:
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": group_size}
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


IGNORE = ["lm_head", "re:.*mlp.gate$", "re:.*block_sparse_moe.gate$"]


def _awq_mappings(moe: bool) -> list[Any]:
    from llmcompressor.modifiers.transform.awq import AWQMapping

    mlp_in = (
        ["re:.*mlp.gate$", "re:.*experts.*.gate_proj$", "re:.*experts.*.up_proj$"]
        if moe
        else [
            "re:.*gate_proj$",
            "re:.*up_proj$",
        ]
    )
    return [
        AWQMapping("re:.*input_layernorm$", ["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"]),
        AWQMapping("re:.*v_proj$", ["re:.*o_proj$"]),
        AWQMapping("re:.*post_attention_layernorm$", mlp_in),
        AWQMapping("re:.*up_proj$", ["re:.*down_proj$"]),
    ]


def run_llmc(src: Path, out: Path, rows: list[list[int]], args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.pipelines import cache
    from transformers import AutoModelForCausalLM

    cache.IntermediatesCache.pin_memory = lambda self, *a, **k: None  # type: ignore[method-assign]
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16)
    moe = getattr(model.config, "num_local_experts", 0) > 0
    data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    scheme = _scheme(args.bits, args.group_size, not args.asymmetric)
    if args.method == "gptq":
        recipe: list[Any] = [GPTQModifier(config_groups=scheme, ignore=IGNORE)]
    else:
        from llmcompressor.modifiers.transform.awq import AWQModifier

        awq = AWQModifier(mappings=_awq_mappings(moe)) if args.awq_mappings == "router" else AWQModifier()
        recipe = [awq, QuantizationModifier(config_groups=scheme, ignore=IGNORE)]
    oneshot(
        model=model,
        dataset=data,
        recipe=recipe,
        num_calibration_samples=len(rows),
        max_seq_length=max(map(len, rows)),
        shuffle_calibration_samples=False,
        moe_calibrate_all_experts=True,
    )
    model.save_pretrained(str(out), save_compressed=True)


def run_hubtools(src: Path, out: Path, rows: list[list[int]], args: argparse.Namespace) -> None:
    from hubtools.quantization import run
    from hubtools.quantization.scheme import QuantizeOptions

    options = QuantizeOptions(
        method=args.method, bits=args.bits, group_size=args.group_size, samples=len(rows), awq_duo=args.awq_duo
    )
    run.quantize(src, out, options, rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=["llmc", "hubtools"])
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=Path, required=True, help="JSON list of token id rows")
    parser.add_argument("--method", choices=["gptq", "awq"], default="gptq")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--awq-mappings", choices=["router", "default"], default="router", help="llm-compressor's")
    parser.add_argument("--asymmetric", action="store_true", help="llm-compressor: a zero point per group")
    parser.add_argument("--awq-duo", action="store_true", help="hubtools: also try AWQ's duo scales")
    args = parser.parse_args()
    rows = json.loads(args.rows.read_text())
    started = time.perf_counter()
    runner = run_llmc if args.tool == "llmc" else run_hubtools
    runner(args.src, args.out, rows, args)
    print(json.dumps({"seconds": time.perf_counter() - started}), file=sys.stderr)


if __name__ == "__main__":
    main()
