from __future__ import annotations

import pytest

from hubtools.errors import MappingError
from hubtools.model.names import NameTable, tensor_specs
from hubtools.testing import tiny_params


@pytest.mark.parametrize("moe", [True, False])
def test_table_is_a_bijection_covering_every_tensor(moe: bool) -> None:
    params = tiny_params(moe=moe, n_layers=3, num_experts=8)
    table = NameTable(params)
    per_layer = 6 + (1 + 3 * 8 if moe else 3)
    assert len(table.specs) == 3 + 3 * per_layer
    for spec in table.specs:
        assert table.spec(spec.hf, layout="hf") is table.spec(spec.native, layout="native")


def test_mixtral_uses_per_expert_hub_names() -> None:
    hf = {s.hf for s in tensor_specs(tiny_params(moe=True, num_experts=2))}
    assert "model.layers.1.block_sparse_moe.experts.1.w3.weight" in hf
    assert "model.layers.0.block_sparse_moe.gate.weight" in hf


def test_specs_are_grouped_by_layer_in_order() -> None:
    layers = [s.layer for s in tensor_specs(tiny_params(n_layers=4)) if s.layer is not None]
    assert layers == sorted(layers)


def test_shapes_use_head_dim_not_dim_over_heads() -> None:
    params = tiny_params(dim=64, n_heads=4, head_dim=32, n_kv_heads=1)
    shapes = {s.native: s.shape for s in tensor_specs(params)}
    assert shapes["layers.0.attention.wq.weight"] == (128, 64)
    assert shapes["layers.0.attention.wk.weight"] == (32, 64)
    assert shapes["layers.0.attention.wo.weight"] == (64, 128)


def test_unknown_name_is_a_mapping_error_naming_it() -> None:
    table = NameTable(tiny_params(n_layers=2))
    with pytest.raises(MappingError, match="unknown tensor 'layers.2.attention.wq.weight'"):
        table.spec("layers.2.attention.wq.weight", layout="native")
    with pytest.raises(MappingError, match="missing tensor 'norm.weight'"):
        table.check_complete([s.native for s in table.specs if s.native != "norm.weight"], layout="native", where="x")
