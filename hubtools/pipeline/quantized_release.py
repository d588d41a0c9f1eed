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

from hubtools.errors import PublishError, RecipeError, VerifyError
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
    stamp: dict[str, Any] | None = None,
) -> QuantizedReleaseResult:
    """Quantize SRC as `target` says, verify, render the card and publish to `target.repo`.

    `stamp` (what `release_quantized_repos` compares on a re-run) is written into the folder's
    quantization_report.json as `release`.

    Raises:
        VerifyError: the quantized folder failed verify (nothing was sent).
        QuantizeError, CardError, PublishError: as `quantize`, the card and `publish`.
    """
    from hubtools.card.quantized import read_release, render_quantized_card
    from hubtools.card.render import write_card
    from hubtools.card.source import load_card_source, resolve_card_source
    from hubtools.publishing.upload import publish
    from hubtools.quantization.run import REPORT, quantize
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
    if stamp is not None:
        made["release"] = stamp
        (folder / REPORT).write_text(json.dumps(made, indent=2) + "\n")
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


def check_quantized_inputs(src: str, options: Any, *, only: bool, skip: bool) -> None:
    """What the quantized repos of a release need, checked before anything is sent.

    Raises:
        RecipeError: --quantized-only with --no-quantized, or with no `quantized:` targets; SRC not a local
            folder (quantize reads it whole, layer by layer); --create-pr / --revision (the quantized repos
            are published to main, after the main repo's main).
    """
    if only and skip:
        raise RecipeError("--quantized-only and --no-quantized: choose one")
    if only and not options.quantized:
        raise RecipeError("--quantized-only: the recipe lists no quantized repos ('quantized:')")
    if not options.quantized:
        return
    if not Path(src).is_dir():
        raise RecipeError(
            f"{src}: the recipe's quantized repos need SRC as a local folder (quantize reads every layer); "
            "fetch it first, or pass --no-quantized"
        )
    if options.create_pr or options.revision:
        raise RecipeError(
            "--create-pr / --revision: the quantized repos publish to main once the main repo is on main; "
            "pass --no-quantized (then --quantized-only after the merge)"
        )


def main_revision(api: HfApi, repo_id: str) -> str:
    """The commit `repo_id`'s main points at (what --quantized-only quantizes after).

    Raises:
        PublishError: the repo does not exist or cannot be read.
    """
    from huggingface_hub.errors import HfHubHTTPError

    try:
        sha = api.repo_info(repo_id, revision="main").sha
    except HfHubHTTPError as exc:
        raise PublishError(
            f"{repo_id}: cannot read the main repo ({str(exc).splitlines()[0]}); release it first"
        ) from None
    if not sha:
        raise PublishError(f"{repo_id}: the Hub gave no commit for main; release it first")
    return str(sha)


def release_stamp(target: QuantizedTarget, base_repo: str, base_revision: str) -> dict[str, Any]:
    """What makes a quantized repo's content: the main repo's verified commit, the target and hubtools' version."""
    from hubtools.version import __version__

    return {"base_repo": base_repo, "base_revision": base_revision, "target": target.to_dict(), "hubtools": __version__}


def published_stamp(api: HfApi, repo_id: str) -> dict[str, Any] | None:
    """The `release` stamp of the quantization_report.json `repo_id` holds on main (None: no repo, no file,
    no stamp)."""
    from huggingface_hub.utils import build_hf_headers, get_session

    from hubtools.quantization.run import REPORT

    url = f"{api.endpoint.rstrip('/')}/{repo_id}/resolve/main/{REPORT}"  # the endpoint as the client was given it
    try:
        response = get_session().get(url, headers=build_hf_headers(token=api.token), timeout=60)
        stamp = response.json().get("release") if response.status_code == 200 else None
    except (OSError, ValueError, AttributeError):
        return None
    return stamp if isinstance(stamp, dict) else None


@dataclass(frozen=True)
class QuantizedOutcome:
    """One quantized repo of a release: published (with its commit) or skipped (already published)."""

    repo_id: str
    action: str  # "published" | "unchanged" (the repo already holds this release) | "skipped"
    commit_oid: str | None = None
    mean_kl: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def release_quantized_repos(
    src: Path,
    targets: Sequence[QuantizedTarget],
    *,
    api: HfApi,
    base_repo: str,
    base_revision: str,
    work_dir: Path,
    card: str | None = None,
    cards_dir: Path = Path("cards"),
    say: Callable[[str], None] | None = None,
) -> list[QuantizedOutcome]:
    """Each target after the main repo (`base_repo` at `base_revision`, already published): a repo whose
    quantization_report.json carries the same stamp (`release_stamp`) is left as it is (a re-run resumes),
    any other is quantized, verified, carded and published (`release_quantized`).

    Raises:
        As `release_quantized`, for the first target that fails (those before it stay published).
    """
    say = say or (lambda _: None)
    outcomes = []
    for target in targets:
        stamp = release_stamp(target, base_repo, base_revision)
        if published_stamp(api, target.repo) == stamp:
            say(f"{target.repo}: already holds this release, nothing to do")
            outcomes.append(QuantizedOutcome(target.repo, "unchanged"))
            continue
        result = release_quantized(
            src, target, api=api, work_dir=work_dir, card=card, cards_dir=cards_dir, say=say, stamp=stamp
        )
        kl = result.verify["quality"]["quantized"]["mean_kl"]
        outcomes.append(QuantizedOutcome(target.repo, "published", result.commit_oid, kl))
    return outcomes
