"""Bad input: one clear line naming the file or tensor, non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hubtools.checkpoint.safetensors_format import build_header
from hubtools.testing import tiny_params
from tests.helpers import RunCli, assert_one_line_error


def nothing_left(dst: Path) -> None:
    assert not dst.exists()
    assert not list(dst.parent.glob(f".{dst.name}.hubtools-*"))


def test_missing_params_json(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    (src / "params.json").unlink()
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "params.json: not found")
    nothing_left(tmp_path / "out")


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"dim": 64}', "missing required field(s) n_layers, n_heads, norm_eps, vocab_size"),
        (
            '{"dim": 64, "n_layers": "2", "n_heads": 4, "norm_eps": 1e-5, "vocab_size": 32000, "hidden_dim": 128}',
            "field 'n_layers' must be a positive integer, got '2'",
        ),
    ],
)
def test_invalid_params_json(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, content: str, fragment: str
) -> None:
    src = make_native(tokenizer=None)
    (src / "params.json").write_text(content)
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "params.json", fragment)


def test_params_inconsistent_with_shapes(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    params = json.loads((src / "params.json").read_text())
    params["n_kv_heads"] = 4
    (src / "params.json").write_text(json.dumps(params))
    assert_one_line_error(
        run_cli("convert", src, tmp_path / "out"),
        "'layers.0.attention.wk.weight'",
        "shape [32, 64]",
        "implies [64, 64]",
    )


def _rewrite_safetensors(src: Path, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    from safetensors.torch import load_file, save_file

    path = src / "consolidated.safetensors"
    save_file(edit(load_file(path)), path)


def test_unknown_tensor(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    _rewrite_safetensors(src, lambda t: {**t, "layers.0.attention.bias": torch.zeros(2)})
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "unknown tensor 'layers.0.attention.bias'")


def test_missing_tensor(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    _rewrite_safetensors(src, lambda t: {k: v for k, v in t.items() if k != "layers.1.ffn_norm.weight"})
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "missing tensor 'layers.1.ffn_norm.weight'")


def test_duplicate_tensor_across_shards(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = make_native(layout="sharded", tokenizer=None)
    first, second = sorted(src.glob("consolidated-*.safetensors"))
    save_file({**load_file(second), "tok_embeddings.weight": load_file(first)["tok_embeddings.weight"]}, second)
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "tensor 'tok_embeddings.weight' is stored twice")


def test_truncated_safetensors(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    path = src / "consolidated.safetensors"
    os.truncate(path, path.stat().st_size - 100)
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "consolidated.safetensors", "truncated")
    nothing_left(tmp_path / "out")


def test_corrupt_safetensors_header(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    path = src / "consolidated.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{["
    path.write_bytes(bytes(data))
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "consolidated.safetensors", "corrupt")


def test_truncated_pth_and_missing_split(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native("pth", layout="pth", tokenizer=None)
    path = src / "consolidated.00.pth"
    os.truncate(path, path.stat().st_size // 2)
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "consolidated.00.pth")
    split = make_native("split", layout="pth-split", splits=4, tokenizer=None)
    (split / "consolidated.00.pth-split2").unlink()
    assert_one_line_error(run_cli("convert", split, tmp_path / "out"), "found no -split2")


def test_ambiguous_folder_with_two_weight_formats(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path
) -> None:
    src = make_native(tokenizer=None)
    torch.save({"x": torch.zeros(1)}, src / "consolidated.00.pth")
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "ambiguous", "safetensors and pth")


def test_pickle_carrying_code_is_refused_and_never_run(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path
) -> None:
    src = make_native("evil", layout="pth", tokenizer=None)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    path = src / "consolidated.00.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("consolidated/data.pkl", pickle.dumps({"tok_embeddings.weight": Payload()}, protocol=2))
    result = run_cli("convert", src, tmp_path / "out")
    assert_one_line_error(result, "refusing to unpickle global", "system", "was not executed")
    assert not marker.exists()


def test_existing_destination_needs_force(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "mine.txt").write_text("user data")
    assert_one_line_error(run_cli("convert", src, dst), "already exists", "--force")
    assert (dst / "mine.txt").read_text() == "user data"
    assert_one_line_error(run_cli("convert", src, dst, "--force"), "found mine.txt, which is not hubtools'")
    assert (dst / "mine.txt").read_text() == "user data"
    (dst / "mine.txt").unlink()  # an empty folder may be replaced
    assert run_cli("convert", src, dst, "--force", "--quiet").exit_code == 0
    assert run_cli("convert", src, dst, "--force", "--quiet").exit_code == 0  # and so may hubtools' own output
    assert (dst / "config.json").exists()


def test_interrupted_conversion_leaves_nothing(make_native: Callable[..., Path], tmp_path: Path) -> None:
    from hubtools.converter import convert

    src = make_native(tokenizer=None)
    seen = []

    def interrupt(n: int) -> None:
        seen.append(n)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(src, tmp_path / "out", progress=interrupt)
    nothing_left(tmp_path / "out")


def _run_limited(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_full_disk_is_one_line_and_leaves_nothing(make_native: Callable[..., Path], tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    result = _run_limited(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
        from hubtools.cli import main
        sys.argv = ["hubtools", "convert", {str(src)!r}, {str(tmp_path / "out")!r}, "--quiet"]
        main()
    """,
        tmp_path,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "write failed" in lines[0], result.stderr
    assert "model-00001-of-00001.safetensors" in lines[0]
    nothing_left(tmp_path / "out")


def test_sigint_leaves_nothing(make_native: Callable[..., Path], tmp_path: Path) -> None:
    src = make_native(params=tiny_params(n_layers=8), tokenizer=None)
    script = textwrap.dedent(f"""
        import os, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored
        from hubtools import converter as c
        original = c.write_step
        def slow(*a, **k):
            original(*a, **k)
            os.kill(os.getpid(), signal.SIGINT)
        c.write_step = slow
        from hubtools.cli import main
        sys.argv = ["hubtools", "convert", {str(src)!r}, {str(tmp_path / "out")!r}, "--quiet"]
        main()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "error: interrupted; nothing was written"
    nothing_left(tmp_path / "out")


def test_debug_shows_the_traceback(make_native: Callable[..., Path], tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    (src / "params.json").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "hubtools.cli", "--debug", "convert", str(src), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "ParamsError" in result.stderr


def test_destination_inside_source_is_refused(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    src = make_native(tokenizer=None)
    assert_one_line_error(run_cli("convert", src, src / "hf"), "lies inside the source")


def test_tokenizer_vocab_must_match_the_embedding(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path
) -> None:
    src = make_native(tokenizer="v3")  # 32768-token tokenizer beside a 32000-row embedding
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "tokenizer.model.v3", "32768 tokens", "32000 rows")


def test_header_only_helper_builds_valid_files(tmp_path: Path) -> None:
    from safetensors import safe_open

    header = build_header([("a", torch.bfloat16, (2, 3)), ("b", torch.float32, (4,))], {"format": "pt"})
    data = torch.arange(6, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes() + torch.ones(4).numpy().tobytes()
    (tmp_path / "x.safetensors").write_bytes(header + data)
    with safe_open(tmp_path / "x.safetensors", framework="pt") as f:
        assert f.get_tensor("a").tolist() == [[0, 1, 2], [3, 4, 5]] and f.get_tensor("b").sum() == 4
