"""open_checkpoint: every native layout and HF, values equal to what safetensors and torch.load read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.converter import convert
from hubtools.errors import CorruptFileError, LayoutError
from hubtools.model.hf_config import to_native_params
from hubtools.model.names import tensor_specs
from hubtools.testing import LAYOUTS, tiny_params
from tests.helpers import MakeNative, open_fd_count, same_bytes, tensors_of

FORMATS = {"safetensors": "safetensors", "sharded": "safetensors", "pth": "pth", "pth-split": "pth-split"}


def library_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's tensors as the safetensors library or torch.load read them (not through hubtools)."""
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    pth = sorted(folder.glob("consolidated.00.pth*"))
    if pth:
        data = b"".join(p.read_bytes() for p in pth)
        joined = folder.parent / f"{folder.name}-joined.pth"
        joined.write_bytes(data)
        out.update(torch.load(joined, weights_only=True))
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_native_layout_opens_and_reads_what_the_libraries_read(make_native: MakeNative, layout: str) -> None:
    params = tiny_params()
    folder = make_native(layout, params, layout=layout, tokenizer="v3")
    with open_checkpoint(folder) as ckpt:
        assert (ckpt.layout, ckpt.format, ckpt.params, ckpt.folder) == ("native", FORMATS[layout], params, folder)
        assert ckpt.tokenizer_file == folder / "tokenizer.model.v3"
        assert list(ckpt.tensors) == [s.native for s in tensor_specs(params)]
        expected = library_tensors(folder)
        assert set(expected) == set(ckpt.tensors)
        for name, tensor in expected.items():
            assert same_bytes(ckpt.read(name), tensor), name


def test_an_hf_folder_opens_with_params_from_config_and_reads_what_safetensors_reads(
    make_native: MakeNative, tmp_path: Path
) -> None:
    params = tiny_params(sliding_window=16, rope_theta=1e4)
    convert(make_native(params=params, tokenizer=None), tmp_path / "hf", max_shard_size=100_000)
    with open_checkpoint(str(tmp_path / "hf")) as ckpt:  # a plain str path works too
        assert (ckpt.layout, ckpt.format, ckpt.params) == ("hf", "safetensors", params)
        assert len(ckpt.files) > 1 and ckpt.tokenizer_file is None
        assert list(ckpt.tensors) == [s.hf for s in tensor_specs(params)]
        expected = library_tensors(tmp_path / "hf")
        assert set(expected) == set(ckpt.tensors)
        assert all(same_bytes(ckpt.read(n), t) for n, t in expected.items())


def test_read_returns_tensors_that_own_their_memory(make_native: MakeNative) -> None:
    with open_checkpoint(make_native(tokenizer=None)) as ckpt:
        a = ckpt.read("norm.weight")
        b = ckpt.read("norm.weight")
        a.zero_()
        assert not torch.equal(a, b) and a.is_contiguous()


def test_a_pth_view_into_a_shared_storage_is_read_as_the_view(tmp_path: Path) -> None:
    folder = tmp_path / "views"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(to_native_params(tiny_params())))
    base = torch.arange(24, dtype=torch.float32)
    state = {"t": base.view(4, 6).t(), "tail": base[6:].view(3, 6), "strided": base[::2]}
    torch.save(state, folder / "consolidated.00.pth")
    with open_checkpoint(folder) as ckpt:
        for name, tensor in state.items():
            assert torch.equal(ckpt.read(name), tensor), name


def test_read_bytes_concatenates_segments_across_files(make_native: MakeNative, tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes(range(50)))
    b.write_bytes(bytes(range(50, 100)))
    with open_checkpoint(make_native(tokenizer=None)) as ckpt:
        got = ckpt.read_bytes(((a, 45, 5), (b, 0, 3), (a, 0, 0)))
        assert got.tobytes() == bytes([45, 46, 47, 48, 49, 50, 51, 52])
        with pytest.raises(CorruptFileError, match=r"b.bin: truncated while reading \(offset 50\)"):
            ckpt.read_bytes(((b, 40, 20),))


def test_a_folder_holding_both_layouts_opens_the_one_asked_for(make_native: MakeNative, tmp_path: Path) -> None:
    native = make_native(tokenizer=None)
    both = Path(shutil.copytree(native, tmp_path / "both"))
    convert(native, tmp_path / "hf")
    for f in (tmp_path / "hf").iterdir():
        shutil.copy(f, both / f.name)
    with open_checkpoint(both, layout="hf") as hf, open_checkpoint(both, layout="native") as nat:
        assert (hf.layout, nat.layout) == ("hf", "native")
        assert tensors_of(native).keys() == nat.tensors.keys() and "lm_head.weight" in hf.tensors
    with open_checkpoint(both, prefer="hf") as preferred:
        assert preferred.layout == "hf"


def test_a_missing_folder_and_hf_weights_without_config_are_layout_errors(
    make_native: MakeNative, tmp_path: Path
) -> None:
    with pytest.raises(LayoutError, match="nowhere"):
        open_checkpoint(tmp_path / "nowhere")
    convert(make_native(tokenizer=None), tmp_path / "hf")
    (tmp_path / "hf" / "config.json").unlink()
    with pytest.raises(LayoutError, match=r"hf: expected config.json beside the HF weights, found none"):
        open_checkpoint(tmp_path / "hf")


def test_close_releases_every_file(make_native: MakeNative) -> None:
    before = open_fd_count()
    ckpt = open_checkpoint(make_native("sharded", layout="sharded", tokenizer=None))
    for name in ckpt.tensors:
        ckpt.read(name)
    assert open_fd_count() > before
    ckpt.close()
    assert open_fd_count() == before


@pytest.mark.parametrize("layout", ["safetensors", "pth"])
def test_large_tensors_are_private_mappings_of_the_file(
    make_native: MakeNative, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hubtools.checkpoint.reader.MAP_AT_LEAST", 1)  # map every tensor, at any file offset
    folder = make_native(layout, layout=layout, tokenizer=None)
    files = sorted(p for p in folder.iterdir() if p.name.startswith("consolidated"))
    before = {p: p.read_bytes() for p in files}
    expected = library_tensors(folder)
    fds = open_fd_count()
    with open_checkpoint(folder) as ckpt:
        read = {n: ckpt.read(n) for n in ckpt.tensors}
        assert all(same_bytes(read[n], t) for n, t in expected.items())
        assert open_fd_count() > fds + 1  # the mappings are alive
        for t in read.values():
            t.zero_()  # writable, copy-on-write: the file never changes
        assert torch.equal(ckpt.read("norm.weight"), expected["norm.weight"])
    assert {p: p.read_bytes() for p in files} == before
    del read, t
    assert open_fd_count() == fds  # dropping the tensors unmaps them


def test_a_file_truncated_after_indexing_is_named_not_a_crash(
    make_native: MakeNative, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hubtools.checkpoint.reader.MAP_AT_LEAST", 1)
    folder = make_native(tokenizer=None)
    with open_checkpoint(folder) as ckpt:
        path = folder / "consolidated.safetensors"
        size = path.stat().st_size
        with path.open("r+b") as fh:
            fh.truncate(size - 8)
        last = max(ckpt.tensors.values(), key=lambda src: src.segments[-1][1] + src.segments[-1][2])
        ending = last.segments[-1][1] + last.segments[-1][2]
        with pytest.raises(
            CorruptFileError, match=rf"safetensors: expected at least {ending} bytes .* found {size - 8}"
        ):
            ckpt.read(last.name)


def test_a_file_that_cannot_be_mapped_is_read_instead(make_native: MakeNative, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise OSError(19, "No such device")  # what mmap says on a file system without mmap support

    monkeypatch.setattr("hubtools.checkpoint.reader.MAP_AT_LEAST", 1)
    monkeypatch.setattr("hubtools.checkpoint.reader.map_range", refuse)
    folder = make_native(tokenizer=None)
    expected = library_tensors(folder)
    with open_checkpoint(folder) as ckpt:
        assert all(same_bytes(ckpt.read(n), t) for n, t in expected.items())
