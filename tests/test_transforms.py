from __future__ import annotations

import pytest
import torch

from hubtools.model.transforms import half_to_interleaved, interleaved_to_half, to_hf, to_native
from hubtools.testing import tiny_params


@pytest.mark.parametrize("n_heads,head_dim", [(1, 2), (4, 8), (8, 16)])
def test_rotary_permutation_inverts_exactly(n_heads: int, head_dim: int) -> None:
    w = torch.randn(n_heads * head_dim, 12).to(torch.bfloat16)
    assert torch.equal(half_to_interleaved(interleaved_to_half(w, n_heads), n_heads), w)
    assert torch.equal(interleaved_to_half(half_to_interleaved(w, n_heads), n_heads), w)


def test_permutation_moves_pairs_to_halves_within_each_head() -> None:
    rows = torch.arange(8.0).reshape(8, 1)  # two heads of four rows: pairs (0,1),(2,3) | (4,5),(6,7)
    assert interleaved_to_half(rows, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_k_is_permuted_with_kv_heads_not_heads() -> None:
    params = tiny_params(n_heads=4, n_kv_heads=2)
    wk = torch.randn(2 * params.head_dim, params.dim)
    assert torch.equal(to_hf("rotary_k", wk, params), interleaved_to_half(wk, 2))
    assert not torch.equal(to_hf("rotary_k", wk, params), interleaved_to_half(wk, 4))
    assert torch.equal(to_native("rotary_k", to_hf("rotary_k", wk, params), params), wk)


def test_an_unknown_transform_is_a_mapping_error_not_a_key_error() -> None:
    import numpy as np

    from hubtools.errors import MappingError

    with pytest.raises(MappingError, match="'rotary_v': expected a transform, one of identity, rotary_q, rotary_k"):
        to_hf("rotary_v", np.zeros((4, 1)), tiny_params())
