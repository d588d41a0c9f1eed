"""The quality checks of a GGUF file: its tokenizer against mistral-common, its logits against the
original model.

- tokenizer: the vocabulary metadata (tokens, scores, types, merges, special ids, add_bos) equals what
  the native tokenizer gives, key by key (decisive: it is what hubtools writes). Then two tokenizers built
  from the file are run on the built-in corpus against mistral-common (`encode(text, bos=True)`) and
  reported: llama.cpp's own (`llama-tokenize`, when on PATH) and transformers' read-back (`gguf_file=`).
  Neither decides: the file equals llama.cpp's converter's, and their remaining differences are theirs
  (measured: llama.cpp 87/87 texts on v1; on v3/v7 it misses the texts with user-defined pieces such as
  `[REF]`, which sentencepiece matches whole and the converter types NORMAL; on tekken one Devanagari text,
  from its regex; transformers rebuilds SentencePiece merges from the scores and splits whitespace runs
  differently, 72/87 on v1).
- logits: the clean-room reference forward (`hubtools.verification.reference`) on the GGUF weights,
  dequantized one layer at a time by gguf-py, against the same forward on the original weights, both in
  float32: mean KL, top-1 agreement, max |dlogit|. F32 files pass by the float32 rule, F16/BF16 by the
  bfloat16 rule of `hubtools verify`; quantized files report their figures (the card shows them).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hubtools.filenames import spm_versioned_name
from hubtools.gguf.files import GgufFiles
from hubtools.gguf.metadata_check import expected_metadata, metadata_problems
from hubtools.gguf.quant import QuantType
from hubtools.gguf.source import GgufSource, source_rows
from hubtools.verification.checks import NEAR_TIE, THRESHOLDS, Check, LogitsCheck
from hubtools.verification.logits import (
    Divergence,
    Prompts,
    logit_metrics,
    passes,
    prompt_tokens,
    run_sides,
)
from hubtools.verification.reference import ReferenceModel

MAX_PROMPT_TOKENS = 256

FLOAT_RULES = {"F32": "float32", "F16": "bfloat16", "BF16": "bfloat16"}


def _flavour(files: GgufFiles) -> str:
    from hubtools.tokenization.chat_template import template_flavour

    flavour = template_flavour(files.fields.get("tokenizer.chat_template", (None, None))[1])
    return flavour if flavour in ("mistral", "chatml", "none") else "auto"


def vocab_problems(source: GgufSource, files: GgufFiles, quant: QuantType) -> list[str]:
    from hubtools.gguf.vocab import hf_tokenizer_dir

    with tempfile.TemporaryDirectory() as tmp:
        folder = hf_tokenizer_dir(source.tokenizer, source.config, chat_template=_flavour(files), workdir=Path(tmp))
        expected = expected_metadata(source, quant, folder)
    return metadata_problems(files, {k: v for k, v in expected.items() if k.startswith("tokenizer.")})


def _reference(native: Path) -> Any:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from hubtools.tokenization.files import tokenizer_version

    version = tokenizer_version(native)
    with tempfile.TemporaryDirectory() as tmp:
        path = native
        if version.startswith("v") and native.name.endswith(".model"):
            path = Path(tmp) / spm_versioned_name(version)
            path.write_bytes(native.read_bytes())
        return MistralTokenizer.from_file(str(path)).instruct_tokenizer.tokenizer


def _texts(prompts_path: Path | None) -> list[str]:
    from hubtools.tokenization.corpus import BUILTIN_TEXTS
    from hubtools.tokenization.parity import load_prompts

    extra = load_prompts(prompts_path) if prompts_path else []
    return list(BUILTIN_TEXTS) + [p for p in extra if isinstance(p, str)]


def llama_cpp_ids(exe: Path, gguf_path: Path, text: str, workdir: Path) -> list[int]:
    """llama.cpp's own tokenizer on a GGUF file: `llama-tokenize --ids --no-parse-special --no-escape` (the
    text's bytes as they are, special-token strings as text, BOS added as the file asks)."""
    path = workdir / "text.txt"
    path.write_bytes(text.encode("utf-8"))
    cmd = [
        str(exe),
        "-m",
        str(gguf_path),
        "-f",
        str(path),
        "--ids",
        "--no-parse-special",
        "--no-escape",
        "--log-disable",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1:] or ["llama-tokenize failed"])
    line = done.stdout.strip().splitlines()[-1]
    return [int(x) for x in line.strip("[]").split(",") if x.strip()]


def _agreement(encode: Callable[[str], list[int]], reference: Any, texts: list[str]) -> tuple[int, list[str]]:
    agreed, misses = 0, []
    for i, text in enumerate(texts):
        if encode(text) == list(reference.encode(text, bos=True, eos=False)):
            agreed += 1
        else:
            misses.append(f"text {i}: {text[:40]!r}")
    return agreed, misses


def _readback(files: GgufFiles, gguf_path: Path, reference: Any, texts: list[str]) -> dict[str, Any]:
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # transformers raises many types for GGUF files it cannot read
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    agreed, misses = _agreement(lambda t: tok(t, split_special_tokens=True)["input_ids"], reference, texts)
    return {"agreed": agreed, "texts": len(texts), "misses": misses[:10]}


def check_gguf_tokenizer(
    source: GgufSource,
    files: GgufFiles,
    quant: QuantType | None,
    gguf_path: Path,
    *,
    prompts_path: Path | None = None,
    readback: bool = True,
    llama_tokenize: Path | None = None,
) -> Check:
    """Vocabulary metadata (decisive); llama.cpp's tokenizer (when installed) and transformers' read-back (reported)."""
    if source.ckpt.tokenizer_file is None:
        return Check(True, skipped="no tokenizer file in the source folder")
    problems = vocab_problems(source, files, quant or QuantType("F16"))
    reference, texts = _reference(source.tokenizer), _texts(prompts_path)
    details: dict[str, Any] = {"vocab_keys_equal": not problems}
    exe = llama_tokenize or (Path(found) if (found := shutil.which("llama-tokenize")) else None)
    if exe is not None:
        with tempfile.TemporaryDirectory() as tmp:
            agreed, misses = _agreement(lambda t: llama_cpp_ids(exe, files.paths[0], t, Path(tmp)), reference, texts)
        details["llama_cpp"] = {"agreed": agreed, "texts": len(texts), "misses": misses[:10]}
    else:
        details["llama_cpp"] = {"skipped": "llama-tokenize not on PATH"}
    if readback:
        details["transformers"] = _readback(files, gguf_path, reference, texts)
    return Check(not problems, tuple(problems[:20]), details)


def _gguf_getter(source: GgufSource, files: GgufFiles) -> Callable[[str], Any]:
    """native name -> its float32 tensor read back from the GGUF file: one block of a stacked or fused tensor
    (each source is an equal run of rows), or its pieces joined (`Family.gguf_join`)."""
    import torch
    from gguf import quants

    params = source.params
    where: dict[str, list[tuple[Any, int]]] = {}
    for t in source.tensors:
        for i, spec in enumerate(t.sources):
            where.setdefault(spec.native, []).append((t, i))

    def dequantized(t: Any, i: int) -> np.ndarray:
        data = files.data(t.name)
        block = np.ascontiguousarray(data.reshape(len(t.sources), -1, data.shape[-1])[i])
        return np.array(quants.dequantize(block, files.tensors[t.name].tensor_type))

    def get(native: str) -> torch.Tensor:
        found = where[native]
        shape = found[0][0].sources[found[0][1]].shape
        if found[0][0].piece is None:
            return torch.from_numpy(dequantized(*found[0]).reshape(shape))
        pieces = {t.piece: dequantized(t, i).reshape(t.shape) for t, i in found}
        return torch.from_numpy(np.ascontiguousarray(params.family.gguf_join(params, pieces)).reshape(shape))

    return get


def _source_getter(source: GgufSource) -> Callable[[str], Any]:
    import torch

    specs = {spec.native: spec for t in source.tensors for spec in t.sources}

    def get(native: str) -> torch.Tensor:
        raw, code = source_rows(source, specs[native])
        dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[code]
        return torch.from_numpy(raw.reshape(-1)).view(dtype).reshape(specs[native].shape).float()

    return get


def logits_prompts(source: GgufSource, prompts_path: Path | None) -> Prompts:
    """The built-in prompts, plus the texts of `prompts_path` encoded by mistral-common (BOS, at most 256 tokens)."""
    import torch

    base = prompt_tokens(source.ckpt.tokenizer_file, source.params.vocab_size)
    if prompts_path is None or source.ckpt.tokenizer_file is None:
        return base
    from hubtools.tokenization.parity import load_prompts

    reference = _reference(source.tokenizer)
    texts = [p for p in load_prompts(prompts_path) if isinstance(p, str) and p]
    rows = [base.tokens[i, :n].tolist() for i, n in enumerate(base.lengths)]
    rows += [list(reference.encode(t, bos=True, eos=False))[:MAX_PROMPT_TOKENS] for t in texts]
    tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return Prompts(tokens, tuple(map(len, rows)), f"{base.source} + {len(texts)} texts of {prompts_path.name}")


def check_gguf_logits(
    source: GgufSource,
    files: GgufFiles,
    quant: QuantType | None,
    *,
    enabled: bool,
    progress: Callable[[str], None],
    prompts_path: Path | None = None,
) -> LogitsCheck:
    """The reference forward on the dequantized GGUF weights vs on the original weights, float32, layer by layer."""
    from hubtools.model.params import default_rope_theta

    if not enabled:
        return LogitsCheck(True, "float32", skipped="logits check disabled (--no-logits)")
    if any(t.name not in files.tensors for t in source.tensors):
        return LogitsCheck(False, "float32", error="missing tensors (see structure) prevent a forward")
    params = source.params
    theta = float(source.config.get("rope_theta") or default_rope_theta(params))
    prompts = logits_prompts(source, prompts_path).pack()  # no compute on padding
    positions, valid = prompts.positions, prompts.valid
    ours = ReferenceModel(params, _gguf_getter(source, files), rope_theta=theta, positions=positions)
    orig = ReferenceModel(params, _source_getter(source), rope_theta=theta, positions=positions)
    track = Divergence(valid, sides=("original", "GGUF"))
    ref, out = run_sides(orig, ours, prompts.tokens, params.n_layers, track, progress)
    diffs = track.diffs
    rule = FLOAT_RULES.get(quant.name if quant else "")
    thresholds = THRESHOLDS[rule] if rule else ()
    near_tie = NEAR_TIE[rule or "bfloat16"]  # a quantized file: its figures, with bfloat16's tolerance of ties
    metrics = logit_metrics(ref, out, valid, near_tie=near_tie)
    return LogitsCheck(
        passed=passes(metrics, thresholds),
        dtype="float32",
        near_tie=near_tie,
        layers=tuple(diffs),
        sequences=len(prompts.lengths),
        tokens=sum(prompts.lengths),
        prompts=prompts.source,
        thresholds=thresholds,
        max_abs_dlogit=metrics["max_abs_dlogit"],
        nmse=metrics["nmse"],
        mean_kl=metrics["mean_kl"],
        max_kl=metrics["max_kl"],
        top1_agreement=metrics["top1_agreement"],
        top1_near_tie_agreement=metrics["top1_near_tie_agreement"],
    )
