"""One-pass checks: the bit-exact comparison and both forwards fed from the same read of each tensor.

`OnePass.feed(spec, native, hf)` takes one tensor pair as it is read (native source bytes and the
converted tensor), compares them bit for bit against `to_hf(transform, native)`, and keeps them until
their unit is complete (the embedding, one decoder layer, or the final norm + output); each complete
unit advances both forwards (the clean-room reference on the native tensors, transformers' decoder layer
on the converted ones) and is then dropped. Memory is one layer of each side; the hidden states are
carried from unit to unit. The results are the same `TensorsCheck` and `LogitsCheck` that `verify`
reports, computed with the same operations, so the numbers are identical to a two-pass run.

Where the time goes, and what keeps it down: the reads map the page cache instead of copying into fresh
memory (`Checkpoint.map_bytes`); tensors are compared as int64 words; the prompts are packed into one row
(no forward on padding); each layer's fused experts and compute-dtype casts reuse the previous layer's
memory (`CastPool`), so after the first layer no new memory is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hubtools.checkpoint.reader import Checkpoint
from hubtools.checkpoint.safetensors_format import dtype_name
from hubtools.errors import VerifyError
from hubtools.model import fp8
from hubtools.model.family import ModelParams
from hubtools.model.names import NameTable, Part, TensorSpec
from hubtools.model.rows import Role
from hubtools.model.transforms import to_hf
from hubtools.verification import reference
from hubtools.verification.casts import cast_damage
from hubtools.verification.checks import ROUTING_NEAR_TIE, TensorsCheck
from hubtools.verification.fp8_weights import forward_weights, read_scales
from hubtools.verification.hf_forward import LayeredModel
from hubtools.verification.logits import (
    Divergence,
    LogitsCheck,
    Prompts,
    judge_logits,
    prompt_tokens,
)
from hubtools.verification.near_ties import NearTies
from hubtools.verification.structure import size_mismatches


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _words(t: torch.Tensor) -> torch.Tensor:
    """The bytes of `t` as the widest integers that tile them (comparing int64 is ~4x faster than uint8)."""
    raw = _bits(t)
    for word in (torch.int64, torch.int32, torch.int16):
        if raw.numel() % word.itemsize == 0:
            return raw.view(word)
    return raw


def _difference(expected: torch.Tensor, actual: torch.Tensor) -> dict[str, Any]:
    if actual.dtype != expected.dtype:
        return {
            "dtype": dtype_name(actual.dtype),
            "expected_dtype": dtype_name(expected.dtype),
        }
    differ = _bits(expected).view(-1, expected.element_size()).ne(_bits(actual).view(-1, actual.element_size()))
    delta = (expected.float() - actual.float()).abs()
    return {"elements": int(differ.any(-1).sum()), "of": expected.numel(), "max_abs": float(delta.nan_to_num().max())}


class TensorTally:
    """The tensor check, one pair at a time (what `verify`'s tensors row reports): bit-exact against the
    source cast to the HF dtype, and that cast held to the value rule of `verification.casts`."""

    def __init__(self, table: NameTable, params: ModelParams) -> None:
        self.table, self.params = table, params
        self.compared, self.mismatched, self.differences, self.casts = 0, [], {}, set()  # type: ignore[var-annotated]

    def check(
        self, spec: TensorSpec, native: torch.Tensor, hf: torch.Tensor, scale: torch.Tensor | None = None
    ) -> bool:
        """Compare `hf` with `to_hf(native)` (cast to the HF dtype first); True when bit-identical and the
        cast keeps the values (`verification.casts`: no integer type, no overflow, no flushed values).
        An FP8 `native` weight that HF holds in another dtype is first dequantized with its `scale`."""
        if scale is not None and hf.dtype != native.dtype:
            self.casts.add(f"float8_e4m3fn * scale -> {dtype_name(hf.dtype)} (the FP8 rule)")
            native = fp8.dequantize(native, scale, hf.dtype)
        expected = to_hf(spec.transform, native, self.params)
        damage = None
        if native.dtype != hf.dtype:
            self.casts.add(f"{dtype_name(native.dtype)} -> {dtype_name(hf.dtype)}")
            cast = expected.to(hf.dtype)
            damage = cast_damage(expected, cast)
            expected = cast
        self.compared += 1
        if damage:  # the cast loses values (see verification.casts): bit-equal to it, still wrong
            self.mismatched.append(spec.hf)
            self.differences[spec.hf] = damage
            return False
        if hf.dtype == expected.dtype and torch.equal(_words(hf), _words(expected)):
            return True
        self.mismatched.append(spec.hf)
        self.differences[spec.hf] = _difference(expected, hf)
        return False

    def result(self) -> TensorsCheck:
        expected = len(self.table.specs)
        notes = [f"native tensors cast {c} (round to nearest even) before comparing" for c in sorted(self.casts)]
        if self.compared < expected:
            notes.append(f"{expected - self.compared} tensor(s) missing or misshapen on a side (see structure)")
        return TensorsCheck(
            not self.mismatched and self.compared == expected,
            self.compared,
            expected,
            tuple(self.mismatched),
            self.differences,
            tuple(notes),
        )


class CastPool:
    """Casts to the compute dtype into buffers reused from layer to layer (one per tensor role).

    A float32 check of a bfloat16 model casts every weight; fresh memory for each cast costs a page fault
    per 4 KiB on first touch, more than the cast itself. A layer's tensor reuses the buffer of the same
    tensor in the previous layer (or expert); the forwards use each cast before casting the next tensor of
    the same role, so a buffer is never overwritten while in use. Tensors outside the layers are cast fresh.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.buffers: dict[tuple[Hashable, torch.Size], torch.Tensor] = {}

    def cast(self, key: Hashable | None, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` in the compute dtype, in the buffer of role `key` (None: outside the layers, cast fresh)."""
        if tensor.dtype == self.dtype:
            return tensor
        if key is None:
            return tensor.to(self.dtype)
        buffer = self.buffers.get((key, tensor.shape))
        if buffer is None:
            buffer = self.buffers[(key, tensor.shape)] = torch.empty(tensor.shape, dtype=self.dtype)
        return buffer.copy_(tensor)


def role(spec: TensorSpec | None, side: str) -> Hashable | None:
    """The `CastPool` key of a tensor: its side and family row for a layer's tensors, else None."""
    return (side, spec.row) if spec is not None and spec.part is Part.LAYER else None


class Lockstep:
    """Both forwards advanced as tensors arrive (see the module docstring).

    An MoE layer streams on both sides: once its attention tensors, norms and router have arrived, the
    reference runs attention and routing; each expert then joins the reference's sum as soon as its three
    tensors are in (in expert order, as the family's feed-forward adds them) and is dropped, while on
    the HF side each expert is copied into the layer's fused tensors as it arrives. Memory is the fused
    experts of one layer plus one expert, as in a two-pass `verify`.
    """

    def __init__(
        self,
        config: Any,
        params: ModelParams,
        prompts: Prompts,
        *,
        dtype: torch.dtype,
        rope_theta: float,
        progress: Callable[[str], None],
    ) -> None:
        self.config, self.params, self.dtype = config, params.text, dtype  # the text model's (a wrapper's inner)
        self.text_config = getattr(config, "text_config", None) or config
        self.family, self.progress = params.text.family, progress
        self.vision, self.image_mask = None, None
        if params.family.wraps_text:  # a vision model: its encoders first, then the text with images in it
            from hubtools.verification.vision_pass import VisionSides, with_image_prompt

            prompts, self.image_mask = with_image_prompt(prompts, params.option("vision"), params.vocab_size)
            self.vision = VisionSides(config, params, self._get, self._read, dtype)
        self.prompts = prompts.pack()
        self.native: dict[str, torch.Tensor] = {}
        self.hf: dict[str, torch.Tensor] = {}
        self.need: dict[int, int] = {}
        self.front: dict[int, int] = {}  # per layer: tensors before the experts (attention, norms, router)
        self.table = NameTable(params)  # every tensor, a vision model's encoder and projector included
        self.expert_names: dict[tuple[int, int], list[str]] = {}  # (layer, expert) -> its native names
        for spec in self.table.specs:
            if spec.row.role is not Role.TENSOR:
                continue  # FP8 scales reach the forwards inside their dequantized weights
            self.need[spec.unit] = self.need.get(spec.unit, 0) + 1
            if spec.expert is None:
                self.front[spec.unit] = self.front.get(spec.unit, 0) + 1
            else:
                self.expert_names.setdefault((spec.unit, spec.expert), []).append(spec.native)
        shared = params.family.shared_rows(params)  # kept to the end (a tied head uses the embedding again)
        self.keep_native = {s.native for s in self.table.specs if s.row in shared}
        self.keep_hf = {s.hf for s in self.table.specs if s.row in shared}
        self.pool = CastPool(dtype)
        self.positions = self.prompts.positions
        self.model = LayeredModel(config, self._read, dtype, positions=self.positions)
        self.reference = reference.ReferenceModel(
            self.params, self._get, rope_theta=rope_theta, positions=self.positions
        )
        self.h_ref: torch.Tensor | None = None
        self.h_hf: torch.Tensor | None = None
        self.moe: Any = None  # the family's routing state of the MoE layer in progress
        self.fused: dict[str, torch.Tensor] | None = None  # the current layer's experts (transformers' layout)
        self.experts: dict[str, torch.Tensor] | None = None  # their storage, reused by every layer
        self.track = Divergence(self.prompts.valid)
        self.near_ties = NearTies(ROUTING_NEAR_TIE[dtype_name(dtype)])
        self.logits: tuple[torch.Tensor, torch.Tensor] | None = None

    def feed(self, spec: TensorSpec, native: torch.Tensor, hf: torch.Tensor) -> None:
        """Take one pair (FP8 weights already dequantized; scales ignored); advance whatever it completes."""
        if spec.row.role is not Role.TENSOR:
            return
        unit = spec.unit
        self.native[spec.native] = native
        streamed = spec.part is Part.LAYER and self.family.experts(self.params, unit) > 0
        if not (streamed and self._put_expert(spec, hf)):
            self.hf[spec.hf] = hf
        self.need[unit] -= 1
        self.front[unit] -= spec.expert is None
        with torch.no_grad():
            if streamed:
                self._stream_moe(unit)
            if self.need[unit] == 0:
                self._run(unit)
                for side, keep in ((self.native, self.keep_native), (self.hf, self.keep_hf)):
                    for name in [n for n in side if n not in keep]:
                        del side[name]

    def _put_expert(self, spec: TensorSpec, tensor: torch.Tensor) -> bool:
        if spec.expert is None:
            return False
        if self.fused is None:
            if self.experts is None:
                self.experts = self.family.empty_fused_experts(self.text_config, self.dtype)
            self.fused = self.experts
        return self.family.put_expert(self.fused, self.text_config, spec, tensor)

    def _stream_moe(self, layer: int) -> None:
        """Attention and routing once the layer's front is in, then each complete expert in order."""
        if self.moe is None and self.front[layer] == 0:
            assert self.h_ref is not None, "units arrive in order: embedding first"
            h_mid = self.reference.attention_block(self.h_ref, layer)
            self.moe = self.family.route(h_mid, layer, self._get, self.params)
        while self.moe is not None and self.moe.next_expert < self.family.experts(self.params, layer):
            names = self.expert_names[(layer, self.moe.next_expert)]
            if not all(n in self.native for n in names):
                return
            self.family.add_expert(self.moe, layer, self.moe.next_expert, self._get)
            for n in names:
                del self.native[n]

    def _get(self, name: str) -> torch.Tensor:
        return self.pool.cast(role(self.table.by_native.get(name), "native"), self.native[name])

    def _read(self, name: str) -> torch.Tensor:
        return self.pool.cast(role(self.table.by_hf.get(name), "hf"), self.hf[name])

    def _run(self, unit: int) -> None:
        if unit < -1:  # the vision encoder's stem, layers and projector
            assert self.vision is not None, "only a vision model has units before the embedding"
            from hubtools.verification.vision_pass import vision_stage

            self.progress(f"logits: vision {vision_stage(unit)}")
            self.vision.run(unit)
            return
        if unit == -1:
            tokens = self.prompts.tokens
            self.h_ref, self.h_hf = self.reference.embed(tokens), self.model.embed(tokens)
            if self.vision is not None and self.image_mask is not None:
                self.h_ref, self.h_hf = self.vision.place(self.h_ref, self.h_hf, self.image_mask)
            self.track.embeddings(self.h_ref, self.h_hf)
            return
        assert self.h_ref is not None and self.h_hf is not None, "units arrive in order: embedding first"
        if unit < self.params.n_layers:
            self.progress(f"logits: layer {unit + 1}/{self.params.n_layers}")
            if self.moe is not None:
                self.h_ref = self.family.routed_output(self.moe)
            else:
                self.h_ref = self.reference.layer(self.h_ref, unit)
            hook = self.near_ties.hook(unit, self.moe.chosen, self.moe.weights) if self.moe is not None else None
            self.h_hf = self.model.layer(self.h_hf, unit, self.fused, hook)
            self.moe, self.fused = None, None
            self.track.layer(unit, self.h_ref, self.h_hf)
            return
        self.logits = (
            self.reference.head(self.h_ref).float(),
            self.model.head(self.h_hf).float(),
        )
        self.track.logits(*self.logits)

    def result(self) -> LogitsCheck:
        name = str(self.dtype).removeprefix("torch.")
        if self.logits is None:
            return LogitsCheck(False, name, error="the forward did not reach the output (tensors missing)")
        check = judge_logits(
            *self.logits, self.track.diffs, self.prompts, dtype=self.dtype, nonfinite=self.track.nonfinite
        )
        check = replace(check, routing_near_ties=tuple(self.near_ties.found))
        return replace(check, vision=tuple(self.vision.diffs)) if self.vision is not None else check


def one_pass(
    native: Checkpoint,
    hf: Checkpoint,
    hf_folder: Path,
    table: NameTable,
    ready: bool,
    *,
    dtype: torch.dtype,
    rope_theta: float,
    enabled: bool,
    progress: Callable[[str], None],
    texts: tuple[str, ...] = (),
    audit_config: dict[str, Any] | None = None,
    hf_table: NameTable | None = None,
) -> tuple[TensorsCheck, LogitsCheck]:
    """`verify`'s tensors and logits checks from one read of each tensor on each side.

    Pairs missing or misshapen on a side are skipped (the structure check names them); the forward runs
    only when `ready` (every pair present), `enabled`, and config.json (`audit_config`, when given) sizes
    the modules as params.json does. `texts` join the built-in prompts. `hf_table` is the HF side's (without
    FP8 scales when the conversion dequantized them).
    """
    name = dtype_name(dtype)
    hf_table = hf_table or table
    tally = TensorTally(hf_table, native.params)
    lockstep, error = None, None
    if not enabled:
        skipped: str | None = "logits check disabled (--no-logits)"
    else:
        skipped = None
        sizes = size_mismatches(audit_config, native.params) if audit_config is not None else []
        if sizes:
            error = f"config.json disagrees with params.json on {', '.join(sizes)} (see structure)"
        else:
            lockstep, error = _lockstep(
                native, hf_folder, ready, dtype=dtype, rope_theta=rope_theta, progress=progress, texts=texts
            )
    for i, spec in enumerate(table.specs):
        if spec.hf not in hf_table.by_hf:
            continue  # a scale the dequantized HF side spent on its weight
        src, dst = native.tensors.get(spec.native), hf.tensors.get(spec.hf)
        if src is None or dst is None or src.shape != spec.shape or dst.shape != spec.shape:
            continue
        if i + 1 < len(table.specs):  # cold checkpoints: the next pair's reads overlap this pair's work
            native.prefetch(table.specs[i + 1].native)
            hf.prefetch(table.specs[i + 1].hf)
        if i % 50 == 0:
            progress(f"tensors: {i}/{len(table.specs)}")
        a, b = native.read(spec.native), hf.read(spec.hf)
        scales = read_scales(native, hf, spec, hf_table.params)
        tally.check(spec, a, b, scales.native if scales else None)
        if lockstep is not None and error is None:
            try:
                lockstep.feed(spec, *forward_weights(a, b, scales))
            except RuntimeError as exc:  # transformers refusing the weights for this config (see structure)
                error = f"transformers cannot run the HF model: {str(exc).splitlines()[0]}"
    if skipped:
        return tally.result(), LogitsCheck(True, name, skipped=skipped)
    if error or lockstep is None:
        return tally.result(), LogitsCheck(False, name, error=error or "no forward ran")
    return tally.result(), lockstep.result()


def _lockstep(
    native: Checkpoint,
    hf_folder: Path,
    ready: bool,
    *,
    dtype: torch.dtype,
    rope_theta: float,
    progress: Callable[[str], None],
    texts: tuple[str, ...] = (),
) -> tuple[Lockstep | None, str | None]:
    if not ready:
        return None, "missing or misshapen tensors (see structure) prevent a forward"
    from hubtools.verification.hf_forward import load_config

    try:
        config = load_config(hf_folder)
    except VerifyError as exc:
        return None, str(exc)
    prompts = prompt_tokens(native.tokenizer_file, native.params.vocab_size, texts)
    return Lockstep(config, native.params, prompts, dtype=dtype, rope_theta=rope_theta, progress=progress), None
