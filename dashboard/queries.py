"""Read-only queries over the mixlab DuckDB file, returned as pandas DataFrames.

Every call goes through `Store(path, read_only=True)`, which opens the file, runs one query and closes it, retrying
with backoff while a training or eval process holds the write lock — so the dashboard never blocks writers for longer
than a query and never keeps a connection open. Writes that a writer had to spool (the file was held too long) are
seen too: the store reads through an overlay of them until they land. No function here writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from mixlab.errors import MixlabError
from mixlab.store import Store

# The dashboard gives up on a held lock sooner than a writer would: a page should say "busy", not hang.
LOCK_TIMEOUT_S = 30.0


def _store(path: str | Path) -> Store:
    return Store(path, read_only=True, lock_timeout_s=LOCK_TIMEOUT_S)


def _df(path: str | Path, sql: str, params: list | None = None) -> pd.DataFrame:
    return _store(path).query_df(sql, params or [])


def db_stamp(path: str | Path) -> tuple[int, int, int]:
    """Changes whenever the database changes: mtimes of the file, of its write-ahead log (DuckDB writes the WAL
    first and folds it into the file at checkpoints, so the file's mtime alone lags behind) and of the store's
    spool folder (writes waiting for the file)."""
    p = Path(path)
    stamps = [p, p.with_name(p.name + ".wal"), Store(p, read_only=True).spool_dir]
    return tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in stamps)  # type: ignore[return-value]


def table_counts(path: str | Path, tables: list[str]) -> dict[str, int]:
    """Row counts of `tables` (names from the store's schema)."""
    for table in tables:
        _store(path).columns(table)  # the names go into SQL: unknown ones raise MixlabError
    sql = ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in tables)
    return _store(path).query(f"SELECT {sql}")[0]


def full_table(path: str | Path, table: str) -> pd.DataFrame:
    """Every row of one table (the naive dashboard's first step, which `bench/bench_dashboard.py` measures)."""
    _store(path).columns(table)  # unknown names raise MixlabError
    return _df(path, f"SELECT * FROM {table}")


@dataclass
class DbState:
    status: str  # missing | not_mixlab | empty | ok | error
    path: str
    message: str
    n_runs: int = 0
    n_metrics: int = 0
    n_mixtures: int = 0


def db_state(path: str | Path) -> DbState:
    """Whether the file exists, is a mixlab database, and holds anything to show."""
    p = Path(path)
    if not p.is_file():
        return DbState("missing", str(p), f"no database at {p}")
    try:
        tables = set(_df(p, "SELECT table_name FROM information_schema.tables")["table_name"])
        if not {"runs", "eval_metrics", "schema_version"} <= tables:
            return DbState("not_mixlab", str(p), f"{p} is a DuckDB file without the mixlab schema")
        counts = _store(p).query(
            "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM eval_metrics) AS metrics, "
            "(SELECT count(*) FROM mixtures) AS mixtures"
        )[0]
    except (MixlabError, duckdb.Error) as exc:
        return DbState("error", str(p), f"cannot read {p}: {exc}")
    # Built mixtures alone are worth showing (composition, contamination) before the first run finishes.
    status = "ok" if counts["runs"] or counts["metrics"] or counts["mixtures"] else "empty"
    return DbState(status, str(p), "" if status == "ok" else f"{p} holds no runs yet", counts["runs"],
                   counts["metrics"], counts["mixtures"])


# ---------------------------------------------------------------------------------------------------------------
# Runs, metrics
# ---------------------------------------------------------------------------------------------------------------

_RUN_COLUMNS = ["run_id", "name", "kind", "trainer", "stage", "recipe_name", "mixture_id", "mixture_name",
                "mixture_family", "base_model", "preset", "rung", "seed", "git_sha", "device", "status", "error",
                "parent_run_id", "sweep_id", "checkpoint_path", "created_at", "finished_at"]


def runs(path: str | Path) -> pd.DataFrame:
    """Every run plus the checkpoints that were evaluated without a run row, with mixture metadata and the count
    of contamination-flagged rows in its mixture."""
    cols = ", ".join(f"r.{c}" for c in _RUN_COLUMNS if c not in ("mixture_name", "mixture_family"))
    df = _df(path, f"""
        WITH flagged AS (SELECT mixture_id, count(*) AS n_flagged FROM contamination GROUP BY mixture_id),
        orphan AS (
            SELECT DISTINCT coalesce(m.run_id, e.checkpoint, m.eval_id) AS run_id, e.checkpoint
            FROM eval_metrics m LEFT JOIN eval_runs e ON e.eval_id = m.eval_id
            WHERE coalesce(m.run_id, e.checkpoint, m.eval_id) NOT IN (SELECT run_id FROM runs)
        )
        SELECT {cols},
               coalesce(r.mixture_name, x.name) AS mixture_name,
               coalesce(r.mixture_family, x.family) AS mixture_family,
               coalesce(f.n_flagged, 0) AS n_flagged
        FROM runs r
        LEFT JOIN mixtures x ON x.mixture_id = r.mixture_id
        LEFT JOIN flagged f ON f.mixture_id = r.mixture_id
        UNION ALL BY NAME
        SELECT run_id, run_id AS name, 'eval' AS kind, checkpoint AS checkpoint_path, 0 AS n_flagged FROM orphan
    """)
    for col in ("stage", "rung", "mixture_family", "mixture_name", "base_model", "status"):
        df[col] = df[col].fillna("(none)")
    df["label"] = df["name"].fillna(df["run_id"])
    return df.reset_index(drop=True)


def latest_metrics(path: str | Path) -> pd.DataFrame:
    """One row per (run, task, metric): the most recent evaluation. Checkpoints evaluated without a run row are
    keyed by their checkpoint path."""
    return _df(path, """
        SELECT coalesce(m.run_id, e.checkpoint, m.eval_id) AS run_id, m.eval_id, m.task, m.metric,
               coalesce(m.category, 'other') AS category, m.n, m.mean, m.ci_low, m.ci_high, m.ci_method,
               m.created_at, e.judge
        FROM eval_metrics m LEFT JOIN eval_runs e ON e.eval_id = m.eval_id
        WHERE m.mean IS NOT NULL
        QUALIFY row_number() OVER (
            PARTITION BY coalesce(m.run_id, e.checkpoint, m.eval_id), m.task, m.metric
            ORDER BY m.created_at DESC NULLS LAST) = 1
    """)


def train_metrics(path: str | Path, run_id: str) -> pd.DataFrame:
    return _df(path, "SELECT step, name, value, ts FROM train_metrics WHERE run_id = ? ORDER BY name, step", [run_id])


def expert_load(path: str | Path, run_id: str) -> pd.DataFrame:
    return _df(path, "SELECT step, layer, expert, load, bias FROM expert_load WHERE run_id = ? ORDER BY step, layer, expert",
               [run_id])


def expert_imbalance(load: pd.DataFrame) -> pd.DataFrame:
    """Per (step, layer): max/mean expert load (1.0 = perfectly balanced) and the coefficient of variation."""
    if load.empty:
        return pd.DataFrame(columns=["step", "layer", "max_over_mean", "cv", "hottest_expert"])
    g = load.groupby(["step", "layer"])
    out = g["load"].agg(max_load="max", mean_load="mean", std_load="std").reset_index()
    out["max_over_mean"] = out["max_load"] / out["mean_load"]
    out["cv"] = out["std_load"] / out["mean_load"]
    hottest = load.loc[g["load"].idxmax(), ["step", "layer", "expert"]].rename(columns={"expert": "hottest_expert"})
    return out.merge(hottest, on=["step", "layer"])[["step", "layer", "max_over_mean", "cv", "hottest_expert"]]


# ---------------------------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------------------------


def sample_tasks(path: str | Path, run_id: str) -> pd.DataFrame:
    return _df(path, """
        SELECT task, count(*) AS n, avg(score) AS mean_score, avg(passed::INT) AS pass_rate
        FROM eval_samples WHERE run_id = ? GROUP BY task ORDER BY task
    """, [run_id])


def samples(path: str | Path, run_id: str, task: str, *, only_failed: bool = False, limit: int = 500) -> pd.DataFrame:
    failed = "AND (passed IS NOT TRUE)" if only_failed else ""
    return _df(path, f"""
        SELECT item_id, score, passed, prompt, output, reference, judge_rationale, prompt_tokens, output_tokens
        FROM eval_samples WHERE run_id = ? AND task = ? {failed}
        ORDER BY item_id LIMIT ?
    """, [run_id, task, int(limit)])


def common_tasks(path: str | Path, run_a: str, run_b: str) -> list[str]:
    df = _df(path, """
        SELECT task FROM eval_samples WHERE run_id = ? INTERSECT SELECT task FROM eval_samples WHERE run_id = ?
        ORDER BY task
    """, [run_a, run_b])
    return df["task"].tolist()


def paired_samples(path: str | Path, run_a: str, run_b: str, task: str, *, limit: int = 2000) -> pd.DataFrame:
    """Both runs' answers to the same items of one task, joined on item id (latest eval of each run)."""
    return _df(path, """
        WITH a AS (SELECT * FROM eval_samples WHERE run_id = ? AND task = ?
                   QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY eval_id DESC) = 1),
             b AS (SELECT * FROM eval_samples WHERE run_id = ? AND task = ?
                   QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY eval_id DESC) = 1)
        SELECT a.item_id, a.prompt, a.reference,
               a.output AS output_a, a.score AS score_a, a.passed AS passed_a, a.judge_rationale AS rationale_a,
               b.output AS output_b, b.score AS score_b, b.passed AS passed_b, b.judge_rationale AS rationale_b,
               (a.score IS DISTINCT FROM b.score) AS flipped
        FROM a JOIN b USING (item_id) ORDER BY a.item_id LIMIT ?
    """, [run_a, task, run_b, task, int(limit)])


def item_values(path: str | Path, run_ids: list[str], task: str, metric: str) -> pd.DataFrame:
    """run_id, item_id, value of `metric` for the scored items of each run's latest completed evaluation of `task`
    (the rows `mixlab compare` pairs: `Store.item_scores`), for the paired tests behind the trade-off tiers."""
    if not run_ids:
        return pd.DataFrame(columns=["run_id", "item_id", "value"])
    rows = _df(path, """
        WITH latest AS (SELECT eval_id FROM eval_runs WHERE task = ? AND status = 'completed'
                        AND list_contains(?, run_id)
                        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY finished_at DESC NULLS LAST,
                                                   created_at DESC) = 1)
        SELECT s.run_id, s.item_id, s.extra FROM eval_samples s JOIN latest USING (eval_id)
        WHERE s.score IS NOT NULL
    """, [task, list(run_ids)])
    values = []
    for extra in rows["extra"]:
        try:
            v = (json.loads(extra) if isinstance(extra, str) else extra or {}).get("scores", {}).get(metric)
        except (ValueError, AttributeError):
            v = None
        values.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan"))
    return pd.DataFrame({"run_id": rows["run_id"], "item_id": rows["item_id"], "value": values}).dropna()


# ---------------------------------------------------------------------------------------------------------------
# Mixtures and contamination
# ---------------------------------------------------------------------------------------------------------------


def mixtures(path: str | Path) -> pd.DataFrame:
    return _df(path, """
        SELECT x.mixture_id, coalesce(x.name, x.mixture_id) AS name, x.kind, x.family, x.n_rows, x.n_tokens,
               x.created_at, x.yaml,
               (SELECT count(*) FROM runs r WHERE r.mixture_id = x.mixture_id) AS n_runs
        FROM mixtures x ORDER BY x.created_at, name
    """)


def components(path: str | Path, mixture_ids: list[str] | None = None) -> pd.DataFrame:
    where, params = "", []
    if mixture_ids is not None:
        if not mixture_ids:
            return pd.DataFrame(columns=["mixture_id", "mixture", "source"])
        where = f"WHERE c.mixture_id IN ({', '.join('?' * len(mixture_ids))})"
        params = list(mixture_ids)
    return _df(path, f"""
        SELECT c.mixture_id, coalesce(x.name, c.mixture_id) AS mixture,
               coalesce(c.source_name, s.name, c.source_id) AS source, c.group_path, c.phase,
               c.target_share, c.realised_share, c.target_rows, c.realised_rows, c.tokens, c.trainable_tokens,
               c.epochs, c.dropped_filter, c.dropped_dedup, c.dropped_contamination
        FROM mixture_components c
        LEFT JOIN mixtures x ON x.mixture_id = c.mixture_id
        LEFT JOIN sources s ON s.source_id = c.source_id
        {where}
        ORDER BY mixture, source
    """, params)


def mixture_diff(comp: pd.DataFrame, mixture_a: str, mixture_b: str) -> pd.DataFrame:
    """Per source: realised and target shares in A and B and the change B − A (percentage points)."""
    cols = ["source", "target_share", "realised_share", "realised_rows", "epochs"]
    a = comp.loc[comp["mixture_id"] == mixture_a, cols].groupby("source").sum(numeric_only=True)
    b = comp.loc[comp["mixture_id"] == mixture_b, cols].groupby("source").sum(numeric_only=True)
    out = a.join(b, how="outer", lsuffix="_a", rsuffix="_b").fillna(0.0)
    out["delta_realised_pp"] = 100 * (out["realised_share_b"] - out["realised_share_a"])
    out["delta_target_pp"] = 100 * (out["target_share_b"] - out["target_share_a"])
    out = out.reset_index()
    return out.reindex(out["delta_realised_pp"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def composition_labels(comp: pd.DataFrame, top: int = 4) -> dict[str, str]:
    """mixture_id -> 'proc-math 62% · gsm8k-train 12% · …' (realised shares, largest first), for hover text."""
    out = {}
    for mixture_id, part in comp.groupby("mixture_id"):
        part = part.sort_values("realised_share", ascending=False)
        items = [f"{s} {v:.0%}" for s, v in zip(part["source"], part["realised_share"]) if pd.notna(v)]
        out[mixture_id] = " · ".join(items[:top]) + (" · …" if len(items) > top else "")
    return out


def flagged_for_item(path: str | Path, mixture_id: str, item_id: str) -> pd.DataFrame:
    """Training rows of a mixture flagged as overlapping one eval item (the decontamination gate's record)."""
    return _df(path, """
        SELECT coalesce(s.name, c.source_id) AS source, c.row_id, c.benchmark, c.field, c.ngram
        FROM contamination c LEFT JOIN sources s ON s.source_id = c.source_id
        WHERE c.mixture_id = ? AND c.item_id = ? ORDER BY source, row_id LIMIT 50
    """, [mixture_id, item_id])


def contamination_summary(path: str | Path) -> pd.DataFrame:
    """Flagged rows per mixture × source × benchmark."""
    return _df(path, """
        SELECT coalesce(x.name, c.mixture_id, '(unknown)') AS mixture, c.mixture_id,
               coalesce(s.name, c.source_id, '(unknown)') AS source, coalesce(c.benchmark, '(unknown)') AS benchmark,
               count(*) AS flagged,
               count(DISTINCT c.item_id) AS benchmark_items
        FROM contamination c
        LEFT JOIN mixtures x ON x.mixture_id = c.mixture_id
        LEFT JOIN sources s ON s.source_id = c.source_id
        GROUP BY ALL ORDER BY flagged DESC
    """)


def contamination_rows(path: str | Path, *, mixture_id: str | None = None, source: str | None = None,
                       benchmark: str | None = None, limit: int = 1000) -> pd.DataFrame:
    clauses, params = [], []
    for column, value in (("c.mixture_id", mixture_id), ("coalesce(s.name, c.source_id, '(unknown)')", source),
                          ("coalesce(c.benchmark, '(unknown)')", benchmark)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    return _df(path, f"""
        SELECT coalesce(x.name, c.mixture_id) AS mixture, coalesce(s.name, c.source_id) AS source, c.row_id,
               c.benchmark, c.item_id, c.field, c.ngram
        FROM contamination c
        LEFT JOIN mixtures x ON x.mixture_id = c.mixture_id
        LEFT JOIN sources s ON s.source_id = c.source_id
        {where} ORDER BY source, benchmark, row_id LIMIT ?
    """, params + [int(limit)])


# -- mixture optimiser (`mixlab optimise`) and run cost ------------------------------------------------------------


def _has_table(path: str | Path, table: str) -> bool:
    """Databases written before a migration lack its tables until a writer opens them; the views then say so."""
    rows = _store(path).query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?", [table])
    return bool(rows[0]["n"])


def run_costs(path: str | Path) -> pd.DataFrame:
    """Per run: device-seconds spent training (train_s) and evaluating (eval_s), their sum (device_s) and the
    device kind. Runs recorded before costs were fall back to their `train_wall_s` training metric (eval unknown)."""
    cols = ["run_id", "train_s", "eval_s", "device_s", "device_kind"]
    if not _has_table(path, "run_costs"):
        return pd.DataFrame(columns=cols)
    return _df(path, """
        WITH c AS (
            SELECT run_id, sum(device_s) FILTER (WHERE phase = 'train') AS train_s,
                   sum(device_s) FILTER (WHERE phase = 'eval') AS eval_s, sum(device_s) AS device_s,
                   any_value(device_kind) AS device_kind
            FROM run_costs GROUP BY run_id),
        w AS (
            SELECT run_id, arg_max(value, step) AS train_s FROM train_metrics
            WHERE name = 'train_wall_s' AND run_id NOT IN (SELECT run_id FROM c) GROUP BY run_id)
        SELECT run_id, train_s, eval_s, device_s, device_kind FROM c
        UNION ALL
        SELECT w.run_id, w.train_s, NULL AS eval_s, w.train_s AS device_s, r.device AS device_kind
        FROM w LEFT JOIN runs r ON r.run_id = w.run_id
    """)[cols]


def optimise_families(path: str | Path) -> list[str]:
    """Mixture families with a stored surrogate fit, most recently fitted first."""
    if not _has_table(path, "surrogate_fits"):
        return []
    rows = _store(path).query("SELECT family, max(created_at) AS t FROM surrogate_fits GROUP BY family "
                              "ORDER BY t DESC")
    return [r["family"] for r in rows]


def latest_fit(path: str | Path, family: str) -> pd.DataFrame:
    """Every row (target x model) of the family's newest fit."""
    return _df(path, """
        SELECT * FROM surrogate_fits WHERE fit_id = (
            SELECT fit_id FROM surrogate_fits WHERE family = ? ORDER BY created_at DESC LIMIT 1)
        ORDER BY metric, model
    """, [family])


def proposals(path: str | Path, family: str) -> pd.DataFrame:
    return _df(path, "SELECT * FROM proposals WHERE family = ? ORDER BY created_at, proposal_id", [family])


def optimise_rounds(path: str | Path, family: str) -> pd.DataFrame:
    return _df(path, "SELECT * FROM optimise_rounds WHERE family = ? ORDER BY created_at, round", [family])
