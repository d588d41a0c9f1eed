"""hubtools: release engineering for Mistral-family models on the Hugging Face Hub.

The public API, importable from the top level (each loads its module on first use, so `import hubtools`
stays light: no torch, no transformers):

- `convert(src, dst)`: native <-> Hugging Face, streaming and atomic -> `ConversionResult`
- `verify(native, hf)`: structure, bit-exact tensors, tokenizer parity, logits -> `VerifyReport`
- `inspect(path)`: what a checkpoint folder holds, from headers -> `Summary`
- `open_checkpoint(path)`: a lazy reader over a checkpoint's tensors -> `Checkpoint`
- `build_card(spec, output)`: render a model card -> `Path`
- `plan_upload(folder)` and `publish(folder, repo_id)`: a checked, resumable, verified upload
- `export_gguf(src, dst, quants=...)`: GGUF files as llama.cpp's converter writes them -> `GgufResult`
- `verify_gguf(src, gguf_file)`: a GGUF file (or split set) against its source -> `GgufReport`
- `load_recipe(name_or_path)`: a validated release recipe (`converters/NAME.yaml`) -> `Recipe`
- `release(src, repo_id, api=..., options=ReleaseOptions(...))`: convert, verify and publish in one
  streaming pass -> `ReleaseResult`
- the errors: `HubtoolsError` and its subclasses (`hubtools.errors`)

Example:
    >>> import hubtools
    >>> result = hubtools.convert("mixtral-native", "mixtral-hf")  # doctest: +SKIP
    >>> hubtools.verify("mixtral-native", "mixtral-hf").passed  # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hubtools.errors import (
    CardError,
    ChatTemplateError,
    CorruptFileError,
    DestinationError,
    HubtoolsError,
    Interrupted,
    InvalidValueError,
    LayoutError,
    MappingError,
    ParamsError,
    PublishError,
    QuantizeError,
    RecipeError,
    SourceError,
    TokenizerError,
    UnsafePickleError,
    VerifyError,
)

_LAZY = {  # public name -> (module, attribute)
    "__version__": ("hubtools.version", "__version__"),  # importlib.metadata: tens of ms, so on first use
    "convert": ("hubtools.converter", "convert"),
    "ConversionResult": ("hubtools.converter", "ConversionResult"),
    "verify": ("hubtools.verification.run", "verify"),
    "VerifyReport": ("hubtools.verification.report", "VerifyReport"),
    "inspect": ("hubtools.inspection", "summarize"),
    "Summary": ("hubtools.inspection", "Summary"),
    "open_checkpoint": ("hubtools.checkpoint.reader", "open_checkpoint"),
    "Checkpoint": ("hubtools.checkpoint.reader", "Checkpoint"),
    "build_card": ("hubtools.card.render", "build_card"),
    "plan_upload": ("hubtools.publishing.plan", "plan_upload"),
    "UploadPlan": ("hubtools.publishing.plan", "UploadPlan"),
    "publish": ("hubtools.publishing.upload", "publish"),
    "PublishResult": ("hubtools.publishing.upload", "PublishResult"),
    "export_gguf": ("hubtools.gguf.export", "export"),
    "GgufResult": ("hubtools.gguf.export", "GgufResult"),
    "verify_gguf": ("hubtools.gguf.verify", "verify_gguf"),
    "GgufReport": ("hubtools.gguf.verify", "GgufReport"),
    "load_recipe": ("hubtools.pipeline.recipe", "load_recipe"),
    "Recipe": ("hubtools.pipeline.recipe", "Recipe"),
    "release": ("hubtools.pipeline.release", "release"),
    "ReleaseOptions": ("hubtools.pipeline.overlay", "ReleaseOptions"),
    "ReleaseResult": ("hubtools.pipeline.release_files", "ReleaseResult"),
}

__all__ = [
    "__version__",
    "convert",
    "ConversionResult",
    "verify",
    "VerifyReport",
    "inspect",
    "Summary",
    "open_checkpoint",
    "Checkpoint",
    "build_card",
    "plan_upload",
    "UploadPlan",
    "publish",
    "PublishResult",
    "export_gguf",
    "GgufResult",
    "verify_gguf",
    "GgufReport",
    "load_recipe",
    "Recipe",
    "release",
    "ReleaseOptions",
    "ReleaseResult",
    "CardError",
    "ChatTemplateError",
    "CorruptFileError",
    "DestinationError",
    "HubtoolsError",
    "Interrupted",
    "InvalidValueError",
    "LayoutError",
    "MappingError",
    "ParamsError",
    "PublishError",
    "QuantizeError",
    "RecipeError",
    "SourceError",
    "TokenizerError",
    "UnsafePickleError",
    "VerifyError",
]

if TYPE_CHECKING:
    from hubtools.card.render import build_card
    from hubtools.checkpoint.reader import Checkpoint, open_checkpoint
    from hubtools.converter import ConversionResult, convert
    from hubtools.gguf.export import GgufResult
    from hubtools.gguf.export import export as export_gguf
    from hubtools.gguf.verify import GgufReport, verify_gguf
    from hubtools.inspection import Summary
    from hubtools.inspection import summarize as inspect
    from hubtools.pipeline.overlay import ReleaseOptions
    from hubtools.pipeline.recipe import Recipe, load_recipe
    from hubtools.pipeline.release import release
    from hubtools.pipeline.release_files import ReleaseResult
    from hubtools.publishing.plan import UploadPlan, plan_upload
    from hubtools.publishing.upload import PublishResult, publish
    from hubtools.verification.report import VerifyReport
    from hubtools.verification.run import verify
    from hubtools.version import __version__


def __getattr__(name: str) -> Any:
    """Load a public name's module on first access (PEP 562), as huggingface_hub does."""
    if name not in _LAZY:
        raise AttributeError(f"module 'hubtools' has no attribute '{name}'")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
