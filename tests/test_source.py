"""Remote sources: native checkpoints read in place over HTTP range requests, from a folder or a .tar."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.checkpoint.remote import Backoff, HttpFile, plain_client
from hubtools.checkpoint.source import list_remote, open_source
from hubtools.errors import CorruptFileError, SourceError
from hubtools.testing import LAYOUTS, tiny_params, write_native_checkpoint
from tests.rangeserver import RangeServer

NO_WAIT = Backoff(attempts=3, base_delay=0.0, sleep=lambda _: None)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    for layout in LAYOUTS:
        write_native_checkpoint(root / layout, tiny_params(n_layers=1), layout=layout, tokenizer="v3")
    with tarfile.open(root / "release.tar", "w") as tar:
        tar.add(root / "pth", arcname="mixtral-tiny-v0.1")
    return root


@pytest.fixture
def server(site: Path):
    srv = RangeServer(site).start()
    yield srv
    srv.stop()


def same_tensors(remote_spec: str, local: Path, staging: Path) -> None:
    with open_checkpoint(local) as expected, open_source(remote_spec, staging=staging) as got:
        assert got.params == expected.params and got.format == expected.format
        assert set(got.tensors) == set(expected.tensors)
        for name in expected.tensors:
            assert torch.equal(got.read(name), expected.read(name)), name
        assert got.tokenizer_file is not None and got.tokenizer_file.name == "tokenizer.model.v3"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_native_layout_reads_the_same_over_http(
    server: RangeServer, site: Path, layout: str, tmp_path: Path
) -> None:
    same_tensors(f"{server.url}{layout}/", site / layout, tmp_path / "staging")
    weights = [r for _, p, r in server.requests if "consolidated" in p and r]
    assert weights and all(r.startswith("bytes=") for r in weights)  # range reads, never a whole-file GET


def test_a_folder_without_an_index_page_is_found_by_its_usual_names(
    server: RangeServer, site: Path, tmp_path: Path
) -> None:
    server.index_pages = False
    same_tensors(f"{server.url}sharded", site / "sharded", tmp_path / "staging")


def test_tar_members_are_indexed_by_their_headers_and_read_in_place(
    server: RangeServer, site: Path, tmp_path: Path
) -> None:
    files = list_remote(f"{server.url}release.tar")
    assert {"params.json", "consolidated.00.pth", "tokenizer.model.v3"} <= set(files)
    same_tensors(f"{server.url}release.tar", site / "pth", tmp_path / "staging")
    assert server.bytes_sent < (site / "release.tar").stat().st_size * 1.5  # read in place, never twice over


def test_a_dropped_connection_resumes_at_the_byte_where_it_stopped(server: RangeServer, site: Path) -> None:
    path = site / "safetensors" / "consolidated.safetensors"
    file = HttpFile(f"{server.url}safetensors/consolidated.safetensors", path.stat().st_size, plain_client())
    server.drop_every, server.drops = 10_000, 5
    buf = bytearray(200_000)
    file.pread_into(memoryview(buf), 1234)
    assert bytes(buf) == path.read_bytes()[1234:201_234]
    resumed = [r for _, _, r in server.requests if r and not r.startswith("bytes=1234-")]
    assert server.drops == 0 and len(resumed) == 5  # five resumes, each from where the last one stopped


def test_a_server_that_keeps_failing_gives_up_after_bounded_retries(server: RangeServer, site: Path) -> None:
    url = f"{server.url}safetensors/consolidated.safetensors"
    file = HttpFile(url, (site / "safetensors" / "consolidated.safetensors").stat().st_size, plain_client())
    file.backoff = NO_WAIT
    server.fail_status, server.fails = 503, 100
    with pytest.raises(SourceError, match=rf"^{url}: HTTP 503 .*gave up after 3 attempts"):
        file.pread_into(memoryview(bytearray(100)), 0)
    assert len(server.requests) == 3


def test_a_file_that_changed_size_on_the_server_is_reported_truncated(server: RangeServer, site: Path) -> None:
    url = f"{server.url}safetensors/consolidated.safetensors"
    real = (site / "safetensors" / "consolidated.safetensors").stat().st_size
    file = HttpFile(url, real + 4096, plain_client())  # announced bigger than what the server has
    with pytest.raises(CorruptFileError, match=rf"^{url}: truncated or changed: the server has {real} bytes"):
        file.pread_into(memoryview(bytearray(100)), 0)


def test_a_missing_remote_folder_is_one_clear_error(server: RangeServer, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"/nowhere/: no native weights found"):
        open_source(f"{server.url}nowhere/", staging=tmp_path)
