"""`hubtools card SPEC -o README.md`: render a model card (or, with --gguf, the GGUF repo's card)."""

from __future__ import annotations

from pathlib import Path

import click

from hubtools.cli.errors import handle_errors


@click.command("card")
@click.argument("spec")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the card (README.md).",
)
@click.option(
    "--results",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="lm-evaluation-harness results_*.json to import (repeatable; overrides the card's values).",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Converted model folder: real parameter count and its chat template.",
)
@click.option(
    "--report",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="`hubtools verify --json` report to summarise in the card.",
)
@click.option("--force", is_flag=True, help="Replace the output if hubtools wrote it, unchanged.")
@click.option(
    "--gguf",
    "gguf_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Render the GGUF repo card for the *.gguf files in this folder (quality from <file>.verify.json).",
)
@click.option(
    "--quantized",
    "quantized_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Render the -GPTQ / -AWQ repo card for this `hubtools quantize` folder (quality from --report or "
    "<DIR>.verify.json).",
)
@click.option(
    "--forms",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A released quantized or GGUF folder for the card's Quantizations table (repeatable).",
)
@handle_errors
def card_command(
    spec: str,
    output: Path,
    results: tuple[Path, ...],
    model_dir: Path | None,
    report: Path | None,
    force: bool,
    gguf_dir: Path | None,
    quantized_dir: Path | None,
    forms: tuple[Path, ...],
) -> None:
    """Render the model card of SPEC (a card source path or a release name in cards/)."""
    if gguf_dir is not None:
        from hubtools.card.gguf import write_gguf_card

        click.echo(str(write_gguf_card(spec, output, gguf_dir, reports=(report,) if report else (), force=force)))
        return
    if quantized_dir is not None:
        from hubtools.card.quantized import write_quantized_card

        click.echo(str(write_quantized_card(spec, output, quantized_dir, report=report, force=force)))
        return
    from hubtools.card.render import build_card

    written = build_card(
        spec,
        output,
        cards_dir=Path("cards"),
        results=results,
        model_dir=model_dir,
        report=report,
        forms=forms,
        force=force,
    )
    click.echo(str(written))
