"""`hubtools convert SRC DST`: native <-> Hugging Face, streaming."""

from __future__ import annotations

from pathlib import Path

import click

from hubtools.cli.errors import handle_errors
from hubtools.cli.output import byte_progress, emit_json, json_option, quiet_option
from hubtools.dtypes import CAST_DTYPES, DType
from hubtools.tokenization.choices import ChatTemplate


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["hf", "native"]), help="Target layout (default: the other one).")
@click.option(
    "--dtype",
    metavar=f"[{'|'.join(DType.values(*CAST_DTYPES))}]",
    help="Cast tensors (default: keep; the recipe's dtype with --recipe); FP8 weights are dequantized.",
)
@click.option("--max-shard-size", default=None, help="Shard budget, e.g. 5GB (default 5GB or the recipe's).")
@click.option("--recipe", help="converters/NAME.yaml or a release name: validate SRC against it, use its settings.")
@click.option("--rope-theta", type=float, help="Override rope_theta in config.json.")
@click.option("--max-position-embeddings", type=int, help="Override max_position_embeddings.")
@click.option(
    "--chat-template",
    type=click.Choice(ChatTemplate.values()),
    default=None,
    help="Chat template for the HF tokenizer (default: the recipe's, else auto).",
)
@click.option("--force", is_flag=True, help="Replace DST if it holds only files hubtools wrote there, unchanged.")
@quiet_option()
@json_option()
@handle_errors
def convert_command(
    src: Path,
    dst: Path,
    to: str | None,
    dtype: str | None,
    max_shard_size: str | None,
    recipe: str | None,
    rope_theta: float | None,
    max_position_embeddings: int | None,
    chat_template: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Convert SRC (native or HF layout) into DST in the other layout, streaming."""
    from hubtools.checkpoint.layout import detect_layout
    from hubtools.converter import check_convert_inputs, convert
    from hubtools.pipeline.overlay import convert_options
    from hubtools.pipeline.recipe import load_recipe
    from hubtools.units import human_bytes

    options = convert_options(
        load_recipe(recipe) if recipe else None,
        to=to,
        dtype=dtype,
        max_shard_size=max_shard_size,
        rope_theta=rope_theta,
        max_position_embeddings=max_position_embeddings,
        chat_template=chat_template,
    )
    check_convert_inputs(  # what convert() checks first, before the progress bar reads SRC
        src,
        dst,
        to=options.to,
        dtype=options.dtype,
        max_shard_size=options.max_shard_size,
        chat_template=options.chat_template.value,
        force=force,
    )
    total = detect_layout(src, layout=options.to.other if options.to else None).total_bytes
    with byte_progress(total, quiet or as_json, "convert") as bar:
        result = convert(
            src,
            dst,
            to=options.to,
            dtype=options.dtype,
            max_shard_size=options.max_shard_size,
            overrides=options.overrides,
            chat_template=options.chat_template.value,
            force=force,
            progress=bar.update,
            check=options.check,
        )
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        rate = result.bytes / result.seconds / 1e9 if result.seconds else 0.0
        click.echo(
            f"{result.architecture}: {result.source_layout} -> {result.target_layout}, {result.tensors} tensors "
            f"({result.copied_tensors} copied as bytes), {human_bytes(result.bytes)} in {result.seconds:.1f}s "
            f"({rate:.2f} GB/s) -> {dst}"
        )
        for rule in result.rules:
            click.echo(f"  {rule}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
