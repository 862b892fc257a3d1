"""The DuckDB store: migrations, typed helpers, bad input, and concurrent writers with a concurrent reader."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from mixlab.errors import MixlabError
from mixlab.store import MIGRATIONS, SCHEMA_VERSION, MetricRecord, RunRecord, Store

N_WRITERS = 4
ROWS_PER_WRITER = 60


def test_migrations_apply_once_and_record_version(db_path):
    store = Store(db_path)
    assert store.schema_version() == SCHEMA_VERSION
    # A second store on the same file does not re-apply anything.
    assert Store(db_path).schema_version() == SCHEMA_VERSION
    rows = store.query("SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in rows] == [v for v, _ in MIGRATIONS]


def test_newer_schema_is_refused(db_path):
    store = Store(db_path)
    store.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    with pytest.raises(MixlabError, match="newer than this mixlab"):
        Store(db_path).schema_version()


def test_run_lifecycle_and_metrics(store):
    store.create_run(RunRecord(run_id="r1", trainer="sft", seed=3, packages={"torch": "2.13"}, config={"lr": 1e-3}))
    store.log_train_metrics("r1", 10, {"loss": 2.5, "lr": 1e-3})
    store.log_expert_load("r1", 10, [(1, 0, 0.6, 0.01), (1, 1, 0.4, -0.01)])
    store.update_run("r1", status="completed", checkpoint_path="/tmp/ckpt")
    store.record_metrics(
        [MetricRecord("e1", "r1", "proc-math", "accuracy", "leaderboard", 300, 0.25, 0.2, 0.3, "wilson")]
    )
    run = store.get_run("r1")
    assert run["status"] == "completed" and run["seed"] == 3 and '"torch": "2.13"' in run["packages"]
    assert {r["name"] for r in store.query("SELECT name FROM train_metrics WHERE run_id='r1'")} == {"loss", "lr"}
    assert store.query("SELECT sum(load) AS s FROM expert_load")[0]["s"] == pytest.approx(1.0)
    assert store.query("SELECT mean FROM eval_metrics")[0]["mean"] == 0.25


def test_insert_rejects_unknown_columns_and_tables(store):
    with pytest.raises(MixlabError, match="unknown column"):
        store.insert("runs", [{"run_id": "x", "no_such_column": 1}])
    with pytest.raises(MixlabError, match="unknown table"):
        store.insert("no_such_table", [{"a": 1}])
    with pytest.raises(MixlabError, match="unknown column"):
        store.update_run("x", bogus=1)


def test_read_only_store_refuses_writes_and_missing_file(tmp_path):
    with pytest.raises(MixlabError, match="make demo"):
        Store(tmp_path / "absent.duckdb", read_only=True).query("SELECT 1")
    Store(tmp_path / "db.duckdb").schema_version()
    ro = Store(tmp_path / "db.duckdb", read_only=True)
    assert ro.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0
    with pytest.raises(MixlabError, match="read-only"):
        ro.insert("runs", [{"run_id": "x"}])


def _writer(path: str, writer_id: int, start, errors) -> None:
    try:
        store = Store(path)
        start.wait()
        store.create_run(RunRecord(run_id=f"w{writer_id}", trainer="sft"))
        for step in range(ROWS_PER_WRITER):
            store.log_train_metrics(f"w{writer_id}", step, {"loss": 1.0 / (step + 1)})
        store.update_run(f"w{writer_id}", status="completed")
    except BaseException as exc:  # reported to the parent, which fails the test
        errors.put(f"writer {writer_id}: {exc!r}")


def _reader(path: str, start, stop, errors, counts) -> None:
    try:
        store = Store(path, read_only=True)
        start.wait()
        while not stop.is_set():
            counts.put(store.query("SELECT count(*) AS n FROM train_metrics")[0]["n"])
            time.sleep(0.01)
    except BaseException as exc:
        errors.put(f"reader: {exc!r}")


def test_four_concurrent_writers_and_a_reader_lose_nothing(db_path):
    Store(db_path).schema_version()  # create the file so the reader can open it read-only
    ctx = mp.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    errors, counts = ctx.Queue(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(str(db_path), start, stop, errors, counts))
    writers = [ctx.Process(target=_writer, args=(str(db_path), i, start, errors)) for i in range(N_WRITERS)]
    for p in [reader, *writers]:
        p.start()
    start.set()
    for p in writers:
        p.join(timeout=240)
    stop.set()
    reader.join(timeout=60)

    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, problems
    assert all(p.exitcode == 0 for p in [reader, *writers])
    seen = []
    while not counts.empty():
        seen.append(counts.get())
    assert seen, "the reader never got a read in while writers were running"
    assert seen == sorted(seen), "reader saw rows disappear"

    store = Store(db_path)
    assert store.query("SELECT count(*) AS n FROM train_metrics")[0]["n"] == N_WRITERS * ROWS_PER_WRITER
    done = store.query("SELECT run_id FROM runs WHERE status = 'completed' ORDER BY run_id")
    assert [r["run_id"] for r in done] == [f"w{i}" for i in range(N_WRITERS)]
