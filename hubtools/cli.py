"""The `hubtools` command line: thin click commands over the library.

Every `HubtoolsError` becomes one line on stderr and a non-zero exit; `--debug` shows the traceback.
Environment variables are read here and nowhere else.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hubtools import __version__
from hubtools.errors import HubtoolsError, PublishError
from hubtools.tokenization.choices import ChatTemplate

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
            click.echo("error: interrupted; nothing was written", err=True)
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


def emit_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubtools")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Convert, verify, card and publish Mistral-family models."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")


# --- convert / inspect / demo commands (core) ---

DTYPE_CHOICES = click.Choice(["bfloat16", "float16", "float32"])


def _torch_dtype(name: str | None) -> Any:
    import torch

    return getattr(torch, name) if name else None


def _byte_progress(total: int, quiet: bool, desc: str) -> Any:
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


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["hf", "native"]), help="Target layout (default: the other one).")
@click.option("--dtype", type=DTYPE_CHOICES, help="Cast tensors (default: keep; the recipe's dtype with --recipe).")
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
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@handle_errors
def convert(
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
    from hubtools.checkpoint.layout import Layout, detect_layout
    from hubtools.converter import convert as run_convert
    from hubtools.recipe import check_source, convert_options, load_recipe
    from hubtools.units import human_bytes

    rec = load_recipe(recipe) if recipe else None
    options = convert_options(
        rec,
        dtype=dtype,
        max_shard_size=max_shard_size,
        rope_theta=rope_theta,
        max_position_embeddings=max_position_embeddings,
        chat_template=chat_template,
    )
    total = detect_layout(src, layout=Layout.parse(to).other if to else None).total_bytes
    with _byte_progress(total, quiet or as_json, "convert") as bar:
        result = run_convert(
            src,
            dst,
            to=to,
            dtype=options.dtype,
            max_shard_size=options.max_shard_size,
            overrides=options.overrides,
            chat_template=options.chat_template,
            force=force,
            progress=bar.update,
            check=(lambda ckpt: check_source(rec, ckpt)) if rec else None,
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


@cli.command(name="inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def inspect_command(path: Path, as_json: bool) -> None:
    """Describe a checkpoint folder from its headers: layout, architecture, parameters, dtype, size."""
    from hubtools.inspection import format_summary, summarize

    summary = summarize(path)
    if as_json:
        emit_json(summary.to_dict())
    else:
        click.echo(format_summary(summary))


@cli.command()
@click.argument("workdir", required=False, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Reuse WORKDIR even if it exists (its demo folders are replaced).")
@handle_errors
def demo(workdir: Path | None, force: bool) -> None:
    """Run the whole release on a tiny synthetic Mixtral, offline: convert, load, generate, verify, card."""
    from hubtools.demo import run_demo

    run_demo(workdir, force=force, say=click.echo)


# --- verify command ---


@cli.command("verify")
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
    type=click.Choice(["float32", "bfloat16"]),
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
@click.option("--quiet", "-q", is_flag=True, help="No progress; print the table only when a check fails.")
@handle_errors
def verify_command(
    src: Path,
    converted: Path,
    json_path: Path | None,
    dtype: str,
    prompts_path: Path | None,
    rope_theta: float | None,
    no_logits: bool,
    quiet: bool,
) -> None:
    """Prove CONVERTED (an HF folder, or a .gguf file / split set) is an exact conversion of SRC.

    Exits 0 only if every check passes, 1 otherwise (the table names what failed).
    """
    from hubtools.verification.report_text import format_report
    from hubtools.verification.run import verify

    def say(message: str) -> None:
        click.echo(f"verify: {message}", err=True)

    report = verify(
        src,
        converted,
        dtype=_torch_dtype(dtype),
        prompts_path=prompts_path,
        check_logits=not no_logits,
        rope_theta=rope_theta,
        progress=None if quiet else say,
    )
    if json_path is not None:
        text = json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False)  # no bare NaN
        json_path.write_text(text + "\n", encoding="utf-8")
    if not quiet or not report.passed:
        click.echo(format_report(report))
    if not report.passed:
        sys.exit(1)


# --- card command ---


@cli.command("card")
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
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option(
    "--gguf",
    "gguf_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Render the GGUF repo card for the *.gguf files in this folder (quality from <file>.verify.json).",
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
) -> None:
    """Render the model card of SPEC (a card source path or a release name in cards/)."""
    from hubtools.card.render import build_card

    if gguf_dir is not None:
        from hubtools.card.gguf import write_gguf_card

        click.echo(str(write_gguf_card(spec, output, gguf_dir, reports=(report,) if report else (), force=force)))
        return
    written = build_card(
        spec, output, cards_dir=Path("cards"), results=results, model_dir=model_dir, report=report, force=force
    )
    click.echo(str(written))


# --- publish command ---


@cli.command("publish")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("repo_id")
@click.option("--revision", help="Branch to commit to (created if missing) or refs/pr/N; default main.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--tag", help="Tag the published commit.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit; makes no network request.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan/result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@handle_errors
def publish_command(
    folder: Path,
    repo_id: str,
    revision: str | None,
    create_pr: bool,
    private: bool,
    tag: str | None,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Upload FOLDER to the Hub repo REPO_ID (resumable; verified file by file).

    Uses HF_ENDPOINT and HF_TOKEN (or the stored login / trusted publishing) from the environment.
    """
    import os

    from hubtools.publishing.plan import check_repo_id, plan_upload
    from hubtools.publishing.upload import files_line, publish

    check_repo_id(repo_id)
    plan = plan_upload(folder)
    if dry_run:
        if as_json:
            emit_json({"dry_run": True, "repo_id": repo_id, **plan.to_dict()})
            return
        for f in plan.files:
            click.echo(f"{f.size:>15,d}  {'lfs' if f.lfs else 'git':<3}  {f.role.value:<9}  {f.path}")
        for name in plan.ignored:
            click.echo(f"{'':>15}  ---  ignored    {name}")
        click.echo(
            f"would upload at most {len(plan.files)} files, {plan.total_bytes:,d} bytes to '{repo_id}' "
            "(files the Hub already has are skipped)"
        )
        return
    from huggingface_hub import HfApi
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # one bar per stage, ours
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PublishError(
            f"{repo_id}: expected a Hugging Face token to publish, found none "
            "(set HF_TOKEN, run `hf auth login`, or use --dry-run)"
        )
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    bars: dict[str, Any] = {}

    def on_progress(event: Any) -> None:
        if event.stage not in bars:
            bars[event.stage] = _byte_progress(event.bytes_total, quiet or as_json, event.stage)
        bars[event.stage].update(event.bytes_done - bars[event.stage].n)

    try:
        result = publish(
            folder,
            repo_id,
            api=api,
            revision=revision,
            create_pr=create_pr,
            private=private,
            tag=tag,
            progress=on_progress,
        )
    finally:
        for bar in bars.values():
            bar.close()
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(f"{files_line(result.files)}; all verified at {result.verified_at}")
    for label, value in (("pull request", result.pr_url), ("commit", result.commit_url), ("tag", result.tag)):
        if value:
            click.echo(f"{label}: {value}")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (sent by `timeout` and by CI cancellation): cleaned up like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _register_subcommands() -> None:
    from hubtools.gguf.command import gguf_command

    cli.add_command(gguf_command(handle_errors, _byte_progress, emit_json))
    from hubtools.publishing.release_cli import release_command

    release_command.callback = handle_errors(release_command.callback)  # type: ignore[type-var]
    cli.add_command(release_command)


_register_subcommands()


GC_THRESHOLD = (50_000, 20, 20)  # allocations between young collections (CPython's default: 700)


def main() -> None:
    """Console-script entry point: SIGTERM and SIGHUP unwind like Ctrl-C, so outputs are cleaned up.

    The cyclic garbage collector runs less often than CPython's default: with its 700-allocation trigger
    it walks the million objects that importing torch and transformers creates about a thousand times per
    `verify` (1.1 s of 6 on the 3.4 GB bench model); at 50,000 it runs a dozen times and still collects.
    """
    gc.set_threshold(*GC_THRESHOLD)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    argv = sys.argv[1:]
    if "--debug" in argv[1:] and argv[:1] != ["--debug"]:  # `hubtools verify ... --debug` works too
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    cli(args=argv, prog_name="hubtools")


if __name__ == "__main__":
    main()
