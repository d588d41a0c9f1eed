"""Benchmark: hubtools' GPTQ on one matrix of a real width (default 4096 x 4096, as Mistral 7B's attention),
CPU, one thread: wall and CPU seconds per run. `--save FILE` keeps the result, `--compare FILE` says whether
this tree's result is bit-identical to one saved by another tree (run the older tree with --save first):

    PYTHONPATH=OLD_TREE python bench/gptq_speed.py --save /tmp/gptq.pt
    PYTHONPATH=$PWD python bench/gptq_speed.py --compare /tmp/gptq.pt

The inputs: 2,048 random correlated tokens with two outlier channels (x25), weights N(0, 0.02); 4 bits, group
128, act-order, damp 0.01 (the defaults).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--columns", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args()
    import torch  # after --help

    from hubtools.quantization.gptq import Hessian, gptq

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(args.rows, args.columns, generator=generator) * 0.02
    x = torch.randn(2048, args.columns, generator=generator)
    x[:, [3, 41]] *= 25
    hessian = Hessian(args.columns, torch.device("cpu"))
    hessian.add(x)
    h = hessian.matrix()
    runs = []
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        q, scales = gptq(w, h, bits=4, group_size=128, damp=0.01, act_order=True)
        runs.append({"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)})
    result: dict[str, object] = {"shape": [args.rows, args.columns], "threads": args.threads, "runs": runs}
    if args.save:
        torch.save({"q": q, "scales": scales}, args.save)
    if args.compare:
        saved = torch.load(args.compare)
        result["bit_identical"] = torch.equal(saved["q"], q) and torch.equal(saved["scales"], scales)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
