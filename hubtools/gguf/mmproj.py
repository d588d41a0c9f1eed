"""Metadata of a vision projector GGUF (llama.cpp's `mmproj`, architecture `clip`): the keys llama.cpp's converter
writes with `--mmproj` for Pixtral and Mistral3 (`MmprojModel.set_gguf_parameters` + `LlavaVisionModel`'s), in its
order, from the config.json hubtools writes (or reads) and the image processor's mean and std.

The converter reads the HF folder: `vision_config` (sizes; `layer_norm_eps`, absent, is transformers' fixed
1e-5), the text model's `hidden_size` (the projection width), the wrapper's `spatial_merge_size` (Mistral3 only)
and `image_mean` / `image_std` from preprocessor_config.json (processor_config.json's `image_processor` merged
over it). It writes no `[IMG_BREAK]` embedding for these folders (its filter drops every `language_model.` tensor
before it could take one), and neither does hubtools.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from hubtools.errors import ParamsError
from hubtools.filenames import PREPROCESSOR_CONFIG, PROCESSOR_CONFIG
from hubtools.gguf.source import GgufSource

LAYER_NORM_EPS = 1e-5  # transformers' PixtralVisionConfig has none in config.json: the converter's default


def image_processor(source: GgufSource) -> dict[str, Any]:
    """What the converter reads of the image processor: the HF folder's files, or those `convert` would write."""
    folder = source.ckpt.folder
    if source.ckpt.layout == "native":
        files = source.params.family.hf_side_files(source.params)
        loaded = [files.get(PREPROCESSOR_CONFIG, {}), files.get(PROCESSOR_CONFIG, {})]
    else:
        loaded = [json.loads(p.read_text()) for p in (folder / PREPROCESSOR_CONFIG, folder / PROCESSOR_CONFIG)
                  if p.is_file()]  # fmt: skip
    merged: dict[str, Any] = {}
    for cfg in loaded:
        nested = cfg.get("image_processor")
        merged.update({**cfg, **nested} if isinstance(nested, dict) else cfg)
    return merged


def add_projector_parameters(writer: gguf.GGUFWriter, source: GgufSource, file_type: gguf.LlamaFileType) -> None:
    """The projector's keys, in the converter's order, then general.quantization_version.

    Raises:
        ParamsError: a field the projector needs is missing (naming the file and the field).
    """
    config = source.wrapper_config or {}
    vision = config.get("vision_config") or {}
    folder = Path(source.ckpt.folder)
    try:
        writer.add_file_type(file_type)
        writer.add_clip_has_vision_encoder(True)
        writer.add_vision_projection_dim(source.config["hidden_size"])
        writer.add_vision_image_size(vision["image_size"])
        writer.add_vision_patch_size(vision["patch_size"])
        writer.add_vision_embedding_length(vision["hidden_size"])
        writer.add_vision_feed_forward_length(vision["intermediate_size"])
        writer.add_vision_block_count(vision["num_hidden_layers"])
        writer.add_vision_head_count(vision["num_attention_heads"])
    except KeyError as exc:
        missing = exc.args[0]
        raise ParamsError(f"{folder}: config.json: missing field vision_config.{missing} (needed for mmproj)") from None
    processor = image_processor(source)
    for key in ("image_mean", "image_std"):
        if not isinstance(processor.get(key), list):
            raise ParamsError(f"{folder}: {PREPROCESSOR_CONFIG}: missing field {key} (needed for mmproj)")
    writer.add_vision_image_mean(processor["image_mean"])
    writer.add_vision_image_std(processor["image_std"])
    writer.add_clip_projector_type(gguf.VisionProjectorType.PIXTRAL)
    writer.add_vision_attention_layernorm_eps(vision.get("layer_norm_eps", LAYER_NORM_EPS))
    act = vision.get("hidden_act")
    if act not in ("silu", "gelu"):
        raise ParamsError(f"{folder}: config.json: vision_config.hidden_act is {act!r}, expected 'silu' or 'gelu'")
    if act == "silu":
        writer.add_vision_use_silu(True)
    else:
        writer.add_vision_use_gelu(True)
    if "spatial_merge_size" in config:
        writer.add_vision_spatial_merge_size(config["spatial_merge_size"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
