"""A reader that holds the DuckDB file for as long as it likes never makes a writer lose a row.

Writers wait a bounded time (`MIXLAB_DB_WRITE_WAIT_S`) for the file, then spool their transaction to
`<db>.spool/`; every read sees spooled rows through an overlay; the next writer that gets the file lands them,
exactly once, in order. Processes here are real: writer and holder children started with `python -P`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from mixlab import procs
from mixlab.dashboard import queries
from mixlab.errors import MixlabError
from mixlab.store import RunRecord, Store

from tests.recipes.helpers import EVAL, SFT_ARGS, write_recipe

WORKER = str(Path(__file__).with_name("store_worker.py"))
APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
N_WRITERS, RUNS, STEPS, SAMPLES = 3, 2, 4, 3


def _hold(db: Path, stop: Path) -> subprocess.Popen:
    holder = procs.popen([WORKER, "hold", str(db), str(stop)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _writers(db: Path, wait_s: str, steps: int = STEPS) -> list[subprocess.Popen]:
    env = procs.env(MIXLAB_DB_WRITE_WAIT_S=wait_s)
    return [procs.popen([WORKER, "writer", str(db), str(i), str(RUNS), str(steps), str(SAMPLES)], env_base=env)
            for i in range(N_WRITERS)]


def _counts(store: Store) -> dict[str, int]:
    return store.query(
        "SELECT (SELECT count(*) FROM runs WHERE status = 'completed') AS runs_done, "
        "(SELECT count(*) FROM train_metrics) AS train_metrics, (SELECT count(*) FROM eval_samples) AS samples, "
        "(SELECT count(*) FROM eval_metrics) AS metrics, "
        "(SELECT count(*) FROM eval_runs WHERE status = 'completed') AS evals_done")[0]


def _expected(steps: int = STEPS) -> dict[str, int]:
    n = N_WRITERS * RUNS
    return {"runs_done": n, "train_metrics": n * steps, "samples": n * SAMPLES, "metrics": n, "evals_done": n}


def test_writers_spool_while_a_reader_holds_the_file_and_every_row_lands_once(db_path, tmp_path):
    Store(db_path).schema_version()
    stop = tmp_path / "stop"
    holder = _hold(db_path, stop)
    try:
        writers = _writers(db_path, wait_s="0.2")
        assert [w.wait(timeout=300) for w in writers] == [0] * N_WRITERS  # nobody failed or hung

        reader = Store(db_path, read_only=True)
        spooled = reader.pending_spool()
        assert spooled, "the file was held, so the writes must have been spooled"
        con = duckdb.connect(str(db_path), read_only=True)  # the file itself has none of them yet
        try:
            assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        finally:
            con.close()
        # Every reader (CLI, dashboard) sees them anyway, through the overlay.
        assert _counts(reader) == _expected()
        assert len(queries.runs(db_path)) == N_WRITERS * RUNS
        # A writer that still cannot get the file says so, and keeps the spool.
        with pytest.raises(MixlabError, match="held by another process"):
            Store(db_path).flush(wait_s=0.2)
    finally:
        stop.touch()
        holder.wait(timeout=60)

    store = Store(db_path)
    assert store.flush() == len(spooled)
    assert store.pending_spool() == []
    assert _counts(store) == _expected()  # each row exactly once
    runs = store.query("SELECT run_id, device, git_sha FROM runs ORDER BY run_id")
    assert [r["run_id"] for r in runs] == sorted(f"w{i}-r{r}" for i in range(N_WRITERS) for r in range(RUNS))


def test_holder_released_mid_run_direct_and_spooled_writes_merge_in_order(db_path, tmp_path):
    """Some writes spool, later ones land directly after ingesting the spool: starts come before finishes."""
    Store(db_path).schema_version()
    stop = tmp_path / "stop"
    holder = _hold(db_path, stop)
    writers = _writers(db_path, wait_s="0.2", steps=12)
    try:
        deadline = time.monotonic() + 120
        while not Store(db_path, read_only=True).pending_spool() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Store(db_path, read_only=True).pending_spool(), "no writer spooled while the file was held"
    finally:
        stop.touch()
        holder.wait(timeout=60)
    assert [w.wait(timeout=300) for w in writers] == [0] * N_WRITERS
    store = Store(db_path)
    assert store.pending_spool() == []  # the writers' own later writes (or exit) landed their spool
    assert _counts(store) == _expected(steps=12)
    assert store.query("SELECT count(*) AS n FROM spool_ingested")[0]["n"] > 0


def test_a_spool_file_applied_but_not_yet_deleted_is_not_applied_twice(db_path):
    """A crash between the ingest transaction's commit and the file's unlink leaves the file; it is skipped."""
    store = Store(db_path)
    store.schema_version()
    path = store._spool([{"op": "insert", "table": "train_metrics", "replace": False,
                          "rows": [{"run_id": "r", "step": 1, "name": "loss", "value": 0.5}]}])
    copy = path.with_suffix(".bak")
    shutil.copy(path, copy)
    assert store.flush() == 1
    shutil.move(copy, path)  # as if the process died before unlinking
    assert store.flush() == 0 and store.pending_spool() == []
    assert store.query("SELECT count(*) AS n FROM train_metrics")[0]["n"] == 1


def test_spooled_rows_keep_types(db_path, tmp_path):
    """Timestamps, JSON columns, NULLs and floats survive the JSON spool round trip."""
    Store(db_path).schema_version()
    stop = tmp_path / "stop"
    holder = _hold(db_path, stop)
    try:
        store = Store(db_path, write_wait_s=0.1)
        store.start_run(RunRecord(run_id="r", seed=7, config={"lr": 1e-3}, packages={"a": "1"}, git_sha="g",
                                  device="cpu"))
        store.log_train_metrics("r", 3, {"loss": float("nan"), "lr": 1e-3})
        assert store.pending_spool()
        seen = store.get_run("r")
    finally:
        stop.touch()
        holder.wait(timeout=60)
    store.flush()
    landed = store.get_run("r")
    assert seen == landed
    assert landed["seed"] == 7 and landed["config"] == '{"lr": 0.001}' and landed["error"] is None
    assert landed["created_at"].year >= 2026
    assert store.last_train_metric("r", "lr") == (1e-3, 3)


@pytest.mark.slow
def test_dashboard_session_open_during_a_sweep_held_by_a_reader(db_path, tmp_path, monkeypatch):
    """A real two-member sweep runs while another reader holds the file and the dashboard renders: the dashboard
    shows the sweep's runs as they finish, and once the file is free every row is in it."""
    Store(db_path).schema_version()
    write_recipe(tmp_path, "base", [{"name": "sft", "trainer": "sft", "mixture": "demo-balanced",
                                     "args": {**SFT_ARGS, "max_steps": 2}}], eval=EVAL)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "held", "recipe": "base.yaml", "parallel": 2,
                                     "mixtures": ["demo-math-heavy", "demo-chat-heavy"]}))
    stop = tmp_path / "stop"
    holder = _hold(db_path, stop)
    monkeypatch.setenv("MIXLAB_DB", str(db_path))
    env = procs.env(MIXLAB_DB_WRITE_WAIT_S="1")
    proc = procs.popen(procs.mixlab_args("sweep", str(sweep)), env_base=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    renders = 0
    try:
        while proc.poll() is None or renders < 2:
            at = AppTest.from_file(APP, default_timeout=120)
            at.run()
            assert not at.exception, at.exception
            renders += 1
        out = proc.stdout.read()
        assert proc.returncode == 0, out
        store = Store(db_path, read_only=True)
        assert store.pending_spool(), "the held file should have made the sweep spool"
        train = [r for r in store.query("SELECT * FROM runs WHERE kind = 'train'")]
        assert len(train) == 2 and {r["status"] for r in train} == {"completed"}
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        assert not at.exception and "3 runs" in at.sidebar.caption[0].value  # 2 members + the sweep row
    finally:
        stop.touch()
        holder.wait(timeout=60)
        if proc.poll() is None:
            proc.kill()
    store = Store(db_path)
    store.flush()
    assert store.pending_spool() == []
    metrics = store.query("SELECT count(*) AS n FROM eval_metrics e JOIN runs r USING (run_id) WHERE r.kind = 'train'")
    assert metrics[0]["n"] > 0
