"""The public API: lazy, light to import, plain strings accepted, typed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import hubtools
import hubtools.errors
from hubtools.errors import HubtoolsError
from hubtools.testing import tiny_params, write_native_checkpoint


def test_import_hubtools_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, hubtools; "
        "hubtools.HubtoolsError; hubtools.__version__; "
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'huggingface_hub') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in hubtools.__all__:
        assert getattr(hubtools, name) is not None, name
        assert name in dir(hubtools)
    with pytest.raises(AttributeError, match="^module 'hubtools' has no attribute 'nope'$"):
        hubtools.nope  # noqa: B018


def test_convert_verify_and_inspect_take_plain_strings(tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_params(vocab_size=1000), tokenizer=None)
    result = hubtools.convert(str(native), str(tmp_path / "hf"))
    assert isinstance(result, hubtools.ConversionResult) and result.target_layout == "hf"
    report = hubtools.verify(str(native), str(tmp_path / "hf"))
    assert isinstance(report, hubtools.VerifyReport) and report.passed
    summary = hubtools.inspect(str(tmp_path / "hf"))
    assert isinstance(summary, hubtools.Summary) and summary.layout == "hf"
    with hubtools.open_checkpoint(str(native)) as ckpt:
        assert isinstance(ckpt, hubtools.Checkpoint) and ckpt.layout == "native"
    plan = hubtools.plan_upload(str(tmp_path / "hf"))
    assert isinstance(plan, hubtools.UploadPlan) and plan.files[0].path.startswith("model-00001")


def test_bad_arguments_are_hubtools_errors_not_value_errors(tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_params(vocab_size=1000), tokenizer=None)
    with pytest.raises(hubtools.LayoutError, match="'sideways': expected a layout"):
        hubtools.convert(native, tmp_path / "out", to="sideways")
    with pytest.raises(hubtools.LayoutError, match="expected a checkpoint folder, found nothing"):
        hubtools.convert(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(hubtools.LayoutError, match="expected a checkpoint folder, found a file"):
        hubtools.convert(native / "params.json", tmp_path / "out")
    with pytest.raises(hubtools.InvalidValueError, match="'lots': expected a size"):
        hubtools.convert(native, tmp_path / "out", max_shard_size="lots")  # type: ignore[arg-type]
    with pytest.raises(hubtools.InvalidValueError, match="dtype 'int8': expected one of bfloat16, float32"):
        hubtools.verify(native, native, dtype="int8")
    assert not (tmp_path / "out").exists()


def test_all_lists_exactly_the_lazy_names_and_the_errors() -> None:
    lazy = set(hubtools._LAZY)
    assert lazy <= set(hubtools.__all__)
    errors = set(hubtools.__all__) - lazy - {"__version__"}
    assert all(issubclass(getattr(hubtools, name), hubtools.HubtoolsError) for name in errors)


PUBLIC_ERRORS = sorted(
    (
        value
        for name, value in vars(hubtools.errors).items()
        if isinstance(value, type)
        and issubclass(value, HubtoolsError)
        and value.__module__ == "hubtools.errors"
        and not name.startswith("_")
    ),
    key=lambda error: error.__name__,
)


def test_the_error_module_defines_every_public_error() -> None:
    names = {error.__name__ for error in PUBLIC_ERRORS}
    assert {"Interrupted", "SourceError", "QuantizeError"} <= names and HubtoolsError in PUBLIC_ERRORS


@pytest.mark.parametrize("error", PUBLIC_ERRORS, ids=lambda error: error.__name__)
def test_every_public_error_is_exported_from_the_package_root(error: type[HubtoolsError]) -> None:
    assert getattr(hubtools, error.__name__, None) is error
    assert error.__name__ in hubtools.__all__


def test_bytes_on_disk_do_not_import_tokenization_or_torch() -> None:
    code = (
        "import json, sys, hubtools.checkpoint.reader, hubtools.checkpoint.layout, hubtools.converter; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('hubtools.tokenization') "
        "or m in ('torch', 'transformers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
