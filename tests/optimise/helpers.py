"""A mixture family written straight into a real DuckDB file (no training): runs of demo-balanced variants whose
metrics follow a known function of the shares plus binomial noise, so the surrogates' answers can be checked."""

from __future__ import annotations

import hashlib

import numpy as np
import yaml

from mixlab.evals.stats import wilson_ci
from mixlab.store import CostRecord, Store

FEATURES = ("chat", "code", "math")  # demo-balanced's components, sorted
RECIPE = {"name": "fam-sft", "seed": 0, "model": {"preset": "tiny"},
          "eval": {"suite": "procedural-l1", "limit": 200},
          "stages": [{"name": "sft", "trainer": "sft", "mixture": "demo-balanced", "args": {"max_steps": 10}}]}


def truth(w: np.ndarray) -> dict[tuple[str, str, str], float]:
    """(task, metric, category) -> expected score for shares w = (chat, code, math): math and code help the
    leaderboard, chat helps usability, with diminishing returns."""
    chat, code, math = w
    return {
        ("proc-math-l1", "accuracy", "leaderboard"): 0.05 + 0.7 * np.sqrt(math),
        ("proc-code-l1", "pass@1", "leaderboard"): 0.05 + 0.5 * np.sqrt(code),
        ("proc-chat-l1", "format_satisfied", "usability"): 0.1 + 0.8 * np.sqrt(chat),
    }


def add_run(store: Store, name: str, w: np.ndarray, *, seed: int = 0, n_items: int = 200, rng=None,
            recipe: dict | None = None, extends: str | None = "demo-balanced", device_s: float | None = 100.0,
            batch: dict[str, list] | None = None) -> str:
    """One finished run of mixture `name` (shares `w`); with `batch`, its rows are collected there for
    `flush` (one transaction per table instead of one per row: the store opens and closes the file per write)."""
    own = batch is None
    batch = {} if own else batch
    put = lambda table, rows: batch.setdefault(table, []).extend(rows)  # noqa: E731
    rng = rng or np.random.default_rng(abs(hash((name, seed))) % 2**32)
    mixture_id = f"{name}-{hashlib.sha256(str(w.tolist()).encode()).hexdigest()[:8]}"
    run_id = f"{name}-s{seed}-sft"
    put("mixtures", [{"mixture_id": mixture_id, "name": name, "kind": "sft",
                      "manifest": {"name": name, "extends": extends}}])
    put("mixture_components", [{"mixture_id": mixture_id, "source_id": f"src-{f}", "source_name": f,
                                         "group_path": f, "target_share": float(s)} for f, s in zip(FEATURES, w)])
    data = dict(recipe or RECIPE, name=f"fam-sft-{name}-s{seed}", seed=seed)
    data["stages"] = [dict(data["stages"][0], mixture=name)]
    put("runs", [{"run_id": run_id, "kind": "train", "status": "completed", "stage": "sft",
                           "trainer": "sft", "mixture_id": mixture_id, "mixture_name": name, "seed": seed,
                           "recipe_yaml": yaml.safe_dump(data), "device": "cpu"}])
    rows = []
    for (task, metric, category), p in truth(w).items():
        k = int(rng.binomial(n_items, min(1.0, p)))
        lo, hi = wilson_ci(k, n_items)
        rows.append({"eval_id": f"{run_id}-{task}", "run_id": run_id, "task": task, "metric": metric,
                     "category": category, "n": n_items, "mean": k / n_items, "ci_low": lo, "ci_high": hi,
                     "ci_method": "wilson"})
        rows.append({"eval_id": f"{run_id}-{task}", "run_id": run_id, "task": task, "metric": f"{metric}/level:1",
                     "category": category, "n": n_items, "mean": k / n_items, "ci_low": lo, "ci_high": hi,
                     "ci_method": "wilson"})
    put("eval_metrics", rows)
    if device_s is not None:
        put("run_costs", [CostRecord(run_id, "train", "cpu (test)", 1, device_s * 0.7, device_s * 0.7),
                          CostRecord(run_id, "eval", "cpu (test)", 1, device_s * 0.3, device_s * 0.3)])
    if own:
        flush(store, batch)
    return run_id


def flush(store: Store, batch: dict[str, list]) -> None:
    for table, rows in batch.items():
        store.insert(table, rows, replace=table == "mixtures")


def synthetic_family(store: Store, n: int = 14, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    batch: dict[str, list] = {}
    ids = [add_run(store, f"demo-balanced-dir{seed}-{i}", rng.dirichlet(np.ones(3)), rng=rng, batch=batch)
           for i in range(n)]
    flush(store, batch)
    return ids
