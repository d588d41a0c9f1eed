"""release: one pass from a folder or a URL to the local Hub; what lands equals convert's output."""

# ruff: noqa: F811 - the Hub fixtures come from test_publish

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi

from hubtools.cli import cli
from hubtools.converter import convert
from hubtools.errors import CorruptFileError
from hubtools.pipeline.release import ReleaseOptions, release
from hubtools.publishing.client import RetryPolicy
from hubtools.testing import tiny_params, write_native_checkpoint
from tests.fakehub import FakeHub
from tests.rangeserver import RangeServer
from tests.test_publish import TOKEN, api, hub  # noqa: F401 - fixtures

REPO = "acme/tiny-release"
SHARD = 60_000  # bytes: the tiny model becomes several shards (the embedding and output get their own)
FAST = RetryPolicy(base_delay=0.0, max_delay=0.0)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tiny_params(n_layers=2, vocab_size=32000, dim=32, n_heads=4, n_kv_heads=2, hidden_dim=96)
    return write_native_checkpoint(tmp_path_factory.mktemp("src") / "native", params, tokenizer="v1")


@pytest.fixture(scope="module")
def converted(native: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "hf"
    convert(native, out, max_shard_size=SHARD)
    return out


@pytest.fixture
def options(tmp_path: Path) -> ReleaseOptions:
    return ReleaseOptions(max_shard_size=SHARD, work_dir=tmp_path / "work")


@pytest.fixture
def server(native: Path):
    srv = RangeServer(native.parent).start()
    yield srv
    srv.stop()


def landed(hub: FakeHub) -> dict[str, bytes]:
    return {k: v for k, v in hub.files(REPO).items() if k not in (".gitattributes", "README.md")}


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}  # the marker stays local


def shard_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("model-*.safetensors"))


def test_the_plan_has_several_shards(converted: Path) -> None:
    assert len(list(converted.glob("model-*.safetensors"))) >= 4


def test_a_release_from_a_folder_lands_exactly_what_convert_writes(
    hub: FakeHub, api: HfApi, native: Path, converted: Path, tmp_path: Path, options: ReleaseOptions
) -> None:
    result = release(str(native), REPO, api=api, options=options, retry=FAST)
    assert landed(hub) == folder_files(converted)
    assert result.report["passed"] is True and result.commit_oid is not None
    assert hub.count("POST", "/commit/") == 1
    assert hub.lfs_bytes == shard_bytes(converted) + (converted / "tokenizer.model").stat().st_size


def test_a_release_from_an_http_url_lands_exactly_what_convert_writes(
    hub: FakeHub, api: HfApi, server: RangeServer, converted: Path, options: ReleaseOptions
) -> None:
    release(server.url + "native/", REPO, api=api, options=options, retry=FAST)
    assert landed(hub) == folder_files(converted)
    assert any(r.startswith("bytes=") for _, _, r in server.requests)


def test_a_release_survives_connections_dropped_mid_range(
    hub: FakeHub, api: HfApi, server: RangeServer, converted: Path, options: ReleaseOptions
) -> None:
    server.drop_every, server.drops = 20_000, 6
    release(server.url + "native/", REPO, api=api, options=options, retry=FAST)
    assert server.drops == 0  # every planned drop happened, and was resumed
    assert landed(hub) == folder_files(converted)


def test_a_release_from_a_hub_repo_of_native_files_lands_what_convert_writes(
    hub: FakeHub, api: HfApi, native: Path, converted: Path, options: ReleaseOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.create_repo("mistralai/tiny-native")
    api.upload_folder(folder_path=native, repo_id="mistralai/tiny-native")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.reset_counters()
    release("hf://mistralai/tiny-native@main", REPO, api=api, options=options, retry=FAST)
    assert landed(hub) == folder_files(converted)
    ranged = [p for m, p, _ in hub.requests if m == "GET" and p.startswith("/cdn/")]
    assert len(ranged) > 3  # tensors read by range requests through the resolve redirect


def test_create_pr_opens_one_pull_request_and_leaves_main_alone(
    hub: FakeHub, api: HfApi, native: Path, converted: Path, options: ReleaseOptions
) -> None:
    api.create_repo(REPO)
    main_before = hub.repos[REPO].branches["main"]
    pr = ReleaseOptions(max_shard_size=SHARD, work_dir=options.work_dir, create_pr=True)
    result = release(str(native), REPO, api=api, options=pr, retry=FAST)
    assert result.pr_url is not None and result.pr_url.endswith(f"/{REPO}/discussions/1")
    assert hub.repos[REPO].branches["main"] == main_before
    pr_files = {k: v for k, v in hub.files(REPO, "refs/pr/1").items() if k != ".gitattributes"}
    assert pr_files == folder_files(converted) and hub.count("POST", "/commit/") == 1


def test_a_truncated_remote_file_fails_naming_it_and_commits_nothing(
    hub: FakeHub, api: HfApi, native: Path, tmp_path: Path, options: ReleaseOptions
) -> None:
    broken = tmp_path / "site" / "broken"
    broken.mkdir(parents=True)
    for p in native.iterdir():
        data = p.read_bytes()
        (broken / p.name).write_bytes(data[: len(data) - 5000] if p.name == "consolidated.safetensors" else data)
    srv = RangeServer(tmp_path / "site").start()
    try:
        with pytest.raises(
            CorruptFileError, match=r"^http://127\.0\.0\.1:\d+/broken/consolidated\.safetensors: truncated"
        ):
            release(srv.url + "broken/", REPO, api=api, options=options, retry=FAST)
    finally:
        srv.stop()
    assert hub.count("POST", "/commit/") == 0


def test_the_work_dir_never_holds_more_than_two_shards(
    hub: FakeHub, api: HfApi, native: Path, converted: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                samples.append(sum(p.stat().st_size for p in work.rglob("*") if p.is_file()))
            except FileNotFoundError:  # a shard deleted while we looked
                continue
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = release(
            str(native), REPO, api=api, options=ReleaseOptions(max_shard_size=SHARD, work_dir=work), retry=FAST
        )
    finally:
        done.set()
        sampler.join()
    biggest = sorted((p.stat().st_size for p in converted.glob("model-*.safetensors")), reverse=True)
    small = sum(p.stat().st_size for p in converted.iterdir() if not p.name.startswith(("model-", ".")))
    bound = biggest[0] + biggest[1] + small + 2 * 1024 * 1024  # two shards + small files (+ the source's)
    assert max(samples) > 0 and max(samples) <= bound
    assert result.work_peak_bytes <= bound
    assert list(work.iterdir()) == []  # our temporary folder is gone


def test_dry_run_prints_the_plan_and_sends_nothing(hub: FakeHub, native: Path, run_cli) -> None:
    result = run_cli("release", native, REPO, "--dry-run", "--json", "--max-shard-size", SHARD)
    plan = json.loads(result.output)
    assert result.exit_code == 0 and plan["dry_run"] is True
    first = plan["shards"][0]["tensors"][0]
    assert first["name"] == "model.embed_tokens.weight" and first["ranges"][0][0].endswith("consolidated.safetensors")
    assert hub.requests == []


def _cli_release(hub: FakeHub, src: str, work: Path, kill_at: int, sig: int = signal.SIGKILL) -> subprocess.Popen:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    args = [sys.executable, "-m", "hubtools.cli", "release", src, REPO, "--quiet", "--max-shard-size", str(SHARD)]
    proc: subprocess.Popen | None = None

    def interrupt(n: int) -> None:
        if n == kill_at and proc is not None:
            os.kill(proc.pid, sig)

    hub.on_lfs_put = interrupt
    proc = subprocess.Popen(
        [*args, "--work-dir", str(work)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return proc


def _resumes_without_resending(
    hub: FakeHub, api: HfApi, native: Path, converted: Path, options: ReleaseOptions
) -> None:
    """After an interruption: nothing committed; the re-run sends only what the Hub lacks, then one commit."""
    stored = set(hub.repos[REPO].lfs_oids)
    assert len(stored) >= 2 and hub.count("POST", "/commit/") == 0
    hub.reset_counters()
    result = release(str(native), REPO, api=api, options=options, retry=FAST)
    assert landed(hub) == folder_files(converted)
    sent_again = [p for m, p, _ in hub.requests if m == "PUT" and any(oid in p for oid in stored)]
    assert sent_again == []
    total = shard_bytes(converted) + (converted / "tokenizer.model").stat().st_size
    kept = sum(f.size for f in result.files if f.sha256 in stored)  # stored before the interruption
    assert hub.lfs_bytes == total - kept and kept > 0
    reported = {f.path for f in result.files if f.action == "stored"}  # and reported as such, not as uploaded
    assert reported == {f.path for f in result.files if f.sha256 in stored}
    assert result.to_dict()["stored_bytes"] == kept
    assert options.work_dir is not None and list(options.work_dir.iterdir()) == []


def test_a_killed_release_resumes_without_resending_finished_shards(
    hub: FakeHub, api: HfApi, native: Path, converted: Path, options: ReleaseOptions
) -> None:
    assert options.work_dir is not None
    proc = _cli_release(hub, str(native), options.work_dir, kill_at=2, sig=signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    hub.on_lfs_put = None
    assert proc.returncode == -signal.SIGKILL, err
    assert any(p.is_file() for p in options.work_dir.rglob("*.safetensors"))  # kill -9 leaves shards behind
    _resumes_without_resending(hub, api, native, converted, options)  # ... which the resumed run clears
    hub.reset_counters()  # once everything is committed, a re-run sends nothing and commits nothing
    again = release(str(native), REPO, api=api, options=options, retry=FAST)
    assert again.commit_oid is None and hub.lfs_bytes == 0 and hub.count("POST", "/commit/") == 0
    assert all(f.action == "skipped" for f in again.files)


def test_ctrl_c_stops_a_release_cleanly_and_a_rerun_resumes(
    hub: FakeHub, api: HfApi, native: Path, converted: Path, options: ReleaseOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.on_lfs_put = lambda n: os.kill(os.getpid(), signal.SIGINT) if n == 2 else None  # Ctrl-C in our process
    args = [
        "release",
        str(native),
        REPO,
        "--quiet",
        "--max-shard-size",
        str(SHARD),
        "--work-dir",
        str(options.work_dir),
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    hub.on_lfs_put = None
    assert result.exit_code == 130
    assert result.stderr.strip() == (
        f"error: {REPO}: interrupted; nothing committed (shards already sent stay on the Hub: re-run to resume)"
    )
    assert options.work_dir is not None and list(options.work_dir.iterdir()) == []  # Ctrl-C cleans up
    _resumes_without_resending(hub, api, native, converted, options)


def test_cli_release_reports_a_missing_source_in_one_line(hub: FakeHub, tmp_path: Path, run_cli) -> None:
    from tests.helpers import assert_one_line_error

    result = run_cli("release", tmp_path / "nope", REPO, "--dry-run")
    assert_one_line_error(result, "nope")


def test_release_is_a_registered_command() -> None:
    assert "release" in cli.commands


def test_a_release_with_a_card_lands_the_card_that_verify_then_card_render(
    hub: FakeHub, api: HfApi, native: Path, converted: Path, options: ReleaseOptions, tmp_path: Path, run_cli
) -> None:
    from dataclasses import replace

    from hubtools.inspection import count_parameters

    parameters, _ = count_parameters(converted)
    card = tmp_path / "tiny.md"
    card.write_text(
        "---\ntitle: Tiny\nrepo_id: acme/tiny-release\nkind: base\ntokenizer: v1\narchitecture: MixtralForCausalLM\n"
        f"parameters: {parameters}\nmetadata:\n  license: apache-2.0\n---\nA tiny model.\n"
    )
    release(str(native), REPO, api=api, options=replace(options, card=str(card)), retry=FAST)
    report = tmp_path / "verify.json"  # the sequence: hubtools verify --json, then hubtools card --report
    assert run_cli("verify", native, converted, "--json", report, "--quiet").exit_code == 0
    result = run_cli("card", card, "-o", tmp_path / "README.md", "--model", converted, "--report", report)
    assert result.exit_code == 0, result.output
    assert hub.files(REPO)["README.md"] == (tmp_path / "README.md").read_bytes()
    assert landed(hub) == folder_files(converted)


def test_the_cli_release_to_a_branch_with_a_tag_reports_in_json(
    hub: FakeHub, native: Path, converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = ["release", str(native), REPO, "--max-shard-size", str(SHARD), "--work-dir", str(tmp_path / "w")]
    result = CliRunner().invoke(cli, [*args, "--revision", "dev", "--tag", "v1", "--private", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    repo = hub.repos[REPO]
    assert out["revision"] == "dev" and out["tag"] == "v1" and out["report"]["passed"] is True
    assert repo.private and repo.tags["v1"] == repo.branches["dev"] == out["verified_at"] == out["commit_oid"]
    assert out["uploaded_files"] == len(out["files"]) and out["stored_files"] == out["skipped_files"] == 0
    assert out["work_peak_bytes"] > 0 and TOKEN not in result.output
    again = CliRunner().invoke(cli, [*args, "--revision", "dev", "--tag", "v1"])  # nothing to send: one line
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith(f"files: 0 uploaded (0 bytes), {len(out['files'])} already on the Hub; ")


def test_the_release_command_module_plans_without_the_group(hub: FakeHub, native: Path) -> None:
    from click.testing import CliRunner

    from hubtools.cli.release import release_command

    result = CliRunner().invoke(release_command, [str(native), REPO, "--dry-run", "--json", "--max-shard-size", SHARD])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dry_run"] is True and hub.requests == []
