"""A Pixtral vision encoder and its projector: params.json's `vision_encoder` <-> config.json, and their rows.

Any text family can carry one (`hubtools.families.pixtral` wraps the text family the rest of params.json
describes). Native fields are mistral-inference's `VisionEncoderArgs` plus the token ids and image size
mistral-common reads; `VisionParams.present` keeps which ones params.json spelled, so it is written back as
it was. The encoder (`vision_encoder.*`) becomes `vision_tower.*`; the projector (`vision_language_adapter`,
`patch_merger`, `pre_mm_projector_norm`) becomes `multi_modal_projector.*`. GGUF names are llama.cpp's
mmproj ones (`v.*`, `mm.*`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hubtools.errors import ParamsError
from hubtools.filenames import PREPROCESSOR_CONFIG, PROCESSOR_CONFIG, TOKENIZER_JSON
from hubtools.model.rows import Row
from hubtools.model.transforms import Transform

PATCH_MERGE = "patch_merge"  # mistral-inference's `mm_projector_id` for a patch merger
DEFAULTS: dict[str, Any] = {  # mistral-inference's defaults for the optional fields
    "rope_theta": 1e4,
    "image_token_id": 10,
    "adapter_bias": True,
    "spatial_merge_size": 1,
    "add_pre_mm_projector_layer_norm": False,
    "mm_projector_id": "",
}
SIZES = (
    "hidden_size", "num_channels", "image_size", "patch_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads",
)  # fmt: skip
OPTIONAL_IDS = ("image_break_token_id", "image_end_token_id", "max_image_size")
FIELDS = (*SIZES, "rope_theta", "image_token_id", *OPTIONAL_IDS, *DEFAULTS.keys() - {"rope_theta", "image_token_id"})
NORM_EPS = 1e-5  # the encoder's and the projector norm's epsilon (fixed in mistral-inference)


@dataclass(frozen=True)
class VisionParams:
    """The `vision_encoder` object of params.json, validated.

    Example:
        >>> from hubtools.testing import tiny_vision
        >>> tiny_vision(merge=2).has_patch_merger, tiny_vision(merge=2).head_dim
        (True, 8)
    """

    hidden_size: int
    num_channels: int
    image_size: int
    patch_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    rope_theta: float = 1e4
    image_token_id: int = 10
    image_break_token_id: int | None = None
    image_end_token_id: int | None = None
    max_image_size: int | None = None
    adapter_bias: bool = True
    spatial_merge_size: int = 1
    add_pre_mm_projector_layer_norm: bool = False
    mm_projector_id: str = ""
    present: tuple[str, ...] = ()  # the fields params.json spelled, in its order

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def has_patch_merger(self) -> bool:
        return self.mm_projector_id == PATCH_MERGE

    @property
    def longest_edge(self) -> int:
        """The largest image side the image processor resizes to."""
        return self.max_image_size or self.image_size

    def to_native(self) -> dict[str, Any]:
        """The `vision_encoder` object as params.json spelled it."""
        return {key: getattr(self, key) for key in self.present}


def parse_vision(raw: Any, *, source: str, field: str = "vision_encoder") -> VisionParams:
    """Validate params.json's `vision_encoder` (named `field` in messages).

    Raises:
        ParamsError: not an object, an unknown or missing field, a bad value, or a projector no HF class has.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: '{field}' must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ParamsError(f"{source}: unknown field '{field}.{unknown[0]}' (expected some of {', '.join(FIELDS)})")
    missing = [key for key in SIZES if raw.get(key) is None]
    if missing:
        raise ParamsError(f"{source}: missing field '{field}.{missing[0]}'")
    values = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    for key in (*SIZES, "spatial_merge_size", *(k for k in OPTIONAL_IDS if k in values)):
        if not _is_int(values[key]) or values[key] <= 0:
            raise _bad(source, field, key, "a positive integer", values[key])
    if not _is_int(values["image_token_id"]) or values["image_token_id"] < 0:
        raise _bad(source, field, "image_token_id", "a token id (an integer >= 0)", values["image_token_id"])
    theta = values["rope_theta"]
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta <= 0:
        raise _bad(source, field, "rope_theta", "a finite number > 0", theta)
    for key in ("adapter_bias", "add_pre_mm_projector_layer_norm"):
        if not isinstance(values[key], bool):
            raise _bad(source, field, key, "true or false", values[key])
    if values["mm_projector_id"] not in ("", PATCH_MERGE):
        raise _bad(source, field, "mm_projector_id", f"'' or '{PATCH_MERGE}'", values["mm_projector_id"])
    heads = values["num_attention_heads"]
    if values["hidden_size"] % heads or (values["hidden_size"] // heads) % 4:
        raise _bad(source, field, "num_attention_heads", "a divisor of hidden_size leaving a head_dim divisible "
                   "by 4 (the 2-D rotary splits it between rows and columns)", heads)  # fmt: skip
    merger, norm = values["mm_projector_id"] == PATCH_MERGE, values["add_pre_mm_projector_layer_norm"]
    if merger != norm or (not merger and values["spatial_merge_size"] != 1):
        raise ParamsError(
            f"{source}: '{field}' has mm_projector_id {values['mm_projector_id']!r}, add_pre_mm_projector_layer_norm "
            f"{norm} and spatial_merge_size {values['spatial_merge_size']}; expected a patch merger with the "
            "projector norm (Mistral3ForConditionalGeneration) or neither with spatial_merge_size 1 "
            "(LlavaForConditionalGeneration)"
        )
    values["rope_theta"] = float(theta)
    return VisionParams(**values, present=tuple(raw))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(source: str, field: str, key: str, rule: str, value: Any) -> ParamsError:
    return ParamsError(f"{source}: field '{field}.{key}' must be {rule}, got {value!r}")


# -- config.json ---------------------------------------------------------------------------------------------

VISION_CONFIG_KEYS = {  # config.json vision_config key -> vision_encoder field
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_channels": "num_channels",
    "image_size": "image_size",
    "patch_size": "patch_size",
}


PIXTRAL_CONFIG_DEFAULTS = {  # transformers' PixtralVisionConfig defaults, which mistral-community/pixtral-12b relies on
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 1024,
    "patch_size": 16,
}


def vision_config(vision: VisionParams) -> dict[str, Any]:
    """transformers' `PixtralVisionConfig` as 5.x saves it (SwiGLU with silu, as mistral-inference runs it)."""
    return {
        **{key: getattr(vision, native) for key, native in VISION_CONFIG_KEYS.items()},
        "head_dim": vision.head_dim,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "model_type": "pixtral",
        "rope_parameters": {"rope_theta": vision.rope_theta, "rope_type": "axial"},
    }


def vision_from_config(config: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """The `vision_encoder` object from config.json (`vision_config` and the wrapper's fields).

    Raises:
        ParamsError: vision_config missing, or an activation other than silu (naming the key).
    """
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise ParamsError(f"{source}: missing field vision_config (an object)")
    act = vision.get("hidden_act", "gelu")
    if act != "silu":
        raise ParamsError(f"{source}: vision_config.hidden_act is {act!r}; expected 'silu' (Pixtral's SwiGLU)")
    out = {native: vision.get(key, PIXTRAL_CONFIG_DEFAULTS[key]) for key, native in VISION_CONFIG_KEYS.items()}
    rope = vision.get("rope_parameters")
    rope = rope if isinstance(rope, dict) else {}
    out["rope_theta"] = vision.get("rope_theta") or rope.get("rope_theta") or DEFAULTS["rope_theta"]
    out["image_token_id"] = config.get("image_token_index", config.get("image_token_id", DEFAULTS["image_token_id"]))
    out["adapter_bias"] = config.get("multimodal_projector_bias", True)
    return out


IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # mistral-common's (CLIP's) normalisation, per channel
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_TOKENS = {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}


def processor_files(vision: VisionParams) -> dict[str, dict[str, Any]]:
    """processor_config.json and preprocessor_config.json as transformers 5.x saves a `PixtralProcessor` and its
    image processor: images resized to fit `longest_edge` (params.json's max_image_size, else image_size) in
    multiples of the patch, normalised as mistral-common does; each `[IMG]` expanded into rows of image tokens
    (one per `patch_size * spatial_merge_size` square) ending in `[IMG_BREAK]`, the last in `[IMG_END]`."""
    processor = {**IMAGE_TOKENS, "patch_size": vision.patch_size, "processor_class": "PixtralProcessor",
                 "spatial_merge_size": vision.spatial_merge_size}  # fmt: skip
    image = {
        "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
        "image_mean": IMAGE_MEAN, "image_processor_type": "PixtralImageProcessor", "image_std": IMAGE_STD,
        "patch_size": vision.patch_size, "processor_class": "PixtralProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"longest_edge": vision.longest_edge},
    }  # fmt: skip
    return {PROCESSOR_CONFIG: processor, PREPROCESSOR_CONFIG: image}


def vision_from_side_files(vision: VisionParams, folder: Path) -> VisionParams:
    """`vision` (from config.json) with what an HF folder's other files hold: `max_image_size` from
    preprocessor_config.json's `size.longest_edge` (with a patch merger, or where it differs from image_size),
    the `[IMG_BREAK]` and `[IMG_END]` ids from tokenizer.json. Files that are absent add nothing."""
    from hubtools.model.params import read_json_file

    found: dict[str, Any] = {}
    if (folder / PREPROCESSOR_CONFIG).is_file():
        size = _object(read_json_file(folder / PREPROCESSOR_CONFIG)).get("size")
        edge = _object(size).get("longest_edge")
        positive = isinstance(edge, int) and not isinstance(edge, bool) and edge > 0
        if positive and (vision.has_patch_merger or edge != vision.image_size):  # Small 3.x's params.json has it
            found["max_image_size"] = edge
    if (folder / TOKENIZER_JSON).is_file():
        added = _object(read_json_file(folder / TOKENIZER_JSON, limit=1 << 30)).get("added_tokens")
        ids = {t.get("content"): t.get("id") for t in added if isinstance(t, dict)} if isinstance(added, list) else {}
        for key, token in (("image_break_token_id", "[IMG_BREAK]"), ("image_end_token_id", "[IMG_END]")):
            if _is_int(ids.get(token)):
                found[key] = ids[token]
    return replace(vision, **found, present=(*vision.present, *(k for k in found if k not in vision.present)))


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# -- the name table ------------------------------------------------------------------------------------------

PATCH_CONV = Row(
    "vision_encoder.patch_conv.weight", "vision_tower.patch_conv.weight", "v.patch_embd.weight",
    ("vision_dim", "channels", "patch", "patch"),
)  # fmt: skip
LN_PRE = Row("vision_encoder.ln_pre.weight", "vision_tower.ln_pre.weight", "v.pre_ln.weight", ("vision_dim",))
_NATIVE_LAYER, HF_LAYER = "vision_encoder.transformer.layers.{layer}.", "vision_tower.transformer.layers.{layer}."


def _layer_row(
    native: str, hf: str, gguf: str, shape: tuple[str, ...], transform: Transform = Transform.IDENTITY
) -> Row:
    return Row(_NATIVE_LAYER + native, HF_LAYER + hf, "v.blk.{layer}." + gguf, shape, transform)


V_ATTENTION_NORM = _layer_row("attention_norm.weight", "attention_norm.weight", "ln1.weight", ("vision_dim",))
V_WQ = _layer_row("attention.wq.weight", "attention.q_proj.weight", "attn_q.weight",
                  ("vision_dim", "vision_dim"), Transform.VISION_ROTARY)  # fmt: skip
V_WK = _layer_row("attention.wk.weight", "attention.k_proj.weight", "attn_k.weight",
                  ("vision_dim", "vision_dim"), Transform.VISION_ROTARY)  # fmt: skip
V_WV = _layer_row("attention.wv.weight", "attention.v_proj.weight", "attn_v.weight", ("vision_dim", "vision_dim"))
V_WO = _layer_row("attention.wo.weight", "attention.o_proj.weight", "attn_out.weight", ("vision_dim", "vision_dim"))
V_FFN_NORM = _layer_row("ffn_norm.weight", "ffn_norm.weight", "ln2.weight", ("vision_dim",))
V_W1 = _layer_row("feed_forward.w1.weight", "feed_forward.gate_proj.weight", "ffn_gate.weight",
                  ("vision_hidden", "vision_dim"))  # fmt: skip
V_W2 = _layer_row("feed_forward.w2.weight", "feed_forward.down_proj.weight", "ffn_down.weight",
                  ("vision_dim", "vision_hidden"))  # fmt: skip
V_W3 = _layer_row("feed_forward.w3.weight", "feed_forward.up_proj.weight", "ffn_up.weight",
                  ("vision_hidden", "vision_dim"))  # fmt: skip
ENCODER_LAYER = (V_ATTENTION_NORM, V_WQ, V_WK, V_WV, V_WO, V_FFN_NORM, V_W1, V_W2, V_W3)

PRE_NORM = Row("pre_mm_projector_norm.weight", "multi_modal_projector.norm.weight", "mm.input_norm.weight",
               ("vision_dim",))  # fmt: skip
MERGER = Row("patch_merger.merging_layer.weight", "multi_modal_projector.patch_merger.merging_layer.weight",
             "mm.patch_merger.weight", ("vision_dim", "merged_dim"))  # fmt: skip
W_IN = Row("vision_language_adapter.w_in.weight", "multi_modal_projector.linear_1.weight", "mm.1.weight",
           ("dim", "vision_dim"))  # fmt: skip
W_IN_BIAS = Row("vision_language_adapter.w_in.bias", "multi_modal_projector.linear_1.bias", "mm.1.bias", ("dim",))
W_OUT = Row("vision_language_adapter.w_out.weight", "multi_modal_projector.linear_2.weight", "mm.2.weight",
            ("dim", "dim"))  # fmt: skip
W_OUT_BIAS = Row("vision_language_adapter.w_out.bias", "multi_modal_projector.linear_2.bias", "mm.2.bias", ("dim",))


IMG_BREAK_GGUF = "v.token_embd.img_break"  # llama.cpp's pixtral projector: the [IMG_BREAK] token's text embedding


def gguf_token_rows(vision: VisionParams) -> tuple[tuple[str, int | None], ...]:
    """(GGUF name, token id) of each text-embedding row a projector GGUF carries: llama.cpp's pixtral projector
    adds the `[IMG_BREAK]` embedding after each row of patches itself (its loader requires the tensor)."""
    return ((IMG_BREAK_GGUF, vision.image_break_token_id),)


def encoder_stem_rows() -> tuple[Row, ...]:
    return (PATCH_CONV, LN_PRE)


def projector_rows(vision: VisionParams) -> tuple[Row, ...]:
    """The projector's rows, in the order its forward uses them."""
    merger = (PRE_NORM, MERGER) if vision.has_patch_merger else ()
    adapter = (W_IN, W_IN_BIAS, W_OUT, W_OUT_BIAS) if vision.adapter_bias else (W_IN, W_OUT)
    return (*merger, *adapter)


def vision_dims(vision: VisionParams) -> dict[str, int]:
    """The sizes the vision rows name (the text width `dim` comes from the text family)."""
    return {
        "vision_dim": vision.hidden_size,
        "vision_hidden": vision.intermediate_size,
        "channels": vision.num_channels,
        "patch": vision.patch_size,
        "merged_dim": vision.hidden_size * vision.spatial_merge_size**2,
    }
