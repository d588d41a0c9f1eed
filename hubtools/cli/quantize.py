"""`hubtools quantize SRC DST --method gptq|awq`: a GPTQ / AWQ quantized HF folder (compressed-tensors)."""

from __future__ import annotations

from pathlib import Path

import click

from hubtools.cli.errors import handle_errors
from hubtools.cli.output import emit_json, json_option, quiet_option


@click.command("quantize")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--method", required=True, metavar="[gptq|awq|rtn]", help="GPTQ, AWQ, or plain round-to-nearest.")
@click.option("--bits", type=int, default=4, show_default=True, help="Bits per weight.")
@click.option("--group-size", type=int, default=128, show_default=True, help="Input columns per scale.")
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL: texts ("..." or {"text": ...}) and chats ({"messages": [...]}); default: the shipped set.',
)
@click.option("--samples", type=int, default=128, show_default=True, help="Calibration sequences.")
@click.option("--seq-len", type=int, default=512, show_default=True, help="Tokens per calibration sequence.")
@click.option("--format", "fmt", default="compressed-tensors", show_default=True, help="Output format.")
@click.option("--device", default="cpu", show_default=True, metavar="[cpu|cuda]", help="Where calibration computes.")
@click.option("--no-act-order", is_flag=True, help="GPTQ: round columns in order, not by decreasing Hessian diagonal.")
@click.option("--force", is_flag=True, help="Replace DST if it holds only files hubtools wrote there, unchanged.")
@quiet_option("No progress or summary.")
@json_option("Print the report as JSON.")
@handle_errors
def quantize_command(
    src: Path,
    dst: Path,
    method: str,
    bits: int,
    group_size: int,
    calibration: Path | None,
    samples: int,
    seq_len: int,
    fmt: str,
    device: str,
    no_act_order: bool,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Quantize SRC (native or HF folder) to DST with GPTQ or AWQ, one decoder layer at a time.

    Every expert is calibrated on every token; router, embeddings, lm_head and norms stay unquantized.
    DST loads with `AutoModelForCausalLM.from_pretrained` (transformers + compressed-tensors).
    """
    from hubtools.quantization.run import quantize
    from hubtools.quantization.scheme import QuantizeOptions

    options = QuantizeOptions(
        method=method,
        bits=bits,
        group_size=group_size,
        samples=samples,
        seq_len=seq_len,
        calibration=calibration,
        format=fmt,
        device=device,
        act_order=not no_act_order,
    ).checked()

    def say(message: str) -> None:
        click.echo(f"quantize: {message}", err=True)

    report = quantize(src, dst, options, force=force, progress=None if quiet or as_json else say)
    if as_json:
        emit_json(report.to_json())
    elif not quiet:
        click.echo(
            f"{report.architecture}: {method} {bits}-bit, group {report.options['group_size']}, "
            f"{report.quantized_tensors} tensors quantized, calibration {report.calibration}, "
            f"{report.seconds:.1f}s, peak RSS {report.peak_rss_mib:.0f} MiB -> {dst}"
        )
