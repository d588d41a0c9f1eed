"""Mistral 4 against transformers' own `convert_mistral4_weight_to_hf.py`, run on the same tiny native checkpoints.

The script (not vendored: HUBTOOLS_TRANSFORMERS_SCRIPTS, else /work/peer/scripts; these tests skip without it)
runs in a child process through bench/mistral3.py's PEER shims: `finegrained` (it imports a module transformers
5.25 names `finegrained_fp8`) and `model-only` (weights and config: its processor step needs torchvision, and
the tokenizer is held against mistral-common elsewhere). In its bf16 mode, transformers 5.25 loads its output and
hubtools' (`--dtype bfloat16` for an FP8 source): every parameter and buffer the same name, shape, dtype and bytes,
and the float32 logits within 1e-4. Where the script fails (a leading dense layer) or loses values (its FP8 mode's
common scale per expert), a test shows it, and hubtools against the clean-room reference on native names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from hubtools.converter import convert
from hubtools.model import fp8
from hubtools.model.fp8 import Fp8
from hubtools.model.params import ModelParams
from hubtools.testing import TOKENIZERS, tiny_mistral4_params, tiny_vision_params, write_native_checkpoint
from hubtools.verification import reference
from tests.helpers import same_bytes, tensors_of
from tests.test_mistral4_fp8 import _edit, _one_input_scale_per_expert

SCRIPTS = Path(os.environ.get("HUBTOOLS_TRANSFORMERS_SCRIPTS", "/work/peer/scripts"))
SCRIPT = SCRIPTS / "convert_mistral4_weight_to_hf.py"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason=f"transformers' script not found at {SCRIPT}")

EXPERTS, WIDTH = 8, 32  # tiny_mistral4_params' moe.num_experts and expert_hidden_dim


def _params(*, quantized: bool, vision: bool, dense: int = 0) -> ModelParams:
    """Tiny Mistral 4: shared expert, 4 routed groups of 2 experts (2 chosen per token), `dense` leading layers."""
    text = tiny_mistral4_params(
        moe_first_k_dense_replace=dense, moe_num_expert_groups=4, moe_num_expert_groups_per_tok=2,
        vocab_size=TOKENIZERS["tekken"][2] if vision else 32000,
    )  # fmt: skip
    text = dataclasses.replace(text, quantization=Fp8()) if quantized else text
    return tiny_vision_params(text=text) if vision else text


def _native(folder: Path, params: ModelParams) -> Path:
    """A native checkpoint of `params` in one file; FP8 with one input scale per expert, as a release has."""
    native = write_native_checkpoint(folder, params, tokenizer=None, shards=1)
    _edit(native / "consolidated.safetensors", _one_input_scale_per_expert)  # (bf16: no input scale to edit)
    return native


def run_script(src: Path, out: Path, *shims: str, output_format: str = "bf16") -> subprocess.CompletedProcess[str]:
    """transformers' script on `src` (bench/mistral3.py's PEER with `shims` and `finegrained`, `model-only`)."""
    from bench.mistral3 import PEER

    shim = ",".join(["finegrained", "model-only", *shims])
    cmd = [sys.executable, "-c", PEER, shim, str(SCRIPT), str(src), str(out), "--output_format", output_format]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src.parent, check=False)


def _load(folder: Path) -> Any:
    import transformers

    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    model_class = getattr(transformers, architecture)
    return model_class.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation="eager", experts_implementation="eager"
    ).eval()


def _tokens(params: ModelParams) -> torch.Tensor:
    """Text tokens above the control range (no image token): the same for both models."""
    return torch.randint(1000, params.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))


def _logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.float()(input_ids=tokens).logits


def _reference_logits(native: Path, params: ModelParams, tokens: torch.Tensor) -> torch.Tensor:
    """The clean-room forward on native names, FP8 dequantized by the native rule."""
    stored = tensors_of(native)
    weights = {}
    for name, tensor in stored.items():
        if name.endswith((".qscale_weight", ".qscale_act")):
            continue
        scale = stored.get(name.removesuffix(".weight") + ".qscale_weight")
        weights[name] = (fp8.dequantize(tensor, scale, torch.bfloat16) if scale is not None else tensor).float()
    text = params.text if params.option("vision") is not None else params
    return reference.forward(tokens, weights.__getitem__, text, rope_theta=10000.0)


def assert_same_model(peer: Any, ours: Any) -> None:
    """Every parameter and buffer: the same names, shapes, dtypes and bytes."""
    theirs, mine = peer.state_dict(), ours.state_dict()
    assert sorted(theirs) == sorted(mine)
    different = [n for n in theirs if not same_bytes(theirs[n].reshape(-1), mine[n].reshape(-1))]
    assert not different, different


CASES = {  # id -> (FP8 source, vision wrapper)
    "bf16-text": (False, False),
    "fp8-text": (True, False),
    "bf16-vision": (False, True),
    "fp8-vision": (True, True),
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.slow] if CASES[c][1] else []) for c in CASES]
)  # fmt: skip
def test_the_script_s_bf16_model_equals_hubtools_parameter_for_parameter_and_in_logits(
    case: str, tmp_path: Path
) -> None:
    quantized, vision = CASES[case]
    params = _params(quantized=quantized, vision=vision)
    native = _native(tmp_path / "native", params)
    script = run_script(native, tmp_path / "peer")
    assert script.returncode == 0, script.stderr[-2000:]
    convert(native, tmp_path / "ours", dtype="bfloat16" if quantized else None)
    peer, ours = _load(tmp_path / "peer"), _load(tmp_path / "ours")
    assert type(peer) is type(ours) and type(ours).__name__ == (
        "Mistral3ForConditionalGeneration" if vision else "Mistral4ForCausalLM"
    )
    assert_same_model(peer, ours)
    tokens = _tokens(params)
    assert (_logits(peer, tokens) - _logits(ours, tokens)).abs().max() < 1e-4


def test_the_script_cannot_read_a_leading_dense_layer_and_hubtools_converts_it_as_the_reference_runs_it(
    tmp_path: Path,
) -> None:
    """Its renamings have no `feed_forward.*` (Mistral Small 4 has none; a `first_k_dense_replace` checkpoint
    does): strict loading refuses layer 0's MLP. With just those three renamings added (the `dense-ffn` shim) its
    model is hubtools', and hubtools' dense layer runs as the reference runs the native weights."""
    params = _params(quantized=False, vision=False, dense=1)
    native = _native(tmp_path / "native", params)
    published = run_script(native, tmp_path / "published")
    assert published.returncode != 0 and not (tmp_path / "published" / "config.json").exists()
    assert 'Unexpected key(s) in state_dict: "model.layers.0.feed_forward.w1.weight"' in published.stderr
    assert 'Missing key(s) in state_dict: "model.layers.0.mlp.gate_proj.weight"' in published.stderr
    assert run_script(native, tmp_path / "peer", "dense-ffn").returncode == 0
    convert(native, tmp_path / "ours")
    peer, ours = _load(tmp_path / "peer"), _load(tmp_path / "ours")
    assert_same_model(peer, ours)
    assert ours.config.first_k_dense_replace == 1 and hasattr(ours.model.layers[0].mlp, "gate_proj")
    tokens = _tokens(params)
    ours_logits = _logits(ours, tokens)
    assert (_logits(peer, tokens) - ours_logits).abs().max() < 1e-4
    grouped_like_the_reference = tiny_mistral4_params(moe_first_k_dense_replace=1)  # all groups chosen: see below
    native = _native(tmp_path / "all-groups", grouped_like_the_reference)
    convert(native, tmp_path / "all-groups-hf")
    hf = _logits(_load(tmp_path / "all-groups-hf"), tokens)
    assert (_reference_logits(native, grouped_like_the_reference, tokens) - hf).abs().max() < 1e-4
    # (with fewer groups chosen than there are, transformers' router and the reference differ by design:
    #  test_mistral4.test_transformers_groups_experts_by_their_top_two_sum_where_vllm_takes_the_best_one)


def _script_functions(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The script's functions, in this process (its module-level import of the module 5.25 lacks is stubbed:
    the functions used here do not call it)."""
    import runpy
    import types

    monkeypatch.setitem(sys.modules, "transformers.integrations.finegrained", types.ModuleType("finegrained"))
    sys.modules["transformers.integrations.finegrained"].replace_with_finegrained_layer = None  # type: ignore[attr-defined]
    return runpy.run_path(str(SCRIPT), run_name="peer_script")


def test_the_script_s_fp8_mode_fails_in_transformers_5_25_and_its_common_scale_loses_the_smaller_half(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its `--output_format fp8` gives each expert's gate and up one scale (the larger of the two) and
    re-quantizes both to it, then writes `gate_up_proj_scale_inv` as [E, 1, 1]: 5.25's FP8 experts take
    [E, 2, 1], so the script stops at its own strict load; and its fused values (its `fuse_experts`, run here)
    no longer dequantize to the release's in the smaller half. hubtools keeps one scale per half: every value as
    the native rule gives it, in the layout the FP8 experts load."""
    from transformers import Mistral4Config
    from transformers.integrations.finegrained_fp8 import FP8Experts

    params = _params(quantized=True, vision=False)
    native = _native(tmp_path / "native", params)
    script = run_script(native, tmp_path / "peer", output_format="fp8")
    assert script.returncode != 0 and not (tmp_path / "peer" / "config.json").exists()
    assert "size mismatch for model.layers.1.mlp.experts.gate_up_proj_scale_inv" in script.stderr
    assert "torch.Size([8, 1, 1]) from checkpoint, the shape in current model is torch.Size([8, 2, 1])" in (
        script.stderr
    )
    source = tensors_of(native)
    functions = _script_functions(monkeypatch)
    _, expert_weights = functions["convert_state_dict"](source, [], [], set(), None, True, False)
    fused = functions["fuse_experts"](expert_weights, EXPERTS, False, True)
    peer = {k.removeprefix("model.layers.1.mlp.experts."): v for k, v in fused.items() if ".layers.1." in k}
    convert(native, tmp_path / "ours")
    experts = "model.layers.1.mlp.experts."
    (shard,) = sorted((tmp_path / "ours").glob("*.safetensors"))
    ours = {k.removeprefix(experts): v for k, v in load_file(shard).items() if k.startswith(experts)}
    assert peer["gate_up_proj_scale_inv"].shape == (EXPERTS, 1, 1)
    lost = 0
    for e in range(EXPERTS):
        expert = f"layers.1.experts.{e}."
        halves = [(source[expert + f"{w}.weight"], source[expert + f"{w}.qscale_weight"]) for w in ("w1", "w3")]
        native_gate_up = torch.cat([fp8.dequantize(weight, scale, torch.float32) for weight, scale in halves])
        ours_scales = ours["gate_up_proj_scale_inv"][e].float().repeat_interleave(WIDTH, dim=0)
        ours_gate_up = ours["gate_up_proj"][e].float() * ours_scales
        assert torch.equal(ours_gate_up, native_gate_up)
        peer_gate_up = peer["gate_up_proj"][e].float() * peer["gate_up_proj_scale_inv"][e].float()
        lost += int((peer_gate_up != native_gate_up).sum())
    assert lost > 0.25 * EXPERTS * 2 * WIDTH * 64, lost  # the smaller half's values, in most experts
    config = Mistral4Config(**{k: v for k, v in json.loads((tmp_path / "ours/config.json").read_text()).items()
                               if k not in ("quantization_config", "architectures", "model_type")})  # fmt: skip
    FP8Experts(config, activation_scheme="static").load_state_dict(ours, strict=True)
