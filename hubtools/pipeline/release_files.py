"""The small pieces of a release: its small files (index, configs, tokenizer, card), the `--dry-run`
plan, and the result. Each is made by the same code `convert`, `card` and `publish` use, so the bytes
that land are the same.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hubtools.checkpoint.reader import Checkpoint
from hubtools.converter import ConversionPlan, write_metadata, write_tokenizer
from hubtools.filenames import README
from hubtools.model.names import Layout
from hubtools.publishing.plan import ROLE_ORDER, PlannedFile, Role, planned_file
from hubtools.publishing.remote import hexdigest
from hubtools.publishing.upload import FileResult, action_totals


def write_small_files(ckpt: Checkpoint, conversion: ConversionPlan, out: Path, *, chat_template: str) -> list[str]:
    """Index, config.json, generation_config.json and the HF tokenizer files, as `convert` writes them."""
    context = (conversion.config or {}).get("max_position_embeddings")
    return write_metadata(conversion, out) + write_tokenizer(ckpt, Layout.HF, out, chat_template, context)


def small_files(out: Path) -> list[tuple[PlannedFile, str]]:
    """Every publishable file of `out` but the weights, in `publish`'s order, with its sha256."""
    found = []
    for entry in sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(".")):
        planned = planned_file(entry)
        if planned is not None and planned.role is not Role.WEIGHTS:
            found.append((planned, hexdigest(hashlib.sha256(), entry)))
    return sorted(found, key=lambda item: (ROLE_ORDER.index(item[0].role), item[0].path))


def write_card(spec: str, out: Path, *, cards_dir: Path, ckpt: Checkpoint, report: Any) -> Path:
    """README.md as `hubtools card SPEC --model OUT --report verify.json` renders it (the shards may be
    gone: the parameter count comes from the source's headers, which hold the same tensors)."""
    from hubtools.card.model_facts import read_model_facts
    from hubtools.card.render import render_card
    from hubtools.card.render import write_card as write_text
    from hubtools.card.source import load_card_source, resolve_card_source
    from hubtools.inspection import parameter_counts

    source = load_card_source(resolve_card_source(spec, cards_dir=cards_dir))
    facts = read_model_facts(out, counts=parameter_counts(ckpt))
    text = render_card(source, model=facts, report=report)
    return write_text(text, out / README, force=True)


def dry_run_plan(src: str, ckpt: Checkpoint, conversion: ConversionPlan, small: list[str]) -> dict[str, Any]:
    """Files to publish (sizes of the shards exact), and for each tensor the source byte ranges it reads.

    `small`: the names of the small files the release sends (`small_files` of what `write_small_files` and,
    with a card, `write_card` wrote), so the plan lists exactly what the real run sends."""
    locate = getattr(ckpt, "url", lambda path: str(path))
    shards = []
    for shard in conversion.shards:
        tensors = []
        for t in shard.tensors:
            step = conversion.steps[t.name]
            ranges = [[locate(path), offset, length] for path, offset, length in step.source.segments]
            tensors.append({"name": t.name, "bytes": t.nbytes, "source": step.source.name, "ranges": ranges})
        shards.append({"file": shard.file, "bytes": _shard_size(shard), "tensors": tensors})
    return {
        "dry_run": True,
        "source": src,
        "format": ckpt.format,
        "shards": shards,
        "small_files": list(small),
        "total_bytes": sum(s["bytes"] for s in shards),
    }


def _shard_size(shard: Any) -> int:
    from hubtools.checkpoint.safetensors_format import build_header
    from hubtools.checkpoint.writer import METADATA

    return len(build_header([(t.name, t.code, t.shape) for t in shard.tensors], METADATA)) + shard.nbytes


@dataclass(frozen=True)
class ReleaseResult:
    """Outcome of `release`: the commit (None when the Hub already had everything), per-file actions,
    the verify verdict, the work dir's peak size and the wall time."""

    repo_id: str
    revision: str
    commit_oid: str | None
    commit_url: str | None
    pr_url: str | None
    tag: str | None
    verified_at: str
    files: tuple[FileResult, ...]
    report: dict[str, Any]
    work_peak_bytes: int
    seconds: float

    @classmethod
    def build(
        cls,
        repo_id: str,
        revision: str,
        commit: Any,
        tag: str | None,
        verified_at: str,
        files: tuple[FileResult, ...],
        report: Any,
        peak: int,
        started: float,
    ) -> ReleaseResult:
        return cls(
            repo_id,
            revision,
            None if commit is None else commit.oid,
            None if commit is None else commit.commit_url,
            None if commit is None else commit.pr_url,
            tag,
            verified_at,
            files,
            report.to_dict(),
            peak,
            round(time.monotonic() - started, 3),
        )

    @property
    def uploaded_bytes(self) -> int:
        return action_totals(self.files)["uploaded_bytes"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(files=[f.to_dict() for f in self.files], **action_totals(self.files))
        return out
