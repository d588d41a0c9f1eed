"""Hardening (issue 8, items 8 and 9): verify never passes what it cannot measure, and hostile or broken
files end in one line naming the file, within bounded time and memory.
"""

from __future__ import annotations

import json
import math
import os
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
from tests.helpers import assert_one_line_error

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
    assert logits["max_abs_dlogit"] is None  # a non-finite forward reports no distance
    assert report["checks"]["tensors"]["passed"] is True  # type: ignore[index]


def test_float16_overflow_fails_verify(make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    path = src / "consolidated.safetensors"
    tensors = load_file(path)
    hf = _convert(run_cli, src, tmp_path / "hf", "--dtype", "float16")
    tensors["layers.0.attention.wv.weight"][0, :4] = 1e6  # fine in bfloat16, inf in float16
    save_file(tensors, path)  # convert itself refuses such a cast (test_destination.py): plant it afterwards
    shard = next(p for p in hf.glob("model-*.safetensors") if "model.layers.0.self_attn.v_proj.weight" in load_file(p))
    planted = load_file(shard)
    planted["model.layers.0.self_attn.v_proj.weight"][0, :4] = float("inf")
    save_file(planted, shard, metadata={"format": "pt"})
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

    big = b"\x80\x02\x8e" + struct.pack("<Q", 20 << 20) + bytes(20 << 20) + b"."
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
        ({"sliding_window": True}, "sliding_window must be a positive integer or absent, got True"),
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
        ({"rope_theta": _DELETE, "rope_parameters": 5}, "field 'rope_parameters' is 5, expected {\"rope_type\""),
        (
            {"rope_theta": _DELETE, "rope_parameters": {"rope_theta": -1}},
            "field 'rope_parameters.rope_theta' must be a finite number > 0",
        ),
        ({"sliding_window": True}, "sliding_window must be a positive integer or absent, got True"),
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


# --- item 9: tokenizer files ---


def test_a_fifo_tokenizer_is_refused_without_blocking(make_native: Callable[..., Path], tmp_path: Path) -> None:
    src = make_native(tokenizer=None)
    os.mkfifo(src / "tokenizer.model")
    assert_one_line_exit(run_limited(["inspect", str(src)]), "tokenizer.model", "a FIFO")
    assert_one_line_exit(run_limited(["convert", str(src), str(tmp_path / "o")]), "tokenizer.model", "a FIFO")


def test_a_device_or_dangling_tokenizer_is_named(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    src = make_native(tokenizer=None)
    (src / "tokenizer.model").symlink_to("/dev/zero")
    assert_one_line_error(run_cli("inspect", src), "tokenizer.model", "a character device")
    (src / "tokenizer.model").unlink()
    (src / "tokenizer.model.v3").symlink_to(src / "gone.model")
    assert_one_line_error(run_cli("inspect", src), "tokenizer.model.v3", "dangling symlink")


def test_a_huge_sparse_tokenizer_is_refused_before_reading(make_native: Callable[..., Path]) -> None:
    src = make_native(tokenizer=None)
    with (src / "tokenizer.model.v3").open("wb") as f:
        f.truncate(6 << 30)  # 6 GB, sparse
    assert_one_line_exit(run_limited(["inspect", str(src)], memory=512 << 20), "tokenizer.model.v3", "at most")
    (src / "tokenizer.model").write_bytes(b"x")  # two candidates differing in size: not read to compare
    assert_one_line_exit(run_limited(["inspect", str(src)], memory=512 << 20), "tokenizer.model.v3", "at most")


def _spm_with_trainer(field: int, value: int) -> bytes:
    """The shipped v1 tokenizer.model with one TrainerSpec varint (unk 40 / bos 41 / eos 42) replaced."""
    from hubtools.testing import mistral_common_data

    def varint(n: int) -> bytes:
        n &= (1 << 64) - 1
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out

    data = (mistral_common_data() / "tokenizer.model.v1").read_bytes()
    trainer = varint(field << 3) + varint(value)
    # a later field wins in protobuf: append a second TrainerSpec message (field 2) that merges
    return data + bytes([2 << 3 | 2]) + varint(len(trainer)) + trainer


@pytest.mark.parametrize(
    "field,value,name",
    [(41, 40000, "bos_id 40000"), (41, -5, "bos_id -5"), (40, -1, "unk_id -1"), (42, 32000, "eos_id")],
)
def test_special_ids_outside_the_vocabulary_are_refused(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, field: int, value: int, name: str
) -> None:
    src = make_native(tokenizer=None)
    (src / "tokenizer.model").write_bytes(_spm_with_trainer(field, value))
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "tokenizer.model", name, "outside the 32000")


def test_tekken_counts_are_bounded_before_anything_is_built(make_native: Callable[..., Path], tmp_path: Path) -> None:
    from hubtools.testing import mistral_common_data

    params = tiny_params(vocab_size=131072, dim=32, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1)
    src = make_native(params=params, tokenizer=None)
    data = json.loads((mistral_common_data() / "tekken_240911.json").read_text())
    data["config"]["default_num_special_tokens"] = 1_000_000_000
    (src / "tekken.json").write_text(json.dumps(data))
    result = run_limited(["convert", str(src), str(tmp_path / "out")], memory=1 << 30)
    message = "expected config.default_num_special_tokens to be an integer in 0..131072"
    assert_one_line_exit(result, "tekken.json", message)


# --- item 9: safetensors headers ---


def _with_header(path: Path, header: bytes) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n :])


def _header(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda h, k: h[k].update(shape=[1e999]), "corrupt header entry"),
        (lambda h, k: h[k].update(shape=[2.0, 64.0]), "corrupt header entry"),
        (lambda h, k: h[k].update(shape=["32000", "64"]), "corrupt header entry"),
        (lambda h, k: h[k].update(shape=[True, 64]), "corrupt header entry"),
        (lambda h, k: h[k].update(shape=[-1, -64]), "corrupt header entry"),
        (lambda h, k: h[k].update(data_offsets=[0.0, 1.5]), "corrupt header entry"),
        (lambda h, k: h[k].update(dtype=["BF16"]), "unsupported safetensors dtype 'list'"),
        (lambda h, k: h.update(__metadata__={"format": 5}), "__metadata__ must map strings to strings"),
        (lambda h, k: h.update(__metadata__=[1, 2]), "__metadata__ must map strings to strings"),
    ],
)
def test_malformed_safetensors_headers_are_one_line(
    make_native: Callable[..., Path], run_cli: RunCli, edit: Callable[[dict[str, object], str], None], fragment: str
) -> None:
    src = make_native(tokenizer=None)
    path = src / "consolidated.safetensors"
    header = _header(path)
    edit(header, "tok_embeddings.weight")
    _with_header(path, json.dumps(header).encode())
    assert_one_line_error(run_cli("inspect", src), "consolidated.safetensors", fragment)


def test_deeply_nested_safetensors_header_is_one_line(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    src = make_native(tokenizer=None)
    _with_header(src / "consolidated.safetensors", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert_one_line_error(run_cli("inspect", src), "consolidated.safetensors", "not valid JSON")


# --- item 9: split parts, shard series, index paths ---


def test_duplicated_split_part_is_named(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    src = make_native(layout="pth-split", splits=3, tokenizer=None)
    (src / "consolidated.00.pth-split01").write_bytes((src / "consolidated.00.pth-split1").read_bytes())
    assert_one_line_error(run_cli("inspect", src), "-split1 appears twice")


def test_split_parts_of_another_file_are_named(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    src = make_native(layout="pth-split", splits=3, tokenizer=None)
    (src / "consolidated.01.pth-split0").write_bytes(b"x")
    assert_one_line_error(run_cli("inspect", src), "consolidated.00.pth and consolidated.01.pth")


def test_an_extra_split_part_is_refused(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    src = make_native(layout="pth-split", splits=3, tokenizer=None)
    (src / "consolidated.00.pth-split3").write_bytes((src / "consolidated.00.pth-split2").read_bytes())
    assert_one_line_error(run_cli("inspect", src), "zip archive does not start at the first byte", "extra")
    (src / "consolidated.00.pth-split3").write_bytes(b"trailing")
    assert_one_line_error(
        run_cli("inspect", src), "8 bytes after the end of the zip archive (in consolidated.00.pth-split3)"
    )


def test_a_shard_of_another_series_is_named(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    src = make_native(layout="sharded", shards=2, tokenizer=None)
    first = src / "consolidated-00001-of-00002.safetensors"
    (src / "consolidated-00001-of-00003.safetensors").write_bytes(first.read_bytes())
    assert_one_line_error(run_cli("inspect", src), "one series of shards, found -of-00002 and -of-00003")
    (src / "consolidated-00001-of-00003.safetensors").unlink()
    (src / "consolidated-00003-of-00002.safetensors").write_bytes(first.read_bytes())
    assert_one_line_error(run_cli("inspect", src), "consolidated-00003-of-00002.safetensors is not a shard")


def test_a_fifo_weight_file_is_refused_without_blocking(make_native: Callable[..., Path]) -> None:
    src = make_native(tokenizer=None)
    (src / "consolidated.safetensors").unlink()
    os.mkfifo(src / "consolidated.safetensors")
    assert_one_line_exit(run_limited(["inspect", str(src)]), "consolidated.safetensors", "not a regular file")
    pth = make_native("pth", layout="pth", tokenizer=None)
    (pth / "consolidated.00.pth").unlink()
    os.mkfifo(pth / "consolidated.00.pth")
    assert_one_line_exit(run_limited(["inspect", str(pth)]), "consolidated.00.pth", "not a regular file")


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_an_index_naming_paths_outside_the_folder_is_refused(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, target: str
) -> None:
    from hubtools.verification.run import verify

    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    hf = _convert(run_cli, src, tmp_path / "hf")
    (tmp_path / "outside.safetensors").write_bytes((hf / "model-00001-of-00001.safetensors").read_bytes())
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    index["weight_map"] = dict.fromkeys(index["weight_map"], target)
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_one_line_error(
        run_cli("inspect", hf), "model.safetensors.index.json", f"expected file names in the folder, found '{target}'"
    )
    report = verify(src, hf, check_logits=False)
    assert not report.passed
    assert any(f"expected file names in the folder, found '{target}'" in p for p in report.structure.problems)
    assert report.tensors.compared == 0


def test_an_index_with_non_string_files_is_one_line(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path
) -> None:
    hf = _convert(run_cli, make_native(tokenizer=None), tmp_path / "hf")
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = ["model-00001-of-00001.safetensors"]
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_one_line_error(run_cli("inspect", hf), "model.safetensors.index.json", "'weight_map' of file names")


# --- the last-resort handler ---


def test_an_unexpected_exception_is_one_line_and_the_traceback_needs_debug(
    make_native: Callable[..., Path], run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hubtools.inspection

    def broken(folder: Path) -> None:
        raise ValueError("something no reader anticipated\nsecond line")

    monkeypatch.setattr(hubtools.inspection, "summarize", broken)
    src = make_native(tokenizer=None)
    assert_one_line_error(run_cli("inspect", src), "ValueError: something no reader anticipated", "--debug")
    with pytest.raises(ValueError, match="^something no reader anticipated\nsecond line$"):  # the very exception
        run_cli("--debug", "inspect", src)


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"rope_parameters": 5}, "transformers cannot load it"),
        ({"rms_norm_eps": "abc"}, "transformers cannot load it"),
        ({"num_local_experts": 100_000_000}, "disagrees with params.json on num_local_experts"),
        ({"num_attention_heads": 0}, "disagrees with params.json on num_attention_heads"),
        ({"hidden_size": "abc"}, "disagrees with params.json on hidden_size"),
    ],
)
def test_verify_on_a_hostile_config_fails_without_running_it(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path, changes: dict[str, object], fragment: str
) -> None:
    src = make_native(params=tiny_params(vocab_size=1000), tokenizer=None)
    hf = _convert(run_cli, src, tmp_path / "hf")
    _edit_json(hf / "config.json", **changes)
    result = run_cli("verify", src, hf, "--json", tmp_path / "r.json", "--quiet")
    assert result.exit_code == 1 and "verify FAILED" in result.output, result.output + result.stderr
    report = _strict_json((tmp_path / "r.json").read_text())
    assert fragment in report["checks"]["logits"]["error"]  # type: ignore[index]
    assert report["checks"]["structure"]["passed"] is False  # type: ignore[index]


def test_an_invalid_tekken_pattern_is_a_tokenizer_error(tmp_path: Path) -> None:  # found by test_fuzz
    from hubtools.errors import TokenizerError
    from hubtools.testing import mistral_common_data
    from hubtools.tokenization.files import build_hf_tokenizer

    data = json.loads((mistral_common_data() / "tekken_240911.json").read_text())
    data["vocab"] = data["vocab"][:300]
    data["config"].update(default_vocab_size=data["config"]["default_num_special_tokens"] + 300, pattern="[]")
    (tmp_path / "tekken.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="tekken.json: expected a tekken tokenizer, found .*empty char-class"):
        build_hf_tokenizer(tmp_path / "tekken.json")


def test_nesting_through_the_memo_is_measured_too(make_native: Callable[..., Path], run_cli: RunCli) -> None:
    nested: list[object] = []
    for _ in range(40):  # what pickle.dumps writes for a 40-deep list: depth is tracked through the memo
        nested = [nested, nested]
    src = pth_folder(make_native, "memo-deep", pickle.dumps({"x": nested}, protocol=2))
    assert_one_line_error(run_cli("inspect", src), "consolidated.00.pth", "nesting deeper than 32")


@pytest.mark.parametrize("line", ["[" * 100_000, '{"text": 1' + "0" * 5000 + "}"])
def test_a_pathological_prompts_line_is_a_tokenizer_error(tmp_path: Path, line: str) -> None:
    from hubtools.errors import TokenizerError
    from hubtools.tokenization.parity import load_prompts

    (tmp_path / "prompts.jsonl").write_text('"fine"\n' + line + "\n")
    with pytest.raises(TokenizerError, match="prompts.jsonl: line 2"):
        load_prompts(tmp_path / "prompts.jsonl")


def test_a_layer_number_too_long_to_parse_is_an_unknown_tensor(
    make_native: Callable[..., Path], run_cli: RunCli, tmp_path: Path
) -> None:
    src = make_native(tokenizer=None)
    path = src / "consolidated.safetensors"
    header = _header(path)
    header["layers." + "9" * 5000 + ".ffn_norm.weight"] = header.pop("layers.1.ffn_norm.weight")
    _with_header(path, json.dumps(header).encode())
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "unknown tensor 'layers.999")
