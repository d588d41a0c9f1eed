"""transformers' own Pixtral vision tower and projector, run one piece at a time from an HF folder.

As `hf_forward` does for decoder layers: each piece (the stem: patch convolution and `ln_pre`; one encoder
layer; the projector) is built on the meta device from transformers' classes (`PixtralVisionModel`,
`PixtralAttentionLayer`, `Mistral3MultiModalProjector` / `LlavaMultiModalProjector`), filled with its
tensors read by HF name (the family says where they sit) and run, so only one layer is in memory.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch

from hubtools.model.family import Family
from hubtools.model.rows import Part

Reader = Callable[[str], torch.Tensor]


def _filled(module: torch.nn.Module, prefix: str, read: Reader) -> torch.nn.Module:
    state = {key: read(prefix + key) for key in module.state_dict()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


class HfVisionTower:
    """`stem(pixel_values, image_sizes)`, then `layer(h, i)` for each encoder layer, then `project(h)`.

    Args:
        config: transformers' wrapper config (`Mistral3Config` or `LlavaConfig`).
        family: the wrapper family (it names where the tensors sit).
    """

    def __init__(self, config: Any, family: Family, read: Reader) -> None:
        from transformers.models.pixtral import modeling_pixtral

        self.config, self.family, self.read = config, family, read
        self.modeling = modeling_pixtral
        self.vision = config.vision_config
        self.rotary = modeling_pixtral.PixtralVisionRotaryEmbedding(self.vision)
        self.mask: torch.Tensor | None = None
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self.image_sizes: torch.Tensor | None = None

    @torch.no_grad()
    def stem(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Padded images `[n, C, H, W]` and their sizes -> the tower's input `[1, patches, hidden]` (transformers'
        tower with no layers), with the 2-D rotary and block mask the layers use."""
        stem_config = copy.copy(self.vision)
        stem_config.num_hidden_layers = 0
        with torch.device("meta"):
            tower = self.modeling.PixtralVisionModel(stem_config)
        tower.patch_positional_embedding = self.rotary
        prefix = self.family.hf_vision_prefix(Part.VISION)
        state = {key: self.read(prefix + key) for key in tower.state_dict()}
        tower.load_state_dict(state, strict=True, assign=True)
        h = tower.eval()(pixel_values, image_sizes=image_sizes).last_hidden_state
        patch = self.vision.patch_size
        grids = [(int(size[0]) // patch, int(size[1]) // patch) for size in image_sizes]
        positions = torch.cat(
            [torch.cartesian_prod(torch.arange(rows), torch.arange(cols)) for rows, cols in grids]
        )  # (row, column) of each patch, row-major: what the tower builds internally
        self.rope = self.rotary(h, positions)
        self.mask = self.modeling.generate_block_attention_mask([r * c for r, c in grids], h)
        self.image_sizes = image_sizes
        return h

    @torch.no_grad()
    def layer(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """transformers' encoder layer `layer` (`PixtralAttentionLayer`) on `h [1, patches, hidden]`."""
        with torch.device("meta"):
            built = self.modeling.PixtralAttentionLayer(self.vision)
        module = _filled(built, self.family.hf_vision_prefix(Part.VISION, layer), self.read)
        return module(h, attention_mask=self.mask, position_embeddings=self.rope)  # type: ignore[no-any-return]

    @torch.no_grad()
    def project(self, h: torch.Tensor) -> torch.Tensor:
        """transformers' multimodal projector: the encoder's output -> image embeddings `[tokens, dim]`."""
        kind = self.config.model_type
        modeling = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
        projector_class = getattr(modeling, kind.capitalize() + "MultiModalProjector")
        with torch.device("meta"):
            module = projector_class(self.config)
        module = _filled(module, self.family.hf_vision_prefix(Part.PROJECTOR), self.read)
        if "image_sizes" in inspect.signature(module.forward).parameters:
            return module(h[0], self.image_sizes)  # type: ignore[no-any-return]
        return module(h[0])  # type: ignore[no-any-return]
