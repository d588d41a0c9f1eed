"""Pixtral: a Pixtral vision encoder and adapter around a text model (Pixtral 12B; `LlavaForConditionalGeneration`).

What differs from the text family it wraps: params.json's `vision_encoder` (`hubtools.model.vision`); the
text family is whichever one recognises the rest of params.json (Mistral for Pixtral 12B; any family that
registers itself), and this family delegates the text model to it. In HF names the text model sits under
`language_model.` (what transformers 5.x saves: `language_model.model.*`, `language_model.lm_head.*`),
the encoder under `vision_tower.` and the adapter under `multi_modal_projector.`. config.json nests the text
config (`text_config`) and the encoder's (`vision_config`). Tensors come in forward order: the encoder's
stem, its layers, the projector, then the text model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubtools.errors import ParamsError
from hubtools.families.mistral import LAYER_NUMBER, Mistral
from hubtools.model import fp8
from hubtools.model import vision as vis
from hubtools.model.family import Getter, ModelParams
from hubtools.model.rows import Fusion, GgufPiece, Part, Row, TensorSpec, expand
from hubtools.model.vision import VisionParams

if TYPE_CHECKING:
    import numpy as np
    import torch

HF_TEXT = "language_model."  # transformers' wrapper holds the text model's HF names under this prefix
HF_VISION, HF_PROJECTOR = "vision_tower.", "multi_modal_projector."
VISION_NAMES = ("vision_encoder.", "vision_language_adapter.", "patch_merger.", "pre_mm_projector_norm.",
                HF_VISION, HF_PROJECTOR)  # fmt: skip
FIELD = "vision_encoder"


def _prefixed(row: Row) -> Row:
    return replace(row, hf=HF_TEXT + row.hf)


class Pixtral(Mistral):
    name = "pixtral"
    architecture = "LlavaForConditionalGeneration"
    model_type = "llava"
    wraps_text = True
    hf_text_prefix = HF_TEXT
    gguf_architecture = "llama"  # llama.cpp's converter: LlamaModel for the text model (its mmproj: `clip`)
    patch_merger = False  # whether the HF class has one (and the projector norm)
    params_fields = frozenset({FIELD})  # the rest of params.json is the text family's

    # -- recognition and fields ------------------------------------------------------------------------------

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        return FIELD in raw and not self._merges(raw[FIELD])

    @staticmethod
    def _merges(vision: Any) -> bool:
        """Whether a `vision_encoder` object asks for a patch merger (Mistral3) rather than none (Llava)."""
        if not isinstance(vision, dict):
            return False
        return vision.get("mm_projector_id") == vis.PATCH_MERGE or vision.get("add_pre_mm_projector_layer_norm") is True

    def parse_params(
        self, raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None = None
    ) -> ModelParams:
        from hubtools.families import family_of_params

        if FIELD not in raw:
            raise ParamsError(f"{source}: missing field '{(names or {}).get(FIELD, FIELD)}'")
        vision = vis.parse_vision(raw[FIELD], source=source, field=(names or {}).get(FIELD, FIELD))
        if vision.has_patch_merger != self.patch_merger:
            has = "has" if self.patch_merger else "has no"
            raise ParamsError(f"{source}: a {self.architecture} {has} patch merger; '{FIELD}' says otherwise")
        text_raw = {k: v for k, v in raw.items() if k != FIELD}
        text = family_of_params(text_raw, source=source).parse_params(text_raw, source=source, names=names)
        return self._wrapped(text, vision)

    def _wrapped(self, text: ModelParams, vision: VisionParams) -> ModelParams:
        """The wrapper's params: the text model's fields and own options (engines that read an option find it
        here too), the text params themselves and the vision encoder's."""
        return replace(text, family=self, options=(*text.options, ("text", text), ("vision", vision)))

    def text(self, params: ModelParams) -> ModelParams:
        """The text model's params (its own family's)."""
        text: ModelParams = params.option("text")
        return text

    def vision(self, params: ModelParams) -> VisionParams:
        vision: VisionParams = params.option("vision")
        return vision

    def params_json(self, params: ModelParams) -> dict[str, Any]:
        text = self.text(params)
        return {**text.family.params_json(text), FIELD: self.vision(params).to_native()}

    def config_fields(self, params: ModelParams) -> dict[str, Any]:
        text = self.text(params)
        return text.family.config_fields(text)

    def outer_config(self, params: ModelParams, config: dict[str, Any]) -> dict[str, Any]:
        text = self.text(params)
        text_config = text.family.outer_config(text, dict(config))
        top = {key: text_config.pop(key) for key in ("torch_dtype", fp8.HF_FIELD) if key in text_config}
        text_config.pop("architectures", None)
        vision = self.vision(params)
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "text_config": text_config,
            "vision_config": vis.vision_config(vision),
            "image_token_index": vision.image_token_id,
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -1,
            "multimodal_projector_bias": vision.adapter_bias,
            "tie_word_embeddings": text_config.get("tie_word_embeddings", False),
            **self.wrapper_fields(vision),
            **top,
        }

    def hf_side_files(self, params: ModelParams) -> dict[str, dict[str, Any]]:
        return vis.processor_files(self.vision(params))

    def with_hf_side_files(self, params: ModelParams, folder: Path) -> ModelParams:
        return self._wrapped(self.text(params), vis.vision_from_side_files(self.vision(params), folder))

    def wrapper_fields(self, vision: VisionParams) -> dict[str, Any]:
        """The wrapper config's own keys (Llava: every patch a feature, one image token per feature)."""
        return {"vision_feature_select_strategy": "full", "image_seq_length": 1}

    def config_to_params(self, config: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, str]]:
        from hubtools.families import family_of_config

        text_config = config.get("text_config")
        if not isinstance(text_config, dict):
            raise ParamsError(f"{source}: missing field text_config (an object)")
        where = f"{source} text_config"
        raw, keys = family_of_config(text_config, source=where).config_to_params(text_config, source=where)
        keys = {native: f"text_config.{key}" for native, key in keys.items()}
        if config.get(fp8.HF_FIELD) is not None:  # transformers reads it at the wrapper's top level
            raw[fp8.NATIVE_FIELD], keys[fp8.NATIVE_FIELD] = (
                fp8.parse_hf(config[fp8.HF_FIELD], source=source),
                fp8.HF_FIELD,
            )
        raw[FIELD] = {**vis.vision_from_config(config, source=source), **self.merger_from_config(config)}
        keys[FIELD] = "vision_config"
        return raw, keys

    def merger_from_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The `vision_encoder` fields of the projector, from the wrapper config."""
        return {}

    # -- the name table ---------------------------------------------------------------------------------------

    def dims(self, params: ModelParams) -> dict[str, int]:
        text = self.text(params)
        return {**text.family.dims(text), **vis.vision_dims(self.vision(params)), "dim": params.dim}

    def tensor_specs(self, params: ModelParams) -> list[TensorSpec]:
        vision, dims, text = self.vision(params), self.dims(params), self.text(params)
        specs = list(expand(vis.encoder_stem_rows(), dims, Part.VISION))
        for layer in range(vision.num_hidden_layers):
            specs.extend(expand(vis.ENCODER_LAYER, dims, Part.VISION, layer))
        specs.extend(expand(vis.projector_rows(vision), dims, Part.PROJECTOR))
        specs.extend(replace(s, hf=HF_TEXT + s.hf, row=_prefixed(s.row)) for s in text.family.tensor_specs(text))
        return specs

    def embedding_rows(self, params: ModelParams) -> tuple[Row, ...]:
        text = self.text(params)
        return tuple(map(_prefixed, text.family.embedding_rows(text)))

    def layer_rows(self, params: ModelParams, layer: int) -> tuple[Row, ...]:
        text = self.text(params)
        return tuple(map(_prefixed, text.family.layer_rows(text, layer)))

    def expert_rows(self, params: ModelParams, layer: int) -> tuple[Row, ...]:
        text = self.text(params)
        return tuple(map(_prefixed, text.family.expert_rows(text, layer)))

    def head_rows(self, params: ModelParams) -> tuple[Row, ...]:
        text = self.text(params)
        return tuple(map(_prefixed, text.family.head_rows(text)))

    def shared_rows(self, params: ModelParams) -> tuple[Row, ...]:
        text = self.text(params)
        return tuple(map(_prefixed, text.family.shared_rows(text)))

    def fp8_linear(self, params: ModelParams, spec: TensorSpec) -> bool:
        """The text model's rule; the encoder and projector stay unquantized (the FP8 releases keep them)."""
        text = self.text(params)
        return spec.part not in (Part.VISION, Part.PROJECTOR) and text.family.fp8_linear(text, spec)

    def fp8_kept_modules(self, params: ModelParams) -> tuple[str, ...]:
        return fp8.PUBLISHED_KEPT

    def quantize_kept_modules(self, params: ModelParams) -> tuple[str, ...]:
        """The head, the encoder and the projector (patch merger included) stay unquantized: only the text
        layers are calibrated (llm-compressor's recipe for these models ignores the same)."""
        return ("lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*")

    def fusions(self, params: ModelParams) -> tuple[Fusion, ...]:
        text = self.text(params)
        return tuple(f.prefixed(HF_TEXT) for f in text.family.fusions(text))

    def experts(self, params: ModelParams, layer: int) -> int:
        text = self.text(params)
        return text.family.experts(text, layer)

    def gguf_pieces(self, params: ModelParams, spec: TensorSpec) -> tuple[GgufPiece, ...]:
        text = self.text(params)
        return () if spec.part in (Part.VISION, Part.PROJECTOR) else text.family.gguf_pieces(text, spec)

    def gguf_cut(self, params: ModelParams, piece: str, tensor: np.ndarray) -> np.ndarray:
        text = self.text(params)
        return text.family.gguf_cut(text, piece, tensor)

    def gguf_join(self, params: ModelParams, pieces: Mapping[str, np.ndarray]) -> np.ndarray:
        text = self.text(params)
        return text.family.gguf_join(text, pieces)

    def check_counts(self, params: ModelParams, names: Iterable[str], *, source: str) -> None:
        names = list(names)
        text = self.text(params)
        text.family.check_counts(text, [n for n in names if not n.startswith(VISION_NAMES)], source=source)
        found = {int(m[1]) for n in names if n.startswith(VISION_NAMES) and (m := LAYER_NUMBER.search(n))}
        count = self.vision(params).num_hidden_layers
        if count != len(found) or (found and max(found) + 1 != count):
            held = f"{len(found)} (indices {min(found)}..{max(found)})" if found else "none"
            raise ParamsError(f"{source}: vision_encoder.num_hidden_layers is {count}, but the weights hold: {held}")

    def indices(self, names: Iterable[str]) -> tuple[set[int], set[int]]:
        return super().indices(n for n in names if not n.startswith(VISION_NAMES))

    # The text forward is the text family's (`ModelParams.text`); the encoder's blocks:

    def vision_stem(self, images: list[torch.Tensor], get: Getter, params: ModelParams) -> torch.Tensor:
        """Images `[C, H, W]` -> the encoder's input sequence `[patches, hidden]`."""
        from hubtools.model import vision_forward

        return vision_forward.stem(images, get, self.vision(params))

    def vision_layer(
        self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams, grids: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Encoder layer `layer` over every image's patches (`grids`: each image's patch rows and columns)."""
        from hubtools.model import vision_forward

        vision = self.vision(params)
        cis, mask = vision_forward.rotary_2d(grids, vision), vision_forward.block_mask(grids)
        return vision_forward.encoder_layer(h, layer, get, vision, cis, mask)

    def vision_project(
        self, h: torch.Tensor, get: Getter, params: ModelParams, grids: list[tuple[int, int]]
    ) -> torch.Tensor:
        """The encoder's output -> image embeddings in the text width, one per image token."""
        from hubtools.model import vision_forward

        return vision_forward.project(h, grids, get, self.vision(params))

    def hf_vision_prefix(self, part: Part, layer: int | None = None) -> str:
        """Where transformers' vision modules keep their keys: the tower, one encoder layer, the projector."""
        if part is Part.PROJECTOR:
            return HF_PROJECTOR
        return HF_VISION if layer is None else vis.HF_LAYER.format(layer=layer)


FAMILY = Pixtral()
