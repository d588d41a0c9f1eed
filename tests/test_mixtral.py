"""The Mixtral family (`hubtools.families.mixtral`): its params and config fields, its rows, the streamed feed-forward
the one-pass engine uses (route, one expert at a time) and the experts fused as transformers 5.x fuses them."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from hubtools.errors import ParamsError
from hubtools.families import from_hf_config, parse_params
from hubtools.families.mixtral import FAMILY as MIXTRAL
from hubtools.model.hf_config import to_hf_config
from hubtools.model.names import NameTable
from hubtools.testing import synthetic_tensors, tiny_params

RAW = {"dim": 32, "n_layers": 2, "hidden_dim": 48, "n_heads": 4, "n_kv_heads": 2, "norm_eps": 1e-5, "vocab_size": 64}


def test_params_json_nests_moe_and_config_json_names_the_experts() -> None:
    params = parse_params({**RAW, "moe": {"num_experts": 4, "num_experts_per_tok": 2}})
    assert params.family == MIXTRAL and params.to_dict()["moe"] == {"num_experts": 4, "num_experts_per_tok": 2}
    config = to_hf_config(params, dtype="bfloat16").config
    assert (config["model_type"], config["architectures"], config["num_local_experts"]) == (
        "mixtral",
        ["MixtralForCausalLM"],
        4,
    )
    assert (config["num_experts_per_tok"], config["router_aux_loss_coef"], config["output_router_logits"]) == (
        2,
        0.02,
        False,
    )
    assert from_hf_config(json.loads(json.dumps(config))) == dataclasses.replace(params, rope_theta=1e6)  # the rule


@pytest.mark.parametrize(
    ("moe", "message"),
    [
        (5, r"field 'moe' must be an object with num_experts and num_experts_per_tok, got 5"),
        ({"num_experts": 4}, r"'moe' needs num_experts and num_experts_per_tok, got \['num_experts'\]"),
        ({"num_experts": 2, "num_experts_per_tok": 3}, r"moe.num_experts_per_tok 3 must be in 1..num_experts \(2\)"),
        ({"num_experts": 0, "num_experts_per_tok": 1}, r"field 'num_experts' must be a positive integer, got 0"),
    ],
)
def test_a_bad_moe_object_is_named(moe: object, message: str) -> None:
    with pytest.raises(ParamsError, match=rf"^p.json: {message}$"):
        parse_params({**RAW, "moe": moe}, source="p.json")


def test_a_bad_expert_count_in_config_json_names_the_config_key() -> None:
    config = to_hf_config(tiny_params(), dtype="bfloat16").config
    with pytest.raises(ParamsError, match=r"^c.json: field 'num_local_experts' must be a positive integer, got -1$"):
        from_hf_config({**config, "num_local_experts": -1}, source="c.json")


def test_each_layer_holds_a_router_then_each_expert_s_three_projections() -> None:
    params = tiny_params(n_layers=1, num_experts=3)
    layer = [s for s in NameTable(params).specs if s.layer == 0]
    assert [(s.expert, s.gguf) for s in layer[6:8]] == [
        (None, "blk.0.ffn_gate_inp.weight"),
        (0, "blk.0.ffn_gate_exps.weight"),
    ]
    assert [s.expert for s in layer[7:]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert MIXTRAL.indices([s.hf for s in layer]) == ({0}, {0, 1, 2})


def test_the_streamed_feed_forward_equals_the_whole_block() -> None:
    params = tiny_params(n_layers=1, num_experts=4, top_k=2)
    weights = dict(synthetic_tensors(params, dtype=torch.float32))
    h = torch.randn(1, 7, params.dim, generator=torch.Generator().manual_seed(3))
    whole = MIXTRAL.feed_forward_block(h, 0, weights.__getitem__, params)
    routing = MIXTRAL.route(h, 0, weights.__getitem__, params)
    for expert in reversed(range(params.num_experts)):  # any order: each adds its own tokens' share
        MIXTRAL.add_expert(routing, 0, expert, weights.__getitem__)
    assert torch.allclose(MIXTRAL.routed_output(routing), whole, atol=1e-6)
    assert routing.chosen.shape == (7, 2)


def test_experts_are_fused_as_transformers_fuses_them() -> None:
    params = tiny_params(n_layers=1, num_experts=2)
    config = SimpleNamespace(num_local_experts=2, hidden_size=params.dim, intermediate_size=params.hidden_dim)
    weights = dict(synthetic_tensors(params, dtype=torch.float32))
    table = NameTable(params)
    fused = MIXTRAL.empty_fused_experts(config, torch.float32)
    for spec in table.specs:
        placed = MIXTRAL.put_expert(fused, config, spec, weights[spec.native])
        assert placed is (spec.expert is not None)
    w = {(s.expert, s.native.rsplit(".", 2)[-2]): weights[s.native] for s in table.specs if s.expert is not None}
    for e in range(2):
        assert torch.equal(fused["mlp.experts.gate_up_proj"][e], torch.cat([w[e, "w1"], w[e, "w3"]]))
        assert torch.equal(fused["mlp.experts.down_proj"][e], w[e, "w2"])
    read = {s.hf: weights[s.native] for s in table.specs}.__getitem__
    keys = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"]
    state = MIXTRAL.hf_layer_state(config, 0, keys, read, torch.float32, None)
    assert all(torch.equal(state[k], fused[k]) for k in keys[:2])
    assert torch.equal(state["mlp.gate.weight"], weights["layers.0.feed_forward.gate.weight"])
