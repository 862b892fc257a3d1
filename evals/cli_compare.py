"""`mixlab compare RUN_A RUN_B`: per-metric differences between two runs, paired over items (and seeds)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("compare")(compare)


def _side(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def compare(
    run_a: str = typer.Argument(..., help="Run id, or comma-separated run ids of one configuration's seeds."),
    run_b: str = typer.Argument(..., help="Run id(s) to compare against (the baseline)."),
    task: Optional[list[str]] = typer.Option(None, "--task", "-t", help="Only this task (repeatable)."),
    metric: Optional[list[str]] = typer.Option(None, "--metric", "-m", help="Only this metric (repeatable)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level; intervals are (1 - alpha)."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap replicates."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print A - B for every metric both runs report, with the test used, its interval and p-value.

    0/1 scores of one seed each: McNemar's exact test and Newcombe's paired interval; otherwise a paired bootstrap
    over the shared items (and over seeds when a side lists several runs)."""
    from rich.console import Console
    from rich.table import Table

    from mixlab.errors import MixlabError
    from mixlab.evals.compare import compare_runs
    from mixlab.store import Store

    if not 0 < alpha < 1:
        raise MixlabError(f"--alpha must be in (0, 1), got {alpha}")
    if n_boot < 100:
        raise MixlabError(f"--n-boot must be at least 100, got {n_boot}")
    store = Store(read_only=True)
    if not store.exists():
        raise MixlabError(f"no database at {store.path}")
    rows = compare_runs(store, _side(run_a), _side(run_b), tasks=task or None, metrics=metric or None, alpha=alpha,
                        n_boot=n_boot)
    if not rows:
        raise MixlabError("the runs share no evaluated task and metric with per-item scores")
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    table = Table(title=f"{run_a}  minus  {run_b}")
    for col in ("task", "metric", "A", "B", "A - B", f"{1 - alpha:.0%} CI", "p", "test", "items"):
        table.add_column(col, justify="right" if col in ("A", "B", "A - B", "p", "items") else "left")
    for r in rows:
        c = r.comparison
        mark = " *" if c.significant else ""
        items = f"{c.n_items}" + (f" (-{r.n_dropped})" if r.n_dropped else "")
        table.add_row(r.task, r.metric, f"{c.mean_a:.3f}", f"{c.mean_b:.3f}", f"{c.diff:+.3f}{mark}",
                      f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]", f"{c.p_value:.3g}", c.test, items)
    # A pipe gets the full table rather than one wrapped to 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    typer.echo(f"* p < {alpha}. Items are paired by id; (-k): items not scored in every run, left out.")
