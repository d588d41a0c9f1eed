"""`hubtools inspect`: what a checkpoint folder is, from headers only (instant even for 281 GB)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtools.checkpoint.layout import Layout
from hubtools.checkpoint.reader import Checkpoint, open_checkpoint
from hubtools.checkpoint.safetensors_format import dtype_name, itemsize
from hubtools.model import fp8
from hubtools.units import human_bytes, human_count


@dataclass(frozen=True)
class Summary:
    folder: str
    layout: str
    format: str
    architecture: str
    layers: int
    experts: int
    experts_per_token: int
    total_params: int
    active_params: int
    dtypes: dict[str, int]
    bytes_on_disk: int
    files: int
    tokenizer: str | None
    vocab_size: int
    quantization: str | None = None  # FP8: how many weights, scales, what stays unquantized

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parameter_counts(ckpt: Checkpoint) -> tuple[int, int]:
    """(total, active per token): for MoE, only top-k of the experts' parameters count as active."""
    total = expert = 0
    family = ckpt.params.family
    for name, src in ckpt.tensors.items():
        n = src.nbytes // itemsize(src.code)
        total += n
        expert += n if family.indices([name])[1] else 0  # the family reads its own names (no table: any size)
    p = ckpt.params
    active = total - expert + (expert * p.num_experts_per_tok // p.num_experts if p.is_moe else 0)
    return total, active


def count_parameters(folder: Path) -> tuple[int, int]:
    """(total, active per token) parameters of a native or HF checkpoint folder, from headers.

    Example:
        >>> count_parameters(Path("mixtral-8x7b"))  # doctest: +SKIP
        (46702792704, 12879921152)
    """
    with open_checkpoint(folder, prefer=Layout.HF) as ckpt:
        return parameter_counts(ckpt)


def summarize(folder: str | os.PathLike[str]) -> Summary:
    """Describe a checkpoint folder from its headers, without reading tensor data.

    A folder holding both layouts (a Hub repo that ships consolidated files too) reads as HF.

    Raises:
        LayoutError, ParamsError, CorruptFileError, MappingError: the folder is not a readable checkpoint.

    Example:
        >>> s = summarize("mixtral-8x7b")  # doctest: +SKIP
        >>> s.architecture, s.layers, s.experts  # doctest: +SKIP
        ('MixtralForCausalLM', 32, 8)
    """
    folder = Path(folder)
    with open_checkpoint(folder, prefer=Layout.HF) as ckpt:
        total, active = parameter_counts(ckpt)
        dtypes: dict[str, int] = {}
        for src in ckpt.tensors.values():
            key = dtype_name(src.code)
            dtypes[key] = dtypes.get(key, 0) + 1
        size = sum(p.stat().st_size for p in ckpt.files)
        p = ckpt.params
        return Summary(
            str(folder),
            ckpt.layout.value,
            ckpt.format.value,
            p.architecture,
            p.n_layers,
            p.num_experts,
            p.num_experts_per_tok,
            total,
            active,
            dtypes,
            size,
            len(ckpt.files),
            ckpt.tokenizer_file.name if ckpt.tokenizer_file else None,
            p.vocab_size,
            _fp8_summary(ckpt),
        )


def _fp8_summary(ckpt: Checkpoint) -> str | None:
    """One line on FP8 weights: their count, their scales' dtype and what the model keeps unquantized."""
    if ckpt.params.quantization is None:
        return None
    weights = sum(1 for t in ckpt.tensors.values() if t.code == fp8.FP8_CODE)
    suffixes = fp8.scale_suffixes(hf=ckpt.layout is Layout.HF)
    scales = [t for n, t in ckpt.tensors.items() if n.endswith(suffixes)]
    codes = "/".join(sorted({dtype_name(t.code) for t in scales})) or "none"
    kept = ", ".join(fp8.kept_modules(ckpt.params))
    scheme = "blocks 128x128" if ckpt.params.quantization.block else "per-tensor"
    return f"FP8 e4m3, {scheme}: {weights} weights, {len(scales)} scales ({codes}); unquantized: {kept}"


def format_summary(s: Summary) -> str:
    """Human-readable lines for the terminal."""
    moe = f", {s.experts} experts (top-{s.experts_per_token})" if s.experts else ""
    active = f" ({human_count(s.active_params)} active per token)" if s.experts else ""
    return "\n".join(
        [
            f"{s.folder}: {s.layout} layout ({s.format}, {s.files} file{'s' * (s.files != 1)})",
            f"  architecture  {s.architecture}, {s.layers} layers{moe}",
            f"  parameters    {human_count(s.total_params)}{active}",
            f"  dtype         {', '.join(f'{k} x{v}' for k, v in sorted(s.dtypes.items()))}",
            f"  size on disk  {human_bytes(s.bytes_on_disk)}",
            f"  tokenizer     {s.tokenizer or 'none'} (vocab {s.vocab_size})",
            *([f"  quantization  {s.quantization}"] if s.quantization else []),
        ]
    )
