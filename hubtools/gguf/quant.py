"""Quant types: which GGUF types hubtools writes itself, which go through llama.cpp's `llama-quantize`,
and the per-tensor type rule of llama.cpp's converter (`convert_hf_to_gguf.py`, `prepare_tensors`).

The rule, for the types the converter writes (F32, F16, BF16, Q8_0) and for the other types gguf-py
quantizes (Q4_0, Q4_1, Q5_0, Q5_1): 1-D tensors, `*_norm.weight` and the MoE router (`ffn_gate_inp`) stay
F32; every other tensor (token_embd and output included) takes the file's type, and a tensor whose rows
are not a multiple of the block size falls back to F16 (the converter's `QuantError` fallback).
K-quants and the rest exist only in llama.cpp's C code: they are made from an F16/BF16 intermediate by
`llama-quantize` (no home-made K-quant code).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType, quants

from hubtools.errors import QuantizeError

Q = GGMLQuantizationType
BUILTIN = {  # name -> (file type, weight type); gguf-py quantizes these itself
    "F32": (LlamaFileType.ALL_F32, Q.F32),
    "F16": (LlamaFileType.MOSTLY_F16, Q.F16),
    "BF16": (LlamaFileType.MOSTLY_BF16, Q.BF16),
    "Q8_0": (LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
    "Q4_0": (LlamaFileType.MOSTLY_Q4_0, Q.Q4_0),
    "Q4_1": (LlamaFileType.MOSTLY_Q4_1, Q.Q4_1),
    "Q5_0": (LlamaFileType.MOSTLY_Q5_0, Q.Q5_0),
    "Q5_1": (LlamaFileType.MOSTLY_Q5_1, Q.Q5_1),
}
BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8, "Q6_K": 6, "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5}
LLAMA_QUANTIZE_HINT = (
    "install llama.cpp's llama-quantize on PATH (e.g. build it: cmake -B build && cmake --build build "
    "--target llama-quantize, or `brew install llama.cpp`)"
)
F32_TENSORS = ("ffn_gate_inp.weight",)
PROJECTOR_FLOAT_TENSORS = (".patch_embd.weight", ".patch_merger.weight")  # MmprojModel.tensor_force_quant


@dataclass(frozen=True)
class QuantType:
    """One output quant: its name as in file names (`Q4_K_M`) and whether gguf-py makes it."""

    name: str

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN

    @property
    def file_type(self) -> LlamaFileType:
        return BUILTIN[self.name][0] if self.builtin else LlamaFileType[f"MOSTLY_{self.name}"]

    @property
    def weight_type(self) -> GGMLQuantizationType:
        return BUILTIN[self.name][1]

    @property
    def bits(self) -> int:
        head = self.name.split("_")[0].lstrip("QIBF")
        return BITS.get(self.name) or int(head or 0)


def parse_quants(text: str | Sequence[str | QuantType]) -> list[QuantType]:
    """'f16,q8_0,q4_k_m' (or a list of names or `QuantType`s) -> quant types, in order, without duplicates.

    The one check of quant types: the CLI's `--quant`, `export_gguf(quants=...)` and recipes all use it.

    Raises:
        QuantizeError: a name that is neither a gguf-py type nor a llama.cpp file type, or no name at all
            ('', ' , ' or []): never a silent default.
    """
    names = text.split(",") if isinstance(text, str) else [q.name if isinstance(q, QuantType) else q for q in text]
    shown = text if isinstance(text, str) else ",".join(map(str, names))
    if not any(str(n).strip() for n in names):
        raise QuantizeError(f"quants '{shown}': expected one or more quant types (e.g. f16,q8_0), found none")
    out: list[QuantType] = []
    for raw in names:
        name = str(raw).strip().upper()
        if not name:
            continue  # 'f16,' or 'f16,,q8_0': a stray comma
        if name not in BUILTIN and f"MOSTLY_{name}" not in LlamaFileType.__members__:
            known = ", ".join([*BUILTIN, "Q4_K_M", "Q5_K_M", "Q6_K", "..."])
            raise QuantizeError(f"unknown quant type '{str(raw).strip()}' (expected one of {known})")
        if QuantType(name) not in out:
            out.append(QuantType(name))
    return out


def tensor_type(
    name: str, shape: tuple[int, ...], weight_type: GGMLQuantizationType, *, projector: bool = False
) -> GGMLQuantizationType:
    """The type llama.cpp's converter gives tensor `name` (GGUF name, numpy shape) in a file of `weight_type`;
    in a vision projector (`projector`), the patch embedding and the patch merger are F16 in an F16 file and
    F32 in any other.

    Example:
        >>> tensor_type("blk.0.ffn_gate_inp.weight", (8, 4096), Q.Q8_0).name
        'F32'
        >>> tensor_type("blk.0.attn_q.weight", (24, 40), Q.Q8_0).name
        'F16'
        >>> tensor_type("v.patch_embd.weight", (32, 3, 4, 4), Q.Q8_0, projector=True).name
        'F32'
    """
    if projector and any(part in name for part in PROJECTOR_FLOAT_TENSORS):
        return Q.F16 if weight_type == Q.F16 else Q.F32
    if len(shape) <= 1 or name.endswith("_norm.weight") or name.endswith(F32_TENSORS):
        return Q.F32
    if shape[-1] % GGML_QUANT_SIZES[weight_type][0]:
        return Q.F16
    return weight_type


def type_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of logical `shape` stored as `qtype`."""
    block, size = GGML_QUANT_SIZES[qtype]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * (shape[-1] // block) * size


def quantize(rows: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """gguf-py's quantization of float rows (row-wise, so chunks of rows quantize independently)."""
    return quants.quantize(rows, qtype)


def find_llama_quantize() -> Path:
    """The `llama-quantize` executable on PATH.

    Raises:
        QuantizeError: not installed (the message says what to install).
    """
    found = shutil.which("llama-quantize")
    if not found:
        raise QuantizeError(
            f"llama-quantize: not found on PATH; K-quants need llama.cpp's quantizer: {LLAMA_QUANTIZE_HINT}"
        )
    return Path(found)


def llama_quantize(src: Path, dst: Path, quant: QuantType, *, keep_split: bool = False) -> None:
    """Run `llama-quantize SRC DST TYPE` (llama.cpp's own K-quant code) on an F16/BF16 GGUF.

    Raises:
        QuantizeError: llama-quantize is missing or exits non-zero (its last output line is quoted).
    """
    exe = find_llama_quantize()
    cmd = [str(exe), *(["--keep-split"] if keep_split else []), str(src), str(dst), quant.name]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise QuantizeError(f"{dst}: llama-quantize {quant.name} failed (exit {done.returncode}): {last[0]}")
