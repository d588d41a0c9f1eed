"""The `hubtools` command line: thin click commands over the library.

Every `HubtoolsError` becomes one line on stderr and a non-zero exit; `--debug` shows the traceback.
Environment variables are read here and nowhere else.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hubtools import __version__
from hubtools.errors import HubtoolsError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn library errors into one clear line and exit code; keep tracebacks for --debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return func(*args, **kwargs)
        except HubtoolsError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except OSError as exc:
            if debug:
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def emit_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubtools")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Convert, verify, card and publish Mistral-family models."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")


# --- convert / inspect / demo commands (core) ---

# --- verify command ---

# --- card command ---

# --- publish command ---


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hubtools")


if __name__ == "__main__":
    main()
