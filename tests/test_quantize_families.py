"""`hubtools quantize` + `hubtools verify` on every family beyond Mistral / Mixtral (test_quantize.py): Ministral
(sliding-window pattern), Ministral 3 (YaRN, tied embeddings: the embedding / head stays unquantized), the vision
wrappers Mistral3 / Pixtral (text layers quantized; encoder, projector, patch merger and head kept, loaded by
`AutoModelForImageTextToText` with no missing / unexpected key), an FP8 source (dequantized as it is read), and
Mistral 4, refused in one line (transformers cannot load its quantized experts). Tiny models with outlier
channels; calibration must beat round-to-nearest on held-out text. The default suite runs the tied Ministral 3
and the Mistral3 wrapper by GPTQ; the rest is `slow`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hubtools.converter import convert
from hubtools.errors import QuantizeError
from hubtools.model.fp8 import Fp8
from hubtools.model.names import NameTable
from hubtools.model.rows import Part
from hubtools.quantization.run import quantize
from hubtools.quantization.scheme import QuantizeOptions
from hubtools.quantization.verify import verify_quantized
from hubtools.testing import (
    add_outlier_channels,
    tiny_ministral3_params,
    tiny_ministral_params,
    tiny_mistral4_params,
    tiny_params,
    tiny_vision_params,
    write_native_checkpoint,
)
from tests.helpers import RunCli, assert_one_line_error
from tests.test_quantize import _calibration

pytest.importorskip("compressed_tensors")

VOCAB = 32000  # the v1 tokenizer's: the smallest real vocabulary (logits over it dominate the run time)


def _model(name: str):  # noqa: ANN202 - a ModelParams
    """The tiny params of case `name` (family, then what the case varies)."""
    if name == "ministral":
        return tiny_ministral_params(vocab_size=VOCAB, n_layers=2, pattern=(None, 8))
    if name in ("ministral3-tied", "ministral3-fp8"):
        params = tiny_ministral3_params(tied=name.endswith("tied"), vocab_size=VOCAB, original_max_positions=64)
        return replace(params, quantization=Fp8()) if name.endswith("fp8") else params
    if name == "mistral4":
        return tiny_mistral4_params()
    if name == "mistral3-fp8":  # Ministral 3 Instruct's shape: the wrapper around an FP8 Ministral 3
        return tiny_vision_params(text=_model("ministral3-fp8"))
    text = tiny_params(moe=False, vocab_size=VOCAB, dim=64, hidden_dim=128)
    return tiny_vision_params(merge=2 if name == "mistral3" else 1, text=text)


def _quantized(root: Path, name: str, method: str, *, from_hf: bool) -> tuple[Path, Path]:
    """(source, quantized folder) of case `name`, the source native or its HF conversion."""
    params = _model(name)
    native = write_native_checkpoint(root / f"{name}-native", params, tokenizer="v1")
    if params.quantization is None:
        add_outlier_channels(native, params.text)  # the text layers (an encoder is narrower)
    source = native
    if from_hf:
        source = root / f"{name}-hf"
        convert(native, source)
    out = root / f"{name}-{method}"
    options = QuantizeOptions(
        method=method, group_size=32, samples=16, seq_len=128, calibration=_calibration(root / "calibration.jsonl")
    )
    quantize(source, out, options)
    return source, out


DEFAULT = [("ministral3-tied", "gptq", False), ("mistral3", "gptq", True)]
SLOW = [
    ("ministral", "gptq", True),
    ("ministral", "awq", False),
    ("ministral3-tied", "awq", True),
    ("mistral3", "awq", False),
    ("pixtral", "gptq", False),
    ("pixtral", "awq", True),
]
CASES = [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in DEFAULT] + [
    pytest.param(*c, id=f"{c[0]}-{c[1]}", marks=pytest.mark.slow) for c in SLOW
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quantfam")


@pytest.mark.parametrize(("name", "method", "from_hf"), CASES)
def test_each_family_loads_as_users_load_it_and_beats_round_to_nearest(
    root: Path, name: str, method: str, from_hf: bool
) -> None:
    source, out = _quantized(root / f"{name}-{method}", name, method, from_hf=from_hf)
    report = verify_quantized(source, out).to_json()
    load = report["load"]
    assert load["passed"], load
    assert load["missing_keys"] == load["unexpected_keys"] == load["mismatched_keys"] == [] == load["error_msgs"]
    expected = "AutoModelForImageTextToText" if name.startswith(("mistral3", "pixtral")) else "AutoModelForCausalLM"
    assert load["how"].startswith(expected)
    assert report["tensors"]["passed"] and report["tensors"]["compared"] > 0, report["tensors"]
    quality = report["quality"]
    print(f"\n{name} {method}: quantized {quality['quantized']} rtn {quality['rtn']}")  # the README's figures (-s)
    assert quality["quantized"]["mean_kl"] < quality["rtn"]["mean_kl"], quality
    assert report["passed"]
    _check_kept(source, out, name)


def _check_kept(source: Path, out: Path, name: str) -> None:
    """Only text-layer matrices are packed; the embedding, head, norms and any encoder / projector are the
    source's tensors, and `ignore` names what compressed-tensors must leave alone, as transformers names it."""
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    packed = {n.removesuffix(".weight_packed") for n in index if n.endswith(".weight_packed")}
    assert packed and all(".layers." in n and "vision" not in n for n in packed), sorted(packed)
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert "lm_head" in ignore
    report = json.loads((out / "quantization_report.json").read_text())
    params = _model(name)
    table = NameTable(replace(params, quantization=None))
    kept = [s for s in table.specs if s.part in (Part.VISION, Part.PROJECTOR)]
    if name.startswith(("mistral3", "pixtral")):
        assert {"re:.*vision_tower.*", "re:.*multi_modal_projector.*"} <= set(ignore)
        assert kept and all(s.hf in report["unquantized"] and s.hf in index for s in kept)
    if name == "ministral3-tied":
        assert not any("lm_head" in n for n in index) and "model.embed_tokens.weight" in report["unquantized"]
    assert not any(n.endswith(("embed_tokens", "lm_head", "norm", "layernorm")) for n in packed)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "from_hf"), [("ministral3-fp8", False), ("mistral3-fp8", True)])
def test_an_fp8_source_is_dequantized_then_quantized(root: Path, name: str, from_hf: bool) -> None:
    """Ministral 3 in FP8 (per-tensor scales), alone and in its vision wrapper: the engine reads each weight
    dequantized; what is not quantized is written as bfloat16 (no float8 left, no scale tensor), and verify
    measures against the dequantized source."""
    source, out = _quantized(root / name, name, "gptq", from_hf=from_hf)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    for shard in out.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                assert "qscale" not in key and "scale_inv" not in key and "activation_scale" not in key, key
                assert f.get_tensor(key).dtype != torch.float8_e4m3fn, key
    report = verify_quantized(source, out).to_json()
    assert report["passed"] and report["load"]["passed"], report["load"]


def test_mistral4_is_refused_in_one_line_naming_why(run_cli: RunCli, tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", tiny_mistral4_params(), tokenizer="v1")
    result = run_cli("quantize", native, tmp_path / "out", "--method", "gptq")
    assert_one_line_error(result, "Mistral4ForCausalLM cannot be quantized", "random experts", "params.json")
    assert not (tmp_path / "out").exists()
    with pytest.raises(QuantizeError, match="fused 3-D parameters"):
        quantize(native, tmp_path / "out", QuantizeOptions(method="rtn"))


def test_the_reason_mistral4_is_refused_still_holds_in_this_transformers() -> None:
    """If transformers gains a per-expert weight conversion for mistral4, or nn.Linear experts, this fails: the
    refusal (`Mistral4.quantize_unsupported`) is then to be replaced by a load test."""
    from transformers import Mistral4Config, Mistral4ForCausalLM
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    assert get_checkpoint_conversion_mapping("mistral4") is None
    config = Mistral4Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=48, moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2,
        n_shared_experts=1, q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
        first_k_dense_replace=1, n_group=1, topk_group=1,
    )  # fmt: skip
    experts = Mistral4ForCausalLM(config).model.layers[1].mlp.experts
    assert not any(isinstance(m, torch.nn.Linear) for m in experts.modules())
    assert experts.gate_up_proj.ndim == 3 and experts.down_proj.ndim == 3
