"""The eval runner: checkpoint × tasks → generations → scores/judgements → DuckDB.

    results = evaluate("runs/checkpoints/x", "procedural", backend="torch", limit=50)

Storage (tables from `mixlab/store.py`):
- `eval_runs`: one row per task, keyed by (checkpoint, task, backend, generation config, judge): `eval_id` is
  the hash of that key, so re-running the same evaluation updates the same row;
- `eval_samples`: one row per item, written chunk by chunk as items finish (item id, prompt, output, reference,
  primary score, judge rationale, token counts; `extra` JSON keeps every metric value, scorer details and style
  statistics, from which metrics can be recomputed);
- `eval_metrics`: per task metric n, mean, 95 % CI (Wilson for 0/1 metrics, bootstrap otherwise, or the task's
  own `aggregate`), category (the task's: leaderboard | usability), plus `style/*` usability metrics from
  `evals/style.py` on every answer;
- `runs`: the eval is attached to the training run whose checkpoint it is (`run_id`, or the run whose
  `checkpoint_path` matches); a standalone evaluation gets its own `kind='eval'` run row.

Failure handling: an exception in a task (a judge endpoint that stays down, a broken loader, ...) marks that
eval_run `failed` with the error, keeps every finished sample, and moves on to the next task. Answers are stored as
soon as they are generated, before scoring, so a judge that fails costs no generation. Re-running resumes:
samples already stored for the same eval_id are reused, answers stored without scores are scored without being
generated again, and only missing items are generated and scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mixlab.errors import MixlabError
from mixlab.evals.backends import get_backend
from mixlab.evals.backends.base import Backend, GenerationConfig
from mixlab.evals.judges import get_judge
from mixlab.evals.stats import mean_ci
from mixlab.evals.style import style_stats
from mixlab.evals.suites import resolve_suite
from mixlab.evals.tasks.base import Completion, EvalItem, Score, Task, get_task
from mixlab.evals.tasks.chat import join_turns
from mixlab.paths import data_root as default_data_root
from mixlab.store import EvalRunRecord, MetricRecord, RunRecord, SampleRecord, Store, utcnow

STYLE_METRICS = ("chars", "words", "repetition_3gram", "repetition_line", "refusal", "markdown_density",
                 "broken_format", "empty")
_BINARY_STYLE = {"refusal", "broken_format", "empty"}


@dataclass
class TaskResult:
    eval_id: str
    task: str
    category: str
    status: str  # completed | failed
    n_samples: int
    metrics: list[MetricRecord] = field(default_factory=list)
    error: str | None = None
    reused: int = 0  # samples taken from an earlier (interrupted) run

    def metric(self, name: str) -> MetricRecord:
        for m in self.metrics:
            if m.metric == name:
                return m
        raise KeyError(f"{self.task} has no metric {name!r}; has {[m.metric for m in self.metrics]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval_id": self.eval_id, "task": self.task, "category": self.category, "status": self.status,
            "n_samples": self.n_samples, "error": self.error, "reused": self.reused,
            "metrics": [
                {"metric": m.metric, "n": m.n, "mean": _finite(m.mean), "ci_low": _finite(m.ci_low),
                 "ci_high": _finite(m.ci_high), "ci_method": m.ci_method, "category": m.category}
                for m in self.metrics
            ],
        }


@dataclass
class EvalResults:
    run_id: str
    checkpoint: str
    backend: dict[str, Any]
    judge: str | None
    tasks: list[TaskResult]

    @property
    def ok(self) -> bool:
        return all(t.status == "completed" for t in self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, task: str) -> TaskResult:
        for t in self.tasks:
            if t.task == task:
                return t
        raise KeyError(task)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "checkpoint": self.checkpoint, "backend": self.backend, "judge": self.judge,
                "ok": self.ok, "tasks": [t.to_dict() for t in self.tasks]}


# ---------------------------------------------------------------------------------------------------------------


def evaluate(
    checkpoint: Any,
    suite_or_tasks: str | Sequence[str | Task],
    *,
    backend: str | Backend = "torch",
    judge: Any = None,
    limit: int | None = None,
    store: Store | None = None,
    run_id: str | None = None,
    gen_config: GenerationConfig | dict[str, Any] | None = None,
    data_root: str | Path | None = None,
    backend_opts: dict[str, Any] | None = None,
    chunk_size: int = 32,
    resume: bool = True,
    progress: bool = True,
    console: Any = None,
) -> EvalResults:
    """Evaluate `checkpoint` (folder, preset name, or model object; for backend=openai the served model name) on a
    suite name / task names / Task objects. `gen_config`: a GenerationConfig used for every task, or a dict of
    overrides on each task's defaults (max_new_tokens, stop). `judge`: a judge object or spec
    (`openai:MODEL[@URL]`, `local:PATH`, `rubric`), needed by judged tasks."""
    store = store or Store()
    tasks = _resolve_tasks(suite_or_tasks)
    suite = suite_or_tasks if isinstance(suite_or_tasks, str) else None
    root = Path(data_root) if data_root is not None else default_data_root()
    if limit is not None and limit < 0:
        raise MixlabError(f"--limit must be >= 0, got {limit}")

    judge_obj = _resolve_judge(judge, store)
    judge_id = getattr(judge_obj, "id", None) if judge_obj is not None else None
    missing_judge = [t.name for t in tasks if t.needs_judge and judge_obj is None]
    if judge_obj is not None and not hasattr(judge_obj, "compare_to_baseline"):
        judged = [t.name for t in tasks if t.needs_judge]
        if judged:
            raise MixlabError(f"tasks {judged} need an LLM judge (openai:MODEL or local:PATH), not "
                              f"{getattr(judge_obj, 'name', judge_obj)!r}")
    if missing_judge:
        raise MixlabError(
            f"tasks {missing_judge} need a judge: pass --judge openai:MODEL[@BASE_URL] or --judge local:PATH "
            "(e.g. a model served by `mixlab serve`)"
        )

    backend_obj = backend if isinstance(backend, Backend) else get_backend_for(backend, checkpoint, backend_opts, chunk_size)
    backend_info = backend_obj.describe()
    checkpoint_id = _checkpoint_id(checkpoint)
    # The eval key carries the weights' fingerprint, so a folder overwritten with new weights (periodic evals
    # during training) never resumes from the old weights' samples. A live model object has no stable identity.
    fingerprint = _checkpoint_fingerprint(checkpoint)
    if fingerprint is None:
        resume = False
    if judge_obj is not None and getattr(judge_obj, "store", False) is None:
        judge_obj.store = store  # cache the judgements of a judge built without a store
    run_id, created_run = _resolve_run(store, run_id, checkpoint_id, backend_info, suite)

    progress_ctx = _progress(progress, console)
    results: list[TaskResult] = []
    with progress_ctx as bar:
        for task in tasks:
            if judge_obj is not None and task.needs_judge:
                task.judge = judge_obj
            cfg = _task_config(task, gen_config)
            task_judge = judge_id if task.needs_judge else None
            eval_id = _eval_id(fingerprint or checkpoint_id, task.name, backend_info.get("backend", "?"), cfg,
                               task_judge)
            result = _run_task(
                task, eval_id=eval_id, run_id=run_id, checkpoint_id=checkpoint_id, suite=suite, backend=backend_obj,
                backend_name=backend_info.get("backend", "?"), cfg=cfg, judge_id=task_judge, store=store,
                data_root=root, limit=limit, chunk_size=chunk_size, resume=resume, bar=bar,
            )
            results.append(result)

    if created_run:
        failed = [r for r in results if r.status != "completed"]
        store.finish_run(run_id, error="; ".join(f"{r.task}: {r.error}" for r in failed) or None)
    return EvalResults(run_id, checkpoint_id, backend_info, judge_id, results)


def get_backend_for(name: str, checkpoint: Any, opts: dict[str, Any] | None, chunk_size: int = 32) -> Backend:
    opts = dict(opts or {})
    if name in ("torch", "hf"):
        opts.setdefault("batch_size", chunk_size)  # one runner chunk = one generation batch unless told otherwise
    return get_backend(name, checkpoint, **opts)


# ---------------------------------------------------------------------------------------------------------------
# one task
# ---------------------------------------------------------------------------------------------------------------


def _run_task(task: Task, *, eval_id: str, run_id: str, checkpoint_id: str, suite: str | None, backend: Backend,
              backend_name: str, cfg: GenerationConfig, judge_id: str | None, store: Store, data_root: Path | None,
              limit: int | None, chunk_size: int, resume: bool, bar) -> TaskResult:
    store.start_eval(EvalRunRecord(eval_id=eval_id, run_id=run_id, checkpoint=checkpoint_id, task=task.name,
                                   suite=suite, backend=backend_name, gen_config=cfg.to_dict(), judge=judge_id),
                     keep_samples=resume)
    bar_id = bar.add_task(f"{task.name}", total=None) if bar is not None else None
    n_done = reused = 0
    try:
        items = task.load(data_root, limit=limit)
        if not items:
            raise MixlabError(f"task {task.name}: no items (limit={limit})")
        previous = _stored_samples(store, eval_id) if resume else {}
        # Answers generated by an earlier run whose scoring (e.g. the judge) failed: scored now, not regenerated.
        unscored = _stored_unscored(store, eval_id) if resume else {}
        scores: dict[str, Score] = {}
        outputs: dict[str, str] = {}
        for item in items:
            if item.item_id in previous:
                scores[item.item_id], outputs[item.item_id] = previous[item.item_id]
                reused += 1
        todo = [item for item in items if item.item_id not in scores]
        # Stored answers first, in chunks of their own, so no chunk mixes them with items to generate.
        rescore = [item for item in todo if item.item_id in unscored]
        fresh = [item for item in todo if item.item_id not in unscored]
        chunks = [rescore[k : k + chunk_size] for k in range(0, len(rescore), chunk_size)]
        chunks += [fresh[k : k + chunk_size] for k in range(0, len(fresh), chunk_size)]
        n_done = reused
        if bar is not None:
            bar.update(bar_id, total=len(items), completed=reused)
        for chunk in chunks:
            if chunk[0].item_id in unscored:
                completions = [unscored[item.item_id] for item in chunk]
            else:
                completions = task.generate(backend, chunk, cfg)
                _write_samples(store, eval_id, run_id, task, chunk, completions, None)  # kept if scoring fails
            chunk_scores = _score(task, chunk, completions, bar)
            _write_samples(store, eval_id, run_id, task, chunk, completions, chunk_scores)
            for item, comp, score in zip(chunk, completions, chunk_scores):
                scores[item.item_id], outputs[item.item_id] = score, comp.text
            n_done += len(chunk)
            if bar is not None:
                bar.update(bar_id, completed=n_done)
        ordered = [scores[item.item_id] for item in items]
        # e.g. pairwise tasks read other models' judgements for instruction difficulty
        task.prepare_aggregate(store=store, eval_id=eval_id, judge_id=judge_id)
        metrics = _metrics(task, eval_id, run_id, ordered, [outputs[item.item_id] for item in items])
        store.finish_eval(eval_id, metrics, n_samples=len(items))
        return TaskResult(eval_id, task.name, task.category, "completed", len(items), metrics, reused=reused)
    except KeyboardInterrupt:
        store.fail_eval(eval_id, "interrupted", n_done)
        raise
    except Exception as exc:  # noqa: BLE001 - a failed task is recorded and the suite goes on
        message = str(exc) if isinstance(exc, MixlabError) else f"{type(exc).__name__}: {exc}"
        store.fail_eval(eval_id, message, n_done)
        return TaskResult(eval_id, task.name, task.category, "failed", n_done, error=message, reused=reused)


def _score(task: Task, items: list[EvalItem], completions: list[Completion], bar) -> list[Score]:
    if bar is None:
        return task.score_batch(items, completions, None)
    score_bar = bar.add_task(f"  scoring {task.name}", total=len(items) * task.judgements_per_item())
    try:
        return task.score_batch(items, completions, lambda k: bar.advance(score_bar, k))
    finally:
        bar.remove_task(score_bar)


def _write_samples(store: Store, eval_id: str, run_id: str, task: Task, items, completions, scores) -> None:
    """`scores=None` stores the answers alone (before scoring), so a failed judge costs no regeneration."""
    if scores is None:
        _write_unscored(store, eval_id, run_id, task, items, completions)
        return
    rows = []
    for item, comp, score in zip(items, completions, scores):
        style = style_stats(comp.text)
        value = task.sample_score(score)
        turns = item.meta.get("turns") if isinstance(item.meta.get("turns"), list) else None
        rows.append(SampleRecord(
            eval_id=eval_id,
            run_id=run_id,
            task=task.name,
            item_id=item.item_id,
            prompt=_prompt_text(item, turns),
            output=comp.text,
            reference=_as_text(item.reference),
            score=value,
            passed=(value == 1.0) if (value is not None and task.binary_metrics) else None,
            judge_rationale=score.rationale,
            prompt_tokens=comp.prompt_tokens,
            output_tokens=comp.output_tokens,
            extra={
                "scores": score.values,
                "details": score.details,
                "style": {k: style[k] for k in STYLE_METRICS},
                "finish_reason": comp.finish_reason,
                **comp.extra,
            },
        ))
    # Replaces rows of the same items (a resumed run re-scoring them) rather than duplicating them.
    store.record_eval_samples(eval_id, rows)


def _write_unscored(store: Store, eval_id: str, run_id: str, task: Task, items, completions) -> None:
    rows = []
    for item, comp in zip(items, completions):
        turns = item.meta.get("turns") if isinstance(item.meta.get("turns"), list) else None
        rows.append(SampleRecord(
            eval_id=eval_id, run_id=run_id, task=task.name, item_id=item.item_id, prompt=_prompt_text(item, turns),
            output=comp.text, reference=_as_text(item.reference), score=None, passed=None, judge_rationale=None,
            prompt_tokens=comp.prompt_tokens, output_tokens=comp.output_tokens,
            extra={"unscored": {"finish_reason": comp.finish_reason, "prompt_tokens": comp.prompt_tokens,
                                "output_tokens": comp.output_tokens, "extra": comp.extra}},
        ))
    store.record_eval_samples(eval_id, rows)


def _stored_unscored(store: Store, eval_id: str) -> dict[str, Completion]:
    """Answers stored before scoring whose scoring never finished (no `scores` in their row)."""
    out = {}
    for row in store.eval_samples(eval_id):
        try:
            extra = json.loads(row["extra"] or "{}")
        except json.JSONDecodeError:
            continue
        if "scores" in extra or not isinstance(extra.get("unscored"), dict):
            continue
        saved = extra["unscored"]
        out[row["item_id"]] = Completion(row["output"] or "", saved.get("prompt_tokens"), saved.get("output_tokens"),
                                         saved.get("finish_reason"), saved.get("extra") or {})
    return out


def _stored_samples(store: Store, eval_id: str) -> dict[str, tuple[Score, str]]:
    rows = store.eval_samples(eval_id)
    out = {}
    for row in rows:
        try:
            extra = json.loads(row["extra"] or "{}")
        except json.JSONDecodeError:
            continue
        if "scores" not in extra:
            continue
        out[row["item_id"]] = (Score(extra["scores"], row["judge_rationale"], extra.get("details") or {}), row["output"] or "")
    return out


def _metrics(task: Task, eval_id: str, run_id: str, scores: list[Score], outputs: list[str]) -> list[MetricRecord]:
    summary = task.aggregate(scores)
    records = []
    for name, (mean, low, high, method) in summary.items():
        n = sum(1 for s in scores if name in s.values) or len(scores)
        records.append(MetricRecord(eval_id, run_id, task.name, name, task.category, n, mean, low, high, method))
    styles = [style_stats(text) for text in outputs]
    for key in STYLE_METRICS:
        mean, low, high, method = mean_ci([s[key] for s in styles], binary=key in _BINARY_STYLE)
        records.append(MetricRecord(eval_id, run_id, task.name, f"style/{key}", "usability", len(styles), mean, low,
                                    high, method))
    return records


# ---------------------------------------------------------------------------------------------------------------
# resolution helpers
# ---------------------------------------------------------------------------------------------------------------


def _resolve_tasks(spec: str | Sequence[str | Task]) -> list[Task]:
    if isinstance(spec, str):
        present, missing = resolve_suite(spec)
        if missing:
            raise MixlabError(f"suite {spec!r}: tasks not available in this install: {missing}")
        return [get_task(name) for name in present]
    tasks = [get_task(t) if isinstance(t, str) else t for t in spec]
    if not tasks:
        raise MixlabError("no tasks to evaluate")
    return tasks


def _resolve_judge(judge: Any, store: Store):
    if judge is None or not isinstance(judge, str):
        return judge
    return get_judge(judge, store=store)


def _task_config(task: Task, gen_config: GenerationConfig | dict[str, Any] | None) -> GenerationConfig:
    if isinstance(gen_config, GenerationConfig):
        return gen_config
    base = GenerationConfig(max_new_tokens=task.max_new_tokens, stop=tuple(task.stop))
    overrides = {k: v for k, v in (gen_config or {}).items() if v is not None}
    return base.replace(**overrides) if overrides else base


def _checkpoint_id(checkpoint: Any) -> str:
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        return str(path.resolve()) if path.exists() else str(checkpoint)
    name = getattr(getattr(checkpoint, "config", None), "_name_or_path", None)
    return f"object:{type(checkpoint).__name__}:{name or id(checkpoint)}"


def _checkpoint_fingerprint(checkpoint: Any) -> str | None:
    """A string that changes when the checkpoint's weights change: for a folder, its path plus the name, size and
    mtime of every weight/config file; for a name (preset, served model), the name; None for a model object."""
    if not isinstance(checkpoint, (str, Path)):
        return None
    path = Path(checkpoint)
    if not path.is_dir():
        return str(checkpoint)
    parts = [str(path.resolve())]
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".pt"):
            stat = f.stat()
            parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def _eval_id(checkpoint: str, task: str, backend: str, cfg: GenerationConfig, judge: str | None) -> str:
    key = json.dumps({"checkpoint": checkpoint, "task": task, "backend": backend, "gen": cfg.to_dict(),
                      "judge": judge}, sort_keys=True)
    return "ev-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _resolve_run(store: Store, run_id: str | None, checkpoint: str, backend: dict[str, Any],
                 suite: str | None) -> tuple[str, bool]:
    """(run_id, whether we created the runs row)."""
    if run_id is not None:
        if store.get_run(run_id) is not None:
            return run_id, False
    else:
        trained = store.run_for_checkpoint(checkpoint)
        if trained is not None:
            return trained, False
        run_id = f"eval-{utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    # Provenance (git sha, packages, device) comes from the store, the same record training rows carry; the
    # backend's own device is in `config`.
    store.start_run(RunRecord(
        run_id=run_id, kind="eval", name=f"eval {Path(checkpoint).name}", checkpoint_path=checkpoint,
        status="running", config={"backend": backend, "suite": suite},
    ))
    return run_id, True


def _prompt_text(item: EvalItem, turns: list[str] | None) -> str:
    if turns and len(turns) > 1:
        return join_turns(turns)
    return item.prompt_text


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool, console: Any):
    if not enabled:
        return _NoProgress()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    )


def results_table(results: EvalResults, *, style_metrics: bool = False):
    """A rich table: task, metric, n, mean, 95 % CI, method (style metrics hidden unless asked; categories are
    in the JSON output and the store)."""
    table = Table(title=f"mixlab eval · {Path(results.checkpoint).name} · run {results.run_id}")
    for column, justify, wrap in (("task", "left", False), ("metric", "left", False), ("n", "right", False),
                                  ("mean", "right", False), ("95% CI", "right", False), ("ci", "left", True)):
        table.add_column(column, justify=justify, no_wrap=not wrap, overflow="fold")
    for task in results.tasks:
        if task.status != "completed":
            table.add_row(task.task, "[red]failed", str(task.n_samples), "", "", task.error or "")
            continue
        for m in task.metrics:
            if m.metric.startswith("style/") and not style_metrics:
                continue
            ci = "" if math.isnan(m.ci_low) else f"[{m.ci_low:.3f}, {m.ci_high:.3f}]"
            mean = "nan" if math.isnan(m.mean) else f"{m.mean:.3f}"
            table.add_row(task.task, m.metric, str(m.n), mean, ci, m.ci_method)
    return table
