"""The README's command reference and each command's --help name the same options."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from hubtools.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
_START = README.index("```text\nhubtools [--debug] convert") + len("```text\n")
USAGE = README[_START : README.index("```", _START)]


def _documented(command: str) -> set[str]:
    lines = USAGE.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"hubtools( \[--debug\])? {command}\b", line))
    text = lines[start]
    for line in lines[start + 1 :]:
        if line.startswith("hubtools "):
            break
        text += line
    return set(re.findall(r"(--[a-z][a-z-]*)", text)) - {"--debug"}


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_of_every_command_is_in_the_readme(name: str) -> None:
    command = cli.commands[name]
    options = {o for p in command.params if isinstance(p, click.Option) for o in p.opts if o.startswith("--")}
    assert options - {"--help"} == _documented(name), name


def test_chat_template_auto_is_explained() -> None:
    assert "`--chat-template auto` means" in README
