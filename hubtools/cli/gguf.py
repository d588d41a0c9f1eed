"""`hubtools gguf SRC DST`: GGUF files as llama.cpp's converter would write them; gguf is imported when it runs."""

from __future__ import annotations

from pathlib import Path

import click

from hubtools.cli.errors import handle_errors
from hubtools.cli.output import byte_progress, emit_json, json_option, quiet_option
from hubtools.tokenization.choices import ChatTemplate


@click.command("gguf")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--quant", default=None, help="Comma-separated types, e.g. f16,q8_0,q4_k_m (default: the recipe's, else f16)."
)
@click.option("--name", help="File stem: DST/<name>.<QUANT>.gguf (default: the recipe's name, else SRC's folder name).")
@click.option(
    "--recipe", type=click.Path(path_type=Path), help="converters/NAME.yaml: validate SRC, take its gguf list."
)
@click.option(
    "--chat-template",
    type=click.Choice(ChatTemplate.values()),
    default=None,
    help="Chat template (default: the recipe's; an HF source's own; else auto).",
)
@click.option("--split-max-size", default=None, help="Split files above this size, e.g. 50GB (llama.cpp's convention).")
@click.option(
    "--mmproj",
    default=None,
    metavar="TYPE",
    help="A vision model's projector too, DST/mmproj-<name>.<TYPE>.gguf (f32, f16, bf16 or q8_0).",
)
@click.option("--force", is_flag=True, help="Replace same-name, same-quant files hubtools wrote, unchanged.")
@quiet_option()
@json_option()
@handle_errors
def gguf_command(
    src: Path,
    dst: Path,
    quant: str | None,
    name: str | None,
    recipe: Path | None,
    chat_template: str | None,
    split_max_size: str | None,
    mmproj: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Export SRC (native or HF layout) to GGUF files in DST, streaming, as llama.cpp's converter would (a vision
    model: its text model, and with --mmproj its projector)."""
    from hubtools.checkpoint.reader import open_checkpoint
    from hubtools.gguf.export import check_export_inputs, export, parse_mmproj
    from hubtools.pipeline.overlay import gguf_options
    from hubtools.pipeline.recipe import load_recipe
    from hubtools.units import human_bytes

    rec = load_recipe(recipe) if recipe else None
    # the values are checked by the functions `export_gguf` calls, so the CLI and the API refuse alike
    options = gguf_options(rec, quants=quant, name=name, chat_template=chat_template, split_max_size=split_max_size)
    check_export_inputs(src, quants=options.quants, name=options.name)  # before the recipe opens SRC
    if mmproj is not None:
        parse_mmproj(mmproj)
    if options.check:
        with open_checkpoint(src) as ckpt:
            options.check(ckpt)
    total = _source_bytes(src) * (len(options.quants) + (mmproj is not None))
    with byte_progress(total, quiet or as_json, "gguf") as bar:
        result = export(
            src,
            dst,
            quants=options.quants,
            name=options.name,
            chat_template=options.chat_template.value if options.chat_template else None,
            overrides=options.overrides,
            split_max_size=options.split_max_size,
            force=force,
            progress=bar.update,
            mmproj=mmproj,
        )
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        for out in result.outputs:
            click.echo(f"{out.quant}: {', '.join(out.files)} ({human_bytes(out.bytes)})")
        if result.mmproj is not None:
            out = result.mmproj
            click.echo(f"mmproj {out.quant}: {', '.join(out.files)} ({human_bytes(out.bytes)})")
        click.echo(f"{result.architecture} -> {len(result.outputs)} GGUF file(s) in {result.seconds:.1f}s -> {dst}")


def _source_bytes(src: Path) -> int:
    from hubtools.checkpoint.layout import detect_layout

    try:
        return detect_layout(src).total_bytes if src.is_dir() else 0
    except Exception:  # the export reports the real problem
        return 0
