"""`hubtools verify SRC FILE.gguf`: a good export passes every check; planted faults fail and are named."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from hubtools.errors import LayoutError
from hubtools.gguf.export import export
from hubtools.gguf.files import FastReader
from hubtools.gguf.quant import parse_quants
from hubtools.gguf.verify import verify_gguf
from hubtools.testing import tiny_params, write_native_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("verify")
    native = write_native_checkpoint(root / "native", tiny_params(moe=True), tokenizer="v1")
    export(native, root / "out", quants=parse_quants("f16,q8_0,q4_0"), name="m")
    return native, root / "out"


def flip_expert_value(path: Path, tensor: str, expert: int) -> None:
    """Change one stored value inside one expert of a merged expert tensor (in place)."""
    t = next(t for t in FastReader(path).tensors if t.name == tensor)
    per_expert = t.n_bytes // int(t.shape[-1])
    offset = t.data_offset + expert * per_expert + 7  # inside a block's values (past a Q8_0 scale)
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x41]))


@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q4_0"])
def test_a_good_export_passes_every_check(exported: tuple[Path, Path], quant: str) -> None:
    native, out = exported
    report = verify_gguf(native, out / f"m.{quant}.gguf", readback=False)
    checks = report.to_dict()["checks"]
    assert report.passed, checks
    assert checks["tensors"]["compared"] == checks["tensors"]["expected"] == 23
    assert checks["tokenizer"]["vocab_keys_equal"] is True
    logits = checks["logits"]
    assert logits["top1_agreement"] > (0.99 if quant == "F16" else 0.5)
    assert logits["mean_kl"] < (1e-6 if quant == "F16" else 0.1)
    assert bool(logits["thresholds"]) == (quant == "F16")  # quantized types report, float types are judged


@pytest.mark.parametrize("quant", ["F16", "Q8_0"])
def test_a_flipped_value_in_one_expert_fails_and_is_named(
    exported: tuple[Path, Path], tmp_path: Path, quant: str
) -> None:
    native, out = exported
    broken = tmp_path / f"m.{quant}.gguf"
    shutil.copyfile(out / f"m.{quant}.gguf", broken)
    flip_expert_value(broken, "blk.1.ffn_down_exps.weight", 2)
    report = verify_gguf(native, broken, readback=False, check_logits=False)
    assert not report.passed and report.structure.passed
    assert report.tensors.problems == (
        "tensor 'blk.1.ffn_down_exps.weight' (expert 2, layers.1.feed_forward.experts.2.w2.weight): "
        f"differs from the source at byte {7}",
    )


def test_wrong_metadata_and_a_foreign_model_are_named(exported: tuple[Path, Path], tmp_path: Path) -> None:
    native, out = exported
    other = write_native_checkpoint(tmp_path / "other", tiny_params(moe=True, n_kv_heads=4), tokenizer="v1")
    report = verify_gguf(other, out / "m.F16.gguf", readback=False, check_logits=False)
    assert not report.passed
    assert "metadata 'llama.attention.head_count_kv': expected 4, found 2" in report.structure.problems
    assert any(p.startswith("tensor 'blk.0.attn_k.weight': expected shape") for p in report.structure.problems)


def test_cli_verify_gguf_exit_codes_and_readback(
    exported: tuple[Path, Path], tmp_path: Path, run_cli: Callable[..., Result]
) -> None:
    native, out = exported
    good = run_cli("verify", native, out / "m.F16.gguf", "--json", tmp_path / "r.json")
    assert good.exit_code == 0, good.output
    assert "hubtools verify PASSED" in good.stdout and "transformers read-back" in good.stdout
    broken = tmp_path / "m.F16.gguf"
    shutil.copyfile(out / "m.F16.gguf", broken)
    flip_expert_value(broken, "blk.0.ffn_up_exps.weight", 3)
    bad = run_cli("verify", native, broken, "--no-logits", "-q")
    assert bad.exit_code == 1
    assert "tensor 'blk.0.ffn_up_exps.weight' (expert 3" in bad.stdout


def test_a_split_set_is_verified_as_one_model_from_any_part(exported: tuple[Path, Path], tmp_path: Path) -> None:
    native, _ = exported
    files = export(native, tmp_path, quants=parse_quants("q8_0"), name="s", split_max_size=2_000_000).outputs[0].files
    assert len(files) > 1
    report = verify_gguf(native, tmp_path / files[-1], readback=False, check_logits=False)
    assert report.passed and report.files == tuple(str(tmp_path / f) for f in files)
    (tmp_path / files[0]).unlink()
    with pytest.raises(LayoutError, match="missing part of the split GGUF set"):
        verify_gguf(native, tmp_path / files[-1], readback=False, check_logits=False)


def test_prompts_file_adds_texts_to_the_logits_check(exported: tuple[Path, Path], tmp_path: Path) -> None:
    native, out = exported
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"Bonjour, comment allez-vous ?"\n"def f(x):\\n    return x * 2"\n')
    report = verify_gguf(native, out / "m.Q8_0.gguf", readback=False, prompts_path=prompts)
    assert report.logits.sequences == 6 and report.logits.prompts.endswith("+ 2 texts of prompts.jsonl")
    assert report.tokenizer.passed and report.passed
