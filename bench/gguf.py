"""Benchmark: hubtools gguf (from the native checkpoint) vs llama.cpp's convert_hf_to_gguf.py (from the HF
folder hubtools converts it to), side by side in one run, for F16 and Q8_0: wall time and peak memory.

Same Mixtral-shaped checkpoints as bench/convert.py (dim 4096, hidden 14336, 8 experts, bfloat16; 1 and 2
layers = 3.4 and 6.3 GB). Each method runs in its own child process, source warm in the page cache,
outputs removed (and synced) between runs. Needs the peer tree (see tests/llama_cpp_peer.py).

    python bench/gguf.py [--layers 1 2] [--repeat 1] [--workdir .bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from convert import BUILD, run_measured  # noqa: E402  (bench/convert.py, same folder)

from hubtools.destination import check_destination, write_file  # noqa: E402
from hubtools.errors import DestinationError  # noqa: E402
from tests import llama_cpp_peer as peer  # noqa: E402


def commands(src: Path, hf: Path, out: Path, outtype: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    tree = peer.tree()
    assert tree is not None, "llama.cpp's tree not found (set HUBTOOLS_LLAMA_CPP)"
    peer_env = dict(os.environ, PYTHONPATH=str(tree / "gguf-py"))
    ours = [sys.executable, "-m", "hubtools.cli", "gguf", str(src), str(out), "--quant", outtype, "--quiet"]
    theirs = [peer.python(), str(tree / "convert_hf_to_gguf.py"), str(hf), "--outtype", outtype]
    return {
        f"hubtools {outtype} (native)": (ours, dict(os.environ)),
        f"llama.cpp {outtype} (HF)": ([*theirs, "--outfile", str(out / "peer.gguf")], peer_env),
    }


def measure(src: Path, hf: Path, work: Path, repeat: int) -> dict[str, dict[str, float]]:
    out = work / "gguf-out"
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(repeat):
        for outtype in ("f16", "q8_0"):
            for name, (cmd, env) in commands(src, hf, out, outtype).items():
                subprocess.run(
                    ["cat", *map(str, src.glob("consolidated*")), *map(str, hf.glob("model-*"))],
                    stdout=subprocess.DEVNULL,
                    check=True,
                )
                out.mkdir(exist_ok=True)
                os.sync()
                old = dict(os.environ)
                os.environ.clear()
                os.environ.update(env)
                try:
                    runs.setdefault(name, []).append(run_measured(cmd))
                finally:
                    os.environ.clear()
                    os.environ.update(old)
                shutil.rmtree(out)
                os.sync()
    return {
        name: sorted(r, key=lambda x: x["seconds"])[len(r) // 2] | {"all": [round(x["seconds"], 1) for x in r]}
        for name, r in runs.items()
    }


def table(rows: dict[int, dict[str, dict[str, float]]], sizes: dict[int, int]) -> str:
    lines = [
        "| layers | size | method | wall s | x llama.cpp | peak RSS | peak anon | runs (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for layers, res in rows.items():
        for name, r in res.items():
            peer_name = next(n for n in res if n.startswith("llama.cpp " + name.split()[1]))
            lines.append(
                f"| {layers} | {sizes[layers] / 1e9:.1f} GB | {name} | {r['seconds']:.1f} | "
                f"{r['seconds'] / res[peer_name]['seconds']:.2f} | {r['peak_rss'] / 2**20:,.0f} MiB | "
                f"{r['peak_anon'] / 2**20:,.0f} MiB | {' '.join(map(str, r['all']))} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the multi-GB checkpoints afterwards")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--force", action="store_true", help="replace a --json file hubtools wrote earlier")
    args = parser.parse_args()
    try:
        if args.json:
            check_destination(args.json, force=args.force)  # before the run: hubtools' rule for every output
    except DestinationError as exc:
        sys.exit(f"error: {exc}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows, sizes = {}, {}
    for layers in args.layers:
        src, hf = args.workdir / f"mixtral-{layers}l-safetensors", args.workdir / f"mixtral-{layers}l-hf"
        if not (src / "params.json").exists():
            print(f"building {src} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-c", BUILD, str(layers), "safetensors", str(src)], check=True)
        if not hf.exists():
            subprocess.run([sys.executable, "-m", "hubtools.cli", "convert", str(src), str(hf), "--quiet"], check=True)
        sizes[layers] = sum(p.stat().st_size for p in src.glob("consolidated*"))
        rows[layers] = measure(src, hf, args.workdir, args.repeat)
        print(table({layers: rows[layers]}, sizes), file=sys.stderr)
        if not args.keep:
            shutil.rmtree(src)
            shutil.rmtree(hf)
    print(table(rows, sizes))
    if args.json:
        write_file(args.json, json.dumps({"sizes": sizes, "results": rows}, indent=2), force=args.force)


if __name__ == "__main__":
    main()
