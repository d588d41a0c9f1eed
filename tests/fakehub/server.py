"""A local, protocol-faithful Hugging Face Hub for tests: the real `huggingface_hub` client talks to it.

It implements the endpoints a classic-LFS commit uses (`HF_HUB_DISABLE_XET=1`): repo create (409 on
conflict), validate-yaml, preupload, the git-lfs batch API with PUT + verify, the ndjson commit (branches,
`create_pr` -> `refs/pr/N`, pushes to `refs/pr/N`), paths-info, tree (paginated), model info, refs, tags
and branches. Objects are stored by sha256 under a folder; commit, tree and blob ids are real git hashes.

Reported metadata (size, sha256, blob id) is computed from the bytes actually stored, so a corrupted
object shows up in paths-info the way a damaged upload would. Test hooks: `faults` (answer matching
requests with an error status), `corrupt_paths` (flip one byte of a file when it is committed),
`on_lfs_put` (called after each stored LFS object, e.g. to kill the client), and counters of requests
and uploaded bytes. The endpoint handlers are in `routes.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakehub.routes import Commit, Entry, HubHTTPError, Repo, dispatch, folder_oid, git_blob_sha1, lfs_pointer


@dataclass
class Fault:
    """Answer `status` (0: drop the connection) to `times` requests whose method and path (regex `pattern`)
    match, after letting `skip` matching requests through."""

    method: str
    pattern: str
    status: int
    times: int = 1
    skip: int = 0
    fired: int = 0


class FakeHub:
    """In-memory refs + on-disk objects, served by a ThreadingHTTPServer on 127.0.0.1 (free port)."""

    def __init__(self, root: Path, *, token: str | None = None, namespace: str = "fakeuser"):
        self.root, self.token, self.namespace = Path(root), token, namespace
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, body bytes)
        self.unauthorized = 0
        self.unauthorized_paths: list[tuple[str, str]] = []
        self.lfs_bytes = 0
        self.regular_bytes = 0
        self.faults: list[Fault] = []
        self.corrupt_paths: set[str] = set()
        self.on_lfs_put: Callable[[int], None] | None = None
        self.lfs_puts = 0
        self._clock = 1_700_000_000
        self._secret = hashlib.sha256(str(root).encode() + str(time.time()).encode()).hexdigest()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- test helpers ----------------------------------------------------------------------
    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and re.search(pattern, p))

    def route_counts(self) -> Counter:
        return Counter(f"{m} {_route_name(p)}" for m, p, _ in self.requests)

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.lfs_bytes = self.regular_bytes = self.lfs_puts = self.unauthorized = 0

    def read_file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        repo = self.repos[repo_id]
        return self._object(repo.commits[self._resolve(repo, revision)].files[path].key)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        commit = repo.commits[self._resolve(repo, revision)]
        return {p: self._object(e.key) for p, e in commit.files.items()}

    # --- storage ---------------------------------------------------------------------------
    def _object(self, key: str) -> bytes:
        return (self.root / "objects" / key).read_bytes()

    def _store(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        target = self.root / "objects" / key
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return key

    def _sign(self, oid: str) -> str:
        return hashlib.sha256(f"{self._secret}:{oid}".encode()).hexdigest()

    def _corrupt(self, entry: Entry) -> Entry:
        data = bytearray(self._object(entry.key))
        data[len(data) // 2] ^= 0xFF
        if entry.lfs:  # damage the stored LFS object in place, as bad storage would
            (self.root / "objects" / entry.key).write_bytes(bytes(data))
            return entry
        return Entry(False, self._store(bytes(data)))

    def _describe(self, path: str, entry: Entry) -> dict[str, Any]:
        data = self._object(entry.key)
        info: dict[str, Any] = {"type": "file", "path": path, "size": len(data)}
        if entry.lfs:
            sha = hashlib.sha256(data).hexdigest()
            pointer = lfs_pointer(sha, len(data))
            info["oid"] = git_blob_sha1(pointer)
            info["lfs"] = {"oid": sha, "size": len(data), "pointerSize": len(pointer)}
        else:
            info["oid"] = git_blob_sha1(data)
        return info

    def _remote_oid(self, entry: Entry) -> str:
        """The oid preupload reports: sha256 for LFS files, git blob sha1 for regular ones."""
        data = self._object(entry.key)
        return hashlib.sha256(data).hexdigest() if entry.lfs else git_blob_sha1(data)

    def _tree_sha(self, files: dict[str, Entry]) -> str:
        nested: dict[str, Any] = {}
        for path, entry in files.items():
            node = nested
            *dirs, name = path.split("/")
            for d in dirs:
                node = node.setdefault(d, {})
            node[name] = entry

        def sha_of(node: dict[str, Any]) -> bytes:
            rows = []
            for name, child in node.items():
                if isinstance(child, dict):
                    rows.append((name + "/", b"40000 %s\0" % name.encode() + sha_of(child)))
                else:
                    blob = bytes.fromhex(self._describe(name, child)["oid"])
                    rows.append((name, b"100644 %s\0" % name.encode() + blob))
            body = b"".join(row for _, row in sorted(rows))
            return hashlib.sha1(b"tree %d\0" % len(body) + body).digest()

        return sha_of(nested).hex()

    def _commit(self, repo: Repo, parent: str | None, files: dict[str, Entry], title: str, desc: str) -> str:
        self._clock += 1
        lines = [f"tree {self._tree_sha(files)}"] + ([f"parent {parent}"] if parent else [])
        who = f"fakehub <hub@fake.invalid> {self._clock} +0000"
        body = "\n".join([*lines, f"author {who}", f"committer {who}", "", title, "", desc]).encode()
        sha = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self._clock))
        repo.commits[sha] = Commit(sha, parent, dict(files), title, date)
        return sha

    def _resolve(self, repo: Repo, rev: str) -> str:
        pr = re.fullmatch(r"refs/pr/(\d+)", rev)
        if pr and int(pr[1]) in repo.prs:
            return repo.prs[int(pr[1])]
        for table in (repo.branches, repo.tags):
            if rev in table:
                return table[rev]
        if rev in repo.commits:
            return rev
        raise HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _last_commit(self, repo: Repo, sha: str, path: str) -> dict[str, str]:
        commit = repo.commits[sha]
        while commit.parent and repo.commits[commit.parent].files.get(path) == commit.files.get(path):
            commit = repo.commits[commit.parent]
        return {"id": commit.sha, "title": commit.title, "date": commit.date}

    def _listing(self, repo: Repo, sha: str, prefix: str, recursive: bool, expand: bool) -> list[dict]:
        files = repo.commits[sha].files
        if prefix and prefix not in files and not any(p.startswith(prefix + "/") for p in files):
            raise HubHTTPError(404, f"{prefix} does not exist", "EntryNotFound")
        start = prefix + "/" if prefix else ""
        out: dict[str, dict] = {}
        for path, entry in sorted(files.items()):
            if not path.startswith(start):
                continue
            parts = path[len(start) :].split("/")
            for depth in range(1, len(parts)):
                folder = start + "/".join(parts[:depth])
                out.setdefault(folder, {"type": "directory", "path": folder, "oid": folder_oid(folder, sha)})
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                out[path] = self._entry_info(repo, sha, path, entry, expand)
        return list(out.values())

    def _entry_info(self, repo: Repo, sha: str, path: str, entry: Entry, expand: bool) -> dict:
        info = self._describe(path, entry)
        if expand:
            info["lastCommit"] = self._last_commit(repo, sha, path)
            info["securityFileStatus"] = {"status": "safe", "avScan": {}, "pickleImportScan": None}
        return info


def _route_name(path: str) -> str:
    for name in (
        "validate-yaml",
        "repos/create",
        "preupload",
        "commit",
        "paths-info",
        "tree",
        "refs",
        "tag",
        "branch",
        "info/lfs/objects/batch",
        "lfs-verify",
        "lfs-upload",
    ):
        if f"/{name}" in path:
            return name
    return "info" if path.startswith("/api/models/") else path


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client killed mid-request (a test does it on purpose) is not an error of the server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _download(self, segments: list[str]) -> bool:
        """`/{ns}/{name}/resolve/{rev}/{path}` redirects to `/cdn/{object}`, which answers Range requests."""
        hub = self.hub
        if len(segments) >= 5 and segments[2] == "resolve":
            with hub.lock:
                repo = hub.repos.get(f"{segments[0]}/{segments[1]}")
                commit = repo.commits[hub._resolve(repo, segments[3])] if repo else None
                entry = commit.files.get("/".join(segments[4:])) if commit else None
            if entry is None:
                self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            else:
                self._send(302, b"", {"Location": f"{hub.endpoint}/cdn/{entry.key}"})
            return True
        if len(segments) == 2 and segments[0] == "cdn":
            data = hub._object(segments[1])
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match is None:
                self._send(200, data, content_type="application/octet-stream")
                return True
            first, last = int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)
            headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
            self._send(206, data[first : last + 1], headers, content_type="application/octet-stream")
            return True
        return False

    # --- plumbing --------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, content_type: str = "application/json"
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _serve(self, method: str) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        path = "/" + "/".join(segments)
        body = self._body()
        with hub.lock:
            hub.requests.append((method, path, len(body)))
        if method in ("GET", "HEAD") and path.startswith("/cdn/"):
            self._download(segments)  # presigned, like the CDN the Hub redirects to
            return
        with hub.lock:
            fault = next(
                (
                    f
                    for f in hub.faults
                    if f.method == method and re.search(f.pattern, path) and f.fired < f.skip + f.times
                ),
                None,
            )
            if fault is not None:
                fault.fired += 1
                if fault.fired > fault.skip and fault.status == 0:  # drop the connection, answer nothing
                    self.close_connection = True
                    return
                if fault.fired > fault.skip:
                    self._send(fault.status, {"error": f"injected {fault.status}"}, {"Retry-After": "0"})
                    return
        # Public: the signed LFS upload URL (like S3) and the client's telemetry registry.
        presigned = path.startswith("/lfs-upload/") or path == "/api/agent-harnesses"
        if hub.token is not None and not presigned and self.headers.get("Authorization") != f"Bearer {hub.token}":
            with hub.lock:
                hub.unauthorized += 1
                hub.unauthorized_paths.append((method, path))
            self._send(
                401,
                {"error": "Invalid credentials"},
                {"X-Error-Message": "Invalid credentials in Authorization header"},
            )
            return
        if method in ("GET", "HEAD") and self._download(segments):
            return
        try:
            with hub.lock:
                status, payload, headers = dispatch(hub, method, segments, parse_qs(url.query), body)
            if method == "PUT" and hub.on_lfs_put is not None:
                hub.on_lfs_put(hub.lfs_puts)  # before answering: the client never learns it succeeded
            extra = {k: v for k, v in headers.items() if k != "Content-Type"}
            self._send(status, payload, extra, headers.get("Content-Type", "application/json"))
        except HubHTTPError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, {"error": err.message, **err.extra}, headers)
