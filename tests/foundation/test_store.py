"""The DuckDB store: migrations, typed writes and reads, bad input, concurrent writers with a concurrent reader.

Spooling while a reader holds the file: test_store_concurrency.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ComponentRecord,
    ContaminationRecord,
    EvalRunRecord,
    JudgementRecord,
    LadderDecision,
    MetricRecord,
    MixtureRecord,
    RunRecord,
    SampleRecord,
    SourceRecord,
    Store,
)

N_WRITERS = 4
RUNS_PER_WRITER = 2
STEPS = 10
WORKER = str(Path(__file__).with_name("store_worker.py"))


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


def test_restart_drops_metrics_after_the_checkpoint_step(store):
    store.create_run(RunRecord(run_id="r"))
    for step in (1, 2, 3):
        store.log_train_metrics("r", step, {"loss": 1.0})
        store.log_expert_load("r", step, [(1, 0, 1.0, None)])
    store.fail_run("r", "killed")
    assert store.get_run("r")["status"] == "failed"
    store.restart_run("r", after_step=2)
    run = store.get_run("r")
    assert run["status"] == "running" and run["error"] is None and run["finished_at"] is None
    assert store.last_train_metric("r") == (1.0, 2)
    assert store.query("SELECT max(step) AS s FROM expert_load")[0]["s"] == 2
    store.set_checkpoint("r", "/ckpt")
    store.finish_run("r")
    assert store.get_run("r")["status"] == "completed" and store.get_run("r")["checkpoint_path"] == "/ckpt"


def test_eval_lifecycle_replaces_samples_and_metrics(store):
    store.start_run(RunRecord(run_id="r", git_sha="g", packages={"x": "1"}, device="cpu"))
    store.start_eval(EvalRunRecord(eval_id="e", run_id="r", checkpoint="/c", task="t", gen_config={"n": 1}))
    store.record_eval_samples("e", [SampleRecord("e", "r", "t", f"i{k}", output="old", extra={"scores": {}})
                                    for k in range(3)])
    store.record_eval_samples("e", [SampleRecord("e", "r", "t", "i1", output="new")])  # a re-scored item
    assert sorted((r["item_id"], r["output"]) for r in store.eval_samples("e")) == [
        ("i0", "old"), ("i1", "new"), ("i2", "old")]
    metric = MetricRecord("e", "r", "t", "acc", "leaderboard", 3, 0.5, 0.1, 0.9, "wilson")
    store.finish_eval("e", [metric], n_samples=3)
    store.finish_eval("e", [metric], n_samples=3)  # a re-run replaces, never duplicates
    assert store.run_metrics("r") == [{"task": "t", "metric": "acc", "n": 3, "mean": 0.5, "ci_low": 0.1,
                                       "ci_high": 0.9}]
    assert store.metric_mean("r", "t", "acc") == 0.5 and store.metric_mean("r", "t", "nope") is None
    assert store.peer_samples("t", None, exclude_eval_id="other")[0]["eval_id"] == "e"
    assert store.peer_samples("t", None, exclude_eval_id="e") == []
    store.start_eval(EvalRunRecord(eval_id="e", run_id="r", checkpoint="/c", task="t"), keep_samples=False)
    assert store.eval_samples("e") == []
    store.fail_eval("e", "judge down", 0)
    assert store.query("SELECT status, error FROM eval_runs")[0] == {"status": "failed", "error": "judge down"}


def test_mixture_ladder_judgements_and_run_lookups(store):
    record = MixtureRecord("m1", name="mix", family="math-heavy", manifest={"n_rows": 2})
    comps = [ComponentRecord("m1", "s1", realised_share=1.0)]
    flags = [ContaminationRecord("m1", "s1", "row", "gsm8k", "item", "a b c", "content")]
    store.record_mixture(record, [SourceRecord("s1", name="src")], comps, flags)
    store.record_mixture(record, [SourceRecord("s1", name="src")], comps, flags)  # rebuild: replaced, not doubled
    assert store.has_mixture("m1") and not store.has_mixture("m2")
    assert store.query("SELECT (SELECT count(*) FROM mixture_components) AS c, (SELECT count(*) FROM contamination)"
                       " AS f, (SELECT count(*) FROM mixtures) AS m")[0] == {"c": 1, "f": 1, "m": 1}

    store.record_ladder_decision(LadderDecision("L", "r0", "mix", "run", None, [{"task": "t"}], True, "ok"))
    assert [d["reason"] for d in store.ladder_decisions("L")] == ["ok"]

    j = JudgementRecord("k1", "judge", "tpl", "p", "a", "7", 7.0, "fine", "raw text")
    store.put_judgements([j])
    store.put_judgements([j])
    assert store.get_judgements(["k1", "k2", "k1"]) == {"k1": j}

    for i, (sweep, mix) in enumerate([("s", "b"), ("s", "a"), ("t", "a")]):
        store.create_run(RunRecord(run_id=f"r{i}", sweep_id=sweep, mixture_name=mix, checkpoint_path="/ck",
                                   config={"invocation": "inv"}))
        store.log_train_metrics(f"r{i}", 5, {"loss": float(i)})
    store.create_run(RunRecord(run_id="ev", kind="eval", checkpoint_path="/ck"))
    assert store.sweep_train_runs("s") == ["r0", "r1"]
    assert store.sweep_train_runs("s", by_mixture=True) == ["r1", "r0"]
    assert store.run_for_checkpoint("/ck") == "r2" and store.run_for_checkpoint("/none") is None
    assert [r["run_id"] for r in store.runs_of_invocation("inv")] == ["r0", "r1", "r2"]
    assert set(store.get_runs(["r0", "r2", "zz"])) == {"r0", "r2"}
    assert store.final_losses(["r1"]) == {"r1": {"loss": 1.0, "steps": 5}}


def test_four_concurrent_writers_and_a_reader_lose_nothing(db_path, tmp_path):
    """Writers contend for the lock (short transactions, retry); a reader polls all along. Nothing is lost."""
    Store(db_path).schema_version()  # create the file so the reader can open it read-only
    stop, counts_file = tmp_path / "stop", tmp_path / "counts"
    reader = procs.popen([WORKER, "reader", str(db_path), str(stop), str(counts_file)])
    writers = [procs.popen([WORKER, "writer", str(db_path), str(i), str(RUNS_PER_WRITER), str(STEPS), "5"])
               for i in range(N_WRITERS)]
    try:
        assert [w.wait(timeout=300) for w in writers] == [0] * N_WRITERS
    finally:
        stop.touch()
        assert reader.wait(timeout=120) == 0
    seen = [int(n) for n in counts_file.read_text().split()]
    assert seen, "the reader never got a read in while writers were running"
    assert seen == sorted(seen), "reader saw rows disappear"

    store = Store(db_path)
    assert store.pending_spool() == []  # nobody held the file long: every write landed directly
    assert store.query("SELECT count(*) AS n FROM train_metrics")[0]["n"] == N_WRITERS * RUNS_PER_WRITER * STEPS
    done = store.query("SELECT run_id FROM runs WHERE status = 'completed' ORDER BY run_id")
    assert [r["run_id"] for r in done] == [f"w{i}-r{r}" for i in range(N_WRITERS) for r in range(RUNS_PER_WRITER)]
