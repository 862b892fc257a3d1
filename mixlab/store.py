"""The DuckDB store: one database file shared by training, eval and sweep processes and the dashboard.

Concurrency design. DuckDB allows one read-write process per file and no read-only open while a writer holds
it. mixlab therefore never keeps a connection open: every write is a short open → transaction → close, and every
open retries with jittered exponential backoff while another process holds the file lock. Writers hold the lock
for milliseconds, so a reader (the dashboard) or another writer gets in within a few retries. Within one process a
lock serialises threads, because DuckDB shares one database instance per file per process.

Schema. Versioned migrations in `MIGRATIONS`, applied in order by the first read-write open; later features add a
new entry at the end (never edit an applied one). `schema_version` records what ran.
"""

from __future__ import annotations

import json
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import duckdb

from mixlab.errors import MixlabError
from mixlab.paths import default_db_path

# ---------------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------------

_V1 = [
    """CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        name VARCHAR,
        kind VARCHAR,              -- train | eval | sweep | ladder
        trainer VARCHAR,           -- sft | grpo | dpo | pretrain | NULL
        stage VARCHAR,             -- recipe stage name (e.g. base, sft, grpo)
        recipe_name VARCHAR,
        recipe_yaml VARCHAR,
        mixture_id VARCHAR,
        mixture_name VARCHAR,
        mixture_family VARCHAR,    -- e.g. math-heavy, chat-heavy; colours the dashboard
        base_model VARCHAR,
        preset VARCHAR,
        rung VARCHAR,
        seed INTEGER,
        git_sha VARCHAR,
        packages VARCHAR,          -- JSON {package: version}
        device VARCHAR,
        status VARCHAR,            -- pending | running | completed | failed
        error VARCHAR,
        parent_run_id VARCHAR,
        sweep_id VARCHAR,
        checkpoint_path VARCHAR,
        config VARCHAR,            -- JSON, anything else needed to reproduce
        created_at TIMESTAMP,
        updated_at TIMESTAMP,
        finished_at TIMESTAMP
    )""",
    """CREATE TABLE train_metrics (
        run_id VARCHAR, step INTEGER, name VARCHAR, value DOUBLE, ts TIMESTAMP
    )""",
    """CREATE TABLE expert_load (
        run_id VARCHAR, step INTEGER, layer INTEGER, expert INTEGER, load DOUBLE, bias DOUBLE
    )""",
    """CREATE TABLE sources (
        source_id VARCHAR PRIMARY KEY, name VARCHAR, kind VARCHAR, uri VARCHAR, revision VARCHAR,
        adapter VARCHAR, n_rows BIGINT, content_hash VARCHAR, created_at TIMESTAMP
    )""",
    """CREATE TABLE mixtures (
        mixture_id VARCHAR PRIMARY KEY, name VARCHAR, kind VARCHAR, family VARCHAR, yaml VARCHAR,
        artifact_path VARCHAR, manifest VARCHAR, n_rows BIGINT, n_tokens BIGINT, seed INTEGER, created_at TIMESTAMP
    )""",
    """CREATE TABLE mixture_components (
        mixture_id VARCHAR, source_id VARCHAR, source_name VARCHAR, group_path VARCHAR, phase VARCHAR,
        target_share DOUBLE, realised_share DOUBLE, target_rows BIGINT, realised_rows BIGINT,
        tokens BIGINT, trainable_tokens BIGINT, epochs DOUBLE,
        dropped_filter BIGINT, dropped_dedup BIGINT, dropped_contamination BIGINT
    )""",
    """CREATE TABLE contamination (
        mixture_id VARCHAR, source_id VARCHAR, row_id VARCHAR, benchmark VARCHAR, item_id VARCHAR,
        ngram VARCHAR, field VARCHAR
    )""",
    """CREATE TABLE eval_runs (
        eval_id VARCHAR PRIMARY KEY, run_id VARCHAR, checkpoint VARCHAR, task VARCHAR, suite VARCHAR,
        backend VARCHAR, gen_config VARCHAR, judge VARCHAR, status VARCHAR, error VARCHAR,
        n_samples INTEGER, created_at TIMESTAMP, finished_at TIMESTAMP
    )""",
    """CREATE TABLE eval_metrics (
        eval_id VARCHAR, run_id VARCHAR, task VARCHAR, metric VARCHAR,
        category VARCHAR,          -- leaderboard | usability | other
        n INTEGER, mean DOUBLE, ci_low DOUBLE, ci_high DOUBLE, ci_method VARCHAR, created_at TIMESTAMP
    )""",
    """CREATE TABLE eval_samples (
        eval_id VARCHAR, run_id VARCHAR, task VARCHAR, item_id VARCHAR, prompt VARCHAR, output VARCHAR,
        reference VARCHAR, score DOUBLE, passed BOOLEAN, judge_rationale VARCHAR,
        prompt_tokens INTEGER, output_tokens INTEGER, extra VARCHAR
    )""",
    """CREATE TABLE judgements (
        cache_key VARCHAR PRIMARY KEY, judge VARCHAR, template VARCHAR, prompt_hash VARCHAR, answer_hash VARCHAR,
        verdict VARCHAR, score DOUBLE, rationale VARCHAR, raw VARCHAR, created_at TIMESTAMP
    )""",
    """CREATE TABLE ladder_decisions (
        ladder_id VARCHAR, rung VARCHAR, mixture_name VARCHAR, run_id VARCHAR, baseline_run_id VARCHAR,
        gates VARCHAR, passed BOOLEAN, reason VARCHAR, decided_at TIMESTAMP
    )""",
    "CREATE INDEX train_metrics_run ON train_metrics(run_id)",
    "CREATE INDEX eval_metrics_run ON eval_metrics(run_id)",
    "CREATE INDEX eval_samples_eval ON eval_samples(eval_id)",
]

# (version, statements). Append new versions; never edit an applied one.
MIGRATIONS: list[tuple[int, list[str]]] = [(1, _V1)]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_JSON_COLUMNS = {"packages", "config", "manifest", "gen_config", "gates", "extra"}

# ---------------------------------------------------------------------------------------------------------------
# Typed records for the tables every feature writes
# ---------------------------------------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class RunRecord:
    run_id: str
    kind: str = "train"
    name: str | None = None
    trainer: str | None = None
    stage: str | None = None
    recipe_name: str | None = None
    recipe_yaml: str | None = None
    mixture_id: str | None = None
    mixture_name: str | None = None
    mixture_family: str | None = None
    base_model: str | None = None
    preset: str | None = None
    rung: str | None = None
    seed: int | None = None
    git_sha: str | None = None
    packages: dict[str, str] | None = None
    device: str | None = None
    status: str = "running"
    error: str | None = None
    parent_run_id: str | None = None
    sweep_id: str | None = None
    checkpoint_path: str | None = None
    config: dict[str, Any] | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None


@dataclass
class MetricRecord:
    """One aggregate eval metric with its 95 % confidence interval."""

    eval_id: str
    run_id: str | None
    task: str
    metric: str
    category: str  # leaderboard | usability | other
    n: int
    mean: float
    ci_low: float
    ci_high: float
    ci_method: str  # wilson | bootstrap | ...
    created_at: datetime = field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------------------------

_PROCESS_LOCK = threading.RLock()


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


class Store:
    """Short-lived connections with retry; see the module docstring for why."""

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False, lock_timeout_s: float = 120.0):
        self.path = Path(path) if path is not None else default_db_path()
        self.read_only = read_only
        self.lock_timeout_s = lock_timeout_s
        self._migrated = False

    # -- connections ------------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.is_file()

    @contextmanager
    def connect(self, *, write: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open, yield, close. Retries while another process holds the file lock."""
        if write and self.read_only:
            raise MixlabError(f"store {self.path} was opened read-only; refusing to write")
        read_only = self.read_only
        if read_only and not self.exists():
            raise MixlabError(f"no mixlab database at {self.path} (run `make demo` to produce one)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.005
        with _PROCESS_LOCK:
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=read_only)
                    break
                except (duckdb.IOException, duckdb.ConnectionException) as exc:
                    if not _is_lock_error(exc) or time.monotonic() > deadline:
                        raise MixlabError(f"cannot open {self.path}: {exc}") from exc
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.25)
            try:
                if not read_only and not self._migrated:
                    self._migrate(con)
                yield con
            finally:
                con.close()

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)")
        current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise MixlabError(
                f"{self.path} has schema v{current}, newer than this mixlab (v{SCHEMA_VERSION}); upgrade mixlab"
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            con.execute("BEGIN TRANSACTION")
            try:
                for sql in statements:
                    con.execute(sql)
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, utcnow()])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        self._migrated = True

    def schema_version(self) -> int:
        with self.connect(write=not self.read_only) as con:
            return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]

    # -- generic helpers --------------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self.connect() as con:
            con.execute(sql, params or [])

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        with self.connect(write=not self.read_only) as con:
            cur = con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def query_df(self, sql: str, params: Sequence[Any] | None = None):
        """The same as `query`, as a pandas DataFrame (the dashboard's form)."""
        with self.connect(write=not self.read_only) as con:
            return con.execute(sql, params or []).df()

    def columns(self, table: str) -> list[str]:
        with self.connect(write=not self.read_only) as con:
            rows = con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
        if not rows:
            raise MixlabError(f"unknown table {table!r} in {self.path}")
        return [r[0] for r in rows]

    def insert(self, table: str, rows: Iterable[Mapping[str, Any]], *, replace: bool = False) -> int:
        """Insert dict rows in one transaction; unknown columns are an error, missing ones are NULL.

        `replace=True` upserts on the table's primary key (INSERT OR REPLACE).
        """
        rows = [dict(r) for r in rows]
        if not rows:
            return 0
        known = self.columns(table)
        given = sorted({k for r in rows for k in r})
        unknown = [c for c in given if c not in known]
        if unknown:
            raise MixlabError(f"table {table}: unknown column(s) {unknown}; known: {known}")
        cols = [c for c in known if c in given]
        data = {c: [_encode(c, r.get(c)) for r in rows] for c in cols}
        import pyarrow as pa

        arrow = pa.table(data)
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        col_list = ", ".join(f'"{c}"' for c in cols)
        with self.connect() as con:
            con.register("_mixlab_rows", arrow)
            try:
                con.execute(f"{verb} INTO {table} ({col_list}) SELECT {col_list} FROM _mixlab_rows")
            finally:
                con.unregister("_mixlab_rows")
        return len(rows)

    # -- typed helpers ----------------------------------------------------------------------------------------

    def create_run(self, run: RunRecord) -> None:
        self.insert("runs", [asdict(run)], replace=True)

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set some columns of a run (status, error, checkpoint_path, finished_at, ...)."""
        if not fields:
            return
        fields["updated_at"] = utcnow()
        known = set(self.columns("runs"))
        unknown = sorted(set(fields) - known)
        if unknown:
            raise MixlabError(f"table runs: unknown column(s) {unknown}")
        assignments = ", ".join(f'"{k}" = ?' for k in fields)
        values = [_encode(k, v) for k, v in fields.items()]
        self.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", values + [run_id])

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def log_train_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        now = utcnow()
        self.insert(
            "train_metrics",
            [{"run_id": run_id, "step": step, "name": k, "value": float(v), "ts": now} for k, v in metrics.items()],
        )

    def log_expert_load(
        self, run_id: str, step: int, loads: Iterable[tuple[int, int, float, float | None]]
    ) -> None:
        """`loads`: (layer, expert, load fraction, router bias) tuples."""
        self.insert(
            "expert_load",
            [
                {"run_id": run_id, "step": step, "layer": l, "expert": e, "load": float(x), "bias": b}
                for l, e, x, b in loads
            ],
        )

    def record_metrics(self, metrics: Iterable[MetricRecord]) -> None:
        self.insert("eval_metrics", [asdict(m) for m in metrics])


def _encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS and value is not None and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, default=str)
    return value
