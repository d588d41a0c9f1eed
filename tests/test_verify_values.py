"""Issue 17, item 3: verify never passes what it cannot vouch for. The tensor check holds every cast to the
value rule of `hubtools.verification.casts`: destroyed weights (an integer type, an all-zero q_proj, a float
cast that overflows or flushes) fail, naming the tensor, with and without the logits check.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hubtools
from hubtools.checkpoint.reader import open_checkpoint
from hubtools.model.names import NameTable
from hubtools.model.transforms import to_hf
from hubtools.testing import tiny_params
from hubtools.verification.casts import cast_damage, unit_roundoff
from tests.helpers import RunCli, tensors_of

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
NATIVE_Q = "layers.0.attention.wq.weight"


def _convert(run_cli: RunCli, src: Path, dst: Path, *args: object) -> Path:
    result = run_cli("convert", src, dst, "--quiet", *args)
    assert result.exit_code == 0, result.output + result.stderr
    return dst


def _rewrite_shards(hf: Path, change: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Rewrite every shard of `hf` by hand (safetensors.torch.save_file), each tensor through `change`."""
    for shard in sorted(hf.glob("model*.safetensors")):
        tensors = {name: change(name, t).contiguous() for name, t in load_file(shard).items()}
        save_file(tensors, shard, metadata={"format": "pt"})


def _set_torch_dtype(hf: Path, dtype: str) -> None:
    config = json.loads((hf / "config.json").read_text())
    config["torch_dtype"] = dtype
    (hf / "config.json").write_text(json.dumps(config, indent=2))


def _verify_fails_naming(run_cli: RunCli, src: Path, hf: Path, tensor: str, *words: str) -> None:
    """`hubtools verify` exits 1 naming `tensor` (and `words`), with the logits check and without it; the
    API agrees."""
    for flags in ((), ("--no-logits",)):
        result = run_cli("verify", src, hf, "--quiet", *flags)
        assert result.exit_code == 1, (flags, result.output)
        assert "verify FAILED" in result.output, result.output
        line = next((x for x in result.output.splitlines() if f"'{tensor}'" in x), None)
        assert line is not None and "tensor differs" in line, result.output
        for word in words:
            assert word in line, (word, line)
    report = hubtools.verify(src, hf, check_logits=False)
    assert not report.passed and not report.tensors.passed and tensor in report.tensors.mismatched


@pytest.fixture
def small_params() -> object:
    return tiny_params(vocab_size=1000)


def test_an_hf_folder_of_int8_tensors_fails_verify(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, small_params: object
) -> None:
    # what `hubtools.convert(src, dst, dtype="int8")` wrote before issue 17: every weight cast to int8,
    # q_proj all zeros, config.json saying int8; bit-equal to the source cast to int8
    src = make_native(params=small_params, tokenizer=None)
    hf = _convert(run_cli, src, tmp_path / "hf")
    _rewrite_shards(hf, lambda name, t: t.to(torch.int8))
    _set_torch_dtype(hf, "int8")
    assert not tensors_of(hf)[Q_PROJ].any()  # N(0, 0.02) weights truncate to 0
    _verify_fails_naming(run_cli, src, hf, Q_PROJ, "int8", "not a floating type")
    report = hubtools.verify(src, hf, check_logits=False)
    assert report.tensors.mismatched and len(report.tensors.mismatched) == report.tensors.compared
    assert report.tensors.differences[Q_PROJ]["not_float"] > 0


def test_an_all_zero_q_proj_fails_verify(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, small_params: object
) -> None:
    src = make_native(params=small_params, tokenizer=None)
    hf = _convert(run_cli, src, tmp_path / "hf")
    _rewrite_shards(hf, lambda name, t: torch.zeros_like(t) if name == Q_PROJ else t)
    _verify_fails_naming(run_cli, src, hf, Q_PROJ, "elements")


def test_an_all_zero_q_proj_in_float16_fails_verify(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, small_params: object
) -> None:
    src = make_native(params=small_params, tokenizer=None)
    hf = _convert(run_cli, src, tmp_path / "hf", "--dtype", "float16")
    _rewrite_shards(hf, lambda name, t: torch.zeros_like(t) if name == Q_PROJ else t)
    _verify_fails_naming(run_cli, src, hf, Q_PROJ, "elements")


def test_a_float16_cast_that_overflows_fails_verify_without_logits(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, small_params: object
) -> None:
    src = make_native(params=small_params, tokenizer=None)
    path = src / "consolidated.safetensors"
    hf = _convert(run_cli, src, tmp_path / "hf", "--dtype", "float16")
    tensors = load_file(path)
    tensors[NATIVE_Q][1, :3] = 1e6  # fine in bfloat16, inf in float16 (convert refuses it: planted afterwards)
    save_file(tensors, path)
    with open_checkpoint(src) as ckpt:  # the HF q_proj: the planted source, transformed and cast
        spec = next(s for s in NameTable(ckpt.params).specs if s.native == NATIVE_Q)
        overflowed = to_hf(spec.transform, ckpt.read(NATIVE_Q), ckpt.params).to(torch.float16)
    assert int(torch.isinf(overflowed).sum()) == 3
    _rewrite_shards(hf, lambda name, t: overflowed if name == Q_PROJ else t)
    _verify_fails_naming(run_cli, src, hf, Q_PROJ, "3 of", "inf in float16")


@pytest.mark.parametrize("scale", [1e-9, 1e-4])
def test_a_float16_cast_that_flushes_fails_verify(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, small_params: object, scale: float
) -> None:
    # a float32 source whose q_proj lives below float16's normal range: float16 flushes it to 0 (1e-9)
    # or rounds it to a few subnormal bits (1e-4 * N(0, 0.02)); both are bit-equal to the cast
    src = make_native(params=small_params, tokenizer=None, dtype=torch.float32)
    path = src / "consolidated.safetensors"
    tensors = load_file(path)
    tensors[NATIVE_Q] *= scale
    save_file(tensors, path)
    hf = _convert(run_cli, src, tmp_path / "hf", "--dtype", "float16")
    _verify_fails_naming(run_cli, src, hf, Q_PROJ, "below float16's normal range", "flushed to 0")
    report = hubtools.verify(src, hf, check_logits=False)
    diff = report.tensors.differences[Q_PROJ]
    assert diff["relative_error"] > diff["bound"] == unit_roundoff(torch.float16)
    assert report.tensors.mismatched == (Q_PROJ,)  # the other tensors' casts are within float16's rounding
    if scale == 1e-9:
        assert diff["flushed"] == diff["underflow"] == diff["of"]


def test_legitimate_casts_pass(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    for dtype in ("float16", "float32"):
        hf = _convert(run_cli, src, tmp_path / dtype, "--dtype", dtype)
        report = hubtools.verify(src, hf, check_logits=False)
        assert report.passed, report.tensors.differences
        assert any(f"bfloat16 -> {dtype}" in n for n in report.tensors.notes)
    src32 = make_native("native32", params=tiny_params(vocab_size=1000), tokenizer=None, dtype=torch.float32)
    bf16 = _convert(run_cli, src32, tmp_path / "bf16", "--dtype", "bfloat16")
    report = hubtools.verify(src32, bf16, dtype="bfloat16")  # float32 -> bfloat16: bfloat16 thresholds
    assert report.passed and report.tensors.passed


# --- the rule itself ---


def test_rule_widening_casts_are_never_flagged() -> None:
    x = torch.tensor([1e-40, -3e38, 1.0, float("nan"), float("inf")], dtype=torch.float32).to(torch.bfloat16)
    assert cast_damage(x, x.to(torch.float32)) is None
    h = torch.tensor([6e-8, 65504.0, -1.0], dtype=torch.float16)
    assert cast_damage(h, h.to(torch.float32)) is None


def test_rule_real_bfloat16_weights_survive_float16() -> None:
    # a real-sized bfloat16 weight holds thousands of values below float16's normal range (6.1e-5) and a
    # few below its smallest subnormal; they carry a negligible part of the tensor: the cast passes
    w = (torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    cast = w.to(torch.float16)
    assert int(((w.abs() < 6.1e-5) & (w != 0)).sum()) > 1000
    assert cast_damage(w, cast) is None


def test_rule_exact_subnormals_pass_and_lossy_ones_fail() -> None:
    exact = torch.tensor([2.0**-20, 2.0**-24, 3 * 2.0**-24], dtype=torch.float32)  # float16 subnormals
    assert cast_damage(exact, exact.to(torch.float16)) is None
    lossy = torch.tensor([1e-6, 3e-7, 1e-5], dtype=torch.float32)
    damage = cast_damage(lossy, lossy.to(torch.float16))
    assert damage is not None and damage["underflow"] == 3 and damage["flushed"] == 0
    gone = torch.tensor([1e-9, -1e-10], dtype=torch.float32)
    assert cast_damage(gone, gone.to(torch.float16)) == {
        "underflow": 2,
        "flushed": 2,
        "of": 2,
        "dtype": "float16",
        "relative_error": 1.0,
        "bound": 2.0**-11,
    }


def test_rule_integer_targets_fail_even_when_all_values_survive() -> None:
    x = torch.tensor([0.0, 1.0, -2.0], dtype=torch.bfloat16)
    assert cast_damage(x, x.to(torch.int8)) == {"not_float": 0, "of": 3, "dtype": "int8"}
    y = torch.tensor([0.25, 1.5], dtype=torch.float32)
    assert cast_damage(y, y.to(torch.int8)) == {"not_float": 2, "of": 2, "dtype": "int8"}
    assert cast_damage(y, y.to(torch.bool)) is not None


def test_rule_overflow_is_named_as_before() -> None:
    x = torch.tensor([1e5, 1.0], dtype=torch.float32)
    assert cast_damage(x, x.to(torch.float16)) == {"overflow": 1, "of": 2, "dtype": "float16"}
    big = torch.tensor([3.4e38], dtype=torch.float32)
    assert cast_damage(big, big.to(torch.bfloat16)) == {"overflow": 1, "of": 1, "dtype": "bfloat16"}


# --- the same rule for GGUF's float types ---


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize(
    ("dtype", "scale", "words"), [(torch.bfloat16, 1e8, "inf in float16"), (torch.float32, 1e-9, "flushed to 0")]
)
def test_a_float16_gguf_that_overflows_or_flushes_fails_verify(
    tmp_path: Path, run_cli: RunCli, dtype: torch.dtype, scale: float, words: str
) -> None:
    from hubtools.gguf.export import export
    from hubtools.gguf.quant import parse_quants
    from hubtools.gguf.verify import verify_gguf
    from hubtools.testing import write_native_checkpoint

    src = write_native_checkpoint(tmp_path / "native", tiny_params(), tokenizer="v1", dtype=dtype)
    path = src / "consolidated.safetensors"
    tensors = load_file(path)
    tensors[NATIVE_Q] *= scale  # bfloat16 * 1e8: above 65504; float32 * 1e-9: below float16's subnormals
    save_file(tensors, path)
    export(src, tmp_path / "out", quants=parse_quants("f16"), name="m")
    gguf_file = tmp_path / "out" / "m.F16.gguf"
    report = verify_gguf(src, gguf_file, check_logits=False, readback=False)
    assert not report.passed and [p for p in report.tensors.problems if "blk.0.attn_q.weight" in p]
    assert words in next(p for p in report.tensors.problems if "blk.0.attn_q.weight" in p)
    if dtype == torch.float32:  # the command says the same (its tokenizer read-back takes ten seconds: once)
        result = run_cli("verify", src, gguf_file, "--no-logits", "--quiet")
        assert result.exit_code == 1 and "verify FAILED" in result.output, result.output
        line = next(x for x in result.output.splitlines() if "blk.0.attn_q.weight" in x)
        assert words in line, line


# --- the files beside the weights that transformers reads and no other check did ---


def test_truncated_side_files_of_the_hf_folder_fail_verify(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path
) -> None:
    src = make_native(tokenizer="v1")
    hf = _convert(run_cli, src, tmp_path / "hf")
    for name, keep in (("generation_config.json", 0.5), ("tokenizer.model", 0.5), ("tokenizer.model", 0.0)):
        broken = tmp_path / f"broken-{name}-{keep}"
        shutil.copytree(hf, broken)
        data = (broken / name).read_bytes()
        (broken / name).write_bytes(data[: int(len(data) * keep)])
        report = hubtools.verify(src, broken, check_logits=False)
        assert not report.passed and any(name in p for p in report.structure.problems), report.structure.problems
        result = run_cli("verify", src, broken, "--no-logits", "--quiet")
        assert result.exit_code == 1 and name in result.output, result.output
