"""Benchmark: Ministral 3 (YaRN, FP8) convert and verify vs `cp`, transformers' script and loading both whole.

Builds a Ministral-3-shaped native checkpoint at a release's real width (`--shape 3b`: dim 3072, hidden 9216,
32 heads / 8 kv heads of 128, vocab 131072, tied; `8b`: dim 4096, hidden 14336, untied) with `--layers`
layers, in bfloat16 and in FP8 (per-tensor scales), then runs each method in its own child process, source
warm in the page cache, wall time including the final `sync`, peak RSS (the child's VmHWM) and peak
anonymous memory, `--repeat` runs interleaved (median, best and every run reported):

- cp: the same bytes copied (the floor);
- convert: `hubtools convert` (FP8 stays FP8); dequantize: `hubtools convert --dtype bfloat16` (FP8 source);
- peer: transformers' `convert_ministral3_weights_to_hf.py` from `--peer` (not vendored: /work/peer/scripts),
  once as published (its outcome recorded) and, where that fails for a reason unrelated to the work it does,
  with the smallest shims that let it run (listed in the output);
- verify: `hubtools verify --dtype bfloat16` (one layer at a time) vs whole: both models whole in memory
  (native state dict + the reference forward, `from_pretrained` + its forward), logits compared;
- width: convert's peak memory on the FP8 checkpoint at two widths (3b and 8b, one layer).

    python bench/mistral3.py [--shape 3b] [--layers 2] [--repeat 3] [--peer DIR] [--workdir .bench/mistral3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "convert_ministral3_weights_to_hf.py"
SHAPES: dict[str, dict[str, Any]] = {  # Ministral 3 3B / 8B (2512) at real width; tiny for the smoke test
    "3b": {"dim": 3072, "hidden_dim": 9216, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "tied": True},
    "8b": {"dim": 4096, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "tied": False},
    "tiny": {"dim": 64, "hidden_dim": 128, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "tied": True},
}
FP8 = {"quantization": {"qformat_weight": "fp8_e4m3", "qscheme_act": "TENSOR"}}

BUILD = r"""
import json, sys, torch
from pathlib import Path
from hubtools.families import family_named
from hubtools.testing import write_native_checkpoint
family, raw, dst = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
params = family_named(family).parse_params(raw, source="bench")
write_native_checkpoint(dst, params, dtype=torch.bfloat16, tokenizer="tekken", shards=1)
with (dst / "consolidated.safetensors").open("r+b") as f:  # one input scale per expert, as releases calibrate it
    start = 8 + int.from_bytes(f.read(8), "little")          # (gate and up read the same input): w3's := w1's
    header = json.loads(f.read(start - 8))
    for name, entry in header.items():
        if ".experts." in name and name.endswith(".w3.qscale_act"):
            begin, end = header[name.replace(".w3.", ".w1.")]["data_offsets"]
            f.seek(start + begin)
            data = f.read(end - begin)
            f.seek(start + entry["data_offsets"][0])
            f.write(data)
tekken = dst / "tekken.json"
data = json.loads(tekken.read_text())
if data["config"]["default_vocab_size"] != params.vocab_size:  # a smaller vocabulary: tekken's own truncation
    data["config"]["default_vocab_size"] = params.vocab_size
    tekken.write_text(json.dumps(data))
"""

PEER = r"""
import runpy, sys, types
shims, script, *args = sys.argv[1].split(",") if sys.argv[1] else [], sys.argv[2], *sys.argv[3:]
if "finegrained" in shims:  # the script imports a module later than transformers 5.25; 5.25's equivalent
    from transformers.integrations import finegrained_fp8
    module = types.ModuleType("transformers.integrations.finegrained")
    module.replace_with_finegrained_layer = lambda model, skip, config: finegrained_fp8.replace_with_fp8_linear(
        model, skip, config, pre_quantized=True)
    sys.modules[module.__name__] = module
if "text-only" in shims:  # the script reads config.text_config and writes model.language_model.* for every model
    import torch
    from transformers import Ministral3Config, Ministral3ForCausalLM
    Ministral3Config.text_config = property(lambda self: self)
    load = torch.nn.Module.load_state_dict
    Ministral3ForCausalLM.load_state_dict = lambda self, state, *a, **k: load(
        self, {n.replace("model.language_model.", "model.", 1): t for n, t in state.items()}, *a, **k)
sys.argv = [script, *args]
if not {"model-only", "dense-ffn"} & set(shims):
    runpy.run_path(script, run_name="__main__")
    sys.exit()
script_globals = runpy.run_path(script, run_name="peer_script")["main"].__globals__  # defined, not yet run
if "model-only" in shims:  # the weights and config only: its tokenizer / processor step (PixtralImageProcessorFast
    script_globals["convert_and_write_processor_and_tokenizer"] = lambda *a: None  # needs torchvision) is skipped
if "dense-ffn" in shims:  # Mistral 4's renamings miss a leading dense layer's feed_forward.w1/w2/w3: the ones it lacks
    text_renamings = script_globals["_get_text_renamings"]
    from transformers.core_model_loading import WeightRenaming
    script_globals["_get_text_renamings"] = lambda prefix: [*text_renamings(prefix), *(
        WeightRenaming(rf"feed_forward\.{w}", f"mlp.{proj}") for w, proj in
        (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")))]
script_globals["main"]()
"""

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
import json, sys, torch, transformers
from pathlib import Path
from safetensors.torch import load_file
from hubtools.families import load_params
from hubtools.model.fp8 import native_dequantize
from hubtools.model.params import default_rope_theta
from hubtools.verification import reference
from hubtools.verification.logits import logit_metrics, prompt_tokens
native, hf, dtype = Path(sys.argv[1]), Path(sys.argv[2]), getattr(torch, sys.argv[3])
params = load_params(native / "params.json")
state = {}
for f in sorted(native.glob("consolidated*.safetensors")):
    state.update(load_file(f))                                   # the whole native model in RAM
for name in [n for n in state if n.endswith(".qscale_weight")]:  # FP8: the native rule
    weight = name.removesuffix(".qscale_weight") + ".weight"
    state[weight] = native_dequantize(state[weight], state.pop(name))
state = {n: t.to(dtype) for n, t in state.items() if not n.endswith(".qscale_act")}
prompts = prompt_tokens(native / "tekken.json", params.vocab_size)
config = json.loads((hf / "config.json").read_text())
model_class = getattr(transformers, config["architectures"][0])  # by class: not every family is Auto-registered
with torch.no_grad():
    ref = reference.forward(prompts.tokens, state.__getitem__, params, rope_theta=default_rope_theta(params))
    model = model_class.from_pretrained(hf, dtype=dtype, local_files_only=True)  # the whole HF model too
    out = model(input_ids=prompts.tokens).logits
Path(sys.argv[4]).write_text(json.dumps(logit_metrics(ref.float(), out.float(), prompts.valid)))
"""


def load_bench(name: str) -> ModuleType:
    """Another bench script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ministral3_params(shape: str, layers: int, vocab: int, fp8: bool) -> dict[str, Any]:
    """A Ministral 3 params.json (the 2512 releases' YaRN and llama-4 fields) at `shape`'s width."""
    s = SHAPES[shape]
    raw = {
        "dim": s["dim"], "n_layers": layers, "head_dim": s["head_dim"], "hidden_dim": s["hidden_dim"],
        "n_heads": s["n_heads"], "n_kv_heads": s["n_kv_heads"], "norm_eps": 1e-5, "vocab_size": vocab,
        "rope_theta": 1e6, "max_position_embeddings": 262144, "tied_embeddings": s["tied"],
        "yarn": {"factor": 16.0, "original_max_position_embeddings": 16384, "beta": 32.0, "alpha": 1.0,
                 "apply_scale": False},
        "llama_4_scaling": {"original_max_position_embeddings": 16384, "beta": 0.1},
    }  # fmt: skip
    return {**raw, **FP8} if fp8 else raw


class Bench:
    """One run's settings: where hubtools comes from (`tree`), the work folder, the peer scripts."""

    def __init__(self, tree: Path, work: Path, peer: Path | None, repeat: int) -> None:
        self.tree, self.work, self.peer, self.repeat = tree.resolve(), work.resolve(), peer, repeat
        self.env = dict(os.environ, PYTHONPATH=str(self.tree), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.shared = load_bench("convert")
        self.child: dict[str, Any] = {"env": self.env, "cwd": self.work}  # not this checkout: -c and -m put cwd first

    def build(self, family: str, raw: dict[str, Any], name: str) -> Path:
        dst = self.work / name
        if not (dst / "params.json").exists():
            print(f"building {dst} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-c", BUILD, family, json.dumps(raw), str(dst)], **self.child, check=True)
        return dst

    def hubtools(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hubtools.cli", *args]

    def peer_cmd(self, script: str, shims: list[str], src: Path, out: Path, *extra: str) -> list[str] | None:
        if self.peer is None or not (self.peer / script).exists():
            return None
        return [sys.executable, "-c", PEER, ",".join(shims), str(self.peer / script), str(src), str(out), *extra]

    def warm(self, *folders: Path) -> None:
        files = [str(p) for folder in folders for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"]
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
        os.sync()

    def measure(self, methods: dict[str, list[str] | None], src: Path, repeat: int | None = None) -> dict[str, Any]:
        """Each method `repeat` times, interleaved, from a warm source into a fresh output folder."""
        out = self.work / "out"
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, cmd in methods.items() if cmd is not None}
        for i in range(repeat or self.repeat):
            names = list(runs) if i % 2 == 0 else list(reversed(runs))
            for name in names:
                cmd = [str(out) if part == "{out}" else part for part in methods[name] or []]
                self.warm(src)
                runs[name].append(self.shared.run_measured(cmd, **self.child, check=False))
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
        return {name: summary(r) for name, r in runs.items()}

    def compare(self, native: Path, hf: Path, dtype: str, repeat: int | None = None) -> dict[str, Any]:
        """verify (one layer at a time) vs both models whole, each run right after reading both (warm)."""
        report = self.work / "report.json"
        methods = {
            f"verify {dtype}": [sys.executable, "-c", VERIFY, str(native), str(hf), "--dtype", dtype, "--quiet"]
            + ["--json", str(report), "--force"],
            f"whole {dtype}": [sys.executable, "-c", WHOLE, str(native), str(hf), dtype, str(self.work / "whole.json")],
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
        for i in range(repeat or self.repeat):
            for name in list(methods) if i % 2 == 0 else list(reversed(methods)):
                self.warm(native, hf)
                run = self.shared.run_measured(methods[name], **self.child, check=False)
                if name.startswith("verify") and "error" not in run:
                    checks = json.loads(report.read_text())
                    run["result"] = verdict(checks["passed"], checks["checks"]["logits"])
                elif "error" not in run:
                    run["result"] = verdict(None, json.loads((self.work / "whole.json").read_text()))
                runs[name].append(run)
        return {name: summary(r) for name, r in runs.items()}


def verdict(passed: bool | None, logits: dict[str, Any]) -> str:
    """A logits comparison in one phrase (passed=None: no verdict, the whole-model script only compares)."""
    head = "" if passed is None else ("passed, " if passed else "FAILED, ")
    return f"{head}max|dlogit| {logits.get('max_abs_dlogit', float('nan')):.2g}, top-1 {logits.get('top1_agreement')}"


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by wall time, its best time and every time; a failure is reported by its error line."""
    failed = [r for r in runs if "error" in r]
    ordered = sorted(runs, key=lambda r: r["seconds"])
    median = ordered[len(ordered) // 2]
    return {
        **median,
        "seconds": statistics.median(r["seconds"] for r in runs),
        "best": ordered[0]["seconds"],
        "all": [round(r["seconds"], 1) for r in runs],
        **({"error": failed[0]["error"]} if failed else {}),
    }


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")


def table(title: str, size: int, res: dict[str, dict[str, Any]], floor: str | None = "cp") -> str:
    """Markdown rows: median and best wall time, ratios to `floor`, peak memory, outcome."""
    base = res.get(floor or "", {})
    lines = [
        f"{title} ({size / 1e9:.2f} GB of weights)",
        "",
        "| method | median s | x cp | best s | x cp | peak RSS | peak anon | all runs (s) | outcome |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
        best = f"{r['best'] / base['best']:.2f}" if base else "-"
        outcome = f"FAILED: {r['error'][:160]}" if "error" in r else r.get("result", "ok")
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {ratio} | {r['best']:.1f} | {best} | {r['peak_rss'] / 2**20:,.0f} MiB "
            f"| {r['peak_anon'] / 2**20:,.0f} MiB | {' '.join(map(str, r['all']))} | {outcome} |"
        )
    return "\n".join(lines)


def convert_methods(
    bench: Bench, src: Path, fp8: bool, script: str, peer_shims: list[str] | None
) -> dict[str, list[str] | None]:
    """cp, hubtools convert (and --dtype bfloat16 for an FP8 source), transformers' script (peer_shims: None
    leaves it out)."""
    methods: dict[str, list[str] | None] = {
        "cp": ["cp", "-r", str(src), "{out}"],
        "hubtools convert" + (" (FP8 kept)" if fp8 else ""): bench.hubtools("convert", str(src), "{out}", "--quiet"),
    }
    if fp8:
        methods["hubtools convert --dtype bfloat16"] = bench.hubtools(
            "convert", str(src), "{out}", "--dtype", "bfloat16", "--quiet"
        )
    if peer_shims is not None:
        label = "peer" + (f" (shims: {', '.join(peer_shims)})" if peer_shims else "")
        methods[label] = bench.peer_cmd(script, peer_shims, src, Path("{out}"))
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--widths", nargs="*", default=["3b", "8b"], help="shapes of the width check (1 layer)")
    parser.add_argument("--peer", type=Path, default=Path("/work/peer/scripts"), help="transformers' scripts")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the hubtools source tree to run")
    parser.add_argument("--workdir", type=Path, default=Path(".bench/mistral3"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.tree, args.workdir, args.peer if args.peer.is_dir() else None, args.repeat)
    results: dict[str, Any] = {}
    for kind in args.variants:
        fp8 = kind == "fp8"
        src = bench.build("ministral3", ministral3_params(args.shape, args.layers, args.vocab, fp8), f"{kind}")
        size = size_of(src)
        published = bench.measure({"peer as published": bench.peer_cmd(SCRIPT, [], src, Path("{out}"))}, src, 1)
        res = {**bench.measure(convert_methods(bench, src, fp8, SCRIPT, ["text-only"]), src), **published}
        print(table(f"convert, {args.shape} x {args.layers} layers, {kind}", size, res), flush=True)
        hf = bench.work / f"{kind}-hf"
        if not (hf / "config.json").exists():
            subprocess.run(bench.hubtools("convert", str(src), str(hf), "--quiet"), **bench.child, check=True)
        checked = bench.compare(src, hf, "bfloat16")
        print(table(f"verify vs both whole, {kind}", size, checked, floor=None), flush=True)
        results[kind] = {"size": size, "convert": res, "verify": checked}
        if not args.keep:
            shutil.rmtree(hf)
            shutil.rmtree(src)
    widths = {}
    for shape in args.widths:
        src = bench.build("ministral3", ministral3_params(shape, 1, args.vocab, True), f"width-{shape}")
        widths[shape] = {"size": size_of(src), **bench.measure(convert_methods(bench, src, True, SCRIPT, None), src)}
        if not args.keep:
            shutil.rmtree(src)
    for shape, res in widths.items():
        runs = {m: r for m, r in res.items() if m != "size"}
        print(table(f"width check: {shape} (dim {SHAPES[shape]['dim']}), 1 layer, fp8", res["size"], runs))
    results["widths"] = widths
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
