"""FP8 weights with per-tensor scales, for every family: the params field, the scale rows, the rule.

A native FP8 checkpoint (Ministral 3, Devstral 2, Mistral Small 4) says `"quantization": {"qformat_weight":
"fp8_e4m3", "qscheme_act": "TENSOR"}` in params.json; each quantized linear weight `X.weight` is stored as
float8_e4m3fn beside two scalar scales, `X.qscale_weight` and `X.qscale_act`. transformers calls them
`X.weight_scale_inv` and `X.activation_scale` under `quantization_config {quant_method: fp8,
activation_scheme: static, weight_block_size: null, modules_to_not_convert: [...]}`.

Which weights are FP8 is a rule, not a list: every linear weight of the family (`Family.fp8_linear`) except
the modules kept unquantized (`Family.fp8_kept_modules`, e.g. `lm_head`; on the HF side the config's
`modules_to_not_convert`, matched as transformers matches it). `with_scales` adds the two scale rows after
each quantized weight, so every engine meets them in the name table; families state no scale row.

The dequantization rule (both sides multiply; "scale_inv" is the reciprocal of the quantizer's scale):
`dequantized = (weight.to(float32) * scale.to(float32)).to(dtype)`, transformers' `Fp8Dequantize` and
llama.cpp's `dequant_simple`. With a bfloat16 scale the float32 product is exact (4 + 8 significant bits),
so it equals the native rule `weight.to(bfloat16) * scale.to(bfloat16)` in bfloat16 (`native_dequantize`).

Block-wise FP8 (Mistral Large 3 Instruct: params.json `quantization_config`, compressed-tensors) is the same
machinery with `Fp8.block` set: one scale per 128x128 block (`X.weight_scale` natively, `X.weight_scale_inv`
in transformers), no activation scale, each block times its scale by the same rule; the two configs and
their module lists are `hubtools.model.fp8_block`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hubtools.errors import ParamsError
from hubtools.model import fp8_block
from hubtools.model.rows import Role, Row, TensorSpec

if TYPE_CHECKING:
    import torch

    from hubtools.model.family import ModelParams

NATIVE_FIELD, HF_FIELD = "quantization", "quantization_config"
BLOCK_NATIVE_FIELD = "quantization_config"  # params.json's field of a block-wise (compressed-tensors) model
NATIVE_SCHEME = {"qformat_weight": "fp8_e4m3", "qscheme_act": "TENSOR"}
HF_SCHEME = {"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": None}
# what the published FP8 repos of the Mistral 3 generation (Devstral 2, Ministral 3, the vision wrappers) and
# transformers' ministral3 script list in `modules_to_not_convert`, vision modules even for a text-only model
PUBLISHED_KEPT = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
HF_DEFAULTS = {"dequantize": False, "modules_to_convert": None, "scale_fmt": "float", "expert_dtype": "fp8"}
SUFFIXES = {  # role -> (native suffix, HF suffix), replacing the weight's ".weight"
    Role.WEIGHT_SCALE: (".qscale_weight", ".weight_scale_inv"),
    Role.ACTIVATION_SCALE: (".qscale_act", ".activation_scale"),
}
BLOCK_SUFFIXES = {Role.WEIGHT_SCALE: (".weight_scale", ".weight_scale_inv")}  # block-wise: no activation scale
FP8_CODE = "F8_E4M3"  # the safetensors code of float8_e4m3fn
SCALE_CODES = ("BF16", "F16", "F32")


@dataclass(frozen=True)
class Fp8:
    """FP8 weights: per-tensor scales and static activation scales, or (`block` set) one scale per block.

    `kept` is an HF config's `modules_to_not_convert` (transformers' module patterns); None means the
    family's rule (`Family.fp8_kept_modules`), which is all a per-tensor params.json can say (a block-wise
    one lists them: `kept` is always set).
    """

    kept: tuple[str, ...] | None = None
    block: tuple[int, int] | None = None

    @property
    def native_field(self) -> str:
        """The params.json field that holds this scheme."""
        return BLOCK_NATIVE_FIELD if self.block else NATIVE_FIELD

    def native(self) -> dict[str, Any]:
        """The params.json `quantization` (or, block-wise, `quantization_config`) object."""
        return fp8_block.native_config(self.kept or ()) if self.block else dict(NATIVE_SCHEME)

    def suffixes(self) -> dict[Role, tuple[str, str]]:
        """role -> (native suffix, HF suffix) of this scheme's scales."""
        return BLOCK_SUFFIXES if self.block else SUFFIXES


def parse_native(value: Any, *, source: str, block_value: Any = None) -> Fp8 | None:
    """params.json `quantization`, or `quantization_config` (`block_value`; absent or null: not quantized).

    Raises:
        ParamsError: anything but the FP8 per-tensor or the compressed-tensors block scheme, naming the field.
    """
    if isinstance(block_value, Fp8):
        return block_value
    if block_value is not None:
        if value is not None:
            raise ParamsError(f"{source}: fields '{NATIVE_FIELD}' and '{BLOCK_NATIVE_FIELD}' both set; expected one")
        if not isinstance(block_value, dict):
            raise ParamsError(f"{source}: field '{BLOCK_NATIVE_FIELD}' must be an object, got {block_value!r}")
        kept = fp8_block.kept_from_native(block_value, source=source, field=BLOCK_NATIVE_FIELD)
        return Fp8(kept, fp8_block.BLOCK)
    if value is None or isinstance(value, Fp8):
        return value
    if value != NATIVE_SCHEME:
        raise ParamsError(f"{source}: field '{NATIVE_FIELD}' must be {NATIVE_SCHEME} (FP8, per-tensor), got {value!r}")
    return Fp8()


def parse_hf(value: Any, *, source: str) -> Fp8 | None:
    """config.json `quantization_config` (absent: not quantized).

    Raises:
        ParamsError: another method or scheme, a block size, an unknown key, naming it.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ParamsError(f"{source}: field '{HF_FIELD}' must be an object, got {value!r}")
    block = value.get("weight_block_size") is not None
    scheme = fp8_block.HF_SCHEME if block else HF_SCHEME
    for key, expected in {**scheme, **HF_DEFAULTS}.items():
        if key in value and value[key] != expected:
            raise ParamsError(
                f"{source}: field '{HF_FIELD}.{key}' must be {expected!r} "
                f"(FP8, {'blocks 128x128' if block else 'per-tensor'}), got {value[key]!r}"
            )
    missing = [key for key in scheme if key not in value]
    unknown = sorted(set(value) - set(scheme) - set(HF_DEFAULTS) - {"modules_to_not_convert"})
    if missing or unknown:
        what = f"missing '{HF_FIELD}.{missing[0]}'" if missing else f"unknown field '{HF_FIELD}.{unknown[0]}'"
        raise ParamsError(f"{source}: {what} (expected {sorted([*scheme, 'modules_to_not_convert'])})")
    kept = value.get("modules_to_not_convert") or []
    if not isinstance(kept, list) or not all(isinstance(k, str) for k in kept):
        raise ParamsError(f"{source}: field '{HF_FIELD}.modules_to_not_convert' must be a list of names, got {kept!r}")
    return Fp8(tuple(kept), fp8_block.BLOCK if block else None)


def hf_config(params: ModelParams) -> dict[str, Any]:
    """config.json `quantization_config` of an FP8 model."""
    block = params.quantization is not None and params.quantization.block is not None
    return {**(fp8_block.HF_SCHEME if block else HF_SCHEME), "modules_to_not_convert": list(kept_modules(params))}


def kept_modules(params: ModelParams) -> tuple[str, ...]:
    """The HF module patterns an FP8 model keeps unquantized."""
    scheme = params.quantization
    if scheme is not None and scheme.kept is not None:
        return scheme.kept
    return params.family.fp8_kept_modules(params)


def is_kept(module: str, patterns: Iterable[str]) -> bool:
    """Whether transformers' `should_convert_module` leaves `module` unquantized: a pattern matches it from
    the start up to a module boundary (also as a regex), or is its suffix."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return any(re.match(rf"(?:{p}){boundary}", module) or module.endswith(p) for p in patterns)


def module_of(spec: TensorSpec) -> str:
    """The HF module a weight belongs to (`model.layers.0.mlp.up_proj`)."""
    return spec.hf.removesuffix(".weight")


def is_quantized(params: ModelParams, spec: TensorSpec) -> bool:
    """Whether `spec` is an FP8 weight of `params` (with two scales)."""
    return (
        params.quantization is not None
        and spec.row.role is Role.TENSOR
        and params.family.fp8_linear(params, spec)
        and not is_kept(module_of(spec), kept_modules(params))
    )


def scale_row(row: Row, role: Role, scheme: Fp8 | None = None) -> Row:
    """The row of one scale of the weight row `row` (no GGUF name: GGUF dequantizes); per-tensor by default."""
    native, hf = (scheme or Fp8()).suffixes()[role]
    return Row(
        row.native.removesuffix(".weight") + native, row.hf.removesuffix(".weight") + hf, "", (), role=role, weight=row
    )


def with_scales(params: ModelParams, specs: list[TensorSpec]) -> list[TensorSpec]:
    """`specs` with each quantized weight followed by its scales: weight and activation scale (scalars), or
    block-wise the weight's block scales `[ceil(out/128), ceil(in/128)]`."""
    scheme = params.quantization
    if scheme is None:
        return specs
    out: list[TensorSpec] = []
    for spec in specs:
        out.append(spec)
        if is_quantized(params, spec):
            shape = fp8_block.scale_shape(spec.shape) if scheme.block else ()
            for role in scheme.suffixes():
                row = scale_row(spec.row, role, scheme)
                name = row.native_name(spec.layer, spec.expert), row.hf_name(spec.layer, spec.expert)
                out.append(
                    replace(spec, native=name[0], hf=name[1], gguf="", shape=shape, transform=row.transform, row=row)
                )
    return out


def scale_suffixes(hf: bool) -> tuple[str, ...]:
    """Every scale suffix of either scheme, on the HF side (`hf`) or the native one."""
    return tuple(dict.fromkeys(pair[hf] for table in (SUFFIXES, BLOCK_SUFFIXES) for pair in table.values()))


def weight_scale(params: ModelParams, spec: TensorSpec, layout: str) -> str:
    """The name (in `layout`, "native" or "hf") of the weight scale of the FP8 weight `spec` of `params`."""
    native, hf = (params.quantization or Fp8()).suffixes()[Role.WEIGHT_SCALE]
    name = spec.native if layout == "native" else spec.hf
    return name.removesuffix(".weight") + (native if layout == "native" else hf)


def without_fp8(params: ModelParams) -> ModelParams:
    """`params` with its weights dequantized: no FP8 scheme, a wrapper's text model's included (it carries the
    scheme too, and the wrapper's tensors are the text model's)."""
    if params.quantization is None and params.text.quantization is None:
        return params
    text = replace(params.text, quantization=None)
    options = tuple((key, text if key == "text" else value) for key, value in params.options)
    return replace(params, quantization=None, options=options)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The dequantization rule: `(weight.float() * scale.float()).to(dtype)` (see the module docstring); a
    2-D `scale` is a block grid, each entry multiplying its 128x128 block (the last ones partial)."""
    import torch

    return (weight.to(torch.float32) * per_element(scale.to(torch.float32), weight.shape)).to(dtype)


def native_dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The native rule as mistral-inference states it, in bfloat16: `weight.to(bf16) * scale.to(bf16)`
    (block-wise: each block times its scale)."""
    import torch

    return weight.to(torch.bfloat16) * per_element(scale.to(torch.bfloat16), weight.shape)


def per_element(scale: torch.Tensor, shape: tuple[int, ...] | Any) -> torch.Tensor:
    """`scale` broadcast to a weight of `shape`: a scalar as is, a block grid repeated over its blocks.

    Raises:
        ParamsError: a grid that is not `[ceil(out/128), ceil(in/128)]` for that weight.
    """
    if scale.ndim == 0:
        return scale
    if tuple(scale.shape) != fp8_block.scale_shape(tuple(shape)):
        raise ParamsError(
            f"block scale of shape {list(scale.shape)} for a weight {list(shape)}: expected "
            f"{list(fp8_block.scale_shape(tuple(shape)))} (blocks {fp8_block.BLOCK[0]}x{fp8_block.BLOCK[1]})"
        )
    rows, cols = fp8_block.BLOCK
    return scale.repeat_interleave(rows, 0)[: shape[0]].repeat_interleave(cols, 1)[:, : shape[1]]


def check_native_expressible(params: ModelParams, specs: Iterable[TensorSpec], *, source: str) -> None:
    """An HF config whose `modules_to_not_convert` keeps other weights than the family's rule cannot become
    a native params.json (which has no such list).

    Raises:
        ParamsError: naming the first weight whose quantization the two rules disagree on.
    """
    if params.quantization is not None and params.quantization.block:
        fp8_block.native_ignore(kept_modules(params))  # the block config lists them: each must translate
        return
    native = replace(params, quantization=Fp8())
    for spec in specs:
        if spec.row.role is Role.TENSOR and is_quantized(params, spec) != is_quantized(native, spec):
            kept = "keeps" if not is_quantized(params, spec) else "quantizes"
            raise ParamsError(
                f"{source}: {HF_FIELD}.modules_to_not_convert {kept} '{module_of(spec)}', which a native params.json "
                f"cannot say (native FP8 keeps exactly {list(params.family.fp8_kept_modules(params))} unquantized)"
            )
