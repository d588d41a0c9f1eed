"""`hubtools.dtypes.DType`: one dtype, three spellings (name, safetensors code, torch dtype)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hubtools.checkpoint.safetensors_format import dtype_code, dtype_name, itemsize, torch_dtype
from hubtools.dtypes import CAST_DTYPES, COMPUTE_DTYPES, DType
from hubtools.errors import InvalidValueError


@pytest.mark.parametrize("dtype", list(DType))
def test_every_spelling_parses_to_the_same_dtype(dtype: DType) -> None:
    assert DType.parse(dtype.value) is DType.parse(dtype.code) is DType.parse(dtype.torch) is DType.parse(dtype)
    assert dtype.torch is getattr(torch, dtype.value)
    assert (dtype_code(dtype), dtype_name(dtype), itemsize(dtype.code)) == (dtype.code, dtype.value, dtype.itemsize)
    assert torch_dtype(dtype.code) is dtype.torch
    assert torch.empty(0, dtype=dtype.torch).element_size() == dtype.itemsize


def test_a_dtype_prints_and_serialises_as_its_name() -> None:
    assert (str(DType.BFLOAT16), f"{DType.BFLOAT16}", f"{DType.FLOAT16:>8}") == ("bfloat16", "bfloat16", " float16")
    assert json.dumps({"dtype": DType.FLOAT32}) == '{"dtype": "float32"}'
    assert DType.BFLOAT16 == "bfloat16"


def test_an_unknown_dtype_is_one_invalid_value_error_naming_it() -> None:
    with pytest.raises(InvalidValueError, match=r"^dtype 'float8': expected one of float64, float32, float16"):
        DType.parse("float8")
    with pytest.raises(InvalidValueError, match=r"^dtype 'None': expected one of"):
        DType.parse(None)


def test_the_choices_offered_by_the_commands() -> None:
    assert DType.values(*CAST_DTYPES) == ["bfloat16", "float16", "float32"]
    assert DType.values(*COMPUTE_DTYPES) == ["float32", "bfloat16"]
    assert len(DType.values()) == len(DType) == 12


def test_importing_dtypes_does_not_import_torch() -> None:
    code = "import sys, hubtools.dtypes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
