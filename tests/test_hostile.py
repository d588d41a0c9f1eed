"""Hardening (issue 8, items 8 and 9): verify never passes what it cannot measure, and hostile or broken
files end in one line naming the file, within bounded time and memory.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

from hubtools.testing import TOKENIZERS, tiny_params, write_native_checkpoint
from tests.conftest import assert_one_line_error

RunCli = Callable[..., Result]


def _strict_json(text: str) -> object:
    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in the JSON report")

    return json.loads(text, parse_constant=refuse)


def _convert(run_cli: RunCli, src: Path, dst: Path, *args: object) -> Path:
    result = run_cli("convert", src, dst, "--quiet", *args)
    assert result.exit_code == 0, result.output + result.stderr
    return dst


# --- item 8: verify must not pass what it cannot measure ---


def test_nan_weights_fail_verify_and_the_json_report_stays_valid(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    path = src / "consolidated.safetensors"
    tensors = load_file(path)
    tensors["layers.1.ffn_norm.weight"][3] = float("nan")  # both sides hold the same NaN: bit-exact
    save_file(tensors, path)
    hf = _convert(run_cli, src, tmp_path / "hf")
    result = run_cli("verify", src, hf, "--json", tmp_path / "report.json", "--quiet")
    assert result.exit_code == 1
    assert "verify FAILED" in result.output and "NaN or inf" in result.output
    report = _strict_json((tmp_path / "report.json").read_text())
    logits = report["checks"]["logits"]  # type: ignore[index]
    assert logits["passed"] is False
    assert logits["nonfinite"][0].startswith("reference hidden state after layer 1")
    assert logits["max_abs_dlogit"] is None or math.isfinite(logits["max_abs_dlogit"])
    assert report["checks"]["tensors"]["passed"] is True  # type: ignore[index]


def test_float16_overflow_fails_verify(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    path = src / "consolidated.safetensors"
    tensors = load_file(path)
    tensors["layers.0.attention.wv.weight"][0, :4] = 1e6  # fine in bfloat16, inf in float16
    save_file(tensors, path)
    hf = _convert(run_cli, src, tmp_path / "hf", "--dtype", "float16")
    result = run_cli("verify", src, hf, "--json", tmp_path / "report.json", "--quiet")
    assert result.exit_code == 1
    assert "4 of 2048 finite native values are inf in float16" in result.output
    report = _strict_json((tmp_path / "report.json").read_text())
    diff = report["checks"]["tensors"]["differences"]["model.layers.0.self_attn.v_proj.weight"]  # type: ignore[index]
    assert diff == {"overflow": 4, "of": 2048, "dtype": "float16"}
    assert report["checks"]["logits"]["passed"] is False  # type: ignore[index]


def test_logit_metrics_do_not_hide_nan() -> None:
    from hubtools.verification.logits import THRESHOLDS, logit_metrics, passes

    ref = torch.tensor([[[1.0, 2.0], [float("nan"), 0.0]]])
    metrics = logit_metrics(ref, ref.clone(), torch.ones(1, 2, dtype=torch.bool))
    assert math.isnan(metrics["max_abs_dlogit"])
    assert not passes(metrics, THRESHOLDS["float32"])


@pytest.mark.parametrize("version", sorted(TOKENIZERS))
def test_verify_passes_on_every_tokenizer_version(version: str, run_cli: RunCli, tmp_path: Path) -> None:
    vocab = TOKENIZERS[version][2]
    params = tiny_params(vocab_size=vocab, dim=32, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1, num_experts=2)
    src = write_native_checkpoint(tmp_path / "native", params, tokenizer=version, dtype=torch.float32)
    hf = _convert(run_cli, src, tmp_path / "hf")
    result = run_cli("verify", src, hf, "--json", tmp_path / "report.json")
    assert result.exit_code == 0, result.output + result.stderr
    report = _strict_json((tmp_path / "report.json").read_text())
    tokenizer = report["checks"]["tokenizer"]  # type: ignore[index]
    assert tokenizer["passed"] is True and tokenizer["agreement"] == 1.0
    assert tokenizer["hf_vocab_size"] == vocab


# --- item 9: hostile .pth archives ---


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _TensorView:
    """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, offset, size, stride)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        from collections import OrderedDict

        return (torch._utils._rebuild_tensor_v2, (*self.args, False, OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def write_pth(path: Path, pkl: bytes, storages: dict[str, int] | None = None, *, deflate: bool = False) -> Path:
    """A torch-style zip: archive/data.pkl (deflated if asked) and stored float32 storages of given sizes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl, compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
        for key, numel in (storages or {}).items():
            z.writestr(f"archive/data/{key}", bytes(4 * numel))
    return path


def torch_pickle(state: dict[str, object]) -> bytes:
    import io

    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(state)
    return buf.getvalue()


def pth_folder(
    make_native: Callable[..., Path], name: str, pkl: bytes, storages: dict[str, int] | None = None, **kwargs: bool
) -> Path:
    src = make_native(name, layout="pth", tokenizer=None)
    write_pth(src / "consolidated.00.pth", pkl, storages, **kwargs)
    return src


def run_limited(args: list[str], *, memory: int = 2 << 30, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m hubtools.cli ARGS` with its address space capped beyond what it has after start-up."""
    script = textwrap.dedent(f"""
        import resource, sys
        import hubtools.cli, numpy
        with open("/proc/self/statm") as f:
            base = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (base + {memory}, resource.RLIM_INFINITY))
        sys.argv = ["hubtools", *{args!r}]
        hubtools.cli.main()
    """)
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-c", script], cwd=cwd or root, capture_output=True, text=True, timeout=120)


def assert_one_line_exit(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_deeply_nested_pickle_is_refused_before_it_crashes_the_process(
    make_native: Callable[..., Path], tmp_path: Path
) -> None:
    # {((((...)),): None}: hashing a 200,000-deep tuple recurses in C and kills the process (rc 139)
    nested = b"\x80\x02}" + b")" + b"\x85" * 200_000 + b"Ns."
    src = pth_folder(make_native, "deep", nested)
    for command in ("inspect", "convert"):
        args = [command, str(src)] + ([str(tmp_path / "out")] if command == "convert" else [])
        assert_one_line_exit(run_limited(args), "consolidated.00.pth", "nesting deeper than 32")


def test_huge_memo_index_is_refused_without_allocating(make_native: Callable[..., Path]) -> None:
    src = pth_folder(make_native, "memo", b"\x80\x02Nr\xff\xff\xff\x7f.")  # LONG_BINPUT 2^31-1
    assert_one_line_exit(run_limited(["inspect", str(src)], memory=512 << 20), "memo index 2147483647")


def test_deflated_pickle_is_inflated_only_up_to_the_bound(make_native: Callable[..., Path]) -> None:
    from hubtools.checkpoint.pickle_bounds import MAX_PICKLE_BYTES

    big = b"\x80\x02\x8e" + struct.pack("<Q", MAX_PICKLE_BYTES + 16) + bytes(MAX_PICKLE_BYTES + 16) + b"."
    src = pth_folder(make_native, "bomb", big, deflate=True)
    assert (src / "consolidated.00.pth").stat().st_size < 1 << 20
    assert_one_line_exit(run_limited(["inspect", str(src)], memory=512 << 20), "data.pkl is", "at most")


def test_a_lying_deflated_size_stops_at_the_bound(make_native: Callable[..., Path], tmp_path: Path) -> None:
    from hubtools.checkpoint.pth import read_pth_index
    from hubtools.errors import CorruptFileError

    big = b"\x80\x02\x8e" + struct.pack("<Q", 80 << 20) + bytes(80 << 20) + b"."
    path = write_pth(tmp_path / "consolidated.00.pth", big, deflate=True)
    data = bytearray(path.read_bytes())  # declare 100 bytes in both the local header and the directory
    for signature, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.index(signature)
        data[start + at : start + at + 4] = struct.pack("<I", 100)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="data.pkl"):
        read_pth_index([path])


@pytest.mark.parametrize(
    "pkl,fragment",
    [
        (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x85R.", "builtins.eval"),
        (b"\x80\x02csubprocess\ncall\n]X\x05\x00\x00\x00touchaX\x06\x00\x00\x00MARKERa\x85R.", "subprocess.call"),
        (b"\x80\x02ctorch\nload\nX\x01\x00\x00\x00x\x85R.", "torch.load"),
        (b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x0ctouch MARKER\x85R.", "os.system"),
        (b"(S'touch MARKER'\nios\nsystem\n.", "os.system"),  # INST, protocol 0
        (b"\x80\x02cposix\nsystem\nX\x0c\x00\x00\x00touch MARKER\x85R.", "posix.system"),
    ],
    ids=["eval", "subprocess", "torch.load", "STACK_GLOBAL", "INST", "posix.system"],
)
def test_code_carrying_globals_are_refused_and_never_run(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, pkl: bytes, fragment: str
) -> None:
    marker = tmp_path / "pwned"
    pkl = pkl.replace(b"MARKER", str(marker).encode()[-6:]) if b"MARKER" in pkl else pkl
    src = pth_folder(make_native, "evil", pkl)
    result = run_cli("inspect", src)
    assert_one_line_error(result, "consolidated.00.pth", "refusing to unpickle global", fragment, "not executed")
    assert not marker.exists() and not (Path.cwd() / str(marker)[-6:]).exists()


def test_a_view_outside_its_storage_is_refused(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    from hubtools.model.names import tensor_specs
    from hubtools.testing import tiny_params

    specs = tensor_specs(tiny_params())
    storages, state = {}, {}
    for i, spec in enumerate(specs):
        numel = math.prod(spec.shape)
        storages[str(i)] = numel
        state[spec.native] = _TensorView(
            _Storage(str(i), numel), 0, spec.shape, (spec.shape[-1], 1)[-len(spec.shape) :]
        )
    first = specs[0]
    state[first.native] = _TensorView(_Storage("0", 8), 4, first.shape, (first.shape[1], 1))
    storages["0"] = 8
    src = pth_folder(make_native, "view", torch_pickle(state), storages)
    assert_one_line_error(run_cli("inspect", src), "consolidated.00.pth", f"'{first.native}'", "outside its storage")


@pytest.mark.parametrize(
    "pkl,fragment",
    [
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nK\x01\x85R.", "corrupt pickle"),  # wrong arguments
        (b"\x80\x02ccollections\nOrderedDict\nK\x05\x85R.", "corrupt pickle"),  # OrderedDict(5)
        (b"\x80\x02ctorch\nFloatStorage\nK\x05\x85R.", "corrupt pickle"),  # calling a storage type
        (b"\x80\x02}X\x01\x00\x00\x00a]s.", "flat state dict"),
        (b"\x80\x02\x8a\x08" + b"\xff" * 8, "refusing a hostile or corrupt pickle"),  # truncated
        (b"\x80\x02}q\x00h\x07.", "read before it is stored"),
    ],
)
def test_malformed_pickles_are_one_line(
    make_native: Callable[..., Path], run_cli: RunCli, pkl: bytes, fragment: str
) -> None:
    src = pth_folder(make_native, "bad", pkl)
    assert_one_line_error(run_cli("inspect", src), "consolidated.00.pth", fragment)


# --- item 9: params.json / config.json of the wrong type, range or size ---


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


_DELETE = object()


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"norm_eps": "abc"}, "field 'norm_eps' must be a finite number > 0, got 'abc'"),
        ({"norm_eps": float("nan")}, "field 'norm_eps' must be a finite number > 0, got nan"),
        ({"norm_eps": -1e-5}, "field 'norm_eps' must be a finite number > 0, got -1e-05"),
        ({"norm_eps": 3.0}, "field 'norm_eps' must be a finite number in (0, 1), got 3.0"),
        ({"rope_theta": "fast"}, "field 'rope_theta' must be a finite number > 0, got 'fast'"),
        ({"rope_theta": float("inf")}, "field 'rope_theta' must be a finite number > 0, got inf"),
        ({"max_seq_len": "lots"}, "field 'max_seq_len' must be a positive integer, got 'lots'"),
        ({"sliding_window": True}, "field 'sliding_window' must be a positive integer, got True"),
        ({"moe": 5}, "field 'moe' must be an object with num_experts and num_experts_per_tok, got 5"),
        ({"moe": {"num_experts": 4, "num_experts_per_tok": "2"}}, "field 'num_experts_per_tok' must be a positive"),
        ({"head_dim": 15}, "field 'head_dim' must be a positive even integer"),
        ({"dim": 1e999}, "field 'dim' must be a positive integer, got inf"),
        ({"n_layers": 1_000_000_000}, "n_layers is 1000000000, but the weights hold layers: 2 (indices 0..1)"),
        ({"moe": {"num_experts": 100_000_000, "num_experts_per_tok": 2}}, "num_experts is 100000000, but the weights"),
    ],
)
def test_bad_params_values_are_one_line_naming_the_field(
    make_native: Callable[..., Path], tmp_path: Path, changes: dict[str, object], fragment: str
) -> None:
    src = make_native(tokenizer=None)
    _edit_json(src / "params.json", **changes)
    result = run_limited(["convert", str(src), str(tmp_path / "out")])  # a hang would time out
    assert_one_line_exit(result, "params.json", fragment)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def hf_folder(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> Path:
    return _convert(run_cli, make_native(tokenizer=None), tmp_path / "hf")


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"rms_norm_eps": "abc"}, "field 'rms_norm_eps' must be a finite number > 0, got 'abc'"),
        ({"rope_theta": "fast"}, "field 'rope_theta' must be a finite number > 0, got 'fast'"),
        ({"rope_theta": _DELETE, "rope_parameters": 5}, None),  # ignored, default rule
        (
            {"rope_theta": _DELETE, "rope_parameters": {"rope_theta": -1}},
            "field 'rope_parameters.rope_theta' must be a finite number > 0",
        ),
        ({"sliding_window": True}, "field 'sliding_window' must be a positive integer, got True"),
        ({"num_local_experts": 5.5}, "field 'num_local_experts' must be a positive integer, got 5.5"),
        ({"num_attention_heads": "4"}, "field 'num_attention_heads' must be a positive integer, got '4'"),
        ({"head_dim": 15}, "field 'head_dim' must be a positive even integer"),
        ({"num_hidden_layers": 1_000_000_000}, "n_layers is 1000000000, but the weights hold layers: 2"),
        ({"num_local_experts": 100_000_000}, "num_experts is 100000000, but the weights hold experts: 4"),
    ],
)
def test_bad_config_values_are_one_line_naming_the_key(
    hf_folder: Path, tmp_path: Path, changes: dict[str, object], fragment: str | None
) -> None:
    _edit_json(hf_folder / "config.json", **changes)
    result = run_limited(["convert", str(hf_folder), str(tmp_path / "back")])
    if fragment is None:
        assert result.returncode == 0, result.stderr
        return
    assert_one_line_exit(result, "config.json", fragment)


@pytest.mark.parametrize(
    "content", ['{"dim": ' * 100_000, "[" * 100_000 + "]" * 100_000, '{"dim": 1' + "0" * 5000 + "}"]
)
def test_pathological_json_is_one_line(make_native: Callable[..., Path], run_cli: RunCli, content: str) -> None:
    src = make_native(tokenizer=None)
    (src / "params.json").write_text(content)
    assert_one_line_error(run_cli("inspect", src), "params.json")
