"""`hubtools demo [WORKDIR]`: the whole release on a tiny synthetic Mixtral, offline."""

from __future__ import annotations

from pathlib import Path

import click

from hubtools.cli.errors import handle_errors


@click.command("demo")
@click.argument("workdir", required=False, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an earlier demo holding only its own files, unchanged.")
@handle_errors
def demo_command(workdir: Path | None, force: bool) -> None:
    """Run the whole release on a tiny synthetic Mixtral, offline: convert, load, generate, verify, card."""
    from hubtools.pipeline.demo import run_demo

    run_demo(workdir, force=force, say=click.echo)
