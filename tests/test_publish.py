"""publish: the real huggingface_hub client against a local, protocol-faithful Hub (tests/fakehub/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import huggingface_hub.utils._detect_agent
import mistral_common
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import HfApi
from safetensors.torch import save_file

from hubtools.cli import cli
from hubtools.errors import PublishError
from hubtools.model.hf_config import to_hf_config
from hubtools.publishing.client import RetryPolicy
from hubtools.publishing.plan import plan_upload
from hubtools.publishing.upload import publish
from hubtools.testing import tiny_params
from tests.fakehub import FakeHub, Fault
from tests.helpers import edit_json

TOKEN = "hf_FAKEtokenFORtests0123456789abcdef"
REPO = "acme/tiny-mixtral"
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
FAST = RetryPolicy(base_delay=0.0, max_delay=0.0)
LOOPBACK = ("127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh local Hub; the client uses classic LFS, and any non-loopback connection fails the test."""
    server = FakeHub(tmp_path / "hub", token=TOKEN).start()
    constants = huggingface_hub.constants  # read from the environment at import time: patch them too
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # CI sets it; this "Hub" is local
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)  # e.g. the client's telemetry GET goes here
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf_home" / "agents.json"))
    monkeypatch.setattr(huggingface_hub.utils._detect_agent, "_registry", None)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for name in ("HF_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    outbound: list[object] = []  # recorded, as the client swallows errors from its telemetry call
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def resolve_loopback_only(host: object, *args: object, **kwargs: object) -> object:
        if host not in LOOPBACK:
            outbound.append(host)
            raise socket.gaierror(f"test tried to reach the internet: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect_loopback_only(sock: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            outbound.append(address)
            raise ConnectionRefusedError(f"test tried to reach the internet: {address}")
        real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", resolve_loopback_only)
    monkeypatch.setattr(socket.socket, "connect", connect_loopback_only)
    yield server
    server.stop()
    assert outbound == [], f"connections outside 127.0.0.1: {outbound}"


@pytest.fixture
def api(hub: FakeHub) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A tiny HF-layout folder: 3 shards (distinct fills), index, config, tokenizer files, card."""
    out = tmp_path / "model"
    out.mkdir()
    weight_map = {}
    for i, shard in enumerate(SHARDS):
        name = f"model.layers.{i}.mlp.weight"
        save_file({name: torch.full((16, 32), float(i + 1))}, str(out / shard))
        weight_map[name] = shard
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 3 * 2048}, "weight_map": weight_map})
    )
    (out / "config.json").write_text(json.dumps(to_hf_config(tiny_params(), dtype="float32").config))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32768}))
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", out / "tokenizer.model")
    (out / "README.md").write_text("---\nlicense: apache-2.0\ntags: [mixtral]\n---\n# Tiny\n")
    (out / "notes.txt").write_text("not published")
    return out


def local_files(folder: Path) -> dict[str, bytes]:
    return {f.path: f.local.read_bytes() for f in plan_upload(folder).files}


def lfs_bytes(folder: Path, names: list[str]) -> int:
    return sum((folder / n).stat().st_size for n in names)


# --- plan ------------------------------------------------------------------------------------------


def test_plan_puts_weights_first_card_last_and_leaves_out_other_files(model: Path) -> None:
    plan = plan_upload(model)
    assert [f.path for f in plan.files] == [
        *SHARDS,
        "model.safetensors.index.json",
        "config.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "README.md",
    ]
    assert [f.path for f in plan.files if f.lfs] == [*SHARDS, "tokenizer.model"]
    assert plan.ignored == ("notes.txt",)
    assert plan.total_bytes == sum(f.size for f in plan.files)


def test_plan_refuses_a_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PublishError, match=r"^.*: expected weights \(\*\.safetensors or \*\.gguf\), found none"):
        plan_upload(tmp_path)


def test_plan_refuses_an_index_naming_a_missing_shard(model: Path) -> None:
    (model / SHARDS[1]).unlink()
    with pytest.raises(PublishError) as err:
        plan_upload(model)
    assert str(err.value) == f"{model / 'model.safetensors.index.json'}: names {SHARDS[1]}, which is missing"


def test_plan_refuses_shards_the_index_does_not_name(model: Path) -> None:
    shutil.copy(model / SHARDS[0], model / "model-00001-of-00002.safetensors")
    with pytest.raises(
        PublishError, match="index.json: expected every weight file to be named, found model-00001-of-00002.safetensors"
    ):
        plan_upload(model)


# --- publish ---------------------------------------------------------------------------------------


def test_first_publish_uploads_every_file_and_the_remote_bytes_equal_the_local_bytes(
    hub: FakeHub, api: HfApi, model: Path
) -> None:
    result = publish(model, REPO, api=api, private=True, retry=FAST)
    remote = hub.files(REPO)
    assert hub.repos[REPO].private
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == local_files(model)
    assert result.commit_oid == hub.repos[REPO].branches["main"] == result.verified_at
    assert all(f.action == "uploaded" for f in result.files)
    assert hub.lfs_bytes == lfs_bytes(model, [*SHARDS, "tokenizer.model"])  # sent once, nothing more
    assert hub.count("PUT", "^/lfs-upload/") == 4 and hub.count("POST", "/commit/") == 1
    assert hub.unauthorized == 0 and len(hub.requests) > 0  # every call reached the local Hub, with the token
    assert result.to_dict()["uploaded_bytes"] == sum(len(b) for b in local_files(model).values())


def test_a_rerun_sends_no_bytes_and_makes_no_commit(hub: FakeHub, api: HfApi, model: Path) -> None:
    first = publish(model, REPO, api=api, retry=FAST)
    hub.reset_counters()
    again = publish(model, REPO, api=api, retry=FAST)
    assert hub.lfs_bytes == 0 and hub.regular_bytes == 0
    assert hub.route_counts() == {"POST repos/create": 1, "GET info": 1, "POST paths-info": 1}
    assert again.commit_oid is None and again.verified_at == first.commit_oid
    assert all(f.action == "skipped" for f in again.files) and again.uploaded_bytes == 0


def test_an_interrupted_upload_resumes_with_only_the_missing_shards(hub: FakeHub, api: HfApi, model: Path) -> None:
    hub.faults.append(Fault("PUT", "^/lfs-upload/", status=507, times=100, skip=2))  # storage dies after 2 shards
    with pytest.raises(PublishError, match=f"^upload of '{SHARDS[2]}' failed for '{REPO}': HTTP 507 on PUT ") as err:
        publish(model, REPO, api=api, retry=FAST)
    assert "Signature" not in str(err.value)  # the signed upload URL is not repeated in the message
    assert set(hub.files(REPO)) == {".gitattributes"}  # nothing committed: main never shows half a model
    hub.faults.clear()
    hub.reset_counters()
    result = publish(model, REPO, api=api, retry=FAST)
    assert hub.lfs_bytes == lfs_bytes(model, [SHARDS[2], "tokenizer.model"])
    assert hub.count("PUT", "^/lfs-upload/") == 2
    assert [f.path for f in result.files if f.action == "stored"] == SHARDS[:2]  # committed, not re-sent
    assert result.to_dict()["stored_bytes"] == lfs_bytes(model, SHARDS[:2])
    assert {k: v for k, v in hub.files(REPO).items() if k != ".gitattributes"} == local_files(model)
    assert result.commit_oid is not None


def test_a_killed_cli_upload_resumes_with_only_the_rest(hub: FakeHub, api: HfApi, model: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    hub.on_lfs_put = lambda n: os.kill(proc.pid, signal.SIGKILL) if n == 2 else None  # 2nd shard stored, unanswered
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubtools.cli", "publish", str(model), REPO, "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    hub.on_lfs_put = None
    hub.reset_counters()
    publish(model, REPO, api=api, retry=FAST)
    assert hub.lfs_bytes == lfs_bytes(model, [SHARDS[2], "tokenizer.model"])
    assert {k: v for k, v in hub.files(REPO).items() if k != ".gitattributes"} == local_files(model)


def test_create_pr_opens_refs_pr_1_and_leaves_main_unchanged(hub: FakeHub, api: HfApi, model: Path) -> None:
    publish(model, REPO, api=api, retry=FAST)
    main_before = hub.repos[REPO].branches["main"]
    edit_json(model / "config.json", lambda c: c.update(rope_theta=2e6))
    hub.reset_counters()
    result = publish(model, REPO, api=api, create_pr=True, retry=FAST)
    assert result.pr_revision == "refs/pr/1" and result.pr_url.endswith(f"/{REPO}/discussions/1")
    assert hub.repos[REPO].branches["main"] == main_before
    assert hub.read_file(REPO, "config.json", "refs/pr/1") == (model / "config.json").read_bytes()
    assert hub.read_file(REPO, "config.json", "main") != (model / "config.json").read_bytes()
    assert [f.path for f in result.files if f.action == "uploaded"] == ["config.json"]
    assert hub.lfs_bytes == 0 and result.verified_at == hub.repos[REPO].prs[1]
    edit_json(model / "config.json", lambda c: c.update(rope_theta=3e6))
    pushed = publish(model, REPO, api=api, revision="refs/pr/1", retry=FAST)  # a follow-up commit to the PR
    assert hub.repos[REPO].prs[1] == pushed.commit_oid and hub.repos[REPO].branches["main"] == main_before
    assert hub.read_file(REPO, "config.json", "refs/pr/1") == (model / "config.json").read_bytes()


def test_cli_create_pr_prints_the_pull_request_and_leaves_main_alone(hub: FakeHub, api: HfApi, model: Path) -> None:
    publish(model, REPO, api=api, retry=FAST)
    main_before = hub.repos[REPO].branches["main"]
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny, better card\n")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN}
    result = CliRunner().invoke(cli, ["publish", str(model), REPO, "--create-pr", "-q"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("files: 1 uploaded (")
    assert f"pull request: {hub.endpoint}/{REPO}/discussions/1" in result.stdout
    assert hub.repos[REPO].branches["main"] == main_before and 1 in hub.repos[REPO].prs


def test_transient_429_5xx_and_dropped_connections_are_retried(hub: FakeHub, api: HfApi, model: Path) -> None:
    hub.faults += [
        Fault("POST", "/paths-info/", 429, times=2),
        Fault("PUT", "^/lfs-upload/", 500),
        Fault("POST", "/preupload/", 503),
        Fault("POST", "/commit/", 429),
        Fault("GET", "^/api/models/", 0),
    ]  # 0: the connection drops without an answer
    result = publish(model, REPO, api=api, retry=FAST)
    assert all(f.fired == f.skip + f.times for f in hub.faults)
    assert {k: v for k, v in hub.files(REPO).items() if k != ".gitattributes"} == local_files(model)
    assert hub.count("POST", "/commit/") == 2 and result.commit_oid is not None


def test_retries_are_bounded_and_the_error_names_the_step(hub: FakeHub, api: HfApi, model: Path) -> None:
    hub.faults.append(Fault("GET", "^/api/models/", 500, times=100))
    slept: list[float] = []
    with pytest.raises(
        PublishError,
        match=f"^read revision 'main' failed for '{REPO}': HTTP 500 on GET .*"
        "; gave up after 4 attempts, re-run to resume$",
    ):
        publish(model, REPO, api=api, retry=RetryPolicy(attempts=4, base_delay=1.0, sleep=slept.append))
    assert hub.count("GET", "^/api/models/") == 4 and slept == [0.0, 0.0, 0.0]  # Retry-After: 0 honoured


def test_a_commit_answered_500_is_not_blindly_retried_and_a_rerun_finishes_without_resending(
    hub: FakeHub, api: HfApi, model: Path
) -> None:
    hub.faults.append(Fault("POST", "/commit/", 500))
    with pytest.raises(PublishError, match=r"^commit failed for '.*': HTTP 500 on POST .*/commit/main"):
        publish(model, REPO, api=api, retry=FAST)
    assert hub.count("POST", "/commit/") == 1  # a 500 may hide a landed commit: no duplicate, the re-run checks
    hub.reset_counters()
    publish(model, REPO, api=api, retry=FAST)
    assert hub.lfs_bytes == 0 and hub.count("POST", "/commit/") == 1


def test_offline_mode_fails_at_once_without_retrying(
    hub: FakeHub, api: HfApi, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    slept: list[float] = []
    with pytest.raises(PublishError, match="^create repo failed for .*offline mode is enabled"):
        publish(model, REPO, api=api, retry=RetryPolicy(sleep=slept.append))
    assert slept == [] and hub.requests == []


def test_a_corrupted_remote_object_fails_verification_naming_the_file(hub: FakeHub, api: HfApi, model: Path) -> None:
    hub.corrupt_paths.add(SHARDS[1])
    local = plan_upload(model).files[1]
    with pytest.raises(PublishError) as err:
        publish(model, REPO, api=api, retry=FAST)
    message = str(err.value)
    assert message.startswith(
        f"remote file '{SHARDS[1]}' does not match the local file after upload (expected size {local.size}, sha256 "
    )
    found_sha = hub.files(REPO)[SHARDS[1]]
    assert f"found size {local.size}, sha256 {__import__('hashlib').sha256(found_sha).hexdigest()}" in message


def test_tag_and_branch_are_created_and_a_rerun_with_the_same_tag_succeeds(
    hub: FakeHub, api: HfApi, model: Path
) -> None:
    result = publish(model, REPO, api=api, revision="release", tag="v0.1", retry=FAST)
    repo = hub.repos[REPO]
    assert repo.tags["v0.1"] == repo.branches["release"] == result.commit_oid
    assert set(hub.files(REPO, "main")) == {".gitattributes"}
    again = publish(model, REPO, api=api, revision="release", tag="v0.1", retry=FAST)
    assert again.commit_oid is None and repo.tags["v0.1"] == result.commit_oid


def test_tag_with_create_pr_is_refused_before_any_request(hub: FakeHub, api: HfApi, model: Path) -> None:
    with pytest.raises(PublishError, match="^tag 'v1' on a pull request: a tag must point at a merged commit"):
        publish(model, REPO, api=api, create_pr=True, tag="v1")
    assert hub.requests == []


def test_the_local_hub_tree_paginates_and_reports_what_publish_checks(hub: FakeHub, api: HfApi, model: Path) -> None:
    from huggingface_hub import CommitOperationAdd

    result = publish(model, REPO, api=api, retry=FAST)
    extra = [CommitOperationAdd(f"logs/{i:03d}.json", b"{}") for i in range(60)]
    api.create_commit(REPO, extra, commit_message="many small files")
    tree = {e.path: e for e in api.list_repo_tree(REPO, recursive=True, expand=True)}  # 50 per page: 2 pages
    assert hub.count("GET", "/tree/main") == 2 and len(tree) == 1 + 8 + 1 + 60  # .gitattributes, files, folder
    shard = next(f for f in result.files if f.path == SHARDS[0])
    assert tree[SHARDS[0]].lfs.sha256 == shard.sha256 and tree[SHARDS[0]].last_commit.oid == result.commit_oid


# --- CLI -------------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_makes_zero_requests(hub: FakeHub, model: Path) -> None:
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN}
    result = CliRunner().invoke(cli, ["publish", str(model), REPO, "--dry-run", "--json"], env=env)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [f["path"] for f in plan["files"]][:3] == SHARDS and plan["ignored"] == ["notes.txt"]
    text = CliRunner().invoke(cli, ["publish", str(model), REPO, "--dry-run"], env=env)
    assert "would upload at most 8 files" in text.stdout and "tokenizer.model" in text.stdout
    assert hub.requests == []


def test_cli_publishes_with_env_endpoint_and_token_and_never_prints_the_token(hub: FakeHub, model: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    ok = subprocess.run(
        [sys.executable, "-m", "hubtools.cli", "--debug", "publish", str(model), REPO, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["commit_oid"] == hub.repos[REPO].branches["main"]
    assert hub.unauthorized == 0, hub.unauthorized_paths
    env["HF_TOKEN"] = TOKEN + "-revoked"
    bad = subprocess.run(
        [sys.executable, "-m", "hubtools.cli", "publish", str(model), "acme/other"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: create repo failed for 'acme/other': HTTP 401 ")
    assert "Check HF_TOKEN" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    debug = subprocess.run(
        [sys.executable, "-m", "hubtools.cli", "--debug", "publish", str(model), "acme/other"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    for out in (ok.stdout, ok.stderr, bad.stdout, bad.stderr, debug.stdout, debug.stderr):
        assert TOKEN not in out
