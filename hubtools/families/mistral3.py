"""Mistral3: Pixtral with a patch merger (Mistral Small 3.1 / 3.2, Magistral Small, Devstral Small;
`Mistral3ForConditionalGeneration`).

What differs from `pixtral`: the projector normalises the encoder's output (`pre_mm_projector_norm`), merges
each `spatial_merge_size`-square block of an image's patches into one vector (`patch_merger`) and has no
adapter bias in the released models; config.json's `spatial_merge_size`. The text family is whichever one
recognises the rest of params.json (Mistral for Small 3.x; Ministral 3 and Mistral 4 where registered).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hubtools.families.mistral4 import Mistral4
from hubtools.families.pixtral import FIELD, Pixtral
from hubtools.model.family import ModelParams
from hubtools.model.vision import PATCH_MERGE, VisionParams


class Mistral3(Pixtral):
    name = "mistral3"
    architecture = "Mistral3ForConditionalGeneration"
    model_type = "mistral3"
    gguf_architecture = "mistral3"  # llama.cpp's converter: Mistral3Model for the text model, whatever it wraps
    patch_merger = True

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        return FIELD in raw and self._merges(raw[FIELD])

    def gguf_text_architecture(self, params: ModelParams) -> str:
        """`mistral3` (llama.cpp's `Ministral3Model`), or `mistral4` around a Mistral 4 (its `Mistral4Model`)."""
        text = self.text(params)
        return text.family.gguf_architecture if isinstance(text.family, Mistral4) else self.gguf_architecture

    def wrapper_fields(self, vision: VisionParams) -> dict[str, Any]:
        return {"spatial_merge_size": vision.spatial_merge_size}

    def merger_from_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            "spatial_merge_size": config.get("spatial_merge_size", 2),
            "mm_projector_id": PATCH_MERGE,
            "add_pre_mm_projector_layer_norm": True,
        }


FAMILY = Mistral3()
