"""Issue 17, item 6: the ownership rule holds for every writing command.

{convert, gguf, verify --json, card, demo} x {new destination, earlier hubtools output, earlier output plus
the user's files, the user's file at the output's name, an output whose files the user edited} x {with,
without --force} x {completes, interrupted: while writing, with the old output set aside, right after the
final rename, while the old output is removed}. After each: the user's files are byte-identical, and the
sandbox holds exactly the old output (or nothing) or exactly the new one, complete, with nothing beside it.

Interruptions are KeyboardInterrupts raised from monkeypatched steps of `hubtools.destination` (the one
module every writer goes through), so each lands at a known point of the swap.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import hubtools.destination as destination
from hubtools.errors import DestinationError, OutputInPlace
from hubtools.testing import tiny_params, write_native_checkpoint

REPO = Path(__file__).resolve().parents[1]
STATES = ("new", "earlier", "earlier+user", "user-at-name", "edited")
POINTS = ("completes", "writing", "aside", "committed", "cleanup")
USER = b"the user's own bytes\n"


@dataclass
class Writer:
    """One writing command: where its output goes (relative to the sandbox) and how to run it."""

    output: str  # the folder output, or the file output (relative to the sandbox)
    folder_output: bool
    write: Callable[[Path, bool, str], Any]  # (sandbox, force, version "old"/"new")
    edit: str  # a file of the earlier output the user edits (a glob relative to the sandbox)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny native checkpoint, its HF conversion and a verify report, made once."""
    from hubtools.converter import convert
    from hubtools.verification.run import verify

    root = tmp_path_factory.mktemp("world")
    native = write_native_checkpoint(root / "native", tiny_params(), tokenizer="v1")
    convert(native, root / "hf")
    report = verify(native, root / "hf", dtype=torch.float32, check_logits=False)
    return {"native": native, "hf": root / "hf", "report": report, "root": root}


def _convert(world: dict[str, Any]) -> Writer:
    from hubtools.converter import convert

    def write(box: Path, force: bool, version: str) -> None:
        size = "200KB" if version == "old" else "5GB"  # the earlier output has several shards, the new one
        convert(world["native"], box / "out", max_shard_size=size, force=force)

    return Writer("out", True, write, "out/config.json")


def _gguf(world: dict[str, Any]) -> Writer:
    from hubtools.gguf.export import export
    from hubtools.gguf.quant import parse_quants

    def write(box: Path, force: bool, version: str) -> None:
        split = 40_000 if version == "old" else 0  # the earlier output is a split set
        export(world["hf"], box / "gguf", quants=parse_quants("f16"), name="m", split_max_size=split, force=force)

    return Writer("gguf/m.F16.gguf", False, write, "gguf/m.F16-00001-of-*.gguf")


def _card(world: dict[str, Any]) -> Writer:
    from hubtools.card.render import build_card

    def write(box: Path, force: bool, version: str) -> None:
        spec = "mixtral-8x7b-v0.1" if version == "old" else "mistral-7b-v0.1"
        build_card(spec, box / "README.md", cards_dir=REPO / "cards", force=force)

    return Writer("README.md", False, write, "README.md")


def _verify_json(world: dict[str, Any], run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Writer:
    import hubtools.verification.run as run

    def write(box: Path, force: bool, version: str) -> None:
        if version == "old":
            destination.write_file(box / "report.json", '{"an": "earlier report"}\n')
            return
        monkeypatch.setattr(run, "verify", lambda *a, **k: world["report"])  # the run itself is tested elsewhere
        result = run_cli(
            "verify", world["native"], world["hf"], "--no-logits", "--quiet", "--json", box / "report.json",
            *(["--force"] if force else []),
        )  # fmt: skip
        _raise_cli_outcome(result)

    return Writer("report.json", False, write, "report.json")


def _demo(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Writer:
    import hubtools.pipeline.demo as demo

    def write(box: Path, force: bool, version: str) -> None:
        def run(root: Path, say: Callable[[str], None]) -> None:  # the demo's steps, in miniature
            (root / "native").mkdir()
            (root / "native" / "params.json").write_text(f'{{"version": "{version}"}}\n')
            (root / "hf").mkdir()
            destination.write_file(root / "hf" / "README.md", f"card {version}\n")  # a nested record
            (root / "verify.json").write_text(f'{{"passed": true, "version": "{version}"}}\n')
            say(f"done; everything is in {root}")

        monkeypatch.setattr(demo, "_run", run)
        demo.run_demo(box / "demo", force=force)

    return Writer("demo", True, write, "demo/verify.json")


def _raise_cli_outcome(result: Any) -> None:
    """Turn a CLI result back into what the API would have raised (the one line is checked too)."""
    if result.exit_code == 0:
        return
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if result.exit_code == 130 and "the new output is in place" in lines[0]:
        raise OutputInPlace(lines[0])
    if result.exit_code == 130:
        assert lines[0] == "error: interrupted; nothing was written", lines[0]
        raise KeyboardInterrupt
    raise DestinationError(lines[0])


def _snapshot(box: Path, skip: set[Path]) -> dict[str, bytes | None]:
    """Every file (bytes) and empty folder (None) under the sandbox but the user's files."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(box):
        here = Path(dirpath)
        if not dirnames and not filenames and here != box:
            found[here.relative_to(box).as_posix()] = None
        for name in filenames:
            if here / name not in skip:
                found[(here / name).relative_to(box).as_posix()] = (here / name).read_bytes()
    return found


def _made(world: dict[str, Any], writer: Writer, command: str, version: str) -> Path:
    """A sandbox holding the `version` output of `command` alone, made once per module."""
    box = world["root"] / f"{command}-{version}"
    if not box.exists():
        box.mkdir()
        writer.write(box, False, version)
    return box


def _prepare(box: Path, writer: Writer, state: str, earlier: Path) -> dict[Path, bytes]:
    """Set the sandbox in `state` (copying the earlier output); return the user's files."""
    if state not in ("new", "user-at-name"):
        shutil.copytree(earlier, box, symlinks=True)  # the record names files relative to their folder
    box.mkdir(exist_ok=True)
    user: dict[Path, bytes] = {}
    output = box / writer.output
    if state == "earlier+user":
        holder = output if writer.folder_output else output.parent
        user[holder / "notes.txt"] = USER
        user[holder / "results" / "run1.json"] = b'{"mine": 1}\n'
    if state == "user-at-name":
        if writer.folder_output:
            user[output / "thesis.txt"] = USER
        else:
            user[output] = USER
    if state == "edited":
        edited = next(box.glob(writer.edit))
        edited.write_bytes(edited.read_bytes() + b"\nmy edit\n")
    for path, data in user.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return user


class _Interrupt:
    """Raise KeyboardInterrupt once at `point` of the write into `box` (see the module docstring); the swaps of
    outputs nested inside the one being written (the demo's) are steps of its writing, left alone."""

    def __init__(self, point: str, monkeypatch: pytest.MonkeyPatch, box: Path) -> None:
        self.point, self.fired = point, False
        real_rename, real_replace, real_discard = os.rename, os.replace, destination.discard
        real_record = destination._record_text
        tops = {box.resolve(), (box / "gguf").resolve()}

        def ours(path: Any, level: int = 0) -> bool:  # `path` lies `level` folders below the output's folder
            return Path(os.path.abspath(path)).parents[level].resolve() in tops

        def record(*args: Any) -> str:
            if point == "writing" and self._fire():
                raise KeyboardInterrupt  # the files are written in the temporary, not yet recorded
            return real_record(*args)

        def rename(src: Any, dst: Any) -> None:
            real_rename(src, dst)
            if point == "aside" and destination.OLD in str(dst) and (ours(dst) or ours(dst, 2)) and self._fire():
                raise KeyboardInterrupt  # the old output is aside, the new one not yet in place

        def replace(src: Any, dst: Any) -> None:
            real_replace(src, dst)
            s = Path(src)
            final = s.name.endswith(destination.PARTIAL) or (
                s.name == destination.MARKER and s.parent.name.endswith(destination.PARTIAL)
            )
            if point == "committed" and final and ours(dst) and self._fire():
                raise KeyboardInterrupt  # right after the final rename

        def discard(path: Path) -> None:
            removing_old = path.name.endswith(destination.OLD) or (path / destination.OLD).is_dir()
            if point == "cleanup" and removing_old and ours(path) and self._fire():
                raise KeyboardInterrupt  # while the old output is being removed
            real_discard(path)

        monkeypatch.setattr(destination, "_record_text", record)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(destination, "discard", discard)

    def _fire(self) -> bool:
        fired, self.fired = self.fired, True
        return not fired


def _cases() -> list[Any]:
    cases = []
    for command in ("convert", "gguf", "verify-json", "card", "demo"):
        for state in STATES:
            for force in (False, True):
                proceeds = state == "new" or (force and state in ("earlier", "earlier+user"))
                for point in POINTS if proceeds else POINTS[:1]:
                    cases.append(pytest.param(command, state, force, point, id=f"{command}-{state}-{force}-{point}"))
    return cases


@pytest.mark.parametrize(("command", "state", "force", "point"), _cases())
def test_ownership_matrix(
    command: str,
    state: str,
    force: bool,
    point: str,
    world: dict[str, Any],
    run_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    writer = {
        "convert": lambda: _convert(world),
        "gguf": lambda: _gguf(world),
        "verify-json": lambda: _verify_json(world, run_cli, monkeypatch),
        "card": lambda: _card(world),
        "demo": lambda: _demo(world, monkeypatch),
    }[command]()
    new = _snapshot(_made(world, writer, command, "new"), set())  # what a complete new output looks like
    box = tmp_path / "box"
    user = _prepare(box, writer, state, _made(world, writer, command, "old"))
    old = _snapshot(box, set(user))

    interrupt = _Interrupt(point, monkeypatch, box) if point != "completes" else None
    try:
        writer.write(box, force, "new")
        outcome = "done"
    except OutputInPlace:
        outcome = "in place"
    except KeyboardInterrupt:
        outcome = "interrupted"
    except DestinationError as exc:
        outcome = "refused"
        assert len(str(exc).splitlines()) == 1
        assert str(box) in str(exc)  # the line names the file in the way
    monkeypatch.undo()

    for path, data in user.items():
        assert path.read_bytes() == data, path  # the user's files, byte-identical
    after = _snapshot(box, set(user))
    folder_with_user = writer.folder_output and state == "earlier+user"
    refused = state in ("user-at-name", "edited") or (state != "new" and not force) or folder_with_user
    if refused:
        assert outcome == "refused"
    elif interrupt is not None and interrupt.fired and point in ("writing", "aside"):
        assert outcome == "interrupted"
    elif interrupt is not None and interrupt.fired:
        assert outcome == "in place"
    else:
        assert outcome == "done"
    if outcome in ("refused", "interrupted"):
        assert after == old  # the old output (or nothing), untouched; nothing beside it
    else:
        assert after == new  # the new output, complete; nothing of the old one, nothing beside it


def test_the_cli_says_which_output_is_in_place(
    world: dict[str, Any], run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run_cli("convert", world["native"], out, "--max-shard-size", "200KB", "--quiet").exit_code == 0
    _Interrupt("committed", monkeypatch, tmp_path)
    result = run_cli("convert", world["native"], out, "--force", "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 130
    assert result.stderr.strip() == f"error: interrupted; the new output is in place at {out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert destination._not_ours_in_folder(out) is None  # complete: every file as recorded
    assert "model-00001-of-00001.safetensors" in destination.read_record(out)  # and it is the new one
    _Interrupt("aside", monkeypatch, tmp_path)
    result = run_cli("convert", world["native"], out, "--force", "--quiet", "--max-shard-size", "200KB")
    monkeypatch.undo()
    assert result.stderr.strip() == "error: interrupted; nothing was written"
    assert "model-00001-of-00001.safetensors" in destination.read_record(out)  # the previous output, complete


def test_release_work_dir_keeps_what_is_not_its_own(tmp_path: Path) -> None:
    from hubtools.pipeline.release import WORK_ENTRIES, _work_dir
    from hubtools.pipeline.work_dir import release_work_dir

    work = _work_dir(tmp_path, "me/model")
    (work / "model").mkdir()
    (work / "model" / "model-00001-of-00002.safetensors").write_bytes(b"a shard of a killed run")
    assert _work_dir(tmp_path, "me/model") == work and sorted(p.name for p in work.iterdir()) == [".hubtools-release"]
    (work / "notes.txt").write_bytes(USER)
    with pytest.raises(DestinationError, match="found notes.txt, which is not hubtools'"):
        _work_dir(tmp_path, "me/model")
    assert (work / "notes.txt").read_bytes() == USER
    release_work_dir(work, WORK_ENTRIES)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]  # only our entries went
    with pytest.raises(DestinationError, match="was not made by hubtools release"):
        _work_dir(tmp_path, "me/model")
    assert (work / "notes.txt").read_bytes() == USER
