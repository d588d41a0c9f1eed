"""`hubtools verify SRC CONVERTED`: prove a conversion exact; a `.gguf` CONVERTED goes to the GGUF verifier."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hubtools.cli.errors import handle_errors
from hubtools.cli.output import quiet_option
from hubtools.dtypes import COMPUTE_DTYPES, DType
from hubtools.validation import compute_dtype


@click.command("verify")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("converted", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JSON to this file.",
)
@click.option(
    "--dtype",
    metavar=f"[{'|'.join(DType.values(*COMPUTE_DTYPES))}]",
    default="float32",
    show_default=True,
    help="Compute dtype of the logits check (float32 catches conversion bugs).",
)
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL prompts: texts (tokenizer and logits checks) and conversations, optionally with tools "
    '({"messages": [...], "tools": [...]}; tokenizer check).',
)
@click.option("--rope-theta", type=float, help="The native model's rope_theta when params.json omits it.")
@click.option("--no-logits", is_flag=True, help="Skip the forward passes (structure, tensors, tokenizer only).")
@click.option("--force", is_flag=True, help="Replace a --json report hubtools wrote earlier (unchanged).")
@quiet_option("No progress; print the table only when a check fails.")
@handle_errors
def verify_command(
    src: Path,
    converted: Path,
    json_path: Path | None,
    dtype: str,
    prompts_path: Path | None,
    rope_theta: float | None,
    no_logits: bool,
    force: bool,
    quiet: bool,
) -> None:
    """Prove CONVERTED (an HF folder, or a .gguf file / split set) is an exact conversion of SRC.

    Exits 0 only if every check passes, 1 otherwise (the table names what failed).
    """
    from hubtools.destination import check_destination, write_file
    from hubtools.verification.report_text import format_report

    def say(message: str) -> None:
        click.echo(f"verify: {message}", err=True)

    if json_path is not None:
        check_destination(json_path, force=force)  # before the run: a missing folder, a file not ours
    progress = None if quiet else say
    compute_dtype(dtype)  # as `hubtools.verify` checks it, for a GGUF file too
    if converted.is_file():  # a GGUF file (or split set), against the folder it was exported from
        from hubtools.gguf.verify import verify_gguf

        gguf_report = verify_gguf(
            src,
            converted,
            prompts_path=prompts_path,
            check_logits=not no_logits,
            rope_theta=rope_theta,
            progress=progress,
        )
        passed, payload, table = gguf_report.passed, gguf_report.to_dict(), format_report(gguf_report)
    elif _is_quantized(converted):  # a GPTQ / AWQ folder: loaded as users load it, quality against the source
        from hubtools.quantization.verify import verify_quantized
        from hubtools.verification.run import prompt_texts

        quantized = verify_quantized(src, converted, texts=prompt_texts(prompts_path), progress=progress)
        passed, payload, table = quantized.passed, quantized.to_json(), quantized.text()
    else:
        from hubtools.verification.run import verify

        report = verify(
            src,
            converted,
            dtype=dtype,
            prompts_path=prompts_path,
            check_logits=not no_logits,
            rope_theta=rope_theta,
            progress=progress,
        )
        passed, payload, table = report.passed, report.to_dict(), format_report(report)
    if not quiet or not passed:
        click.echo(table)
    if json_path is not None:
        text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)  # no bare NaN
        write_file(json_path, text + "\n", force=force)
    if not passed:
        sys.exit(1)


def _is_quantized(folder: Path) -> bool:
    from hubtools.quantization.verify import is_quantized_folder

    return is_quantized_folder(folder)
