"""Benchmark: wall time and peak memory of quantizing with hubtools vs llm-compressor, side by side in one run, at
two widths and two depths (memory should stay flat as depth grows: hubtools holds one decoder layer plus the
calibration activations; llm-compressor loads the whole model).

Random Mixtrals (bench/quantize_peer.py's `build_model`: real v1 tokenizer, outlier channels, bf16), the same
calibration rows for both tools (the package's default set), GPTQ 4-bit, each run in its own process under `nice`
(bench/convert.py's `run_measured`: peak RSS is the child's own high-water mark, VmHWM; wall time includes
imports, loading and writing). The table gives hubtools' time and peak as ratios of llm-compressor's, then what
going from the fewest to the most layers added to each tool's peak beside what it added to the weights.

    python bench/quantize.py [--dims 256 512] [--layers 2 8] [--samples 8] [--seq-len 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from quantize_peer import HUBTOOLS_TREE, build_model, run_tool, token_rows  # noqa: E402  (same folder)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for dim in args.dims:
        for layers in args.layers:
            work = args.workdir / f"d{dim}-l{layers}"
            hf = build_model(work / "model", moe=True, dim=dim, layers=layers, experts=args.experts)
            rows, _ = token_rows(hf, args.samples, args.seq_len, 1)
            (work / "rows.json").write_text(json.dumps(rows))
            for tool in args.tools:
                out = work / f"{tool}-{args.method}"
                timing = run_tool(
                    tool, hf, out, work / "rows.json", args.method, 4, args.group_size, args.hubtools_tree
                )
                results.append({"dim": dim, "layers": layers, "size": _size(hf), "tool": tool, **timing})
                print(json.dumps(results[-1]), flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    """One row per run, hubtools' CPU time and peak as ratios of llm-compressor's (CPU time: wall time on a shared
    machine measures the other jobs too); then what depth added to each tool's peak."""
    peer = {(r["dim"], r["layers"]): r for r in results if r["tool"] == "llmc"}
    lines = [
        "| dim | layers | bf16 size | tool | wall s | CPU s | x llm-compressor | peak RSS MiB | x llm-compressor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        other = peer.get((r["dim"], r["layers"])) if r["tool"] != "llmc" else None

        def ratio(key: str, r: dict[str, Any] = r, other: dict[str, Any] | None = other) -> str:
            return f"{r[key] / other[key]:.2f}" if other else "-"

        lines.append(
            f"| {r['dim']} | {r['layers']} | {r['size'] / 2**20:,.0f} MiB | {r['tool']} | {r['seconds']:.0f} | "
            f"{r['cpu_seconds']:.0f} | {ratio('cpu_seconds')} | {r['peak_rss'] / 2**20:,.0f} | {ratio('peak_rss')} |"
        )
    lines += ["", "| dim | tool | layers | bf16 size added | peak RSS added |", "|---|---|---|---|---|"]
    for dim in sorted({r["dim"] for r in results}):
        for tool in sorted({r["tool"] for r in results}):
            runs = sorted((r for r in results if r["dim"] == dim and r["tool"] == tool), key=lambda r: r["layers"])
            if len(runs) > 1:
                a, b = runs[0], runs[-1]
                lines.append(
                    f"| {dim} | {tool} | {a['layers']} -> {b['layers']} | {(b['size'] - a['size']) / 2**20:,.0f} MiB | "
                    f"{(b['peak_rss'] - a['peak_rss']) / 2**20:+,.0f} MiB |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--layers", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--method", choices=["gptq", "awq"], default="gptq")
    parser.add_argument("--tools", nargs="+", default=["llmc", "hubtools"], choices=["llmc", "hubtools"])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path(".bench/quantize"))
    parser.add_argument("--hubtools-tree", type=Path, default=HUBTOOLS_TREE)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    results = measure(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
