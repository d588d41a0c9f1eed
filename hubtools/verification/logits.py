"""The logits check of `hubtools verify`: the clean-room reference on the native checkpoint against
transformers' own decoder layers on the HF folder, advanced together one layer at a time.

Each side loads only the layer it is running (the reference: one expert at a time), so a model larger
than RAM can be verified; the hidden-state difference after every layer shows where a divergence starts.

A check cannot pass on what it cannot measure: a NaN or infinity in either side's hidden states or
logits (a negative norm_eps, weights cast to float16 that overflow) fails the check and is named in
`LogitsCheck.nonfinite`. In the JSON report every non-finite number is written as null (JSON has no
NaN), so `nonfinite` is where to read what happened.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from hubtools.checkpoint.reader import Checkpoint
from hubtools.checkpoint.safetensors_format import dtype_name
from hubtools.model.family import ModelParams
from hubtools.verification import reference
from hubtools.verification.checks import (
    NEAR_TIE,
    ROUTING_NEAR_TIE,
    THRESHOLDS,
    LayerDiff,
    LogitsCheck,
    Threshold,
)
from hubtools.verification.hf_forward import LayeredModel
from hubtools.verification.near_ties import NearTies

logger = logging.getLogger(__name__)

PROMPT_TEXTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Mixtral 8x7B is a sparse mixture of experts: each token is routed to two of eight feed-forward blocks, "
    "so only a fraction of the weights is used for each token.",
    "1, 1, 2, 3, 5, 8, 13, 21,",
)
RANDOM_LENGTHS = (16, 24, 33, 9)


@dataclass(frozen=True)
class Prompts:
    """Token ids, the real length of each sequence, and where they came from.

    Right-padded `[batch, seq]`, or (`packed`) every sequence back to back in one row `[1, sum(lengths)]`
    with positions restarting at 0 for each: no compute on padding (the built-in prompts are 43% padding),
    attention kept within each sequence by a block-diagonal causal mask, as mistral-inference batches.

    Example:
        >>> p = Prompts(torch.tensor([[1, 2, 3], [4, 5, 0]]), (3, 2), "example").pack()
        >>> p.tokens.tolist(), p.positions.tolist()
        ([[1, 2, 3, 4, 5]], [0, 1, 2, 0, 1])
    """

    tokens: torch.Tensor
    lengths: tuple[int, ...]
    source: str
    packed: bool = False

    @property
    def valid(self) -> torch.Tensor:
        """Which entries of `tokens` are real (not padding)."""
        if self.packed:
            return torch.ones(self.tokens.shape, dtype=torch.bool)
        return torch.arange(self.tokens.shape[1])[None, :] < torch.tensor(self.lengths)[:, None]

    @property
    def positions(self) -> torch.Tensor:
        """The position of each column `[seq]`: 0..seq-1, or restarting at 0 for each packed sequence."""
        if self.packed:
            return torch.cat([torch.arange(n) for n in self.lengths])
        return torch.arange(self.tokens.shape[1])

    def pack(self) -> Prompts:
        """The same sequences back to back in one row (see the class docstring)."""
        if self.packed:
            return self
        rows = [self.tokens[i, :n] for i, n in enumerate(self.lengths)]
        return Prompts(torch.cat(rows)[None], self.lengths, self.source, packed=True)


def _pad(rows: list[list[int]], source: str) -> Prompts:
    tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return Prompts(tokens, tuple(map(len, rows)), source)


def random_prompts(vocab_size: int, *, seed: int = 0) -> Prompts:
    """Fixed pseudo-random token ids (the same for every run), for checkpoints without a tokenizer."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in RANDOM_LENGTHS]
    return _pad(rows, f"{len(rows)} fixed random sequences (seed {seed})")


def prompt_tokens(tokenizer_file: Path | None, vocab_size: int, texts: Sequence[str] = ()) -> Prompts:
    """The built-in texts and `texts` (`verify --prompts`) encoded by the native tokenizer (mistral-common,
    with BOS), else random ids."""
    if tokenizer_file is None:
        return random_prompts(vocab_size)
    try:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        from hubtools.tokenization.files import tokenizer_vocab_size

        tokenizer_vocab_size(tokenizer_file)  # bounded and validated before mistral-common reads it
        raw = MistralTokenizer.from_file(str(tokenizer_file)).instruct_tokenizer.tokenizer
        rows = [raw.encode(text, bos=True, eos=False) for text in (*PROMPT_TEXTS, *texts)]
    except Exception as exc:  # any failure of the third-party tokenizer: fall back, and say so
        logger.warning("%s: cannot encode the prompts (%s); using random token ids", tokenizer_file, exc)
        return random_prompts(vocab_size)
    if max(max(r) for r in rows) >= vocab_size:
        return random_prompts(vocab_size)
    extra = f" and {len(texts)} --prompts texts" if texts else ""
    return _pad(rows, f"{len(PROMPT_TEXTS)} built-in texts{extra} encoded with {tokenizer_file.name}")


def layer_diff(layer: int, h_ref: torch.Tensor, h_hf: torch.Tensor, valid: torch.Tensor) -> LayerDiff:
    """Max |dh| and ||dh|| / ||h_ref|| over the real (unpadded) positions."""
    ref, hf = h_ref[valid].double(), h_hf[valid].double()
    delta = hf - ref
    return LayerDiff(layer, float(delta.abs().max()), float(delta.norm() / ref.norm().clamp_min(1e-30)))


def nonfinite_count(t: torch.Tensor, valid: torch.Tensor) -> int:
    """How many NaN or infinite values `t` holds at the real (unpadded) positions."""
    return int((~torch.isfinite(t[valid])).sum())


def note_nonfinite(
    found: dict[str, str],
    stage: str,
    ref: torch.Tensor,
    hf: torch.Tensor,
    valid: torch.Tensor,
    sides: tuple[str, str] = ("reference", "transformers"),
) -> None:
    """Record, for each side without a finding yet, the first stage at which it holds NaN or inf."""
    for side, t in zip(sides, (ref, hf), strict=True):
        n = nonfinite_count(t, valid)
        if n and side not in found:
            found[side] = f"{side} {stage}: {n} of {int(valid.sum()) * t.shape[-1]} values are NaN or inf"


class Side(Protocol):
    """One model of a layer-by-layer comparison (`ReferenceModel`, `LayeredModel`)."""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor: ...
    def layer(self, h: torch.Tensor, layer: int) -> torch.Tensor: ...
    def head(self, h: torch.Tensor) -> torch.Tensor: ...


class Divergence:
    """What a layer-by-layer comparison records: the difference after each layer, and the first stage at which
    each side holds NaN or inf. Fed by `run_sides` and by the one-pass `Lockstep`."""

    def __init__(self, valid: torch.Tensor, sides: tuple[str, str] = ("reference", "transformers")) -> None:
        self.valid, self.sides = valid, sides
        self.diffs: list[LayerDiff] = []
        self.found: dict[str, str] = {}

    def embeddings(self, a: torch.Tensor, b: torch.Tensor) -> None:
        note_nonfinite(self.found, "embeddings", a, b, self.valid, self.sides)

    def layer(self, layer: int, a: torch.Tensor, b: torch.Tensor) -> None:
        self.diffs.append(layer_diff(layer, a, b, self.valid))
        note_nonfinite(self.found, f"hidden state after layer {layer}", a, b, self.valid, self.sides)

    def logits(self, a: torch.Tensor, b: torch.Tensor) -> None:
        note_nonfinite(self.found, "logits", a, b, self.valid, self.sides)

    @property
    def nonfinite(self) -> tuple[str, ...]:
        return tuple(self.found.values())


@torch.no_grad()
def run_sides(
    a: Side, b: Side, tokens: torch.Tensor, n_layers: int, track: Divergence, progress: Callable[[str], None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """THE layer-by-layer loop: both sides embedded, advanced one layer at a time, and headed; float32 logits."""
    h_a, h_b = a.embed(tokens), b.embed(tokens)
    track.embeddings(h_a, h_b)
    for layer in range(n_layers):
        progress(f"logits: layer {layer + 1}/{n_layers}")
        h_a, h_b = a.layer(h_a, layer), b.layer(h_b, layer)
        track.layer(layer, h_a, h_b)
    logits = a.head(h_a).float(), b.head(h_b).float()
    track.logits(*logits)
    return logits


def logit_metrics(
    ref: torch.Tensor, hf: torch.Tensor, valid: torch.Tensor, *, near_tie: float = 0.0
) -> dict[str, float]:
    """max |dlogit|, NMSE, mean / max KL(ref || hf) and top-1 agreement over the real positions.

    `top1_near_tie_agreement` also counts a flip to a token whose reference logit is within `near_tie`
    of the reference maximum.
    """
    max_abs, err, norm, kls, same, close = 0.0, 0.0, 0.0, [], 0, 0
    for row in range(ref.shape[0]):  # one sequence at a time: [seq, vocab] in float64 stays small
        r, h = ref[row][valid[row]].double(), hf[row][valid[row]].double()
        row_max = float((r - h).abs().max())
        max_abs = row_max if math.isnan(row_max) else max(max_abs, row_max)  # max(0.0, nan) would be 0.0
        err, norm = err + float(((r - h) ** 2).sum()), norm + float((r**2).sum())
        log_r, log_h = torch.log_softmax(r, -1), torch.log_softmax(h, -1)
        kls.append((log_r.exp() * (log_r - log_h)).sum(-1))
        same += int((r.argmax(-1) == h.argmax(-1)).sum())
        close += int((r.gather(-1, h.argmax(-1, keepdim=True))[:, 0] >= r.max(-1).values - near_tie).sum())
    kl = torch.cat(kls).clamp_min(0.0)
    return {
        "max_abs_dlogit": max_abs,
        "nmse": err / max(norm, 1e-30),
        "mean_kl": float(kl.mean()),
        "max_kl": float(kl.max()),
        "top1_agreement": same / kl.numel(),
        "top1_near_tie_agreement": close / kl.numel(),
    }


def passes(metrics: dict[str, float], thresholds: tuple[Threshold, ...]) -> bool:
    """Every threshold holds (a NaN or missing metric never passes)."""
    return all(t.holds(metrics.get(t.metric)) for t in thresholds)


def run_layered(
    native: Checkpoint,
    hf: Checkpoint,
    config: Any,
    params: ModelParams,
    prompts: Prompts,
    *,
    dtype: torch.dtype,
    rope_theta: float,
    progress: Callable[[str], None],
    near_ties: NearTies | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[LayerDiff], tuple[str, ...]]:
    """Both forwards in lockstep, one layer's weights at a time on each side (`near_ties`: the routing near-ties
    transformers' side follows, as verify's one pass does; default: none).

    Returns:
        Reference logits, transformers logits, the hidden-state difference after every layer, and
        where each side first held NaN or inf (empty when both stayed finite).
    """

    def get(name: str) -> torch.Tensor:
        return native.read(name).to(dtype)

    def read(name: str) -> torch.Tensor:
        return hf.read(name).to(dtype)

    near_ties = near_ties or NearTies(0.0)
    positions = prompts.positions
    ref = _RoutedReference(reference.ReferenceModel(params, get, rope_theta=rope_theta, positions=positions))
    model = _FollowingModel(LayeredModel(config, read, dtype, positions=positions), ref, near_ties)
    track = Divergence(prompts.valid)
    ref_logits, hf_logits = run_sides(ref, model, prompts.tokens, params.n_layers, track, progress)
    return ref_logits, hf_logits, track.diffs, track.nonfinite


class _RoutedReference:
    """The reference, its MoE layers run as verify's one pass runs them, keeping each layer's routing."""

    def __init__(self, model: reference.ReferenceModel) -> None:
        self.model, self.routing = model, None

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.embed(tokens)

    def layer(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        model, family = self.model, self.model.family
        if family.experts(model.params, layer) == 0:
            self.routing = None
            return model.layer(h, layer)
        self.routing = family.route(model.attention_block(h, layer), layer, model.get, model.params)
        for expert in range(family.experts(model.params, layer)):
            family.add_expert(self.routing, layer, expert, model.get)
        return family.routed_output(self.routing)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(h)


class _FollowingModel:
    """transformers' layers, each MoE router following the reference's choice on a near tie (`near_ties`)."""

    def __init__(self, model: LayeredModel, ref: _RoutedReference, near_ties: NearTies) -> None:
        self.model, self.ref, self.near_ties = model, ref, near_ties

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.embed(tokens)

    def layer(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        routing = self.ref.routing  # run_sides runs the reference's layer first
        hook = self.near_ties.hook(layer, routing.chosen, routing.weights) if routing is not None else None
        return self.model.layer(h, layer, None, hook)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(h)


def compare_logits(
    native: Checkpoint,
    hf: Checkpoint,
    config: Any,
    *,
    dtype: torch.dtype,
    rope_theta: float,
    progress: Callable[[str], None],
    texts: Sequence[str] = (),
) -> LogitsCheck:
    """Run both forwards on the built-in prompts (and `texts`) and judge the logits by the thresholds for `dtype`."""
    prompts = prompt_tokens(native.tokenizer_file, native.params.vocab_size, texts).pack()
    near_ties = NearTies(ROUTING_NEAR_TIE[dtype_name(dtype)])
    ref, out, diffs, nonfinite = run_layered(
        native, hf, config, native.params, prompts, dtype=dtype, rope_theta=rope_theta, progress=progress,
        near_ties=near_ties,
    )  # fmt: skip
    check = judge_logits(ref, out, diffs, prompts, dtype=dtype, nonfinite=nonfinite)
    return replace(check, routing_near_ties=tuple(near_ties.found))


def judge_logits(
    ref: torch.Tensor,
    out: torch.Tensor,
    diffs: list[LayerDiff],
    prompts: Prompts,
    *,
    dtype: torch.dtype,
    nonfinite: tuple[str, ...] | None = None,
) -> LogitsCheck:
    """The logits check from both sides' logits and the per-layer differences (thresholds for `dtype`).

    `nonfinite` names where each side first held NaN or inf; when not given, the logits themselves are checked.
    """
    name = dtype_name(dtype)
    if nonfinite is None:
        found: dict[str, str] = {}
        note_nonfinite(found, "logits", ref, out, prompts.valid)
        nonfinite = tuple(found.values())
    metrics = logit_metrics(ref, out, prompts.valid, near_tie=NEAR_TIE[name])
    return LogitsCheck(
        passed=passes(metrics, THRESHOLDS[name]) and not nonfinite,
        dtype=name,
        near_tie=NEAR_TIE[name],
        max_abs_dlogit=metrics["max_abs_dlogit"],
        nmse=metrics["nmse"],
        mean_kl=metrics["mean_kl"],
        max_kl=metrics["max_kl"],
        top1_agreement=metrics["top1_agreement"],
        top1_near_tie_agreement=metrics["top1_near_tie_agreement"],
        layers=tuple(diffs),
        sequences=len(prompts.lengths),
        tokens=sum(prompts.lengths),
        prompts=prompts.source,
        thresholds=THRESHOLDS[name],
        nonfinite=nonfinite,
    )
