"""plan() and convert(): read -> rename -> transform -> write, streaming, atomic.

native -> HF: model-0000K-of-0000N.safetensors + index, config.json, generation_config.json, tokenizer.
HF -> native: consolidated.safetensors (or consolidated-0000N-of-0000M above the shard size),
params.json and the native tokenizer file, in the layout mistral-inference loads.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hubtools.checkpoint.layout import check_not_in_target
from hubtools.checkpoint.reader import Checkpoint, check_tensors, open_checkpoint
from hubtools.checkpoint.safetensors_format import dtype_code, dtype_name
from hubtools.checkpoint.steps import Step, write_step
from hubtools.checkpoint.writer import (
    FollowingHash,
    PlannedTensor,
    Shard,
    fuse_planned,
    plan_shards,
    write_index,
    write_shard,
)
from hubtools.destination import atomic_folder, check_destination, remember_sha256
from hubtools.dtypes import DType
from hubtools.families import check_counts
from hubtools.filenames import (
    CONFIG,
    DEFAULT_SHARD_SIZE,
    GENERATION_CONFIG,
    HF_STEM,
    INDEX,
    NATIVE_SINGLE,
    NATIVE_STEM,
    PARAMS,
)
from hubtools.model import fp8
from hubtools.model.family import ModelParams
from hubtools.model.hf_config import ConfigOverrides, to_hf_config, to_native_params
from hubtools.model.names import Layout, NameTable
from hubtools.model.rows import Role
from hubtools.validation import byte_size, cast_dtype

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ConversionPlan:
    """Every output tensor, shard and config value of a conversion, decided from headers alone."""

    direction: Layout  # the target layout; the source is `direction.other`
    params: ModelParams
    shards: tuple[Shard, ...]
    steps: dict[str, Step]
    config: dict[str, Any] | None
    generation: dict[str, Any] | None
    rules: tuple[str, ...] = field(default=())

    @property
    def source_layout(self) -> Layout:
        return self.direction.other

    @property
    def target_layout(self) -> Layout:
        return self.direction

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.shards)


def plan(
    ckpt: Checkpoint,
    *,
    dtype: Any = None,
    max_shard_size: int = DEFAULT_SHARD_SIZE,
    overrides: ConfigOverrides | None = None,
) -> ConversionPlan:
    """Decide every output tensor, shard and config value from headers alone.

    Args:
        dtype: cast every tensor to this (a torch dtype, "bfloat16" or "BF16"; bfloat16, float16 or
            float32); None keeps each tensor's. An FP8 source is dequantized (its scales and
            `quantization_config` leave the output).

    Raises:
        MappingError, ParamsError, TokenizerError: the source is inconsistent.
        InvalidValueError: a dtype a release cannot ship.
    """
    dtype = cast_dtype(dtype)
    source = ckpt.folder / (PARAMS if ckpt.layout is Layout.NATIVE else CONFIG)
    check_counts(ckpt.params, ckpt.tensors, source=str(source))  # before the n_layers x experts table
    table = NameTable(ckpt.params)
    check_tensors(ckpt, table)
    from hubtools.tokenization.files import check_tokenizer_vocab  # lazily: bytes on disk need no tokenizer code

    check_tokenizer_vocab(ckpt)
    target = Layout.parse(ckpt.layout).other
    key_in, key_out = target.other.value, target.value
    cast = dtype_code(dtype) if dtype is not None else None
    dequantizing = cast is not None and ckpt.params.quantization is not None
    params = replace(ckpt.params, quantization=None) if dequantizing else ckpt.params
    if target is Layout.NATIVE and params.quantization is not None:
        fp8.check_native_expressible(params, table.specs, source=str(source))
    steps: dict[str, Step] = {}
    for spec in table.specs:
        if dequantizing and spec.row.role is not Role.TENSOR:
            continue  # the scales are spent on their weights
        src = ckpt.tensors[getattr(spec, key_in)]
        out = PlannedTensor(getattr(spec, key_out), cast or src.code, spec.shape)
        scale = (
            fp8.weight_scale(ckpt.params, spec, key_in)
            if dequantizing and fp8.is_quantized(ckpt.params, spec)
            else None
        )
        steps[out.name] = Step(spec, src, out, target, ckpt.tensors[scale] if scale else None)
    planned = [s.out for s in steps.values()]
    if target is Layout.HF:
        planned = fuse_planned(
            planned, params.family.fusions(params), lambda n: ckpt.read_bytes(steps[n].source.segments).tobytes()
        )
        shards = plan_shards(planned, max_shard_size=max_shard_size, stem=HF_STEM)
        main_dtype = dtype_name(steps[table.specs[0].hf].out.code)
        hf = to_hf_config(params, dtype=main_dtype, overrides=overrides)
        return ConversionPlan(Layout.HF, params, tuple(shards), steps, hf.config, hf.generation, hf.rules)
    shards = plan_shards(planned, max_shard_size=max_shard_size, stem=NATIVE_STEM, single_name=NATIVE_SINGLE)
    return ConversionPlan(Layout.NATIVE, params, tuple(shards), steps, None, None)


def write_tokenizer(
    ckpt: Checkpoint, target: Layout, out: Path, chat_template: str, context_length: int | None = None
) -> list[str]:
    """The tokenizer files of the target layout (HF: tokenizer.json and friends; native: the kept file)."""
    from hubtools.tokenization.files import restore_native_tokenizer, write_hf_tokenizer

    if target is Layout.HF:
        if ckpt.tokenizer_file is None:
            return []
        return write_hf_tokenizer(  # image chunks only for a model with a vision encoder
            ckpt.tokenizer_file,
            out,
            chat_template=chat_template,
            model_max_length=context_length,
            images=ckpt.params.family.wraps_text,
        )
    restored = restore_native_tokenizer(ckpt.folder, out)
    return [restored.name] if restored is not None else []


def write_plan(
    ckpt: Checkpoint,
    conversion: ConversionPlan,
    out: Path,
    *,
    chat_template: str = "auto",
    progress: Progress | None = None,
) -> list[str]:
    """Write every file of the converted checkpoint into the (empty) folder `out`.

    The tokenizer is converted on a second thread while the tensor bytes stream (the copies run in the
    kernel without the GIL), so its CPU time hides behind the I/O.
    """
    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as hashing:
        context = (conversion.config or {}).get("max_position_embeddings")
        tokenizer = pool.submit(write_tokenizer, ckpt, conversion.target_layout, out, chat_template, context)
        written, digests = [], []
        for shard in conversion.shards:
            path, follow = out / shard.file, FollowingHash(out / shard.file, hashing)

            def fill(fd: int, t: PlannedTensor, path: Path = path, follow: FollowingHash = follow) -> None:
                for name in t.names:  # a fused tensor: its parts, back to back
                    write_step(ckpt, conversion.steps[name], fd, path)
                follow.upto(os.lseek(fd, 0, os.SEEK_CUR))  # the record's hash, on the second core
                if progress:
                    progress(t.nbytes)

            write_shard(path, shard, fill)
            written.append(shard.file)
            digests.append(follow.result())
        small = write_metadata(conversion, out) + tokenizer.result()  # while the last shard's hash catches up
        for done in digests:
            remember_sha256(*done.result())
        return written + small


def write_metadata(conversion: ConversionPlan, out: Path) -> list[str]:
    """The index and configs (HF), or params.json (native): everything but weights and tokenizer."""
    if conversion.target_layout is Layout.HF:
        write_index(out / INDEX, conversion.shards)
        _write_json(out / CONFIG, conversion.config)
        _write_json(out / GENERATION_CONFIG, conversion.generation)
        side = conversion.params.family.hf_side_files(conversion.params)  # a vision model's processor configs
        for name, data in side.items():
            _write_json(out / name, data)
        return [INDEX, CONFIG, GENERATION_CONFIG, *side]
    _write_json(out / PARAMS, to_native_params(conversion.params))
    return [PARAMS]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


@dataclass(frozen=True)
class ConversionResult:
    """What `convert` did, for the summary line and `--json`."""

    source: str
    destination: str
    source_layout: str
    target_layout: str
    architecture: str
    tensors: int
    copied_tensors: int
    bytes: int
    files: tuple[str, ...]
    rules: tuple[str, ...]
    seconds: float
    warnings: tuple[str, ...] = ()  # one line each: what the output lacks (the CLI prints them on stderr)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: Layout | str | None = None,
    dtype: Any = None,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    overrides: ConfigOverrides | None = None,
    chat_template: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
    check: Callable[[Checkpoint], None] | None = None,
) -> ConversionResult:
    """Convert a checkpoint folder native <-> HF, streaming and atomically.

    Args:
        to: "hf" or "native"; detected from SRC when None (a folder holding both needs it).
        dtype: cast every tensor, e.g. torch.float16 or "float16" (default: keep each tensor's dtype, which
            makes round trips bit-exact and needs no torch at all).
        check: called with the opened checkpoint before anything is written (e.g. a recipe's validation).
        force: replace an existing DST holding only the files hubtools recorded there, unchanged
            (`hubtools.destination`); anything else at DST is refused before any work, never deleted.

    Returns:
        A `ConversionResult` (its `warnings`: what the output lacks, e.g. a tokenizer). On any failure (or
        Ctrl-C) before the final rename nothing was written (an old DST is untouched); a Ctrl-C after it
        raises `OutputInPlace`: the new DST is complete.

    Raises:
        InvalidValueError: a dtype other than bfloat16, float16 or float32, a malformed size or chat
            template (`check_convert_inputs`, before anything is opened).
        HubtoolsError subclasses naming the file or tensor at fault.

    Example:
        >>> result = convert("mixtral-native", "mixtral-hf")  # doctest: +SKIP
        >>> result.target_layout, result.files[-1]  # doctest: +SKIP
        ('hf', 'tokenizer_config.json')
    """
    started = time.monotonic()
    src, dst = Path(src), Path(dst)
    inputs = check_convert_inputs(
        src, dst, to=to, dtype=dtype, max_shard_size=max_shard_size, chat_template=chat_template, force=force
    )
    with open_checkpoint(src, layout=inputs.source_layout) as ckpt:
        if check:
            check(ckpt)
        conversion = plan(ckpt, dtype=inputs.dtype, max_shard_size=inputs.max_shard_size, overrides=overrides)
        warnings = conversion_warnings(ckpt, conversion.target_layout)
        with atomic_folder(dst, sources=(src,), force=force) as tmp:
            files = write_plan(ckpt, conversion, tmp, chat_template=inputs.chat_template, progress=progress)
    copies = sum(1 for s in conversion.steps.values() if s.is_copy)
    return ConversionResult(
        str(src),
        str(dst),
        conversion.source_layout.value,
        conversion.target_layout.value,
        conversion.params.architecture,
        len(conversion.steps),
        copies,
        conversion.total_bytes,
        tuple(files),
        conversion.rules,
        round(time.monotonic() - started, 3),
        warnings,
    )


@dataclass(frozen=True)
class ConvertInputs:
    """`convert`'s arguments once checked (`check_convert_inputs`)."""

    target: Layout | None
    dtype: DType | None
    max_shard_size: int
    chat_template: str = "auto"  # a `ChatTemplate` value

    @property
    def source_layout(self) -> Layout | None:
        return self.target.other if self.target is not None else None


def check_convert_inputs(
    src: Path,
    dst: Path,
    *,
    to: Layout | str | None = None,
    dtype: Any = None,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    chat_template: str = "auto",
    force: bool = False,
) -> ConvertInputs:
    """Every check of `convert`'s arguments that needs no tensor read: the CLI and the API both call it
    before any work.

    Raises:
        InvalidValueError: a dtype a release cannot ship, a malformed shard size or chat template.
        LayoutError: an unknown target layout, or a source already in it.
        DestinationError: see `check_destination`.
    """
    from hubtools.tokenization.choices import ChatTemplate  # lazily: bytes on disk need no tokenizer code

    target = Layout.parse(to) if to is not None else None
    checked = ConvertInputs(
        target,
        cast_dtype(dtype),
        byte_size(max_shard_size, name="max_shard_size"),
        ChatTemplate.parse(chat_template).value,
    )
    check_destination(dst, sources=(src,), force=force)
    if target is not None:
        check_not_in_target(src, target)
    return checked


def conversion_warnings(ckpt: Checkpoint, target: Layout) -> tuple[str, ...]:
    """What the output will lack that a user should hear about (one line each)."""
    if ckpt.tokenizer_file is None:
        return (
            f"{ckpt.folder}: no tokenizer file (tokenizer.model*, tekken*.json), so the {target.value} output has "
            "no tokenizer (copy it into the source and convert again)",
        )
    return ()
