"""hubtools.verification.structure: the lenient HF-folder index and the config, size, dtype and name audits.

A tiny Mixtral is converted once (10 shards of at most 64 KB) and each test breaks a copy of the HF folder:
every fault must be named in `problems` (file, tensor, field and value), none may raise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from hubtools.converter import convert
from hubtools.model.family import ModelParams
from hubtools.model.names import Layout, NameTable
from hubtools.testing import tiny_params, write_native_checkpoint
from hubtools.verification.structure import (
    COMPARED_FIELDS,
    SIZE_FIELDS,
    config_problems,
    dtype_problems,
    index_hf_folder,
    mapping_problems,
    size_mismatches,
)

PARAMS = tiny_params(n_layers=2, vocab_size=256)  # Mixtral: dim 64, hidden 128, 4 heads, 2 kv heads, 4 experts
INDEX = "model.safetensors.index.json"
TOTAL = 509568  # bytes of all tensors (bf16)
EXPERT_BYTES = 128 * 64 * 2  # one w1, w2 or w3


def shard(k: int) -> str:
    return f"model-{k:05d}-of-00010.safetensors"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("structure")
    write_native_checkpoint(root / "native", PARAMS, tokenizer=None)
    convert(root / "native", root / "hf", max_shard_size="64KB")
    return root / "hf"


@pytest.fixture
def hf(converted: Path, tmp_path: Path) -> Path:
    """A copy of the converted HF folder, to break."""
    return Path(shutil.copytree(converted, tmp_path / "hf"))


def config_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def test_the_conversion_is_clean(converted: Path) -> None:
    audit = index_hf_folder(converted)
    assert (audit.problems, audit.notes) == ((), ())
    assert [f.name for f in audit.files] == [shard(k) for k in range(1, 11)]
    assert sorted(audit.tensors) == sorted(s.hf for s in NameTable(PARAMS).specs)
    assert sum(t.nbytes for t in audit.tensors.values()) == TOTAL
    assert audit.config is not None and audit.config["model_type"] == "mixtral"
    assert config_problems(audit.config, PARAMS) == []
    assert size_mismatches(audit.config, PARAMS) == []
    assert dtype_problems(audit.config, audit.tensors) == []


def test_duplicate_in_a_later_shard(hf: Path) -> None:
    norm = load_file(hf / shard(9))["model.norm.weight"]  # the index maps it to shard 9
    save_file({**load_file(hf / shard(10)), "model.norm.weight": norm}, hf / shard(10), {"format": "pt"})
    audit = index_hf_folder(hf)
    assert audit.problems == (f"{hf / shard(10)}: tensor 'model.norm.weight' is stored twice (also in {shard(9)})",)
    assert audit.notes == ()  # the first copy counts: total_size still agrees
    assert audit.tensors["model.norm.weight"].file == hf / shard(9)
    assert len(audit.files) == 10


def test_duplicate_in_an_earlier_shard(hf: Path) -> None:
    norm = load_file(hf / shard(9))["model.norm.weight"]
    save_file({**load_file(hf / shard(1)), "model.norm.weight": norm}, hf / shard(1), {"format": "pt"})
    audit = index_hf_folder(hf)
    assert audit.problems == (
        f"{hf / shard(9)}: tensor 'model.norm.weight' is stored twice (also in {shard(1)})",
        f"{hf / INDEX}: tensor 'model.norm.weight' is mapped to '{shard(9)}' but stored in '{shard(1)}'",
    )
    assert audit.tensors["model.norm.weight"].file == hf / shard(1)


def test_truncated_shard(hf: Path) -> None:
    path = hf / shard(2)  # layer 0, expert 0: w1, w2, w3
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    audit = index_hf_folder(hf)
    experts = [f"model.layers.0.block_sparse_moe.experts.0.w{i}.weight" for i in (1, 2, 3)]
    assert audit.problems == (
        f"{path}: truncated (header needs {len(data)} bytes, file has {len(data) // 2})",
        *(f"{hf / INDEX}: tensor '{n}' is mapped to '{shard(2)}', which does not hold it" for n in experts),
    )
    assert audit.notes == (
        f"{INDEX}: metadata.total_size is {TOTAL}, the tensors hold {TOTAL - 3 * EXPERT_BYTES} bytes",
    )
    assert shard(2) not in [f.name for f in audit.files] and len(audit.files) == 9
    assert not set(experts) & set(audit.tensors)


def test_missing_shard_and_garbage_shard(hf: Path) -> None:
    (hf / shard(10)).unlink()
    (hf / shard(3)).write_bytes(b"\xff" * 4)
    (hf / "model-00011-of-00010.safetensors").write_bytes(b"")  # on disk, not in the index
    audit = index_hf_folder(hf)
    assert audit.problems == (
        f"{hf / INDEX}: maps 1 tensor(s) to '{shard(10)}', which is missing",
        f"{hf / shard(3)}: truncated safetensors file (4 bytes, expected at least 8)",
        *(
            f"{hf / INDEX}: tensor 'model.layers.0.block_sparse_moe.experts.1.w{i}.weight' is mapped to "
            f"'{shard(3)}', which does not hold it"
            for i in (1, 2, 3)
        ),
    )
    assert (
        audit.notes[0]
        == "'model-00011-of-00010.safetensors' is not referenced by model.safetensors.index.json (ignored)"
    )
    assert "lm_head.weight" not in audit.tensors


def test_config_missing_duplicated_or_not_json(hf: Path) -> None:
    (hf / "config.json").unlink()
    assert index_hf_folder(hf).problems == (f"{hf / 'config.json'}: expected the model's config, found no file",)
    assert index_hf_folder(hf).config is None
    (hf / "config.json").write_text('{"hidden_size": 64, "hidden_size": 65}')
    audit = index_hf_folder(hf)
    assert audit.problems == ("config.json: key 'hidden_size' appears twice",)
    assert audit.config == {"hidden_size": 65}
    (hf / "config.json").write_text("{")
    (problem,) = index_hf_folder(hf).problems
    assert problem.startswith("config.json: not valid JSON (Expecting property name enclosed in double quotes")


def test_config_not_an_object_is_a_problem(hf: Path) -> None:
    (hf / "config.json").write_text("[1, 2]")
    audit = index_hf_folder(hf)
    assert audit.config is None
    assert audit.problems == ("config.json: expected a JSON object, found a list",)
    for text, kind in (('"mixtral"', "a string"), ("64", "a number"), ("true", "a boolean"), ("null", "null")):
        (hf / "config.json").write_text(text)
        assert index_hf_folder(hf).problems == (f"config.json: expected a JSON object, found {kind}",)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"hidden_size": 65}, "config.json hidden_size: expected 64, found 65"),
        ({"intermediate_size": "128"}, 'config.json intermediate_size: expected 128, found "128"'),
        ({"num_hidden_layers": None}, "config.json num_hidden_layers: expected 2, found null"),
        (
            {"architectures": ["MistralForCausalLM"]},
            'config.json architectures: expected ["MixtralForCausalLM"], found ["MistralForCausalLM"]',
        ),
        ({"model_type": "mistral"}, 'config.json model_type: expected "mixtral", found "mistral"'),
        ({"num_key_value_heads": 4}, "config.json num_key_value_heads: expected 2, found 4"),
        ({"num_key_value_heads": None}, "config.json num_key_value_heads: expected 2, found 4"),  # absent: all heads
        ({"head_dim": 32}, "config.json head_dim: expected 16, found 32"),
        ({"rms_norm_eps": 1e-6}, "config.json rms_norm_eps: expected 1e-05, found 1e-06"),
        ({"vocab_size": 32000}, "config.json vocab_size: expected 256, found 32000"),
        ({"sliding_window": 4096}, "config.json sliding_window: expected null, found 4096"),
        ({"num_local_experts": 8}, "config.json num_local_experts: expected 4, found 8"),
        ({"num_experts_per_tok": 1}, "config.json num_experts_per_tok: expected 2, found 1"),
        ({"tie_word_embeddings": True}, "config.json tie_word_embeddings: expected false, found true"),
        (
            {"rope_theta": 10000.0},
            "config.json rope_theta: expected 1e+06 (default rule: no sliding window), found 10000",
        ),
        (
            {"rope_theta": None, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
            "config.json rope_theta: expected 1e+06 (default rule: no sliding window), found 10000",
        ),
        ({"rope_parameters": [1]}, "config.json rope_parameters: expected an object, found [1]"),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}},
            'config.json rope_parameters.rope_type: expected "default", found "yarn"',
        ),
    ],
)
def test_config_problem_names_field_and_values(converted: Path, changes: dict[str, Any], problem: str) -> None:
    config = {**config_of(converted), **changes}
    assert config_problems(config, PARAMS) == [problem]


def test_config_rope_theta_from_params_and_explicit() -> None:
    config = {**to_config(PARAMS), "rope_theta": 1e6}
    assert config_problems(config, PARAMS) == []
    assert config_problems(config, PARAMS, rope_theta=5e5) == [
        "config.json rope_theta: expected 500000 (override), found 1e+06"
    ]
    windowed = tiny_params(n_layers=2, vocab_size=256, sliding_window=4096)
    assert config_problems({**to_config(windowed), "rope_theta": 1e6}, windowed) == [
        "config.json rope_theta: expected 10000 (default rule: sliding window), found 1e+06"
    ]
    explicit = tiny_params(n_layers=2, vocab_size=256, rope_theta=2e6)
    assert config_problems({**to_config(explicit), "rope_theta": 1e6}, explicit) == [
        "config.json rope_theta: expected 2e+06 (params.json), found 1e+06"
    ]


def to_config(params: ModelParams) -> dict[str, Any]:
    from hubtools.model.hf_config import to_hf_config

    return to_hf_config(params, dtype="bfloat16").config


def test_config_problems_every_field_at_once(converted: Path) -> None:
    broken = dict.fromkeys(config_of(converted), "x")
    problems = config_problems(broken, PARAMS)
    assert [p.split(":", 1)[0] for p in problems] == [f"config.json {k}" for k in COMPARED_FIELDS]
    assert all(p.endswith(', found "x"') for p in problems)


def test_rope_scaling_names_itself(converted: Path) -> None:
    config = {**config_of(converted), "rope_scaling": {"type": "linear", "factor": 2.0}}
    (problem,) = config_problems(config, PARAMS)
    assert "rope_scaling" in problem and '"linear"' in problem, problem
    assert problem == 'config.json rope_scaling: expected null, found {"type": "linear", "factor": 2.0}'
    for harmless in (None, {}, {"rope_type": "default"}, {"type": "default"}):
        assert config_problems({**config_of(converted), "rope_scaling": harmless}, PARAMS) == []


def test_float_and_bool_sizes_are_problems(converted: Path) -> None:
    config = {**config_of(converted), "hidden_size": 64.0}
    assert config_problems(config, PARAMS) != [] and size_mismatches(config, PARAMS) == ["hidden_size"]
    assert config_problems(config, PARAMS) == ["config.json hidden_size: expected 64, found 64.0"]
    one_layer = tiny_params(n_layers=1, vocab_size=256)
    config = {**to_config(one_layer), "num_hidden_layers": True, "tie_word_embeddings": 0}
    assert config_problems(config, one_layer) == [
        "config.json num_hidden_layers: expected 1, found true",
        "config.json tie_word_embeddings: expected false, found 0",
    ]
    assert size_mismatches(config, one_layer) == ["num_hidden_layers"]
    derived = {**to_config(one_layer), "head_dim": None, "hidden_size": "64", "num_attention_heads": 0}
    assert size_mismatches(derived, one_layer) == ["hidden_size", "num_attention_heads", "head_dim"]  # no raise


def test_size_mismatches(converted: Path) -> None:
    config = config_of(converted)
    assert size_mismatches(None, PARAMS) == list(SIZE_FIELDS)
    assert size_mismatches({**config, "hidden_size": 65, "num_local_experts": 8}, PARAMS) == [
        "hidden_size",
        "num_local_experts",
    ]
    assert size_mismatches({**config, "rms_norm_eps": 0.1, "rope_theta": 1.0}, PARAMS) == []  # not sizes
    assert size_mismatches({**config, "head_dim": None}, PARAMS) == []  # hidden_size // heads = 16
    dense = tiny_params(moe=False, n_layers=2, vocab_size=256)
    assert size_mismatches({**to_config(dense), "num_local_experts": 8}, dense) == []  # not a size of Mistral
    assert size_mismatches({}, dense) == [k for k in SIZE_FIELDS if k != "num_local_experts"]


def test_dtype_declared_differs(converted: Path) -> None:
    audit = index_hf_folder(converted)
    config = config_of(converted)
    assert config["torch_dtype"] == "bfloat16"
    assert dtype_problems({**config, "torch_dtype": "float16"}, audit.tensors) == [
        'config.json torch_dtype: declares "float16", the tensors are bfloat16'
    ]
    assert dtype_problems({**config, "dtype": "float32"}, audit.tensors) == [  # transformers 5.x's key wins
        'config.json dtype: declares "float32", the tensors are bfloat16'
    ]
    assert dtype_problems({**config, "torch_dtype": None}, audit.tensors) == []  # none declared


def test_dtype_mixed(hf: Path) -> None:
    tensors = load_file(hf / shard(9))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].float()
    save_file(tensors, hf / shard(9), {"format": "pt"})
    audit = index_hf_folder(hf)
    assert audit.problems == ()
    assert dtype_problems(config_of(hf), audit.tensors) == [
        "HF tensors have mixed dtypes ['bfloat16', 'float32'] (expected one)"
    ]
    assert dtype_problems({"torch_dtype": "float16"}, audit.tensors) == [
        "HF tensors have mixed dtypes ['bfloat16', 'float32'] (expected one)",
        'config.json torch_dtype: declares "float16", the tensors are bfloat16, float32',
    ]


def test_mapping_problems() -> None:
    table = NameTable(PARAMS)
    shapes = {s.hf: s.shape for s in table.specs}
    names = [n for n in shapes if n != "lm_head.weight"] + ["model.extra.weight"]
    shapes["model.extra.weight"] = (1,)
    shapes["model.norm.weight"] = (65,)
    assert mapping_problems(table, names, shapes, layout=Layout.HF, where="HF") == [
        "HF: unknown tensor 'model.extra.weight'",
        "HF: missing tensor 'lm_head.weight'",
        "HF: tensor 'model.norm.weight' has shape [65], expected [64]",
    ]
    native = [s.native for s in table.specs]
    assert mapping_problems(table, native, {s.native: s.shape for s in table.specs}, layout="native", where="n") == []


def test_mapping_problems_name_twenty_then_count() -> None:
    table = NameTable(PARAMS)
    names = [f"junk.{i}" for i in range(25)]
    problems = mapping_problems(table, names, {}, layout=Layout.NATIVE, where="native")
    specs = table.specs
    assert problems[:21] == [f"native: unknown tensor 'junk.{i}'" for i in range(20)] + [
        "... and 5 more like 'junk.20'"
    ]
    assert problems[21:41] == [f"native: missing tensor '{s.native}'" for s in specs[:20]]
    assert problems[41:] == [f"... and {len(specs) - 20} more like '{specs[20].native}'"]
