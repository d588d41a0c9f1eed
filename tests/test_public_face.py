"""The public face (`hubtools/__init__.py`): its version comes from the package metadata, its GGUF, recipe
and release names are the library's own functions, and no module inside hubtools imports it."""

from __future__ import annotations

import ast
from importlib.metadata import version
from pathlib import Path

import pytest

import hubtools
from hubtools.testing import tiny_params, write_native_checkpoint

PACKAGE = Path(hubtools.__file__).parent


def test_version_comes_from_the_package_metadata() -> None:
    from hubtools.version import __version__

    assert hubtools.__version__ == __version__ == version("hubtools")


def test_gguf_recipe_and_release_names_are_the_library_functions() -> None:
    from hubtools.gguf.export import export
    from hubtools.gguf.verify import verify_gguf
    from hubtools.pipeline.recipe import load_recipe
    from hubtools.pipeline.release import release

    assert (hubtools.export_gguf, hubtools.verify_gguf) == (export, verify_gguf)
    assert (hubtools.load_recipe, hubtools.release) == (load_recipe, release)
    assert hubtools.load_recipe(PACKAGE.parent / "converters" / "mistral-7b-v0.1.yaml").name == "mistral-7b-v0.1"


def test_verify_takes_folders_only_and_names_verify_gguf_for_a_file(tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_params(vocab_size=1000), tokenizer=None)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(
        hubtools.VerifyError, match=r"m\.gguf: expected a checkpoint folder, found a file .*verify_gguf"
    ):
        hubtools.verify(native, tmp_path / "m.gguf")


def test_no_module_inside_hubtools_imports_the_package_root() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if "hubtools" in names or (isinstance(node, ast.ImportFrom) and node.module == "hubtools"):
                found.append(str(path.relative_to(PACKAGE.parent)))
    assert found == []
