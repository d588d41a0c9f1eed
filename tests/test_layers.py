"""The command line's privileges stay in `hubtools/cli/`: only it imports click or reads the environment.

Checked on the source (every module's AST, function-level imports included), so a new module is
covered without a test of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hubtools"
CLI = PACKAGE / "cli"
ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if CLI not in p.parents)


def _privileges(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names if a.name.split(".")[0] == "click"]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "click":
                found.append(f"imports from {node.module}")
            if node.module == "os":
                found += [f"imports os.{a.name}" for a in node.names if a.name in ENVIRONMENT]
        elif isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT:
            found.append(f"reads .{node.attr}")
    return found


def test_only_the_cli_imports_click_or_reads_the_environment() -> None:
    modules = _library_modules()
    assert len(modules) > 50 and not any(CLI in p.parents for p in modules)
    found = {
        str(p.relative_to(PACKAGE.parent)): bad
        for p in modules
        if (bad := _privileges(ast.parse(p.read_text(encoding="utf-8"), filename=str(p))))
    }
    assert found == {}


def test_the_check_sees_what_it_looks_for() -> None:
    assert _privileges(ast.parse("import click")) == ["imports click"]
    assert _privileges(ast.parse("def f():\n    from click.testing import CliRunner")) == ["imports from click.testing"]
    assert _privileges(ast.parse("import os\nx = os.environ.get('A')")) == ["reads .environ"]
    assert _privileges(ast.parse("from os import getenv")) == ["imports os.getenv"]
    assert _privileges(ast.parse("import os\nos.getenv('A')")) == ["reads .getenv"]
    assert _privileges(ast.parse("import os\nos.path.join('a')")) == []


def test_the_cli_does_read_the_environment_in_one_place() -> None:
    def reads(path: Path) -> bool:
        return any("click" not in x for x in _privileges(ast.parse(path.read_text(encoding="utf-8"))))

    assert sorted(p.name for p in CLI.glob("*.py") if reads(p)) == ["hub.py"]  # HfApi from the environment
