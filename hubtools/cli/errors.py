"""Exit codes and one-line errors: every command is wrapped in `handle_errors`; `--debug` keeps tracebacks.
Usage errors (a missing argument, an unknown option, a bad choice) are click's, printed by `OneLineGroup` as
one line too, with click's exit code 2; every other error exits 1 (130 after Ctrl-C).

SIGTERM and SIGHUP (sent by `timeout` and CI cancellation) unwind like Ctrl-C (`Terminated`), so a command
cleans up its outputs the same way.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from hubtools.errors import HubtoolsError, OutputInPlace

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
        except KeyboardInterrupt as exc:
            if debug:
                raise
            outcome = str(exc) if isinstance(exc, OutputInPlace) else "nothing was written"
            click.echo(f"error: interrupted; {outcome}", err=True)
            sys.exit(128 + getattr(exc, "signum", signal.SIGINT))
        except OSError as exc:
            if debug:
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own usage errors and exits keep their behaviour
        except MemoryError:
            if debug:
                raise
            click.echo("error: out of memory (run with --debug to see where)", err=True)
            sys.exit(1)
        except Exception as exc:  # last resort: a bug or an input no reader anticipated, still one line
            if debug:
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(
                f"error: {type(exc).__name__}: {first} (unexpected; run with --debug for the traceback)", err=True
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (sent by `timeout` and by CI cancellation): cleaned up like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def unwind_on_termination() -> None:
    """SIGTERM and SIGHUP raise `Terminated` (a KeyboardInterrupt), so outputs are cleaned up."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)


USAGE_EXIT = 2  # click's exit code for usage errors, kept


class OneLineGroup(click.Group):
    """The `hubtools` group: click's usage errors become one line, "error: {message} (see 'CMD --help')",
    exit 2 (click prints the usage, a hint and the error: four lines). Everything else runs as click runs it."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `hubtools` alone: the help, as click shows it
                exc.show()
                sys.exit(exc.exit_code)
            command = exc.ctx.command_path if exc.ctx is not None else "hubtools"
            message = " ".join(exc.format_message().split())
            click.echo(f"error: {message} (see '{command} --help')", err=True)
            sys.exit(USAGE_EXIT)
        except click.ClickException as exc:
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # without standalone mode click returns an `Exit`'s code (--help, --version) or the command's value
        sys.exit(result if isinstance(result, int) else 0)
