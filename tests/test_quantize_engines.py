"""GPTQ's lazy-batch sweep and AWQ's scale search, on single matrices (no model, no file): fast unit tests."""

from __future__ import annotations

import torch

from hubtools.quantization import gptq as gptq_module
from hubtools.quantization.awq import candidate_scales, output_error, search_scales
from hubtools.quantization.gptq import Hessian, gptq
from hubtools.quantization.scheme import fake_quantize, group_scales, round_to_nearest


def _inputs(columns: int, tokens: int = 1024, seed: int = 0) -> torch.Tensor:
    """Correlated inputs with two outlier channels (what GPTQ's Hessian and AWQ's scales exist for)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, columns, generator=generator) @ torch.randn(columns, columns, generator=generator)
    x[:, [3, 11]] *= 25
    return x / columns**0.5


def _column_by_column(w: torch.Tensor, h: torch.Tensor, *, bits: int, group_size: int, damp: float) -> torch.Tensor:
    """GPTQ as the paper's Algorithm 1 states it before lazy batching: each column's error is fed at once into
    every later column (no act-order, no dead columns in these inputs)."""
    w = w.clone()
    columns = w.shape[1]
    scales = group_scales(w.reshape(-1, group_size), bits).reshape(w.shape[0], -1)
    damped = h + damp * torch.diag(h).mean() * torch.eye(columns)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    q = torch.zeros_like(w)
    for i in range(columns):
        q[:, i] = fake_quantize(w[:, i : i + 1], scales[:, i // group_size, None], bits)[:, 0]
        err = (w[:, i] - q[:, i]) / upper[i, i]
        w[:, i:] -= err[:, None] * upper[i, i:][None, :]
    return q


def test_gptq_lazy_blocks_round_as_the_column_by_column_algorithm() -> None:
    """Blocks of columns with the error applied lazily (GPTQ's lazy batch) give the codes of the plain sweep; only
    float summation order differs, so a code may flip where a value sits on a rounding boundary."""
    x, w = _inputs(192), torch.randn(48, 192, generator=torch.Generator().manual_seed(1))
    hessian = Hessian(192, torch.device("cpu"))
    hessian.add(x)
    expected = _column_by_column(w, hessian.matrix(), bits=4, group_size=32, damp=0.01)
    block = gptq_module.BLOCK
    try:
        gptq_module.BLOCK = 64  # three blocks, so the lazy updates between blocks are exercised
        got, _ = gptq(w, hessian.matrix(), bits=4, group_size=32, damp=0.01, act_order=False)
    finally:
        gptq_module.BLOCK = block
    assert (got == expected).float().mean() > 0.995
    assert output_error(w, got, x.T @ x) < 1.01 * output_error(w, expected, x.T @ x)


def test_awq_search_never_does_worse_than_rounding_on_its_inputs_and_protects_the_outliers() -> None:
    x, w = _inputs(128), torch.randn(64, 128, generator=torch.Generator().manual_seed(2))
    gram, magnitude = x.T @ x, x.abs().mean(0)
    s, alpha, _, ratio = search_scales([w], magnitude, gram, bits=4, group_size=32, grid=20, power_of_two=False)
    rtn, _ = round_to_nearest(w, 4, 32)
    deq, _ = round_to_nearest(w * s, 4, 32)
    assert output_error(w, deq / s, gram) <= output_error(w, rtn, gram)
    assert ratio <= 1.0 and alpha > 0  # outlier channels make some scaling pay
    assert s[[3, 11]].min() > s.median()  # the outlier channels get the larger scales


def test_awq_power_of_two_scales_fold_exactly() -> None:
    """Where a passenger (the router) takes the scales back, they are powers of two: x / s * s == x exactly."""
    magnitude = _inputs(64).abs().mean(0)
    s = candidate_scales(magnitude, 0.5, power_of_two=True)
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)
    x = torch.randn(16, 64)
    assert torch.equal(x / s * s, x)


def test_awq_duo_candidates_only_add_to_the_plain_ones() -> None:
    """`duo=True` searches the plain exponents and the duo ones (`m^a / w^(1-a)`): never a worse fit."""
    x, w = _inputs(128, seed=3), torch.randn(64, 128, generator=torch.Generator().manual_seed(4))
    gram, magnitude = x.T @ x, x.abs().mean(0)
    common = {"bits": 4, "group_size": 32, "grid": 10, "power_of_two": False}
    plain = search_scales([w], magnitude, gram, **common)  # type: ignore[arg-type]
    both = search_scales([w], magnitude, gram, duo=True, **common)  # type: ignore[arg-type]
    assert both.error_vs_rtn <= plain.error_vs_rtn and not plain.duo
