"""`hubtools verify SRC FILE.gguf`: prove a GGUF file (or split set) is the export of SRC.

- structure: every tensor present with the expected shape and type (for the types hubtools writes: the
  converter's type rule; for llama.cpp's types, any), no extra tensor, and every model metadata key
  equal to what params.json / config.json give (`hubtools.gguf.metadata`);
- tensors: for the types gguf-py quantizes, each tensor equals gguf-py's quantization of the source
  tensor, byte for byte (the quantizers are deterministic), streamed chunk by chunk; a difference names
  the tensor and, for merged experts, the expert. F16 and BF16 files are also held to the value rule of
  `verification.casts` (no overflow, nothing flushed beyond the type's rounding), chunk by chunk. For
  llama.cpp's types (K-quants), with llama-quantize on PATH, each tensor equals a fresh llama-quantize
  run on a new F16/BF16 intermediate;
- tokenizer and logits: `hubtools.gguf.quality`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from hubtools.errors import VerifyError
from hubtools.gguf.files import GgufFiles, read_gguf
from hubtools.gguf.metadata_check import expected_metadata, metadata_problems
from hubtools.gguf.quality import check_gguf_logits, check_gguf_tokenizer
from hubtools.gguf.quant import BUILTIN, QuantType, quantize, tensor_type
from hubtools.gguf.source import GgufSource, float_rows, open_source
from hubtools.model.hf_config import ConfigOverrides
from hubtools.verification.checks import Check
from hubtools.verification.report import GgufReport
from hubtools.verification.run import check_prompts

Progress = Callable[[str], None]
MAX_NAMED = 20


def quant_of(files: GgufFiles) -> QuantType | None:
    """The file's quant type from general.file_type (None when absent or unknown)."""
    ftype = files.file_type
    if ftype is None:
        return None
    builtin = next((QuantType(n) for n, (ft, _) in BUILTIN.items() if ft == ftype), None)
    return builtin or QuantType(ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_"))


def check_structure(source: GgufSource, files: GgufFiles, quant: QuantType | None) -> Check:
    """Tensors present, shapes, types (for hubtools' own types), no extras; model metadata."""
    problems = []
    if quant is None:
        problems.append("metadata 'general.file_type': missing or unknown")
    arch, expected = files.fields.get("general.architecture", (None, None))[1], source.architecture
    if arch != expected:
        problems.append(f"metadata 'general.architecture': expected '{expected}', found {arch!r}")
    for t in source.tensors:
        found = files.tensors.get(t.name)
        if found is None:
            problems.append(f"tensor '{t.name}': missing")
            continue
        shape = tuple(int(n) for n in reversed(found.shape))
        if shape != t.shape:
            problems.append(f"tensor '{t.name}': expected shape {list(t.shape)}, found {list(shape)}")
        elif (
            quant is not None and quant.builtin and found.tensor_type != tensor_type(t.name, t.shape, quant.weight_type)
        ):
            want = tensor_type(t.name, t.shape, quant.weight_type).name
            problems.append(f"tensor '{t.name}': expected type {want}, found {found.tensor_type.name}")
    names = {t.name for t in source.tensors}
    problems += [f"tensor '{n}': unexpected (not in the source model)" for n in files.tensors if n not in names]
    if quant is not None:
        problems += metadata_problems(files, expected_metadata(source, quant, None))
    return Check(not problems, tuple(problems[:MAX_NAMED]), {"problem_count": len(problems), "tensors": len(names)})


def _first_difference(expected: np.ndarray, actual: np.ndarray) -> int:
    return int(np.flatnonzero(expected != actual)[0])


def check_tensors(source: GgufSource, files: GgufFiles, quant: QuantType | None, progress: Progress) -> Check:
    """Each tensor equals gguf-py's quantization of its source tensor, byte for byte, chunk by chunk."""
    if quant is None:
        return Check(False, ("metadata 'general.file_type': missing or unknown, no type to compare with",))
    if not quant.builtin:
        return check_llama_cpp_tensors(source, files, quant, progress)
    problems, compared = [], 0
    for i, t in enumerate(source.tensors):
        found = files.tensors.get(t.name)
        if found is None or tuple(int(n) for n in reversed(found.shape)) != t.shape:
            continue  # structure names it
        if i % 20 == 0:
            progress(f"tensors: {i}/{len(source.tensors)}")
        problem = _compare_tensor(source, t, files.data(t.name).reshape(-1).view(np.uint8), found.tensor_type)
        compared += 1
        if problem:
            problems.append(problem)
    complete = compared == len(source.tensors)
    details = {"compared": compared, "expected": len(source.tensors), "mismatched": len(problems)}
    return Check(not problems and complete, tuple(problems[:MAX_NAMED]), details)


def check_llama_cpp_tensors(source: GgufSource, files: GgufFiles, quant: QuantType, progress: Progress) -> Check:
    """llama.cpp's types: quantize a fresh intermediate with llama-quantize; every tensor must be the same bytes."""
    import shutil
    import tempfile

    from hubtools.gguf.export import intermediate_type, write_gguf
    from hubtools.gguf.quant import llama_quantize
    from hubtools.gguf.vocab import hf_tokenizer_dir

    if shutil.which("llama-quantize") is None:
        return Check(True, skipped=f"{quant.name} is llama.cpp's own type and llama-quantize is not on PATH")
    with tempfile.TemporaryDirectory(prefix=".hubtools-verify-", dir=files.paths[0].parent) as tmp:
        progress(f"tensors: re-quantizing with llama-quantize {quant.name}")
        folder = hf_tokenizer_dir(source.tokenizer, source.config, chat_template="auto", workdir=Path(tmp))
        base = write_gguf(source, Path(tmp) / "base.gguf", intermediate_type(source), name="x", tokenizer_dir=folder)
        llama_quantize(base[0], Path(tmp) / "redo.gguf", quant)
        redo = read_gguf(Path(tmp) / "redo.gguf")
        problems = []
        for t in source.tensors:
            if t.name not in files.tensors or t.name not in redo.tensors:
                continue  # structure names it
            ours, theirs = files.data(t.name).reshape(-1).view(np.uint8), redo.data(t.name).reshape(-1).view(np.uint8)
            if ours.size != theirs.size or not np.array_equal(ours, theirs):
                at = _first_difference(theirs, ours) if ours.size == theirs.size else 0
                per_source = max(1, theirs.size // len(t.sources))
                expert = _which_expert(t, at // per_source)
                problems.append(f"tensor '{t.name}'{expert}: differs from llama-quantize's output at byte {at}")
    details = {"compared": len(source.tensors), "expected": len(source.tensors), "mismatched": len(problems)}
    return Check(not problems, tuple(problems[:MAX_NAMED]), details | {"by": "llama-quantize"})


def _compare_tensor(source: GgufSource, t: Any, actual: np.ndarray, qtype: gguf.GGMLQuantizationType) -> str | None:
    offset, per_source = 0, actual.size // len(t.sources)
    for rows, _ in float_rows(source, t):
        quantized = np.ascontiguousarray(quantize(rows, qtype))
        if damage := _float_damage(rows, quantized, qtype):
            return f"tensor '{t.name}': {damage}"
        expected = quantized.reshape(-1).view(np.uint8)
        got = actual[offset : offset + expected.size]
        if got.size != expected.size or not np.array_equal(got, expected):
            at = offset + (_first_difference(expected, got) if got.size == expected.size else 0)
            part = _which_expert(t, at // per_source)
            return f"tensor '{t.name}'{part}: differs from the source at byte {at % per_source}"
        offset += expected.size
    return None


def _which_expert(t: Any, source: int) -> str:
    """ " (expert E, native name)" of a stacked or fused tensor's `source`-th part; "" for a single tensor."""
    if len(t.sources) <= 1:
        return ""
    spec = t.sources[min(source, len(t.sources) - 1)]
    return f" (expert {spec.expert}, {spec.native})"


def _float_damage(rows: np.ndarray, quantized: np.ndarray, qtype: gguf.GGMLQuantizationType) -> str | None:
    """For the float types (F16, BF16), the value rule of `verification.casts` on the cast of the source
    rows: byte-equal to gguf-py's cast proves nothing when that cast overflows or flushes values."""
    import torch

    from hubtools.verification.casts import cast_damage
    from hubtools.verification.report_text import describe_difference

    if qtype == gguf.GGMLQuantizationType.F16:
        cast = torch.from_numpy(quantized.reshape(-1).view(np.float16))
    elif qtype == gguf.GGMLQuantizationType.BF16:
        cast = torch.from_numpy(quantized.reshape(-1).view(np.int16)).view(torch.bfloat16)
    else:
        return None
    damage = cast_damage(torch.from_numpy(rows.reshape(-1)), cast)
    return describe_difference(damage) if damage else None


def verify_gguf(
    src: Path,
    gguf_path: Path,
    *,
    prompts_path: Path | None = None,
    check_logits: bool = True,
    rope_theta: float | None = None,
    readback: bool = True,
    progress: Progress | None = None,
) -> GgufReport:
    """Verify a GGUF file (or split set) against the native or HF checkpoint it was exported from.

    Args:
        prompts_path: extra prompts (JSONL): texts for the tokenizer check and the logits.
        check_logits: run the reference forward on the dequantized weights and the original.
        rope_theta: the rotary base when params.json omits it and the default rule is wrong.
        readback: also load the GGUF vocabulary with transformers (slow for tekken).

    Returns:
        A `GgufReport`; differences are reported, not raised.

    Raises:
        TokenizerError: a `prompts_path` line that is neither a text nor a conversation (before any work).
        HubtoolsError subclasses: SRC or the GGUF file cannot be read.
    """
    say = progress or (lambda _: None)
    overrides = ConfigOverrides(rope_theta=rope_theta)  # the values first, as `verify` checks them
    check_prompts(prompts_path)  # a bad line is found now, not after the tensors
    files = read_gguf(gguf_path)
    if files.fields.get("general.type", (None, None))[1] == gguf.GGUFType.MMPROJ:
        raise VerifyError(
            f"{gguf_path}: a vision projector (mmproj); hubtools verify checks a model's GGUF file (for a vision "
            "model, its text model's), not its projector"
        )
    source = open_source(src, overrides=overrides)
    quant = quant_of(files)
    with source.ckpt:
        say("structure")
        structure = check_structure(source, files, quant)
        tensors = check_tensors(source, files, quant, say)
        say("tokenizer")
        tokenizer = check_gguf_tokenizer(source, files, quant, gguf_path, prompts_path=prompts_path, readback=readback)
        logits = check_gguf_logits(source, files, quant, enabled=check_logits, progress=say, prompts_path=prompts_path)
    return GgufReport(
        str(src),
        tuple(str(p) for p in files.paths),
        quant.name if quant else "?",
        structure,
        tensors,
        tokenizer,
        logits,
    )
