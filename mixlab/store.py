"""The DuckDB store: one database file shared by training, eval and sweep processes and the dashboard.

The store owns the schema: every write is a typed method here (start/finish/fail a run, training metrics, an eval
task with its samples and metrics, a mixture build, a ladder decision, the judgement cache), and every read other
modules need is one too. SQL lives only in this module and in the dashboard's read-only `dashboard/queries.py`.

Concurrency. DuckDB allows one read-write process per file and no read-only open while a writer holds it.
mixlab never keeps a connection open:
- a write is one short open → transaction → close; while another process holds the file it retries with jittered
  exponential backoff for at most `write_wait_s` (`MIXLAB_DB_WRITE_WAIT_S`, default 30 s);
- if the file is still held then (a reader keeping it open for minutes), the write is spooled instead: its
  operations go, as one JSON file written atomically, to `<db>.spool/` beside the database (under `runs/` by
  default). The next write that gets the file ingests every spooled file first, in order, each in one transaction
  that also records the file's name in `spool_ingested`, so a crash between commit and unlink never applies it
  twice. No row is lost;
- reads open the file read-only (coexisting with other readers) and retry with backoff for `lock_timeout_s`; while
  spooled writes are pending, a read runs over an in-memory overlay (the file attached read-only plus the spooled
  operations replayed), so every process, the dashboard included, sees every row already written;
- every open..close also holds a side flock (`<db>.lock`, exclusive for writers, shared for readers, with a
  turnstile so a busy writer cannot starve readers): DuckDB's own lock alone let processes lose committed
  transactions (see `_side_lock`);
- within one process a lock serialises threads, because DuckDB shares one database instance per file per process.

Schema. Versioned migrations in `MIGRATIONS`, applied in order by the first read-write open; later features add a
new entry at the end (never edit an applied one). `schema_version` records what ran.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import itertools
import json
import os
import random
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import duckdb
import pyarrow as pa

from mixlab import provenance
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

_V2 = ["CREATE TABLE spool_ingested (name VARCHAR PRIMARY KEY, ingested_at TIMESTAMP)"]

# `mixlab optimise`: what each run cost, surrogate fits, proposed mixtures and loop rounds.
_V3 = [
    """CREATE TABLE run_costs (
        run_id VARCHAR, phase VARCHAR,   -- train | eval
        device_kind VARCHAR, n_devices INTEGER, wall_s DOUBLE, device_s DOUBLE, recorded_at TIMESTAMP
    )""",
    """CREATE TABLE surrogate_fits (
        fit_id VARCHAR, family VARCHAR, group_key VARCHAR, model VARCHAR, metric VARCHAR, category VARCHAR,
        features VARCHAR, n_runs INTEGER, n_mixtures INTEGER, loo_rmse DOUBLE, loo_mae DOUBLE,
        spearman DOUBLE, spearman_low DOUBLE, spearman_high DOUBLE, selected BOOLEAN,
        effects VARCHAR,           -- JSON {feature: change of the metric per +10 points of that feature's share}
        params VARCHAR,            -- JSON: model, hyper-parameters and the training data it was fitted on
        run_ids VARCHAR, created_at TIMESTAMP
    )""",
    """CREATE TABLE proposals (
        proposal_id VARCHAR PRIMARY KEY, family VARCHAR, fit_id VARCHAR, loop_id VARCHAR, round INTEGER,
        mixture_name VARCHAR, mixture_path VARCHAR, weights VARCHAR, predicted VARCHAR, objective VARCHAR,
        est_device_s DOUBLE, run_id VARCHAR, status VARCHAR, created_at TIMESTAMP
    )""",
    """CREATE TABLE optimise_rounds (
        loop_id VARCHAR, round INTEGER, family VARCHAR, fit_id VARCHAR, sweep_id VARCHAR, proposal_ids VARCHAR,
        summary VARCHAR, created_at TIMESTAMP
    )""",
    "CREATE INDEX run_costs_run ON run_costs(run_id)",
]

# Decontamination audit rows say which rule fired: exact n-gram overlap or the fuzzy MinHash pass.
_V4 = ["ALTER TABLE contamination ADD COLUMN rule VARCHAR"]

# (version, statements). Append new versions; never edit an applied one.
MIGRATIONS: list[tuple[int, list[str]]] = [(1, _V1), (2, _V2), (3, _V3), (4, _V4)]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_JSON_COLUMNS = {"packages", "config", "manifest", "gen_config", "gates", "extra",
                 "features", "effects", "params", "run_ids", "weights", "predicted", "proposal_ids", "summary"}
_DEFAULT_WRITE_WAIT_S = 30.0


@functools.cache
def _schema() -> dict[str, tuple[str, ...]]:
    """{table: columns in order} of the current schema, from the migrations run in memory (no file needed)."""
    con = duckdb.connect(":memory:")
    try:
        for _, statements in MIGRATIONS:
            for sql in statements:
                con.execute(sql)
        rows = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return {t: tuple(c) for t, c in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# Typed records
# ---------------------------------------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class RunRecord:
    run_id: str
    kind: str = "train"  # train | eval | sweep | ladder
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


@dataclass
class EvalRunRecord:
    """One task evaluated on one checkpoint (the `eval_runs` row)."""

    eval_id: str
    run_id: str | None
    checkpoint: str
    task: str
    suite: str | None = None
    backend: str | None = None
    gen_config: dict[str, Any] | None = None
    judge: str | None = None
    status: str = "running"
    error: str | None = None
    n_samples: int = 0
    created_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None


@dataclass
class SampleRecord:
    """One evaluated item: prompt, output, score and everything needed to recompute metrics (`extra`)."""

    eval_id: str
    run_id: str | None
    task: str
    item_id: str
    prompt: str | None = None
    output: str | None = None
    reference: str | None = None
    score: float | None = None
    passed: bool | None = None
    judge_rationale: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    extra: dict[str, Any] | None = None


@dataclass
class JudgementRecord:
    """A cached judge verdict, keyed by everything that determines it."""

    cache_key: str
    judge: str | None
    template: str | None
    prompt_hash: str | None
    answer_hash: str | None
    verdict: str | None
    score: float | None
    rationale: str | None
    raw: str | None
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class SourceRecord:
    source_id: str
    name: str | None = None
    kind: str | None = None
    uri: str | None = None
    revision: str | None = None
    adapter: str | None = None
    n_rows: int | None = None
    content_hash: str | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class MixtureRecord:
    mixture_id: str
    name: str | None = None
    kind: str | None = None
    family: str | None = None
    yaml: str | None = None
    artifact_path: str | None = None
    manifest: dict[str, Any] | None = None
    n_rows: int | None = None
    n_tokens: int | None = None
    seed: int | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class ComponentRecord:
    """One source (or one phase of a source) in a built mixture."""

    mixture_id: str
    source_id: str
    source_name: str | None = None
    group_path: str | None = None
    phase: str | None = None
    target_share: float | None = None
    realised_share: float | None = None
    target_rows: int | None = None
    realised_rows: int | None = None
    tokens: int | None = None
    trainable_tokens: int | None = None
    epochs: float | None = None
    dropped_filter: int | None = None
    dropped_dedup: int | None = None
    dropped_contamination: int | None = None


@dataclass
class ContaminationRecord:
    mixture_id: str
    source_id: str | None
    row_id: str | None
    benchmark: str | None
    item_id: str | None
    ngram: str | None
    field: str | None
    rule: str | None = None  # "exact-13gram" or "minhash-jaccard>=0.4" (decontam.exact_rule / fuzzy_rule)


@dataclass
class LadderDecision:
    ladder_id: str
    rung: str
    mixture_name: str
    run_id: str
    baseline_run_id: str | None
    gates: list[dict[str, Any]]
    passed: bool
    reason: str
    decided_at: datetime = field(default_factory=utcnow)


@dataclass
class CostRecord:
    """Device time one run spent in one phase (train | eval): wall seconds x devices, and the device kind."""

    run_id: str
    phase: str
    device_kind: str
    n_devices: int
    wall_s: float
    device_s: float
    recorded_at: datetime = field(default_factory=utcnow)


@dataclass
class FitRecord:
    """One surrogate model of one metric over a mixture family's runs, with its leave-one-mixture-out quality."""

    fit_id: str
    family: str
    group_key: str
    model: str  # bayes-linear | bayes-loglinear | gp
    metric: str  # task/metric, or an axis: axis:leaderboard | axis:usability
    category: str | None
    features: list[str]
    n_runs: int
    n_mixtures: int
    loo_rmse: float | None
    loo_mae: float | None
    spearman: float | None
    spearman_low: float | None
    spearman_high: float | None
    selected: bool
    effects: dict[str, float] | None
    params: dict[str, Any]
    run_ids: list[str]
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class ProposalRecord:
    """A mixture `mixlab optimise propose` wrote, what the surrogates predicted for it, and the run that tested it."""

    proposal_id: str
    family: str
    fit_id: str
    mixture_name: str
    mixture_path: str
    weights: dict[str, float]
    predicted: dict[str, Any]  # {metric or axis: {"mean": m, "sd": s}}
    objective: str
    est_device_s: float | None = None
    loop_id: str | None = None
    round: int | None = None
    run_id: str | None = None
    status: str = "proposed"  # proposed | running | completed | failed
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class RoundRecord:
    """One propose -> sweep -> refit round of `mixlab optimise loop`."""

    loop_id: str
    round: int
    family: str
    fit_id: str | None
    sweep_id: str | None
    proposal_ids: list[str]
    summary: dict[str, Any]
    created_at: datetime = field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------------------------------
# Write operations: what a transaction does, in a form that can be spooled to JSON and replayed
# ---------------------------------------------------------------------------------------------------------------
# {"op": "insert", "table": t, "rows": [...], "replace": bool}
# {"op": "delete", "table": t, "where": [[column, operator, value], ...]}
# {"op": "update", "table": t, "set": {column: value}, "where": [...]}
# operators: "=", ">", "in" (value is a list), "is" (IS NOT DISTINCT FROM)

_OPERATORS = {"=": "{c} = ?", ">": "{c} > ?", "in": "list_contains(?, {c})", "is": "{c} IS NOT DISTINCT FROM ?"}


def _check_columns(table: str, columns: Iterable[str]) -> tuple[str, ...]:
    schema = _schema()
    if table not in schema:
        raise MixlabError(f"unknown table {table!r}; known: {sorted(schema)}")
    unknown = sorted(set(columns) - set(schema[table]))
    if unknown:
        raise MixlabError(f"table {table}: unknown column(s) {unknown}; known: {list(schema[table])}")
    return schema[table]


def _insert(table: str, rows: Iterable[Mapping[str, Any] | Any], *, replace: bool = False) -> dict[str, Any]:
    rows = [asdict(r) if not isinstance(r, Mapping) else dict(r) for r in rows]
    _check_columns(table, {k for r in rows for k in r})
    return {"op": "insert", "table": table, "rows": [{k: _encode(k, v) for k, v in r.items()} for r in rows],
            "replace": replace}


def _delete(table: str, *where: tuple[str, str, Any]) -> dict[str, Any]:
    _check_columns(table, [w[0] for w in where])
    return {"op": "delete", "table": table, "where": [list(w) for w in where]}


def _update(table: str, values: Mapping[str, Any], *where: tuple[str, str, Any]) -> dict[str, Any]:
    _check_columns(table, [*values, *(w[0] for w in where)])
    return {"op": "update", "table": table, "set": {k: _encode(k, v) for k, v in values.items()},
            "where": [list(w) for w in where]}


def _where(conditions: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    parts, params = [], []
    for column, operator, value in conditions:
        parts.append(_OPERATORS[operator].format(c=f'"{column}"'))
        params.append(value)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def _apply(con: duckdb.DuckDBPyConnection, ops: Sequence[Mapping[str, Any]]) -> None:
    """Run `ops` on `con` (inside the caller's transaction)."""
    for op in ops:
        table = op["table"]
        if op["op"] == "insert":
            rows = op["rows"]
            if not rows:
                continue
            given = {k for r in rows for k in r}
            cols = [c for c in _schema()[table] if c in given]
            arrow = pa.table({c: [r.get(c) for r in rows] for c in cols})
            verb = "INSERT OR REPLACE" if op["replace"] else "INSERT"
            col_list = ", ".join(f'"{c}"' for c in cols)
            con.register("_mixlab_rows", arrow)
            try:
                con.execute(f"{verb} INTO {table} ({col_list}) SELECT {col_list} FROM _mixlab_rows")
            finally:
                con.unregister("_mixlab_rows")
        elif op["op"] == "delete":
            clause, params = _where(op["where"])
            con.execute(f"DELETE FROM {table}{clause}", params)
        elif op["op"] == "update":
            clause, params = _where(op["where"])
            assignments = ", ".join(f'"{k}" = ?' for k in op["set"])
            con.execute(f"UPDATE {table} SET {assignments}{clause}", [*op["set"].values(), *params])
        else:
            raise MixlabError(f"unknown store operation {op['op']!r}")


def _encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS and value is not None and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$datetime" in obj:
        return datetime.fromisoformat(obj["$datetime"])
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------------------------

_PROCESS_LOCK = threading.RLock()
_SPOOL_COUNTER = itertools.count()


class _Busy(Exception):
    """Another process held the file past the wait we allowed."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


def _write_wait_default() -> float:
    try:
        return float(os.environ.get("MIXLAB_DB_WRITE_WAIT_S", _DEFAULT_WRITE_WAIT_S))
    except ValueError:
        raise MixlabError(f"MIXLAB_DB_WRITE_WAIT_S={os.environ['MIXLAB_DB_WRITE_WAIT_S']!r} is not a number") from None


class Store:
    """Short-lived connections with retry, spooling and typed methods; see the module docstring for why."""

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False, lock_timeout_s: float = 120.0,
                 write_wait_s: float | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        self.read_only = read_only
        self.lock_timeout_s = lock_timeout_s
        self.write_wait_s = _write_wait_default() if write_wait_s is None else write_wait_s
        self._migrated = False

    # -- files and connections --------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.is_file()

    @property
    def spool_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".spool")

    def pending_spool(self) -> list[Path]:
        """Spooled write files not yet ingested, oldest first."""
        try:
            return sorted(p for p in self.spool_dir.iterdir() if p.suffix == ".json")
        except (FileNotFoundError, NotADirectoryError):
            return []

    @contextmanager
    def _side_lock(self, *, exclusive: bool, deadline: float) -> Iterator[None]:
        """flock on `<db>.lock`, held from before DuckDB opens the file until after it has closed it.

        DuckDB's own file lock alone is not enough: measured with duckdb 2.0.1, three processes doing open → two
        commits → close in a loop lost whole committed transactions (244 and 306 rows of 360 in 2 of 12 runs) or
        failed with "Could not read enough bytes", apparently a process getting in while another was still
        finishing its close. With this lock around every open..close: no loss in 21 runs. Foreign processes (a
        DuckDB shell) do not take it; against them DuckDB's lock still applies.

        A second lock, `<db>.lock.turn`, is a turnstile: it is held only while waiting for the first, so a process
        that writes in a tight loop cannot starve a dashboard that waits to read."""
        try:
            fds = [os.open(self.path.with_name(self.path.name + suffix), os.O_RDWR | os.O_CREAT, 0o666)
                   for suffix in (".lock.turn", ".lock")]
        except OSError:  # a read-only folder: nobody can write there, so readers need no lock
            yield
            return
        try:
            self._flock(fds[0], fcntl.LOCK_EX, deadline)
            try:
                self._flock(fds[1], fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, deadline)
            finally:
                fcntl.flock(fds[0], fcntl.LOCK_UN)
            yield
        finally:
            for fd in fds:
                os.close(fd)  # releases the flock

    def _flock(self, fd: int, mode: int, deadline: float) -> None:
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _Busy(f"{self.path} is in use by another mixlab process") from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)

    @contextmanager
    def _session(self, *, read_only: bool, wait_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file (side lock, then DuckDB, retrying while another process holds either; `_Busy` after
        `wait_s`), yield the connection, checkpoint a writer's changes into the file and close."""
        deadline = time.monotonic() + wait_s
        delay = 0.005
        with self._side_lock(exclusive=not read_only, deadline=deadline):
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=read_only)
                    break
                except (duckdb.IOException, duckdb.ConnectionException) as exc:
                    if not _is_lock_error(exc):
                        raise MixlabError(f"cannot open {self.path}: {exc}") from exc
                    if time.monotonic() > deadline:
                        raise _Busy(str(exc)) from exc
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.25)
            try:
                yield con
                if not read_only:
                    con.execute("CHECKPOINT")  # nothing left for the close to write after the side lock is gone
            finally:
                con.close()

    @contextmanager
    def connect(self, *, write: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open, yield, close (migrating on the first read-write open). Retries while the file is locked."""
        if write and self.read_only:
            raise MixlabError(f"store {self.path} was opened read-only; refusing to write")
        if not write and not self.exists():
            raise MixlabError(f"no mixlab database at {self.path} (run `make demo` to produce one)")
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with _PROCESS_LOCK:
            try:
                with self._session(read_only=not write, wait_s=self.lock_timeout_s) as con:
                    if write and not self._migrated:
                        self._migrate(con)
                    yield con
            except _Busy as exc:
                raise MixlabError(f"{self.path} stayed locked by another process for {self.lock_timeout_s:.0f}s: "
                                  f"{exc}") from exc

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

    # -- the write path: transaction, or spool when the file stays held -----------------------------------------

    def _write(self, ops: Sequence[Mapping[str, Any]]) -> None:
        """Apply `ops` in one transaction after landing earlier spooled writes; spool them if the file stays held."""
        ops = [op for op in ops if op["op"] != "insert" or op["rows"]]
        if not ops:
            return
        if self.read_only:
            raise MixlabError(f"store {self.path} was opened read-only; refusing to write")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _PROCESS_LOCK:
            try:
                with self._session(read_only=False, wait_s=self.write_wait_s) as con:
                    if not self._migrated:
                        self._migrate(con)
                    self._ingest(con)
                    self._transaction(con, ops)
            except _Busy:  # raised only before anything was applied: the session never opened
                self._spool(ops)

    @staticmethod
    def _transaction(con: duckdb.DuckDBPyConnection, ops: Sequence[Mapping[str, Any]], spool_name: str | None = None):
        con.execute("BEGIN TRANSACTION")
        try:
            _apply(con, ops)
            if spool_name is not None:
                con.execute("INSERT INTO spool_ingested VALUES (?, ?)", [spool_name, utcnow()])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _spool(self, ops: Sequence[Mapping[str, Any]]) -> Path:
        """Write `ops` as one spool file, atomically (temp file + rename), named so that names sort by time."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(_SPOOL_COUNTER):06d}.json"
        tmp = self.spool_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(ops, default=_json_default))
        os.replace(tmp, self.spool_dir / name)
        _flush_at_exit(self)
        return self.spool_dir / name

    @staticmethod
    def _load_spool(path: Path) -> list[dict[str, Any]] | None:
        try:
            return json.loads(path.read_text(), object_hook=_json_hook)
        except FileNotFoundError:  # another process ingested it meanwhile
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # only a damaged disk makes one (atomic rename)
            bad = path.with_suffix(".bad")
            path.replace(bad)
            warnings.warn(f"spooled write {path} is unreadable ({exc}); kept as {bad}", stacklevel=2)
            return None

    def _ingest(self, con: duckdb.DuckDBPyConnection) -> int:
        """Land every pending spool file, each in its own transaction; returns how many were applied."""
        applied = 0
        for path in self.pending_spool():
            done = con.execute("SELECT count(*) FROM spool_ingested WHERE name = ?", [path.name]).fetchone()[0]
            if not done:
                ops = self._load_spool(path)
                if ops is None:
                    continue
                self._transaction(con, ops, spool_name=path.name)
                applied += 1
            path.unlink(missing_ok=True)
        return applied

    def flush(self, wait_s: float | None = None) -> int:
        """Land spooled writes now (waiting up to `wait_s` for the file). Returns the number of files applied;
        raises MixlabError if the file stayed held."""
        if not self.pending_spool():
            return 0
        with _PROCESS_LOCK:
            try:
                with self._session(read_only=False, wait_s=self.write_wait_s if wait_s is None else wait_s) as con:
                    if not self._migrated:
                        self._migrate(con)
                    return self._ingest(con)
            except _Busy as exc:
                raise MixlabError(f"{self.path} is held by another process; {len(self.pending_spool())} spooled "
                                  f"write(s) stay in {self.spool_dir}") from exc

    # -- the read path --------------------------------------------------------------------------------------

    @contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection that sees every write: the file read-only, or an overlay while spooled writes wait."""
        if not self.read_only and self.pending_spool():
            try:
                self.flush(wait_s=min(1.0, self.write_wait_s))
            except MixlabError:
                pass  # still held: read through the overlay
        if self.pending_spool():
            with _PROCESS_LOCK:
                try:
                    with self._side_lock(exclusive=False, deadline=time.monotonic() + self.lock_timeout_s):
                        con = self._overlay()
                        try:
                            yield con
                        finally:
                            con.close()
                except _Busy as exc:
                    raise MixlabError(f"{self.path} stayed locked by another process for "
                                      f"{self.lock_timeout_s:.0f}s: {exc}") from exc
            return
        if not self.exists() and not self.read_only:
            with self.connect(write=True) as con:  # a fresh file: create it with its schema
                yield con
            return
        with self.connect(write=False) as con:
            yield con

    def _overlay(self) -> duckdb.DuckDBPyConnection:
        """An in-memory database whose tables are the file's (attached read-only) with the spooled writes replayed."""
        con = duckdb.connect(":memory:")
        try:
            for _, statements in MIGRATIONS:
                for sql in statements:
                    con.execute(sql)
            ingested: set[str] = set()
            if self.exists():
                deadline = time.monotonic() + self.lock_timeout_s
                delay = 0.005
                quoted = str(self.path).replace("'", "''")
                while True:
                    try:
                        con.execute(f"ATTACH '{quoted}' AS db (READ_ONLY)")
                        break
                    except (duckdb.IOException, duckdb.ConnectionException, duckdb.BinderException) as exc:
                        if not _is_lock_error(exc) or time.monotonic() > deadline:
                            raise MixlabError(f"cannot read {self.path}: {exc}") from exc
                        time.sleep(delay * (0.5 + random.random()))
                        delay = min(delay * 2, 0.25)
                on_file = {r[0] for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'db'").fetchall()}
                if "spool_ingested" in on_file:
                    ingested = {r[0] for r in con.execute("SELECT name FROM db.spool_ingested").fetchall()}
            pending = [(p, self._load_spool(p)) for p in self.pending_spool() if p.name not in ingested]
            pending = [(p, ops) for p, ops in pending if ops is not None]
            if self.exists():
                touched = {op["table"] for _, ops in pending for op in ops}
                for table in _schema():
                    if table not in on_file:
                        continue
                    if table in touched:  # a copy the spooled writes can change
                        con.execute(f"INSERT INTO main.{table} BY NAME SELECT * FROM db.main.{table}")
                    else:  # untouched: read the file directly
                        con.execute(f"DROP TABLE main.{table}")
                        con.execute(f"CREATE VIEW main.{table} AS SELECT * FROM db.main.{table}")
            for _, ops in pending:
                _apply(con, ops)
            return con
        except BaseException:
            con.close()
            raise

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Read-only SQL for `dashboard/queries.py` and tests; other modules use the typed reads below."""
        with self._reader() as con:
            cur = con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def query_df(self, sql: str, params: Sequence[Any] | None = None):
        """The same as `query`, as a pandas DataFrame (the dashboard's form)."""
        with self._reader() as con:
            return con.execute(sql, params or []).df()

    def schema_version(self) -> int:
        if not self.read_only:
            with self.connect(write=True):  # creates and migrates the file
                pass
        return self.query("SELECT coalesce(max(version), 0) AS v FROM schema_version")[0]["v"]

    # -- raw access (migrations, tests, generated sample data) ----------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Raw SQL on the file, not spooled. For tests of the schema machinery only."""
        with self.connect() as con:
            con.execute(sql, params or [])

    def columns(self, table: str) -> list[str]:
        return list(_check_columns(table, []))

    def insert(self, table: str, rows: Iterable[Mapping[str, Any]], *, replace: bool = False) -> int:
        """Bulk-load dict rows into `table` in one transaction (unknown columns are an error, missing ones NULL;
        `replace=True` upserts on the primary key). For generated sample data and test fixtures: the lab's own
        code writes through the typed methods."""
        op = _insert(table, rows, replace=replace)
        self._write([op])
        return len(op["rows"])

    # -- runs -----------------------------------------------------------------------------------------------------

    def start_run(self, run: RunRecord) -> RunRecord:
        """Record a run (train, eval, sweep or ladder) as it starts, with this process's provenance filled in
        where the record leaves it empty. Returns the record as stored."""
        if run.git_sha is None or run.packages is None or run.device is None:
            prov = provenance.collect(seed=run.seed)
            run.git_sha = run.git_sha or prov.git_sha
            run.packages = run.packages or prov.packages
            run.device = run.device or prov.device
        self._write([_insert("runs", [run], replace=True)])
        return run

    def create_run(self, run: RunRecord) -> None:
        """Store a run row exactly as given (sample data, fixtures); the lab's runs go through `start_run`."""
        self._write([_insert("runs", [run], replace=True)])

    def restart_run(self, run_id: str, *, after_step: int) -> None:
        """A run resumes from the checkpoint of `after_step`: running again, and the training metrics and expert
        loads it logged after that step are dropped (those steps are trained again)."""
        self._write([
            _update("runs", {"status": "running", "error": None, "finished_at": None, "updated_at": utcnow()},
                    ("run_id", "=", run_id)),
            _delete("train_metrics", ("run_id", "=", run_id), ("step", ">", after_step)),
            _delete("expert_load", ("run_id", "=", run_id), ("step", ">", after_step)),
        ])

    def set_checkpoint(self, run_id: str, checkpoint_path: str) -> None:
        self.update_run(run_id, checkpoint_path=checkpoint_path)

    def finish_run(self, run_id: str, *, error: str | None = None) -> None:
        """`completed`, or `failed` with `error`."""
        self.update_run(run_id, status="failed" if error else "completed", error=error, finished_at=utcnow())

    def fail_run(self, run_id: str, error: str) -> None:
        self.finish_run(run_id, error=error or "failed")

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set some columns of a run row."""
        if not fields:
            return
        self._write([_update("runs", {**fields, "updated_at": utcnow()}, ("run_id", "=", run_id))])

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def get_runs(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows = self.query("SELECT * FROM runs WHERE list_contains(?, run_id)", [list(run_ids)]) if run_ids else []
        return {r["run_id"]: r for r in rows}

    def runs_of_invocation(self, invocation: str) -> list[dict[str, Any]]:
        """The stage runs one `mixlab run` invocation started, oldest first."""
        return self.query(
            "SELECT * FROM runs WHERE json_extract_string(config, '$.invocation') = ? ORDER BY created_at", [invocation]
        )

    def run_for_checkpoint(self, checkpoint_path: str) -> str | None:
        """The newest training (non-eval) run that wrote `checkpoint_path`."""
        rows = self.query(
            "SELECT run_id FROM runs WHERE checkpoint_path = ? AND kind <> 'eval' ORDER BY created_at DESC LIMIT 1",
            [checkpoint_path],
        )
        return rows[0]["run_id"] if rows else None

    def sweep_train_runs(self, sweep_id: str, *, by_mixture: bool = False) -> list[str]:
        """Training runs of a sweep (or ladder), in start order, or by mixture name first."""
        order = "mixture_name, created_at" if by_mixture else "created_at"
        rows = self.query(f"SELECT run_id FROM runs WHERE sweep_id = ? AND kind = 'train' ORDER BY {order}",
                          [sweep_id])
        return [r["run_id"] for r in rows]

    # -- training metrics -------------------------------------------------------------------------------------------

    def log_train_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        now = utcnow()
        self._write([_insert(
            "train_metrics",
            [{"run_id": run_id, "step": step, "name": k, "value": float(v), "ts": now} for k, v in metrics.items()],
        )])

    def log_expert_load(self, run_id: str, step: int, loads: Iterable[tuple[int, int, float, float | None]]) -> None:
        """`loads`: (layer, expert, load fraction, router bias) tuples."""
        self._write([_insert(
            "expert_load",
            [{"run_id": run_id, "step": step, "layer": l, "expert": e, "load": float(x), "bias": b}
             for l, e, x, b in loads],
        )])

    def last_train_metric(self, run_id: str, name: str = "loss") -> tuple[float, int] | None:
        """(value, step) of the latest logged value of `name`."""
        rows = self.query("SELECT value, step FROM train_metrics WHERE run_id = ? AND name = ? ORDER BY step DESC "
                          "LIMIT 1", [run_id, name])
        return (rows[0]["value"], rows[0]["step"]) if rows else None

    def final_losses(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{run_id: {"loss": last logged loss, "steps": last step}} over the `loss` / `train_loss` curves."""
        if not run_ids:
            return {}
        rows = self.query(
            "SELECT run_id, arg_max(value, step) AS loss, max(step) AS steps FROM train_metrics "
            "WHERE list_contains(?, run_id) AND name IN ('loss', 'train_loss') GROUP BY run_id",
            [list(run_ids)],
        )
        return {r["run_id"]: {"loss": r["loss"], "steps": r["steps"]} for r in rows}

    # -- evaluations ----------------------------------------------------------------------------------------------

    def start_eval(self, record: EvalRunRecord, *, keep_samples: bool = True) -> None:
        """Record (or restart) one task's evaluation; `keep_samples=False` drops samples of an earlier attempt."""
        ops = [_insert("eval_runs", [record], replace=True)]
        if not keep_samples:
            ops.append(_delete("eval_samples", ("eval_id", "=", record.eval_id)))
        self._write(ops)

    def record_eval_samples(self, eval_id: str, samples: Sequence[SampleRecord]) -> None:
        """Store finished samples, replacing earlier rows of the same items (a resumed run re-scoring them)."""
        if not samples:
            return
        self._write([
            _delete("eval_samples", ("eval_id", "=", eval_id), ("item_id", "in", [s.item_id for s in samples])),
            _insert("eval_samples", samples),
        ])

    def finish_eval(self, eval_id: str, metrics: Sequence[MetricRecord], n_samples: int) -> None:
        """Replace the task's metrics and mark it completed, in one transaction."""
        self._write([
            _delete("eval_metrics", ("eval_id", "=", eval_id)),
            _insert("eval_metrics", metrics),
            _update("eval_runs", {"status": "completed", "n_samples": n_samples, "finished_at": utcnow(),
                                  "error": None}, ("eval_id", "=", eval_id)),
        ])

    def fail_eval(self, eval_id: str, error: str, n_samples: int) -> None:
        self._write([_update("eval_runs", {"status": "failed", "error": error, "n_samples": n_samples,
                                           "finished_at": utcnow()}, ("eval_id", "=", eval_id))])

    def record_metrics(self, metrics: Iterable[MetricRecord]) -> None:
        """Append aggregate metrics (outside a task's evaluation: imported results, sample data)."""
        self._write([_insert("eval_metrics", metrics)])

    def eval_samples(self, eval_id: str) -> list[dict[str, Any]]:
        """item_id, output, judge_rationale and extra (JSON text) of an evaluation's stored samples."""
        return self.query("SELECT item_id, output, judge_rationale, extra FROM eval_samples WHERE eval_id = ?",
                          [eval_id])

    def item_scores(self, run_id: str, task: str) -> list[dict[str, Any]]:
        """item_id and extra (JSON text) of the scored samples of a run's latest completed evaluation of `task`:
        the per-item values that paired comparisons (ladder gates, `mixlab compare`) line up by item_id."""
        return self.query(
            "SELECT item_id, extra FROM eval_samples WHERE score IS NOT NULL AND eval_id = ("
            "SELECT eval_id FROM eval_runs WHERE run_id = ? AND task = ? AND status = 'completed' "
            "ORDER BY finished_at DESC NULLS LAST, created_at DESC LIMIT 1) ORDER BY item_id",
            [run_id, task],
        )

    def peer_samples(self, task: str, judge: str | None, *, exclude_eval_id: str) -> list[dict[str, Any]]:
        """eval_id, item_id and extra of every other completed evaluation of `task` by the same judge."""
        return self.query(
            "SELECT s.eval_id, s.item_id, s.extra FROM eval_samples s JOIN eval_runs r ON s.eval_id = r.eval_id "
            "WHERE r.task = ? AND r.judge IS NOT DISTINCT FROM ? AND r.status = 'completed' AND r.eval_id <> ?",
            [task, judge, exclude_eval_id],
        )

    def run_metrics(self, run_id: str) -> list[dict[str, Any]]:
        """task, metric, n, mean, ci_low, ci_high of a run's evaluations, by task and metric."""
        return self.query("SELECT task, metric, n, mean, ci_low, ci_high FROM eval_metrics WHERE run_id = ? "
                          "ORDER BY task, metric", [run_id])

    def metrics_of_runs(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Every eval metric row of `run_ids`, oldest first (so later evaluations win when folded)."""
        if not run_ids:
            return []
        return self.query(
            "SELECT run_id, task, metric, n, mean, ci_low, ci_high, created_at FROM eval_metrics "
            "WHERE list_contains(?, run_id) ORDER BY created_at",
            [list(run_ids)],
        )

    def metric_mean(self, run_id: str, task: str, metric: str | None = None) -> float | None:
        """The latest mean of `metric` (any metric of the task when None) for a run's evaluation of `task`."""
        sql = "SELECT mean FROM eval_metrics WHERE run_id = ? AND task = ?"
        params: list[Any] = [run_id, task]
        if metric:
            sql += " AND metric = ?"
            params.append(metric)
        rows = self.query(sql + " ORDER BY created_at DESC LIMIT 1", params)
        return rows[0]["mean"] if rows else None

    # -- judgement cache ------------------------------------------------------------------------------------------

    def get_judgements(self, cache_keys: Iterable[str]) -> dict[str, JudgementRecord]:
        keys = sorted(set(cache_keys))
        if not keys:
            return {}
        rows = self.query("SELECT * FROM judgements WHERE list_contains(?, cache_key)", [keys])
        return {r["cache_key"]: JudgementRecord(**r) for r in rows}

    def put_judgements(self, records: Sequence[JudgementRecord]) -> None:
        self._write([_insert("judgements", records, replace=True)])

    # -- mixtures -------------------------------------------------------------------------------------------------

    def record_mixture(self, mixture: MixtureRecord, sources: Sequence[SourceRecord],
                       components: Sequence[ComponentRecord], contamination: Sequence[ContaminationRecord]) -> None:
        """A built mixture with its sources, components and contamination flags, replacing an earlier record of
        the same mixture id, in one transaction."""
        self._write([
            _insert("sources", sources, replace=True),
            _insert("mixtures", [mixture], replace=True),
            _delete("mixture_components", ("mixture_id", "=", mixture.mixture_id)),
            _insert("mixture_components", components),
            _delete("contamination", ("mixture_id", "=", mixture.mixture_id)),
            _insert("contamination", contamination),
        ])

    def has_mixture(self, mixture_id: str) -> bool:
        return bool(self.query("SELECT 1 FROM mixtures WHERE mixture_id = ?", [mixture_id]))

    # -- ladders --------------------------------------------------------------------------------------------------

    def record_ladder_decision(self, decision: LadderDecision) -> None:
        self._write([_insert("ladder_decisions", [decision])])

    def ladder_decisions(self, ladder_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM ladder_decisions WHERE ladder_id = ? ORDER BY decided_at", [ladder_id])


    # -- cost and mixture optimisation ------------------------------------------------------------------------------

    def record_cost(self, record: CostRecord) -> None:
        """Device time of one phase of a run; a re-recorded phase (a resumed run) replaces the earlier row."""
        self._write([_delete("run_costs", ("run_id", "=", record.run_id), ("phase", "=", record.phase)),
                     _insert("run_costs", [record])])

    def run_costs(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{run_id: {"train_s", "eval_s", "device_s" (their sum, device-seconds), "device_kind"}}. Runs recorded
        before costs were (no `run_costs` row) fall back to their `train_wall_s` training metric, eval unknown."""
        if not run_ids:
            return {}
        rows = self.query(
            "SELECT run_id, sum(device_s) FILTER (WHERE phase = 'train') AS train_s, "
            "sum(device_s) FILTER (WHERE phase = 'eval') AS eval_s, sum(device_s) AS device_s, "
            "any_value(device_kind) AS device_kind FROM run_costs WHERE list_contains(?, run_id) GROUP BY run_id",
            [list(run_ids)],
        )
        out = {r["run_id"]: r for r in rows}
        missing = [r for r in run_ids if r not in out]
        if missing:
            for r in self.query(
                "SELECT t.run_id, arg_max(t.value, t.step) AS train_s, any_value(x.device) AS device_kind "
                "FROM train_metrics t JOIN runs x USING (run_id) WHERE list_contains(?, t.run_id) "
                "AND t.name = 'train_wall_s' GROUP BY t.run_id", [missing],
            ):
                out[r["run_id"]] = {**r, "eval_s": None, "device_s": r["train_s"]}
        return out

    def family_run_rows(self) -> list[dict[str, Any]]:
        """Completed training runs with their mixture's name, manifest (JSON text), recipe YAML and seed: what
        `mixlab optimise` sorts into mixture families."""
        return self.query(
            "SELECT r.run_id, r.mixture_id, r.mixture_name, r.recipe_yaml, r.seed, r.stage, r.trainer, r.device, "
            "r.created_at, m.name AS built_name, m.manifest FROM runs r JOIN mixtures m ON r.mixture_id = m.mixture_id "
            "WHERE r.kind = 'train' AND r.status = 'completed' ORDER BY r.created_at"
        )

    def mixture_shares(self, mixture_ids: Sequence[str]) -> list[dict[str, Any]]:
        """mixture_id, group_path and target share (summed over phases) of every component of `mixture_ids`."""
        if not mixture_ids:
            return []
        return self.query(
            "SELECT mixture_id, group_path, sum(target_share) AS share FROM mixture_components "
            "WHERE list_contains(?, mixture_id) GROUP BY mixture_id, group_path ORDER BY mixture_id, group_path",
            [list(mixture_ids)],
        )

    def metric_categories(self, run_ids: Sequence[str]) -> dict[tuple[str, str], str]:
        """{(task, metric): category} over the eval metrics of `run_ids` (the latest row's category)."""
        if not run_ids:
            return {}
        rows = self.query(
            "SELECT task, metric, arg_max(category, coalesce(created_at, TIMESTAMP '1970-01-01')) AS category "
            "FROM eval_metrics "
            "WHERE list_contains(?, run_id) GROUP BY task, metric", [list(run_ids)])
        return {(r["task"], r["metric"]): r["category"] for r in rows}

    def record_fits(self, fits: Sequence[FitRecord]) -> None:
        self._write([_insert("surrogate_fits", fits)])

    def fits(self, fit_id: str | None = None, *, family: str | None = None) -> list[dict[str, Any]]:
        """Rows of one fit (`fit_id`), or of the latest fit of `family`."""
        if fit_id is None:
            rows = self.query("SELECT fit_id FROM surrogate_fits WHERE family = ? ORDER BY created_at DESC LIMIT 1",
                              [family])
            if not rows:
                return []
            fit_id = rows[0]["fit_id"]
        return self.query("SELECT * FROM surrogate_fits WHERE fit_id = ? ORDER BY metric, model", [fit_id])

    def record_proposals(self, proposals: Sequence[ProposalRecord]) -> None:
        self._write([_insert("proposals", proposals, replace=True)])

    def update_proposal(self, proposal_id: str, **fields: Any) -> None:
        self._write([_update("proposals", fields, ("proposal_id", "=", proposal_id))])

    def proposals(self, family: str, *, loop_id: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM proposals WHERE family = ?", [family]
        if loop_id is not None:
            sql += " AND loop_id = ?"
            params.append(loop_id)
        return self.query(sql + " ORDER BY created_at, proposal_id", params)

    def record_round(self, record: RoundRecord) -> None:
        self._write([_insert("optimise_rounds", [record])])

    def rounds(self, loop_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM optimise_rounds WHERE loop_id = ? ORDER BY round", [loop_id])

    # -- result files of workers elsewhere (sweeps on Ray / Slurm) ------------------------------------------------

    def ingest_store(self, source: str | Path) -> bool:
        """Copy every row of another mixlab database file (a sweep member's result file, written wherever the
        member ran) into this one in one transaction, recorded in `spool_ingested` under the file's path, so a
        file is applied once however often it is offered. Rows with a primary key replace the existing row (a
        mixture both files recorded). Returns False if the file was ingested before."""
        source = Path(source).resolve()
        key = f"store:{source}"
        if not source.is_file():
            raise MixlabError(f"ingest: no database file {source}")
        quoted = str(source).replace("'", "''")
        with _PROCESS_LOCK:
            try:
                with self._session(read_only=False, wait_s=self.lock_timeout_s) as con:
                    if not self._migrated:
                        self._migrate(con)
                    if con.execute("SELECT count(*) FROM spool_ingested WHERE name = ?", [key]).fetchone()[0]:
                        return False
                    con.execute(f"ATTACH '{quoted}' AS src (READ_ONLY)")
                    try:
                        on_src = {r[0] for r in con.execute(
                            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'src'").fetchall()}
                        keyed = {r[0] for r in con.execute(
                            "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
                            "AND database_name = current_database()").fetchall()}
                        con.execute("BEGIN TRANSACTION")
                        try:
                            for table in _schema():
                                if table in ("schema_version", "spool_ingested") or table not in on_src:
                                    continue
                                verb = "INSERT OR REPLACE" if table in keyed else "INSERT"
                                con.execute(f"{verb} INTO main.{table} BY NAME SELECT * FROM src.main.{table}")
                            con.execute("INSERT INTO spool_ingested VALUES (?, ?)", [key, utcnow()])
                            con.execute("COMMIT")
                        except BaseException:
                            con.execute("ROLLBACK")
                            raise
                    finally:
                        con.execute("DETACH src")
            except _Busy as exc:
                raise MixlabError(f"{self.path} stayed locked by another process: {exc}") from exc
        return True


# ---------------------------------------------------------------------------------------------------------------
# A process that spooled writes tries once more to land them before it exits.
# ---------------------------------------------------------------------------------------------------------------

_SPOOLED: dict[Path, Store] = {}


def _flush_at_exit(store: Store) -> None:
    if not _SPOOLED:
        atexit.register(_flush_spooled)
    _SPOOLED.setdefault(store.path, store)


def _flush_spooled() -> None:
    for store in _SPOOLED.values():
        try:
            store.flush()
        except MixlabError:
            pass  # still held: the next writer (or read overlay) picks the files up
