"""Result tables: runs × eval tasks with 95 % CIs, read back from DuckDB (what the dashboard shows, in a terminal)."""

from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from mixlab.errors import MixlabError
from mixlab.evals.tasks.base import get_task
from mixlab.store import Store


def primary_metric(task: str) -> str | None:
    """The metric a task reports first; None for a task this install does not know (e.g. a removed one)."""
    try:
        metrics = get_task(task).metrics
    except MixlabError:
        return None
    return metrics[0] if metrics else None


def results_rows(store: Store, run_ids: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """One dict per run: run facts + `{task: (mean, lo, hi, n)}` for each task's primary metric."""
    run_ids = list(run_ids)
    if not run_ids:
        return [], []
    runs = store.get_runs(run_ids)
    metrics = store.metrics_of_runs(run_ids)
    losses = store.final_losses(run_ids)
    tasks: list[str] = []
    by_run: dict[str, dict[str, tuple]] = {}
    for m in metrics:
        wanted = primary_metric(m["task"])
        if wanted is not None and m["metric"] != wanted:
            continue
        if m["task"] not in tasks:
            tasks.append(m["task"])
        # later rows (the final eval) win over periodic ones
        by_run.setdefault(m["run_id"], {})[m["task"]] = (m["mean"], m["ci_low"], m["ci_high"], m["n"], m["metric"])
    rows = []
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None:
            continue
        rows.append({
            "run_id": run_id,
            "stage": run["stage"],
            "trainer": run["trainer"],
            "mixture": run["mixture_name"],
            "family": run["mixture_family"],
            "status": run["status"],
            "loss": (losses.get(run_id) or {}).get("loss"),
            "steps": (losses.get(run_id) or {}).get("steps"),
            "metrics": by_run.get(run_id, {}),
        })
    return rows, sorted(tasks)


def format_ci(value: tuple | None) -> str:
    if not value:
        return "-"
    mean, lo, hi, n, _ = value
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def print_table(rows: list[dict[str, Any]], tasks: list[str], title: str) -> None:
    table = Table(title=title, show_lines=False)
    for col in ("mixture", "trainer", "status", "steps", "loss"):
        table.add_column(col, overflow="fold")
    for task in tasks:
        metric = next((r["metrics"][task][4] for r in rows if task in r["metrics"]), "")
        table.add_column(f"{task}\n{metric} [95% CI]", justify="right")
    for r in rows:
        table.add_row(
            r["mixture"] or "", r["trainer"] or "", r["status"], str(r["steps"] or "-"),
            f"{r['loss']:.4f}" if r["loss"] is not None else "-",
            *[format_ci(r["metrics"].get(t)) for t in tasks],
        )
    console = Console(width=None if Console().is_terminal else 160)
    console.print(table)
    console.print("runs: " + ", ".join(r["run_id"] for r in rows), soft_wrap=True)


def print_results(results, store: Store | None = None) -> None:
    store = store or Store()
    rows, tasks = results_rows(store, [r.run_id for r in results])
    print_table(rows, tasks, "mixlab run")


def print_sweep(sweep_id: str, store: Store | None = None) -> None:
    store = store or Store()
    rows, tasks = results_rows(store, store.sweep_train_runs(sweep_id))
    print_table(rows, tasks, f"sweep {sweep_id}")


def print_ladder(ladder_id: str, store: Store | None = None) -> None:
    store = store or Store()
    decisions = store.ladder_decisions(ladder_id)
    table = Table(title=f"ladder {ladder_id}")
    for col in ("rung", "mixture", "run", "baseline", "promoted", "reason"):
        table.add_column(col, overflow="fold")
    for d in decisions:
        table.add_row(d["rung"], d["mixture_name"], d["run_id"], d["baseline_run_id"] or "",
                      "yes" if d["passed"] else "no", d["reason"] or "")
    Console().print(table)
