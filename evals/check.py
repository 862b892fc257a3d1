"""`mixlab eval check TASK`: prove a scorer right by feeding it the task's own reference solutions.

A correct scorer gives (nearly) 100 % on the references and (nearly) 0 % when the references are shuffled across
items. The first catches extraction/normalisation bugs (a gold answer the scorer cannot read), the second catches
scorers that accept anything (e.g. grading against the assert shown in the prompt). Any task that implements
`reference_output` gets the same check, including tasks a user adds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mixlab.evals.tasks.base import EvalItem, Score, Task, get_task
from mixlab.errors import MixlabError
from mixlab.paths import data_root as default_data_root


@dataclass
class MetricSummary:
    mean: float
    low: float
    high: float
    method: str


@dataclass
class CheckResult:
    task: str
    n: int
    shuffled: bool
    primary_metric: str
    metrics: dict[str, MetricSummary]
    failures: list[dict[str, Any]] = field(default_factory=list)  # first few items scoring 0 (or >0 if shuffled)
    data_root: str | None = None
    # Shuffled only: items whose donor has the *same* gold answer (e.g. two GSM8K problems answering 4). These
    # score 1 legitimately, so a correct scorer's shuffled score is about identical_gold_pairs / n.
    identical_gold_pairs: int | None = None

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric].mean

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["primary"] = self.primary
        return out


def derangement(n: int, seed: int) -> list[int]:
    """A permutation with no fixed point: item i receives the reference of item perm[i] != i."""
    if n < 2:
        return list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = [0] * n
    for pos, item in enumerate(order):
        perm[item] = order[(pos + 1) % n]  # a single n-cycle over a random order
    return perm


def check_task(
    task: str | Task,
    data_root: Path | None = None,
    limit: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    workers: int = 4,
    max_failures: int = 10,
    progress: Callable[[int], None] | None = None,
) -> CheckResult:
    """Score every item's reference solution (or, with shuffle, another item's) with the task's own scorer."""
    task_obj = get_task(task) if isinstance(task, str) else task
    if data_root is None:
        data_root = default_data_root()
    items = task_obj.load(data_root, limit=limit)
    if not items:
        raise MixlabError(f"task {task_obj.name}: no items to check (limit={limit})")
    references = [task_obj.reference_output(item) for item in items]
    source = derangement(len(items), seed) if shuffle else list(range(len(items)))

    def score_one(i: int) -> Score:
        return task_obj.score(items[i], references[source[i]])

    scores: list[Score] = [None] * len(items)  # type: ignore[list-item]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, score in zip(range(len(items)), pool.map(score_one, range(len(items)))):
            scores[i] = score
            if progress is not None:
                progress(1)

    metric_names = list(task_obj.metrics)
    metrics = {name: MetricSummary(*summary) for name, summary in task_obj.aggregate(scores).items()}

    primary = metric_names[0]
    failures = []
    for i, (item, score) in enumerate(zip(items, scores)):
        unexpected = score.values.get(primary, 0.0) > 0 if shuffle else score.values.get(primary, 0.0) < 1
        if unexpected and len(failures) < max_failures:
            failures.append(_failure_row(item, references[source[i]], score))
    identical = None  # only meaningful where the gold is a plain answer (not tests or constraint lists)
    if shuffle and all(isinstance(item.reference, (str, int, float)) for item in items):
        identical = sum(1 for i, item in enumerate(items) if item.reference == items[source[i]].reference)
    return CheckResult(
        task=task_obj.name,
        n=len(items),
        shuffled=shuffle,
        primary_metric=primary,
        metrics=metrics,
        failures=failures,
        data_root=str(data_root) if data_root is not None else None,
        identical_gold_pairs=identical,
    )


def _failure_row(item: EvalItem, reference: str, score: Score) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "score": score.values,
        "reference_tail": reference[-200:],
        "details": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                    for k, v in (score.details or {}).items()},
    }
