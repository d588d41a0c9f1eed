"""The quantized HF folder: compressed-tensors' own compressor writes every quantized tensor, one decoder
layer per shard (written as soon as the engine finishes the layer), the rest as the source stored them.

Names are the HF checkpoint's (`model.layers.L.block_sparse_moe.experts.E.w1`...), as `hubtools convert`
writes them: what transformers' Mixtral weight conversion collects and fuses (measured with transformers
5.25 + compressed-tensors 0.20.1: no missing or unexpected key, the experts dequantized into
`mlp.experts.gate_up_proj` / `down_proj`), and what vLLM's Mixtral loader maps. config.json carries
`quantization_config` (quant_method `compressed-tensors`, format `pack-quantized`), built by
compressed-tensors' `QuantizationConfig`; the unquantized linears (lm_head, routers) are listed in `ignore`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from hubtools.checkpoint.reader import Checkpoint
from hubtools.filenames import (
    CONFIG,
    GENERATION_CONFIG,
    HF_STEM,
    INDEX,
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    shard_name,
)
from hubtools.model.family import ModelParams
from hubtools.model.names import Layout, NameTable, TensorSpec
from hubtools.model.rows import Part
from hubtools.model.transforms import to_hf
from hubtools.quantization.engine import Quantized
from hubtools.quantization.scheme import SCALE_DTYPE, QuantizeOptions

FORMAT = "pack-quantized"
HF_TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, "chat_template.jinja")


def scheme(options: QuantizeOptions) -> Any:
    """compressed-tensors' scheme for the quantized linears: symmetric int, group-wise, weights only."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(
        num_bits=options.bits, type="int", symmetric=True, strategy="group", group_size=options.group_size
    )
    return QuantizationScheme(targets=["Linear"], weights=args)


def quantization_config(options: QuantizeOptions, ignore: list[str]) -> dict[str, Any]:
    """config.json's `quantization_config`, as compressed-tensors serialises it."""
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig(
        config_groups={"group_0": scheme(options)}, format=FORMAT, quantization_status="compressed", ignore=ignore
    )
    out: dict[str, Any] = json.loads(config.model_dump_json())
    out["quant_method"] = "compressed-tensors"
    return out


def ignored_modules(params: ModelParams, specs: list[TensorSpec], quantized: set[str]) -> list[str]:
    """What a `Linear` target must not catch: the family's kept modules (`Family.quantize_kept_modules`: the
    head, a wrapper's encoder and projector) and each layer's unquantized matrices (routers)."""
    layers = [
        s.hf.removesuffix(".weight")
        for s in specs
        if len(s.shape) == 2 and s.native not in quantized and s.part is Part.LAYER and s.layer is not None
    ]
    return list(dict.fromkeys([*params.family.quantize_kept_modules(params), *layers]))


class FolderWriter:
    """Compresses and writes one unit (embedding, a layer, the head) per shard as the engine yields it."""

    def __init__(self, out: Path, ckpt: Checkpoint, params: ModelParams, options: QuantizeOptions) -> None:
        """`params`: the source's, an FP8 source's without FP8 (`run.plain_params`)."""
        from compressed_tensors.compressors import BaseCompressor

        self.out, self.ckpt, self.params = out, ckpt, params
        self.scheme = scheme(options)
        self.compressor = BaseCompressor.get_value_from_registry(FORMAT)
        self.total = len({s.unit for s in NameTable(params).specs})  # one shard per unit
        self.pending: dict[str, torch.Tensor] = {}
        self.unit: int | None = None
        self.weight_map: dict[str, str] = {}
        self.files: list[str] = []
        self.quantized: set[str] = set()
        self.bytes = 0

    def add(self, item: Quantized) -> None:
        if self.unit is not None and item.spec.unit != self.unit:
            self.flush()
        self.unit = item.spec.unit
        self.pending.update(self.compress(item))

    def compress(self, item: Quantized) -> dict[str, torch.Tensor]:
        """The HF-named tensors of one output tensor: packed codes and scales, or the tensor itself."""
        spec, params = item.spec, self.params
        stored = self.ckpt.tensors[spec.native if self.ckpt.layout is Layout.NATIVE else spec.hf].dtype
        if stored.itemsize == 1:  # an FP8 source's weight, dequantized: written as its release dtype
            stored = torch.bfloat16
        if item.scales is None:
            return {spec.hf: to_hf(spec.transform, item.weight, params).to("cpu", stored).contiguous()}
        self.quantized.add(spec.native)
        weight = to_hf(spec.transform, item.weight, params).float().cpu()
        scales = to_hf(spec.transform, item.scales, params).cpu().to(SCALE_DTYPE)
        packed = self.compressor.compress({"weight": weight, "weight_scale": scales}, self.scheme)
        prefix = spec.hf.removesuffix("weight")
        return {prefix + key: value.contiguous() for key, value in packed.items()}

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = shard_name(HF_STEM, len(self.files) + 1, self.total)
        save_file(self.pending, self.out / name, metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(self.pending, name))
        self.bytes += sum(t.numel() * t.element_size() for t in self.pending.values())
        self.files.append(name)
        self.pending = {}

    def finish(self, config: dict[str, Any], generation: dict[str, Any]) -> list[str]:
        """The last shard, the index, config.json and generation_config.json."""
        self.flush()
        index = {"metadata": {"total_size": self.bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        for path, data in ((INDEX, index), (CONFIG, config), (GENERATION_CONFIG, generation)):
            (self.out / path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return [*self.files, INDEX, CONFIG, GENERATION_CONFIG]


def hf_configs(ckpt: Checkpoint, params: ModelParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """The source's config.json and generation_config.json (an HF source), or those `convert` writes."""
    if ckpt.layout is Layout.HF:
        config = json.loads((ckpt.folder / CONFIG).read_text())
        generation_path = ckpt.folder / GENERATION_CONFIG
        generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
        return config, generation
    from hubtools.model.hf_config import to_hf_config

    hf = to_hf_config(params, dtype="bfloat16")
    return hf.config, hf.generation


def write_tokenizer(ckpt: Checkpoint, out: Path, context: int | None) -> list[str]:
    """An HF source's tokenizer files as they are; a native source's converted as `hubtools convert` does."""
    if ckpt.layout is Layout.HF:
        names = [n for n in HF_TOKENIZER_FILES if (ckpt.folder / n).is_file()]
        if ckpt.tokenizer_file is not None:
            names.append(ckpt.tokenizer_file.name)
        for name in names:
            shutil.copyfile(ckpt.folder / name, out / name)
        return names
    if ckpt.tokenizer_file is None:
        return []
    from hubtools.tokenization.files import write_hf_tokenizer

    return write_hf_tokenizer(ckpt.tokenizer_file, out, model_max_length=context, images=ckpt.params.family.wraps_text)
