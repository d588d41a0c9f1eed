"""Benchmark: Mistral Small 4 (MLA + MoE, FP8) convert and verify vs `cp`, transformers' script and loading whole.

Builds a native checkpoint with `--layers` MoE layers at Mistral Small 4's real dimensions (dim 4096, 32 heads,
q_lora 1024, kv_lora 256, rope 64 + nope 64, v 128, experts of hidden 2048 top-4, 1 shared expert; the
number of routed experts is `--experts`: 128 in the release, fewer here so that the bf16 variant and the
peer's whole-model copy fit a shared 24 GB machine; every tensor has its real shape) in bfloat16 and FP8, then
runs, as bench/mistral3.py does (same measurement, each method in its own process, interleaved):

- cp; `hubtools convert` (FP8 kept, experts fused with one scale per half); `--dtype bfloat16` (dequantized);
- peer: transformers' `convert_mistral4_weight_to_hf.py` (from `--peer`), once as published (outcome
  recorded), then with a shim for the module it imports that transformers 5.25 names differently, in its
  `--output_format fp8` and `bf16` modes;
- verify: `hubtools verify --dtype bfloat16` vs both models whole (native state dict + reference forward,
  `Mistral4ForCausalLM.from_pretrained` + its forward); for FP8, against the dequantized conversion (5.25's
  CPU loader does not dequantize fused FP8 experts, see the README);
- width: convert's peak memory on the FP8 checkpoint at dim 2048 and 4096 (one layer).

Needs the mistral4 family (`--tree` names a hubtools tree that has it, default this one).

    python bench/mistral4.py [--experts 32] [--layers 1] [--repeat 3] [--peer DIR] [--workdir .bench/mistral4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

SCRIPT = "convert_mistral4_weight_to_hf.py"


def mistral4_params(*, dim: int, layers: int, experts: int, vocab: int, fp8: bool, tiny: bool) -> dict[str, Any]:
    """A Mistral Small 4 params.json (2603): MLA, routed + 1 shared expert, one group, YaRN, llama-4 scaling.

    No leading dense layer: transformers' script cannot read one (its renamings omit feed_forward.*)."""
    heads, lora, rope, expert = (4, (32, 16), (16, 8, 16), 32) if tiny else (32, (1024, 256), (64, 64, 128), 2048)
    raw = {
        "dim": dim, "n_layers": layers, "hidden_dim": 3 * expert, "n_heads": heads, "n_kv_heads": heads,
        "norm_eps": 1e-6, "vocab_size": vocab, "rope_theta": 10000.0, "max_position_embeddings": 1048576,
        "q_lora_rank": lora[0], "kv_lora_rank": lora[1], "qk_rope_head_dim": rope[0], "qk_nope_head_dim": rope[1],
        "v_head_dim": rope[2],
        "moe": {"num_experts": experts, "num_experts_per_tok": 4, "expert_hidden_dim": expert,
                "num_shared_experts": 1, "routed_scale": 1.0, "num_expert_groups": 1,
                "num_expert_groups_per_tok": 1, "first_k_dense_replace": 0},
        "yarn": {"factor": 128.0, "original_max_position_embeddings": 8192, "beta": 32.0, "alpha": 1.0},
        "llama_4_scaling": {"beta": 0.1, "original_max_position_embeddings": 8192},
    }  # fmt: skip
    return {**raw, "quantization": {"qformat_weight": "fp8_e4m3", "qscheme_act": "TENSOR"}} if fp8 else raw


def main() -> None:
    import mistral3 as m3  # a sibling: bench/ is sys.path[0] when run as a script (as bench/release.py does)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=32, help="routed experts per layer (the release has 128)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32768, help="tekken truncated to this (the release: 131072)")
    parser.add_argument("--tiny", action="store_true", help="tiny attention/expert widths (the smoke test)")
    parser.add_argument("--widths", type=int, nargs="*", default=[2048, 4096], help="dims of the width check")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--peer", type=Path, default=Path("/work/peer/scripts"), help="transformers' scripts")
    parser.add_argument("--tree", type=Path, default=m3.ROOT, help="the hubtools source tree to run")
    parser.add_argument("--workdir", type=Path, default=Path(".bench/mistral4"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bench = m3.Bench(args.tree, args.workdir, args.peer if args.peer.is_dir() else None, args.repeat)
    shape = {"layers": args.layers, "experts": args.experts, "vocab": args.vocab, "tiny": args.tiny}
    results: dict[str, Any] = {}
    for kind in args.variants:
        fp8 = kind == "fp8"
        src = bench.build("mistral4", mistral4_params(dim=args.dim, fp8=fp8, **shape), kind)
        size = m3.size_of(src)
        published = bench.measure({"peer as published": bench.peer_cmd(SCRIPT, [], src, Path("{out}"))}, src, 1)
        methods = m3.convert_methods(bench, src, fp8, SCRIPT, None)
        for mode in ("fp8", "bf16") if fp8 else ("bf16",):
            methods[f"peer --output_format {mode} (shim: finegrained)"] = bench.peer_cmd(
                SCRIPT, ["finegrained"], src, Path("{out}"), "--output_format", mode
            )
        res = {**bench.measure(methods, src), **published}
        title = f"convert, Mistral Small 4 dims, {args.experts} experts x {args.layers} layers, {kind}"
        print(m3.table(title, size, res), flush=True)
        hf = bench.work / f"{kind}-hf"
        if not (hf / "config.json").exists():
            dequantize = ["--dtype", "bfloat16"] if fp8 else []
            subprocess.run(bench.hubtools("convert", str(src), str(hf), "--quiet", *dequantize), **bench.child)
        checked = bench.compare(src, hf, "bfloat16")
        print(m3.table(f"verify vs both whole, {kind}" + (" (dequantized HF)" if fp8 else ""), size, checked, None))
        results[kind] = {"size": size, "convert": res, "verify": checked}
        if not args.keep:
            shutil.rmtree(hf, ignore_errors=True)
            shutil.rmtree(src)
    widths = {}
    for dim in args.widths:
        src = bench.build("mistral4", mistral4_params(dim=dim, fp8=True, **{**shape, "layers": 1}), f"width-{dim}")
        widths[dim] = {
            "size": m3.size_of(src),
            **bench.measure(m3.convert_methods(bench, src, True, SCRIPT, None), src),
        }
        if not args.keep:
            shutil.rmtree(src)
    for dim, res in widths.items():
        runs = {m: r for m, r in res.items() if m != "size"}
        print(m3.table(f"width check: dim {dim}, 1 layer, fp8", res["size"], runs), flush=True)
    results["widths"] = widths
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
