"""hubtools.filenames: every file-name rule, read by the writers and the readers alike."""

from __future__ import annotations

import pytest

from hubtools import filenames as fn
from hubtools.checkpoint.writer import PlannedTensor, plan_shards


def test_metadata_names_and_the_default_shard_size() -> None:
    assert (fn.PARAMS, fn.CONFIG, fn.GENERATION_CONFIG) == ("params.json", "config.json", "generation_config.json")
    assert fn.INDEX == "model.safetensors.index.json"
    assert fn.DEFAULT_SHARD_SIZE == 5_000_000_000


def test_safetensors_shard_names_are_what_the_patterns_read_back() -> None:
    assert fn.shard_names(fn.HF_STEM, 3) == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    assert fn.shard_name(fn.NATIVE_STEM, 7, 12) == "consolidated-00007-of-00012.safetensors"
    native = fn.NATIVE_SHARD.fullmatch(fn.shard_name(fn.NATIVE_STEM, 7, 12))
    assert native is not None and native.groups() == ("00007", "00012")
    assert [bool(fn.HF_SHARD.fullmatch(n)) for n in ("model.safetensors", "model-00001-of-00002.safetensors")] == [
        True,
        True,
    ]
    assert fn.HF_SHARD.fullmatch("consolidated.safetensors") is None
    assert fn.NATIVE_SHARD.fullmatch("consolidated-1-of-2.safetensors") is None  # five digits, always


def test_the_writer_names_shards_by_the_same_rule() -> None:
    tensors = [PlannedTensor(f"t{i}", "BF16", (1000,)) for i in range(3)]  # 2000 bytes each
    hf = plan_shards(tensors, max_shard_size=4000, stem=fn.HF_STEM)
    assert [s.file for s in hf] == fn.shard_names(fn.HF_STEM, 2)
    native = plan_shards(tensors, max_shard_size=10**6, stem=fn.NATIVE_STEM, single_name=fn.NATIVE_SINGLE)
    assert [s.file for s in native] == ["consolidated.safetensors"]


def test_pth_and_torrent_split_names() -> None:
    assert fn.PTH_SINGLE == "consolidated.00.pth"
    assert [fn.pth_split_name(i) for i in range(3)] == [
        "consolidated.00.pth-split0",
        "consolidated.00.pth-split1",
        "consolidated.00.pth-split2",
    ]
    split = fn.PTH_SPLIT.fullmatch("consolidated.00.pth-split11")
    assert split is not None and split.groups() == ("consolidated.00.pth", "11")
    native = ["consolidated.safetensors", "consolidated-00001-of-00002.safetensors", "consolidated.01.pth"]
    assert all(fn.is_native_weight(n) for n in [*native, "consolidated.00.pth-split3"])
    assert not any(fn.is_native_weight(n) for n in ("model.safetensors", "consolidated.bin", "params.json"))


@pytest.mark.parametrize(
    ("name", "tokenizer", "tekken", "version"),
    [
        ("tokenizer.model", True, False, None),
        ("tokenizer.model.v3", True, False, "v3"),
        ("mistral_instruct_tokenizer_241114.model.v7m1", True, False, "v7"),
        ("tekken.json", True, True, None),
        ("tekken_240911.json", True, True, None),
        ("tokenizer.json", False, False, None),
        ("tokenizer_config.json", False, False, None),
        ("params.json", False, False, None),
    ],
)
def test_tokenizer_names(name: str, tokenizer: bool, tekken: bool, version: str | None) -> None:
    assert (fn.is_tokenizer_name(name), fn.is_tekken_name(name), fn.spm_version(name)) == (tokenizer, tekken, version)


def test_tokenizer_file_lists() -> None:
    assert fn.HF_TOKENIZER_FILES == ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    assert fn.TOKENIZER_NAMES == (
        "tekken.json",
        "tokenizer.model.v7",
        "tokenizer.model.v3",
        "tokenizer.model.v1",
        "tokenizer.model",
    )
    assert fn.spm_versioned_name("v7") == "tokenizer.model.v7"
    assert (fn.is_spm_model("tokenizer.model.v3"), fn.is_spm_model("mistral.model.v3")) == (True, False)


def test_gguf_names_splits_and_patterns() -> None:
    assert fn.gguf_name("Mixtral", "Q8_0") == "Mixtral.Q8_0.gguf"
    assert fn.gguf_split_names("Mixtral.Q8_0", 2) == [
        "Mixtral.Q8_0-00001-of-00002.gguf",
        "Mixtral.Q8_0-00002-of-00002.gguf",
    ]
    split = fn.GGUF_SPLIT.fullmatch("Mixtral.Q8_0-00002-of-00003.gguf")
    assert split is not None and (split["stem"], split["no"], split["count"]) == ("Mixtral.Q8_0", "00002", "00003")
    assert fn.GGUF_SPLIT.fullmatch("Mixtral.Q8_0.gguf") is None
    one = fn.GGUF_FILE.fullmatch("Mixtral.Q4_K_M.gguf")
    part = fn.GGUF_FILE.fullmatch("Mixtral.F16-00001-of-00002.gguf")
    assert one is not None and (one["stem"], one["quant"], one["no"]) == ("Mixtral", "Q4_K_M", None)
    assert part is not None and (part["stem"], part["quant"], part["count"]) == ("Mixtral", "F16", "00002")
    ours = fn.gguf_files("Mixtral", "Q8_0")
    assert [bool(ours.fullmatch(n)) for n in ("Mixtral.Q8_0.gguf", "Mixtral.Q8_0-00001-of-00002.gguf")] == [True, True]
    assert [bool(ours.fullmatch(n)) for n in ("Mixtral.Q8_0.gguf.part", "Mixtral.Q4_0.gguf", "MixtralXQ8_0.gguf")] == [
        False,
        False,
        False,
    ]


def test_gguf_download_patterns_and_report_names() -> None:
    assert fn.gguf_include_pattern("Q8_0", ("m.Q8_0.gguf",)) == "m.Q8_0.gguf"
    assert fn.gguf_include_pattern("F16", ("m.F16-00001-of-00002.gguf", "m.F16-00002-of-00002.gguf")) == (
        "*F16-*-of-*.gguf"
    )
    assert fn.report_name("m.Q8_0.gguf") == "m.Q8_0.gguf.verify.json"
