"""The small pieces of a one-pass release (`hubtools.pipeline.release_files`): the same bytes `convert` writes,
the dry-run plan, and the result's totals."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.converter import convert, plan
from hubtools.pipeline.overlay import ReleaseOptions
from hubtools.pipeline.release import plan_release
from hubtools.pipeline.release_files import ReleaseResult, small_files, write_small_files
from hubtools.publishing.plan import ROLE_ORDER, Role
from hubtools.publishing.upload import Action, FileResult
from hubtools.testing import tiny_params, write_native_checkpoint


def test_small_files_are_the_bytes_convert_writes_and_listed_in_publish_order(tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_params(n_layers=1, vocab_size=32768), tokenizer="v3")
    convert(native, tmp_path / "hf", max_shard_size="300KB")
    out = tmp_path / "release"
    out.mkdir()
    with open_checkpoint(native) as ckpt:
        written = write_small_files(ckpt, plan(ckpt, max_shard_size=300_000), out, chat_template="auto")
    assert sorted(written) == sorted(p.name for p in out.iterdir())
    for name in written:
        assert (out / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name
    listed = small_files(out)
    assert [f.path for f, _ in listed] == [
        f.path for f, _ in sorted(listed, key=lambda x: (ROLE_ORDER.index(x[0].role), x[0].path))
    ]
    assert all(f.role is not Role.WEIGHTS for f, _ in listed)
    index = next(digest for f, digest in listed if f.path == "model.safetensors.index.json")
    assert index == hashlib.sha256((out / "model.safetensors.index.json").read_bytes()).hexdigest()


def test_the_dry_run_plan_names_every_shard_its_exact_size_and_each_tensor_s_source_ranges(tmp_path: Path) -> None:
    params = tiny_params(n_layers=1)
    native = write_native_checkpoint(tmp_path / "native", params, layout="pth-split", tokenizer="v1")
    convert(native, tmp_path / "hf", max_shard_size="300KB")
    options = ReleaseOptions(max_shard_size=300_000, work_dir=tmp_path / "work")
    result = plan_release(str(native), "acme/tiny", options=options)
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "hf").glob("model-*.safetensors")}
    assert {s["file"]: s["bytes"] for s in result["shards"]} == sizes
    assert (
        result["total_bytes"] == sum(sizes.values()) and result["format"] == "pth-split" and result["dry_run"] is True
    )
    assert result["small_files"] == [  # what convert writes besides the weights, in publish's order; no card
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    ranges = [r for s in result["shards"] for t in s["tensors"] for r in t["ranges"]]
    assert all(Path(path).name.startswith("consolidated.00.pth-split") and length > 0 for path, _, length in ranges)
    assert len({t["name"] for s in result["shards"] for t in s["tensors"]}) == sum(
        len(s["tensors"]) for s in result["shards"]
    )


def test_the_result_counts_what_was_sent_and_what_the_hub_had() -> None:
    files = (
        FileResult("model-00001-of-00002.safetensors", 100, "a" * 64, Action.UPLOADED),
        FileResult("model-00002-of-00002.safetensors", 50, "b" * 64, Action.SKIPPED),
        FileResult("config.json", 7, "c" * 64, Action.UPLOADED),
    )
    report = SimpleNamespace(to_dict=lambda: {"passed": True})
    commit = SimpleNamespace(oid="0" * 40, commit_url="http://hub/commit", pr_url=None)
    result = ReleaseResult.build("me/m", "main", commit, None, "now", files, report, 123, 0.0)
    assert (result.commit_oid, result.report, result.work_peak_bytes, result.uploaded_bytes) == (
        "0" * 40,
        {"passed": True},
        123,
        107,
    )
    out = result.to_dict()
    assert out["uploaded_bytes"] == 107 and [f["path"] for f in out["files"]] == [f.path for f in files]
    nothing = ReleaseResult.build("me/m", "main", None, None, "now", (), report, 0, 0.0)
    assert (nothing.commit_oid, nothing.commit_url, nothing.uploaded_bytes) == (None, None, 0)
