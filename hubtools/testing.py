"""Synthetic native checkpoints in every layout, for tests, the demo and benchmarks.

Weights are random (seeded) and scaled so a forward pass stays well conditioned; the tokenizer is a
real one shipped by mistral-common, copied under its native file name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from hubtools.checkpoint.safetensors_format import build_header
from hubtools.families import family_named
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
from hubtools.model.hf_config import to_native_params
from hubtools.model.names import Part, TensorSpec, tensor_specs

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
) -> ModelParams:
    """Small, valid params for a Mixtral (moe=True) or Mistral; head_dim may differ from dim/n_heads."""
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
    )


def synthetic_tensor(spec: TensorSpec, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """A random tensor for one spec: norms near 1, matrices scaled by 1/sqrt(fan_in)."""
    if len(spec.shape) == 1:
        return (1.0 + 0.1 * torch.randn(spec.shape, generator=generator)).to(dtype)
    scale = spec.shape[1] ** -0.5 if spec.part is not Part.EMBEDDING else 1.0
    return (torch.randn(spec.shape, generator=generator) * scale).to(dtype)


def synthetic_tensors(
    params: ModelParams, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """(native name, tensor) pairs one at a time, so big benchmark models never sit in memory."""
    generator = torch.Generator().manual_seed(seed)
    for spec in tensor_specs(params):
        yield spec.native, synthetic_tensor(spec, dtype, generator)


def copy_tokenizer(kind: str, folder: Path) -> Path:
    """Copy a real mistral-common tokenizer file into `folder` under its native name."""
    shipped, native, _ = TOKENIZERS[kind]
    return Path(shutil.copyfile(mistral_common_data() / shipped, folder / native))


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
        copy_tokenizer(tokenizer, folder)
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
            f.write(build_header([(s.native, dtype, s.shape) for s in group], {"format": "pt"}))
            for _ in group:
                _, t = next(tensors)
                f.write(t.contiguous().view(torch.uint8).numpy().tobytes())


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
