"""`hubtools release SRC REPO_ID`: convert, verify and publish in one streaming pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from hubtools.cli.errors import handle_errors
from hubtools.cli.hub import hub_api
from hubtools.cli.output import byte_progress, emit_json, json_option, quiet_option
from hubtools.dtypes import COMPUTE_DTYPES, DType
from hubtools.errors import Interrupted


@click.command("release")
@click.argument("src")
@click.argument("repo_id")
@click.option(
    "--recipe", type=click.Path(path_type=Path), help="converters/NAME.yaml: validate SRC, take its settings."
)
@click.option("--card", "card_spec", help="Card source (path or release name in cards/); default: the recipe's.")
@click.option("--max-shard-size", default=None, help="Shard budget, e.g. 5GB (default 5GB or the recipe's).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Where shards wait (default: temp).")
@click.option("--revision", help="Branch to commit to (created if missing) or refs/pr/N; default main.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--tag", help="Tag the published commit.")
@click.option(
    "--verify-dtype", metavar=f"[{'|'.join(DType.values(*COMPUTE_DTYPES))}]", default="float32", show_default=True
)
@click.option("--dry-run", is_flag=True, help="Print the plan (files, sizes, source byte ranges); send nothing.")
@click.option("--no-quantized", is_flag=True, help="Skip the recipe's GPTQ / AWQ repos (published after the main one).")
@click.option(
    "--quantized-only", is_flag=True, help="Publish only the recipe's GPTQ / AWQ repos (the main repo is already out)."
)
@json_option("Print the plan/result as JSON.")
@quiet_option()
@handle_errors
def release_command(
    src: str,
    repo_id: str,
    recipe: Path | None,
    card_spec: str | None,
    max_shard_size: str | None,
    work_dir: Path | None,
    revision: str | None,
    create_pr: bool,
    private: bool,
    tag: str | None,
    verify_dtype: str,
    dry_run: bool,
    no_quantized: bool,
    quantized_only: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Convert, verify and publish SRC to REPO_ID in one streaming pass (disk: two shards).

    SRC is a native folder, an http(s) URL of one, a .tar URL or hf://org/name[@rev]. Uses HF_ENDPOINT and
    HF_TOKEN from the environment. A re-run resumes: nothing the Hub already holds is sent again.

    Then the recipe's quantized repos (`quantized:`, e.g. REPO_ID-GPTQ / -AWQ), one after the other: quantize
    (SRC must be a local folder), verify, card, publish; a repo that already holds this release is left as it is.
    """
    from hubtools.pipeline.overlay import release_options
    from hubtools.pipeline.quantized_release import check_quantized_inputs, main_revision
    from hubtools.pipeline.recipe import load_recipe
    from hubtools.pipeline.release import check_release_inputs, plan_release, release

    rec = load_recipe(recipe) if recipe else None
    options = release_options(  # the values are checked as `hubtools.release` checks them
        rec,
        max_shard_size=max_shard_size,
        card=card_spec,
        verify_dtype=verify_dtype,
        work_dir=work_dir,
        revision=revision,
        create_pr=create_pr,
        private=private,
        tag=tag,
    )
    if no_quantized:
        options = replace(options, quantized=())
    check_release_inputs(repo_id, options)  # repo id, revision, tag, card, work dir: dry run or not
    check_quantized_inputs(src, options, only=quantized_only, skip=no_quantized)
    api = hub_api(repo_id, need_token=False)  # also reads an hf:// SRC
    if dry_run:
        _print_release_plan(plan_release(src, repo_id, options=options, api=api), repo_id, as_json)
        return

    def say(message: str) -> None:
        if not (quiet or as_json):
            click.echo(f"release: {message}", err=True)

    if quantized_only:
        revision = main_revision(api, repo_id)
        outcomes = _quantized(src, repo_id, revision, api, options, say)
        if as_json:
            emit_json({"repo_id": repo_id, "verified_at": revision, "quantized": [o.to_dict() for o in outcomes]})
        return
    try:
        with byte_progress(0, quiet or as_json, "release") as bar:
            result = release(
                src,
                repo_id,
                api=api,
                options=options,
                progress=bar.update,
                on_total=lambda total: bar.reset(total=total),
                say=say,
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"{repo_id}: interrupted; nothing committed (shards already sent stay on the Hub: re-run to resume)"
        ) from None
    outcomes = _quantized(src, repo_id, result.verified_at, api, options, say)
    if as_json:
        emit_json({**result.to_dict(), "quantized": [o.to_dict() for o in outcomes]})
    elif not quiet:
        from hubtools.publishing.upload import files_line

        click.echo(
            f"{files_line(result.files)}; verified at {result.verified_at}; "
            f"work dir peak {result.work_peak_bytes:,d} bytes; {result.seconds:.1f}s"
        )
        for label, value in (("pull request", result.pr_url), ("commit", result.commit_url), ("tag", result.tag)):
            if value:
                click.echo(f"{label}: {value}")
        for outcome in outcomes:
            click.echo(
                f"{outcome.repo_id}: {outcome.action}" + (f" ({outcome.commit_oid})" if outcome.commit_oid else "")
            )


def _quantized(src: str, repo_id: str, revision: str, api: Any, options: Any, say: Any) -> list[Any]:
    """The recipe's quantized repos after the main one (`release_quantized_repos`), in a work dir of their own."""
    import tempfile

    from hubtools.pipeline.quantized_release import release_quantized_repos

    if not options.quantized:
        return []
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hubtools-quantized-", dir=options.work_dir) as work:
        return release_quantized_repos(
            Path(src), options.quantized, api=api, base_repo=repo_id, base_revision=revision, work_dir=Path(work),
            card=options.card, cards_dir=options.cards_dir, say=say,
        )  # fmt: skip


def _print_release_plan(plan: dict[str, Any], repo_id: str, as_json: bool) -> None:
    if as_json:
        emit_json({**plan, "repo_id": repo_id})
        return
    for shard in plan["shards"]:
        click.echo(f"{shard['bytes']:>15,d}  {shard['file']}")
        for t in shard["tensors"]:
            ranges = ", ".join(f"{where} [{offset}, +{length}]" for where, offset, length in t["ranges"])
            click.echo(f"{'':>17}{t['name']} <- {t['source']}: {ranges}")
    click.echo(f"{'':>15}  + {', '.join(plan['small_files'])}")
    click.echo(f"would publish {plan['total_bytes']:,d} bytes of weights to '{repo_id}' in one commit (nothing sent)")
    for q in plan.get("quantized", []):
        click.echo(
            f"then {q['method'].upper()} {q['bits']}-bit, group {q['group_size']}, to '{q['repo_id']}' "
            "(quantize, verify, card, publish)"
        )
