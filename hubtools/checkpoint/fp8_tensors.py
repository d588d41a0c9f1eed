"""The FP8 tensors a checkpoint holds, checked against what its params.json / config.json declare.

Which weights are FP8 is read from the checkpoint (their dtype and their scales) and must be what the
params say (`hubtools.model.fp8`): a scale without its weight, an FP8 weight without a scale, a scale of
the wrong shape or dtype, a quantized weight that is not float8_e4m3fn, each is one line naming the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

from hubtools.checkpoint.layout import Layout, TensorSource
from hubtools.checkpoint.safetensors_format import dtype_name
from hubtools.errors import MappingError, ParamsError
from hubtools.model import fp8
from hubtools.model.family import ModelParams
from hubtools.model.names import NameTable
from hubtools.model.rows import Role


def check_fp8_tensors(
    tensors: Mapping[str, TensorSource], params: ModelParams, table: NameTable, layout: Layout, where: str
) -> None:
    """Every FP8 weight and scale of `tensors` is where the params put it, in the right dtype and shape.

    Raises:
        MappingError: a scale the params do not expect, or a scale missing.
        ParamsError: a weight or scale of the wrong dtype, a scale of the wrong shape.
    """
    layout = Layout.parse(layout)
    index = table.index(layout)
    origin = layout.metadata_file
    suffixes = fp8.scale_suffixes(hf=layout is Layout.HF)
    for name in sorted(tensors):
        if name not in index and name.endswith(suffixes):
            _explain_stray_scale(name, tensors, params, layout, where)
    for spec in table.specs:
        name = spec.native if layout is Layout.NATIVE else spec.hf
        src = tensors.get(name)
        if spec.row.role is not Role.TENSOR:
            if src is None:
                weight = spec.row.weight or spec.row
                held = (
                    weight.native_name(spec.layer, spec.expert)
                    if layout is Layout.NATIVE
                    else weight.hf_name(spec.layer, spec.expert)
                )
                raise MappingError(f"{where}: FP8 weight '{held}' has no scale '{name}' ({origin} quantizes it)")
            if src.code not in fp8.SCALE_CODES:
                raise ParamsError(
                    f"{where}: scale '{name}' is {dtype_name(src.code)}, expected bfloat16, float16 or float32"
                )
            if src.shape != spec.shape:
                block = params.quantization.block if params.quantization is not None else None
                what = f"blocks of {list(block)}" if block else "a scalar"
                raise ParamsError(
                    f"{where}: scale '{name}' has shape {list(src.shape)}, expected {list(spec.shape)} ({what})"
                )
        elif src is None and fp8.is_quantized(params, spec) and fp8.weight_scale(params, spec, layout.value) in tensors:
            raise MappingError(
                f"{where}: scale '{fp8.weight_scale(params, spec, layout.value)}' has no weight '{name}'"
            )
        elif src is not None and fp8.is_quantized(params, spec) and src.code != fp8.FP8_CODE:
            raise ParamsError(
                f"{where}: tensor '{name}' is {dtype_name(src.code)}, expected float8_e4m3fn ({origin} quantizes it)"
            )
        elif src is not None and src.code == fp8.FP8_CODE and not fp8.is_quantized(params, spec):
            scale = fp8.weight_scale(params, spec, layout.value)
            why = "declares no quantization" if params.quantization is None else "keeps it unquantized"
            raise ParamsError(f"{where}: tensor '{name}' is float8_e4m3fn but {origin} {why} (no scale '{scale}')")


def _explain_stray_scale(
    name: str, tensors: Mapping[str, TensorSource], params: ModelParams, layout: Layout, where: str
) -> None:
    """A scale the table has no row for: say why in one line."""
    origin = layout.metadata_file
    stem = next(name.removesuffix(s) for s in fp8.scale_suffixes(hf=layout is Layout.HF) if name.endswith(s))
    weight = stem + ".weight"
    if stem.endswith("_fake_quantizer"):
        raise MappingError(
            f"{where}: unknown tensor '{name}': a KV-cache scale (vLLM's k_scale / v_scale) that transformers has no "
            "parameter for; refused rather than dropped (see README, FP8)"
        )
    if weight not in tensors:
        raise MappingError(f"{where}: scale '{name}' has no weight '{weight}'")
    if params.quantization is None:
        raise MappingError(f"{where}: '{name}' is an FP8 scale, but {origin} declares no quantization")
    kept = list(fp8.kept_modules(params))
    raise MappingError(
        f"{where}: scale '{name}' of a weight {origin} keeps unquantized (kept: {kept}, or not a linear layer)"
    )
