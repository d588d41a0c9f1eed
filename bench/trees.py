"""Benchmark: the same `hubtools convert` and `hubtools verify` runs on two source trees, interleaved.

For refactors that must not move a figure: check out the earlier commit beside this one
(`git worktree add /tmp/before COMMIT`), then compare. Each run is a fresh `hubtools` process importing
the tree given (PYTHONPATH); the runs alternate (before, after, after, before, ...), so load on the machine
falls on both alike. It reports the median of each and the ratio after / before, and checks that both trees
write byte-identical HF folders and that both verify reports agree in every field but the version.

    python bench/trees.py --before /tmp/before --after . [--repeat 5] [--workdir .bench/trees]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUILD = r"""
import sys, torch
from pathlib import Path
from hubtools.testing import tiny_params, write_native_checkpoint
params = tiny_params(n_layers=2, dim=1024, hidden_dim=3584, n_heads=16, n_kv_heads=4, num_experts=8, top_k=2,
                     vocab_size=32000)
write_native_checkpoint(Path(sys.argv[1]), params, tokenizer="v1", dtype=torch.bfloat16)
"""


def _env(tree: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _timed(tree: Path, *args: str) -> float:
    started = time.perf_counter()
    hubtools = Path(sys.executable).with_name("hubtools")  # the console script; the tree comes from PYTHONPATH
    subprocess.run([str(hubtools), *args], env=_env(tree), check=True, capture_output=True)
    return time.perf_counter() - started


def _flat(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}/{key}").items()}
    if isinstance(data, list):
        return {k: v for i, value in enumerate(data) for k, v in _flat(value, f"{prefix}[{i}]").items()}
    return {prefix: data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the earlier source tree")
    parser.add_argument("--after", type=Path, default=Path("."), help="the tree to compare (default: this one)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(".bench/trees"))
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    native = work / "native"
    subprocess.run([sys.executable, "-c", BUILD, str(native)], env=_env(trees["after"]), check=True)
    times: dict[str, list[float]] = {f"{verb} {side}": [] for verb in ("convert", "verify") for side in trees}
    for i in range(args.repeat):
        for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
            out = work / f"hf-{side}"
            shutil.rmtree(out, ignore_errors=True)
            times[f"convert {side}"].append(_timed(trees[side], "convert", str(native), str(out), "--quiet"))
            report = work / f"report-{side}-{i}.json"
            times[f"verify {side}"].append(_timed(trees[side], "verify", str(native), str(out), "--json", str(report)))
    same_files = all(
        (work / "hf-before" / p.name).read_bytes() == p.read_bytes()
        for p in (work / "hf-after").iterdir()
        if p.is_file()
    )
    before, after = (_flat(json.loads((work / f"report-{s}-0.json").read_text())) for s in ("before", "after"))
    paths = ("/hf", "/native", "/hf_dir")  # where each tree's own output folder is named
    keys = [k for k in set(before) | set(after) if "version" not in k and not k.endswith(paths)]
    differing = sorted(k for k in keys if before.get(k) != after.get(k))
    median = {k: round(statistics.median(v), 3) for k, v in times.items()}
    size = sum(p.stat().st_size for p in native.iterdir())
    print(f"model: {size / 1e6:.0f} MB native, {args.repeat} runs each, interleaved")
    print("| command | before s (median) | after s (median) | after / before |")
    print("|---|---|---|---|")
    for verb in ("convert", "verify"):
        b, a = median[f"{verb} before"], median[f"{verb} after"]
        print(f"| {verb} | {b} | {a} | {a / b:.2f}x |")
    print(f"HF folders byte-identical: {same_files}; verify report fields that differ: {differing or 'none'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
