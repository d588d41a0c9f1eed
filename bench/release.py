"""Benchmark: `hubtools release` (one pass) vs convert + verify + card + publish in sequence, side by side.

Uses the Mixtral-shaped native checkpoints of bench/convert.py (1 layer = 3.4 GB, 2 layers = 6.3 GB,
bfloat16), a local Hub (tests/fakehub/, classic LFS) and a local range-capable HTTP server
(tests/rangeserver.py), both started here on 127.0.0.1. Each method runs in child processes; recorded:
wall time, peak disk of the work dir (sampled every 50 ms: the release's temporary folder, or the
converted folder plus the verify report for the sequence), and the children's peak RSS (wait4). After
each release, the files that landed are compared byte for byte with what the sequence published.

    python bench/release.py [--layers 1 2] [--shard 300MB] [--workdir .bench] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.fakehub import FakeHub  # noqa: E402
from tests.rangeserver import RangeServer  # noqa: E402

TOKEN = "hf_BENCHtokenFORtheLOCALhub0123456789"
CARD = ROOT / "cards" / "mixtral-8x7b-v0.1.md"


def bench_card(src: Path, workdir: Path) -> Path:
    """The 8x7B card source with the bench model's parameter counts (a card must match its model)."""
    import math
    import re

    from hubtools.checkpoint.reader import open_checkpoint

    with open_checkpoint(src) as ckpt:
        sizes = {name: math.prod(t.shape) for name, t in ckpt.tensors.items()}
        p = ckpt.params
    total = sum(sizes.values())
    experts = sum(n for name, n in sizes.items() if ".experts." in name)
    active = total - experts + experts * p.num_experts_per_tok // max(p.num_experts, 1)
    text = re.sub(r"(?m)^parameters: \d+", f"parameters: {total}", CARD.read_text())
    text = re.sub(r"(?m)^active_parameters: \d+", f"active_parameters: {active}", text)
    card = workdir / f"{src.name}.card.md"
    card.write_text(text)
    return card


def du(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # deleted while we looked
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


class DiskSampler:
    """Peak size of a folder, sampled on a thread."""

    def __init__(self, path: Path) -> None:
        self.path, self.peak, self._done = path, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, du(self.path))
            time.sleep(0.05)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def run(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run `python -m hubtools.cli ARGS`; (wall seconds, the child's own peak RSS bytes: see run_measured)."""
    from convert import run_measured  # bench/convert.py

    cmd = [sys.executable, *os.environ.get("BENCH_PY_ARGS", "").split(), "-m", "hubtools.cli", *args]
    measured = run_measured(cmd, env=env, cwd=ROOT)
    return measured["seconds"], int(measured["peak_rss"])


def sequence(src: Path, work: Path, repo: str, shard: str, env: dict[str, str], card: Path) -> dict[str, Any]:
    out, report = work / "out", work / "verify.json"
    steps = [
        ["convert", str(src), str(out), "--max-shard-size", shard, "--quiet"],
        ["verify", str(src), str(out), "--json", str(report), "--quiet"],
        ["card", str(card), "-o", str(out / "README.md"), "--model", str(out), "--report", str(report)],
        ["publish", str(out), repo, "--quiet"],
    ]
    wall, rss, parts = 0.0, 0, {}
    with DiskSampler(work) as disk:
        for step in steps:
            seconds, peak = run(step, env)
            wall, rss, parts[step[0]] = wall + seconds, max(rss, peak), round(seconds, 2)
    return {"wall_s": round(wall, 2), "steps_s": parts, "peak_disk": disk.peak, "peak_rss": rss}


def one_pass(src: str, work: Path, repo: str, shard: str, env: dict[str, str], card: Path) -> dict[str, Any]:
    args = ["release", src, repo, "--max-shard-size", shard, "--work-dir", str(work), "--card", str(card), "--quiet"]
    with DiskSampler(work) as disk:
        seconds, rss = run(args, env)
    return {"wall_s": round(seconds, 2), "peak_disk": disk.peak, "peak_rss": rss}


def landed(hub: FakeHub, repo: str) -> dict[str, bytes]:
    return {k: v for k, v in hub.files(repo).items() if k != ".gitattributes"}


def bench(layers: int, shard: str, workdir: Path, keep: bool) -> list[dict[str, Any]]:
    convert_bench = __import__("convert")  # bench/convert.py builds the checkpoints
    src = workdir / f"mixtral-{layers}l-safetensors"  # the name bench/convert.py and bench/verify.py use
    if not (src / "params.json").exists():
        subprocess.run([sys.executable, "-c", convert_bench.BUILD, str(layers), "safetensors", str(src)], check=True)
    hub = FakeHub(workdir / "hub", token=TOKEN).start()
    server = RangeServer(workdir).start()
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    rows = []
    try:
        work = workdir / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        card = bench_card(src, workdir)
        rows.append({"method": "convert+verify+card+publish", **sequence(src, work, "bench/seq", shard, env, card)})
        expected = landed(hub, "bench/seq")
        shutil.rmtree(work)
        for label, source, repo in (
            ("release (folder)", str(src), "bench/folder"),
            ("release (http)", f"{server.url}{src.name}/", "bench/http"),
        ):
            work.mkdir()
            row = {"method": label, **one_pass(source, work, repo, shard, env, card)}
            row["identical"] = landed(hub, repo) == expected
            rows.append(row)
            shutil.rmtree(work)
    finally:
        server.stop()
        hub.stop()
        shutil.rmtree(workdir / "hub", ignore_errors=True)
        if not keep:
            shutil.rmtree(src, ignore_errors=True)
    size = sum(p.stat().st_size for p in src.glob("*")) if src.exists() else 0
    for row in rows:
        row.update(layers=layers, shard=shard, model_bytes=size)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard", default="300MB")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench")
    parser.add_argument("--keep", action="store_true", help="Keep the native checkpoints for the next run.")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = [row for layers in args.layers for row in bench(layers, args.shard, args.workdir.resolve(), args.keep)]
    print(f"{'layers':>6}  {'method':<28} {'wall s':>8} {'disk peak':>12} {'RSS peak':>10}  same bytes")
    for r in rows:
        same = "" if "identical" not in r else ("yes" if r["identical"] else "NO")
        print(
            f"{r['layers']:>6}  {r['method']:<28} {r['wall_s']:>8.1f} {r['peak_disk'] / 1e9:>10.2f}GB "
            f"{r['peak_rss'] / 2**30:>8.2f}GiB  {same}"
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
