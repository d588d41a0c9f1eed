"""Pure tensor transforms between native and HF layouts, each registered with its inverse.

Native q/k rows hold rotary pairs interleaved (complex rotation); HF uses rotate-half. Converting
permutes the rows of wq with n_heads and of wk with n_kv_heads (permuting k with n_heads is the
historical bug of transformers #31766 / llama.cpp #3364).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol

from hubtools.errors import MappingError

# Transforms only reorder rows, so they work alike on torch tensors and on numpy arrays, including a
# [rows, cols * itemsize] uint8 view of raw bytes: the converter permutes q/k without importing torch.
Array = Any


class HeadCounts(Protocol):
    """What the rotary permutation needs of a model (`ModelParams` has it)."""

    @property
    def n_heads(self) -> int: ...
    @property
    def n_kv_heads(self) -> int: ...
    @property
    def vision_heads(self) -> int: ...


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


class Transform(str, Enum):
    """How a tensor changes between layouts; `forward` is native -> HF and `inverse` HF -> native.

    Example:
        >>> import numpy as np
        >>> from hubtools.testing import tiny_params
        >>> w, p = np.arange(16).reshape(16, 1), tiny_params(n_heads=2, head_dim=8)
        >>> bool((Transform.ROTARY_Q.inverse(Transform.ROTARY_Q.forward(w, p), p) == w).all())
        True
    """

    IDENTITY = "identity"
    ROTARY_Q = "rotary_q"
    ROTARY_K = "rotary_k"
    VISION_ROTARY = "vision_rotary"  # a vision encoder's q and k (as many kv heads as heads)

    @classmethod
    def parse(cls, value: Transform | str) -> Transform:
        """`Transform` from its name; an unknown name is a `MappingError`."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise MappingError(f"'{value}': expected a transform, one of {names}") from None

    def heads(self, params: HeadCounts) -> int:
        """The head count the rotary permutation groups rows by (q: n_heads, k: n_kv_heads, vision: its heads)."""
        if self is Transform.VISION_ROTARY:
            return params.vision_heads
        return params.n_heads if self is Transform.ROTARY_Q else params.n_kv_heads

    def forward(self, w: Array, params: HeadCounts) -> Array:
        """native -> HF."""
        return w if self is Transform.IDENTITY else interleaved_to_half(w, self.heads(params))

    def inverse(self, w: Array, params: HeadCounts) -> Array:
        """HF -> native."""
        return w if self is Transform.IDENTITY else half_to_interleaved(w, self.heads(params))

    def towards(self, target: str, w: Array, params: HeadCounts) -> Array:
        """Apply the direction that produces `target`'s layout."""
        return self.forward(w, params) if target == "hf" else self.inverse(w, params)


def to_hf(transform: Transform | str, w: Array, params: HeadCounts) -> Array:
    """Apply a transform native -> HF."""
    return Transform.parse(transform).forward(w, params)


def to_native(transform: Transform | str, w: Array, params: HeadCounts) -> Array:
    """Apply a transform HF -> native."""
    return Transform.parse(transform).inverse(w, params)
