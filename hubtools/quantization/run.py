"""`quantize(src, dst, options)`: a native or HF checkpoint to a GPTQ / AWQ quantized HF folder.

Opens the source as `convert` does (same checks), encodes the calibration set, runs the layer engine
(`engine.LayerEngine`) and writes as it goes (`output.FolderWriter`), all inside `atomic_folder` (nothing
at DST unless the whole run succeeds). The report (`QuantizeReport`) is also written into DST as
`quantization_report.json`: options, calibration, per-layer expert token counts, AWQ's chosen alphas.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from hubtools.checkpoint.reader import Checkpoint, check_tensors, open_checkpoint
from hubtools.destination import atomic_folder
from hubtools.errors import QuantizeError
from hubtools.families import check_counts
from hubtools.filenames import CONFIG, PARAMS
from hubtools.model import fp8
from hubtools.model.family import ModelParams
from hubtools.model.names import Layout, NameTable, TensorSpec
from hubtools.model.params import default_rope_theta
from hubtools.model.transforms import to_native
from hubtools.quantization.calibration import CHUNK_TOKENS, calibration_sequences, pack
from hubtools.quantization.engine import LayerEngine, LayerRecord
from hubtools.quantization.output import FolderWriter, hf_configs, ignored_modules, quantization_config, write_tokenizer
from hubtools.quantization.scheme import QuantizeOptions

REPORT = "quantization_report.json"
ENGINE = "hubtools layer-by-layer (GPTQ / AWQ as published), packed by compressed-tensors"


@dataclass
class QuantizeReport:
    """What `quantize` did (`to_json` is `--json` and DST/quantization_report.json)."""

    source: str
    destination: str
    architecture: str
    options: dict[str, Any]
    calibration: str
    calibration_tokens: int
    quantized_tensors: int = 0
    unquantized: list[str] = field(default_factory=list)
    layers: list[LayerRecord] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes, as written in DST
    seconds: float = 0.0
    peak_rss_mib: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "layers"}
        out["engine"] = ENGINE
        out["format"] = "compressed-tensors (pack-quantized, symmetric int, group-wise)"
        experts = [r for r in self.layers if r.calibrated]
        if experts:
            out["experts_calibrated_tokens"] = {str(r.layer): r.calibrated for r in experts}
            out["experts_routed_tokens"] = {str(r.layer): r.routed for r in experts}
        if any(r.awq for r in self.layers):
            out["awq"] = {str(r.layer): r.awq for r in self.layers}
        return out


def plain_params(params: ModelParams) -> ModelParams:
    """`params` without FP8 weights: what the engine, the writer and verify's forwards see of an FP8 source
    (its weights dequantized as they are read, `native_reader`)."""
    return fp8.without_fp8(params)


def native_reader(ckpt: Checkpoint, device: torch.device) -> Callable[[TensorSpec], torch.Tensor]:
    """A spec's tensor in native layout, float32 on `device`, from a native or an HF checkpoint; an FP8
    weight is dequantized by the rule of `hubtools.model.fp8` (its weight scale read beside it)."""
    native = ckpt.layout is Layout.NATIVE
    key = "native" if native else "hf"
    quantized = {s.native for s in NameTable(ckpt.params).specs if fp8.is_quantized(ckpt.params, s)}

    def load(name: str) -> torch.Tensor:
        return ckpt.read(name).to(device)

    def read(spec: TensorSpec) -> torch.Tensor:
        value = load(spec.native if native else spec.hf)
        if spec.native in quantized:
            value = fp8.dequantize(value, load(fp8.weight_scale(ckpt.params, spec, key)), torch.float32)
        value = value.to(torch.float32)
        return value if native else to_native(spec.transform, value, ckpt.params)

    return read


def engine_columns(params: Any) -> set[int]:
    """The input widths of the matrices the family quantizes (a wrapper's: its text model's)."""
    table = NameTable(params)
    family = params.text.family
    return {
        table.by_native[row.native_name(layer, 0 if group.experts != "none" else None)].shape[1]
        for layer in range(params.n_layers)
        for group in family.input_groups(params, layer)
        for row in group.readers
    }


def _fitted_group(options: QuantizeOptions, columns: set[int]) -> QuantizeOptions:
    """The group size, lowered to the largest that tiles every quantized matrix (a tiny model's 64 columns
    under the default 128); the report's options show the one used."""
    size = math.gcd(options.group_size, *columns)
    return (
        options
        if size == options.group_size
        else replace(options, group_size=size, requested_group_size=options.group_size)
    )


def refuse_unsupported(params: ModelParams, source: str) -> None:
    """A family whose quantized folder transformers could not load (`Family.quantize_unsupported`) is refused.

    Raises:
        QuantizeError: naming the source, the architecture and why.
    """
    for family in dict.fromkeys((params.family, params.text.family)):
        if family.quantize_unsupported is not None:
            raise QuantizeError(f"{source}: {params.architecture} cannot be quantized: {family.quantize_unsupported}")


def rope_theta_of(ckpt: Checkpoint) -> float:
    """The rotary base: an HF source's config.json value, else the documented rule for params.json."""
    if ckpt.layout is Layout.HF:
        from hubtools.model.hf_config import config_rope_theta

        theta = config_rope_theta(json.loads((ckpt.folder / CONFIG).read_text()))
        if theta:
            return float(theta)
    return default_rope_theta(ckpt.params)


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: QuantizeOptions,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    rows: list[list[int]] | None = None,
) -> QuantizeReport:
    """Quantize SRC (native or HF folder) into the HF folder DST with `options`.

    Args:
        rows: calibration token rows to use as they are (a comparison feeding two tools the same rows);
            None: `options.calibration` (or the shipped set) encoded by the model's tokenizer.

    Raises:
        QuantizeError: a bad option, calibration file or group size (one line naming it).
        LayoutError, ParamsError, MappingError, DestinationError: as `convert`.

    Example:
        >>> quantize("mixtral-hf", "mixtral-gptq", QuantizeOptions(method="gptq"))  # doctest: +SKIP
    """
    started, say = time.monotonic(), progress or (lambda _: None)
    options = options.checked()
    src, dst = Path(src), Path(dst)
    device = torch.device(options.device)
    with open_checkpoint(src, prefer="native") as ckpt:
        origin = ckpt.folder / (PARAMS if ckpt.layout is Layout.NATIVE else CONFIG)
        refuse_unsupported(ckpt.params, str(origin))
        check_counts(ckpt.params, ckpt.tensors, source=str(origin))
        check_tensors(ckpt, NameTable(ckpt.params))
        params = plain_params(ckpt.params)
        options = _fitted_group(options, engine_columns(params))
        if rows is None:
            rows, where = calibration_sequences(
                ckpt.folder,
                ckpt.tokenizer_file,
                params.vocab_size,
                options.calibration,
                samples=options.samples,
                seq_len=options.seq_len,
            )
        else:
            where = f"{len(rows)} token rows given by the caller"
        report = QuantizeReport(str(src), str(dst), params.architecture, options.to_json(), where, sum(map(len, rows)))
        engine = LayerEngine(
            params,
            native_reader(ckpt, device),
            pack(rows, device=device, chunk_tokens=max(options.seq_len, CHUNK_TOKENS)),
            options,
            rope_theta=rope_theta_of(ckpt),
        )
        with atomic_folder(dst, sources=(src,), force=force) as tmp:
            writer = FolderWriter(tmp, ckpt, params, options)
            for item in engine.run(say):
                if isinstance(item, LayerRecord):
                    report.layers.append(item)
                else:
                    writer.add(item)
            config, generation = hf_configs(ckpt, params)
            ignore = ignored_modules(params, engine.table.specs, writer.quantized)
            config = {**config, "quantization_config": quantization_config(options, ignore)}
            names = writer.finish(config, generation)
            names += write_tokenizer(ckpt, tmp, config.get("max_position_embeddings"))
            report.files = {name: (tmp / name).stat().st_size for name in names}
            report.quantized_tensors = len(writer.quantized)
            report.unquantized = [s.hf for s in engine.table.specs if s.native not in writer.quantized]
            report.seconds = round(time.monotonic() - started, 3)
            report.peak_rss_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            (tmp / REPORT).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report
