"""One-pass checks: each tensor read once feeds the bit-exact check and both forwards, with the same
numbers as the two-pass path (tensors, then `compare_logits` reading every tensor again)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.converter import convert
from hubtools.model.names import NameTable
from hubtools.model.params import default_rope_theta
from hubtools.testing import tiny_params, write_native_checkpoint
from hubtools.verification.hf_forward import load_config
from hubtools.verification.logits import compare_logits
from hubtools.verification.stream import TensorTally, one_pass


@pytest.fixture(scope="module", params=["moe", "dense"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(request.param)
    params = tiny_params(moe=request.param == "moe", vocab_size=300, sliding_window=5)
    native = write_native_checkpoint(root / "native", params, tokenizer=None)
    convert(native, root / "hf", max_shard_size=20_000)
    return native, root / "hf"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_gives_the_two_pass_numbers_exactly(pair: tuple[Path, Path], dtype: torch.dtype) -> None:
    native, hf = pair
    with open_checkpoint(native) as src, open_checkpoint(hf) as dst:
        theta = default_rope_theta(src.params)
        config = load_config(hf)
        two = compare_logits(src, dst, config, dtype=dtype, rope_theta=theta, progress=lambda _: None)
        table = NameTable(src.params)
        tensors, one = one_pass(
            src, dst, hf, table, True, dtype=dtype, rope_theta=theta, enabled=True, progress=lambda _: None
        )
    assert one.to_dict() == two.to_dict() and one.passed
    assert tensors.passed and tensors.compared == len(table.specs)


def test_the_tally_names_a_tensor_that_differs_by_one_element(pair: tuple[Path, Path]) -> None:
    native, _ = pair
    with open_checkpoint(native) as src:
        table = NameTable(src.params)
        tally = TensorTally(table, src.params)
        spec = table.specs[3]
        a = src.read(spec.native)
        from hubtools.model.transforms import to_hf

        wrong = to_hf(spec.transform, a, src.params).clone()
        wrong.view(-1)[7] += 1
        assert not tally.check(spec, a, wrong)
    result = tally.result()
    assert result.mismatched == (spec.hf,) and result.differences[spec.hf]["elements"] == 1
