"""The quality of a quantized model on held-out text: mean KL(original || quantized), top-1 agreement and
perplexity, for the quantized folder as transformers loads it AND for plain round-to-nearest (RTN) of the
same weights with the same grid, so a report shows what calibration bought.

The original and the RTN model run on the clean-room reference forward (`verification.reference`, native
names, float32, one layer's weights at a time), the prompts packed in one row; the quantized model is
transformers' own, one prompt at a time. Perplexity is over each prompt's next tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hubtools.model.family import ModelParams
from hubtools.quantization.scheme import round_to_nearest
from hubtools.verification.logits import Prompts, logit_metrics
from hubtools.verification.reference import ReferenceModel

Getter = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class Quality:
    """One model's figures against the original on the held-out prompts."""

    mean_kl: float
    max_kl: float
    top1_agreement: float
    perplexity: float

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.__dict__.items()}


def perplexity(logits: torch.Tensor, prompts: Prompts) -> float:
    """exp(mean next-token NLL) over each packed prompt (`logits [1, n, vocab]`)."""
    nll, count, start = 0.0, 0, 0
    for length in prompts.lengths:
        if length > 1:
            logp = torch.log_softmax(logits[0, start : start + length - 1].double(), -1)
            target = prompts.tokens[0, start + 1 : start + length]
            nll -= float(logp.gather(-1, target[:, None]).sum())
            count += length - 1
        start += length
    return math.exp(nll / max(count, 1))


def measure(reference: torch.Tensor, logits: torch.Tensor, prompts: Prompts) -> Quality:
    """KL / top-1 of `logits` against `reference` and the perplexity of `logits` (both `[1, n, vocab]`)."""
    metrics = logit_metrics(reference, logits, prompts.valid)
    return Quality(metrics["mean_kl"], metrics["max_kl"], metrics["top1_agreement"], perplexity(logits, prompts))


@torch.no_grad()
def reference_logits(params: ModelParams, get: Getter, prompts: Prompts, *, rope_theta: float) -> torch.Tensor:
    """The clean-room forward on packed prompts, float32 logits `[1, n, vocab]`."""
    model = ReferenceModel(params, get, rope_theta=rope_theta, positions=prompts.positions)
    h = model.embed(prompts.tokens)
    for layer in range(params.n_layers):
        h = model.layer(h, layer)
    return model.head(h).float()


def rtn_getter(get: Getter, quantized: set[str], *, bits: int, group_size: int) -> Getter:
    """`get`, with the native tensors named in `quantized` rounded to the nearest grid point (RTN)."""

    def read(name: str) -> torch.Tensor:
        w = get(name)
        return round_to_nearest(w, bits, group_size)[0] if name in quantized else w

    return read


@torch.no_grad()
def transformers_logits(model: Any, prompts: Prompts) -> torch.Tensor:
    """A loaded transformers model's float32 logits, one prompt at a time, concatenated `[1, n, vocab]`."""
    rows, start = [], 0
    for length in prompts.lengths:
        ids = prompts.tokens[:, start : start + length]
        rows.append(model(input_ids=ids).logits.float())
        start += length
    return torch.cat(rows, dim=1)
