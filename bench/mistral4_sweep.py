"""The Mistral 4 judge's run, emulated across seeds: convert, `hubtools verify`, and back to native.

For each seed x source dtype (bf16, FP8) x form (text `Mistral4ForCausalLM`, vision wrapper) x leading dense
layers (0, 1) x conversion (kept as the source holds it; `--dtype bfloat16`, FP8 sources only), on a tiny
synthetic checkpoint (shared expert, 8 experts top-2, tekken for the vision form): `convert` native -> HF,
`verify` (float32, the default, or `--verify-dtype`; must pass), `convert` HF -> native, which must give the
source's bytes back (for `--dtype bfloat16`: each FP8 weight dequantized by the native rule, the scales gone).
Every failure is printed with the report's failing checks; the exit status is the number of failures.

    python bench/mistral4_sweep.py [--seeds 10] [--workdir .bench/mistral4_sweep] [--only fp8-text-dense0-bf16]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.model import fp8
from hubtools.model.fp8 import Fp8
from hubtools.model.params import ModelParams
from hubtools.testing import TOKENIZERS, tiny_mistral4_params, tiny_vision_params, write_native_checkpoint
from hubtools.verification.run import verify

NATIVE = "consolidated.safetensors"


def case_params(*, quantized: bool, vision: bool, dense: int) -> ModelParams:
    text = tiny_mistral4_params(
        moe_first_k_dense_replace=dense, n_layers=2 + dense, vocab_size=TOKENIZERS["tekken"][2] if vision else 32000
    )
    text = dataclasses.replace(text, quantization=Fp8()) if quantized else text
    return tiny_vision_params(text=text) if vision else text


def write_source(folder: Path, params: ModelParams, seed: int, vision: bool) -> Path:
    """The native checkpoint; FP8 with one input scale per expert (gate and up read the same input)."""
    native = write_native_checkpoint(folder, params, seed=seed, tokenizer="tekken" if vision else None, shards=1)
    tensors = load_file(native / NATIVE)
    for name in [n for n in tensors if re.search(r"experts\.\d+\.w3\.qscale_act$", n)]:
        tensors[name] = tensors[name.replace(".w3.", ".w1.")].clone()
    save_file(tensors, native / NATIVE, metadata={"format": "pt"})
    return native


def expected_back(source: dict[str, torch.Tensor], dequantized: bool) -> dict[str, torch.Tensor]:
    """What HF -> native must give back: the source, or (dequantized) its FP8 weights by the native rule."""
    if not dequantized:
        return source
    out = {}
    for name, tensor in source.items():
        if name.endswith((".qscale_weight", ".qscale_act")):
            continue
        scale = source.get(name.removesuffix(".weight") + ".qscale_weight")
        out[name] = fp8.dequantize(tensor, scale, torch.bfloat16) if scale is not None else tensor
    return out


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                      b.reshape(-1).view(torch.uint8))  # fmt: skip


def run_case(
    work: Path, seed: int, quantized: bool, vision: bool, dense: int, dequantized: bool, verify_dtype: str = "float32"
) -> list[str]:
    """One judge run; the problems found (empty: passed)."""
    params = case_params(quantized=quantized, vision=vision, dense=dense)
    native = write_source(work / "native", params, seed, vision)
    convert(native, work / "hf", dtype="bfloat16" if dequantized else None)
    report = verify(native, work / "hf", dtype=verify_dtype)
    problems = []
    ties = report.logits.routing_near_ties
    if ties:  # not a problem: said so that a sweep shows how often, and how far apart
        print(f"  {len(ties)} routing near-tie(s) followed: {'; '.join(ties)}", flush=True)
    if not report.passed:
        logits = report.logits
        problems.append(
            f"verify failed {report.failed()}: max |dlogit| {logits.max_abs_dlogit}, "
            f"layers max |dh| {[round(layer.max_abs_dh, 6) for layer in logits.layers]}; "
            f"{[*report.structure.problems, *report.tensors.mismatched][:3]}"
        )
    convert(work / "hf", work / "back", to="native")
    source, back = load_file(native / NATIVE), load_file(work / "back" / NATIVE)
    expected = expected_back(source, dequantized)
    if expected.keys() != back.keys():
        problems.append(f"back to native: names differ ({sorted(expected.keys() ^ back.keys())[:3]})")
    else:
        different = [n for n in expected if not same(expected[n], back[n])]
        if different:
            problems.append(f"back to native: {len(different)} tensors differ ({different[:3]})")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(".bench/mistral4_sweep"))
    parser.add_argument("--only", help="run the cases whose id contains this")
    parser.add_argument("--verify-dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    cases = [
        (seed, quantized, vision, dense, dequantized)
        for seed, quantized, vision, dense, dequantized in itertools.product(
            range(args.first_seed, args.first_seed + args.seeds), (False, True), (False, True), (0, 1), (False, True)
        )
        if quantized or not dequantized  # a bf16 source has nothing to dequantize
    ]
    failures = ran = 0
    started = time.monotonic()
    for seed, quantized, vision, dense, dequantized in cases:
        name = (
            f"seed{seed}-{'fp8' if quantized else 'bf16'}-{'vision' if vision else 'text'}-dense{dense}-"
            f"{'bf16' if dequantized else 'kept'}"
        )
        if args.only and args.only not in name:
            continue
        work = args.workdir / name
        shutil.rmtree(work, ignore_errors=True)
        ran += 1
        problems = run_case(work, seed, quantized, vision, dense, dequantized, args.verify_dtype)
        failures += bool(problems)
        print(f"{name}: {'FAIL ' + ' | '.join(problems) if problems else 'ok'}", flush=True)
        if not problems:
            shutil.rmtree(work)
    print(f"{failures} failing case(s) of {ran}, {time.monotonic() - started:.0f} s")
    sys.exit(min(failures, 100))


if __name__ == "__main__":
    main()
