"""Why `verify --dtype bfloat16` can fail on Mistral Small 4 at its real dimensions: near-tied routing.

Builds (once) one MoE layer at Small 4's real dimensions (bench/mistral4.py's params; `--experts` routed
experts, 32 by default), converts it, then runs layer 0 four ways on verify's packed built-in prompts, each
as verify runs it (the clean-room reference; transformers' decoder layer, eager): both in float32 and in
bfloat16. For each it prints the tokens whose top-k expert set differs from the float32 reference's and the
largest hidden-state difference from it, over all tokens and over the others. In bfloat16 both
implementations pick a different expert for a few tokens whose 4th and 5th router scores are nearly tied
(about 1 ulp of bfloat16 noise in the attention output decides), and such a token's hidden state moves by a
whole expert's share; every other token stays within bfloat16 noise (README, Mistral 4: bfloat16 verify).

    python bench/mistral4_bf16_routing.py [--experts 32] [--workdir .bench/mistral4_bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

LAYER = 0


def build(work: Path, experts: int, vocab: int) -> tuple[Path, Path]:
    """The native checkpoint and its conversion (kept between runs)."""
    import mistral3  # siblings: bench/ is sys.path[0] when run as a script (as bench/release.py does)
    import mistral4

    from hubtools.converter import convert

    native, hf = work / "native", work / "hf"
    if not (native / "params.json").exists():
        raw = mistral4.mistral4_params(dim=4096, layers=1, experts=experts, vocab=vocab, fp8=False, tiny=False)
        subprocess.run([sys.executable, "-c", mistral3.BUILD, "mistral4", json.dumps(raw), str(native)],
                       check=True)  # fmt: skip
    if not (hf / "config.json").exists():
        convert(native, hf)
    return native, hf


def layer_runs(native: Path, hf: Path) -> dict[str, tuple[Any, Any]]:
    """(expert choice [tokens, k], hidden state after the layer [tokens, dim]) per implementation and dtype."""
    import torch
    import transformers.models.mistral4.modeling_mistral4 as modeling
    from safetensors.torch import load_file

    from hubtools.families import load_params
    from hubtools.model import mla
    from hubtools.verification import reference
    from hubtools.verification.hf_forward import LayeredModel, load_config
    from hubtools.verification.logits import prompt_tokens

    params = load_params(native / "params.json")
    prompts = prompt_tokens(native / "tekken.json", params.vocab_size).pack()
    native_state = {k: v for f in native.glob("consolidated*.safetensors") for k, v in load_file(f).items()}
    hf_state = {k: v for f in hf.glob("model*.safetensors") for k, v in load_file(f).items()}
    family, moe = params.family, params.option("mla")
    seen: dict[str, Any] = {}
    router = modeling.Mistral4TopkRouter.forward

    def recorded(self: Any, x: Any) -> Any:
        out = router(self, x)
        seen["chosen"] = out[2]
        return out

    modeling.Mistral4TopkRouter.forward = recorded  # type: ignore[method-assign]
    runs = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            weights = {k: v.to(dtype) for k, v in native_state.items()}
            get = weights.__getitem__
            ref = reference.ReferenceModel(params, get, rope_theta=params.rope_theta, positions=prompts.positions)
            h = ref.embed(prompts.tokens)
            normed = family.feed_forward_norm(ref.attention_block(h, LAYER), LAYER, get, params)
            _, chosen, _ = mla.grouped_top_k(
                normed, get(f"layers.{LAYER}.gate.weight"), params.num_experts_per_tok,
                groups=moe.num_expert_groups, groups_per_token=moe.num_expert_groups_per_tok, scale=moe.routed_scale,
            )  # fmt: skip
            runs[f"reference, {dtype}"] = (chosen, ref.layer(h, LAYER).float().reshape(-1, params.dim))
            hf_weights = {k: v.to(dtype) for k, v in hf_state.items()}
            model = LayeredModel(load_config(hf), hf_weights.__getitem__, dtype, positions=prompts.positions)
            prefix = f"model.layers.{LAYER}."
            fused = {k: hf_weights[prefix + k] for k in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")}
            out = model.layer(model.embed(prompts.tokens), LAYER, fused).float().reshape(-1, params.dim)
            runs[f"transformers, {dtype}"] = (seen["chosen"], out)
    modeling.Mistral4TopkRouter.forward = router  # type: ignore[method-assign]
    return runs


def report(runs: dict[str, tuple[Any, Any]]) -> None:
    truth, h_truth = runs["reference, torch.float32"]
    tokens = truth.shape[0]
    for name, (chosen, h) in runs.items():
        flips = [t for t in range(tokens) if sorted(chosen[t].tolist()) != sorted(truth[t].tolist())]
        dh = (h - h_truth).abs().amax(-1)
        others = dh[[t for t in range(tokens) if t not in flips]].max()
        print(f"{name:28s} experts differ from float32 reference: {len(flips)}/{tokens} tokens {flips}; "
              f"max |dh| all {float(dh.max()):.4f}, others {float(others):.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=32, help="routed experts (the release has 128)")
    parser.add_argument("--vocab", type=int, default=32768, help="tekken truncated to this (the release: 131072)")
    parser.add_argument("--workdir", type=Path, default=Path(".bench/mistral4_bf16"))
    args = parser.parse_args()
    native, hf = build(args.workdir / f"experts{args.experts}", args.experts, args.vocab)
    report(layer_runs(native, hf))


if __name__ == "__main__":
    main()
