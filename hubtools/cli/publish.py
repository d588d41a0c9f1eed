"""`hubtools publish FOLDER REPO_ID`: a checked, resumable, verified upload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hubtools.cli.errors import handle_errors
from hubtools.cli.hub import hub_api
from hubtools.cli.output import byte_progress, emit_json, json_option, quiet_option


@click.command("publish")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("repo_id")
@click.option("--revision", help="Branch to commit to (created if missing) or refs/pr/N; default main.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--tag", help="Tag the published commit.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit; makes no network request.")
@json_option("Print the plan/result as JSON.")
@quiet_option("No progress bar.")
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
    from hubtools.publishing.plan import check_publish_settings, plan_upload
    from hubtools.publishing.upload import files_line, publish

    check_publish_settings(repo_id, revision=revision, create_pr=create_pr, tag=tag)  # as publish() does
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
    api = hub_api(repo_id, need_token=True)
    bars: dict[str, Any] = {}

    def on_progress(event: Any) -> None:
        if event.stage not in bars:
            bars[event.stage] = byte_progress(event.bytes_total, quiet or as_json, event.stage)
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
