"""Where llama.cpp (the peer) is: its source tree (converter + gguf-py), a Python to run the converter
with, and its built tools. Tests and benchmarks that need it skip when it is absent.

- tree: env HUBTOOLS_LLAMA_CPP, else the llama-cpp-python sdist unpacked under /work/peer or ./peer;
- python: env HUBTOOLS_LLAMA_CPP_PYTHON, else `venv/bin/python` beside the sdist, else this Python
  (tekken needs transformers < 5 there: transformers 5 loads a tekken folder through mistral-common,
  which the converter cannot read);
- binaries (llama-tokenize, llama-quantize): env HUBTOOLS_LLAMA_CPP_BIN, else `build/bin` beside the
  sdist, else PATH;
- the build tree (its libllama / ggml libraries, for `logits_program`): env HUBTOOLS_LLAMA_CPP_BUILD, else
  `build` beside the sdist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

SDIST = "llama_cpp_python-0.3.36"
ROOTS = (Path("/work/peer"), Path(__file__).resolve().parents[1] / "peer")


def tree() -> Path | None:
    if env := os.environ.get("HUBTOOLS_LLAMA_CPP"):
        return Path(env) if (Path(env) / "convert_hf_to_gguf.py").is_file() else None
    for root in ROOTS:
        path = root / SDIST / "vendor" / "llama.cpp"
        if (path / "convert_hf_to_gguf.py").is_file():
            return path
    return None


def python() -> str:
    if env := os.environ.get("HUBTOOLS_LLAMA_CPP_PYTHON"):
        return env
    found = tree()
    if found is not None:
        venv = found.parents[2] / "venv" / "bin" / "python"
        if venv.is_file():
            return str(venv)
    return sys.executable


def binary(name: str) -> Path | None:
    dirs = [os.environ.get("HUBTOOLS_LLAMA_CPP_BIN", "")]
    found = tree()
    if found is not None:
        dirs.append(str(found.parents[2] / "build" / "bin"))
    for d in dirs:
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    which = shutil.which(name)
    return Path(which) if which else None


# Registers a class name the converter does not (`Mistral4ForCausalLM`) to the class that reads the same model
# inside a wrapper (`Mistral3Model`, whose `Mistral4Model` it picks by model_type), then runs the converter.
REGISTER = r"""
import runpy, sys
import conversion
from conversion.base import ModelBase
name, module, cls = sys.argv.pop(1).split(":")
conversion.TEXT_MODEL_MAP[name] = module
ModelBase.register(name)(getattr(__import__("conversion." + module, fromlist=[cls]), cls))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert_hf(hf_dir: Path, out: Path, outtype: str, *, register: str | None = None) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py (with its own gguf-py) on an HF folder.

    Args:
        register: "Architecture:module:Class", a class name the converter does not register, mapped to one of
            its classes first (what the converter would write if it registered that name).
    """
    root = tree()
    assert root is not None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "gguf-py"), str(root)]), HF_HUB_OFFLINE="1")
    cmd = [python(), str(root / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype, "--outfile", str(out)]
    if register is not None:
        cmd = [python(), "-c", REGISTER, register, *cmd[1:]]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{done.stderr[-3000:]}")
    return out


LOGITS_SOURCE = Path(__file__).with_name("llama_cpp_logits.cpp")
LIBRARIES = ("src/libllama", "ggml/src/libggml", "ggml/src/libggml-cpu", "ggml/src/libggml-base")  # link order


def build_tree() -> Path | None:
    """The cmake build of the tree, if it holds libllama and ggml (static or shared)."""
    found = tree()
    env = os.environ.get("HUBTOOLS_LLAMA_CPP_BUILD")
    build = Path(env) if env else (found.parents[2] / "build" if found is not None else None)
    if build is None or not all(_library(build, lib) for lib in LIBRARIES):
        return None
    return build


def _library(build: Path, stem: str) -> Path | None:
    for suffix in (".a", ".so", ".dylib"):
        if (build / f"{stem}{suffix}").is_file():
            return build / f"{stem}{suffix}"
    return None


def logits_program(workdir: Path) -> Path | None:
    """tests/llama_cpp_logits.cpp compiled against the tree's llama.h and linked with the build's libraries
    (about a second; no cmake run), or None when the tree, its build or a C++ compiler is missing."""
    root, build, cxx = tree(), build_tree(), os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if root is None or build is None or cxx is None:
        return None
    exe = workdir / "llama_cpp_logits"
    libs = [str(_library(build, lib)) for lib in LIBRARIES]
    rpath = sorted({f"-Wl,-rpath,{Path(lib).parent}" for lib in libs if not lib.endswith(".a")})
    cmd = [cxx, "-O1", "-std=c++17", f"-I{root / 'include'}", f"-I{root / 'ggml' / 'include'}", str(LOGITS_SOURCE)]
    cmd += ["-o", str(exe), *libs, *rpath, "-fopenmp", "-pthread", "-ldl"]
    done = subprocess.run(["nice", *cmd], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"compiling {LOGITS_SOURCE.name} failed:\n{done.stderr[-3000:]}")
    return exe


def runtime_logits(
    exe: Path, gguf_path: Path, ids: list[int], workdir: Path, *, flash_attn: bool = False
) -> np.ndarray:
    """llama.cpp's logits `[len(ids), vocab]` (float32) for one sequence of token ids at positions 0.."""
    out = workdir / "logits.f32"
    cmd = [str(exe), *(["--flash-attn"] if flash_attn else []), str(gguf_path), str(out), *map(str, ids)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"llama_cpp_logits failed on {gguf_path.name}:\n{(done.stderr or done.stdout)[-3000:]}")
    n_tokens, n_vocab = map(int, done.stdout.split())
    return np.fromfile(out, dtype=np.float32).reshape(n_tokens, n_vocab)
