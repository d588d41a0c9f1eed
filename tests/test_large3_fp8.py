"""Block-wise FP8 (Mistral Large 3 Instruct's compressed-tensors `quantization_config`), scaled down: convert
keeps the weights and their 128x128 block scales byte for byte both ways (`weight_scale` natively,
`weight_scale_inv` in transformers' fine-grained FP8 layout) and writes / reads the config; `--dtype bfloat16`
multiplies each block by its scale, as compressed-tensors' and transformers' block dequantizers do on every
value; transformers' FP8 model expects exactly the tensors written; verify passes and names a planted block
scale."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.model import fp8, fp8_block
from hubtools.testing import tiny_mistral4_params, write_native_checkpoint
from hubtools.verification.run import verify
from tests.helpers import RunCli, assert_one_line_error, edit_json, same_bytes, tensors_of

FP8 = torch.float8_e4m3fn
IGNORE = ["model.embed_tokens", "re:.*kv_a_proj_with_mqa$", "re:.*q_a_proj$", "re:.*gate$", "lm_head"]
BLOCK_PARAMS = {"quantization_config": {**fp8_block.NATIVE_SCHEME, "ignore": IGNORE}}
NATIVE_FILE, HF_SHARD = "consolidated.safetensors", "model-00001-of-00001.safetensors"
# Large 3's layout scaled down: dim 200 and hidden_dim 200 leave partial last blocks (rows and columns);
# the experts' width is a whole block, as Large 3's 4096 is (transformers fuses w1 and w3 block grids).
SHAPE = {"dim": 200, "hidden_dim": 200, "moe_expert_hidden_dim": 128}
EXPERTS, LAYER = 8, "model.layers.1.mlp.experts."


def _every_fp8_value(shape: tuple[int, int], seed: int) -> torch.Tensor:
    every = torch.arange(256, dtype=torch.uint8).view(FP8)
    every = every[~torch.isnan(every.float())]
    picks = torch.randint(0, every.numel(), (shape[0] * shape[1],), generator=torch.Generator().manual_seed(seed))
    picks[: every.numel()] = torch.arange(every.numel())  # each value at least once
    return every[picks].reshape(shape)


def _edit(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and same_bytes(a.reshape(-1), b.reshape(-1))


@pytest.mark.parametrize("shape", [(300, 200), (256, 256), (128, 129), (17, 300)])
def test_the_block_rule_equals_compressed_tensors_and_transformers_on_every_fp8_value(shape: tuple[int, int]) -> None:
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    weight = _every_fp8_value(shape, seed=shape[0])
    grid = fp8_block.scale_shape(shape)
    scale = torch.exp2(torch.randn(grid, generator=torch.Generator().manual_seed(1)) * 8).to(torch.bfloat16)
    ours = fp8.dequantize(weight, scale, torch.bfloat16)
    args = QuantizationArgs(num_bits=8, type="float", strategy="block", block_structure=[128, 128], symmetric=True)
    assert torch.equal(ours, dequantize(weight, scale, None, args=args, dtype=torch.bfloat16))
    assert torch.equal(ours, _dequantize_fp8_weight(weight, scale, [128, 128], torch.bfloat16))
    assert torch.equal(ours, fp8.native_dequantize(weight, scale))
    block = (weight[:128, :128].float() * scale[0, 0].float()).to(torch.bfloat16)  # block (0, 0) by hand
    assert torch.equal(ours[:128, :128], block)
    with pytest.raises(Exception, match=r"expected \[" + str(grid[0])):
        fp8.dequantize(weight, scale[:, :1].expand(grid[0], grid[1] + 1), torch.bfloat16)


def test_transformers_cpu_dequantizer_derives_the_block_from_the_grid_and_misreads_partial_blocks() -> None:
    """Why verify dequantizes the HF side with the config's block size, and why the README warns: transformers
    5.25's `Fp8Dequantize` (its load path without an FP8 GPU) takes rows / grid rows as the block height."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    weight = _every_fp8_value((200, 64), seed=3)
    scale = torch.tensor([[0.5], [2.0]], dtype=torch.bfloat16)
    theirs = Fp8Dequantize(None)._dequantize_one(weight, scale, output_dtype=torch.bfloat16)
    ours = fp8.dequantize(weight, scale, torch.bfloat16)
    assert torch.equal(theirs[:100], ours[:100]) and not torch.equal(theirs[100:128], ours[100:128])
    whole = _every_fp8_value((256, 256), seed=4)  # whole blocks (every Large 3 FP8 weight): the same
    grid = torch.rand(2, 2, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    assert torch.equal(Fp8Dequantize(None)._dequantize_one(whole, grid, output_dtype=torch.bfloat16),
                       fp8.dequantize(whole, grid, torch.bfloat16))  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(native, HF kept FP8, HF dequantized to bfloat16) of a tiny block-FP8 Mistral 4 (Large 3 Instruct's)."""
    root = tmp_path_factory.mktemp("large3_fp8")
    native = write_native_checkpoint(root / "native", tiny_mistral4_params(**SHAPE, **BLOCK_PARAMS), tokenizer=None)
    convert(native, root / "hf")
    convert(native, root / "bf16", dtype="bfloat16")
    return native, root / "hf", root / "bf16"


def test_block_fp8_converts_byte_for_byte_both_ways_with_its_scales_renamed(
    converted: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    native, hf, _ = converted
    source, stored = tensors_of(native), load_file(hf / HF_SHARD)
    assert source["layers.0.feed_forward.w2.weight_scale"].shape == (2, 2)  # [ceil(200/128), ceil(200/128)]
    assert _same(
        stored["model.layers.0.mlp.down_proj.weight_scale_inv"], source["layers.0.feed_forward.w2.weight_scale"]
    )
    assert _same(stored["model.layers.0.self_attn.o_proj.weight"], source["layers.0.attention.wo.weight"])
    assert stored["model.layers.0.self_attn.q_a_proj.weight"].dtype == torch.bfloat16  # ignored: re:.*q_a_proj$
    assert not any(n.endswith(("qscale_act", "activation_scale")) for n in [*source, *stored])  # dynamic inputs
    shapes = {k.removeprefix(LAYER): tuple(v.shape) for k, v in stored.items() if k.startswith(LAYER)}
    assert shapes == {"gate_up_proj": (EXPERTS, 256, 200), "gate_up_proj_scale_inv": (EXPERTS, 2, 2),
                      "down_proj": (EXPERTS, 200, 128), "down_proj_scale_inv": (EXPERTS, 2, 1)}  # fmt: skip
    for e in range(EXPERTS):
        grid = stored[LAYER + "gate_up_proj_scale_inv"][e]
        assert _same(grid[:1], source[f"layers.1.experts.{e}.w1.weight_scale"])
        assert _same(grid[1:], source[f"layers.1.experts.{e}.w3.weight_scale"])
    config = json.loads((hf / "config.json").read_text())["quantization_config"]
    assert config == {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
                      "modules_to_not_convert": ["model.embed_tokens", "kv_a_proj_with_mqa", "q_a_proj", "gate",
                                                 "lm_head"]}  # fmt: skip
    convert(hf, tmp_path / "back")
    back = tensors_of(tmp_path / "back")
    assert back.keys() == source.keys() and all(_same(back[k], source[k]) for k in source)
    params = json.loads((tmp_path / "back" / "params.json").read_text())
    assert params["quantization_config"] == BLOCK_PARAMS["quantization_config"] and "quantization" not in params
    convert(tmp_path / "back", tmp_path / "hf2")
    assert (tmp_path / "hf2" / HF_SHARD).read_bytes() == (hf / HF_SHARD).read_bytes()


def test_convert_bfloat16_multiplies_each_block_by_its_scale(converted: tuple[Path, Path, Path]) -> None:
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    native, _, bf16 = converted
    source, stored = tensors_of(native), load_file(bf16 / HF_SHARD)
    assert "quantization_config" not in json.loads((bf16 / "config.json").read_text())
    assert not any("scale" in name for name in stored)

    def expected(name: str) -> torch.Tensor:
        weight, scale = source[name + ".weight"], source[name + ".weight_scale"]
        return _dequantize_fp8_weight(weight, scale, [128, 128], torch.bfloat16)

    assert torch.equal(stored["model.layers.0.mlp.down_proj.weight"], expected("layers.0.feed_forward.w2"))
    assert torch.equal(stored["model.layers.2.self_attn.o_proj.weight"], expected("layers.2.attention.wo"))
    for e in range(EXPERTS):
        gate_up = stored[LAYER + "gate_up_proj"][e]
        assert torch.equal(gate_up[:128], expected(f"layers.1.experts.{e}.w1"))
        assert torch.equal(gate_up[128:], expected(f"layers.1.experts.{e}.w3"))


def test_transformers_fp8_model_expects_exactly_the_tensors_written(converted: tuple[Path, Path, Path]) -> None:
    """The model transformers 5.25 builds for this config.json on an FP8 GPU (FP8Linear / FP8Experts with
    128x128 blocks): the same names and shapes, FP8 where the file is FP8. (On CPU it dequantizes instead:
    README, block-wise FP8.)"""
    from transformers import AutoConfig, FineGrainedFP8Config, Mistral4ForCausalLM
    from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear

    _, hf, _ = converted
    config = AutoConfig.from_pretrained(hf)
    quantization = FineGrainedFP8Config(**{k: v for k, v in config.quantization_config.items() if k != "quant_method"})
    with torch.device("meta"):
        model = Mistral4ForCausalLM(config)
    replace_with_fp8_linear(model, quantization.modules_to_not_convert, quantization, pre_quantized=True)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stored = load_file(hf / HF_SHARD)
    assert {k: tuple(v.shape) for k, v in stored.items()} == expected
    fp8_params = {k for k, v in model.state_dict().items() if v.dtype == FP8}
    assert fp8_params == {k for k, v in stored.items() if v.dtype == FP8}


def test_verify_passes_block_fp8_kept_and_dequantized(converted: tuple[Path, Path, Path]) -> None:
    native, hf, bf16 = converted
    kept, dequantized = verify(native, hf), verify(native, bf16)
    for report in (kept, dequantized):
        assert report.passed, report.to_dict()
        assert report.logits.max_abs_dlogit is not None and report.logits.max_abs_dlogit < 1e-4
    assert kept.tensors.compared == len(tensors_of(native))  # every weight and block scale, bit for bit


@pytest.mark.parametrize(
    ("tensor", "index", "named"),
    [
        ("model.layers.0.mlp.down_proj.weight_scale_inv", (1, 1), "model.layers.0.mlp.down_proj.weight_scale_inv"),
        (LAYER + "gate_up_proj_scale_inv", (5, 1, 0), "model.layers.1.mlp.experts.5.up_proj.weight_scale_inv"),
    ],
)
def test_one_planted_block_scale_fails_verify_and_is_named(
    converted: tuple[Path, Path, Path], tmp_path: Path, tensor: str, index: tuple[int, ...], named: str
) -> None:
    native, hf, _ = converted
    broken = Path(shutil.copytree(hf, tmp_path / "hf"))

    def plant(tensors: dict[str, torch.Tensor]) -> None:
        tensors[tensor][index] *= 1.5

    _edit(broken / HF_SHARD, plant)
    report = verify(native, broken)
    assert not report.passed and report.tensors.mismatched == (named,)
    if "experts" not in tensor:  # a routed expert moves the logits only for the tokens routed to it
        assert not report.logits.passed


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda q: q["config_groups"]["FP8_BLOCK"]["weights"].update(block_structure=[64, 64]),
         "field 'quantization_config.config_groups' must be"),
        (lambda q: q.update(ignore=["model.embed_tokens", "re:.*lm_head$"]),
         "'quantization_config.ignore' must list its entries as ['model.embed_tokens', 'lm_head']"),
        (lambda q: q.update(ignore=["re:.*\\.mlp\\..*"]), "entry 're:.*\\\\.mlp\\\\..*' has no transformers spelling"),
        (lambda q: q.update(format="nvfp4-pack-quantized"), "field 'quantization_config.format' must be"),
    ],
)  # fmt: skip
def test_a_block_config_hubtools_cannot_map_is_one_line_naming_the_field(
    tmp_path: Path, run_cli: RunCli, change: Callable[[dict[str, object]], None], fragment: str
) -> None:
    native = write_native_checkpoint(tmp_path / "n", tiny_mistral4_params(**SHAPE, **BLOCK_PARAMS), tokenizer=None)
    edit_json(native / "params.json", lambda p: change(p["quantization_config"]))
    assert_one_line_error(run_cli("convert", native, tmp_path / "out"), fragment)


def test_a_block_scale_of_the_wrong_grid_is_one_line_naming_it(tmp_path: Path, run_cli: RunCli) -> None:
    native = write_native_checkpoint(tmp_path / "n", tiny_mistral4_params(**SHAPE, **BLOCK_PARAMS), tokenizer=None)
    name = "layers.0.attention.wo.weight_scale"
    _edit(native / NATIVE_FILE, lambda t: t.update({name: torch.ones(1, 1, dtype=torch.bfloat16)}))
    assert_one_line_error(
        run_cli("convert", native, tmp_path / "out"), f"scale '{name}' has shape [1, 1], expected [2, 1]"
    )


def test_transformers_cpu_load_dequantizes_every_linear_as_we_do_but_not_the_fused_experts(tmp_path: Path) -> None:
    """What `from_pretrained` does with the folder on a machine without an FP8 GPU (whole blocks, as every FP8
    weight of the real Large 3): each linear weight dequantized bit for bit as `--dtype bfloat16` writes it; the
    fused experts' block scales reported unexpected and left unapplied (transformers 5.25's limit, README)."""
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("transformers' FP8 loader needs accelerate (pip install accelerate)")
    from transformers import Mistral4ForCausalLM

    whole = {"dim": 256, "hidden_dim": 256, "moe_expert_hidden_dim": 128, "n_layers": 2}
    native = write_native_checkpoint(tmp_path / "n", tiny_mistral4_params(**whole, **BLOCK_PARAMS), tokenizer=None)
    convert(native, tmp_path / "hf")
    convert(native, tmp_path / "bf16", dtype="bfloat16")
    model, info = Mistral4ForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert set(info["unexpected_keys"]) == {"model.layers.1.mlp.experts.gate_up_proj_scale_inv",
                                            "model.layers.1.mlp.experts.down_proj_scale_inv"}  # fmt: skip
    loaded, ours = model.state_dict(), load_file(tmp_path / "bf16" / HF_SHARD)
    assert loaded.keys() == ours.keys()
    differ = sorted(k for k in ours if not torch.equal(loaded[k], ours[k]))
    assert differ == ["model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.experts.gate_up_proj"]
