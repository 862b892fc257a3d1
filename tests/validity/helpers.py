"""Real DuckDB rows for comparison tests: a training run with one completed evaluation and its per-item scores."""

from __future__ import annotations

from typing import Sequence

from mixlab.store import EvalRunRecord, MetricRecord, RunRecord, SampleRecord, Store


def add_scored_run(store: Store, run_id: str, task: str, scores: Sequence[float], metric: str = "accuracy",
                   *, item_prefix: str = "item", seed: int = 0, unscored: Sequence[int] = ()) -> None:
    """A completed training run with one completed evaluation of `task`: item i scores scores[i]; items whose
    index is in `unscored` are stored with score NULL (answers kept, not yet scored)."""
    store.start_run(RunRecord(run_id=run_id, kind="train", name=run_id, status="completed", seed=seed))
    eval_id = f"{run_id}-{task}"
    store.start_eval(EvalRunRecord(eval_id=eval_id, run_id=run_id, checkpoint=f"/ckpt/{run_id}", task=task))
    samples = []
    for i, value in enumerate(scores):
        if i in unscored:
            samples.append(SampleRecord(eval_id=eval_id, run_id=run_id, task=task, item_id=f"{item_prefix}{i:04d}",
                                        output="answer", score=None, extra={"unscored": {}}))
        else:
            samples.append(SampleRecord(eval_id=eval_id, run_id=run_id, task=task, item_id=f"{item_prefix}{i:04d}",
                                        output="answer", score=float(value), extra={"scores": {metric: float(value)}}))
    store.record_eval_samples(eval_id, samples)
    kept = [float(v) for i, v in enumerate(scores) if i not in unscored]
    mean = sum(kept) / len(kept)
    store.finish_eval(eval_id, [MetricRecord(eval_id=eval_id, run_id=run_id, task=task, metric=metric, category="leaderboard", n=len(kept),
                                             mean=mean, ci_low=mean, ci_high=mean, ci_method="test")], len(kept))
