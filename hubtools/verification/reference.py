"""The clean-room reference forward on NATIVE tensor names and native rotary: each family's own blocks.

The operations are `hubtools.model.ops` (mistral-inference's semantics); the blocks that name the weights
are the family's (`hubtools.families`). It runs layer by layer: `get(native_name) -> Tensor` loads one
tensor on demand (already in the compute dtype), so only one layer's weights (for MoE: one expert's) need
to be in memory at a time. Hidden states are `[batch, seq, dim]`; sequences are right-padded, which a
causal mask makes harmless for the real positions, or packed in one row with positions restarting at 0
for each (the attention mask then keeps each within itself).
"""

from __future__ import annotations

import torch

from hubtools.model.family import Getter, ModelParams


class ReferenceModel:
    """One side of a layer-by-layer forward: `embed(tokens)`, then `layer(h, i)` for each i, then `head(h)`.

    Args:
        get: loads a native tensor by name, in the compute dtype.
        rope_theta: the rotary base; explicit because params.json may omit it.
        positions: `[seq]` positions (restarting at 0 for packed sequences); default 0..seq-1.
    """

    def __init__(
        self, params: ModelParams, get: Getter, *, rope_theta: float, positions: torch.Tensor | None = None
    ) -> None:
        self.params, self.get, self.rope_theta, self.positions = params.text, get, rope_theta, positions
        self.family = self.params.family  # a vision model's text model: the wrapper runs its encoder apart

    def _positions(self, h: torch.Tensor) -> torch.Tensor:
        return self.positions if self.positions is not None else torch.arange(h.shape[1])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids `[batch, seq]` -> hidden states `[batch, seq, dim]`."""
        return self.family.embed(tokens, self.get)

    def attention_block(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """The first half of decoder block `layer`: `h + attn(norm(h))`."""
        return self.family.attention_block(h, layer, self.get, self.params, self._positions(h), self.rope_theta)

    def layer(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Decoder block `layer`."""
        return self.family.layer_forward(h, layer, self.get, self.params, self._positions(h), self.rope_theta)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and output projection: hidden states -> logits `[batch, seq, vocab]`."""
        return self.family.head(h, self.get, self.params)


@torch.no_grad()
def forward(tokens: torch.Tensor, get: Getter, params: ModelParams, *, rope_theta: float) -> torch.Tensor:
    """The whole model, still one layer's weights at a time: token ids `[batch, seq]` -> logits.

    Example:
        >>> from hubtools.testing import synthetic_tensors, tiny_params
        >>> p = tiny_params(vocab_size=50)
        >>> w = dict(synthetic_tensors(p, dtype=torch.float32))
        >>> forward(torch.tensor([[1, 2, 3]]), w.__getitem__, p, rope_theta=1e6).shape
        torch.Size([1, 3, 50])
    """
    model = ReferenceModel(params, get, rope_theta=rope_theta)
    h = model.embed(tokens)
    for layer in range(params.n_layers):
        h = model.layer(h, layer)
    return model.head(h)
