"""transformers' own Mistral / Mixtral modules, run one decoder layer at a time from an HF folder.

Each step instantiates the transformers module on the meta device (no allocation), fills it with that
layer's tensors read from the shards (`read(hf_name) -> Tensor` in the compute dtype) and runs it, so
only one layer's weights are in memory. transformers 5.x fuses experts at load time
(`conversion_mapping.py`, entry "mixtral": `.block_sparse_moe.` -> `.mlp.`, `experts.*.w1|w3` ->
`experts.gate_up_proj [E, 2I, H]` with w1 rows first, `experts.*.w2` -> `experts.down_proj [E, H, I]`);
`layer_state` builds the same fused tensors, copying one expert at a time into preallocated storage.
The tests check this path against `AutoModelForCausalLM.from_pretrained` (`whole_model_logits`).
"""

from __future__ import annotations

import gc
import importlib
import inspect
import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hubtools.errors import VerifyError

Reader = Callable[[str], torch.Tensor]
IMPLEMENTATION = "eager"  # attention and experts: the plain-torch paths, softmax in float32


def load_config(folder: Path) -> Any:
    """transformers' config for an HF folder (it accepts rope_theta or rope_parameters, torch_dtype or dtype).

    Raises:
        VerifyError: transformers cannot read config.json, or it is not Mistral / Mixtral.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            str(folder),
            local_files_only=True,
            attn_implementation=IMPLEMENTATION,
            experts_implementation=IMPLEMENTATION,
        )
    except MemoryError:
        raise
    except Exception as exc:  # OSError, ValueError, TypeError, its strict-dataclass validation errors...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise VerifyError(
            f"{folder / 'config.json'}: transformers cannot load it ({type(exc).__name__}: {first})"
        ) from None
    if config.model_type not in ("mistral", "mixtral"):
        raise VerifyError(
            f"{folder / 'config.json'}: model_type '{config.model_type}' (expected 'mistral' or 'mixtral')"
        )
    return config


def _mask_keywords(make_mask: Callable[..., Any], embeds: torch.Tensor) -> dict[str, Any]:
    """The embeddings and an empty KV cache under the names this transformers' mask builders take
    (5.x: `inputs_embeds`, `cache`; 4.x: `input_embeds`, `past_key_values`, and `cache_position`)."""
    names = inspect.signature(make_mask).parameters
    keywords = {
        "inputs_embeds" if "inputs_embeds" in names else "input_embeds": embeds,
        "cache" if "cache" in names else "past_key_values": None,
    }
    if "cache_position" in names:
        keywords["cache_position"] = torch.arange(embeds.shape[1])
    return keywords


def _module(config: Any, suffix: str) -> Any:
    kind = config.model_type
    modeling = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
    return getattr(modeling, kind.capitalize() + suffix)


def empty_fused_experts(config: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Uninitialised fused expert tensors of one layer, for `put_expert`."""
    experts, hidden, inter = config.num_local_experts, config.hidden_size, config.intermediate_size
    return {
        "mlp.experts.gate_up_proj": torch.empty(experts, 2 * inter, hidden, dtype=dtype),
        "mlp.experts.down_proj": torch.empty(experts, hidden, inter, dtype=dtype),
    }


EXPERT_NAME = re.compile(r"model\.layers\.\d+\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")


def put_expert(fused: dict[str, torch.Tensor], config: Any, name: str, tensor: torch.Tensor) -> bool:
    """Copy the checkpoint's expert tensor `name` into its place in `fused`; False if `name` is no expert."""
    match = EXPERT_NAME.fullmatch(name)
    if match is None:
        return False
    e, kind, inter = int(match[1]), match[2], config.intermediate_size
    if kind == "w2":
        fused["mlp.experts.down_proj"][e] = tensor
    else:
        rows = slice(None, inter) if kind == "w1" else slice(inter, None)
        fused["mlp.experts.gate_up_proj"][e, rows] = tensor
    return True


def _fused_experts(config: Any, prefix: str, read: Reader, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    fused = empty_fused_experts(config, dtype)
    for e in range(config.num_local_experts):
        for kind in ("w1", "w3", "w2"):
            name = f"{prefix}block_sparse_moe.experts.{e}.{kind}.weight"
            put_expert(fused, config, name, read(name))
    return fused


def layer_state(
    config: Any,
    layer: int,
    keys: list[str],
    read: Reader,
    dtype: torch.dtype,
    fused: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The decoder layer's state dict (its own key names) from the checkpoint's HF names.

    Args:
        fused: the layer's fused experts when already built (`put_expert`); else read here.
    """
    prefix = f"model.layers.{layer}."
    state: dict[str, torch.Tensor] = {}
    if "mlp.experts.gate_up_proj" in keys:
        state.update(fused if fused is not None else _fused_experts(config, prefix, read, dtype))
    for key in keys:
        if key not in state:
            stored = key.replace("mlp.", "block_sparse_moe.", 1) if config.model_type == "mixtral" else key
            state[key] = read(prefix + stored)
    return state


def build_layer(
    config: Any, layer: int, read: Reader, dtype: torch.dtype, fused: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """transformers' `MistralDecoderLayer` / `MixtralDecoderLayer` holding layer `layer`'s weights."""
    with torch.device("meta"):
        module = _module(config, "DecoderLayer")(config, layer)
    keys = list(module.state_dict())
    module.load_state_dict(layer_state(config, layer, keys, read, dtype, fused), strict=True, assign=True)
    return module.eval()


class LayeredModel:
    """The HF side of a layer-by-layer comparison: embed, then `layer(h, i)` for each i, then `head(h)`.

    Example:
        >>> m = LayeredModel(load_config(folder), ckpt_read, torch.float32)  # doctest: +SKIP
        >>> h = m.embed(tokens); h = m.layer(h, 0); logits = m.head(h)  # doctest: +SKIP
    """

    def __init__(self, config: Any, read: Reader, dtype: torch.dtype, *, positions: torch.Tensor | None = None) -> None:
        """`positions` `[seq]`: restarting at 0 for packed sequences (transformers' masks detect them); default
        0..seq-1."""
        self.config, self.read, self.dtype, self.positions = config, read, dtype, positions
        self.rotary = _module(config, "RotaryEmbedding")(config=config)
        self._cache: tuple[int, Any, Any] | None = None

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.read("model.embed_tokens.weight"))

    def _inputs(self, h: torch.Tensor) -> tuple[Any, Any, torch.Tensor]:
        if self._cache is None or self._cache[0] != h.shape[1]:
            from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

            positions = (self.positions if self.positions is not None else torch.arange(h.shape[1]))[None]
            make_mask = create_sliding_window_causal_mask if self.config.sliding_window else create_causal_mask
            mask = make_mask(
                config=self.config, attention_mask=None, position_ids=positions, **_mask_keywords(make_mask, h)
            )
            self._cache = (h.shape[1], mask, (self.rotary(h, positions), positions))
        _, mask, (rope, positions) = self._cache
        return mask, rope, positions

    @torch.no_grad()
    def layer(self, h: torch.Tensor, layer: int, fused: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Run decoder layer `layer` (its weights loaded now, released on return; `fused`: its experts)."""
        module = build_layer(self.config, layer, self.read, self.dtype, fused)
        mask, rope, positions = self._inputs(h)
        out = module(h, attention_mask=mask, position_ids=positions, position_embeddings=rope)
        alive = weakref.ref(module)
        del module
        if alive() is not None:  # held by a reference cycle: free the layer's weights now, not at some later GC
            gc.collect()
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def head(self, h: torch.Tensor) -> torch.Tensor:
        with torch.device("meta"):
            norm = _module(self.config, "RMSNorm")(self.config.hidden_size, eps=self.config.rms_norm_eps)
        norm.load_state_dict({"weight": self.read("model.norm.weight")}, assign=True)
        return F.linear(norm(h), self.read("lm_head.weight"))


@torch.no_grad()
def whole_model_logits(
    folder: Path,
    tokens: torch.Tensor,
    dtype: torch.dtype,
    *,
    attention: str | None = IMPLEMENTATION,
    experts: str | None = IMPLEMENTATION,
) -> torch.Tensor:
    """Logits from `AutoModelForCausalLM.from_pretrained` (the whole model in memory): the cross-check.

    Args:
        attention, experts: transformers implementations; None lets transformers pick (sdpa, grouped_mm).
    """
    from transformers import AutoModelForCausalLM

    chosen = {"attn_implementation": attention, "experts_implementation": experts}
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype, local_files_only=True, **{k: v for k, v in chosen.items() if v is not None}
    )
    return model(input_ids=tokens).logits
