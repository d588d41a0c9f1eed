"""The card of a GPTQ or AWQ release (`hubtools card SPEC --quantized DIR`), in the shape of the seeds' quantized
repos (seed 004): front matter with base_model, base_model_relation: quantized, quantized_by; the repositories
of the release; a "Provided files" table whose quality columns are measured by `hubtools verify SRC QUANT_DIR
--json` (mean KL, top-1 agreement and perplexity against the original on held-out text, and the same for plain
round-to-nearest of the same weights, so the card shows what calibration bought) and say how; the exact
loading code per client (transformers with compressed-tensors, vLLM). `tests/test_quantized_card.py` runs the
card's transformers snippet against a quantized folder.

What the card states is read from the folder: the grid from `config.json`'s `quantization_config`
(compressed-tensors), the method, engine and calibration from `quantization_report.json` (what `hubtools
quantize` writes), the figures from the verify report (`<DIR>.verify.json` beside the folder, or given).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from hubtools.card.gguf import prompt_template, quantized_card_data
from hubtools.card.render import MODEL_CLASSES, jinja_environment
from hubtools.card.rules import validate_card_text
from hubtools.card.source import CardSource, ModelKind
from hubtools.errors import CardError, VerifyError
from hubtools.units import size_both

QUANT_REPORT = "quantization_report.json"
METHOD_NAMES = {"gptq": "GPTQ", "awq": "AWQ"}
LOAD_EXTRA = 0.1  # transformers/vLLM overhead on top of the weights, as a fraction (CUDA context excluded)


@dataclass(frozen=True)
class QuantizedRelease:
    """One quantized folder as its card describes it."""

    folder: Path
    method: str  # "gptq" or "awq"
    bits: int
    group_size: int | None
    symmetric: bool
    size: int  # bytes of the weight files
    calibration: str
    calibration_tokens: int | None
    engine: str
    quality: dict[str, Any] | None  # the verify report's "quality"
    verified: bool | None

    @property
    def method_name(self) -> str:
        return METHOD_NAMES.get(self.method, self.method.upper())

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per quantized weight: the code plus its share of one 16-bit scale (and zero point)."""
        per_group = (16 + (0 if self.symmetric else self.bits)) / self.group_size if self.group_size else 0
        return self.bits + per_group


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CardError(f"{path}: expected {what}, found {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: expected {what} (a JSON object), found {type(data).__name__}")
    return data


def _grid(folder: Path) -> dict[str, Any]:
    config = _json(folder / "config.json", "config.json with a quantization_config")
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "compressed-tensors":
        raise CardError(f"{folder / 'config.json'}: expected a compressed-tensors quantization_config, found none")
    groups = list((qc.get("config_groups") or {}).values())
    if len(groups) != 1 or not isinstance(groups[0].get("weights"), dict):
        raise CardError(f"{folder / 'config.json'}: expected one weight scheme in config_groups, found {len(groups)}")
    return dict(groups[0]["weights"])


def _verify_report(path: Path) -> dict[str, Any]:
    report = _json(path, "a verify report of a quantized folder")
    if report.get("kind") != "quantized":
        raise VerifyError(f"{path}: expected the verify report of a quantized folder, found another kind")
    return report


def read_release(folder: Path, report: Path | None = None) -> QuantizedRelease:
    """The facts of a quantized folder and its verify report (`report`, else `<folder>.verify.json` if present).

    Raises:
        CardError: no compressed-tensors config or no `quantization_report.json` (not a `hubtools quantize`
            folder).  VerifyError: a report of another kind.
    """
    grid = _grid(folder)
    made = _json(folder / QUANT_REPORT, f"{QUANT_REPORT} as `hubtools quantize` writes it")
    options = made.get("options") or {}
    beside = folder.parent / f"{folder.name}.verify.json"
    verify = _verify_report(report) if report else _verify_report(beside) if beside.is_file() else None
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return QuantizedRelease(
        folder=folder,
        method=str(options.get("method", "gptq")),
        bits=int(grid.get("num_bits", 4)),
        group_size=grid.get("group_size"),
        symmetric=bool(grid.get("symmetric", True)),
        size=size,
        calibration=str(made.get("calibration", "")),
        calibration_tokens=made.get("calibration_tokens"),
        engine=str(made.get("engine", "hubtools")),
        quality=verify.get("quality") if verify else None,
        verified=bool(verify.get("passed")) if verify else None,
    )


def quality_cells(quality: dict[str, Any] | None) -> dict[str, str]:
    """The card's quality columns, or "not measured".

    Example:
        >>> quality_cells(None)["kl"]
        'not measured'
    """
    if not quality:
        return dict.fromkeys(("kl", "top1", "ppl", "rtn_kl", "rtn_top1"), "not measured")
    q, r = quality["quantized"], quality["rtn"]
    original = quality.get("original", {}).get("perplexity")
    return {
        "kl": f"{q['mean_kl']:.4f}",
        "top1": f"{100 * q['top1_agreement']:.1f}%",
        "ppl": f"{q['perplexity']:.3g}" + (f" ({original:.3g})" if original else ""),
        "rtn_kl": f"{r['mean_kl']:.4f}",
        "rtn_top1": f"{100 * r['top1_agreement']:.1f}%",
    }


def _row(release: QuantizedRelease, repo: str, parameters: int) -> dict[str, Any]:
    return {
        "repo": repo,
        "method": release.method_name,
        "bits": release.bits,
        "bpw": f"{release.bits_per_weight:.2f}",
        "group": release.group_size or "per channel",
        "zero_point": "no (symmetric)" if release.symmetric else "yes",
        "size": size_both(release.size),
        "vram": size_both(int(release.size * (1 + LOAD_EXTRA))),
        "dense": size_both(int(parameters * 2 * (1 + LOAD_EXTRA))),
        "verified": "not verified" if release.verified is None else "passed" if release.verified else "FAILED",
        **quality_cells(release.quality),
    }


def render_quantized_card(
    source: CardSource, release: QuantizedRelease, *, repo_id: str | None = None, siblings: Sequence[str] = ()
) -> str:
    """The README.md of the `-GPTQ` / `-AWQ` repo: validated front matter plus `templates/quantized_card.md.jinja`.

    Args:
        siblings: other repos of the release (e.g. the -AWQ and -GGUF repos), listed under "Repositories".

    Raises:
        CardError: the metadata breaks a Hub rule.
    """
    repo = repo_id or f"{source.repo_id}-{release.method_name}"
    instruct = source.kind is ModelKind.INSTRUCT
    creator = str(source.metadata.get("model_creator", "Mistral AI"))
    data = quantized_card_data(source, (release.method, "compressed-tensors", f"{release.bits}-bit"))
    quality = release.quality or {}
    context = {
        "title": source.title,
        "creator": creator,
        "repo_id": repo,
        "base_repo": source.repo_id,
        "siblings": list(siblings),
        "instruct": instruct,
        "prompt_template": prompt_template(source.tokenizer.value, instruct),
        "moe": source.architecture == "MixtralForCausalLM",
        "model_class": MODEL_CLASSES.get(str(source.metadata.get("pipeline_tag")), "AutoModelForCausalLM"),
        "release": release,
        "row": _row(release, repo, source.parameters),
        "measured": {"prompts": quality.get("prompts"), "tokens": quality.get("tokens")} if quality else None,
    }
    body = jinja_environment().get_template("quantized_card.md.jinja").render(**context)
    text = f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"
    validate_card_text(text, where=str(source.path))
    try:
        ModelCard(text)
    except ValueError as exc:
        raise CardError(f"{source.path}: huggingface_hub cannot read the rendered quantized card ({exc})") from exc
    return text


def write_quantized_card(
    spec: str, output: Path, folder: Path, *, report: Path | None = None, force: bool = False
) -> Path:
    """Resolve SPEC in cards/, render the quantized repo's card for `folder`, write it atomically.

    Raises:
        DestinationError: the output exists without `force`. CardError, VerifyError: as `read_release`.
    """
    from hubtools.card.render import write_card
    from hubtools.card.source import load_card_source, resolve_card_source

    source = load_card_source(resolve_card_source(spec, cards_dir=Path("cards")))
    return write_card(render_quantized_card(source, read_release(folder, report)), output, force=force)
