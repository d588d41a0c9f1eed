"""Where a native checkpoint is read from: a local folder, an HTTP(S) folder, a `.tar` URL or a Hub repo.

`open_source(spec, staging=...)` returns a `Checkpoint` in every case, so the converter and the
verifier do not care where the bytes come from. For remote sources only the small files (params.json,
the tokenizer) are downloaded, into `staging`; weights stay remote and are indexed from their headers
by range reads (safetensors: 8 bytes + JSON header; .pth: the zip's central directory at the end) and
read tensor by tensor with parallel, retried, resumable range requests (`remote.HttpFile`).

Specs:
- `path/to/folder`: read in place (`open_checkpoint`).
- `https://host/dir/`: a folder served over HTTP; listed from the server's index page when it has one,
  else the usual file names are probed (params.json, consolidated*.safetensors / .pth[-splitN], tokenizers).
- `https://host/release.tar`: members indexed by range reads of their headers (`tar_index`).
- `hf://org/name[@revision]`: a Hub repo holding native files (as Mistral's own repos do), through
  huggingface_hub (`HF_ENDPOINT`, `HF_TOKEN`, its HTTP session).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np

from hubtools.checkpoint.hf_index import index_safetensors
from hubtools.checkpoint.layout import TensorSource, WeightFiles, WeightFormat, detect_layout
from hubtools.checkpoint.pth import ConcatFile, Segment
from hubtools.checkpoint.reader import Checkpoint, index_pth, open_checkpoint
from hubtools.checkpoint.remote import (
    READ_AHEAD,
    HttpFile,
    RangeFile,
    RangeStream,
    plain_client,
    probe_size,
    read_range,
)
from hubtools.checkpoint.tar_index import tar_folder
from hubtools.checkpoint.tokenizer_file import find_tokenizer_file
from hubtools.errors import HubtoolsError, LayoutError, SourceError
from hubtools.families import load_params
from hubtools.filenames import (
    NATIVE_SINGLE,
    NATIVE_STEM,
    PARAMS,
    PTH_SINGLE,
    TOKENIZER_NAMES,
    is_native_weight,
    is_tokenizer_name,
    pth_split_name,
    shard_name,
    shard_names,
)

SMALL_MAX = 64 * 1024 * 1024  # params.json and tokenizer files are downloaded; weights never are


def is_remote(spec: str) -> bool:
    return spec.startswith(("http://", "https://", "hf://"))


def open_source(spec: str | Path, *, staging: Path, layout: str | None = "native", api: Any = None) -> Checkpoint:
    """Open a checkpoint from a folder, an HTTP(S) folder, a `.tar` URL or `hf://org/name[@rev]`.

    Args:
        staging: an empty local folder for the small files of a remote source (params.json, tokenizer).
        layout: which layout to read ("native" for a release).
        api: the `HfApi` (endpoint, token) that reads an `hf://` source (default: `HfApi()`).

    Raises:
        SourceError: a remote source cannot be listed or keeps failing. LayoutError, ParamsError,
            CorruptFileError (a truncated remote file, named by its URL), MappingError.
    """
    text = str(spec)
    if not is_remote(text):
        return open_checkpoint(Path(text), layout=layout)
    files = list_remote(text, api=api)
    staging.mkdir(parents=True, exist_ok=True)
    for name, file in files.items():
        if name == PARAMS or (name in TOKENIZER_NAMES or is_tokenizer_name(name)) and file.size <= SMALL_MAX:
            (staging / name).write_bytes(read_range(file, 0, file.size))
    if PARAMS not in files:
        raise LayoutError(f"{text}: no params.json (expected a native checkpoint folder)")
    remote = {staging / name: files[name] for name in files}
    try:
        weights = detect_layout(staging, names=sorted(files), layout=layout)
        if weights.format is WeightFormat.SAFETENSORS:
            tensors = index_safetensors(weights.files, open_stream=lambda p: (_stream(remote[p]), remote[p].size))[1]
        else:
            tensors = _index_remote_pth(weights, remote)
        params = load_params(staging / PARAMS)
    except HubtoolsError as exc:  # name the remote file, not its local stand-in
        raise type(exc)(_remote_names(str(exc), staging, remote, text)) from None
    return RemoteCheckpoint(staging, weights, params, tensors, find_tokenizer_file(staging), remote, text)


def _remote_names(message: str, staging: Path, remote: dict[Path, RangeFile], spec: str) -> str:
    for path, file in remote.items():
        message = message.replace(str(path), file.url)
    return message.replace(str(staging), spec)


def _stream(file: RangeFile) -> BinaryIO:
    return RangeStream(file)  # type: ignore[return-value]


def _index_remote_pth(weights: WeightFiles, remote: dict[Path, RangeFile]) -> dict[str, TensorSource]:
    return index_pth(weights.files, RemoteConcat(list(weights.files), remote))


class RemoteConcat(ConcatFile):
    """`ConcatFile` over remote parts: the same segments, bytes by range reads (read ahead in blocks)."""

    def __init__(self, parts: list[Path], remote: dict[Path, RangeFile]) -> None:  # noqa: D107
        self.parts, self.remote = parts, remote
        self.sizes = [remote[p].size for p in parts]
        self.starts = [sum(self.sizes[:i]) for i in range(len(parts))]
        self.size, self.pos, self._fds = sum(self.sizes), 0, []
        self._cache: tuple[int, bytes] = (0, b"")

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self.pos))
        start, data = self._cache
        if not (start <= self.pos and self.pos + want <= start + len(data)):
            length = min(max(want, READ_AHEAD), self.size - self.pos)
            chunks = [read_range(self.remote[p], off, n) for p, off, n in self.segments(self.pos, length)]
            start, data = self.pos, b"".join(chunks)
            self._cache = (start, data)
        view[:want] = data[self.pos - start : self.pos - start + want]
        self.pos += want
        return want


class RemoteCheckpoint(Checkpoint):
    """A `Checkpoint` whose weight files are remote: `read_bytes` fetches segments by range requests."""

    def __init__(
        self,
        staging: Path,
        weights: WeightFiles,
        params: Any,
        tensors: dict[str, TensorSource],
        tokenizer_file: Path | None,
        remote: dict[Path, RangeFile],
        where: str,
    ) -> None:
        super().__init__(staging, weights, params, tensors, tokenizer_file)
        self.remote, self.where = remote, where

    def fd(self, path: Path) -> int:
        raise SourceError(f"{self.remote[path].url}: a remote file has no local descriptor (read it with read_bytes)")

    def prefetch(self, name: str) -> None:
        """Nothing: remote reads are fetched when asked for (in parallel ranges)."""

    def read_bytes(self, segments: tuple[Segment, ...]) -> np.ndarray:
        buf = np.empty(sum(n for _, _, n in segments), dtype=np.uint8)
        view, done = memoryview(buf.data).cast("B"), 0
        for path, offset, length in segments:
            self.remote[path].pread_into(view[done : done + length], offset)
            done += length
        return buf

    def url(self, path: Path) -> str:
        return self.remote[path].url


def list_remote(spec: str, *, api: Any = None) -> dict[str, RangeFile]:
    """The files of a remote source by name (sizes known), weights not read; `api` reads an `hf://` source.

    Raises:
        SourceError: unreachable, or nothing that looks like a checkpoint.
    """
    if spec.startswith("hf://"):
        return _hub_files(spec, api)
    client = plain_client()
    if urlsplit(spec).path.endswith(".tar"):
        size = probe_size(client, spec)
        if size is None:
            raise SourceError(f"{spec}: not found (HTTP 404)")
        return dict(tar_folder(HttpFile(spec, size, client)))
    base = spec if spec.endswith("/") else spec + "/"
    names = _listing(client, base) or _probe_names(client, base)
    files: dict[str, RangeFile] = {}
    for name in names:
        size = probe_size(client, urljoin(base, name))
        if size is not None:
            files[name] = HttpFile(urljoin(base, name), size, client)
    if not any(is_native_weight(n) for n in files):
        raise SourceError(f"{base}: no native weights found (expected consolidated*.safetensors or .pth)")
    return files


def _wanted(name: str) -> bool:
    return name == PARAMS or is_native_weight(name) or is_tokenizer_name(name)


def _listing(client: Any, base: str) -> list[str]:
    """File names from the folder's index page (python -m http.server, nginx autoindex, S3-style pages)."""
    try:
        response = client.get(base)
    except Exception:  # noqa: BLE001 - no index page is fine: the usual names are probed instead
        return []
    if response.status_code != 200 or "html" not in response.headers.get("Content-Type", ""):
        return []
    links = (unquote(html.unescape(h)) for h in re.findall(r'href="([^"?#]+)"', response.text))
    return sorted({name for name in links if "/" not in name and _wanted(name)})


def _probe_names(client: Any, base: str) -> list[str]:
    """The usual names of a native folder that answer a HEAD (no index page to read)."""
    exists: Callable[[str], bool] = lambda name: probe_size(client, urljoin(base, name)) is not None  # noqa: E731
    usual = (PARAMS, NATIVE_SINGLE, PTH_SINGLE, *TOKENIZER_NAMES)
    names = [n for n in usual if exists(n)]
    split = 0
    while exists(pth_split_name(split)):
        names.append(pth_split_name(split))
        split += 1
    if not any(is_native_weight(n) for n in names):
        total = next((n for n in range(2, 65) if exists(shard_name(NATIVE_STEM, 1, n))), 0)
        names += shard_names(NATIVE_STEM, total)
    return names


def _hub_files(spec: str, api: Any = None) -> dict[str, RangeFile]:
    """A Hub repo's native files, through `api` (default: huggingface_hub's configured endpoint and token)."""
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session

    repo_id, _, revision = spec.removeprefix("hf://").partition("@")
    api = api or HfApi()
    try:
        entries = list(api.list_repo_tree(repo_id, revision=revision or None))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SourceError(f"{spec}: cannot list the repo ({str(exc).splitlines()[0]})") from None
    headers, session = build_hf_headers(token=api.token), get_session()
    files: dict[str, RangeFile] = {}
    for entry in entries:
        size = getattr(entry, "size", None)
        if "/" not in entry.path and _wanted(entry.path) and size is not None:
            url = hf_hub_url(repo_id, entry.path, revision=revision or None)
            url = api.endpoint + url[url.index(f"/{repo_id}/resolve/") :]  # the client's endpoint wins
            files[entry.path] = HttpFile(url, size, session, headers=headers)
    if not any(is_native_weight(n) for n in files):
        raise SourceError(f"{spec}: no native weights in the repo (expected consolidated*.safetensors or .pth)")
    return files
