"""What the commands draw and print: the JSON printer, the byte progress bar and the shared flags."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def emit_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def byte_progress(total: int, quiet: bool, desc: str) -> Any:
    """A tqdm bar counting bytes (hidden when `quiet`); tqdm is imported only when a command runs."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=True if quiet else None,
        leave=False,
        mininterval=0.5,
    )


def quiet_option(help: str = "No progress bar or summary.") -> Callable[[F], F]:
    return click.option("--quiet", "-q", is_flag=True, help=help)


def json_option(help: str = "Print a machine-readable summary.") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)
