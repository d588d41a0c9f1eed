"""Outputs never overlap their source, and --force replaces only what hubtools wrote (issue: no data loss)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hubtools.destination import MARKER, atomic_folder, check_destination, record_folder, write_file
from hubtools.errors import DestinationError
from tests.helpers import assert_one_line_error

RunCli = Callable[..., object]


def test_convert_into_the_parent_of_its_source_never_deletes_the_source(
    make_native: Callable[..., Path], run_cli, tmp_path: Path
) -> None:
    src = make_native(tokenizer=None)
    before = sorted(p.name for p in src.iterdir())
    for force in ((), ("--force",)):
        assert_one_line_error(run_cli("convert", src, tmp_path, *force), "contains the source")
        assert_one_line_error(run_cli("convert", src, src, *force), "is the source")
        assert_one_line_error(run_cli("convert", src, src / "sub", *force), "lies inside the source")
    assert sorted(p.name for p in src.iterdir()) == before


def test_force_never_deletes_a_users_files(make_native: Callable[..., Path], run_cli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    mine = tmp_path / "mine"
    (mine / "deep").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    (mine / "deep" / "data.bin").write_bytes(b"\0" * 10)
    assert_one_line_error(run_cli("convert", src, mine, "--force"), f"{mine}: expected an empty folder", "deep")
    assert (mine / "thesis.txt").read_text() == "years of work" and (mine / "deep" / "data.bin").exists()
    (mine / "thesis.txt").write_text("still mine")  # a file at DST
    assert_one_line_error(run_cli("convert", src, mine / "thesis.txt", "--force"), "expected a file hubtools wrote")
    assert (mine / "thesis.txt").read_text() == "still mine"


def test_force_replaces_hubtools_output_and_the_marker_is_not_published(
    make_native: Callable[..., Path], run_cli, tmp_path: Path
) -> None:
    from hubtools.publishing.plan import plan_upload

    src, out = make_native(tokenizer=None), tmp_path / "hf"
    assert run_cli("convert", src, out, "--quiet").exit_code == 0
    assert (out / MARKER).is_file()
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_cli("convert", src, out, "--force", "--quiet").exit_code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert MARKER not in {f.path for f in plan_upload(out).files}


def test_a_missing_parent_is_refused_by_every_writer(make_native: Callable[..., Path], run_cli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    assert_one_line_error(run_cli("convert", src, tmp_path / "no" / "out"), "expected an existing parent folder")
    assert_one_line_error(
        run_cli("card", "mixtral-8x7b-v0.1", "-o", tmp_path / "no" / "README.md"), "expected an existing parent folder"
    )
    hf = tmp_path / "hf"
    assert run_cli("convert", src, hf, "--quiet").exit_code == 0
    result = run_cli("verify", src, hf, "--no-logits", "--json", tmp_path / "no" / "report.json")
    assert_one_line_error(result, "expected an existing parent folder")
    assert "verify:" not in result.stderr  # refused before the run
    assert_one_line_error(run_cli("gguf", src, tmp_path / "no" / "gguf"), "expected an existing parent folder")
    assert not (tmp_path / "no").exists()


def test_verify_json_replaces_only_its_own_report(make_native: Callable[..., Path], run_cli, tmp_path: Path) -> None:
    src, hf, report = make_native(tokenizer=None), tmp_path / "hf", tmp_path / "report.json"
    assert run_cli("convert", src, hf, "--quiet").exit_code == 0
    report.write_text("my notes\n")
    for force in ((), ("--force",)):
        result = run_cli("verify", src, hf, "--no-logits", "--quiet", "--json", report, *force)
        assert_one_line_error(result, str(report), "already exists" if not force else "expected a file hubtools wrote")
        assert "verify:" not in result.stderr and report.read_text() == "my notes\n"
    report.unlink()
    assert run_cli("verify", src, hf, "--no-logits", "--quiet", "--json", report).exit_code == 0
    assert_one_line_error(run_cli("verify", src, hf, "--no-logits", "--json", report), "already exists")
    assert run_cli("verify", src, hf, "--no-logits", "--quiet", "--json", report, "--force").exit_code == 0
    assert json.loads(report.read_text())["passed"] is True


def test_card_force_replaces_only_a_card_hubtools_wrote(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    readme = tmp_path / "README.md"
    readme.write_text("my own notes\n")
    assert_one_line_error(
        run_cli("card", "mixtral-8x7b-v0.1", "-o", readme, "--force"), "expected a file hubtools wrote"
    )
    assert readme.read_text() == "my own notes\n"
    readme.unlink()
    assert run_cli("card", "mixtral-8x7b-v0.1", "-o", readme).exit_code == 0
    assert oct(readme.stat().st_mode & 0o777) == "0o644"
    assert run_cli("card", "mixtral-8x7b-v0.1", "-o", readme, "--force").exit_code == 0


def test_demo_refuses_a_folder_holding_other_files_even_with_force(run_cli, tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "weights.safetensors").write_bytes(b"mine")
    assert_one_line_error(run_cli("demo", tmp_path, "--force"), "which is not hubtools'")
    assert (tmp_path / "hf" / "weights.safetensors").read_bytes() == b"mine"


def test_atomic_folder_leaves_nothing_and_names_the_output_not_the_temporary(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    with pytest.raises(DestinationError) as err, atomic_folder(dst) as tmp:
        (tmp / "x").write_text("partial")
        raise DestinationError(f"{tmp / 'x'}: expected more, found less")
    assert str(err.value) == f"{dst / 'x'}: expected more, found less"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_symlinked_destination_is_replaced_beside_the_link_and_its_target_kept(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old")
    record_folder(target)  # hubtools' record of what it wrote there
    link = tmp_path / "link"
    link.symlink_to(target)
    with atomic_folder(link, force=True) as tmp:
        assert tmp.parent == tmp_path
        (tmp / "new.txt").write_text("new")
    assert not link.is_symlink() and (link / "new.txt").read_text() == "new"
    assert (target / "old.txt").read_text() == "old"  # the link went, its target is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_write_file_refuses_a_folder_and_writes_0644(tmp_path: Path) -> None:
    with pytest.raises(DestinationError, match="found a folder"):
        write_file(tmp_path, "x")
    path = write_file(tmp_path / "a.md", "hello")
    assert path.read_text() == "hello" and (path.stat().st_mode & 0o777) == 0o644
    with pytest.raises(DestinationError, match="already exists"):
        check_destination(path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(make_native: Callable[..., Path], tmp_path: Path, signum: int) -> None:
    src = make_native(tokenizer=None)
    out = tmp_path / "out"
    slow = (
        "import signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import hubtools.checkpoint.writer as w; real = w.write_all\n"
        "def slow(*a, **k):\n    time.sleep(0.2); return real(*a, **k)\n"
        "w.write_all = slow; import hubtools.converter as c; c.write_all = slow\n"
        "from hubtools.cli import main; sys.argv = ['hubtools', 'convert', sys.argv[1], sys.argv[2], '--quiet']; main()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", slow, str(src), str(out)], stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    deadline = time.monotonic() + 30
    while not any(p.name.endswith("hubtools-partial") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines() == ["error: interrupted; nothing was written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]


def test_config_values_are_validated_before_anything_is_written(
    make_native: Callable[..., Path], run_cli, tmp_path: Path
) -> None:
    src = make_native(tokenizer=None)
    for flag, value, fragment in (
        ("--rope-theta", "nan", "rope_theta nan: expected a finite number > 0"),
        ("--rope-theta", "-5", "rope_theta -5.0: expected a finite number > 0"),
        ("--rope-theta", "inf", "rope_theta inf: expected a finite number > 0"),
        ("--max-position-embeddings", "0", "max_position_embeddings 0: expected a positive integer"),
        ("--max-position-embeddings", "-1", "max_position_embeddings -1: expected a positive integer"),
    ):
        assert_one_line_error(run_cli("convert", src, tmp_path / "out", flag, value), fragment)
        assert not (tmp_path / "out").exists()


def test_a_v3_conversion_carries_tokenizer_model_and_the_round_trip_stays_bit_exact(
    make_native: Callable[..., Path], tmp_path: Path
) -> None:
    from hubtools.converter import convert
    from hubtools.model.hf_config import ConfigOverrides
    from hubtools.testing import tiny_params

    native = make_native(tokenizer="v3", params=tiny_params(vocab_size=32768))
    convert(native, tmp_path / "hf", overrides=ConfigOverrides(max_position_embeddings=65536))
    v3 = next(p for p in native.iterdir() if p.name.startswith("tokenizer.model"))
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == v3.read_bytes()
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["transformers_version"].split(".")[0] in ("4", "5")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["model_max_length"] == 65536
    convert(tmp_path / "hf", tmp_path / "back")
    assert sorted(p.name for p in (tmp_path / "back").iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in native.iterdir()
    )
    for p in native.iterdir():
        if p.name != "params.json":  # params.json is rewritten (sorted keys); tests/test_convert.py checks values
            assert (tmp_path / "back" / p.name).read_bytes() == p.read_bytes(), p.name


def test_a_cast_that_overflows_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    import torch

    from hubtools.converter import convert
    from hubtools.errors import InvalidValueError
    from hubtools.testing import tiny_params, write_native_checkpoint

    params = tiny_params(vocab_size=1000)
    native = write_native_checkpoint(tmp_path / "native", params, tokenizer=None, dtype=torch.bfloat16)
    from safetensors.torch import load_file, save_file

    weights = load_file(native / "consolidated.safetensors")
    weights["layers.0.attention.wv.weight"][0, :3] = 1e6  # fine in bfloat16, inf in float16
    save_file(weights, native / "consolidated.safetensors")
    with pytest.raises(
        InvalidValueError, match="layers.0.attention.wv.weight: expected values that fit float16, found 3"
    ):
        convert(native, tmp_path / "hf", dtype="float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]


def test_a_real_ctrl_c_during_the_swap_waits_for_it_and_says_the_new_output_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubtools.errors import OutputInPlace

    dst = tmp_path / "out"
    with atomic_folder(dst) as tmp:
        (tmp / "old.txt").write_text("old")
    real_rename = os.rename

    def rename(src: object, target: object) -> None:
        real_rename(src, target)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C with the old output aside: held until the swap is done

    monkeypatch.setattr(os, "rename", rename)
    in_place = f"the new output is in place at {dst}"
    with pytest.raises(OutputInPlace, match=in_place), atomic_folder(dst, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in dst.iterdir()) == [MARKER, "new.txt"]


def test_after_a_kill_9_mid_swap_the_old_output_is_put_back_first(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    with atomic_folder(dst) as tmp:
        (tmp / "old.txt").write_text("old")
    dst.rename(tmp_path / ".out.hubtools-old")  # killed with the old output aside, the new one not yet in
    (tmp_path / ".out.hubtools-partial").mkdir()  # and its temporary left
    with pytest.raises(DestinationError, match="already exists"), atomic_folder(dst):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (dst / "old.txt").read_text() == "old"


def test_a_users_file_in_a_folder_output_or_an_edit_is_named_and_kept(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    with atomic_folder(dst) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"ours")
    (dst / "sub" / "empty").mkdir()  # even an empty folder of the user's is theirs
    with pytest.raises(DestinationError, match="found sub/empty, which is not hubtools'"):
        check_destination(dst, force=True)
    (dst / "sub" / "empty").rmdir()
    (dst / "sub" / "a.bin").write_bytes(b"OURS")  # same size, other bytes: the hash tells
    with pytest.raises(DestinationError, match="found sub/a.bin, which hubtools wrote but has changed since"):
        check_destination(dst, force=True)
    assert (dst / "sub" / "a.bin").read_bytes() == b"OURS"


@pytest.mark.parametrize("fresh", [False, True])
def test_after_a_kill_9_mid_swap_of_a_file_output_the_old_file_comes_back(tmp_path: Path, fresh: bool) -> None:
    """Killed (os._exit) with the old file set aside and the new one placed, its record not yet committed: the
    next write of that output first puts the old file back (and drops the new one), then proceeds."""
    import subprocess
    import sys

    write_file(tmp_path / "README.md", "old card\n")
    write_file(tmp_path / "other.json", "{}\n")  # another output recorded in the same folder: untouched
    script = (
        "import os, sys; from pathlib import Path; from hubtools import destination as d\n"
        "d._rename_committing = lambda src, dst: os._exit(9)\n"
        f"d.write_file(Path({str(tmp_path / 'README.md')!r}), 'new card\\n', force=True)\n"
    )
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert died.returncode == 9
    assert (tmp_path / "README.md").read_text() == "new card\n"  # placed, but its record never committed
    if fresh:
        write_file(tmp_path / "README.md", "newer card\n", force=True)
        assert (tmp_path / "README.md").read_text() == "newer card\n"
    else:
        with pytest.raises(DestinationError, match="already exists"):
            write_file(tmp_path / "README.md", "newer card\n")
        assert (tmp_path / "README.md").read_text() == "old card\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "README.md", "other.json"]
    assert (tmp_path / "other.json").read_text() == "{}\n"
    check_destination(tmp_path / "README.md", force=True)  # hubtools' own, unchanged, per the record
