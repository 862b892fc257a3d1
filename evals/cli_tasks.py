"""`mixlab eval list` and `mixlab eval check TASK`: what tasks exist, and proof that their scorers are right."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    eval_app.command("list")(list_tasks)
    eval_app.command("check")(check)


def _status(task, data_root: Path | None) -> tuple[str, str]:
    """(data available?, reference solutions for `eval check`?) from loading one item."""
    from mixlab.errors import MixlabError

    try:
        items = task.load(data_root, limit=1)
    except MixlabError:
        return "missing", "?"
    except Exception as exc:  # noqa: BLE001 - a broken loader is reported, not fatal for the listing
        return f"error: {type(exc).__name__}", "?"
    if not items:
        return "empty", "?"
    try:
        task.reference_output(items[0])
    except MixlabError:
        return "yes", "no"
    except Exception:  # noqa: BLE001
        return "yes", "error"
    return "yes", "yes"


def list_tasks(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Benchmark data root (default: MIXLAB_DATA "
                                             "or ../shared/data)."),
) -> None:
    """List evaluation tasks: category, metrics, whether their data is available here, and whether
    `mixlab eval check` can verify their scorer (the task ships reference solutions)."""
    from mixlab.evals.suites import SUITES
    from mixlab.evals.tasks.base import get_task, task_names
    from mixlab.paths import data_root as default_data_root

    root = data_root or default_data_root()
    rows = []
    for name in task_names():
        task = get_task(name)
        data, checkable = _status(task, root)
        rows.append({
            "task": name,
            "category": task.category,
            "metrics": list(task.metrics),
            "data": data,
            "references": checkable,  # can `mixlab eval check` run it?
            "description": task.description,
        })
    suites = {name: list(tasks) for name, tasks in SUITES.items()}
    if as_json:
        typer.echo(json.dumps({"data_root": str(root) if root else None, "tasks": rows, "suites": suites}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mixlab eval tasks (data root: {root or 'none; hub names'})")
    for column in ("task", "category", "metrics", "data", "check", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        data = row["data"]
        style = "green" if data == "yes" else "red"
        table.add_row(row["task"], row["category"], ", ".join(row["metrics"]), f"[{style}]{data}[/{style}]",
                      row["references"], row["description"])
    console = Console()
    console.print(table)
    registered = set(task_names())
    for name, tasks in suites.items():
        marked = [t if t in registered else f"{t} (missing)" for t in tasks]
        console.print(f"suite [bold]{name}[/bold]: {', '.join(marked)}")
    console.print("suite [bold]all[/bold]: every task above")


def check(
    task: str = typer.Argument(..., help="Task name (see `mixlab eval list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Check only the first N items."),
    shuffle: bool = typer.Option(False, "--shuffle", help="Give each item another item's reference (expect ~0)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffle."),
    workers: int = typer.Option(4, "--workers", help="Items scored concurrently (code tasks run subprocesses)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Benchmark data root."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Exit 1 if the primary score is below."),
    max_score: Optional[float] = typer.Option(None, "--max-score", help="Exit 1 if the primary score is above."),
) -> None:
    """Feed TASK's own reference solutions through its scorer and print the score (≥ 0.99 expected;
    with --shuffle, near 0)."""
    from mixlab.evals.check import check_task
    from mixlab.evals.tasks.base import get_task

    task_obj = get_task(task)
    if as_json:
        result = check_task(task_obj, data_root=data_root, limit=limit, shuffle=shuffle, seed=seed, workers=workers)
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        console = Console()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            handle = bar.add_task(f"check {task}{' (shuffled)' if shuffle else ''}", total=None)
            result = check_task(task_obj, data_root=data_root, limit=limit, shuffle=shuffle, seed=seed,
                                workers=workers, progress=lambda k: bar.advance(handle, k))
        mode = "references shuffled across items (expect ~0)" if shuffle else "own references (expect >= 0.99)"
        table = Table(title=f"eval check {result.task}: {mode}, n={result.n}")
        for column in ("metric", "score", "95% CI", "method"):
            table.add_column(column)
        for name, summary in result.metrics.items():
            table.add_row(name + (" *" if name == result.primary_metric else ""), f"{summary.mean:.4f}",
                          f"[{summary.low:.4f}, {summary.high:.4f}]", summary.method)
        console.print(table)
        if result.identical_gold_pairs is not None:
            console.print(f"items whose donor has the same gold answer (a legitimate match): "
                          f"{result.identical_gold_pairs}/{result.n}")
        if result.failures:
            label = "scored > 0 though shuffled" if shuffle else "not scored 1"
            console.print(f"first items {label}:")
            for row in result.failures:
                primary = row["score"].get(result.primary_metric)
                console.print(f"  {row['item_id']}: {result.primary_metric}={primary} "
                              f"{json.dumps(row['details'])[:200]}")
    if min_score is not None and result.primary < min_score:
        sys.exit(1)  # (typer.Exit codes are dropped by mixlab.cli.main in non-standalone mode)
    if max_score is not None and result.primary > max_score:
        sys.exit(1)  # (typer.Exit codes are dropped by mixlab.cli.main in non-standalone mode)
