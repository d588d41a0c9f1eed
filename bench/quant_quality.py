"""Quality of a quantized folder measured independently of the tool that made it (bench/quantize_peer.py).

- `dequantize`: every `*.weight_packed` of a compressed-tensors pack-quantized folder unpacked with the format's
  own `unpack_from_int32`, then `(q - zero_point) * scale` per group, written here (not the tool's loader); every
  other tensor taken from the quantized folder as is (so a router or norm the tool changed is measured too).
  Names are mapped onto the original HF folder's names (llm-compressor writes transformers' per-expert
  `mlp.experts.E.gate_proj`, hubtools `block_sparse_moe.experts.E.w1`): every original tensor must be found
  exactly once and every quantized-folder tensor used, else it fails (no tensor silently ignored).
- `rtn`: plain round-to-nearest of the original weights, same bits and groups: the baseline.
- `logits` / `compare`: the dense weights written as an HF folder beside the original config and loaded with
  transformers (float32), one held-out row at a time; mean KL(original || quantized) over tokens, top-1
  agreement, and perplexity of each on the held-out text (next-token).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

EXPERT_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open has no __iter__)
    return out


def _original_name(name: str, originals: set[str]) -> str:
    if name in originals:
        return name
    moe = re.sub(r"\.mlp\.(gate|experts)\.", r".block_sparse_moe.\1.", name)
    moe = re.sub(
        r"experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.", lambda m: f"experts.{m[1]}.{EXPERT_NAMES[m[2]]}.", moe
    )
    if moe in originals:
        return moe
    raise SystemExit(f"quantized tensor {name} matches no tensor of the original")


def _dequantize_one(t: dict[str, torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    rows, cols = (int(x) for x in t["weight_shape"].tolist())
    q = unpack_from_int32(t["weight_packed"], args["num_bits"], torch.Size([rows, cols])).float()
    scale = t["weight_scale"].float()
    group = args.get("group_size") or cols
    zero = torch.zeros_like(scale)
    if "weight_zero_point" in t:
        zp = t["weight_zero_point"]
        if zp.dtype == torch.int32 and zp.shape[0] != rows:
            zp = unpack_from_int32(zp, args["num_bits"], torch.Size([rows, scale.shape[1]]), packed_dim=0)
        zero = zp.float()
    groups = q.reshape(rows, cols // group, group)
    return ((groups - zero[..., None]) * scale[..., None]).reshape(rows, cols)


def dequantize(folder: Path, original: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Dense float32 tensors under the original folder's names, and which of them were quantized."""
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    (group,) = config["config_groups"].values()
    args = group["weights"]
    originals = set(_tensors(original))
    raw = _tensors(folder)
    prefixes = {k.removesuffix(".weight_packed") for k in raw if k.endswith(".weight_packed")}
    dense: dict[str, torch.Tensor] = {}
    for prefix in sorted(prefixes):
        parts = {s: raw.pop(f"{prefix}.{s}") for s in ("weight_packed", "weight_scale", "weight_shape")}
        if f"{prefix}.weight_zero_point" in raw:
            parts["weight_zero_point"] = raw.pop(f"{prefix}.weight_zero_point")
        dense[_original_name(f"{prefix}.weight", originals)] = _dequantize_one(parts, args)
    quantized = sorted(dense)
    for name, tensor in raw.items():
        dense[_original_name(name, originals)] = tensor.float()
    missing = originals - set(dense)
    if missing:
        raise SystemExit(f"{folder}: {len(missing)} original tensors missing, e.g. {sorted(missing)[:3]}")
    return dense, quantized


def rtn(original: Path, names: list[str], bits: int, group_size: int, symmetric: bool) -> dict[str, torch.Tensor]:
    """Round-to-nearest of the original weights named in `names` (the rest unchanged), float32."""
    out = {k: v.float() for k, v in _tensors(original).items()}
    for name in names:
        w = out[name]
        g = w.reshape(w.shape[0], -1, group_size)
        if symmetric:
            qmax = 2 ** (bits - 1) - 1  # compressed-tensors' symmetric grid: scale = absmax / (range / 2)
            scale = g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / (qmax + 0.5)
            q = (g / scale).round().clamp(-qmax - 1, qmax) * scale
        else:
            lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
            scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
            zero = (-lo / scale).round()
            q = ((g / scale).round() + zero).clamp(0, 2**bits - 1).sub(zero) * scale
        out[name] = q.reshape(w.shape)
    return out


def logits(
    original: Path, tensors: dict[str, torch.Tensor] | None, rows: list[list[int]], work: Path
) -> list[torch.Tensor]:
    """Float32 logits of each held-out row: the original folder, or `tensors` in its place."""
    from transformers import AutoModelForCausalLM

    folder = original
    if tensors is not None:
        folder = work
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy(original / "config.json", folder / "config.json")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        out = [model(torch.tensor([row])).logits[0].float() for row in rows]
    if tensors is not None:
        shutil.rmtree(folder)
    return out


def compare(reference: list[torch.Tensor], quantized: list[torch.Tensor], rows: list[list[int]]) -> dict[str, float]:
    """Mean KL(reference || quantized), top-1 agreement over every position; perplexity of each on the text."""
    kl, agree, count, nll_ref, nll_q, predicted = 0.0, 0, 0, 0.0, 0.0, 0
    for ref, q, row in zip(reference, quantized, rows, strict=True):
        lp, lq = ref.log_softmax(-1), q.log_softmax(-1)
        kl += float((lp.exp() * (lp - lq)).sum())
        agree += int((ref.argmax(-1) == q.argmax(-1)).sum())
        count += len(row)
        target = torch.tensor(row[1:])
        nll_ref -= float(lp[:-1].gather(-1, target[:, None]).sum())
        nll_q -= float(lq[:-1].gather(-1, target[:, None]).sum())
        predicted += len(row) - 1
    return {
        "mean_kl": kl / count,
        "top1": agree / count,
        "perplexity": float(torch.tensor(nll_q / predicted).exp()),
        "perplexity_original": float(torch.tensor(nll_ref / predicted).exp()),
        "tokens": count,
    }


def main() -> None:
    """Measure one quantized folder against its original on held-out rows (a JSON list of token id rows)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original", type=Path, help="the unquantized HF folder")
    parser.add_argument("quantized", type=Path, help="a compressed-tensors pack-quantized folder")
    parser.add_argument("--rows", type=Path, required=True, help="held-out token id rows (JSON)")
    parser.add_argument("--workdir", type=Path, default=Path(".bench/quant_quality"))
    args = parser.parse_args()
    rows = json.loads(args.rows.read_text())
    dense, _ = dequantize(args.quantized, args.original)
    reference = logits(args.original, None, rows, args.workdir)
    print(json.dumps(compare(reference, logits(args.original, dense, rows, args.workdir), rows), indent=2))


if __name__ == "__main__":
    main()
