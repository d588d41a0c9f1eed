"""Routing near-ties in a bfloat16 verify: a token whose top-k experts differ between the two sides only on a
near tie takes the reference's experts on the HF side too, and is reported.

In bfloat16 the hidden state that reaches a router differs between the reference and transformers by
rounding (about one ulp); where a token's k-th and (k+1)-th expert scores are that close, the two sides pick
different experts, the token's output moves by a whole expert's share, and through attention every later
token moves too: `verify --dtype bfloat16` then fails a correct conversion (README, Mistral 4). So, per MoE
layer, transformers' router output is compared with the reference's choice before its experts run: a token
whose expert set differs, and whose two choices score within `tolerance` of the top score on transformers'
own scores, runs with the reference's experts and weights, and is named in the report. A choice that differs
by more (a wrong router, group count, expert order) is left as transformers made it, and fails as before;
faults after the choice (experts, their scales, the routed scale) are untouched by this. float32: off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class NearTies:
    """The near-tie routing flips of one verify run: `hook` per MoE layer, `found` what was followed."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.found: list[str] = []

    def hook(self, layer: int, chosen: torch.Tensor, weights: torch.Tensor) -> Callable[..., Any] | None:
        """A forward hook for transformers' router of `layer` (output: logits, weights, indices, tokens as
        rows) given the reference's `chosen` experts and their `weights` `[tokens, k]`; None when off."""
        if self.tolerance <= 0:
            return None

        def follow(module: Any, args: Any, output: Any) -> Any:
            logits, hf_weights, hf_chosen = output
            if hf_chosen.shape != chosen.shape:
                return None
            differ = (hf_chosen.sort(-1).values != chosen.sort(-1).values).any(-1)
            if not differ.any():
                return None
            scores = logits.float().softmax(-1)
            gap = (scores.gather(1, hf_chosen).sum(-1) - scores.gather(1, chosen).sum(-1)).abs()
            relative = gap / scores.amax(-1)
            tied = differ & (relative <= self.tolerance)
            if not tied.any():
                return None
            tokens = tied.nonzero()[:, 0]
            for token in tokens.tolist():
                self.found.append(
                    f"layer {layer} token {token}: experts {sorted(hf_chosen[token].tolist())} -> "
                    f"{sorted(chosen[token].tolist())} (scores {100 * float(relative[token]):.2f}% apart)"
                )
            hf_chosen, hf_weights = hf_chosen.clone(), hf_weights.clone()
            hf_chosen[tokens] = chosen[tokens].to(hf_chosen.dtype)
            hf_weights[tokens] = weights[tokens].to(hf_weights.dtype)
            return logits, hf_weights, hf_chosen

        return follow
