"""The vision half of the one-pass logits check: synthetic images through both encoders, layer by layer.

The clean-room encoder on native names (the family's `vision_stem` / `vision_layer` / `vision_project`,
`hubtools.model.vision_forward`) and transformers' tower and projector (`hf_vision.HfVisionTower`) run as
the vision tensors stream in (stem, each encoder layer, projector), one layer in memory; the difference
after each stage is recorded. Their image embeddings then replace the embeddings of the `[IMG]` tokens of
one extra prompt (mistral-common's layout: a row of `[IMG]` per image-token row, `[IMG_BREAK]` after each,
`[IMG_END]` last), each side its own, as mistral-inference and transformers place them, and the text forward
compares the logits as for any model.
"""

from __future__ import annotations

from typing import Any

import torch

from hubtools.model.family import Getter, ModelParams
from hubtools.model.rows import PROJECTOR_UNIT, VISION_LAYER_UNIT, VISION_STEM_UNIT
from hubtools.model.vision import VisionParams
from hubtools.model.vision_forward import image_token_layout, patch_grids
from hubtools.verification.checks import VISION_PROJECTOR as PROJECTOR
from hubtools.verification.checks import VISION_STEM as STEM
from hubtools.verification.checks import LayerDiff
from hubtools.verification.hf_vision import HfVisionTower, Reader
from hubtools.verification.logits import Prompts

IMAGE_GRIDS = ((2, 3), (3, 2))  # each synthetic image's size in image tokens (rows, columns)
TEXT_AFTER = (1784, 1044, 5694)  # a few text tokens after the images (any ids below the vocabulary size)


def synthetic_images(vision: VisionParams, *, seed: int = 0) -> list[torch.Tensor]:
    """Fixed pseudo-random normalised images `[C, H, W]`, sized to `IMAGE_GRIDS` image tokens."""
    generator = torch.Generator().manual_seed(seed)
    side = vision.patch_size * vision.spatial_merge_size
    return [
        torch.randn(vision.num_channels, rows * side, cols * side, generator=generator) for rows, cols in IMAGE_GRIDS
    ]


def padded(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as transformers' image processor batches them: zero-padded to the largest, and their sizes."""
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    batch = torch.zeros(len(images), images[0].shape[0], height, width)
    for n, image in enumerate(images):
        batch[n, :, : image.shape[1], : image.shape[2]] = image
    return batch, torch.tensor([[i.shape[1], i.shape[2]] for i in images])


def with_image_prompt(
    prompts: Prompts, vision: VisionParams, vocab_size: int, bos: int = 1
) -> tuple[Prompts, torch.Tensor]:
    """`prompts` plus one sequence holding the synthetic images' tokens, and the mask of its `[IMG]` tokens
    in the packed row (only that sequence's: a random prompt may hold the id too)."""
    row = [bos]
    for rows, cols in IMAGE_GRIDS:
        row += image_token_layout(rows, cols, vision)
    row += [token % vocab_size for token in TEXT_AFTER]
    packed = prompts.pack()
    tokens = torch.cat([packed.tokens[0], torch.tensor(row)])[None]
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[0, packed.tokens.shape[1] :] = torch.tensor(row) == vision.image_token_id
    source = f"{prompts.source} and 1 conversation with {len(IMAGE_GRIDS)} synthetic images"
    return Prompts(tokens, (*prompts.lengths, len(row)), source, packed=True), mask


def vision_stage(unit: int) -> str:
    """A vision unit's name for progress messages."""
    if unit == VISION_STEM_UNIT:
        return "stem"
    return "projector" if unit == PROJECTOR_UNIT else f"layer {unit - VISION_LAYER_UNIT + 1}"


class VisionSides:
    """Both encoders advanced as the vision tensors arrive (`run(unit)`), then `place` on each side."""

    def __init__(self, config: Any, params: ModelParams, get: Getter, read: Reader, dtype: torch.dtype) -> None:
        self.params, self.family, self.get, self.dtype = params, params.family, get, dtype
        self.vision: VisionParams = params.option("vision")
        self.images = [i.to(dtype) for i in synthetic_images(self.vision)]
        self.grids = patch_grids(self.images, self.vision.patch_size)
        self.hf = HfVisionTower(config, params.family, read)
        self.h_ref: torch.Tensor | None = None
        self.h_hf: torch.Tensor | None = None
        self.diffs: list[LayerDiff] = []

    def run(self, unit: int) -> None:
        """Advance both sides by one vision unit (the stem, an encoder layer or the projector)."""
        family: Any = self.family
        if unit == VISION_STEM_UNIT:
            pixels, sizes = padded(self.images)
            self.h_ref = family.vision_stem(self.images, self.get, self.params)
            self.h_hf = self.hf.stem(pixels.to(self.dtype), sizes)[0]
            return self._record(STEM)
        assert self.h_ref is not None and self.h_hf is not None, "the stem comes first"
        if unit == PROJECTOR_UNIT:
            self.h_ref = family.vision_project(self.h_ref, self.get, self.params, self.grids)
            self.h_hf = self.hf.project(self.h_hf[None])
            return self._record(PROJECTOR)
        layer = unit - VISION_LAYER_UNIT
        self.h_ref = family.vision_layer(self.h_ref, layer, self.get, self.params, self.grids)
        self.h_hf = self.hf.layer(self.h_hf[None], layer)[0]
        self._record(layer)

    def _record(self, stage: int) -> None:
        assert self.h_ref is not None and self.h_hf is not None
        ref, hf = self.h_ref.double(), self.h_hf.double()
        delta = hf - ref
        self.diffs.append(LayerDiff(stage, float(delta.abs().max()), float(delta.norm() / ref.norm().clamp_min(1e-30))))

    def place(self, h_ref: torch.Tensor, h_hf: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each side's image embeddings at the `[IMG]` positions: the reference by index (mistral-inference),
        transformers by `masked_scatter` (as its model does)."""
        assert self.h_ref is not None and self.h_hf is not None, "the projector runs before the embedding"
        h_ref = h_ref.clone()
        h_ref[mask] = self.h_ref.to(h_ref.dtype)
        h_hf = h_hf.masked_scatter(mask[..., None], self.h_hf.to(h_hf.dtype))
        return h_ref, h_hf
