"""Evaluation results for model cards: card-source benchmarks, lm-evaluation-harness imports, model-index.

A `Benchmark` is one model-index result (one task on one dataset config/split with a shot count) with
one or more metrics. Card sources list them compactly; `load_lm_eval_results` reads the harness's
`results_*.json` files (fractions, `"metric,filter"` keys) into the same shape in percent, and
`merge_benchmarks` lets measured results replace the card's values for the same benchmark.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from hubtools.errors import CardError

TEXT_GENERATION = ("text-generation", "Text Generation")

# Open LLM Leaderboard (v1) tasks as lm-evaluation-harness names them: display name, metric order,
# metric renames, and, for groups that have no dataset config of their own, the dataset identity.
_KNOWN_TASKS: dict[str, dict[str, Any]] = {
    "arc_challenge": {"display": "AI2 Reasoning Challenge", "order": ("acc_norm", "acc")},
    "hellaswag": {"display": "HellaSwag", "order": ("acc_norm", "acc")},
    "mmlu": {"display": "MMLU", "order": ("acc",), "dataset": ("cais/mmlu", "all", "test")},
    "truthfulqa_mc2": {"display": "TruthfulQA", "order": ("acc",), "rename": {"acc": "mc2"}},
    "winogrande": {"display": "Winogrande", "order": ("acc",)},
    "gsm8k": {"display": "GSM8k", "order": ("exact_match",)},
}
_METRIC_NAMES = {"acc": "accuracy", "acc_norm": "normalized accuracy", "exact_match": "exact match", "f1": "F1"}
# Harness metrics that are not fractions in [0, 1]: kept as reported instead of turned into percent.
_NOT_FRACTIONS = frozenset(
    {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "bleu", "ter", "chrf", "likelihood"}
)


@dataclass(frozen=True)
class Metric:
    """One metric of a benchmark: `type` (e.g. `acc_norm`), `value` (percent), optional pretty `name`."""

    type: str
    value: Any
    name: str | None = None


@dataclass(frozen=True)
class Benchmark:
    """One model-index result: a task on a dataset (config, split, shots) with its metrics and source."""

    name: str
    dataset_type: str
    metrics: tuple[Metric, ...]
    dataset_config: str | None = None
    dataset_split: str | None = None
    num_few_shot: int | None = None
    source_name: str | None = None
    source_url: str | None = None
    task_type: str = TEXT_GENERATION[0]
    task_name: str | None = TEXT_GENERATION[1]

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two results "the same benchmark": task, dataset (namespace ignored), config, split, shots."""
        return (
            self.task_type,
            _dataset_id(self.dataset_type),
            self.dataset_config,
            self.dataset_split,
            self.num_few_shot,
        )


@dataclass(frozen=True)
class EvalRun:
    """Benchmarks imported from one lm-evaluation-harness results file; `label` says which file and version."""

    label: str
    benchmarks: tuple[Benchmark, ...]


def benchmarks_from_source(groups: Any, *, where: str) -> tuple[Benchmark, ...]:
    """Read a card source's `results:` list (groups sharing a source) into benchmarks.

    Args:
        groups (`Any`): `[{source, source_url, details_url, benchmarks: [{name, dataset, config, split,
            shots, metric, metric_name, value}]}]` as YAML loads it; `None` means no results.
        where (`str`): the card source path, for messages.

    Returns:
        `tuple[Benchmark, ...]` in source order.

    Raises:
        `CardError`: a group or benchmark misses a required key or has the wrong shape.
    """
    if groups is None:
        return ()
    if not isinstance(groups, list):
        raise CardError(f"{where}: results must be a list of groups, got {groups!r}")
    out: list[Benchmark] = []
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping) or not isinstance(group.get("benchmarks"), list):
            raise CardError(f"{where}: results[{i}] must be a mapping with a 'benchmarks' list, got {group!r}")
        for j, entry in enumerate(group["benchmarks"]):
            out.append(_source_benchmark(entry, group, f"{where}: results[{i}].benchmarks[{j}]"))
    return tuple(out)


def _source_benchmark(entry: Any, group: Mapping[str, Any], where: str) -> Benchmark:
    if not isinstance(entry, Mapping):
        raise CardError(f"{where} must be a mapping, got {entry!r}")
    missing = [key for key in ("name", "dataset", "metric", "value") if key not in entry]
    if missing:
        raise CardError(f"{where} misses {', '.join(missing)} (expected name, dataset, metric and value)")
    task = entry.get("task", TEXT_GENERATION[0])
    return Benchmark(
        name=entry["name"],
        dataset_type=entry["dataset"],
        metrics=(Metric(entry["metric"], entry["value"], entry.get("metric_name")),),
        dataset_config=entry.get("config"),
        dataset_split=entry.get("split"),
        num_few_shot=entry.get("shots"),
        source_name=group.get("source"),
        source_url=group.get("source_url"),
        task_type=task,
        task_name=entry.get("task_name", TEXT_GENERATION[1] if task == TEXT_GENERATION[0] else None),
    )


def load_lm_eval_results(path: Path) -> EvalRun:
    """Import an lm-evaluation-harness `results_*.json` as benchmarks (values in percent, 2 decimals).

    Each top-level task becomes one benchmark: dataset from `configs` (`dataset_path`, `dataset_name`,
    the test split or else the validation split), shots from `n-shot`, one metric per `"metric,filter"`
    key (stderr dropped; a task without any numeric metric is left out). A group (e.g. `mmlu`) stands
    for its subtasks when they share one dataset; otherwise its subtasks are imported one by one.

    Args:
        path (`Path`): the results file.

    Returns:
        `EvalRun` labelled with the file name and harness version.

    Raises:
        `CardError`: unreadable JSON, no `results`, or a task whose dataset cannot be determined.

    Example:
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = Path(folder.name) / "results_2024-05-01T10-00-00.json"
        >>> _ = path.write_text(json.dumps({
        ...     "results": {"arc_challenge": {"acc_norm,none": 0.70477, "acc_norm_stderr,none": 0.0133}},
        ...     "configs": {"arc_challenge": {"dataset_path": "allenai/ai2_arc", "test_split": "test"}},
        ...     "n-shot": {"arc_challenge": 25},
        ... }))
        >>> run = load_lm_eval_results(path)
        >>> run.benchmarks[0].name, run.benchmarks[0].metrics[0]
        ('AI2 Reasoning Challenge (25-shot)', Metric(type='acc_norm', value=70.48, name='normalized accuracy'))
        >>> folder.cleanup()
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: cannot read lm-evaluation-harness results ({exc})") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("results"), Mapping) or not data["results"]:
        raise CardError(f"{path}: not an lm-evaluation-harness results file (expected a non-empty 'results')")
    subtasks = {g: list(s) for g, s in (data.get("group_subtasks") or {}).items() if isinstance(s, list)}
    covered = {sub for group in subtasks if group in data["results"] for sub in _descendants(group, subtasks)}
    tasks = [task for task in data["results"] if task not in covered]
    units = [unit for task in tasks for unit in _units(task, data, subtasks)]
    benchmarks = tuple(_harness_benchmark(task, data, subtasks, path) for task in units)
    version = data.get("lm_eval_version")
    label = f"{path.name} (lm-evaluation-harness {version})" if version else path.name
    return EvalRun(label=label, benchmarks=tuple(b for b in benchmarks if b.metrics))


def _descendants(task: str, subtasks: Mapping[str, list[str]]) -> list[str]:
    return [sub for child in subtasks.get(task, ()) for sub in (child, *_descendants(child, subtasks))]


def _units(task: str, data: Mapping[str, Any], subtasks: Mapping[str, list[str]]) -> list[str]:
    """The task itself when it maps to one dataset, otherwise its subtasks (recursively)."""
    if task in (data.get("configs") or {}) or _group_dataset(task, data, subtasks) is not None:
        return [task]
    if task not in subtasks:
        return [task]  # _harness_benchmark reports the missing config
    return [unit for child in subtasks[task] if child in data["results"] for unit in _units(child, data, subtasks)]


def _group_dataset(
    task: str, data: Mapping[str, Any], subtasks: Mapping[str, list[str]]
) -> tuple[str | None, str | None, str | None] | None:
    known = _KNOWN_TASKS.get(task, {}).get("dataset")
    if known is not None:
        return known
    configs = data.get("configs") or {}
    found = {_dataset_of(configs[sub]) for sub in _descendants(task, subtasks) if sub in configs}
    if len(found) != 1:
        return None
    path, _, split = found.pop()
    return (path, None, split)


def _dataset_of(config: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    split = config.get("test_split") or config.get("validation_split") or config.get("split")
    return (config.get("dataset_path"), config.get("dataset_name"), split)


def _harness_benchmark(task: str, data: Mapping[str, Any], subtasks: Mapping[str, list[str]], path: Path) -> Benchmark:
    config = (data.get("configs") or {}).get(task)
    dataset = _dataset_of(config) if isinstance(config, Mapping) else _group_dataset(task, data, subtasks)
    if dataset is None or not dataset[0]:
        raise CardError(f"{path}: task {task!r} has no dataset_path in 'configs' (cannot name its dataset)")
    shots = _shots(task, data, subtasks)
    known = _KNOWN_TASKS.get(task, {})
    alias = str(data["results"][task].get("alias", task)).strip(" -") or task
    display = known.get("display", alias)
    return Benchmark(
        name=f"{display} ({shots}-shot)" if shots is not None else display,
        dataset_type=dataset[0],
        dataset_config=dataset[1],
        dataset_split=dataset[2],
        num_few_shot=shots,
        metrics=_harness_metrics(data["results"][task], known),
    )


def _shots(task: str, data: Mapping[str, Any], subtasks: Mapping[str, list[str]]) -> int | None:
    nshot = data.get("n-shot") or {}
    if isinstance(nshot.get(task), int):
        return nshot[task]
    config = (data.get("configs") or {}).get(task) or {}
    if isinstance(config.get("num_fewshot"), int):
        return config["num_fewshot"]
    found = {nshot.get(sub) for sub in _descendants(task, subtasks) if sub in nshot}
    return found.pop() if len(found) == 1 and isinstance(next(iter(found)), int) else None


def _harness_metrics(values: Mapping[str, Any], known: Mapping[str, Any]) -> tuple[Metric, ...]:
    metrics: list[Metric] = []
    for key, value in values.items():
        metric, sep, filt = key.partition(",")
        if not sep or metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        kind = known.get("rename", {}).get(metric, metric)
        name = _METRIC_NAMES.get(kind)
        if filt not in ("none", ""):
            name = f"{name or kind} ({filt})"
        shown = _rounded(value, 4) if metric in _NOT_FRACTIONS else _rounded(value * 100, 2)
        metrics.append(Metric(kind, shown, name))
    order = {m: i for i, m in enumerate(known.get("rename", {}).get(m, m) for m in known.get("order", ()))}
    return tuple(sorted(metrics, key=lambda m: order.get(m.type, len(order))))


def merge_benchmarks(base: Sequence[Benchmark], overrides: Iterable[Benchmark]) -> tuple[Benchmark, ...]:
    """Replace the metrics and source of each base benchmark an override measures; append the others.

    The base keeps its pretty names (benchmark and, for the same metric type, metric). Later overrides
    win over earlier ones.

    Args:
        base (`Sequence[Benchmark]`): the card source's results.
        overrides (`Iterable[Benchmark]`): measured results (e.g. from lm-evaluation-harness).

    Returns:
        `tuple[Benchmark, ...]`: base order first, then new benchmarks in the order given.
    """
    out = list(base)
    index = {bench.key: i for i, bench in enumerate(out)}
    for bench in overrides:
        if bench.key not in index:
            index[bench.key] = len(out)
            out.append(bench)
            continue
        old = out[index[bench.key]]
        names = {metric.type: metric.name for metric in old.metrics}
        metrics = tuple(replace(m, name=names.get(m.type) or m.name) for m in bench.metrics)
        out[index[bench.key]] = replace(
            old, metrics=metrics, source_name=bench.source_name, source_url=bench.source_url
        )
    return tuple(out)


def to_eval_results(benchmarks: Sequence[Benchmark]) -> list[EvalResult]:
    """Flatten benchmarks into huggingface_hub `EvalResult`s (one per metric), refusing lossy ones.

    huggingface_hub groups results by (task, dataset, config, split, revision) when it writes the
    model-index, keeping only the first one's name, shots and source: two benchmarks that differ only
    in their shot count would silently merge, so they are refused here.

    Raises:
        `CardError`: two benchmarks would merge, or a source name has no source url.
    """
    seen: dict[tuple[Any, ...], Benchmark] = {}
    results: list[EvalResult] = []
    for bench in benchmarks:
        ident = (bench.task_type, bench.dataset_type, bench.dataset_config, bench.dataset_split)
        if ident in seen:
            raise CardError(
                f"results: {seen[ident].name!r} and {bench.name!r} share task, dataset, config and split "
                f"{ident!r}; a model-index cannot keep both (use a different dataset config or drop one)"
            )
        seen[ident] = bench
        if bench.source_name is not None and bench.source_url is None:
            raise CardError(f"results: {bench.name!r} has source {bench.source_name!r} but no source_url")
        for metric in bench.metrics:
            results.append(
                EvalResult(
                    task_type=bench.task_type,
                    task_name=bench.task_name,
                    dataset_type=bench.dataset_type,
                    dataset_name=bench.name,
                    dataset_config=bench.dataset_config,
                    dataset_split=bench.dataset_split,
                    dataset_args=None if bench.num_few_shot is None else {"num_few_shot": bench.num_few_shot},
                    metric_type=metric.type,
                    metric_value=metric.value,
                    metric_name=metric.name,
                    source_name=bench.source_name,
                    source_url=bench.source_url,
                )
            )
    return results


def average(benchmarks: Sequence[Benchmark]) -> float | None:
    """Mean of each benchmark's first metric (the leaderboard "Avg."), or None if any is not numeric."""
    values = [bench.metrics[0].value for bench in benchmarks if bench.metrics]
    if len(values) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    return sum(values) / len(values)


def _rounded(value: float, places: int) -> float:
    """Round half up on the decimal value as printed (0.71245 -> 71.25), not on its binary approximation."""
    step = Decimal(1).scaleb(-places)
    return float(Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP))


def _dataset_id(dataset_type: Any) -> Any:
    """`allenai/ai2_arc` and the legacy canonical `ai2_arc` name the same dataset."""
    return dataset_type.rsplit("/", 1)[-1].lower() if isinstance(dataset_type, str) else dataset_type
