"""Benchmark: `hubtools verify` (layer by layer) vs loading both models whole, side by side.

Uses the Mixtral-shaped checkpoints of bench/convert.py (dim 4096, hidden 14336, 8 experts, 32 heads,
8 kv heads, head_dim 128, vocab 32000, bfloat16; 1 layer = 3.4 GB, 2 layers = 6.3 GB), converts each to
HF with hubtools, then runs every method in its own child process and records wall time, peak RSS
(wait4 ru_maxrss) and sampled peak anonymous memory (RssAnon), each right after reading both checkpoints
once (untimed), so every method starts with them warm in the page cache:

- verify bf16 / verify f32: `hubtools verify NATIVE HF --dtype ...` (all four checks);
- read both: the weight files of both checkpoints read once into a reused buffer (the I/O floor);
- whole bf16 / whole f32: the whole native state dict + the reference forward, then
  `AutoModelForCausalLM.from_pretrained` + its forward, on the same prompts (what a one-off script does).
  A whole-model run whose estimated need exceeds 60% of available memory is not started.

    python bench/verify.py [--layers 1 2] [--repeat 3] [--cold] [--workdir .bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from hubtools.model.family import ModelParams
from hubtools.testing import tiny_params

VERIFY = r"""
import sys
from hubtools.cli import main
sys.argv = ["hubtools", "verify", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    sys.exit(0 if exc.code in (0, 1, None) else exc.code)  # 1 = a check failed: still a measurement
"""

WHOLE = r"""
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
from hubtools.verification import reference
from hubtools.verification.hf_forward import whole_model_logits
from hubtools.families import load_params
from hubtools.model.params import default_rope_theta
from hubtools.verification.logits import logit_metrics, prompt_tokens
native, hf, dtype = Path(sys.argv[1]), Path(sys.argv[2]), getattr(torch, sys.argv[3])
params = load_params(native / "params.json")
state = {}
for f in sorted(native.glob("consolidated*.safetensors")):
    state.update({k: v.to(dtype) for k, v in load_file(f).items()})      # the whole native model in RAM
prompts = prompt_tokens(native / "tokenizer.model", params.vocab_size)
with torch.no_grad():
    ref = reference.forward(prompts.tokens, state.__getitem__, params, rope_theta=default_rope_theta(params))
    out = whole_model_logits(hf, prompts.tokens, dtype, attention=None, experts=None)  # the whole HF model too
print(logit_metrics(ref.float(), out.float(), prompts.valid))
"""


READ = r"""
import os, sys
buf = bytearray(64 << 20)
for folder in sys.argv[1:]:
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with open(os.path.join(folder, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
"""


def bench_params(layers: int) -> ModelParams:
    """Mixtral 8x7B widths with `layers` layers (the shapes of bench/convert.py)."""
    return tiny_params(
        moe=True,
        n_layers=layers,
        dim=4096,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        hidden_dim=14336,
        num_experts=8,
        top_k=2,
        vocab_size=32000,
    )


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def prepare(layers: int, workdir: Path, shared: ModuleType) -> tuple[Path, Path, list[Path]]:
    """The native checkpoint (bench/convert.py's, reused if kept) and its HF conversion; what we built."""
    from hubtools.converter import convert
    from hubtools.testing import write_native_checkpoint

    built = []
    native = workdir / f"mixtral-{layers}l-safetensors"
    if not (native / "params.json").exists():
        native = workdir / f"verify-mixtral-{layers}l"
        if not (native / "params.json").exists():
            print(f"building {native} ...", file=sys.stderr)
            if hasattr(shared, "BUILD"):  # bench/convert.py's builder, run as its own child process
                subprocess.run(
                    [sys.executable, "-c", shared.BUILD, str(layers), "safetensors", str(native)], check=True
                )
            else:
                write_native_checkpoint(native, bench_params(layers), dtype=torch.bfloat16, tokenizer="v1")
        built.append(native)
    hf = workdir / f"verify-mixtral-{layers}l-hf"
    if not (hf / "config.json").exists():
        print(f"converting to {hf} ...", file=sys.stderr)
        convert(native, hf, force=True)
    built.append(hf)
    return native, hf, built


def drop_caches() -> None:
    """Empty the page cache (root only), so the next run reads both checkpoints from disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def measure(
    native: Path, hf: Path, workdir: Path, shared: ModuleType, repeat: int, *, cold: bool = False
) -> dict[str, dict[str, Any]]:
    """Each method `repeat` times, interleaved, each run right after reading both checkpoints once (untimed),
    or (`cold`) after emptying the page cache: the median run per method, its best time and every time (a
    shared VM's page-fault and cache noise only adds time, so the best is the most repeatable figure)."""
    size = sum(p.stat().st_size for p in native.glob("consolidated*"))
    read = [sys.executable, "-c", READ, str(native), str(hf)]
    methods: dict[str, list[str] | str] = {"read both": read}
    for dtype in ("bfloat16", "float32"):
        report = workdir / f"report-{dtype}.json"
        methods[f"verify {dtype}"] = [
            *(sys.executable, "-c", VERIFY, str(native), str(hf)),
            *("--dtype", dtype, "--quiet", "--json", str(report)),
        ]
        need = 2 * size * (2 if dtype == "float32" else 1)
        fits = need <= 0.6 * mem_available()
        methods[f"whole {dtype}"] = (
            [sys.executable, "-c", WHOLE, str(native), str(hf), dtype] if fits else f"needs ~{need / 2**30:.1f} GiB"
        )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, cmd in methods.items():
            if isinstance(cmd, str):
                continue
            drop_caches() if cold else subprocess.run(read, check=True)
            run = dict(shared.run_measured(cmd))
            if name.startswith("verify"):
                run.update(_summary(json.loads(Path(cmd[-1]).read_text())))
            runs[name].append(run)
    results: dict[str, dict[str, Any]] = {}
    for name, cmd in methods.items():
        if isinstance(cmd, str):
            results[name] = {"skipped": cmd}
            continue
        ordered = sorted(runs[name], key=lambda r: r["seconds"])
        results[name] = {
            **ordered[len(ordered) // 2],
            "best": ordered[0]["seconds"],
            "all": [round(r["seconds"], 1) for r in runs[name]],
        }
    return results


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    logits = report["checks"]["logits"]
    return {
        "passed": report["passed"],
        "max_abs_dlogit": logits.get("max_abs_dlogit"),
        "top1": logits.get("top1_agreement"),
        "top1_near_ties": logits.get("top1_near_tie_agreement"),
        "mean_kl": logits.get("mean_kl"),
    }


def table(rows: dict[int, dict[str, dict[str, Any]]], sizes: dict[int, int]) -> str:
    lines = [
        "| layers | size | method | median s | best s | all runs (s) | peak RSS | peak anon | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for layers, res in rows.items():
        for name, r in res.items():
            head = f"| {layers} | {sizes[layers] / 1e9:.1f} GB | {name} |"
            if "skipped" in r:
                lines.append(f"{head} - | - | - | - | - | not run: {r['skipped']} |")
                continue
            verdict = (
                ""
                if "passed" not in r
                else (
                    f"{'passed' if r['passed'] else 'FAILED'}, max|dlogit| {r['max_abs_dlogit']:.2g}, "
                    f"KL {r['mean_kl']:.1g}, top-1 {100 * r['top1']:.0f}% "
                    f"({100 * r['top1_near_ties']:.0f}% counting near-ties)"
                )
            )
            lines.append(
                f"{head} {r['seconds']:.1f} | {r['best']:.1f} | {' '.join(map(str, r['all']))} | "
                f"{r['peak_rss'] / 2**20:,.0f} MiB | {r['peak_anon'] / 2**20:,.0f} MiB | {verdict} |"
            )
    return "\n".join(lines)


def marginal(rows: dict[int, dict[str, dict[str, Any]]], sizes: dict[int, int]) -> str:
    """Seconds per extra GB of model between the smallest and the largest depth, per method, and each
    one's ratio to reading that GB from both sides (the issue's target: verify within 2x)."""
    lo, hi = min(rows), max(rows)
    if lo == hi:
        return ""
    gb = (sizes[hi] - sizes[lo]) / 1e9

    def per_gb(name: str, key: str) -> float | None:
        a, b = rows[lo].get(name, {}), rows[hi].get(name, {})
        return (b[key] - a[key]) / gb if key in a and key in b else None

    lines = [f"extra cost per GB of model ({lo} -> {hi} layers, +{gb:.1f} GB), median (best):"]
    for name in rows[lo]:
        costs = [per_gb(name, "seconds"), per_gb(name, "best")]
        reads = [per_gb("read both", "seconds"), per_gb("read both", "best")]
        if costs[0] is None or costs[1] is None:
            continue
        line = f"  {name}: {costs[0]:.2f} ({costs[1]:.2f}) s/GB"
        if name != "read both" and all(reads):
            line += f" = {costs[0] / reads[0]:.1f}x ({costs[1] / reads[1]:.1f}x) reading both sides"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    parser.add_argument("--keep", action="store_true", help="keep the multi-GB checkpoints afterwards")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (interleaved); the median is shown")
    parser.add_argument("--cold", action="store_true", help="empty the page cache before each run (needs root)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    import convert as shared  # a sibling: bench/ is sys.path[0] when run as a script (as bench/release.py does)

    rows, sizes = {}, {}
    for layers in args.layers:
        native, hf, built = prepare(layers, args.workdir, shared)
        sizes[layers] = sum(p.stat().st_size for p in native.glob("consolidated*"))
        rows[layers] = measure(native, hf, args.workdir, shared, args.repeat, cold=args.cold)
        if not args.keep:
            for path in built:
                shutil.rmtree(path)
    print(table(rows, sizes))
    print(marginal(rows, sizes))
    if args.json:
        args.json.write_text(json.dumps({"sizes": sizes, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
