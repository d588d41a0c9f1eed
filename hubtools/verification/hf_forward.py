"""transformers' own decoder layers, run one at a time from an HF folder (the HF side of verify).

Each step instantiates the transformers module on the meta device (no allocation), fills it with that
layer's tensors read from the shards (`read(hf_name) -> Tensor` in the compute dtype; the family maps
transformers' keys to the checkpoint's names, fusing a MoE layer's experts as transformers 5.x does at
load time) and runs it, so only one layer's weights are in memory. The tests check this path against
`AutoModelForCausalLM.from_pretrained` (`whole_model_logits`).
"""

from __future__ import annotations

import gc
import importlib
import inspect
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hubtools.errors import ParamsError, VerifyError
from hubtools.families import family_of_config, known_families
from hubtools.model.family import Family

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
    types = list(dict.fromkeys(f.model_type for f in known_families()))
    if config.model_type not in types:
        expected = " or ".join(f"'{t}'" for t in types)
        raise VerifyError(f"{folder / 'config.json'}: model_type '{config.model_type}' (expected {expected})")
    return config


def config_family(config: Any) -> Family:
    """The family of a transformers config.

    Raises:
        VerifyError: no family, or several, recognise it.
    """
    try:
        return family_of_config(config.to_dict())
    except ParamsError as exc:
        raise VerifyError(str(exc)) from None


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


def build_layer(
    config: Any,
    layer: int,
    read: Reader,
    dtype: torch.dtype,
    fused: dict[str, torch.Tensor] | None = None,
    family: Family | None = None,
) -> nn.Module:
    """transformers' decoder layer (`MistralDecoderLayer`, ...) holding layer `layer`'s weights."""
    family = family or config_family(config)
    with torch.device("meta"):
        module = _module(config, "DecoderLayer")(config, layer)
    keys = list(module.state_dict())
    state = family.hf_layer_state(config, layer, keys, read, dtype, fused)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def _under(prefix: str, read: Reader) -> Reader:
    return lambda name: read(prefix + name)


class LayeredModel:
    """The HF side of a layer-by-layer comparison: embed, then `layer(h, i)` for each i, then `head(h)`.

    Example:
        >>> m = LayeredModel(load_config(folder), ckpt_read, torch.float32)  # doctest: +SKIP
        >>> h = m.embed(tokens); h = m.layer(h, 0); logits = m.head(h)  # doctest: +SKIP
    """

    def __init__(self, config: Any, read: Reader, dtype: torch.dtype, *, positions: torch.Tensor | None = None) -> None:
        """`positions` `[seq]`: restarting at 0 for packed sequences (transformers' masks detect them); default
        0..seq-1."""
        outer = config_family(config)
        if outer.wraps_text:  # a vision model: its text model, whose HF names sit under the wrapper's prefix
            config, prefix = config.get_text_config(), outer.hf_text_prefix
            read = _under(prefix, read)
        self.config, self.read, self.dtype, self.positions = config, read, dtype, positions
        self.family = config_family(config)
        self.rotary = _module(config, "RotaryEmbedding")(config=config)
        self._cache: tuple[int, Any, Any] | None = None

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.family.hf_embed(tokens, self.read)

    def _inputs(self, h: torch.Tensor, layer: int) -> tuple[Any, Any, torch.Tensor]:
        """The attention mask of `layer`'s kind, the rotary (cos, sin) and the positions, built once per length.

        A config with `layer_types` (Ministral) gets a full and a sliding mask, each layer its kind's, as its
        model builds them; the others one mask, sliding when `sliding_window` is set.
        """
        if self._cache is None or self._cache[0] != h.shape[1]:
            from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

            positions = (self.positions if self.positions is not None else torch.arange(h.shape[1]))[None]
            builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
            kinds = set(getattr(self.config, "layer_types", None) or ())
            if not kinds:
                kinds = {"sliding_attention" if self.config.sliding_window else "full_attention"}
            masks = {
                kind: builders[kind](
                    config=self.config, attention_mask=None, position_ids=positions, **_mask_keywords(builders[kind], h)
                )
                for kind in kinds
            }
            self._cache = (h.shape[1], masks, (self.rotary(h, positions), positions))
        _, masks, (rope, positions) = self._cache
        kind = self.config.layer_types[layer] if getattr(self.config, "layer_types", None) else next(iter(masks))
        return masks[kind], rope, positions

    @torch.no_grad()
    def layer(
        self,
        h: torch.Tensor,
        layer: int,
        fused: dict[str, torch.Tensor] | None = None,
        router_hook: Callable[..., Any] | None = None,
    ) -> torch.Tensor:
        """Run decoder layer `layer` (its weights loaded now, released on return; `fused`: its experts;
        `router_hook`: a forward hook on its router, `verification.near_ties`)."""
        module = build_layer(self.config, layer, self.read, self.dtype, fused, self.family)
        if router_hook is not None and self.family.hf_router is not None:
            module.get_submodule(self.family.hf_router).register_forward_hook(router_hook)
        mask, rope, positions = self._inputs(h, layer)
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
        weight, output = self.family.hf_head_weights(self.read, self.config)
        norm.load_state_dict({"weight": weight}, assign=True)
        return F.linear(norm(h), output)


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
