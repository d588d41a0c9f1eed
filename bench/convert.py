"""Benchmark: hubtools convert vs `cp` of the same bytes vs the load-everything approach, side by side.

Builds Mixtral-shaped native checkpoints at real widths (dim 4096, hidden 14336, 8 experts, 32 heads,
8 kv heads, vocab 32000, bfloat16) with 1 and 2 layers (3.4 and 6.3 GB), then times each method in
its own child process (wall time including a final sync, so every method pays for its writes) and
records the child's peak RSS (wait4 ru_maxrss) and peak anonymous memory (RssAnon, sampled).

    python bench/convert.py [--layers 1 2] [--layout safetensors] [--workdir .bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hubtools.destination import check_destination, write_file
from hubtools.errors import DestinationError

BUILD = r"""
import sys, torch
from pathlib import Path
from hubtools.testing import tiny_params, write_native_checkpoint
layers, layout, dst = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
params = tiny_params(moe=True, n_layers=layers, dim=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                     hidden_dim=14336, num_experts=8, top_k=2, vocab_size=32000)
write_native_checkpoint(dst, params, layout=layout, dtype=torch.bfloat16, tokenizer="v1")
"""

NAIVE = r"""
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from hubtools.model.names import NameTable
from hubtools.families import load_params
from hubtools.model.transforms import to_hf
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
params = load_params(src / "params.json")
state = {}
for f in sorted(src.glob("consolidated*.safetensors")):  # the whole model at once, as one-off scripts do
    state.update({k: v.clone() for k, v in load_file(f).items()})
for f in sorted(src.glob("consolidated.*.pth")):
    state.update(torch.load(f, weights_only=True))
table = NameTable(params)
out = {s.hf: to_hf(s.transform, state.pop(s.native), params).contiguous() for s in table.specs}
dst.mkdir()
shard, size, shards = {}, 0, []
for name, t in out.items():
    if shard and size + t.numel() * t.element_size() > 5 * 10**9:
        shards.append(shard); shard, size = {}, 0
    shard[name] = t; size += t.numel() * t.element_size()
shards.append(shard)
for i, s in enumerate(shards, 1):
    save_file(s, dst / f"model-{i:05d}-of-{len(shards):05d}.safetensors", metadata={"format": "pt"})
"""


def proc_status(pid: int, field: str) -> int:
    """A `/proc/PID/status` memory field in bytes (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_anon(pid: int) -> int:
    return proc_status(pid, "RssAnon")


def run_measured(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True
) -> dict[str, Any]:
    """Run a command; wall time (incl. sync), CPU time, peak RSS and sampled peak anonymous memory.

    Peak RSS is the child's own high-water mark (VmHWM, sampled until it exits), not wait4's ru_maxrss:
    that one also counts the parent's high-water mark, inherited through the fork before exec.
    check=False: a failing command is a measurement too; its exit code is "rc" and its last stderr line "error".
    """
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=cwd)
        peak, hwm = [0], [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_anon(proc.pid))
                hwm[0] = max(hwm[0], proc_status(proc.pid, "VmHWM"))
                time.sleep(0.02)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        thread.join()
        os.sync()
        seconds, rc = time.perf_counter() - started, os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        lines = [line for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
    if rc != 0 and check:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n" + "\n".join(lines[-20:]))
    measured: dict[str, Any] = {"seconds": seconds, "peak_rss": hwm[0] or usage.ru_maxrss * 1024, "peak_anon": peak[0]}
    measured["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # the child's own: comparable on a loaded machine
    if rc != 0:
        measured.update(rc=rc, error=lines[-1] if lines else f"exit code {rc}")
    return measured


def measure(src: Path, work: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Each method `repeat` times, interleaved, from a warm source and a clean disk.

    Returns the median run per method, plus its best time (disk write-back on a shared VM only adds noise,
    so the minimum is the most repeatable figure) and every time.
    """
    out = work / "out"
    methods = {
        "cp": ["cp", "-r", str(src), str(out)],
        "hubtools": [sys.executable, "-m", "hubtools.cli", "convert", str(src), str(out), "--quiet"],
        "load-everything": [sys.executable, "-c", NAIVE, str(src), str(out)],
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, cmd in methods.items():
            subprocess.run(["cat", *map(str, src.glob("consolidated*"))], stdout=subprocess.DEVNULL, check=True)
            os.sync()  # no write-back of an earlier step may overlap this one
            runs[name].append(run_measured(cmd))
            shutil.rmtree(out)
            os.sync()
    summary = {}
    for name, r in runs.items():
        ordered = sorted(r, key=lambda x: x["seconds"])
        summary[name] = {
            **ordered[len(r) // 2],
            "best": ordered[0]["seconds"],
            "all": [round(x["seconds"], 2) for x in r],
        }
    return summary


def table(rows: dict[int, dict[str, dict[str, float]]], sizes: dict[int, int]) -> str:
    """Per size: wall time, ratio to cp, peak memory; then the marginal cost of the extra bytes."""
    lines = [
        "| layers | size | method | median s | x cp | best s | x cp | peak RSS | peak anon | all runs (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layers, res in rows.items():
        cp, cp_best = res["cp"]["seconds"], res["cp"]["best"]
        for name, r in res.items():
            memory = f"{r['peak_rss'] / 2**20:,.0f} MiB | {r['peak_anon'] / 2**20:,.0f} MiB"
            lines.append(
                f"| {layers} | {sizes[layers] / 1e9:.1f} GB | {name} | {r['seconds']:.1f} | "
                f"{r['seconds'] / cp:.2f} | {r['best']:.1f} | {r['best'] / cp_best:.2f} | {memory} | "
                f"{' '.join(map(str, r['all']))} |"
            )
    if len(rows) > 1:
        (a, ra), (b, rb) = list(rows.items())[0], list(rows.items())[-1]
        extra = (sizes[b] - sizes[a]) / 1e9
        title = f"Marginal cost of the extra {extra:.1f} GB ({a} -> {b} layers, best runs; start-up cancels out):"
        lines += ["", title, "", "| method | s per extra GB | x cp |", "|---|---|---|"]
        cp_rate = (rb["cp"]["best"] - ra["cp"]["best"]) / extra
        for name in ra:
            rate = (rb[name]["best"] - ra[name]["best"]) / extra
            lines.append(f"| {name} | {rate:.2f} | {rate / cp_rate:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--layout", default="safetensors", choices=["safetensors", "pth", "pth-split"])
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    parser.add_argument("--keep", action="store_true", help="keep the multi-GB checkpoints afterwards")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--force", action="store_true", help="replace a --json file hubtools wrote earlier")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (the median is reported)")
    args = parser.parse_args()
    try:
        if args.json:
            check_destination(args.json, force=args.force)  # before the run: hubtools' rule for every output
    except DestinationError as exc:
        sys.exit(f"error: {exc}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows, sizes = {}, {}
    for layers in args.layers:
        src = args.workdir / f"mixtral-{layers}l-{args.layout}"
        if not (src / "params.json").exists():
            print(f"building {src} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-c", BUILD, str(layers), args.layout, str(src)], check=True)
        sizes[layers] = sum(p.stat().st_size for p in src.glob("consolidated*"))
        rows[layers] = measure(src, args.workdir, args.repeat)
        if not args.keep:
            shutil.rmtree(src)
    print(table(rows, sizes))
    if args.json:
        write_file(args.json, json.dumps({"sizes": sizes, "results": rows}, indent=2), force=args.force)


if __name__ == "__main__":
    main()
