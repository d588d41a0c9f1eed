"""The logits check of `hubtools verify`: the clean-room reference on the native checkpoint against
transformers' own decoder layers on the HF folder, advanced together one layer at a time.

Each side loads only the layer it is running (the reference: one expert at a time), so a model larger
than RAM can be verified; the hidden-state difference after every layer shows where a divergence starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubtools.checkpoint.reader import Checkpoint
from hubtools.model.params import ModelParams
from hubtools.verification import reference
from hubtools.verification.hf_forward import LayeredModel

logger = logging.getLogger(__name__)

PROMPT_TEXTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Mixtral 8x7B is a sparse mixture of experts: each token is routed to two of eight feed-forward blocks, "
    "so only a fraction of the weights is used for each token.",
    "1, 1, 2, 3, 5, 8, 13, 21,",
)
RANDOM_LENGTHS = (16, 24, 33, 9)
THRESHOLDS: dict[str, dict[str, float]] = {  # keys starting with "top1" are floors, the others ceilings
    "float32": {"max_abs_dlogit": 1e-4, "top1_agreement": 1.0},
    "bfloat16": {"mean_kl": 1e-3, "top1_near_tie_agreement": 0.99},
}
# A top-1 flip to a token whose reference logit is within this of the reference maximum is a near-tie:
# bfloat16 compute moves logits by up to ~0.1, so such flips say nothing about the conversion.
NEAR_TIE = {"float32": 0.0, "bfloat16": 0.1}


@dataclass(frozen=True)
class Prompts:
    """Right-padded token ids `[batch, seq]`, the real length of each row, and where they came from."""

    tokens: torch.Tensor
    lengths: tuple[int, ...]
    source: str

    @property
    def valid(self) -> torch.Tensor:
        return torch.arange(self.tokens.shape[1])[None, :] < torch.tensor(self.lengths)[:, None]


@dataclass(frozen=True)
class LayerDiff:
    layer: int
    max_abs_dh: float
    rel_dh: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "max_abs_dh": self.max_abs_dh, "rel_dh": self.rel_dh}


@dataclass(frozen=True)
class LogitsCheck:
    """Reference vs transformers logits. `skipped`: not run on purpose; `error`: could not run (fails)."""

    passed: bool
    dtype: str
    max_abs_dlogit: float | None = None
    nmse: float | None = None
    mean_kl: float | None = None
    max_kl: float | None = None
    top1_agreement: float | None = None
    top1_near_tie_agreement: float | None = None
    near_tie: float = 0.0
    layers: tuple[LayerDiff, ...] = ()
    sequences: int = 0
    tokens: int = 0
    prompts: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        keys = (
            "passed",
            "dtype",
            "max_abs_dlogit",
            "nmse",
            "mean_kl",
            "max_kl",
            "top1_agreement",
            "top1_near_tie_agreement",
            "near_tie",
            "sequences",
            "tokens",
            "prompts",
            "thresholds",
        )
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        out["layers"] = [d.to_dict() for d in self.layers]
        if self.skipped:
            out["passed"] = None  # not run
        out.update({k: getattr(self, k) for k in ("skipped", "error") if getattr(self, k)})
        return out


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


def prompt_tokens(tokenizer_file: Path | None, vocab_size: int) -> Prompts:
    """The built-in texts encoded by the native tokenizer (mistral-common, with BOS), else random ids."""
    if tokenizer_file is None:
        return random_prompts(vocab_size)
    try:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        raw = MistralTokenizer.from_file(str(tokenizer_file)).instruct_tokenizer.tokenizer
        rows = [raw.encode(text, bos=True, eos=False) for text in PROMPT_TEXTS]
    except Exception as exc:  # any failure of the third-party tokenizer: fall back, and say so
        logger.warning("%s: cannot encode the prompts (%s); using random token ids", tokenizer_file, exc)
        return random_prompts(vocab_size)
    if max(max(r) for r in rows) >= vocab_size:
        return random_prompts(vocab_size)
    return _pad(rows, f"{len(rows)} built-in texts encoded with {tokenizer_file.name}")


def layer_diff(layer: int, h_ref: torch.Tensor, h_hf: torch.Tensor, valid: torch.Tensor) -> LayerDiff:
    """Max |dh| and ||dh|| / ||h_ref|| over the real (unpadded) positions."""
    ref, hf = h_ref[valid].double(), h_hf[valid].double()
    delta = hf - ref
    return LayerDiff(layer, float(delta.abs().max()), float(delta.norm() / ref.norm().clamp_min(1e-30)))


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
        max_abs = max(max_abs, float((r - h).abs().max()))
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


def passes(metrics: dict[str, float], thresholds: dict[str, float]) -> bool:
    """Thresholds named top1* are floors; every other threshold is a ceiling."""
    return all(metrics[k] >= v if k.startswith("top1") else metrics[k] <= v for k, v in thresholds.items())


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
) -> tuple[torch.Tensor, torch.Tensor, list[LayerDiff]]:
    """Both forwards in lockstep, one layer's weights at a time on each side.

    Returns:
        Reference logits, transformers logits, and the hidden-state difference after every layer.
    """

    def get(name: str) -> torch.Tensor:
        return native.read(name).to(dtype)

    def read(name: str) -> torch.Tensor:
        return hf.read(name).to(dtype)

    tokens, valid = prompts.tokens, prompts.valid
    positions = torch.arange(tokens.shape[1])
    model = LayeredModel(config, read, dtype)
    with torch.no_grad():
        h_ref, h_hf = reference.embed(tokens, get), model.embed(tokens)
        diffs = []
        for layer in range(params.n_layers):
            progress(f"logits: layer {layer + 1}/{params.n_layers}")
            h_ref = reference.layer_forward(h_ref, layer, get, params, positions, rope_theta=rope_theta)
            h_hf = model.layer(h_hf, layer)
            diffs.append(layer_diff(layer, h_ref, h_hf, valid))
        return reference.head(h_ref, get, params).float(), model.head(h_hf).float(), diffs


def compare_logits(
    native: Checkpoint,
    hf: Checkpoint,
    config: Any,
    *,
    dtype: torch.dtype,
    rope_theta: float,
    progress: Callable[[str], None],
) -> LogitsCheck:
    """Run both forwards on the built-in prompts and judge the logits by the thresholds for `dtype`."""
    prompts = prompt_tokens(native.tokenizer_file, native.params.vocab_size)
    ref, out, diffs = run_layered(
        native, hf, config, native.params, prompts, dtype=dtype, rope_theta=rope_theta, progress=progress
    )
    return judge_logits(ref, out, diffs, prompts, dtype=dtype)


def judge_logits(
    ref: torch.Tensor, out: torch.Tensor, diffs: list[LayerDiff], prompts: Prompts, *, dtype: torch.dtype
) -> LogitsCheck:
    """The logits check from both sides' logits and the per-layer differences (thresholds for `dtype`)."""
    name = str(dtype).removeprefix("torch.")
    metrics = logit_metrics(ref, out, prompts.valid, near_tie=NEAR_TIE[name])
    return LogitsCheck(
        passed=passes(metrics, THRESHOLDS[name]),
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
    )
