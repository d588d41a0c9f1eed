"""FP8 weights with per-tensor scales: convert keeps them bit for bit or dequantizes by the rule, every bad
FP8 tensor is one line naming it, transformers loads the HF folder, verify passes and names planted faults."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.errors import HubtoolsError
from hubtools.inspection import summarize
from hubtools.model import fp8
from hubtools.testing import tiny_params, write_native_checkpoint
from hubtools.verification.run import verify
from tests.helpers import assert_one_line_error, edit_json

NATIVE_FILE = "consolidated.safetensors"
WQ, WV = "layers.0.attention.wq.weight", "layers.0.attention.wv.weight"


def _native(tmp_path: Path, *, moe: bool, name: str = "native") -> Path:
    return write_native_checkpoint(
        tmp_path / name, tiny_params(moe=moe, fp8=True, n_layers=1, vocab_size=512), tokenizer=None
    )


def _edit_native(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    tensors = load_file(folder / NATIVE_FILE)
    change(tensors)
    save_file(tensors, folder / NATIVE_FILE, metadata={"format": "pt"})


def _hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("model*.safetensors")) for k, v in load_file(f).items()}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("moe", [False, True])
def test_fp8_round_trips_bit_exactly_and_writes_quantization_config(tmp_path: Path, moe: bool) -> None:
    native = _native(tmp_path, moe=moe)
    convert(native, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "fp8",
        "activation_scheme": "static",
        "weight_block_size": None,
        "modules_to_not_convert": ["lm_head"],
    }
    hf = _hf_tensors(tmp_path / "hf")
    assert hf["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert hf["model.layers.0.self_attn.q_proj.weight_scale_inv"].shape == ()
    assert hf["model.layers.0.self_attn.q_proj.activation_scale"].dtype == torch.bfloat16
    assert hf["lm_head.weight"].dtype == torch.bfloat16 and "lm_head.weight_scale_inv" not in hf
    if moe:  # the router is no linear layer for transformers: never FP8
        assert hf["model.layers.0.block_sparse_moe.gate.weight"].dtype == torch.bfloat16
        assert "model.layers.0.block_sparse_moe.experts.3.w2.weight_scale_inv" in hf
    convert(tmp_path / "hf", tmp_path / "back")
    assert _files(tmp_path / "back") == _files(native)
    assert json.loads((tmp_path / "back" / "params.json").read_text())["quantization"] == fp8.NATIVE_SCHEME
    convert(tmp_path / "back", tmp_path / "hf2")
    assert _files(tmp_path / "hf2") == _files(tmp_path / "hf")


def test_the_rule_equals_the_native_rule_and_transformers_dequantizer_on_every_fp8_value() -> None:
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    every = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).reshape(16, 16)
    every = every[~torch.isnan(every.float()).any(1)]  # e4m3fn has two NaN patterns, in the last row
    for scale in (2.0**-20, 0.0123, 1.0, 3.1416, 2.0**20):
        s = torch.tensor(scale, dtype=torch.bfloat16)
        ours = fp8.dequantize(every, s, torch.bfloat16)
        assert torch.equal(ours, fp8.native_dequantize(every, s))
        assert torch.equal(ours, Fp8Dequantize(None)._dequantize_one(every, s, output_dtype=torch.bfloat16))
        assert torch.equal(fp8.dequantize(every, s, torch.float32), every.double().mul(float(s)).float())  # exact


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_convert_dtype_dequantizes_by_the_rule(tmp_path: Path, dtype: torch.dtype) -> None:
    native = _native(tmp_path, moe=False)
    convert(native, tmp_path / "hf", dtype=dtype)
    assert "quantization_config" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    source, out = load_file(native / NATIVE_FILE), _hf_tensors(tmp_path / "hf")
    assert not [n for n in out if n.endswith(("_scale_inv", "activation_scale"))]
    assert {t.dtype for t in out.values()} == {dtype}
    expected = (source[WV].to(torch.float64) * source[WV.replace("weight", "qscale_weight")].to(torch.float64)).to(
        dtype
    )
    assert torch.equal(out["model.layers.0.self_attn.v_proj.weight"], expected)
    heads = 4  # wq: the rule, then the rotary permutation (rows of each head: evens, then odds)
    wq = (source[WQ].to(torch.float64) * source[WQ.replace("weight", "qscale_weight")].to(torch.float64)).to(dtype)
    permuted = wq.view(heads, -1, 2, wq.shape[1]).transpose(1, 2).reshape(wq.shape)
    assert torch.equal(out["model.layers.0.self_attn.q_proj.weight"], permuted)
    convert(tmp_path / "hf", tmp_path / "back")
    assert "quantization" not in json.loads((tmp_path / "back" / "params.json").read_text())


def _fault(tmp_path: Path, change, moe: bool = False) -> Path:  # type: ignore[no-untyped-def]
    native = _native(tmp_path, moe=moe, name="bad")
    _edit_native(native, change)
    return native


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda t: t.pop(WV),
            "scale 'layers.0.attention.wv.qscale_weight' has no weight 'layers.0.attention.wv.weight'",
        ),
        (
            lambda t: t.pop(WV.replace("weight", "qscale_weight")),
            "FP8 weight 'layers.0.attention.wv.weight' has no scale",
        ),
        (lambda t: t.update({WV.replace("weight", "qscale_act"): torch.ones(3, dtype=torch.bfloat16)}), "shape [3]"),
        (
            lambda t: t.update({WV: t[WV].to(torch.bfloat16)}),
            "tensor 'layers.0.attention.wv.weight' is bfloat16, expected float8_e4m3fn",
        ),
        (
            lambda t: t.update({"output.qscale_weight": torch.ones((), dtype=torch.bfloat16)}),
            "scale 'output.qscale_weight'",
        ),
    ],
)
def test_bad_fp8_tensors_are_one_line_naming_them(tmp_path: Path, run_cli, change, fragment: str) -> None:  # type: ignore[no-untyped-def]
    native = _fault(tmp_path, change)
    assert_one_line_error(run_cli("convert", native, tmp_path / "out"), fragment)


def test_fp8_weights_without_quantization_in_params_are_refused(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    native = _native(tmp_path, moe=False)
    edit_json(native / "params.json", lambda p: p.pop("quantization"))
    assert_one_line_error(run_cli("convert", native, tmp_path / "out"), "declares no quantization")
    edit_json(
        native / "params.json", lambda p: p.update(quantization={"qformat_weight": "fp8_e5m2", "qscheme_act": "TENSOR"})
    )
    assert_one_line_error(run_cli("convert", native, tmp_path / "out"), "field 'quantization'")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"weight_block_size": [128, 128]}, "quantization_config.activation_scheme' must be 'dynamic' (FP8, blocks"),
        ({"activation_scheme": "dynamic"}, "quantization_config.activation_scheme"),
        ({"fmt": "e4m3"}, "unknown field 'quantization_config.fmt'"),
        (
            {"modules_to_not_convert": ["lm_head", "mlp.down_proj"]},
            "scale 'model.layers.0.mlp.down_proj.activation_scale'",
        ),
    ],
)
def test_hf_quantization_config_is_read_or_refused(tmp_path: Path, run_cli, change, fragment: str) -> None:  # type: ignore[no-untyped-def]
    convert(_native(tmp_path, moe=False), tmp_path / "hf")
    edit_json(tmp_path / "hf" / "config.json", lambda c: c["quantization_config"].update(change))
    assert_one_line_error(run_cli("convert", tmp_path / "hf", tmp_path / "out"), fragment)


def test_a_kept_list_native_params_cannot_say_is_refused_towards_native() -> None:
    other = replace(tiny_params(moe=False, fp8=True), quantization=fp8.Fp8(("lm_head", "model.layers.1.mlp.down_proj")))
    assert not fp8.is_quantized(
        other, next(s for s in other.family.tensor_specs(other) if s.hf.endswith("1.mlp.down_proj.weight"))
    )
    with pytest.raises(
        HubtoolsError, match="keeps 'model.layers.1.mlp.down_proj', which a native params.json cannot say"
    ):
        fp8.check_native_expressible(other, other.family.tensor_specs(other), source="config.json")


def test_defaults_transformers_writes_are_accepted(tmp_path: Path) -> None:
    convert(_native(tmp_path, moe=False), tmp_path / "hf")
    extra = {"dequantize": False, "modules_to_convert": None, "scale_fmt": "float", "expert_dtype": "fp8"}
    edit_json(tmp_path / "hf" / "config.json", lambda c: c["quantization_config"].update(extra))
    convert(tmp_path / "hf", tmp_path / "back")


@pytest.mark.parametrize("moe", [False, True])
def test_verify_passes_fp8_kept_and_dequantized(tmp_path: Path, moe: bool) -> None:
    native = _native(tmp_path, moe=moe)
    convert(native, tmp_path / "hf")
    convert(native, tmp_path / "bf16", dtype="bfloat16")
    kept, dequantized = verify(native, tmp_path / "hf"), verify(native, tmp_path / "bf16")
    assert kept.passed and dequantized.passed, (kept.to_dict(), dequantized.to_dict())
    assert kept.tensors.compared == len(_hf_tensors(tmp_path / "hf"))
    assert any("the FP8 rule" in note for note in dequantized.tensors.notes)


@pytest.mark.parametrize("target", ["hf", "bf16"])
@pytest.mark.parametrize(
    ("plant", "named"),
    [
        ("scale", "model.layers.0.mlp.down_proj"),
        ("byte", "model.layers.0.self_attn.o_proj.weight"),
    ],
)
def test_verify_names_a_planted_fp8_fault(tmp_path: Path, target: str, plant: str, named: str) -> None:
    native = _native(tmp_path, moe=False)
    convert(native, tmp_path / "hf", dtype=None if target == "hf" else "bfloat16")

    def change(t: dict[str, torch.Tensor]) -> None:
        if plant == "scale":
            name = "layers.0.feed_forward.w2.qscale_weight"
            t[name] = (t[name].float() * 1.5).to(torch.bfloat16)
        else:
            raw = t["layers.0.attention.wo.weight"].view(torch.uint8).clone()
            raw[3, 5] ^= 0x01
            t["layers.0.attention.wo.weight"] = raw.view(torch.float8_e4m3fn)

    _edit_native(native, change)
    report = verify(native, tmp_path / "hf")
    assert not report.passed and not report.tensors.passed
    assert any(m.startswith(named) for m in report.tensors.mismatched), report.tensors.mismatched
    if plant == "scale":
        assert not report.logits.passed  # a scale 1.5x off moves the forward too


@pytest.mark.parametrize("moe", [False, True])
def test_transformers_loads_the_fp8_folder_and_dequantizes_as_we_do(tmp_path: Path, moe: bool) -> None:
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("transformers' FP8 loader needs accelerate (pip install accelerate)")
    from transformers import AutoModelForCausalLM

    native = _native(tmp_path, moe=moe)
    convert(native, tmp_path / "hf")
    convert(native, tmp_path / "bf16", dtype="bfloat16")
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert all(not v for v in info.values()), info  # no missing, unexpected or mismatched key
    ours, reference = model.state_dict(), AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_gguf_from_fp8_equals_gguf_from_its_float32_dequantization_and_verifies(tmp_path: Path) -> None:
    from hubtools.gguf.export import export
    from hubtools.gguf.quant import parse_quants
    from hubtools.gguf.verify import verify_gguf
    from tests.test_gguf_llama_cpp import assert_same_gguf

    native = write_native_checkpoint(tmp_path / "n", tiny_params(moe=True, fp8=True, n_layers=1), tokenizer="v1")
    convert(native, tmp_path / "f32", dtype="float32")  # the exact products, which GGUF rounds once
    ours = export(native, tmp_path / "a", quants=parse_quants("bf16,q8_0"), name="m").outputs
    plain = export(tmp_path / "f32", tmp_path / "b", quants=parse_quants("bf16,q8_0"), name="m").outputs
    for a, b in zip(ours, plain, strict=True):
        assert_same_gguf(tmp_path / "a" / a.files[0], tmp_path / "b" / b.files[0])
    report = verify_gguf(native, tmp_path / "a" / ours[1].files[0], readback=False)
    assert report.passed, report.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("moe", [False, True])
def test_gguf_from_fp8_equals_llama_cpp_converter_on_the_hf_fp8_folder(tmp_path: Path, moe: bool) -> None:
    from tests import llama_cpp_peer as peer
    from tests.test_gguf_llama_cpp import check_equal_to_converter

    if peer.tree() is None:
        pytest.skip("llama.cpp's tree not found (HUBTOOLS_LLAMA_CPP)")
    import tests.test_gguf_llama_cpp as peer_tests

    peer_tests.MODELS["fp8"] = ({"moe": moe, "fp8": True, "n_layers": 2}, "v1")
    try:
        for outtype in ("bf16", "f32", "q8_0"):
            check_equal_to_converter(tmp_path / outtype, "fp8", outtype)
    finally:
        peer_tests.MODELS.pop("fp8")


def test_inspect_shows_fp8(tmp_path: Path) -> None:
    native = _native(tmp_path, moe=False)
    summary = summarize(native)
    assert summary.dtypes["float8_e4m3fn"] == 7
    assert summary.quantization == "FP8 e4m3, per-tensor: 7 weights, 14 scales (bfloat16); unquantized: lm_head"


def test_a_plain_checkpoint_has_no_scales() -> None:
    params = tiny_params(moe=False)
    assert all(s.row.role.value == "tensor" for s in params.family.tensor_specs(params))
    with pytest.raises(HubtoolsError):
        fp8.parse_hf({"quant_method": "gptq"}, source="config.json")
