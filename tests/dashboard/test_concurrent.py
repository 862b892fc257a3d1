"""The dashboard keeps working while another process writes to the same DuckDB file, and never blocks it."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from streamlit.testing.v1 import AppTest

from mixlab.dashboard import queries, sample_data
from mixlab.store import MetricRecord, RunRecord, Store

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
RENDERS = 3


def _writer(path: str, started, stop, errors, written) -> None:
    """A training+eval process: short transactions (run row, curves, metrics, samples) until told to stop."""
    try:
        store = Store(path)
        started.set()
        i = 0
        while not stop.is_set() or i < 3:
            run_id = f"live-{i:03d}"
            store.create_run(RunRecord(run_id=run_id, stage="sft", rung="r0", mixture_family="live", status="running"))
            store.log_train_metrics(run_id, 10, {"loss": 2.0 / (i + 1), "lr": 1e-3})
            store.record_metrics([
                MetricRecord(f"e-{i}", run_id, "proc-math", "exact_match", "leaderboard", 100, 0.3, 0.2, 0.4, "wilson"),
                MetricRecord(f"e-{i}", run_id, "proc-chat", "constraint_satisfied", "usability", 100, 0.6, 0.5, 0.7,
                             "wilson"),
            ])
            store.insert("eval_samples", [{"eval_id": f"e-{i}", "run_id": run_id, "task": "proc-math",
                                           "item_id": f"proc-math/{k}", "prompt": "1+1?", "output": "2", "score": 1.0,
                                           "passed": True} for k in range(20)])
            store.update_run(run_id, status="completed")
            i += 1
        written.value = i
    except BaseException as exc:  # reported to the test, which fails
        errors.put(repr(exc))


def test_dashboard_reads_while_a_process_writes(tmp_path, monkeypatch):
    db = tmp_path / "live.duckdb"
    sample_data.build(db, n_runs=10, samples_per_task=4, train_points=10, expert_snapshots=2)
    base_runs = len(queries.runs(db))
    monkeypatch.setenv("MIXLAB_DB", str(db))

    ctx = mp.get_context("spawn")
    started, stop, errors, written = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Value("i", 0)
    writer = ctx.Process(target=_writer, args=(str(db), started, stop, errors, written))
    writer.start()
    assert started.wait(60)
    seen = []
    views = ["Trade-off", "Leaderboard", "Run detail", "Mixtures", "Contamination"]
    for renders in range(RENDERS):
        assert writer.is_alive(), errors.get() if not errors.empty() else "writer died"
        seen.append(len(queries.runs(db)))
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        view = views[renders % len(views)]
        if view != "Trade-off":
            at.sidebar.radio(key="view").set_value(view).run()
        assert not at.exception, at.exception
        assert not at.warning, [w.value for w in at.warning]  # no "database busy" page
    stop.set()
    writer.join(120)
    assert errors.empty(), errors.get()
    assert writer.exitcode == 0
    assert seen == sorted(seen)  # the reader saw the runs grow, never a torn or shrinking state
    assert seen[-1] > seen[0], "the writer made no progress while the dashboard was reading"
    n_written = written.value

    # After the writer is done, the next render shows everything it wrote (the cache follows the file's stamp).
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert f"{base_runs + n_written} runs" in at.sidebar.caption[0].value
    assert len(queries.runs(db)) == base_runs + n_written
