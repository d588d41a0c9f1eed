"""Property-based fuzzing of every reader of untrusted files (as safetensors fuzzes its header parser).

Valid seeds (a safetensors file, a torch .pth zip, params.json, config.json, a SentencePiece model, a
reduced tekken.json) are mutated by hypothesis: bytes flipped, set to boundary values, inserted,
deleted, repeated or cut, 64-bit integers planted, JSON values replaced with arbitrary JSON, and, for
.pth, the pickle mutated inside an otherwise valid zip. Each mutant is read by `tests/fuzz_worker.py` in
a separate process whose address space is capped (1 GiB above start-up): the reader must return or
raise a `HubtoolsError` (never another exception, MemoryError included), answer within `TIMEOUT`
seconds (no hang) and not crash the process.

The default suite tries a few examples per reader (seconds); `pytest -m slow tests/test_fuzz.py` runs
the long version.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubtools.checkpoint.safetensors_format import build_header
from hubtools.model.hf_config import to_hf_config, to_native_params
from hubtools.testing import mistral_common_data, tiny_params

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0
SHORT_EXAMPLES = 12
LONG_EXAMPLES = 1500
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, 2**48)


class Worker:
    """One `tests.fuzz_worker` process; restarted after a crash or a timeout."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.outcomes: Counter[str] = Counter()

    def start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz_worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert json.loads(self._line(proc, 120.0) or "{}").get("ready"), "fuzz worker did not start"
        return proc

    @staticmethod
    def _line(proc: subprocess.Popen[str], timeout: float) -> str | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        return proc.stdout.readline() if ready else None

    def ask(self, reader: str, path: Path) -> dict[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self.start()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"reader": reader, "path": str(path)}) + "\n")
        self.proc.stdin.flush()
        line = self._line(self.proc, TIMEOUT)
        if not line:
            self.proc.kill()
            self.proc.wait()
            code = self.proc.returncode
            self.proc = None
            return {"outcome": "hang" if line is None else "crash", "type": f"rc {code}", "message": ""}
        answer: dict[str, str] = json.loads(line)
        self.outcomes[f"{reader}:{answer['outcome']}"] += 1
        return answer

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.close()
    if w.outcomes:
        print("\nfuzz outcomes:", dict(sorted(w.outcomes.items())))


# --- seeds ---


def _safetensors_seed() -> bytes:
    tensors = [("a", "BF16", (2, 3)), ("b", "F32", (4,)), ("c", "I64", (1,))]
    return build_header(tensors, {"format": "pt"}) + bytes(2 * 6 + 4 * 4 + 8)


def _pth_seed() -> bytes:
    buf = io.BytesIO()
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    state["c"] = torch.zeros(3, 2).t()  # a strided view
    torch.save(state, buf)
    return buf.getvalue()


def _zip_entries(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rezip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, value in entries.items():
            z.writestr(name, value)
    return buf.getvalue()


def _params_seed() -> dict[str, Any]:
    return to_native_params(tiny_params())


def _config_seed() -> dict[str, Any]:
    return to_hf_config(tiny_params(), dtype="bfloat16").config


def _tekken_seed() -> dict[str, Any]:
    data = json.loads((mistral_common_data() / "tekken_240911.json").read_text())
    data["vocab"] = data["vocab"][:300]
    data["config"]["default_vocab_size"] = data["config"]["default_num_special_tokens"] + 300
    return data  # type: ignore[no-any-return]


# --- mutations ---


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    """`data` with 1-4 mutations placed in [lo, hi)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        top = min(hi if hi is not None else len(out), len(out))
        pos = draw(st.integers(min(lo, max(top - 1, 0)), max(top - 1, 0)))
        op = draw(st.sampled_from(["flip", "byte", "int", "insert", "delete", "repeat", "truncate"]))
        if op == "flip" and pos < len(out):
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and pos < len(out):
            out[pos] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, ord("["), ord("{"), ord("("), ord("]")]))
        elif op == "int":
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**64 - 1))
            width = draw(st.sampled_from([1, 2, 4, 8]))
            out[pos : pos + width] = (value % (1 << 8 * width)).to_bytes(width, "little")
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 64))]
        elif op == "repeat":
            chunk = bytes(out[pos : pos + draw(st.integers(1, 16))])
            out[pos:pos] = chunk * draw(st.integers(1, 5000))
        elif op == "truncate":
            del out[pos:]
    return bytes(out)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([0, -1, 1, 2**31, 10**9, 10**18, 1e999, -1e999, 1e-300]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def mutated_json(draw: st.DrawFn, seed: Any) -> bytes:
    """`seed` with values replaced, deleted or added at random depth, or its text mutated as bytes."""
    obj = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(1, 3))):
        node = obj
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            child = node[draw(st.sampled_from(keys))]
            if not isinstance(child, (dict, list)) or not child:
                break
            node = child
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                node[key] = draw(JSON_VALUES)
            else:
                del node[key]
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(JSON_VALUES)
    text = json.dumps(obj).encode()
    return draw(mutated_bytes(text)) if draw(st.integers(0, 3)) == 0 else text


@dataclass(frozen=True)
class Target:
    reader: str
    filename: str
    inputs: Callable[[], st.SearchStrategy[bytes]]


def _pth_inputs() -> st.SearchStrategy[bytes]:
    archive = _pth_seed()
    entries = _zip_entries(archive)
    name = next(n for n in entries if n.endswith("data.pkl"))
    directory = archive.rfind(b"PK\x01\x02")
    repickled = mutated_bytes(entries[name]).map(lambda p: _rezip({**entries, name: p}))
    return st.one_of(repickled, mutated_bytes(archive), mutated_bytes(archive, directory - 600, len(archive)))


def _spm_inputs() -> st.SearchStrategy[bytes]:
    data = (mistral_common_data() / "tokenizer.model.v1").read_bytes()
    return st.one_of(mutated_bytes(data), mutated_bytes(data, len(data) - 400, len(data)), mutated_bytes(data, 0, 64))


def _safetensors_inputs() -> st.SearchStrategy[bytes]:
    data = _safetensors_seed()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])

    def rebuild(text: bytes) -> bytes:
        return struct.pack("<Q", len(text)) + text + data[8 + n :]

    return st.one_of(mutated_bytes(data), mutated_json(header).map(rebuild))


TARGETS = [
    Target("safetensors", "consolidated.safetensors", _safetensors_inputs),
    Target("pth", "consolidated.00.pth", _pth_inputs),
    Target("params", "params.json", lambda: mutated_json(_params_seed())),
    Target("config", "config.json", lambda: mutated_json(_config_seed())),
    Target("spm", "tokenizer.model", _spm_inputs),
    Target("tekken", "tekken.json", lambda: mutated_json(_tekken_seed())),
]


def fuzz(worker: Worker, folder: Path, target: Target, examples: int, derandomize: bool) -> None:
    path = folder / target.filename
    inputs = target.inputs()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def check(blob: bytes) -> None:
        path.write_bytes(blob)
        answer = worker.ask(target.reader, path)
        assert answer["outcome"] in ("ok", "hubtools"), (target.reader, answer, blob[:300])

    check()


@pytest.mark.parametrize("target", TARGETS, ids=[t.reader for t in TARGETS])
def test_mutated_files_end_in_a_hubtools_error(worker: Worker, tmp_path: Path, target: Target) -> None:
    fuzz(worker, tmp_path, target, SHORT_EXAMPLES, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=[t.reader for t in TARGETS])
def test_mutated_files_end_in_a_hubtools_error_long(worker: Worker, tmp_path: Path, target: Target) -> None:
    fuzz(worker, tmp_path, target, LONG_EXAMPLES, derandomize=False)
