"""Issue 17, item 4: click's usage errors are one line too (the README's promise), with click's exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import RunCli, assert_one_line_error

CASES = [
    (("verify",), "Missing argument 'SRC'", "verify --help"),
    (("verify", "a"), "'a' does not exist", "verify --help"),
    (("convert", "a", "b", "--nope"), "No such option '--nope'", "convert --help"),
    (("inspect", "a", "--json", "--nope"), "No such option '--nope'", "inspect --help"),
    (("convert", "a", "b", "--to", "gguf"), "Invalid value for '--to'", "convert --help"),
    (("gguf", "a", "b", "--split-max-size"), "requires an argument", "--help"),
    (("nosuch",), "No such command 'nosuch'", "cli --help"),
    (("--nope",), "No such option '--nope'", "cli --help"),
]


@pytest.mark.parametrize(("args", "message", "hint"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_usage_errors_are_one_line_and_exit_2(run_cli: RunCli, args: tuple[str, ...], message: str, hint: str) -> None:
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, message)
    assert result.stderr.rstrip().endswith(f"{hint}')")  # in process, click names the program 'cli'
    assert "Usage:" not in result.output


def test_the_installed_command_prints_one_line_and_keeps_help_and_version() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hubtools.cli", *args], capture_output=True, text=True)

    bad = run("verify", "--debug")  # --debug moves before the command; the usage error stays one line
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: Missing argument 'SRC'. (see 'hubtools verify --help')"
    ]
    assert run("--version").returncode == 0
    helped = run("verify", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: hubtools verify")
    bare = run()  # no command: click's help, as before
    assert bare.returncode == 2 and "Usage: hubtools" in bare.stdout + bare.stderr
