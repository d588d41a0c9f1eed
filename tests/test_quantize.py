"""`hubtools quantize` (GPTQ, AWQ) and `hubtools verify` on its output, on tiny Mistral and Mixtral with
outlier channels and the real v1 tokenizer: loaded by transformers as users load it, every expert
calibrated, the router intact, and calibration beating plain round-to-nearest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.errors import QuantizeError
from hubtools.families.mistral import WO
from hubtools.families.mixtral import EXPERT_W2, ROUTER
from hubtools.model import ops
from hubtools.model.family import ModelParams
from hubtools.quantization.gptq import Hessian, gptq
from hubtools.quantization.run import quantize
from hubtools.quantization.scheme import QuantizeOptions, round_to_nearest
from hubtools.quantization.verify import FolderTensors, verify_quantized
from hubtools.testing import add_outlier_channels, tiny_params, write_native_checkpoint
from hubtools.tokenization.corpus import BUILTIN_TEXTS
from tests.helpers import RunCli, assert_one_line_error

pytest.importorskip("compressed_tensors")

NEVER_PICKED = 3  # the expert whose router row loses to every other on every token
ROUTED_AWAY = 20  # a channel every token holds large and positive (see `_starve_expert`); no outlier channel


def _params(moe: bool) -> ModelParams:
    return tiny_params(moe=moe, dim=64, hidden_dim=128, n_heads=4, n_kv_heads=2, num_experts=4, top_k=2)


def _starve_expert(folder: Path, params: ModelParams) -> None:
    """Make expert NEVER_PICKED unreachable: channel ROUTED_AWAY of the residual is a constant (the
    embedding sets it, no attention output or expert writes it), and each router's row for the expert
    weighs it very negatively."""
    path = folder / "consolidated.safetensors"
    tensors = load_file(path)

    def edit(name: str, change: Callable[[torch.Tensor], None]) -> None:
        value = tensors[name].float()
        change(value)
        tensors[name] = value.to(torch.bfloat16)

    edit("tok_embeddings.weight", lambda t: t[:, ROUTED_AWAY].fill_(4.0))
    for layer in range(params.n_layers):
        edit(WO.native_name(layer), lambda t: t[ROUTED_AWAY].zero_())
        edit(ROUTER.native_name(layer), lambda t: t[NEVER_PICKED, ROUTED_AWAY].fill_(-100.0))
        for expert in range(params.num_experts):
            edit(EXPERT_W2.native_name(layer, expert), lambda t: t[ROUTED_AWAY].zero_())
    save_file(tensors, path, metadata={"format": "pt"})


def _calibration(path: Path) -> Path:
    """Varied text: the tokenizer corpus shuffled into longer documents (prose, code, many languages)."""
    generator = torch.Generator().manual_seed(0)
    texts = list(BUILTIN_TEXTS)
    lines = []
    for _ in range(24):
        picked = torch.randperm(len(texts), generator=generator)[:10].tolist()
        lines.append(json.dumps({"text": " ".join(texts[i] for i in picked)}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Mistral (quantized from its HF conversion) and Mixtral (from native), each by GPTQ and AWQ."""
    root = tmp_path_factory.mktemp("quantize")
    calibration = _calibration(root / "calibration.jsonl")
    out: dict[str, Path] = {}
    for family, moe in (("mistral", False), ("mixtral", True)):
        params = _params(moe)
        native = add_outlier_channels(write_native_checkpoint(root / f"{family}-native", params), params)
        if moe:
            _starve_expert(native, params)
            source = native
        else:
            source = root / f"{family}-hf"
            convert(native, source)
        out[f"{family}-source"] = source
        for method in ("gptq", "awq"):
            options = QuantizeOptions(method=method, group_size=32, samples=16, seq_len=128, calibration=calibration)
            quantize(source, root / f"{family}-{method}", options)
            out[f"{family}-{method}"] = root / f"{family}-{method}"
    return out


@pytest.fixture(scope="module")
def reports(models: dict[str, Path]) -> dict[str, dict]:
    return {
        key: verify_quantized(models[f"{key.split('-')[0]}-source"], models[key]).to_json()
        for key in ("mistral-gptq", "mistral-awq", "mixtral-gptq", "mixtral-awq")
    }


CASES = ("mistral-gptq", "mistral-awq", "mixtral-gptq", "mixtral-awq")


@pytest.mark.parametrize("case", CASES)
def test_transformers_loads_the_folder_with_no_missing_unexpected_or_mismatched_key(reports: dict, case: str) -> None:
    load = reports[case]["load"]
    assert load["passed"], load
    assert load["missing_keys"] == load["unexpected_keys"] == load["mismatched_keys"] == [] == load["error_msgs"]


@pytest.mark.parametrize("case", CASES)
def test_transformers_uses_every_quantized_tensor_as_compressed_tensors_dequantizes_it(
    reports: dict, case: str
) -> None:  # noqa: E501
    tensors = reports[case]["tensors"]
    assert tensors["passed"] and tensors["differ"] == [] and tensors["compared"] > 0, tensors
    assert tensors["quantized_in_folder"] == (32 if case.startswith("mixtral") else 14)


@pytest.mark.parametrize("case", CASES)
def test_calibration_beats_round_to_nearest_on_held_out_text(reports: dict, case: str) -> None:
    quality = reports[case]["quality"]
    assert quality["quantized"]["mean_kl"] < quality["rtn"]["mean_kl"], quality
    assert quality["beats_rtn"] and reports[case]["passed"]


@pytest.mark.parametrize("case", CASES)
def test_router_embeddings_head_and_norms_stay_unquantized(models: dict[str, Path], case: str) -> None:
    index = json.loads((models[case] / "model.safetensors.index.json").read_text())["weight_map"]
    packed = {name.removesuffix(".weight_packed") for name in index if name.endswith(".weight_packed")}
    assert not any(p.endswith(("gate", "embed_tokens", "lm_head", "norm", "layernorm")) for p in packed)
    config = json.loads((models[case] / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert "lm_head" in config["ignore"]


def test_gptq_router_is_bit_equal_to_the_source(reports: dict) -> None:
    router = reports["mixtral-gptq"]["router"]
    assert router["passed"] and len(router["bit_equal"]) == 2 and not router["folded_exactly"]


def test_awq_folds_its_scales_into_the_router_so_router_logits_do_not_move(models: dict[str, Path]) -> None:
    """AWQ divides the feed-forward norm by its scales; the router's columns take them back (powers of two):
    the logits the router computes from the same hidden state are bit-identical."""
    params = _params(True)
    source = load_file(models["mixtral-source"] / "consolidated.safetensors")
    folder = FolderTensors(models["mixtral-awq"])
    h = torch.randn(64, params.dim, generator=torch.Generator().manual_seed(3))
    moved = 0
    for layer in range(params.n_layers):
        norm_before = source[f"layers.{layer}.ffn_norm.weight"]
        norm_after = folder.raw(f"model.layers.{layer}.post_attention_layernorm.weight")
        gate_before = source[ROUTER.native_name(layer)]
        gate_after = folder.raw(ROUTER.hf_name(layer))
        moved += int(not torch.equal(norm_before, norm_after))
        for dtype in (torch.float32, torch.bfloat16):
            before = ops.rms_norm(h.to(dtype), norm_before.to(dtype), 1e-5) @ gate_before.to(dtype).T
            after = ops.rms_norm(h.to(dtype), norm_after.to(dtype), 1e-5) @ gate_after.to(dtype).T
            assert torch.equal(before, after), (layer, dtype)
    assert moved, "AWQ scaled no feed-forward norm: the fold was not exercised"


def test_every_expert_is_calibrated_even_one_the_router_never_picks(models: dict[str, Path]) -> None:
    report = json.loads((models["mixtral-gptq"] / "quantization_report.json").read_text())
    tokens = report["calibration_tokens"]
    for layer, counts in report["experts_calibrated_tokens"].items():
        assert counts == [tokens] * 4, (layer, counts)
        assert report["experts_routed_tokens"][layer][NEVER_PICKED] == 0, report["experts_routed_tokens"]
    folder = FolderTensors(models["mixtral-gptq"])
    source = load_file(models["mixtral-source"] / "consolidated.safetensors")
    for w in ("w1", "w2", "w3"):
        name = f"layers.0.feed_forward.experts.{NEVER_PICKED}.{w}.weight"
        ours = folder.read(f"model.layers.0.block_sparse_moe.experts.{NEVER_PICKED}.{w}.weight")
        rtn, _ = round_to_nearest(source[name].float(), 4, 32)
        assert ours.abs().sum() > 0, "a zeroed expert"
        assert not torch.equal(ours, rtn), "silently rounded to nearest: GPTQ never saw its tokens"


def test_a_renamed_expert_is_caught_as_transformers_reinitialising_it(models: dict[str, Path], tmp_path: Path) -> None:
    """The trap: per-expert names transformers does not map (here llm-compressor's gate_proj) load as random experts."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models["mixtral-gptq"], broken)
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(broken / shard)
        renamed = {k.replace(".experts.0.w1.", ".experts.0.gate_proj."): v for k, v in tensors.items()}
        save_file(renamed, broken / shard, metadata={"format": "pt"})
    rename = {k: k.replace(".experts.0.w1.", ".experts.0.gate_proj.") for k in index["weight_map"]}
    index["weight_map"] = {rename[k]: v for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    report = verify_quantized(models["mixtral-source"], broken).to_json()
    assert not report["passed"] and not report["load"]["passed"]


def test_gptq_lowers_the_output_error_of_correlated_inputs_below_rounding() -> None:
    generator = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=generator)
    x = torch.randn(2048, 64, generator=generator) @ mix
    x[:, 5] *= 20  # an outlier channel
    w = torch.randn(32, 64, generator=generator)
    hessian = Hessian(64, torch.device("cpu"))
    hessian.add(x)
    for act_order in (False, True):
        deq, scales = gptq(w, hessian.matrix(), bits=4, group_size=16, damp=0.01, act_order=act_order)
        codes = deq / scales.repeat_interleave(16, dim=1)
        assert torch.equal(codes, codes.round()) and codes.min() >= -8 and codes.max() <= 7
        rtn, _ = round_to_nearest(w, 4, 16)
        assert ((x @ (deq - w).T) ** 2).sum() < 0.8 * ((x @ (rtn - w).T) ** 2).sum()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--method", "fancy"), "--method: expected one of gptq, awq, rtn, found 'fancy'"),
        (("--method", "gptq", "--format", "gptq"), "--format gptq: not written (transformers loads"),
        (("--method", "gptq", "--bits", "1"), "--bits: expected 2..8, found 1"),
        (("--method", "gptq", "--samples", "0"), "--samples: expected a positive number, found 0"),
    ],
)
def test_bad_options_are_one_line(run_cli: RunCli, tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    native = write_native_checkpoint(tmp_path / "native", _params(False))
    result = run_cli("quantize", native, tmp_path / "out", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_a_bad_calibration_line_is_one_line_naming_file_and_line(run_cli: RunCli, tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "native", _params(False))
    bad = tmp_path / "cal.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    result = run_cli("quantize", native, tmp_path / "out", "--method", "gptq", "--calibration", bad)
    assert_one_line_error(result, str(bad), "line 2")


def test_cli_quantizes_and_verify_reports_json(run_cli: RunCli, tmp_path: Path) -> None:
    params = _params(False)
    native = add_outlier_channels(write_native_checkpoint(tmp_path / "native", params), params)
    out = tmp_path / "q"
    result = run_cli("quantize", native, out, "--method", "rtn", "--samples", "4", "--seq-len", "32", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["options"]["group_size"] == 64 and report["options"]["requested_group_size"] == 128
    verdict = run_cli("verify", native, out, "--json", tmp_path / "v.json", "--quiet")
    assert verdict.exit_code == 0, verdict.output
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["kind"] == "quantized" and saved["passed"]
    assert saved["quality"]["quantized"]["mean_kl"] == pytest.approx(saved["quality"]["rtn"]["mean_kl"], rel=1e-6)


def test_quantize_refuses_an_existing_destination_without_force(tmp_path: Path) -> None:
    from hubtools.errors import DestinationError

    native = write_native_checkpoint(tmp_path / "native", _params(False))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    with pytest.raises(DestinationError):
        quantize(native, tmp_path / "out", QuantizeOptions(method="rtn", samples=2, seq_len=16))
    with pytest.raises(QuantizeError):
        QuantizeOptions(method="gptq", device="tpu").checked()
