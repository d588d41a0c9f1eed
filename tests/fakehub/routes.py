"""Endpoint handlers of the local test Hub (`tests/fakehub/server.py`) and the data it keeps.

Each handler takes the hub (storage, refs, counters) and the decoded request and returns
(status, JSON payload or bytes, headers), or raises `HubHTTPError` (status, message, `X-Error-Code`).
Payloads follow what `huggingface_hub` 2.x sends and parses: preupload, git-lfs batch, ndjson commit,
paths-info, tree, refs, tags, branches, model info, validate-yaml, repo create.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

LFS_THRESHOLD = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in ("safetensors", "bin", "model", "pt", "pth")
).encode()


class HubHTTPError(Exception):
    """An error answer: status, message and optional `X-Error-Code`."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


@dataclass(frozen=True)
class Entry:
    """A file in a commit: its object (by sha256 key) and whether it is stored through LFS."""

    lfs: bool
    key: str


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, Entry]
    title: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: dict[int, str] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)
    next_discussion: int = 1


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def folder_oid(folder: str, sha: str) -> str:
    return hashlib.sha1(f"{sha}:{folder}".encode()).hexdigest()


def _is_lfs(gitattributes: bytes, path: str, size: int, sample: bytes) -> bool:
    """LFS like the Hub decides: a .gitattributes `filter=lfs` pattern, 10 MiB or more, or binary content."""
    patterns = [ln.split()[0] for ln in gitattributes.decode().splitlines() if "filter=lfs" in ln]
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_THRESHOLD or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in patterns)


Answer = tuple[int, Any, dict[str, str]]


def dispatch(hub: Any, method: str, seg: list[str], query: dict, body: bytes) -> Answer:
    """Route a request (decoded path segments) to its handler."""
    if seg[:2] == ["api", "validate-yaml"] and method == "POST":
        return _validate_yaml(json.loads(body))
    if seg[:2] == ["api", "agent-harnesses"] and method == "GET":
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}
    if seg[:3] == ["api", "repos", "create"] and method == "POST":
        return _create_repo(hub, json.loads(body))
    if seg[:2] == ["api", "models"] and len(seg) >= 4:
        repo = _repo(hub, f"{seg[2]}/{seg[3]}")
        action, args = (seg[4] if len(seg) > 4 else ""), seg[5:]
        handler = _API_ROUTES.get((method, action))
        if handler is None:
            raise HubHTTPError(404, f"no route {method} {action}")
        return handler(hub, repo, args, query, body)
    if len(seg) == 6 and seg[2:] == ["info", "lfs", "objects", "batch"] and seg[1].endswith(".git"):
        return _lfs_batch(hub, _repo(hub, f"{seg[0]}/{seg[1][:-4]}"), json.loads(body))
    if seg[:1] == ["lfs-upload"] and method == "PUT":
        if query.get("X-Amz-Signature", [""])[0] != hub._sign(seg[3]):
            raise HubHTTPError(403, "SignatureDoesNotMatch")
        return _lfs_put(hub, _repo(hub, f"{seg[1]}/{seg[2]}"), seg[3], body)
    if seg[:1] == ["lfs-verify"] and method == "POST":
        return _lfs_verify(hub, _repo(hub, f"{seg[1]}/{seg[2]}"), json.loads(body))
    raise HubHTTPError(404, f"no route {method} /{'/'.join(seg)}")


def _repo(hub: Any, repo_id: str) -> Repo:
    if repo_id not in hub.repos:
        raise HubHTTPError(404, "Repository not found", "RepoNotFound")
    return hub.repos[repo_id]


def _validate_yaml(payload: dict) -> Answer:
    import yaml

    content = payload.get("content", "")
    errors = []
    if content.startswith("---"):
        try:
            meta = yaml.safe_load(content.split("---", 2)[1]) or {}
            if not isinstance(meta, dict):
                errors.append({"message": "metadata must be a mapping"})
            elif "widget" in meta and not isinstance(meta["widget"], list):
                errors.append({"message": '"widget" must be an array'})
        except (yaml.YAMLError, IndexError) as exc:
            errors.append({"message": f"invalid YAML: {exc}"})
    if errors:
        return 400, {"errors": errors, "error": errors[0]["message"]}, {}
    return 200, {"errors": [], "warnings": []}, {}


def _create_repo(hub: Any, payload: dict) -> Answer:
    if payload.get("type", "model") != "model":
        raise HubHTTPError(400, "only model repos are served")
    repo_id = f"{payload.get('organization') or hub.namespace}/{payload['name']}"
    url = f"{hub.endpoint}/{repo_id}"
    if repo_id in hub.repos:
        raise HubHTTPError(409, "You already created this model repo", extra={"url": url})
    repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
    files = {".gitattributes": Entry(False, hub._store(DEFAULT_GITATTRIBUTES))}
    repo.branches["main"] = hub._commit(repo, None, files, "initial commit", "")
    hub.repos[repo_id] = repo
    return 200, {"url": url, "name": repo_id}, {}


def _model_info(hub: Any, repo: Repo, args: list[str], query: dict, body: bytes) -> Answer:
    sha = hub._resolve(repo, args[0] if args else "main")
    commit = repo.commits[sha]
    siblings = [{"rfilename": p} for p in sorted(commit.files)]
    return (
        200,
        {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": sha,
            "private": repo.private,
            "lastModified": commit.date,
            "siblings": siblings,
            "tags": [],
            "downloads": 0,
            "likes": 0,
        },
        {},
    )


def _refs(hub: Any, repo: Repo, args: list[str], query: dict, body: bytes) -> Answer:
    def rows(table: dict, prefix: str) -> list[dict]:
        return [{"name": str(k), "ref": f"{prefix}{k}", "targetCommit": v} for k, v in table.items()]

    out = {"branches": rows(repo.branches, "refs/heads/"), "tags": rows(repo.tags, "refs/tags/"), "converts": []}
    if query.get("include_prs"):
        out["pullRequests"] = rows(repo.prs, "refs/pr/")
    return 200, out, {}


def _preupload(hub: Any, repo: Repo, args: list[str], query: dict, body: bytes) -> Answer:
    files = repo.commits[hub._resolve(repo, args[0])].files
    attrs = hub._object(files[".gitattributes"].key) if ".gitattributes" in files else b""
    out = []
    for item in json.loads(body)["files"]:
        sample = base64.b64decode(item["sample"])
        existing = files.get(item["path"])
        out.append(
            {
                "path": item["path"],
                "shouldIgnore": False,
                "uploadMode": "lfs" if _is_lfs(attrs, item["path"], item["size"], sample) else "regular",
                "oid": hub._remote_oid(existing) if existing else None,
            }
        )
    return 200, {"files": out, "commitOid": hub._resolve(repo, args[0])}, {}


def _lfs_batch(hub: Any, repo: Repo, payload: dict) -> Answer:
    objects = []
    for obj in payload["objects"]:
        oid, size = obj["oid"], obj["size"]
        row: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if oid not in repo.lfs_oids:
            base = f"{hub.endpoint}/lfs-upload/{repo.repo_id}/{oid}?X-Amz-Signature={hub._sign(oid)}"
            row["actions"] = {
                "upload": {"href": base, "header": {}},
                "verify": {"href": f"{hub.endpoint}/lfs-verify/{repo.repo_id}", "header": {}},
            }
        objects.append(row)
    return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}


def _lfs_put(hub: Any, repo: Repo, oid: str, body: bytes) -> Answer:
    if hashlib.sha256(body).hexdigest() != oid:
        raise HubHTTPError(400, f"sha256 of the uploaded bytes does not match {oid}")
    hub._store(body)
    repo.lfs_oids.add(oid)
    hub.lfs_bytes += len(body)
    hub.lfs_puts += 1
    return 200, b"", {}


def _lfs_verify(hub: Any, repo: Repo, payload: dict) -> Answer:
    target = hub.root / "objects" / payload["oid"]
    if payload["oid"] not in repo.lfs_oids or target.stat().st_size != payload["size"]:
        raise HubHTTPError(422, f"LFS object {payload['oid']} is missing or has the wrong size")
    return 200, {}, {}


def _commit(hub: Any, repo: Repo, args: list[str], query: dict, body: bytes) -> Answer:
    rev = args[0]
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise HubHTTPError(400, "first line must be the commit header")
    header = lines[0]["value"]
    head = hub._resolve(repo, rev)
    if rev not in repo.branches and not re.fullmatch(r"refs/pr/\d+", rev):
        raise HubHTTPError(400, f"Invalid rev id: {rev} (commit to a branch or a pull request)")
    if header.get("parentCommit") and header["parentCommit"] != head:
        raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
    files = dict(repo.commits[head].files)
    for line in lines[1:]:
        key, value = line["key"], line["value"]
        if key == "file":
            data = base64.b64decode(value["content"])
            hub.regular_bytes += len(data)
            files[value["path"]] = Entry(False, hub._store(data))
        elif key == "lfsFile":
            if value["oid"] not in repo.lfs_oids:
                raise HubHTTPError(
                    422, "Your push was rejected because an LFS pointer pointed to a file that does not exist"
                )
            files[value["path"]] = Entry(True, value["oid"])
        elif key == "deletedFile":
            files.pop(value["path"], None)
        elif key == "deletedFolder":
            files = {p: e for p, e in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        else:
            raise HubHTTPError(400, f"unknown commit line {key!r}")
        if key in ("file", "lfsFile") and value["path"] in hub.corrupt_paths:
            files[value["path"]] = hub._corrupt(files[value["path"]])
    sha = hub._commit(repo, head, files, header.get("summary", ""), header.get("description", ""))
    out = {"commitOid": sha, "commitUrl": f"{hub.endpoint}/{repo.repo_id}/commit/{sha}", "success": True}
    if query.get("create_pr"):
        num = repo.next_discussion
        repo.next_discussion += 1
        repo.prs[num] = sha
        out["pullRequestUrl"] = f"{hub.endpoint}/{repo.repo_id}/discussions/{num}"
    elif rev in repo.branches:
        repo.branches[rev] = sha
    else:
        repo.prs[int(rev.rsplit("/", 1)[1])] = sha
    return 200, out, {}


def _paths_info(hub: Any, repo: Repo, args: list[str], query: dict, body: bytes) -> Answer:
    sha = hub._resolve(repo, args[0])
    form = parse_qs(body.decode())
    expand = form.get("expand", ["false"])[0].lower() == "true"
    out = []
    for path in form.get("paths", []):
        files = repo.commits[sha].files
        if path in files:
            out.append(hub._entry_info(repo, sha, path, files[path], expand))
        elif any(p.startswith(path + "/") for p in files):
            out.append({"type": "directory", "path": path, "oid": folder_oid(path, sha)})
    return 200, out, {}


def _tree(hub: Any, repo: Repo, args: list[str], query: dict, body: bytes) -> Answer:
    sha = hub._resolve(repo, args[0])
    recursive = query.get("recursive", ["false"])[0].lower() == "true"
    expand = query.get("expand", ["false"])[0].lower() == "true"
    rows = hub._listing(repo, sha, "/".join(args[1:]), recursive, expand)
    page, cursor = (50 if expand else 1000), int(query.get("cursor", ["0"])[0])
    headers = {}
    if cursor + page < len(rows):
        rest = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "cursor")
        url = f"{hub.endpoint}/api/models/{repo.repo_id}/tree/{'/'.join(args)}?{rest}&cursor={cursor + page}"
        headers["Link"] = f'<{url}>; rel="next"'
    return 200, rows[cursor : cursor + page], headers


def _tag(hub: Any, repo: Repo, args: list[str], query: dict, body: bytes) -> Answer:
    payload = json.loads(body)
    if payload["tag"] in repo.tags:
        raise HubHTTPError(409, f"Tag {payload['tag']} already exists")
    repo.tags[payload["tag"]] = hub._resolve(repo, args[0])
    return 200, {}, {}


def _branch(hub: Any, repo: Repo, args: list[str], query: dict, body: bytes) -> Answer:
    name, payload = args[0], json.loads(body or b"{}")
    if name.startswith("refs/"):
        raise HubHTTPError(400, f"Invalid reference for a branch: {name}")
    if name in repo.branches:
        raise HubHTTPError(409, f"Branch {name} already exists")
    repo.branches[name] = hub._resolve(repo, payload.get("startingPoint") or "main")
    return 200, {}, {}


_API_ROUTES: dict[tuple[str, str], Callable[..., Answer]] = {
    ("GET", ""): _model_info,
    ("GET", "revision"): _model_info,
    ("GET", "refs"): _refs,
    ("GET", "tree"): _tree,
    ("POST", "preupload"): _preupload,
    ("POST", "commit"): _commit,
    ("POST", "paths-info"): _paths_info,
    ("POST", "tag"): _tag,
    ("POST", "branch"): _branch,
}
