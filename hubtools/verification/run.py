"""`hubtools verify`: prove that an HF folder is an exact conversion of a native checkpoint.

Four checks, each reported with the names of what failed:
- structure: config.json vs params.json (every field; rope_theta by the documented rule), every tensor
  mapped exactly once, shapes, dtypes, the index against the shards (`verify_structure`);
- tensors: every HF tensor equals `to_hf(native)` bit for bit (cast first if the conversion changed
  dtype), one pair in memory at a time, read once and also fed to both forwards (`stream.one_pass`);
- tokenizer: `tokenizer_parity.check_tokenizer` (HF tokenizer vs the native one);
- logits: the clean-room reference vs transformers' decoder layers, layer by layer (`verify_logits`).

Either folder may be given first; which is native and which HF is detected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from hubtools.checkpoint.layout import Layout, TensorSource, layouts_present
from hubtools.checkpoint.reader import Checkpoint, open_checkpoint
from hubtools.checkpoint.safetensors_format import dtype_name
from hubtools.errors import TokenizerError, VerifyError
from hubtools.families import check_counts
from hubtools.filenames import PARAMS
from hubtools.model import fp8
from hubtools.model.family import ModelParams
from hubtools.model.hf_config import ConfigOverrides
from hubtools.model.names import NameTable
from hubtools.model.params import default_rope_theta
from hubtools.validation import compute_dtype
from hubtools.verification.checks import StructureCheck, TokenizerCheck
from hubtools.verification.loadable import load_problems
from hubtools.verification.report import VerifyReport
from hubtools.verification.structure import (
    HfFolder,
    config_problems,
    dtype_problems,
    index_hf_folder,
    mapping_problems,
)

Progress = Callable[[str], None]


def assign_folders(first: Path, second: Path) -> tuple[Path, Path]:
    """(native, hf) from two folders given in either order; the given order wins when both could be either.

    Raises:
        VerifyError: both folders are the same layout, or one is not a checkpoint.
    """
    a, b = layouts_present(first), layouts_present(second)
    if Layout.NATIVE in a and Layout.HF in b:
        return first, second
    if Layout.NATIVE in b and Layout.HF in a:
        return second, first
    for folder, found in ((first, a), (second, b)):
        if not found:
            raise VerifyError(
                f"{folder}: not a checkpoint (expected params.json with consolidated weights, "
                "or config.json with model*.safetensors)"
            )
    layout = next(iter(a | b)).value
    raise VerifyError(
        f"{first} and {second} are both {layout} checkpoints (expected a native folder and its HF conversion)"
    )


def hf_side_params(params: ModelParams, config: dict[str, Any] | None) -> ModelParams:
    """The native params as the HF side holds them: FP8 weights dequantized when config.json has no
    `quantization_config` (a `convert --dtype` output; a wrapper's text model too), else as the native side."""
    if params.quantization is not None and (config or {}).get(fp8.HF_FIELD) is None:
        return fp8.without_fp8(params)
    return params


def check_structure(
    native: Checkpoint,
    hf: HfFolder,
    table: NameTable,
    hf_table: NameTable | None = None,
    *,
    rope_theta: float | None = None,
    stored: Mapping[str, TensorSource] | None = None,
) -> StructureCheck:
    """Config vs params, both sides' tensors against the name table (`hf_table` for the HF side: without
    scales when it is dequantized), dtypes and the index; with `stored` (the HF tensors as stored, fused ones
    whole), also what transformers' own loader would leave missing, unexpected or mismatched (`load_problems`)."""
    hf_table = hf_table or table
    problems = list(hf.problems)
    if hf.config is not None:
        problems += config_problems(hf.config, hf_table.params, rope_theta=rope_theta)
        problems += dtype_problems(hf.config, hf.tensors)
    for ckpt_layout, tensors, where, side in (
        (Layout.NATIVE, native.tensors, "native", table),
        (Layout.HF, hf.tensors, "HF", hf_table),
    ):
        problems += mapping_problems(
            side, list(tensors), {n: t.shape for n, t in tensors.items()}, layout=ckpt_layout, where=where
        )
    notes = [*hf.notes, *table.params.family.runtime_differences(table.params)]
    if hf.config is not None and stored is not None and not problems:  # a folder already wrong is not put to it
        if hf.config.get(fp8.HF_FIELD) is None:
            problems += load_problems(hf.folder, hf.config, stored)
        else:  # FP8 kept: loaded as on a GPU (a CPU dequantizes it); transformers' own limits there are noted
            notes += load_problems(hf.folder, hf.config, stored, gpu=True)
    native_dtypes = _dtype_names(t.dtype for t in native.tensors.values())
    hf_dtypes = _dtype_names(t.dtype for t in hf.tensors.values())
    if hf_dtypes and native_dtypes != hf_dtypes:
        notes.append(f"the conversion changed dtype: native {native_dtypes} -> HF {hf_dtypes}")
    return StructureCheck(not problems, tuple(problems), tuple(notes))


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(sorted({dtype_name(d) for d in dtypes}))


def forward_ready(native: Checkpoint, hf: HfFolder, table: NameTable, hf_table: NameTable | None = None) -> bool:
    """Every tensor present with its expected shape on both sides (a forward can run)."""
    return all(s.native in native.tensors and native.tensors[s.native].shape == s.shape for s in table.specs) and all(
        s.hf in hf.tensors and hf.tensors[s.hf].shape == s.shape for s in (hf_table or table).specs
    )


def check_tokenizer_parity(native: Checkpoint, hf_folder: Path, prompts_path: Path | None) -> TokenizerCheck:
    """Tokenizer parity via `hubtools.tokenization.parity`, or why it was skipped."""
    if native.tokenizer_file is None:
        return TokenizerCheck(True, skipped="no tokenizer file in the native folder")
    from hubtools.tokenization import parity as tokenizer_parity

    try:
        prompts = tokenizer_parity.load_prompts(prompts_path) if prompts_path else None
        report = tokenizer_parity.check_tokenizer(hf_folder, native.tokenizer_file, prompts=prompts, chat=True)
    except TokenizerError as exc:
        return TokenizerCheck(False, error=str(exc))
    details = {k: v for k, v in report.to_dict().items() if k not in ("passed", "sequences", "agreed", "agreement")}
    if not native.params.family.wraps_text:
        return TokenizerCheck(bool(report.passed), report.sequences, report.agreed, details)
    from hubtools.tokenization.image_parity import check_image_parity

    try:  # a vision model: conversations with images, mistral-common against the folder's processor
        images = check_image_parity(hf_folder, native.tokenizer_file)
    except TokenizerError as exc:
        return TokenizerCheck(False, report.sequences, report.agreed, details, error=str(exc))
    details["images"] = images.to_dict()
    passed = bool(report.passed) and images.passed
    return TokenizerCheck(passed, report.sequences + images.sequences, report.agreed + images.agreed, details)


def check_prompts(prompts_path: Path | None) -> None:
    """Parse a `--prompts` file before any work (`load_prompts`).

    Raises:
        TokenizerError: the file is unreadable, or a line is not a text or a conversation (the line is named).
    """
    if prompts_path is not None:
        from hubtools.tokenization.parity import load_prompts

        load_prompts(prompts_path)


def prompt_texts(prompts_path: Path | None) -> tuple[str, ...]:
    """The non-empty texts among `--prompts` (they also feed the logits check); none if the file is unreadable
    (the tokenizer check reports that)."""
    if prompts_path is None:
        return ()
    try:
        from hubtools.tokenization.parity import load_prompts

        return tuple(p for p in load_prompts(prompts_path) if isinstance(p, str) and p)
    except (ModuleNotFoundError, TokenizerError):
        return ()


def verify(
    native: str | os.PathLike[str],
    hf: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str = "float32",
    prompts_path: str | os.PathLike[str] | None = None,
    check_logits: bool = True,
    rope_theta: float | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify that an HF folder is an exact conversion of a native checkpoint (arguments in either order).

    Args:
        dtype: compute dtype of the logits check: float32 (catches conversion bugs) or bfloat16.
        prompts_path: prompts for the tokenizer check (`tokenizer_parity.load_prompts`); its texts also
            join the logits check's prompts.
        check_logits: run both forwards (the slow part).
        rope_theta: the native model's rotary base when params.json omits it and the default rule is wrong.
        progress: called with a short message as each stage advances.

    Returns:
        A `VerifyReport`; verification that finds differences returns normally with `passed` False.

    Raises:
        InvalidValueError: `dtype` is not float32 or bfloat16, or `rope_theta` not finite and > 0.
        TokenizerError: a `prompts_path` line that is
            neither a text nor a conversation (both checked before any work).
        VerifyError: the folders are not a native / HF pair.
        HubtoolsError subclasses: the native checkpoint cannot be read.

    Example:
        >>> report = verify("mixtral-native", "mixtral-hf")  # doctest: +SKIP
        >>> report.passed  # doctest: +SKIP
        True
    """
    native, hf = Path(native), Path(hf)
    prompts_path = Path(prompts_path) if prompts_path is not None else None
    for path in (native, hf):
        if path.is_file():  # a GGUF file (or split set) is `hubtools.gguf.verify.verify_gguf`'s
            raise VerifyError(f"{path}: expected a checkpoint folder, found a file (a .gguf file: use verify_gguf)")
    say = progress or (lambda _: None)
    compute: torch.dtype = compute_dtype(dtype).torch  # the values first, as the CLI checks them
    ConfigOverrides(rope_theta=rope_theta)  # a finite rotary base > 0, as `convert` requires
    check_prompts(prompts_path)  # a bad line is found now, not after the forwards
    native, hf = assign_folders(native, hf)
    with open_checkpoint(native, layout=Layout.NATIVE) as src:
        say("structure")
        check_counts(src.params, src.tensors, source=str(native / PARAMS))  # before the table
        stored = index_hf_folder(hf)
        audit = stored.split(src.params)
        table = NameTable(src.params)
        hf_table = NameTable(hf_side_params(src.params, audit.config))
        structure = check_structure(src, audit, table, hf_table, rope_theta=rope_theta, stored=stored.tensors)
        with audit.checkpoint(src.params) as dst:
            from hubtools.verification.stream import one_pass

            theta = rope_theta if rope_theta is not None else default_rope_theta(src.params)
            tensors, logits = one_pass(  # each tensor read once per side: the bit-exact check and both forwards
                src,
                dst,
                hf,
                table,
                forward_ready(src, audit, table, hf_table),
                dtype=compute,
                rope_theta=theta,
                enabled=check_logits,
                progress=say,
                texts=prompt_texts(prompts_path),
                audit_config=audit.config,
                hf_table=hf_table,
            )
            say("tokenizer")
            tokenizer = check_tokenizer_parity(src, hf, prompts_path)
    return VerifyReport(str(native), str(hf), structure, tensors, tokenizer, logits)
