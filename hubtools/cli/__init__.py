"""The `hubtools` command line: thin click commands over the library, one module per command.

This package is the only place that imports click, reads the environment (`hub.py`: HF_ENDPOINT,
HF_TOKEN), draws progress (`output.py`) and picks exit codes (`errors.py`: every `HubtoolsError` becomes
one line on stderr and a non-zero exit; click's usage errors are one line too, exit 2: `OneLineGroup`;
`--debug` shows the traceback). Every command is wired the same
way: a `click.command` in its own module, wrapped in `handle_errors`, added to the group below.
"""

from __future__ import annotations

import gc
import logging
import sys

import click

from hubtools.cli.card import card_command
from hubtools.cli.convert import convert_command
from hubtools.cli.demo import demo_command
from hubtools.cli.errors import OneLineGroup, unwind_on_termination
from hubtools.cli.gguf import gguf_command
from hubtools.cli.inspect import inspect_command
from hubtools.cli.publish import publish_command
from hubtools.cli.quantize import quantize_command
from hubtools.cli.release import release_command
from hubtools.cli.verify import verify_command

COMMANDS = (
    convert_command,
    inspect_command,
    demo_command,
    verify_command,
    card_command,
    publish_command,
    gguf_command,
    quantize_command,
    release_command,
)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """`--version`, as click's version_option prints it; the version is read (package metadata) only here."""
    if not value or ctx.resilient_parsing:
        return
    from hubtools.version import __version__

    click.echo(f"hubtools, version {__version__}")
    ctx.exit()


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Convert, verify, card and publish Mistral-family models."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")


for _command in COMMANDS:
    cli.add_command(_command)

GC_THRESHOLD = (50_000, 20, 20)  # allocations between young collections (CPython's default: 700)


def main() -> None:
    """Console-script entry point: SIGTERM and SIGHUP unwind like Ctrl-C, so outputs are cleaned up.

    The cyclic garbage collector runs less often than CPython's default: with its 700-allocation trigger
    it walks the million objects that importing torch and transformers creates about a thousand times per
    `verify` (1.1 s of 6 on the 3.4 GB bench model); at 50,000 it runs a dozen times and still collects.
    """
    gc.set_threshold(*GC_THRESHOLD)
    unwind_on_termination()
    argv = sys.argv[1:]
    if "--debug" in argv[1:] and argv[:1] != ["--debug"]:  # `hubtools verify ... --debug` works too
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    cli(args=argv, prog_name="hubtools")
