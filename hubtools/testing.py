"""Synthetic native checkpoints in every layout, for tests, the demo and benchmarks.

Weights are random (seeded) and scaled so a forward pass stays well conditioned; the tokenizer is a
real one shipped by mistral-common, copied under its native file name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hubtools.checkpoint.safetensors_format import build_header
from hubtools.families import family_named, parse_params
from hubtools.filenames import (
    NATIVE_SINGLE,
    NATIVE_STEM,
    PARAMS,
    PTH_SINGLE,
    SPM,
    TEKKEN,
    pth_split_name,
    shard_name,
    spm_versioned_name,
)
from hubtools.model.family import ModelParams
from hubtools.model.fp8 import Fp8, is_quantized, per_element
from hubtools.model.fp8_block import BLOCK
from hubtools.model.hf_config import to_native_params
from hubtools.model.names import Part, TensorSpec, tensor_specs
from hubtools.model.rows import Role
from hubtools.model.vision import VisionParams, parse_vision

FP8_MAX = 448.0  # the largest float8_e4m3fn value
LAYOUTS = ("safetensors", "sharded", "pth", "pth-split")
TOKENIZERS = {  # name -> (file shipped in mistral_common/data, native file name, vocab size)
    "v1": ("tokenizer.model.v1", SPM, 32000),
    "v3": ("mistral_instruct_tokenizer_240323.model.v3", spm_versioned_name("v3"), 32768),
    "v7": ("mistral_instruct_tokenizer_241114.model.v7", spm_versioned_name("v7"), 32768),
    "tekken": ("tekken_240911.json", TEKKEN, 131072),
}


def mistral_common_data() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data"


def tiny_params(
    *,
    moe: bool = True,
    n_layers: int = 2,
    vocab_size: int = 32000,
    dim: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int | None = None,
    hidden_dim: int = 128,
    num_experts: int = 4,
    top_k: int = 2,
    sliding_window: int | None = None,
    rope_theta: float | None = None,
    fp8: bool = False,
) -> ModelParams:
    """Small, valid params for a Mixtral (moe=True) or Mistral; head_dim may differ from dim/n_heads;
    fp8: linear weights in float8_e4m3fn with per-tensor scales (`hubtools.model.fp8`)."""
    return ModelParams(
        dim=dim,
        n_layers=n_layers,
        head_dim=head_dim or dim // n_heads,
        hidden_dim=hidden_dim,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        norm_eps=1e-5,
        vocab_size=vocab_size,
        rope_theta=rope_theta,
        sliding_window=sliding_window,
        num_experts=num_experts if moe else 0,
        num_experts_per_tok=top_k if moe else 0,
        family=family_named("mixtral" if moe else "mistral"),
        quantization=Fp8() if fp8 else None,
    )


def tiny_mistral4_params(**changes: object) -> ModelParams:
    """Small, valid Mistral 4 params (MLA, routed + shared experts, grouped routing, one leading dense layer,
    YaRN); `changes` replace top-level fields, `moe_*` / `yarn_*` keyword names replace those inside."""
    raw: dict[str, object] = {
        "dim": 64, "n_layers": 3, "hidden_dim": 96, "n_heads": 4, "n_kv_heads": 4, "norm_eps": 1e-6,
        "vocab_size": 32000, "rope_theta": 10000.0, "max_position_embeddings": 4096, "q_lora_rank": 32,
        "kv_lora_rank": 16, "qk_rope_head_dim": 16, "qk_nope_head_dim": 8, "v_head_dim": 16,
        "moe": {"num_experts": 8, "num_experts_per_tok": 2, "expert_hidden_dim": 32, "num_shared_experts": 1,
                "routed_scale": 1.5, "num_expert_groups": 1, "num_expert_groups_per_tok": 1,
                "first_k_dense_replace": 1},
        "yarn": {"factor": 4.0, "original_max_position_embeddings": 1024, "beta": 32.0, "alpha": 1.0},
        "llama_4_scaling": {"beta": 0.1, "original_max_position_embeddings": 1024},
    }  # fmt: skip
    for key, value in changes.items():
        section, _, inner = key.partition("_")
        if section in ("moe", "yarn") and inner and key not in raw:
            raw[section] = {**raw[section], inner: value}  # type: ignore[dict-item]
        else:
            raw[key] = value
    return family_named("mistral4").parse_params(raw, source="params.json")


def tiny_ministral3_params(
    *,
    tied: bool = False,
    llama4: bool = True,
    apply_scale: bool = False,
    n_layers: int = 2,
    vocab_size: int = 1000,
    dim: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int | None = None,
    factor: float = 4.0,
    original_max_positions: int = 8,
    rope_theta: float = 1e6,
) -> ModelParams:
    """Small Ministral 3 params: YaRN (scaled or not), llama-4 scaling beyond `original_max_positions` (small, so
    short prompts reach it), tied or untied embeddings."""
    raw: dict[str, object] = {
        "dim": dim, "n_layers": n_layers, "head_dim": head_dim or dim // n_heads, "hidden_dim": 2 * dim,
        "n_heads": n_heads, "n_kv_heads": n_kv_heads, "norm_eps": 1e-5, "vocab_size": vocab_size,
        "rope_theta": rope_theta, "max_position_embeddings": int(original_max_positions * factor),
        "tied_embeddings": tied,
        "yarn": {"factor": factor, "original_max_position_embeddings": original_max_positions, "beta": 32.0,
                 "alpha": 1.0, "apply_scale": apply_scale},
    }  # fmt: skip
    if llama4:
        raw["llama_4_scaling"] = {"original_max_position_embeddings": original_max_positions, "beta": 0.1}
    return family_named("ministral3").parse_params(raw, source="tiny_ministral3_params")


def tiny_ministral_params(
    *, pattern: tuple[int | None, ...] = (None, 4, 4), n_layers: int = 3, vocab_size: int = 1000, dim: int = 64
) -> ModelParams:
    """Small Ministral (8B 2410 shape) params: a per-layer window pattern, null for full attention."""
    raw = {
        "dim": dim, "n_layers": n_layers, "head_dim": 16, "hidden_dim": 2 * dim, "n_heads": 4, "n_kv_heads": 2,
        "norm_eps": 1e-5, "vocab_size": vocab_size, "rope_theta": 1e8, "sliding_window": list(pattern),
    }  # fmt: skip
    return family_named("ministral").parse_params(raw, source="tiny_ministral_params")


def tiny_vision(*, merge: int = 2, layers: int = 2, bias: bool | None = None) -> VisionParams:
    """A small Pixtral encoder: Mistral3's (patch merger, projector norm, no adapter bias) with `merge` > 1,
    Pixtral 12B's (adapter bias, no merger) with `merge` 1."""
    raw: dict[str, Any] = {
        "hidden_size": 32, "num_channels": 3, "image_size": 64, "patch_size": 4, "rope_theta": 10000.0,
        "intermediate_size": 48, "num_hidden_layers": layers, "num_attention_heads": 4, "image_token_id": 10,
        "image_break_token_id": 12, "image_end_token_id": 13,
    }  # fmt: skip
    if merge > 1:
        raw.update(max_image_size=64, spatial_merge_size=merge, add_pre_mm_projector_layer_norm=True,
                   mm_projector_id="patch_merge")  # fmt: skip
    raw["adapter_bias"] = merge == 1 if bias is None else bias
    return parse_vision(raw, source="tiny_vision")


def tiny_vision_params(
    *, merge: int = 2, text: ModelParams | None = None, vision: VisionParams | None = None
) -> ModelParams:
    """A small vision-language model around `text` (default: a dense Mistral with tekken's vocabulary)."""
    text = text or tiny_params(moe=False, vocab_size=TOKENIZERS["tekken"][2], dim=64)
    vision = vision or tiny_vision(merge=merge)
    raw = {**to_native_params(text), "vision_encoder": vision.to_native()}
    return parse_params(raw, source="tiny_vision_params")


def synthetic_tensor(spec: TensorSpec, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """A random tensor for one spec: norms near 1, matrices scaled by 1/sqrt(fan_in)."""
    if len(spec.shape) == 1:
        return (1.0 + 0.1 * torch.randn(spec.shape, generator=generator)).to(dtype)
    fan_in = 1
    for size in spec.shape[1:]:
        fan_in *= size
    scale = fan_in**-0.5 if spec.part is not Part.EMBEDDING else 1.0
    return (torch.randn(spec.shape, generator=generator) * scale).to(dtype)


def spec_dtype(params: ModelParams, spec: TensorSpec, dtype: torch.dtype) -> torch.dtype:
    """The stored dtype of one synthetic tensor: FP8 weights float8_e4m3fn, their scales bfloat16."""
    if spec.row.role is not Role.TENSOR:
        return torch.bfloat16
    return torch.float8_e4m3fn if is_quantized(params, spec) else dtype


def synthetic_tensors(
    params: ModelParams, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """(native name, tensor) pairs one at a time, so big benchmark models never sit in memory.

    An FP8 weight is quantized from a random one as a release is: weight scale amax / 448 (bfloat16; block-wise,
    one per 128x128 block), `(w / scale).to(float8_e4m3fn)`; its activation scale is a random positive bfloat16.
    """
    generator = torch.Generator().manual_seed(seed)
    scale = torch.ones((), dtype=torch.bfloat16)
    for spec in tensor_specs(params):
        if spec.row.role is Role.WEIGHT_SCALE:
            yield spec.native, scale
        elif spec.row.role is Role.ACTIVATION_SCALE:
            yield spec.native, (0.01 + 0.05 * torch.rand((), generator=generator)).to(torch.bfloat16)
        elif is_quantized(params, spec):
            w = synthetic_tensor(spec, torch.float32, generator)
            scale = _block_amax(w) if params.quantization and params.quantization.block else w.abs().max()
            scale = (scale / FP8_MAX).clamp(min=1e-12).to(torch.bfloat16)
            q = w / per_element(scale.float(), w.shape)
            yield spec.native, q.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        else:
            yield spec.native, synthetic_tensor(spec, dtype, generator)


def _block_amax(w: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of each 128x128 block of `w` (the last blocks partial), as a block grid."""
    rows, cols = BLOCK
    padded = torch.nn.functional.pad(w.abs(), (0, -w.shape[1] % cols, 0, -w.shape[0] % rows))
    return padded.unflatten(1, (-1, cols)).unflatten(0, (-1, rows)).amax(dim=(1, 3))


def copy_tokenizer(kind: str, folder: Path) -> Path:
    """Copy a real mistral-common tokenizer file into `folder` under its native name."""
    shipped, native, _ = TOKENIZERS[kind]
    return Path(shutil.copyfile(mistral_common_data() / shipped, folder / native))


def write_tekken_version(folder: Path, version: str) -> Path:
    """mistral-common's tekken_240911.json with its config's `version` set to `version` ("v7", "v11", "v13"), as
    `tekken.json` in `folder`: the same vocabulary under a later instruct format."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    data = json.loads((mistral_common_data() / TOKENIZERS["tekken"][0]).read_text(encoding="utf-8"))
    data["config"]["version"] = version
    if version not in ("v3", "v7"):  # mistral-common wants the list spelled out from v11 on, with the new controls
        named = {32: "[ARGS]", 33: "[CALL_ID]", 34: "[THINK]", 35: "[/THINK]"}
        specials = [dict(t) for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
        count = data["config"]["default_num_special_tokens"]
        fill = Tekkenizer.SPECIAL_TOKEN_TEMPLATE
        specials += [
            {"rank": i, "token_str": named.get(i, fill.format(id=i)), "is_control": True}
            for i in range(len(specials), count)
        ]
        data["special_tokens"] = specials
    path = folder / TEKKEN
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def set_image_config(tekken: Path, vision: VisionParams) -> None:
    """Give a tekken file the image config of `vision` (what mistral-common sizes image tokens by), as the
    tekken.json of each vision release carries its own."""
    data = json.loads(tekken.read_text(encoding="utf-8"))
    data["image"] = {
        "image_patch_size": vision.patch_size,
        "max_image_size": vision.longest_edge,
        "spatial_merge_size": vision.spatial_merge_size,
    }
    tekken.write_text(json.dumps(data), encoding="utf-8")


def write_native_checkpoint(
    folder: Path,
    params: ModelParams,
    *,
    layout: str = "safetensors",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    tokenizer: str | None = "v1",
    shards: int = 2,
    splits: int = 3,
) -> Path:
    """Write a native checkpoint (params.json, weights, tokenizer) in one of `LAYOUTS`.

    Args:
        layout: "safetensors" (consolidated.safetensors), "sharded" (consolidated-0000N-of-0000M),
            "pth" (consolidated.00.pth) or "pth-split" (consolidated.00.pth-split0..N, byte-split).
        tokenizer: a key of `TOKENIZERS`, or None for no tokenizer file.

    Returns:
        The folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARAMS).write_text(json.dumps(to_native_params(params), indent=2) + "\n")
    if tokenizer:
        path = copy_tokenizer(tokenizer, folder)
        vision = params.option("vision")
        if vision is not None and tokenizer == "tekken":
            set_image_config(path, vision)
    if layout in ("safetensors", "sharded"):
        _write_safetensors(folder, params, dtype, seed, shards if layout == "sharded" else 1)
    elif layout in ("pth", "pth-split"):
        path = folder / PTH_SINGLE
        torch.save(dict(synthetic_tensors(params, dtype=dtype, seed=seed)), path)
        if layout == "pth-split":
            _split_file(path, splits)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return folder


def _write_safetensors(folder: Path, params: ModelParams, dtype: torch.dtype, seed: int, shards: int) -> None:
    specs = tensor_specs(params)
    groups = [specs[i * len(specs) // shards : (i + 1) * len(specs) // shards] for i in range(shards)]
    tensors = synthetic_tensors(params, dtype=dtype, seed=seed)
    for i, group in enumerate(groups, 1):
        name = NATIVE_SINGLE if shards == 1 else shard_name(NATIVE_STEM, i, shards)
        with (folder / name).open("wb") as f:
            f.write(build_header([(s.native, spec_dtype(params, s, dtype), s.shape) for s in group], {"format": "pt"}))
            for _ in group:
                _, t = next(tensors)
                f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _split_file(path: Path, parts: int) -> None:
    data_size = path.stat().st_size
    step = -(-data_size // parts)
    with path.open("rb") as src:
        for i in range(parts):
            with path.with_name(pth_split_name(i, path.name)).open("wb") as dst:
                dst.write(src.read(step))
    path.unlink()


def add_outlier_channels(
    folder: Path, params: ModelParams, *, channels: tuple[int, ...] = (3, 41), scale: float = 25.0
) -> Path:
    """Give a native safetensors checkpoint the activation outliers real models have: the norm weights of
    every layer scaled by `scale` on `channels` (a few input channels of every linear then dominate: what
    GPTQ's Hessian and AWQ's scales exist for). Rewrites consolidated.safetensors in place.
    """
    from safetensors.torch import load_file, save_file

    from hubtools.model.names import NameTable

    path = folder / NATIVE_SINGLE
    tensors = load_file(path)
    norms = {s.native for s in NameTable(params).specs if len(s.shape) == 1 and s.layer is not None}
    for name in norms:
        boosted = tensors[name].float()
        boosted[list(channels)] *= scale
        tensors[name] = boosted.to(tensors[name].dtype)
    save_file(tensors, path, metadata={"format": "pt"})
    return folder
