"""`hubtools gguf SRC DST`: the click command, built by `hubtools.cli` with its error handler, progress bar
and JSON printer (so this module does not import the CLI); gguf itself is imported only when it runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def gguf_command(
    handle_errors: Callable[..., Any], byte_progress: Callable[..., Any], emit_json: Callable[..., Any]
) -> click.Command:
    """The `gguf` command, wired to the CLI's shared helpers."""

    @click.command("gguf")
    @click.argument("src", type=click.Path(path_type=Path))
    @click.argument("dst", type=click.Path(path_type=Path))
    @click.option(
        "--quant", default=None, help="Comma-separated types, e.g. f16,q8_0,q4_k_m (default: the recipe's, else f16)."
    )
    @click.option(
        "--name", help="File stem: DST/<name>.<QUANT>.gguf (default: the recipe's name, else SRC's folder name)."
    )
    @click.option(
        "--recipe", type=click.Path(path_type=Path), help="converters/NAME.yaml: validate SRC, take its gguf list."
    )
    @click.option(
        "--chat-template",
        type=click.Choice(["auto", "mistral", "chatml", "none"]),
        default=None,
        help="Chat template (default: the recipe's; an HF source's own; else auto).",
    )
    @click.option(
        "--split-max-size", default=None, help="Split files above this size, e.g. 50GB (llama.cpp's convention)."
    )
    @click.option("--force", is_flag=True, help="Replace existing output files of the same name and quant.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
    @click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
    @handle_errors
    def gguf(
        src: Path,
        dst: Path,
        quant: str | None,
        name: str | None,
        recipe: Path | None,
        chat_template: str | None,
        split_max_size: str | None,
        force: bool,
        quiet: bool,
        as_json: bool,
    ) -> None:
        """Export SRC (native or HF layout) to GGUF files in DST, streaming, as llama.cpp's converter would."""
        from hubtools.checkpoint.reader import open_checkpoint
        from hubtools.gguf.export import export
        from hubtools.gguf.quant import parse_quants
        from hubtools.recipe import check_source, load_recipe
        from hubtools.units import human_bytes, parse_size

        rec = load_recipe(recipe) if recipe else None
        try:
            split = parse_size(split_max_size) if split_max_size else 0
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--split-max-size") from None
        quants = parse_quants(quant or (list(rec.gguf) if rec and rec.gguf else "f16"))
        if rec:
            with open_checkpoint(src) as ckpt:
                check_source(rec, ckpt)
        total = _source_bytes(src) * len(quants)
        with byte_progress(total, quiet or as_json, "gguf") as bar:
            result = export(
                src,
                dst,
                quants=quants,
                name=name or (rec.name if rec else None),
                chat_template=chat_template or (rec.chat_template if rec else None),
                overrides=rec.config_overrides() if rec else None,
                split_max_size=split,
                force=force,
                progress=bar.update,
            )
        if as_json:
            emit_json(result.to_dict())
        elif not quiet:
            for out in result.outputs:
                click.echo(f"{out.quant}: {', '.join(out.files)} ({human_bytes(out.bytes)})")
            click.echo(f"{result.architecture} -> {len(result.outputs)} GGUF file(s) in {result.seconds:.1f}s -> {dst}")

    return gguf


def _source_bytes(src: Path) -> int:
    from hubtools.checkpoint.layout import detect_layout

    try:
        return detect_layout(src).total_bytes if src.is_dir() else 0
    except Exception:  # the export reports the real problem
        return 0
