"""The GPTQ / AWQ repos of a release (a recipe's `quantized:` list): for each, quantize, verify, card, publish.

`plan_quantized` is what `hubtools release --dry-run` adds to its plan (`"quantized"`): each repo with its
method, grid, calibration and the files it will hold. `release_quantized` makes one repo from a local source
(native or HF folder): `quantize` into a work folder, `verify_quantized` (the folder loads in transformers with
no parameter re-initialised and no quantized tensor ignored, the router intact, quality measured against the
original and against round-to-nearest), the card rendered from the folder and that report, then `publish`
(one commit, every remote file checked). Nothing is published unless verify passed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from hubtools.errors import VerifyError
from hubtools.pipeline.quantized_targets import QuantizedTarget

FILES = (
    "config.json (quantization_config: compressed-tensors, pack-quantized)",
    "generation_config.json",
    "model*.safetensors (+ index)",
    "quantization_report.json (method, calibration, tokens per expert)",
    "tokenizer files",
    "README.md (card with the verify figures)",
)


def plan_quantized(targets: Sequence[QuantizedTarget], *, card: str | None) -> list[dict[str, Any]]:
    """The dry-run entry of each quantized repo (nothing is computed or sent).

    Example:
        >>> plan_quantized([QuantizedTarget("gptq", 4, 128, "org/M-GPTQ")], card=None)[0]["repo_id"]
        'org/M-GPTQ'
    """
    return [
        {
            "repo_id": t.repo,
            "method": t.method,
            "bits": t.bits,
            "group_size": t.group_size,
            "calibration": {"rows": t.samples or "default", "seq_len": t.seq_len or "default", "set": "built-in"},
            "verify": "hubtools verify SRC QUANT_DIR must pass before anything is sent",
            "files": [f for f in FILES if card or not f.startswith("README")],
        }
        for t in targets
    ]


@dataclass(frozen=True)
class QuantizedReleaseResult:
    """What `release_quantized` did: the repo, its commit, the verify report and the quantize report."""

    repo_id: str
    commit_oid: str | None
    verify: dict[str, Any]
    quantize: dict[str, Any]


def release_quantized(
    src: str | Path,
    target: QuantizedTarget,
    *,
    api: HfApi,
    work_dir: Path,
    card: str | None = None,
    cards_dir: Path = Path("cards"),
    calibration: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> QuantizedReleaseResult:
    """Quantize SRC as `target` says, verify, render the card and publish to `target.repo`.

    Raises:
        VerifyError: the quantized folder failed verify (nothing was sent).
        QuantizeError, CardError, PublishError: as `quantize`, the card and `publish`.
    """
    from hubtools.card.quantized import read_release, render_quantized_card
    from hubtools.card.render import write_card
    from hubtools.card.source import load_card_source, resolve_card_source
    from hubtools.publishing.upload import publish
    from hubtools.quantization.run import quantize
    from hubtools.quantization.scheme import QuantizeOptions
    from hubtools.quantization.verify import verify_quantized

    say = say or (lambda _: None)
    folder = work_dir / target.suffix
    shutil.rmtree(folder, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    default = QuantizeOptions()
    options = QuantizeOptions(
        method=target.method,
        bits=target.bits,
        group_size=target.group_size,
        samples=target.samples or default.samples,
        seq_len=target.seq_len or default.seq_len,
        calibration=calibration,
    )
    say(f"{target.repo}: quantizing ({target.method}, {target.bits}-bit, group {target.group_size})")
    made = quantize(Path(src), folder, options).to_json()
    say(f"{target.repo}: verifying")
    report = verify_quantized(Path(src), folder).to_json()
    report_path = work_dir / f"{target.suffix}.verify.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        raise VerifyError(f"{folder}: the quantized folder failed verify (see {report_path}); nothing was sent")
    if card:
        source = load_card_source(resolve_card_source(card, cards_dir=cards_dir))
        text = render_quantized_card(source, read_release(folder, report_path), repo_id=target.repo)
        write_card(text, folder / "README.md", force=True)
    say(f"{target.repo}: publishing")
    result = publish(folder, target.repo, api=api)
    return QuantizedReleaseResult(target.repo, result.commit_oid, report, made)
