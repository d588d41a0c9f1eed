"""The original's card table of every released form (seed 002's "Quantizations & VRAM", with the method behind
its quality figure): BF16, FP8, GPTQ, AWQ and each GGUF type, with bits per weight, size, memory needed to
load and measured quality (`hubtools card SPEC --model DIR --forms DIR ...`).

Each form is read from what was released: the HF folder (`--model`, 16 bits: the reference, its verify report
saying whether the conversion is exact), a quantized folder (`hubtools quantize`: its verify report gives mean
KL, top-1 and perplexity vs the original on held-out text), a GGUF folder (each file's `<file>.verify.json`:
mean KL and top-1 vs the original in float32). Bits per weight are the files' bits over the model's
parameters (scales, zero points and the unquantized tensors included); memory to load is what the usual
client holds: vLLM keeps GPTQ/AWQ packed, llama.cpp maps the file (TheBloke's +2.5 GB rule).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hubtools.card.gguf import MAX_RAM_EXTRA, find_releases
from hubtools.card.quantized import LOAD_EXTRA, quality_cells, read_release
from hubtools.errors import CardError
from hubtools.units import size_both

MEASURED_BY = {
    "reference": "the reference",
    "quantized": "`hubtools verify` on held-out text, vs the original",
    "gguf": "`hubtools verify` (clean-room forward on the dequantized file), vs the original in float32",
}


@dataclass(frozen=True)
class Form:
    """One row of the table."""

    name: str
    bits_per_weight: str
    size: str
    memory: str
    kl: str
    top1: str
    measured_by: str


def _weights_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _bpw(size: int, parameters: int) -> str:
    return f"{8 * size / parameters:.2f}" if parameters else "n/a"


def model_form(folder: Path, parameters: int, dtype: str | None = None) -> Form:
    """The unquantized HF folder (BF16, or FP8 when its config says float8)."""
    size = _weights_size(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    name = "FP8" if "quantization_config" in config else (dtype or str(config.get("dtype", "bfloat16"))).upper()
    name = {"BFLOAT16": "BF16", "FLOAT16": "F16", "FLOAT32": "F32"}.get(name, name)
    return Form(name, _bpw(size, parameters), size_both(size), size_both(int(size * (1 + LOAD_EXTRA))), "0", "100%",
                MEASURED_BY["reference"])  # fmt: skip


def folder_forms(folder: Path, parameters: int) -> list[Form]:
    """The rows a released folder contributes: a quantized folder one, a GGUF folder one per type.

    Raises:
        CardError: a folder that is neither (named).
    """
    if any(folder.glob("*.gguf")):
        rows = []
        for release in find_releases(folder):
            logits = release.report.logits if release.report else None
            kl = f"{logits.mean_kl:.4f}" if logits and logits.mean_kl is not None else "not measured"
            top1 = f"{100 * (logits.top1_agreement or 0):.1f}%" if logits and logits.mean_kl is not None else kl
            rows.append(
                Form(
                    f"GGUF {release.quant}",
                    _bpw(release.size, parameters),
                    size_both(release.size),
                    size_both(int(release.size + MAX_RAM_EXTRA)),
                    kl,
                    top1,
                    MEASURED_BY["gguf"],
                )  # fmt: skip
            )
        return rows
    if (folder / "config.json").is_file() and "quantization_config" in (folder / "config.json").read_text():
        if not (folder / "quantization_report.json").is_file():
            return [model_form(folder, parameters)]  # an FP8 checkpoint: no calibration report
        made = read_release(folder)
        cells = quality_cells(made.quality)
        size = made.size
        return [
            Form(
                f"{made.method_name} {made.bits}-bit (group {made.group_size})",
                _bpw(size, parameters),
                size_both(size),
                size_both(int(size * (1 + LOAD_EXTRA))),
                cells["kl"],
                cells["top1"],
                MEASURED_BY["quantized"] if made.quality else "not measured",
            )  # fmt: skip
        ]
    raise CardError(f"{folder}: expected a quantized HF folder (hubtools quantize) or GGUF files, found neither")


def release_forms(model: Path | None, folders: Sequence[Path], parameters: int) -> list[Form]:
    """Every form, the unquantized one first, then by size."""
    rows = [f for folder in folders for f in folder_forms(folder, parameters)]
    rows.sort(key=lambda f: -float(f.bits_per_weight) if f.bits_per_weight != "n/a" else 0)
    return ([model_form(model, parameters)] if model is not None else []) + rows
