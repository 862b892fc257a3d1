"""`mixlab compare RUN_A RUN_B` over a real DuckDB file, through the installed command."""

from __future__ import annotations

import json

import numpy as np

from mixlab.evals.compare import compare_runs

from ..recipes.helpers import mixlab
from .helpers import add_scored_run


def test_compare_runs_and_cli(store, db_path):
    rng = np.random.default_rng(0)
    base = (rng.random(120) < 0.4).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:20]] = 1.0
    add_scored_run(store, "run-a", "proc-math", better)
    add_scored_run(store, "run-b", "proc-math", base, unscored=[5])
    add_scored_run(store, "run-a", "mt-bench", rng.normal(7, 1, 50), metric="score")
    add_scored_run(store, "run-b", "mt-bench", rng.normal(7, 1, 50), metric="score")
    store.flush()
    rows = {r.task: r for r in compare_runs(store, ["run-a"], ["run-b"])}
    assert set(rows) == {"proc-math", "mt-bench"}
    math_row = rows["proc-math"]
    assert math_row.comparison.test == "McNemar exact" and math_row.comparison.significant
    assert math_row.comparison.n_items == 119 and math_row.n_dropped == 1
    assert rows["mt-bench"].comparison.test == "paired bootstrap"

    out = mixlab("compare", "run-a", "run-b", "--json")
    assert out.returncode == 0, out.stderr
    data = {r["task"]: r for r in json.loads(out.stdout)}
    assert data["proc-math"]["diff"] == math_row.comparison.diff and data["proc-math"]["significant"]
    table = mixlab("compare", "run-a", "run-b", "--task", "proc-math")
    assert table.returncode == 0 and "McNemar" in table.stdout and "proc-math" in table.stdout

    # Two seeds on side A: the bootstrap resamples seeds as well as items.
    add_scored_run(store, "run-a2", "proc-math", better, seed=1)
    store.flush()
    seeds = json.loads(mixlab("compare", "run-a,run-a2", "run-b", "--json", "--task", "proc-math").stdout)
    assert seeds[0]["test"] == "paired bootstrap over items and seeds" and seeds[0]["n_seeds_a"] == 2

    bad = mixlab("compare", "run-a", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    bad_task = mixlab("compare", "run-a", "run-b", "--task", "gsm8k")
    assert bad_task.returncode == 2 and "gsm8k" in bad_task.stderr
