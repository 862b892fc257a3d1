"""Run-versus-run comparisons over the per-item scores stored in DuckDB (`mixlab compare`, the ladder's gates).

A "side" is one run, or several runs of the same configuration with different seeds. Scores are lined up by
item_id: only items that every run of both sides scored on the metric enter the comparison (a paired test needs
the same items), and the number left out is reported. The test itself is `mixlab.evals.stats.compare` or
`margin_test`: one statistics module for every comparison the lab makes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from mixlab.errors import MixlabError
from mixlab.evals import stats
from mixlab.store import Store


def item_values(store: Store, run_id: str, task: str) -> dict[str, dict[str, float]]:
    """{item_id: {metric: value}} from a run's latest completed evaluation of `task` (scored items only)."""
    out: dict[str, dict[str, float]] = {}
    for row in store.item_scores(run_id, task):
        extra = json.loads(row["extra"] or "{}")
        scores = extra.get("scores") if isinstance(extra, dict) else None
        if isinstance(scores, dict):
            out[row["item_id"]] = {k: float(v) for k, v in scores.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    return out


@dataclass
class Aligned:
    items: list[str]
    a: np.ndarray  # [seeds of side a, items]
    b: np.ndarray
    dropped: int  # items some run of either side lacks


def align(store: Store, runs_a: Sequence[str], runs_b: Sequence[str], task: str, metric: str) -> Aligned:
    """The per-item scores of `metric` for both sides, on the items every run scored."""
    per_run = {r: item_values(store, r, task) for r in [*runs_a, *runs_b]}
    with_metric = {r: {i: v[metric] for i, v in vals.items() if metric in v} for r, vals in per_run.items()}
    every = set.union(*(set(v) for v in with_metric.values())) if with_metric else set()
    common = sorted(set.intersection(*(set(v) for v in with_metric.values()))) if with_metric else []
    mat = lambda runs: np.array([[with_metric[r][i] for i in common] for r in runs], dtype=float).reshape(len(runs), len(common))  # noqa: E731
    return Aligned(common, mat(runs_a), mat(runs_b), len(every) - len(common))


def headline_metrics(store: Store, run_id: str) -> dict[str, list[str]]:
    """{task: [metric, ...]} of a run's stored evaluations, headline metrics only (no `/` breakdowns)."""
    out: dict[str, list[str]] = {}
    for row in store.run_metrics(run_id):
        if "/" not in row["metric"]:
            out.setdefault(row["task"], [])
            if row["metric"] not in out[row["task"]]:
                out[row["task"]].append(row["metric"])
    return out


@dataclass
class MetricComparison:
    task: str
    metric: str
    n_dropped: int
    comparison: stats.Comparison

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "n_dropped": self.n_dropped, **asdict(self.comparison),
                "significant": self.comparison.significant}


def check_runs(store: Store, runs: Sequence[str]) -> None:
    known = store.get_runs(list(runs))
    missing = [r for r in runs if r not in known]
    if missing:
        raise MixlabError(f"no run {missing[0]!r} in {store.path} (see `mixlab runs`)")


def compare_runs(store: Store, runs_a: Sequence[str], runs_b: Sequence[str], *, tasks: Sequence[str] | None = None,
                 metrics: Sequence[str] | None = None, alpha: float = 0.05, n_boot: int = 2000,
                 seed: int = 0) -> list[MetricComparison]:
    """Per task and metric that both sides report: side a minus side b, paired over items (and over seeds)."""
    if not runs_a or not runs_b:
        raise MixlabError("compare needs at least one run on each side")
    check_runs(store, [*runs_a, *runs_b])
    reported = [headline_metrics(store, r) for r in [*runs_a, *runs_b]]
    shared_tasks = [t for t in reported[0] if all(t in rep for rep in reported[1:])]
    if tasks:
        unknown = [t for t in tasks if t not in shared_tasks]
        if unknown:
            raise MixlabError(f"task {unknown[0]!r} is not evaluated in every compared run "
                              f"(common tasks: {', '.join(shared_tasks) or 'none'})")
        shared_tasks = list(tasks)
    out = []
    for task in shared_tasks:
        names = [m for m in reported[0][task] if all(m in rep[task] for rep in reported[1:])]
        if metrics:
            names = [m for m in names if m in metrics]
        for metric in names:
            data = align(store, runs_a, runs_b, task, metric)
            if not data.items:
                continue
            out.append(MetricComparison(task, metric, data.dropped,
                                        stats.compare(data.a, data.b, alpha=alpha, n_boot=n_boot, seed=seed)))
    return out
