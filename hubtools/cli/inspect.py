"""`hubtools inspect PATH`: what a checkpoint folder holds, from its headers."""

from __future__ import annotations

from pathlib import Path

import click

from hubtools.cli.errors import handle_errors
from hubtools.cli.output import emit_json, json_option


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@json_option("Print JSON.")
@handle_errors
def inspect_command(path: Path, as_json: bool) -> None:
    """Describe a checkpoint folder from its headers: layout, architecture, parameters, dtype, size."""
    from hubtools.inspection import format_summary, summarize

    summary = summarize(path)
    if as_json:
        emit_json(summary.to_dict())
    else:
        click.echo(format_summary(summary))
