"""Child processes for the store's multi-process tests, started as `python -P store_worker.py MODE DB ...`.

A script rather than multiprocessing targets: spawned multiprocessing children re-import the test module by name,
which importlib-mode pytest (the repo root off sys.path) does not allow.

    writer DB ID RUNS STEPS SAMPLES   a training+eval process: per run start, metrics, one eval task, finish
    reader DB STOPFILE OUTFILE        counts train_metrics rows (read-only, with retry) until STOPFILE exists
    hold DB STOPFILE                  opens the file read-only and keeps it open until STOPFILE exists
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import duckdb

from mixlab.store import EvalRunRecord, MetricRecord, RunRecord, SampleRecord, Store


def writer(db: str, writer_id: str, runs: int, steps: int, samples: int) -> None:
    store = Store(db)
    for r in range(runs):
        run_id = f"w{writer_id}-r{r}"
        # Provenance given, so the child need not import torch to describe its device.
        store.start_run(RunRecord(run_id=run_id, trainer="sft", stage="sft", seed=r, git_sha="test",
                                  packages={"duckdb": duckdb.__version__}, device="cpu (test)"))
        for step in range(steps):
            store.log_train_metrics(run_id, step, {"loss": 1.0 / (step + 1)})
        eval_id = f"e-{run_id}"
        store.start_eval(EvalRunRecord(eval_id=eval_id, run_id=run_id, checkpoint=f"/ckpt/{run_id}", task="t"))
        store.record_eval_samples(eval_id, [SampleRecord(eval_id, run_id, "t", f"t/{k}", output="x", score=1.0)
                                            for k in range(samples)])
        store.finish_eval(eval_id, [MetricRecord(eval_id, run_id, "t", "acc", "leaderboard", samples, 1.0, 0.9, 1.0,
                                                 "wilson")], n_samples=samples)
        store.finish_run(run_id)


def reader(db: str, stop_file: str, out_file: str) -> None:
    store = Store(db, read_only=True)
    counts = []
    while not Path(stop_file).exists():
        counts.append(store.query("SELECT count(*) AS n FROM train_metrics")[0]["n"])
        time.sleep(0.05)
    Path(out_file).write_text(" ".join(map(str, counts)))


def hold(db: str, stop_file: str) -> None:
    con = duckdb.connect(db, read_only=True)
    con.execute("SELECT count(*) FROM runs").fetchall()
    print("held", flush=True)
    deadline = time.monotonic() + 300
    while not Path(stop_file).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    con.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "writer":
        writer(args[0], args[1], *map(int, args[2:5]))
    elif mode == "reader":
        reader(*args)
    elif mode == "hold":
        hold(*args)
    else:
        sys.exit(f"unknown mode {mode}")
