"""Benchmark: hubtools' GPTQ / AWQ against llm-compressor's on the same tiny model, the same weights and the same
calibration token rows; quality measured by one independent code path for both (bench/quant_quality.py), with
plain round-to-nearest of the same weights as the baseline; wall time and peak RSS of each run (own process).

The model: a random Mixtral (or `--dense` Mistral) written by hubtools.testing with the real v1 tokenizer and
outlier channels (2 channels of every norm scaled x25, as tests/test_quantize.py builds them), converted to HF by
hubtools. Calibration: the package's default set (hubtools.tokenization.calibration) as `--samples` rows of at
most `--seq-len` tokens; quality on the held-out set. llm-compressor runs in its own venv (it pins transformers
5.15-5.17); hubtools from `--hubtools-tree` (a tree with hubtools/quantization, e.g. the `quant` worktree).
The issue's criterion: hubtools' GPTQ mean KL within 5% of llm-compressor's (or lower).

    python bench/quantize_peer.py [--dense] [--dim 256] [--layers 2] [--methods gptq awq] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from convert import run_measured  # noqa: E402  (bench/convert.py, same folder)

BENCH = Path(__file__).resolve().parent
LLMC_PYTHON = Path("/work/peer/llmc-venv/bin/python")
HUBTOOLS_TREE = BENCH.parent  # this tree
TOOLS = ["llmc", "llmc-default", "hubtools", "hubtools-duo"]


def build_model(work: Path, *, moe: bool, dim: int, layers: int, experts: int, seed: int = 0) -> Path:
    """A native random checkpoint with outlier channels (`add_outlier_channels`, as tests/test_quantize.py builds
    them), converted to HF; returns the HF folder."""
    import hubtools
    from hubtools.testing import add_outlier_channels, tiny_params, write_native_checkpoint

    params = tiny_params(
        moe=moe, n_layers=layers, dim=dim, n_heads=dim // 32, n_kv_heads=max(1, dim // 128), head_dim=32,
        hidden_dim=2 * dim if moe else 3 * dim, num_experts=experts, top_k=2,
    )  # fmt: skip
    native, hf = work / "native", work / "hf"
    shutil.rmtree(work, ignore_errors=True)
    add_outlier_channels(write_native_checkpoint(native, params, seed=seed), params)
    hubtools.convert(native, hf)
    return hf


def token_rows(hf: Path, samples: int, seq_len: int, heldout: int) -> tuple[list[list[int]], list[list[int]]]:
    from hubtools.tokenization.calibration import SampleEncoder, builtin_calibration, builtin_heldout, calibration_rows

    encoder = SampleEncoder.for_folder(hf)
    return (
        calibration_rows(builtin_calibration(), encoder, count=samples, seq_len=seq_len),
        calibration_rows(builtin_heldout(), encoder, count=heldout, seq_len=256),
    )


def run_tool(
    tool: str, hf: Path, out: Path, rows: Path, method: str, bits: int, group: int, tree: Path
) -> dict[str, Any]:
    """One worker run (bench/quantize_worker.py) in its own process: seconds and peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    peer = tool.startswith("llmc")  # llmc, llmc-default; hubtools, hubtools-duo
    python = str(LLMC_PYTHON) if peer else sys.executable
    # one thread: on a shared machine two threads spin waiting for each other, and the CPU time means work done
    env = dict(os.environ, PYTHONPATH="" if peer else str(tree), OMP_NUM_THREADS="1")
    cmd = ["nice", python, str(BENCH / "quantize_worker.py"), "llmc" if peer else "hubtools", str(hf), str(out)]
    cmd += ["--rows", str(rows), "--method", method, "--bits", str(bits), "--group-size", str(group)]
    if tool == "llmc-default":
        cmd += ["--awq-mappings", "default"]
    if tool == "hubtools-duo":
        cmd += ["--awq-duo"]
    return run_measured(cmd, env=env)


def hubtools_verify(hf: Path, out: Path, tree: Path) -> dict[str, Any] | None:
    """`hubtools verify HF OUT --json` from the tree, when that tree's verify reads quantized folders."""
    report = out.parent / f"{out.name}.verify.json"
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "hubtools.cli", "verify", str(hf), str(out), "--json", str(report), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if not report.is_file():
        return {"error": (done.stderr.strip().splitlines() or ["no report"])[-1]}
    return json.loads(report.read_text()).get("quality")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import quant_quality as qq

    work = args.workdir
    hf = build_model(work / "model", moe=not args.dense, dim=args.dim, layers=args.layers, experts=args.experts)
    rows, held = token_rows(hf, args.samples, args.seq_len, args.heldout_rows)
    (work / "rows.json").write_text(json.dumps(rows))
    reference = qq.logits(hf, None, held, work / "dense")
    result: dict[str, Any] = {
        "model": {"moe": not args.dense, "dim": args.dim, "layers": args.layers, "experts": args.experts},
        "calibration": {"rows": len(rows), "tokens": sum(map(len, rows))},
        "heldout": {"rows": len(held), "tokens": sum(map(len, held))},
        "runs": {},
    }
    for method in args.methods:
        for tool in args.tools:
            if (tool == "llmc-default" and (method != "awq" or args.dense)) or (
                tool == "hubtools-duo" and method != "awq"
            ):
                continue  # llm-compressor's own mappings differ from the explicit ones only for AWQ of an MoE
            out = work / f"{tool}-{method}"
            timing = run_tool(tool, hf, out, work / "rows.json", method, args.bits, args.group_size, args.hubtools_tree)
            dense, quantized = qq.dequantize(out, hf)
            quality = qq.compare(reference, qq.logits(hf, dense, held, work / "dense"), held)
            entry = {**quality, **timing, "quantized_tensors": len(quantized)}
            if tool.startswith("hubtools"):
                entry["hubtools_verify"] = hubtools_verify(hf, out, args.hubtools_tree)
            result["runs"][f"{tool} {method}"] = entry
            grid = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
            symmetric = next(iter(grid.values()))["weights"]["symmetric"]  # RTN on the grid the tool wrote
            name = f"rtn {method} ({'symmetric' if symmetric else 'asymmetric'})"
            if name not in result["runs"]:
                baseline = qq.rtn(hf, quantized, args.bits, args.group_size, symmetric)
                result["runs"][name] = qq.compare(reference, qq.logits(hf, baseline, held, work / "dense"), held)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        "| run | mean KL | top-1 | perplexity (original) | wall s | CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        timing = (
            f"{r['seconds']:.0f} | {r.get('cpu_seconds', float('nan')):.0f} | {r['peak_rss'] / 2**20:,.0f}"
            if "seconds" in r
            else "- | - | -"
        )
        lines.append(
            f"| {name} | {r['mean_kl']:.4f} | {r['top1']:.1%} | {r['perplexity']:.1f} ({r['perplexity_original']:.1f})"
            f" | {timing} |"
        )
    lines.append("")
    for method in ("gptq", "awq"):
        ours = result["runs"].get(f"hubtools {method}")  # the default options
        theirs = [r["mean_kl"] for n, r in result["runs"].items() if n.startswith("llmc") and n.endswith(method)]
        if ours and theirs:
            ratio = ours["mean_kl"] / min(theirs)
            verdict = "meets" if ratio <= 1.05 else "misses"
            lines.append(
                f"{method.upper()} mean KL, hubtools / llm-compressor's best: {ratio:.3f} ({verdict} the 1.05 bar)"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", action="store_true", help="a Mistral instead of a Mixtral")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["gptq", "awq"], choices=["gptq", "awq"])
    parser.add_argument(
        "--tools", nargs="+", default=TOOLS, choices=TOOLS,
        help="llmc: llm-compressor, AWQ with the router among the balance layers; llmc-default: its own mappings; "
        "hubtools-duo: hubtools' AWQ also trying duo scales",
    )  # fmt: skip
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--heldout-rows", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path(".bench/quantize_peer"))
    parser.add_argument("--hubtools-tree", type=Path, default=HUBTOOLS_TREE)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    result = measure(args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
