"""Vision models (Pixtral 12B: `LlavaForConditionalGeneration`; Mistral Small 3.1-style:
`Mistral3ForConditionalGeneration`): params, the name table, convert both ways, what transformers 5.x loads,
the clean-room encoder against transformers, verify with planted faults, and the tokenizer with images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.errors import ParamsError
from hubtools.families import from_hf_config, parse_params
from hubtools.model.hf_config import to_native_params
from hubtools.model.names import NameTable
from hubtools.model.transforms import Transform, half_to_interleaved, to_hf
from hubtools.model.vision_forward import image_token_layout, patch_grids
from hubtools.testing import synthetic_tensors, tiny_vision, tiny_vision_params, write_native_checkpoint
from hubtools.verification import reference
from hubtools.verification.report_text import format_report
from hubtools.verification.run import verify
from tests.test_families import tied_plugin  # noqa: F401  (the fixture)

KINDS = {"mistral3": 2, "pixtral": 1}  # family -> spatial_merge_size


@pytest.fixture(scope="module", params=sorted(KINDS))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A tiny native vision checkpoint (float32, tekken with the image config) and its HF conversion."""
    root = tmp_path_factory.mktemp(request.param)
    params = tiny_vision_params(merge=KINDS[request.param])
    write_native_checkpoint(root / "native", params, tokenizer="tekken", dtype=torch.float32)
    convert(root / "native", root / "hf")
    return request.param, root


def _native_raw(merge: int) -> dict:
    return to_native_params(tiny_vision_params(merge=merge))


# -- params and the name table ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "architecture"), [("mistral3", "Mistral3ForConditionalGeneration"),
                                                    ("pixtral", "LlavaForConditionalGeneration")])  # fmt: skip
def test_vision_encoder_picks_the_wrapper_which_wraps_the_text_family(kind: str, architecture: str) -> None:
    params = parse_params(_native_raw(KINDS[kind]))
    assert (params.family.name, params.architecture) == (kind, architecture)
    assert params.text.family.name == "mistral" and params.text.architecture == "MistralForCausalLM"
    assert params.vision_heads == 4 and params.option("vision").has_patch_merger == (kind == "mistral3")
    assert to_native_params(params) == _native_raw(KINDS[kind])  # written back as it was read


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_scale": 1.0}, "unknown field 'vision_encoder.layer_scale'"),
        ({"patch_size": 0}, "'vision_encoder.patch_size' must be a positive integer"),
        ({"add_pre_mm_projector_layer_norm": False}, "expected a patch merger with the projector norm"),
        ({"mm_projector_id": "mlp"}, "'vision_encoder.mm_projector_id' must be"),
        ({"num_attention_heads": 3}, "'vision_encoder.num_attention_heads' must be a divisor"),
    ],
)
def test_bad_vision_encoder_fields_are_refused_by_name(change: dict, message: str) -> None:
    raw = _native_raw(2)
    raw["vision_encoder"].update(change)
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_params(raw)


def test_name_table_is_a_bijection_with_the_encoder_projector_and_text_model_in_forward_order() -> None:
    params = tiny_vision_params(merge=2)
    table = NameTable(params)
    parts = [s.part.name for s in table.specs]
    assert parts.index("PROJECTOR") > parts.index("VISION") and parts.index("EMBEDDING") > parts.index("PROJECTOR")
    spec = table.by_native["vision_encoder.transformer.layers.1.attention.wk.weight"]
    assert spec.hf == "vision_tower.transformer.layers.1.attention.k_proj.weight"
    assert spec.transform is Transform.VISION_ROTARY and spec.gguf == "v.blk.1.attn_k.weight"
    assert table.by_native["patch_merger.merging_layer.weight"].hf == (
        "multi_modal_projector.patch_merger.merging_layer.weight"
    )
    assert table.by_native["pre_mm_projector_norm.weight"].hf == "multi_modal_projector.norm.weight"
    assert table.by_native["vision_language_adapter.w_in.weight"].hf == "multi_modal_projector.linear_1.weight"
    assert table.by_native["layers.0.attention.wq.weight"].hf == "language_model.model.layers.0.self_attn.q_proj.weight"
    assert table.by_native["output.weight"].hf == "language_model.lm_head.weight"
    pixtral = NameTable(tiny_vision_params(merge=1))
    assert "vision_language_adapter.w_out.bias" in pixtral.by_native and "patch_merger" not in str(pixtral.by_native)


def test_vision_q_k_are_permuted_per_vision_head_for_rotate_half() -> None:
    params = tiny_vision_params(merge=2)
    w = torch.arange(32 * 2, dtype=torch.float32).reshape(32, 2)
    hf = to_hf(Transform.VISION_ROTARY, w, params)
    assert torch.equal(hf, w.view(4, 4, 2, 2).transpose(1, 2).reshape(32, 2))  # transformers' permute_for_rope
    assert torch.equal(half_to_interleaved(hf, 4), w)


# -- convert -------------------------------------------------------------------------------------------------------


def _memory_name(disk: str) -> str:
    """Where transformers 5.x holds a saved tensor in memory (it saves `language_model.model.*`)."""
    if disk.startswith("language_model.lm_head."):
        return disk.removeprefix("language_model.")
    if disk.startswith("language_model.model."):
        return "model.language_model." + disk.removeprefix("language_model.model.")
    return "model." + disk


def test_transformers_loads_every_parameter_equal_to_the_native_transform(converted: tuple[str, Path]) -> None:
    from transformers import AutoModelForImageTextToText

    kind, root = converted
    model, info = AutoModelForImageTextToText.from_pretrained(root / "hf", output_loading_info=True)
    assert type(model).__name__ == {"mistral3": "Mistral3ForConditionalGeneration",
                                    "pixtral": "LlavaForConditionalGeneration"}[kind]  # fmt: skip
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    params = parse_params(json.loads((root / "native" / "params.json").read_text()))
    native = load_file(root / "native" / "consolidated.safetensors")
    state = model.state_dict()
    table = NameTable(params)
    for spec in table.specs:
        assert torch.equal(state[_memory_name(spec.hf)], to_hf(spec.transform, native[spec.native], params)), spec.hf
    assert len(state) == len(table.specs)


def test_hf_to_native_is_bit_exact_and_keeps_the_vision_encoder(converted: tuple[str, Path], tmp_path: Path) -> None:
    _, root = converted
    convert(root / "hf", tmp_path / "back")
    original, back = (
        load_file(root / "native" / "consolidated.safetensors"),
        load_file(tmp_path / "back" / "consolidated.safetensors"),
    )
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    written = json.loads((tmp_path / "back" / "params.json").read_text())["vision_encoder"]
    source = json.loads((root / "native" / "params.json").read_text())["vision_encoder"]
    assert written == source  # what config.json lacks comes from the processor files and tokenizer.json


def test_config_and_processor_files_are_what_the_official_repos_carry(converted: tuple[str, Path]) -> None:
    from transformers import AutoConfig, AutoImageProcessor

    kind, root = converted
    config = json.loads((root / "hf" / "config.json").read_text())
    assert config["vision_config"]["hidden_act"] == "silu" and config["vision_feature_layer"] == -1
    assert config["text_config"]["model_type"] == "mistral" and config["tie_word_embeddings"] is False
    assert config["image_token_index"] == 10 and config["multimodal_projector_bias"] == (kind == "pixtral")
    if kind == "mistral3":
        assert config["spatial_merge_size"] == 2
    else:
        assert config["vision_feature_select_strategy"] == "full"
    assert AutoConfig.from_pretrained(root / "hf").text_config.sliding_window is None
    processor = json.loads((root / "hf" / "processor_config.json").read_text())
    assert processor == {"image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]", "image_token": "[IMG]",
                         "patch_size": 4, "processor_class": "PixtralProcessor",
                         "spatial_merge_size": KINDS[kind]}  # fmt: skip
    images = AutoImageProcessor.from_pretrained(root / "hf")
    assert images.size["longest_edge"] == 64 and list(images.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    params = from_hf_config(config)
    assert params.family.name == kind and params.option("vision").num_hidden_layers == 2


# -- the clean-room encoder against transformers' whole model ------------------------------------------------------


def test_clean_room_encoder_and_logits_match_transformers_whole_model(converted: tuple[str, Path]) -> None:
    """Independent of verify's layered HF side: transformers' own model, images in, in float32."""
    from transformers import AutoModelForImageTextToText

    from hubtools.verification.vision_pass import padded

    _, root = converted
    params = parse_params(json.loads((root / "native" / "params.json").read_text()))
    weights = load_file(root / "native" / "consolidated.safetensors")
    vision, get = params.option("vision"), weights.__getitem__
    images = [torch.randn(3, 16, 24, generator=torch.Generator().manual_seed(1)), torch.randn(3, 24, 8)]
    grids = patch_grids(images, vision.patch_size)
    h = params.family.vision_stem(images, get, params)
    for layer in range(vision.num_hidden_layers):
        h = params.family.vision_layer(h, layer, get, params, grids)
    features = params.family.vision_project(h, get, params, grids)
    tokens = [1, 1784, 1044]
    for rows, cols in grids:
        tokens += image_token_layout(rows // vision.spatial_merge_size, cols // vision.spatial_merge_size, vision)
    ids = torch.tensor([[*tokens, 5694, 1046]])
    ref = reference.ReferenceModel(params.text, get, rope_theta=1e6)
    x = ref.embed(ids)
    x[ids == vision.image_token_id] = features
    for layer in range(params.n_layers):
        x = ref.layer(x, layer)
    model = AutoModelForImageTextToText.from_pretrained(root / "hf", dtype=torch.float32).eval()
    pixels, sizes = padded(images)
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=pixels, image_sizes=sizes)
        hf_features = torch.cat(list(out.pooler_output)).reshape(features.shape)
        logits = model(input_ids=ids, pixel_values=pixels, image_sizes=sizes).logits
    assert (features - hf_features).abs().max() < 1e-5
    assert (ref.head(x) - logits).abs().max() < 1e-4


# -- verify --------------------------------------------------------------------------------------------------------


def test_verify_passes_and_reports_each_vision_stage(converted: tuple[str, Path]) -> None:
    _, root = converted
    report = verify(root / "native", root / "hf")
    assert report.passed, format_report(report)
    assert report.logits.max_abs_dlogit is not None and report.logits.max_abs_dlogit < 1e-4
    assert [d.layer for d in report.logits.vision] == [-1, 0, 1, 1 << 20]
    assert report.tokenizer.details["images"]["agreed"] == report.tokenizer.details["images"]["sequences"] == 30
    text = format_report(report)
    assert "  vision" in text and "proj" in text and "stem" in text


def _weights_only(root: Path, bad: Path) -> Path:
    """The HF folder without its tokenizer (the faults below are in the weights: no tokenizer check to pay for)."""
    shutil.copytree(root / "hf", bad, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "tekken*"))
    return bad


def _planted(root: Path, tmp_path: Path, name: str, change) -> Path:  # type: ignore[no-untyped-def]
    bad = _weights_only(root, tmp_path / "bad")
    shard = bad / "model-00001-of-00001.safetensors"
    tensors = load_file(shard)
    tensors[name] = change(tensors[name]).contiguous()
    save_file(tensors, shard, metadata={"format": "pt"})
    return bad


@pytest.mark.parametrize(
    ("name", "change"),
    [
        # q not permuted for rotate-half, the adapter scaled, the merged channels in the wrong order
        ("vision_tower.transformer.layers.1.attention.q_proj.weight", lambda w: half_to_interleaved(w, 4)),
        ("multi_modal_projector.linear_1.weight", lambda w: w * 1.01),
        ("multi_modal_projector.patch_merger.merging_layer.weight",
         lambda w: w.reshape(32, 32, 4).transpose(1, 2).reshape(32, 128)),  # merged channel-last
    ],
)  # fmt: skip
def test_verify_fails_planted_faults_in_the_vision_tower_projector_and_patch_merger(
    converted: tuple[str, Path], tmp_path: Path, name: str, change
) -> None:  # type: ignore[no-untyped-def]
    kind, root = converted
    if kind == "pixtral" and "patch_merger" in name:
        pytest.skip("Pixtral 12B has no patch merger")
    report = verify(root / "native", _planted(root, tmp_path, name, change))
    assert not report.passed and not report.logits.passed
    assert report.tensors.mismatched == (name,)
    assert f"tensor differs: '{name}'" in format_report(report)


def test_verify_names_a_vision_config_without_silu_as_transformers_script_writes_it(
    converted: tuple[str, Path], tmp_path: Path
) -> None:
    """convert_mistral3_weights_to_hf.py builds PixtralVisionConfig without hidden_act: transformers' default
    gelu, where the released encoder (mistral-inference's SwiGLU) uses silu."""
    _, root = converted
    bad = _weights_only(root, tmp_path / "gelu")
    config = json.loads((bad / "config.json").read_text())
    del config["vision_config"]["hidden_act"]
    (bad / "config.json").write_text(json.dumps(config))
    report = verify(root / "native", bad)
    assert not report.passed and not report.logits.passed
    assert any("vision_config.hidden_act" in p for p in report.structure.problems)


# -- tokenizer with images ----------------------------------------------------------------------------------------


def test_image_conversations_fail_when_the_processor_config_disagrees(
    converted: tuple[str, Path], tmp_path: Path
) -> None:
    from hubtools.tokenization.image_parity import check_image_parity

    kind, root = converted
    bad = tmp_path / "processor"
    shutil.copytree(root / "hf", bad)
    processor = json.loads((bad / "processor_config.json").read_text())
    processor["spatial_merge_size"] = 3 - KINDS[kind]  # 2 <-> 1
    (bad / "processor_config.json").write_text(json.dumps(processor))
    parity = check_image_parity(bad, root / "native" / "tekken.json")
    assert not parity.passed and parity.first_mismatch is not None
    assert check_image_parity(root / "hf", root / "native" / "tekken.json").passed


def test_transformers_image_processor_floors_where_mistral_common_rounds(converted: tuple[str, Path]) -> None:
    """A finding, not a hubtools fault: downscaling 200x52 to fit 64 pixels, mistral-common rounds the height
    (52 / 3.125 = 16.6 -> 17 -> 3 token rows of 8 pixels) and transformers floors it (16 -> 2 rows)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from hubtools.tokenization import image_parity
    from hubtools.tokenization.parity import load_hf_tokenizer

    kind, root = converted
    if kind != "mistral3":
        pytest.skip("one model shows it")
    mt = MistralTokenizer.from_file(str(root / "native" / "tekken.json"))
    sizes = image_parity.IMAGE_SIZES
    try:
        image_parity.IMAGE_SIZES = ((200, 52),)
        parity = image_parity.check_images(root / "hf", mt, load_hf_tokenizer(root / "hf"))
    finally:
        image_parity.IMAGE_SIZES = sizes
    assert parity.agreed == 0 and parity.first_mismatch is not None
    ref, hf = parity.first_mismatch["mistral_common"], parity.first_mismatch["hf"]
    assert ref.count(12) == 2 and hf.count(12) == 1  # [IMG_BREAK] ends every row but the last


def test_gguf_plans_the_text_model_alone_and_the_projector_apart(converted: tuple[str, Path], tmp_path: Path) -> None:
    from hubtools.gguf.source import open_source, projector_source

    _, root = converted
    for folder in (root / "native", root / "hf"):
        source = open_source(folder)
        with source.ckpt:
            projector = projector_source(source)
            assert not [t for t in source.tensors if t.name.startswith(("v.", "mm."))]
            assert projector.tensors and all(t.name.startswith(("v.", "mm.")) for t in projector.tensors)
            assert source.config["hidden_size"] == 64 and projector.architecture == "clip"


def test_synthetic_vision_checkpoint_tensors_follow_the_table() -> None:
    params = tiny_vision_params(merge=2, vision=tiny_vision(merge=2, layers=1))
    names = [n for n, _ in synthetic_tensors(params)]
    assert names == [s.native for s in NameTable(params).specs]
    with pytest.raises(KeyError):
        dict(synthetic_tensors(params))["vision_encoder.transformer.layers.1.ffn_norm.weight"]


def test_safetensors_of_a_converted_folder_name_the_text_model_as_transformers_saves_it(
    converted: tuple[str, Path],
) -> None:
    _, root = converted
    with safe_open(root / "hf" / "model-00001-of-00001.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "language_model.model.embed_tokens.weight" in keys and "language_model.lm_head.weight" in keys
    assert not any(k.startswith("model.") for k in keys)


def test_the_wrapper_composes_whatever_text_family_recognises_the_rest(tied_plugin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A text family registered later (here the tests' tied-embedding plugin, as a Ministral 3 family would be)
    is the one the vision wrapper wraps: no output tensor, `tie_word_embeddings` true, transformers loads it and
    verify passes."""
    import dataclasses

    from transformers import AutoModelForImageTextToText

    from hubtools.testing import tiny_params

    text = dataclasses.replace(tiny_params(moe=False, vocab_size=1000, dim=64), family=tied_plugin)
    params = tiny_vision_params(merge=2, text=text)
    assert params.family.name == "mistral3" and params.text.family == tied_plugin
    native = write_native_checkpoint(tmp_path / "native", params, tokenizer=None, dtype=torch.float32)
    assert "output.weight" not in load_file(native / "consolidated.safetensors")
    convert(native, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["text_config"]["tie_word_embeddings"] is True
    model, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    report = verify(native, tmp_path / "hf")
    assert report.passed, format_report(report)


def test_a_vision_config_relying_on_transformers_defaults_reads_as_pixtral_12b() -> None:
    """mistral-community/pixtral-12b's config.json leaves the encoder's sizes to PixtralVisionConfig's defaults."""
    config = {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 10,
        "projector_hidden_act": "gelu", "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
        "text_config": {"model_type": "mistral", "hidden_size": 5120, "intermediate_size": 14336,
                        "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                        "rms_norm_eps": 1e-5, "rope_theta": 1e9, "vocab_size": 131072},
        "vision_config": {"model_type": "pixtral", "hidden_act": "silu", "head_dim": 64, "rope_theta": 10000.0},
    }  # fmt: skip
    params = from_hf_config(config)
    vision = params.option("vision")
    assert (params.architecture, params.n_layers, params.head_dim) == ("LlavaForConditionalGeneration", 40, 128)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (1024, 24, 16, 1024)
    assert vision.adapter_bias is True and not vision.has_patch_merger
