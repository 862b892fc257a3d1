"""The honest test of issue 15 on the procedural demo family, for real: a shared base of the tiny hybrid, a
Dirichlet sweep over demo-balanced's weights (`mixlab sweep`'s code path), `optimise fit` (leave-one-mixture-out
Spearman rho with its CI per axis), and one `optimise loop` round whose realised points are judged against the
initial sweep. Slow (tens of minutes on a loaded 2-core CPU): `make test-all`.

`run_experiment` is also what produced the numbers in the issue's closing note (MIXLAB_OPTIMISE_REPORT=path.json
writes its summary)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from mixlab.paths import runs_dir
from mixlab.recipes import optimise as opt
from mixlab.recipes.runner import RecipeRunner
from mixlab.recipes.schema import parse_recipe
from mixlab.recipes.sweep import run_sweep
from mixlab.store import Store

ARGS = {"per_device_train_batch_size": 16, "max_length": 128, "lr_scheduler_type": "cosine", "warmup_steps": 5,
        "weight_decay": 0.0, "logging_steps": 10}


def run_experiment(*, samples: int = 8, base_steps: int = 100, steps: int = 80, eval_limit: int = 100,
                   rounds: int = 1, n: int = 2, parallel: int = 2, report: Path | None = None) -> dict:
    store = Store()
    t0 = time.perf_counter()
    base_recipe = {"name": "opt-base", "seed": 0, "model": {"preset": "tiny"},
                   "stages": [{"name": "base", "trainer": "sft", "mixture": "demo-balanced", "packing": False,
                               "args": {**ARGS, "max_steps": base_steps, "learning_rate": 3e-3}}]}
    base = RecipeRunner(parse_recipe(base_recipe), yaml.safe_dump(base_recipe), store=store, progress=False).run()[-1]
    folder = runs_dir() / "opt-experiment"
    folder.mkdir(parents=True, exist_ok=True)
    member = {"name": "opt-sft", "seed": 0, "model": {"run": base.run_id},
              "eval": {"suite": "procedural-l1", "limit": eval_limit, "max_new_tokens": 48, "batch_size": 100},
              "stages": [{"name": "sft", "trainer": "sft", "mixture": "demo-balanced", "packing": False,
                          "args": {**ARGS, "max_steps": steps, "learning_rate": 2e-3}}]}
    (folder / "opt-sft.yaml").write_text(yaml.safe_dump(member, sort_keys=False))
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "opt-initial", "recipe": "opt-sft.yaml", "seeds": [0], "parallel": parallel,
        "dirichlet": {"base": "demo-balanced", "samples": samples, "alpha": 1.0, "seed": 0}}, sort_keys=False))
    sweep = run_sweep(folder / "sweep.yaml", progress=False)
    t_sweep = time.perf_counter()
    summary = fit_and_loop(store, rounds=rounds, n=n, parallel=parallel, report=report)
    summary["config"].update({"samples": samples, "base_steps": base_steps, "steps": steps,
                              "eval_limit": eval_limit, "preset": "tiny"})
    summary["sweep_failures"] = sweep["failures"]
    summary["wall_s"] = {"base_and_sweep": t_sweep - t0, "total": time.perf_counter() - t0}
    if report:
        Path(report).write_text(json.dumps(summary, indent=2, default=float))
    return summary


def fit_and_loop(store: Store, *, rounds: int = 1, n: int = 2, parallel: int = 2, report: Path | None = None) -> dict:
    """`optimise fit` on the family as the sweep left it, then `optimise loop`."""
    t0 = time.perf_counter()
    fit_id, data, fits = opt.fit_family(store, "demo-balanced")
    loop = opt.run_loop(store, "demo-balanced", rounds, n, parallel=parallel, progress=False)
    summary = {
        "config": {"rounds": rounds, "n": n},
        "initial_fit_id": fit_id,
        "initial_fit": {f"{f.target}/{f.model}": {"selected": f.selected, "n_mixtures": f.n_mixtures,
                                                  "loo_rmse": f.loo_rmse, "spearman": list(f.spearman),
                                                  "effects_per_10pt": f.effects} for f in fits},
        "initial_points": dict(zip(loop["initial"]["mixtures"], loop["initial"]["points"])),
        "loop": loop, "wall_s": {"fit_and_loop": time.perf_counter() - t0},
    }
    if report:
        Path(report).write_text(json.dumps(summary, indent=2, default=float))
    return summary


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_optimiser_on_the_procedural_demo_family():
    report = os.environ.get("MIXLAB_OPTIMISE_REPORT")
    out = run_experiment(report=Path(report) if report else None)
    assert not out["sweep_failures"]
    selected = {k.split("/")[0] if k.startswith("axis:") else k: v for k, v in out["initial_fit"].items()
                if v["selected"]}
    # The surrogate ranks held-out mixtures better than chance on at least one axis: rho's 95 % lower bound > 0.
    lows = {k: v["spearman"][1] for k, v in selected.items() if k.startswith("axis:")}
    assert any(lo is not None and lo > 0 for lo in lows.values()), lows
    rounds = out["loop"]["rounds"]
    assert len(rounds) == 1 and all(r["status"] == "completed" for r in rounds[0]["proposals"])
    store = Store()
    assert len(store.rounds(out["loop"]["loop_id"])) == 1
    for row in rounds[0]["proposals"]:
        assert store.run_costs([row["run_id"]])[row["run_id"]]["device_s"] > 0
    # Whether a proposal escaped the initial sweep's dominance is the experiment's result, reported, not assumed:
    # `dominated` / `dominated_by` / `clearly_dominated_by` per proposal are in the summary.
