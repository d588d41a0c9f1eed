"""Pure tensor transforms between native and HF layouts, each registered with its inverse.

Native q/k rows hold rotary pairs interleaved (complex rotation); HF uses rotate-half. Converting
permutes the rows of wq with n_heads and of wk with n_kv_heads (permuting k with n_heads is the
historical bug of transformers #31766 / llama.cpp #3364).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hubtools.model.params import ModelParams

# Transforms only reorder rows, so they work alike on torch tensors and on numpy arrays, including a
# [rows, cols * itemsize] uint8 view of raw bytes: the converter permutes q/k without importing torch.
Array = Any


def interleaved_to_half(w: Array, n_heads: int) -> Array:
    """Permute q/k rows from interleaved rotary pairs (native) to rotate-half (HF).

    Example:
        >>> import torch
        >>> interleaved_to_half(torch.arange(4.).reshape(4, 1), 1).flatten().tolist()
        [0.0, 2.0, 1.0, 3.0]
    """
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def half_to_interleaved(w: Array, n_heads: int) -> Array:
    """Inverse of `interleaved_to_half`."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _identity(w: Array, params: ModelParams) -> Array:
    return w


Transform = Callable[[Array, ModelParams], Array]


def transform_pair(name: str) -> tuple[Transform, Transform]:
    """(native -> HF, HF -> native) functions for a transform named in the name table."""
    pairs: dict[str, tuple[Transform, Transform]] = {
        "identity": (_identity, _identity),
        "rotary_q": (lambda w, p: interleaved_to_half(w, p.n_heads), lambda w, p: half_to_interleaved(w, p.n_heads)),
        "rotary_k": (
            lambda w, p: interleaved_to_half(w, p.n_kv_heads),
            lambda w, p: half_to_interleaved(w, p.n_kv_heads),
        ),
    }
    return pairs[name]


def to_hf(transform: str, w: Array, params: ModelParams) -> Array:
    """Apply a named transform native -> HF."""
    return transform_pair(transform)[0](w, params)


def to_native(transform: str, w: Array, params: ModelParams) -> Array:
    """Apply a named transform HF -> native."""
    return transform_pair(transform)[1](w, params)
