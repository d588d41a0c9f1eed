"""The benchmarks stay runnable: each script answers --help, and the generation benches run at tiny width."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_each_benchmark_imports_and_answers_help(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


PEER = Path("/work/peer/scripts")  # transformers' conversion scripts, not vendored: absent in CI


def _run_generation_bench(script: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run a generation bench at tiny width; its --json figures. The peer's rows run only where PEER exists."""
    figures = tmp_path / "figures.json"
    peer = PEER if PEER.is_dir() else tmp_path / "no-peer"
    cmd = [sys.executable, str(BENCH / script), "--repeat", "1", "--peer", str(peer), "--tree", str(BENCH.parent)]
    cmd += ["--workdir", str(tmp_path / "work"), "--json", str(figures), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| hubtools convert (FP8 kept) |" in result.stdout
    return json.loads(figures.read_text())


def _check(figures: dict[str, Any], kinds: list[str]) -> None:
    for kind in kinds:
        convert = figures[kind]["convert"]
        ours = [name for name in convert if name.startswith("hubtools")]
        assert ours and all("error" not in convert[name] for name in ours), convert
        assert ("peer as published" in convert) is PEER.is_dir()
        assert figures[kind]["verify"]["verify bfloat16"]["result"].startswith("passed")
        assert "error" not in figures[kind]["verify"]["whole bfloat16"]


MISTRAL3_TINY = ["--shape", "tiny", "--layers", "1", "--vocab", "4096"]
MISTRAL4_TINY = ["--tiny", "--dim", "64", "--experts", "8", "--vocab", "4096"]


def _has_family(name: str) -> bool:
    from hubtools.errors import ParamsError
    from hubtools.families import family_named

    try:
        family_named(name)
    except ParamsError:
        return False
    return True


@pytest.mark.slow  # 40 s: the default suite keeps each bench's --help check; this runs the FP8 variant through
def test_mistral3_bench_runs_at_tiny_width(tmp_path: Path) -> None:
    """The FP8 variant (convert kept and dequantized, peer where present, verify vs whole), no width check."""
    _check(_run_generation_bench("mistral3.py", tmp_path, *MISTRAL3_TINY, "--variants", "fp8", "--widths"), ["fp8"])


@pytest.mark.slow  # 45 s, as above
@pytest.mark.skipif(not _has_family("mistral4"), reason="the mistral4 family is not in this tree")
def test_mistral4_bench_runs_at_tiny_width(tmp_path: Path) -> None:
    _check(_run_generation_bench("mistral4.py", tmp_path, *MISTRAL4_TINY, "--variants", "fp8", "--widths"), ["fp8"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "tiny"),
    [("mistral3.py", [*MISTRAL3_TINY, "--widths", "tiny"]), ("mistral4.py", [*MISTRAL4_TINY, "--widths", "64"])],
)
def test_generation_benches_run_whole_at_tiny_width(script: str, tiny: list[str], tmp_path: Path) -> None:
    if script == "mistral4.py" and not _has_family("mistral4"):
        pytest.skip("the mistral4 family is not in this tree")
    figures = _run_generation_bench(script, tmp_path, *tiny)
    _check(figures, ["bf16", "fp8"])
    assert all("error" not in run for runs in figures["widths"].values() for run in runs.values())
