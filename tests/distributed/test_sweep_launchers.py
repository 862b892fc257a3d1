"""`mixlab sweep --launcher local|ray|slurm`: member jobs write result files, the sweep process ingests them into
the one store (no lost rows), and a failing member is retried, then marked failed (never dropped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixlab.recipes.launchers import init_ray
from mixlab.recipes.sweep import run_sweep
from mixlab.store import Store

from ..recipes.helpers import EVAL, SFT_ARGS, mixlab, write_recipe


def _sweep(tmp_path: Path, mixtures: list[str], **overrides) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_recipe(tmp_path, "base", [{"name": "sft", "trainer": "sft", "mixture": "demo-balanced",
                                     "args": {**SFT_ARGS, "max_steps": 2}}], eval=EVAL)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "launch", "recipe": "base.yaml", "mixtures": mixtures,
                                    "overrides": overrides}))
    return path


def _check_no_lost_rows(store: Store, outcome: dict) -> list[dict]:
    """Every row of every member's result file is in the main store."""
    folder = Path(store.path).parent / "sweeps" / outcome["sweep_id"] / "results"
    files = sorted(folder.glob("*.duckdb"))
    assert len(files) == len(outcome["members"])
    for f in files:
        member = Store(f)
        for table in ("runs", "train_metrics", "eval_runs", "eval_metrics"):
            ids = [r["run_id"] for r in member.query("SELECT run_id FROM runs")]
            n_member = member.query(f"SELECT count(*) AS n FROM {table} WHERE list_contains(?, run_id)", [ids])[0]["n"]
            n_main = store.query(f"SELECT count(*) AS n FROM {table} WHERE list_contains(?, run_id)", [ids])[0]["n"]
            assert n_member == n_main > 0 or (n_member == n_main == 0 and table.startswith("eval")), (f, table)
    return store.query("SELECT * FROM runs WHERE sweep_id = ? AND kind = 'train' ORDER BY mixture_name",
                       [outcome["sweep_id"]])


@pytest.mark.slow  # three sweeps' worth of training: `make test-all`
def test_local_launcher_ingests_every_row_and_a_failing_member_is_retried_then_marked(tmp_path, store):
    outcome = run_sweep(_sweep(tmp_path, ["demo-math-heavy", "demo-chat-heavy"]), store=store, progress=False,
                        launcher="local", parallel=2)
    assert not outcome["failures"], outcome["failures"]
    train = _check_no_lost_rows(store, outcome)
    assert [r["mixture_name"] for r in train] == ["demo-chat-heavy", "demo-math-heavy"]
    assert {r["status"] for r in train} == {"completed"}
    sweep_row = store.get_run(outcome["sweep_id"])
    assert sweep_row["status"] == "completed" and json.loads(sweep_row["config"])["launcher"] == "local"

    # A member that fails at run time (its eval backend is not installed): tried twice, then a failed row.
    bad = _sweep(tmp_path / "bad", ["demo-math-heavy"], eval={"backend": "vllm"})
    outcome = run_sweep(bad, store=store, progress=False, launcher="local", retries=1)
    (member,) = outcome["members"]
    assert "failed after 2 tries" in outcome["failures"][member]
    log = (Path(store.path).parent / "sweeps" / outcome["sweep_id"] / f"{member}.log").read_text()
    assert "try 1:" in log and "try 2: mixlab run --resume" in log
    rows = store.query("SELECT * FROM runs WHERE sweep_id = ? AND kind = 'train'", [outcome["sweep_id"]])
    assert len(rows) == 1 and rows[0]["status"] == "failed" and "vllm" in rows[0]["error"].lower()
    assert store.get_run(outcome["sweep_id"])["error"]


def test_cli_launcher_name_is_checked(tmp_path):
    done = mixlab("sweep", str(_sweep(tmp_path, ["demo-math-heavy"])), "--launcher", "kubernetes")
    assert done.returncode == 2 and "kubernetes" in done.stderr and done.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_ray_launcher_on_a_local_ray_cluster(tmp_path, store):
    ray = pytest.importorskip("ray")
    init_ray(tmp_path / "ray", num_cpus=2)  # a real local cluster, started here
    try:
        outcome = run_sweep(_sweep(tmp_path, ["demo-math-heavy", "demo-chat-heavy"]), store=store, progress=False,
                            launcher="ray", parallel=2)
    finally:
        ray.shutdown()
    assert not outcome["failures"], outcome["failures"]
    assert {r["status"] for r in _check_no_lost_rows(store, outcome)} == {"completed"}


@pytest.mark.slow
def test_slurm_launcher_through_submitit_local_executor(tmp_path, store, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("MIXLAB_SLURM_CLUSTER", "local")
    outcome = run_sweep(_sweep(tmp_path, ["demo-math-heavy"]), store=store, progress=False, launcher="slurm")
    assert not outcome["failures"], outcome["failures"]
    assert {r["status"] for r in _check_no_lost_rows(store, outcome)} == {"completed"}
