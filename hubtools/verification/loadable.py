"""Would transformers load this HF folder as it is? Its own loader, run on the folder's tensor names, shapes and
dtypes (meta tensors built from the safetensors headers: no byte of weight data is read).

hubtools' own structure check reads the folder through hubtools' name table; a table that is wrong in the same
way on both sides (a key transformers does not know, experts stored unfused where transformers fuses them)
would pass it, and transformers would re-initialize those parameters at load with only a warning. This check
asks the real loader, so what it reports missing, unexpected or mismatched fails verify.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from hubtools.checkpoint.layout import TensorSource

MAX_NAMED = 5  # keys named per kind; the rest are counted


@contextlib.contextmanager
def _as_on_a_gpu() -> Iterator[None]:
    """transformers told a compute-capability 9.0 GPU is present while it builds a model on the meta device: an
    FP8 folder is then loaded as FP8, the way its users load it, instead of dequantized as on a CPU. Nothing runs
    on the pretended GPU (every tensor is on the meta device)."""
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.get_device_capability", return_value=(9, 0)),
    ):
        yield


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load report and progress bar off for the duration; its previous settings restored."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def meta_state_dict(tensors: Mapping[str, TensorSource]) -> dict[str, torch.Tensor]:
    """Each stored tensor as an empty meta tensor of its shape and dtype."""
    return {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in tensors.items()}


def _named(kind: str, keys: list[str]) -> str:
    shown = ", ".join(f"'{k}'" for k in sorted(keys)[:MAX_NAMED])
    more = f" and {len(keys) - MAX_NAMED} more" if len(keys) > MAX_NAMED else ""
    return f"{kind}: {shown}{more}"


def load_problems(
    folder: Path, config: dict[str, Any] | None, tensors: Mapping[str, TensorSource], *, gpu: bool = False
) -> list[str]:
    """What transformers' `from_pretrained` would report for `folder` (with these tensors) on the meta device:
    each key it would leave missing (re-initialized), find unexpected (ignored) or of a mismatched shape; with
    `gpu`, as it loads on a GPU (`_as_on_a_gpu`: FP8 kept as FP8)."""
    if config is None:
        return []  # config.json itself is already a named problem
    import transformers

    architectures = config.get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    where = f"{folder / 'config.json'}"
    if cls is None:
        return [f"{where}: architectures {architectures} names no class transformers {transformers.__version__} has"]
    try:
        with _quiet_transformers(), _as_on_a_gpu() if gpu else contextlib.nullcontext():
            hf_config = cls.config_class.from_dict(dict(config))
            _, info = cls.from_pretrained(
                None,
                config=hf_config,
                state_dict=meta_state_dict(tensors),
                device_map="meta",
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                use_kernels=False,
            )
    except Exception as exc:  # transformers refusing the folder is the finding, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        on = " on a GPU" if gpu else ""
        return [f"transformers {transformers.__version__} cannot load {folder} as {cls.__name__}{on}: {first}"]
    who = f"transformers {transformers.__version__} loading {folder} as {cls.__name__}" + (" on a GPU" if gpu else "")
    problems = []
    if info.get("missing_keys"):
        problems.append(f"{who}: " + _named("missing (re-initialized at load)", list(info["missing_keys"])))
    if info.get("unexpected_keys"):
        problems.append(f"{who}: " + _named("unexpected (ignored at load)", list(info["unexpected_keys"])))
    if info.get("mismatched_keys"):
        mismatched = [m[0] if isinstance(m, tuple) else str(m) for m in info["mismatched_keys"]]
        problems.append(f"{who}: " + _named("shape mismatched (re-initialized at load)", mismatched))
    return problems
