"""Block-wise FP8 (Mistral Large 3 Instruct): the params.json `quantization_config` (compressed-tensors),
the HF `quantization_config` (transformers' fine-grained FP8), and the one table between their module lists.

Natively (what llm-compressor's `model_free_ptq(scheme="FP8_BLOCK")` writes and vLLM's
`MistralLarge3ForCausalLM` reads) each quantized linear weight `X.weight` is float8_e4m3fn beside
`X.weight_scale` of shape `[ceil(out/128), ceil(in/128)]`: weight block (i, j) times scale (i, j), the last
blocks partial; activations are quantized dynamically, so there is no activation scale. transformers 5.25
loads the same bytes as `X.weight_scale_inv` under `quantization_config {quant_method: fp8,
activation_scheme: dynamic, weight_block_size: [128, 128], modules_to_not_convert}` (DeepSeek-V3's form;
no `compressed_tensors` import needed).

The native `ignore` list and the HF `modules_to_not_convert` say the same thing in two spellings, translated
entry by entry by `IGNORED` (and `re:.*NAME$` <-> `NAME` for a module name); a list that does not translate
back to itself is refused, so params.json -> config.json -> params.json is exact.
"""

from __future__ import annotations

import re
from typing import Any

from hubtools.errors import ParamsError

BLOCK = (128, 128)  # the only block size the published checkpoints use, and the one parsed
NATIVE_SCHEME: dict[str, Any] = {
    "config_groups": {
        "FP8_BLOCK": {
            "format": "float-quantized",
            "input_activations": {
                "dynamic": True, "group_size": 128, "num_bits": 8, "strategy": "group", "symmetric": True,
                "type": "float",
            },
            "output_activations": None,
            "targets": ["Linear"],
            "weights": {
                "block_structure": list(BLOCK), "dynamic": False, "num_bits": 8, "strategy": "block",
                "symmetric": True, "type": "float",
            },
        }
    },
    "format": "float-quantized",
    "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
}  # fmt: skip
HF_SCHEME: dict[str, Any] = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": list(BLOCK)}
IGNORED = (  # (native `ignore` entries, HF `modules_to_not_convert` entries), each group in this order
    (("model.embed_tokens",), ("model.embed_tokens",)),
    (("re:patch_merger.*", "re:vision_encoder.*", "re:vision_language_adapter.*"),
     ("model.vision_tower", "model.multi_modal_projector")),
    (("lm_head",), ("lm_head",)),
)  # fmt: skip
MODULE_PATTERN = re.compile(r"re:\.\*(\w+)\$")  # `re:.*kv_a_proj_with_mqa$`: every module of that name


def kept_from_native(value: dict[str, Any], *, source: str, field: str) -> tuple[str, ...]:
    """The HF modules a native compressed-tensors block config keeps unquantized (its `ignore`, translated).

    Raises:
        ParamsError: any other scheme (naming the first key that differs), or an ignore entry with no HF
            spelling, or a list that would not read back in the same order.
    """
    for key in sorted(set(NATIVE_SCHEME) | set(value) - {"ignore"}):
        if value.get(key) != NATIVE_SCHEME.get(key):
            expected = NATIVE_SCHEME.get(key, "absent")
            raise ParamsError(
                f"{source}: field '{field}.{key}' must be {expected!r} (compressed-tensors FP8, blocks "
                f"{BLOCK[0]}x{BLOCK[1]}), got {value.get(key)!r}"
            )
    ignore = value.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
        raise ParamsError(f"{source}: field '{field}.ignore' must be a list of names, got {ignore!r}")
    kept: list[str] = []
    rest = list(ignore)
    while rest:
        group = next((g for g in IGNORED if tuple(rest[: len(g[0])]) == g[0]), None)
        if group is not None:
            kept.extend(group[1])
            del rest[: len(group[0])]
        elif m := MODULE_PATTERN.fullmatch(rest[0]):
            kept.append(m[1])
            del rest[0]
        else:
            raise ParamsError(
                f"{source}: field '{field}.ignore' entry {rest[0]!r} has no transformers spelling (expected one of "
                f"{[n for g in IGNORED for n in g[0]]} in that order, or 're:.*NAME$')"
            )
    if native_ignore(tuple(kept)) != ignore:
        raise ParamsError(
            f"{source}: field '{field}.ignore' must list its entries as {native_ignore(tuple(kept))}, got {ignore}"
        )
    return tuple(kept)


def native_ignore(kept: tuple[str, ...]) -> list[str]:
    """The native `ignore` list of the HF `modules_to_not_convert` `kept`.

    Raises:
        ParamsError: a module pattern the native list cannot say (a dotted path outside `IGNORED`).
    """
    out: list[str] = []
    rest = list(kept)
    while rest:
        group = next((g for g in IGNORED if tuple(rest[: len(g[1])]) == g[1]), None)
        if group is not None:
            out.extend(group[0])
            del rest[: len(group[1])]
        elif re.fullmatch(r"\w+", rest[0]):
            out.append(f"re:.*{rest.pop(0)}$")
        else:
            raise ParamsError(
                f"quantization_config.modules_to_not_convert entry {rest[0]!r} has no params.json spelling "
                f"(expected a module name or one of {[n for g in IGNORED for n in g[1]]} in that order)"
            )
    return out


def native_config(kept: tuple[str, ...]) -> dict[str, Any]:
    """The params.json `quantization_config` keeping `kept` (HF module patterns) unquantized."""
    return {**NATIVE_SCHEME, "ignore": native_ignore(kept)}


def scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The block-scale grid of a weight `[out, in]`: `[ceil(out/128), ceil(in/128)]`."""
    return tuple(-(-size // block) for size, block in zip(shape, BLOCK, strict=True))
