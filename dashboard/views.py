"""The Streamlit layer: page layout and widgets only. Data comes from `queries` (read-only, cached on the database
file's modification stamp), numbers from `aggregates` / `pareto`, charts from `charts`.

Views: Trade-off (default), Leaderboard, Mixtures, Run detail, Contamination; an empty or missing database gets a
page that says how to make one.
"""

from __future__ import annotations

import difflib
from datetime import date

import pandas as pd
import streamlit as st

from mixlab.dashboard import aggregates as agg
from mixlab.dashboard import charts, queries
from mixlab.dashboard import optimise as optview
from mixlab.errors import MixlabError
from mixlab.paths import default_db_path

VIEWS = ["Trade-off", "Leaderboard", "Mixtures", "Optimiser", "Run detail", "Contamination"]
LB_AGG, US_AGG = "Leaderboard score (aggregate)", "Usability score (aggregate)"
COLOR_BY = {"mixture family": "mixture_family", "stage": "stage", "ladder rung": "rung", "base model": "base_model",
            "mixture": "mixture_name"}
CACHE_TTL_S = 20
# Widget state Streamlit would drop while their page is not shown; kept so that a trip to Run detail and back
# finds the same axes, aggregates and filters.
PERSISTENT = ["agg_lb", "agg_us", "x_axis", "y_axis", "color_by", "partial", "seeds", "lb_cols", "lb_ci", "f_stage", "f_rung",
              "f_mixture_family", "f_base_model", "f_status", "f_date", "f_contam", "mix_sel", "mix_a", "mix_b"]
LIVE_EVERY_S = 10


# ---------------------------------------------------------------------------------------------------------------
# Cached data access: keyed on (function, path, file stamp, args), so a new write shows on the next interaction
# ---------------------------------------------------------------------------------------------------------------


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=256)
def _cached(fn: str, path: str, stamp: tuple[int, int], *args, **kwargs):
    return getattr(queries, fn)(path, *args, **kwargs)


def load(fn: str, *args, **kwargs):
    path = st.session_state["_db"]
    return _cached(fn, path, queries.db_stamp(path), *args, **kwargs)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=32)
def _catalog(path: str, stamp: tuple[int, int]) -> pd.DataFrame:
    return agg.catalog(_cached("latest_metrics", path, stamp))


def catalog() -> pd.DataFrame:
    path = st.session_state["_db"]
    return _catalog(path, queries.db_stamp(path))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=32)
def _default_metrics_at(path: str, stamp: tuple[int, int], category: str) -> list[str]:
    return agg.default_metrics(_catalog(path, stamp), category)


def default_metrics(category: str) -> list[str]:
    """The metrics an aggregate axis averages by default (computed once per database state, not per rerun)."""
    path = st.session_state["_db"]
    return _default_metrics_at(path, queries.db_stamp(path), category)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=32)
def _wide(path: str, stamp: tuple[int, int]) -> pd.DataFrame:
    return agg.wide(_cached("latest_metrics", path, stamp))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=32)
def _composition_labels_at(path: str, stamp: tuple[int, int]) -> dict[str, str]:
    return queries.composition_labels(_cached("components", path, stamp))


def _composition_labels() -> dict[str, str]:
    path = st.session_state["_db"]
    return _composition_labels_at(path, queries.db_stamp(path))


def wide() -> pd.DataFrame:
    path = st.session_state["_db"]
    return _wide(path, queries.db_stamp(path))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=64)
def _axis_table(path: str, stamp: tuple[int, int], x: agg.Axis, y: agg.Axis) -> pd.DataFrame:
    return agg.axis_table(_cached("latest_metrics", path, stamp), x, y, cat=_catalog(path, stamp), w=_wide(path, stamp))


def axis_table(x: agg.Axis, y: agg.Axis) -> pd.DataFrame:
    """x/y values of every evaluated run, cached per axis definition: filters and Pareto tiers apply after."""
    path = st.session_state["_db"]
    return _axis_table(path, queries.db_stamp(path), x, y)


# ---------------------------------------------------------------------------------------------------------------
# Navigation and shared filters
# ---------------------------------------------------------------------------------------------------------------


def open_run(run_id: str) -> None:
    """Switch to Run detail on `run_id` (used as a widget callback, where changing widget state is allowed)."""
    st.session_state["view"] = "Run detail"
    st.session_state["run_id"] = run_id


def _on_chart_select() -> None:
    state = st.session_state.get("tradeoff_chart")
    picked = (state or {}).get("selection", {}).get(charts.PICK) or []
    if picked and picked[0].get("run_id"):
        open_run(picked[0]["run_id"])


def _init_from_query_params() -> None:
    """Deep links: ?view=Run+detail&run=RUN_ID[&compare=OTHER_RUN_ID]."""
    if "view" in st.session_state:
        return
    params = st.query_params
    view = params.get("view")
    if view in VIEWS:
        st.session_state["view"] = view
    if params.get("run"):
        st.session_state["run_id"] = params.get("run")
    if params.get("compare"):
        st.session_state["compare_id"] = params.get("compare")


def sidebar_filters(runs: pd.DataFrame) -> pd.DataFrame:
    """Filters shared by Trade-off and Leaderboard; returns the runs that pass."""
    st.sidebar.markdown("**Filter runs**")
    mask = pd.Series(True, index=runs.index)
    for label, col in (("stage", "stage"), ("ladder rung", "rung"), ("mixture family", "mixture_family"),
                       ("base model", "base_model"), ("status", "status")):
        options = sorted(runs[col].dropna().astype(str).unique())
        if len(options) <= 1:
            continue
        chosen = st.sidebar.multiselect(label, options, key=f"f_{col}", placeholder="all")
        if chosen:
            mask &= runs[col].astype(str).isin(chosen)
    created = pd.to_datetime(runs["created_at"]).dropna()
    if not created.empty and created.dt.date.nunique() > 1:
        lo, hi = created.min().date(), created.max().date()
        picked = st.sidebar.date_input("created between", min_value=lo, max_value=hi, key="f_date",
                                       **_kw("f_date", value=(lo, hi)))
        if isinstance(picked, (tuple, list)) and len(picked) == 2:
            day = pd.to_datetime(runs["created_at"]).dt.date
            mask &= day.between(picked[0], picked[1]) | day.isna()
    contam = st.sidebar.radio("decontamination", ["all runs", "clean mixtures only", "flagged mixtures only"],
                              key="f_contam", help="Mixtures whose decontamination gate flagged training rows "
                              "against an eval set (the rows are listed on the Contamination page).")
    if contam == "clean mixtures only":
        mask &= runs["n_flagged"] == 0
    elif contam == "flagged mixtures only":
        mask &= runs["n_flagged"] > 0
    return runs[mask]


def _kw(key: str, **defaults):
    """A widget's default only on first show: once its key holds a (kept) value, passing a default as well makes
    Streamlit warn, and the kept value wins anyway."""
    return {} if key in st.session_state else defaults


def _fmt_ci(v: float, lo: float, hi: float) -> str:
    return "–" if pd.isna(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


# ---------------------------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------------------------


def page_empty(state: queries.DbState) -> None:
    st.title("mixlab dashboard")
    if state.status == "missing":
        st.warning(f"No mixlab database at `{state.path}` yet.")
    elif state.status == "empty":
        st.info(f"`{state.path}` is a mixlab database, but no run or evaluation has been recorded in it yet.")
    elif state.status == "not_mixlab":
        st.error(f"`{state.path}` is a DuckDB file, but not a mixlab database (no mixlab schema).")
    else:
        st.error(state.message)
    st.markdown(
        """
### How to get something to look at

1. **Run the embedded demo** (CPU, about 15 minutes): builds demo mixtures, trains the hybrid model on each,
   evaluates, and writes `runs/mixlab.duckdb`:

   ```bash
   make demo
   ```
2. Or run your own: `mixlab mix build NAME`, `mixlab run recipes/registry/X.yaml`, `mixlab eval CHECKPOINT --suite S`.
   Every step writes to the same database file.
3. Then open the dashboard on it (it reads while runs are writing):

   ```bash
   mixlab dashboard --db runs/mixlab.duckdb
   ```

To explore the views on synthetic-but-consistent data first:
`python -m mixlab.dashboard.sample_data --db /tmp/mixlab-sample.duckdb && mixlab dashboard --db /tmp/mixlab-sample.duckdb`
"""
    )


def page_tradeoff(runs: pd.DataFrame) -> None:
    cat = catalog()
    st.title("Leaderboard vs usability")
    st.caption("Which data mixtures sit on the Pareto front between leaderboard score (math/code benchmarks) and "
               "usability (judges, instruction following, style)? Runs that no other run beats on both axes form the "
               "front; CI whiskers say whether a gap is larger than noise.")
    if cat.empty:
        st.info("No evaluation metrics recorded yet: the trade-off appears once runs are evaluated (`mixlab eval`, "
                "or `make demo` for the whole loop). Built mixtures are already on the **Mixtures** page.")
        return
    axes = _axes(cat)
    c1, c2, c3, c4 = st.columns([3, 3, 2, 2])
    c4a, c4b = c4.container(), c4.container()
    x_name = c1.selectbox("x axis", list(axes), key="x_axis")
    y_name = c2.selectbox("y axis", list(axes), key="y_axis", **_kw("y_axis", index=1))
    colour_label = c3.selectbox("colour by", list(COLOR_BY), key="color_by")
    partial = c4a.toggle("include partial runs", key="partial",
                         help="By default a run must have every metric of an aggregate: an average over fewer "
                         "metrics is not comparable.")
    by_seeds = c4b.toggle("mean over seeds", key="seeds",
                          help="One point per mixture × stage × rung × base model, averaged over its seeds. Its CI "
                          "carries both the between-seed spread and each run's item noise (stats.mean_over_seeds).")
    x_axis, y_axis = axes[x_name], axes[y_name]
    maximize = (agg.axis_maximize(cat, x_axis), agg.axis_maximize(cat, y_axis))
    points = agg.pareto_points(axis_table(x_axis, y_axis), runs, maximize, require_full_coverage=not partial)
    if points.empty:
        st.info("No run (after filters) has values on both axes. Widen the filters or pick other metrics.")
        return
    if by_seeds:
        points = agg.collapse_seeds(points, maximize)
    else:  # single-metric axes: tiers by the paired test `mixlab compare` runs (aggregates keep the CI rule)
        points = agg.retier_paired(points, x_axis, y_axis, maximize,
                                   lambda ids, task, metric: load("item_values", ids, task, metric))
    front = agg.front_line(points, maximize)
    points["x_text"] = [_fmt_ci(*v) for v in zip(points["x"], points["x_lo"], points["x_hi"])]
    points["y_text"] = [_fmt_ci(*v) for v in zip(points["y"], points["y_lo"], points["y_hi"])]
    # Hover shows the raw metrics behind each aggregate.
    w = wide()
    tip_keys = [] if by_seeds else list(dict.fromkeys([k for k in (x_axis.metrics + y_axis.metrics)
                                                         if k in w.columns]))[:8]
    for k in tip_keys:
        s = w[k].reindex(points["run_id"]).to_numpy()
        points["tip_" + k] = [("–" if pd.isna(v) else f"{v:.3f}") for v in s]

    comp_labels = _composition_labels()
    points["composition"] = points["mixture_id"].map(comp_labels).fillna("–")
    n_front = int(points["on_front"].sum())
    n_tied = int((points["tier"] == "within CI of front").sum())
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("runs plotted", len(points), help=f"{len(runs)} runs pass the filters")
    m2.metric("on the Pareto front", n_front)
    m3.metric("within CI of the front", n_tied, help="Dominated, but no front run beats them beyond both 95 % CIs")
    m4.metric("clearly dominated", len(points) - n_front - n_tied)
    chart_cols = ["run_id", "x", "x_lo", "x_hi", "y", "y_lo", "y_hi", "tier", "on_front", "label", "mixture_name",
                  "mixture_family", "stage", "rung", "base_model", "x_text", "y_text", "composition"] + [
                      "tip_" + k for k in tip_keys] + (["n_seeds"] if by_seeds else [])
    spec = _tradeoff_spec(
        points[chart_cols], front, x_title=_axis_title(x_axis, maximize[0]), y_title=_axis_title(y_axis, maximize[1]),
        color=COLOR_BY[colour_label], color_title=colour_label,
        tooltip_metrics=[("tip_" + k, k) for k in tip_keys] + ([("n_seeds", "seeds averaged")] if by_seeds else []),
    )
    st.vega_lite_chart(spec=spec, key="tradeoff_chart", on_select=_on_chart_select, selection_mode=charts.PICK,
                       width="stretch")
    st.caption("Each dot is a run with 95 % CI whiskers on both axes; the dashed staircase is the Pareto front "
               "(labelled, outlined). Faded runs are dominated beyond both CIs. Click a run to open it; "
               "double-click clears.")

    _front_table(points, x_name, y_name)


def _front_table(points: pd.DataFrame, x_name: str, y_name: str) -> None:
    """The front's runs as a table, and a picker that opens any plotted run."""
    st.subheader("Runs on the front")
    table = points[points["on_front"]].sort_values("x")
    costs = load("run_costs")[["run_id", "device_s", "device_kind"]]
    table = table.merge(costs, on="run_id", how="left")  # what each front point cost (mixlab optimise records it)
    show = table[["run_id", "mixture_name", "mixture_family", "stage", "rung", "x_text", "y_text", "n_flagged",
                  "device_s", "device_kind"]].rename(
        columns={"mixture_name": "mixture", "mixture_family": "family", "x_text": x_name, "y_text": y_name,
                 "n_flagged": "contam. rows", "device_s": "cost (device-s)", "device_kind": "device"})
    st.table(show.set_index("run_id"))
    c1, c2 = st.columns([4, 1])
    labels = dict(zip(points["run_id"], points["label"]))
    choice = c1.selectbox("Open a run", points.sort_values(["on_front", "x"], ascending=False)["run_id"].tolist(),
                          format_func=lambda r: f"{labels.get(r, r)}  ({r})", key="open_choice")
    c2.button("Open run detail", key="open_btn", on_click=open_run, args=(choice,), width="stretch")


def _axes(cat: pd.DataFrame) -> dict[str, agg.Axis]:
    """The plottable axes: the two aggregates (their metrics chosen in an expander) and every single metric."""
    directional = cat[cat["direction"] != "neutral"]
    by_cat = lambda c: directional[directional["category"] == c]["key"].tolist()  # noqa: E731
    with st.expander("Aggregate definitions — which metrics make up each score", expanded=False):
        c1, c2 = st.columns(2)
        lb_keys = c1.multiselect("Leaderboard score averages", directional["key"].tolist(),
                                 key="agg_lb", **_kw("agg_lb", default=default_metrics("leaderboard")
                                                     or by_cat("leaderboard")[:1]))
        us_keys = c2.multiselect("Usability score averages", directional["key"].tolist(),
                                 key="agg_us", **_kw("agg_us", default=default_metrics("usability")
                                                     or by_cat("usability")[:1]))
        st.caption("Each metric is mapped to [0, 1], higher = better (1–10 judge scores → (x−1)/9; refusal and "
                   "repetition rates flipped), then averaged. The aggregate's 95 % CI combines the metrics' CIs as "
                   "independent errors.")
    axes = {LB_AGG: agg.Axis(LB_AGG, lb_keys, aggregate=True), US_AGG: agg.Axis(US_AGG, us_keys, aggregate=True)}
    for key in cat["key"]:
        axes[key] = agg.Axis(key, [key])
    return axes


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=32)
def _tradeoff_spec(points: pd.DataFrame, front: pd.DataFrame, **kwargs) -> dict:
    """The trade-off chart's Vega-Lite spec, built and validated once per data and settings (not per rerun)."""
    return charts.vega_lite_spec(charts.tradeoff(points, front, **kwargs))


def _axis_title(axis: agg.Axis, maximize: bool) -> str:
    if axis.aggregate:
        n = len(axis.metrics)
        return f"{axis.label.replace(' (aggregate)', '')}  (mean of {n} metric{'s' if n != 1 else ''}, 0–1)"
    return axis.label + ("" if maximize else "  (lower is better)")


def page_optimiser(runs: pd.DataFrame) -> None:
    st.title("Mixture optimiser")
    st.caption("What `mixlab optimise` learnt from a family's runs: surrogate quality (leave-one-mixture-out), "
               "per-source effects, the predicted front of its proposals beside the realised one, and what each "
               "point cost.")
    families = load("optimise_families")
    if not families:
        st.info("No surrogate fit yet. After a sweep over a mixture family (e.g. `mixlab sweep "
                "recipes/registry/sweeps/demo-dirichlet.yaml`), run `mixlab optimise fit --family demo-balanced`.")
        return
    family = st.selectbox("family", families, key="opt_family")
    fit = load("latest_fit", family)
    props = load("proposals", family)
    realised = optview.realised_points(fit)
    proposed = optview.proposed_points(props)
    st.caption(f"fit `{fit['fit_id'].iloc[0]}` · group `{fit['group_key'].iloc[0]}` · "
               f"{int(fit['n_mixtures'].max())} mixtures · {len(proposed)} proposals")
    if not realised.empty:
        pts, real_front, pred_front = optview.chart_frame(realised, proposed)
        st.vega_lite_chart(spec=charts.vega_lite_spec(charts.optimiser_front(pts, real_front, pred_front)),
                           key="optimiser_chart", width="stretch")
    c1, c2 = st.columns(2)
    with c1:
        st.subheader("Surrogate quality")
        st.dataframe(optview.fit_quality(fit), hide_index=True, width="stretch")
    with c2:
        st.subheader("Per-source effects")
        eff = optview.effects(fit)
        for line in optview.effect_sentences(eff):
            st.markdown(f"- {line}")
        st.dataframe(eff.style.format("{:+.3f}"), width="stretch")
    st.subheader("Cost per Pareto point")
    st.dataframe(optview.front_costs(realised, runs, load("run_costs")), hide_index=True, width="stretch")
    if not proposed.empty:
        st.subheader("Proposals")
        total = proposed.loc[proposed["status"] == "proposed", "est_device_s"].sum()
        st.caption(f"not yet run: about {total:,.0f} device-s at the family's median cost per run")
        st.dataframe(proposed, hide_index=True, width="stretch")


def page_leaderboard(runs: pd.DataFrame) -> None:
    st.title("Leaderboard")
    cat = catalog()
    if cat.empty:
        st.info("No evaluation metrics recorded yet.")
        return
    lb = st.session_state.get("agg_lb") or default_metrics("leaderboard")
    us = st.session_state.get("agg_us") or default_metrics("usability")
    keys = st.multiselect("Metric columns", cat["key"].tolist(), key="lb_cols",
                          **_kw("lb_cols", default=list(dict.fromkeys(lb + us))))
    show_ci = st.toggle("show ± (95 % CI half-width) columns", key="lb_ci", **_kw("lb_ci", value=True))
    table = agg.leaderboard_table(runs, wide(), keys)
    if table.empty:
        st.info("No run passes the filters.")
        return
    pts = agg.pareto_points(axis_table(agg.Axis(LB_AGG, lb, True), agg.Axis(US_AGG, us, True)), runs,
                            require_full_coverage=False).set_index("run_id")
    for name, axis in (("leaderboard", "x"), ("usability", "y")):
        table[f"{name} score"] = pts[axis].reindex(table["run_id"]).to_numpy()
        table[f"{name} ±"] = ((pts[axis + "_hi"] - pts[axis + "_lo"]) / 2).reindex(table["run_id"]).to_numpy()
    # The front among runs that have every metric of both aggregates (as on the Trade-off page).
    full = pts[(pts["x_coverage"] >= 1) & (pts["y_coverage"] >= 1)]
    on_front = agg.pareto.pareto_mask(full["x"], full["y"])
    table["front"] = table["run_id"].isin(set(full.index[on_front]))
    table = table.sort_values("leaderboard score", ascending=False, na_position="last")
    lead = ["run_id", "front", "mixture_name", "stage", "rung"]
    tail = ["mixture_family", "base_model", "seed", "created_at", "n_flagged", "status"]
    score_cols = ["leaderboard score", "leaderboard ±", "usability score", "usability ±"]
    metric_cols = [c for k in keys for c in ([k, k + " ±"] if show_ci else [k]) if c in table.columns]
    if not show_ci:
        score_cols = ["leaderboard score", "usability score"]
    cols = lead + score_cols + metric_cols + tail
    config = {c: st.column_config.NumberColumn(c, format="%.3f") for c in score_cols + metric_cols}
    config.update({
        "run_id": st.column_config.TextColumn("run", pinned=True),
        "front": st.column_config.CheckboxColumn("front", help="On the leaderboard-vs-usability Pareto front"),
        "n_flagged": st.column_config.NumberColumn("contam. rows", help="Training rows flagged against eval sets"),
        "created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        "mixture_name": "mixture", "mixture_family": "family", "base_model": "base model",
    })
    st.caption(f"{len(table)} runs · click a column header to sort · CIs are 95 % (Wilson or bootstrap, as stored)")
    st.dataframe(table[cols], hide_index=True, column_config=config, width="stretch", height=560)
    st.download_button("Download CSV", table[cols].to_csv(index=False).encode(), "mixlab-leaderboard.csv",
                       "text/csv", key="lb_csv")


def _front_mixtures(runs: pd.DataFrame) -> set[str]:
    """Mixture ids of the runs on the default (or the user's) leaderboard-vs-usability front."""
    cat = catalog()
    if cat.empty or runs.empty:
        return set()
    lb = st.session_state.get("agg_lb") or default_metrics("leaderboard")
    us = st.session_state.get("agg_us") or default_metrics("usability")
    pts = agg.pareto_points(axis_table(agg.Axis(LB_AGG, lb, True), agg.Axis(US_AGG, us, True)), runs)
    return set(pts.loc[pts["on_front"], "mixture_id"].dropna())


def page_mixtures(runs: pd.DataFrame) -> None:
    st.title("Mixture composition")
    mixes = load("mixtures")
    if mixes.empty:
        st.info("No mixtures recorded yet (`mixlab mix build NAME` records them).")
        return
    on_front = _front_mixtures(runs)
    names = {m: (f"★ {n}" if m in on_front else n) for m, n in zip(mixes["mixture_id"], mixes["name"])}
    # Mixtures of the runs on the leaderboard-vs-usability front first, then the most used ones.
    ranked = sorted(mixes["mixture_id"], key=lambda m: (m not in on_front,
                                                        -int(mixes.set_index("mixture_id").loc[m, "n_runs"])))
    chosen = st.multiselect("Mixtures", list(names), format_func=lambda m: names[m], key="mix_sel",
                            **_kw("mix_sel", default=ranked[: min(8, len(ranked))]))
    if on_front:
        st.caption("★ = a run trained on this mixture sits on the Pareto front of the Trade-off view "
                   "(with its current aggregate definitions).")
    comp = load("components", chosen)
    comp["mixture"] = comp["mixture_id"].map(names).fillna(comp["mixture"])
    if comp.empty:
        st.info("The chosen mixtures have no recorded components.")
    else:
        st.altair_chart(charts.composition(comp), width="stretch")
        st.caption("Per mixture: the pale bar is the share the YAML asked for, the solid bar what the build realised "
                   "(after epoch caps, filters, dedup and decontamination).")
        with st.expander("Component table"):
            st.dataframe(comp.drop(columns=["mixture_id"]), hide_index=True, width="stretch", column_config={
                "target_share": st.column_config.NumberColumn("target", format="percent"),
                "realised_share": st.column_config.NumberColumn("realised", format="percent"),
                "epochs": st.column_config.NumberColumn("epochs", format="%.2f"),
            })
    st.subheader("Diff two mixtures")
    if len(names) < 2:
        st.info("Only one mixture recorded: nothing to diff.")
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("A", list(names), format_func=lambda m: names[m], key="mix_a")
    b = c2.selectbox("B", list(names), format_func=lambda m: names[m], key="mix_b", **_kw("mix_b", index=1))
    both = load("components", [a, b])
    diff = queries.mixture_diff(both, a, b)
    st.altair_chart(charts.mixture_delta(diff, names[a], names[b]), width="stretch")
    fmt = {}
    for c in diff.columns:
        if "share" in c:
            fmt[c] = st.column_config.NumberColumn(c.replace("_", " "), format="percent")
        elif "rows" in c:
            fmt[c] = st.column_config.NumberColumn(c.replace("_", " "), format="localized")
        elif c.startswith("delta"):
            fmt[c] = st.column_config.NumberColumn(c.replace("_", " "), format="%+.1f pp")
        elif c != "source":
            fmt[c] = st.column_config.NumberColumn(c.replace("_", " "), format="%.2f")
    st.dataframe(diff, hide_index=True, width="stretch", column_config=fmt)
    yaml_a, yaml_b = (mixes.loc[mixes["mixture_id"] == m, "yaml"].iloc[0] or "" for m in (a, b))
    if yaml_a or yaml_b:
        udiff = "".join(difflib.unified_diff(yaml_a.splitlines(True), yaml_b.splitlines(True), names[a], names[b]))
        st.code(udiff or "(identical YAML)", language="diff")


def page_run(runs: pd.DataFrame) -> None:
    st.title("Run detail")
    if runs.empty:
        st.info("No runs recorded yet.")
        return
    # Sweep and ladder rows only group other runs: nothing to show on their own.
    ordered = runs[~runs["kind"].isin(["sweep", "ladder"])].sort_values("created_at", ascending=False,
                                                                          na_position="last")
    if ordered.empty:
        st.info("No training or evaluation runs recorded yet.")
        return
    labels = dict(zip(ordered["run_id"], ordered["label"]))
    ids = ordered["run_id"].tolist()
    if st.session_state.get("run_id") not in labels:
        st.session_state["run_id"] = ids[0]
    c1, c2 = st.columns(2)
    run_id = c1.selectbox("Run", ids, format_func=lambda r: f"{labels[r]}  ({r})", key="run_id")
    if st.session_state.get("compare_id") not in labels or st.session_state.get("compare_id") == run_id:
        st.session_state["compare_id"] = ""
    other = c2.selectbox("Compare with", [""] + [r for r in ids if r != run_id],
                         format_func=lambda r: "(none)" if not r else f"{labels[r]}  ({r})", key="compare_id") or None
    st.query_params.update({"view": "Run detail", "run": run_id})
    if other:
        st.query_params["compare"] = other
    elif "compare" in st.query_params:
        del st.query_params["compare"]
    run = runs.set_index("run_id").loc[run_id]
    st.session_state["_run_mixture"] = run.get("mixture_id")
    facts = {k: run.get(k) for k in ("mixture_name", "mixture_family", "stage", "rung", "base_model", "preset", "seed",
                                     "status", "git_sha", "device", "created_at", "checkpoint_path")}
    st.markdown(" · ".join(f"**{k.replace('_', ' ')}** {v}" for k, v in facts.items() if pd.notna(v) and v != "(none)"))
    if isinstance(run.get("error"), str) and run.get("error"):
        st.error(f"run failed: {run['error']}")
    tabs = st.tabs(["Training", "MoE expert load", "Eval metrics", "Samples", "Side by side"])
    with tabs[0]:
        _run_training(run_id, other, labels)
    with tabs[1]:
        _run_experts(run_id)
    with tabs[2]:
        _run_metrics(run_id, other, labels)
    with tabs[3]:
        _run_samples(run_id)
    with tabs[4]:
        _run_side_by_side(run_id, other, labels)


def _run_training(run_id: str, other: str | None, labels: dict) -> None:
    frames = [load("train_metrics", run_id).assign(run=labels[run_id])]
    if other:
        frames.append(load("train_metrics", other).assign(run=labels[other]))
    train = pd.concat(frames)
    if train.empty:
        st.info("No training metrics logged for this run.")
        return
    names = sorted(train["name"].unique())
    priority = ("loss", "learning_rate", "lr", "tokens_per_s", "grad_norm", "reward", "kl", "aux")
    rank = lambda n: next((i for i, p in enumerate(priority) if p in n.lower()), None)  # noqa: E731
    preferred = sorted((n for n in names if rank(n) is not None), key=lambda n: (rank(n), n))
    chosen = st.multiselect("Curves", names, default=preferred[:6] or names[:6], key="curve_names")
    if chosen:
        st.altair_chart(charts.curves(train, chosen))


def _run_experts(run_id: str) -> None:
    load_df = load("expert_load", run_id)
    if load_df.empty:
        st.info("No MoE expert load logged for this run (dense model, or logging was off).")
        return
    imb = queries.expert_imbalance(load_df)
    st.markdown("**Routing imbalance over steps × layers** — max / mean expert load; 1.0 is perfectly balanced.")
    st.altair_chart(charts.imbalance_heatmap(imb), width="stretch")
    layers = sorted(load_df["layer"].unique())
    worst = int(imb.groupby("layer")["max_over_mean"].mean().idxmax())
    layer = st.selectbox("Layer", layers, index=layers.index(worst), key="expert_layer",
                         help="Defaults to the least balanced layer")
    st.altair_chart(charts.expert_heatmap(load_df, layer), width="stretch")


def _run_metrics(run_id: str, other: str | None, labels: dict) -> None:
    metrics = load("latest_metrics")
    mine = metrics[metrics["run_id"] == run_id]
    if mine.empty:
        st.info("This run has no evaluation metrics yet.")
        return
    df = mine.assign(run=labels[run_id])
    if other:
        df = pd.concat([df, metrics[metrics["run_id"] == other].assign(run=labels[other])])
    df = df.assign(key=df["task"] + "/" + df["metric"])
    scales = catalog().set_index("key")
    df = df[df["key"].isin(scales.index)]
    lo, hi = scales["scale_lo"].reindex(df["key"]).to_numpy(), scales["scale_hi"].reindex(df["key"]).to_numpy()
    flip = (scales["direction"].reindex(df["key"]) == "lower").to_numpy()
    for col, src in (("pos", "mean"), ("pos_lo", "ci_low"), ("pos_hi", "ci_high")):
        v = ((df[src].to_numpy(float) - lo) / (hi - lo)).clip(0, 1)
        df[col] = v
    df.loc[flip, ["pos", "pos_lo", "pos_hi"]] = 1 - df.loc[flip, ["pos", "pos_hi", "pos_lo"]].to_numpy()
    df = df[(scales["direction"].reindex(df["key"]) != "neutral").to_numpy()]  # lengths etc. have no "better"
    # Per-answer style statistics ride on every task; they stay in the table below, out of the interval charts.
    df = df[~df["metric"].str.startswith(agg.STYLE_PREFIX)]
    for category in ("leaderboard", "usability", "other"):
        part = df[df["category"] == category]
        if part.empty:
            continue
        st.markdown(f"**{category}**")
        order = [labels[run_id]] + ([labels[other]] if other else [])
        st.altair_chart(charts.metric_intervals(part, order), width="stretch")
    table = mine[["task", "metric", "category", "n", "mean", "ci_low", "ci_high", "ci_method", "judge"]].copy()
    if other:
        theirs = metrics[metrics["run_id"] == other].set_index(["task", "metric"])
        key = list(zip(table["task"], table["metric"]))
        o_mean = [theirs["mean"].get(k) for k in key]
        o_lo = [theirs["ci_low"].get(k) for k in key]
        o_hi = [theirs["ci_high"].get(k) for k in key]
        table["compare mean"] = o_mean
        table["Δ (this − compare)"] = table["mean"] - pd.to_numeric(pd.Series(o_mean, index=table.index))
        table["CIs separated"] = [
            None if lo2 is None else bool(lo > hi2 or lo2 > hi)
            for lo, hi, lo2, hi2 in zip(table["ci_low"], table["ci_high"], o_lo, o_hi)
        ]
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(c, format="%.3f") for c in ("mean", "ci_low", "ci_high", "compare mean",
                                                                     "Δ (this − compare)")})


def _run_samples(run_id: str) -> None:
    tasks = load("sample_tasks", run_id)
    if tasks.empty:
        st.info("No per-sample rows stored for this run.")
        return
    c1, c2 = st.columns([3, 1])
    task = c1.selectbox("Task", tasks["task"].tolist(), key="sample_task",
                        format_func=lambda t: f"{t}  ({int(tasks.set_index('task').loc[t, 'n'])} samples)")
    only_failed = c2.toggle("failed only", key="sample_failed")
    rows = load("samples", run_id, task, only_failed=only_failed)
    st.dataframe(rows[["item_id", "score", "passed", "output", "judge_rationale", "output_tokens"]], hide_index=True,
                 width="stretch", height=300, column_config={
                     "output": st.column_config.TextColumn("output", width="large"),
                     "judge_rationale": st.column_config.TextColumn("judge rationale", width="large")})
    if rows.empty:
        return
    item = st.selectbox("Inspect item", rows["item_id"].tolist(), key="sample_item")
    r = rows.set_index("item_id").loc[item]
    st.markdown(f"**score** {r['score']} · **passed** {r['passed']}")
    c1, c2 = st.columns(2)
    c1.markdown("**prompt**")
    c1.code(r["prompt"] or "", language=None, wrap_lines=True)
    c1.markdown("**reference**")
    c1.code(r["reference"] or "", language=None, wrap_lines=True)
    c2.markdown("**output**")
    c2.code(r["output"] or "", language=None, wrap_lines=True)
    if r["judge_rationale"]:
        c2.markdown("**judge rationale**")
        c2.info(r["judge_rationale"])
    mixture_id = st.session_state.get("_run_mixture")
    if isinstance(mixture_id, str):
        flagged = load("flagged_for_item", mixture_id, item)
        if not flagged.empty:
            st.warning(f"{len(flagged)} training row(s) of this run's mixture overlapped this eval item "
                       "(flagged by the decontamination gate):")
            st.dataframe(flagged, hide_index=True, width="stretch")


def _run_side_by_side(run_id: str, other: str | None, labels: dict) -> None:
    if not other:
        st.info("Pick a run in **Compare with** (top right) to see both runs' answers to the same prompts.")
        return
    tasks = load("common_tasks", run_id, other)
    if not tasks:
        st.info("The two runs share no evaluated task with stored samples.")
        return
    c1, c2 = st.columns([3, 1])
    task = c1.selectbox("Task", tasks, key="pair_task")
    flipped_only = c2.toggle("only items that differ", value=True, key="pair_flipped")
    pairs = load("paired_samples", run_id, other, task)
    a_wins = int((pairs["score_a"] > pairs["score_b"]).sum())
    b_wins = int((pairs["score_b"] > pairs["score_a"]).sum())
    m1, m2, m3 = st.columns(3)
    m1.metric("items in common", len(pairs))
    m2.metric(f"better: {labels[run_id]}", a_wins)
    m3.metric(f"better: {labels[other]}", b_wins)
    test = agg.paired_comparison(pairs)
    if test is not None:  # the test `mixlab compare` prints for this task's primary metric
        st.caption(f"{labels[run_id]} − {labels[other]}: {test.describe()}"
                   + (" — significant" if test.significant else " — not significant"))
    view = pairs[pairs["flipped"]] if flipped_only else pairs
    if view.empty:
        st.info("No item scores differently between the two runs.")
        return
    item = st.selectbox("Item", view["item_id"].tolist(), key="pair_item")
    r = view.set_index("item_id").loc[item]
    st.markdown("**prompt**")
    st.code(r["prompt"] or "", language=None, wrap_lines=True)
    if r["reference"]:
        with st.expander("reference answer"):
            st.code(r["reference"], language=None, wrap_lines=True)
    a, b = st.columns(2)
    for col, side, rid in ((a, "a", run_id), (b, "b", other)):
        col.markdown(f"**{labels[rid]}** — score {r['score_' + side]}")
        col.code(r["output_" + side] or "", language=None, wrap_lines=True)
        if r["rationale_" + side]:
            col.caption(f"judge: {r['rationale_' + side]}")


def page_contamination() -> None:
    st.title("Contamination")
    summary = load("contamination_summary")
    if summary.empty:
        st.success("No training row was flagged against any eval set (or no mixture was built with the gate).")
        return
    mixes = ["(all mixtures)"] + sorted(summary["mixture"].unique())
    mixture = st.selectbox("Mixture", mixes, key="contam_mix")
    part = summary if mixture == "(all mixtures)" else summary[summary["mixture"] == mixture]
    m1, m2, m3 = st.columns(3)
    m1.metric("flagged rows", int(part["flagged"].sum()))
    m2.metric("sources", part["source"].nunique())
    m3.metric("benchmarks hit", part["benchmark"].nunique())
    st.altair_chart(charts.contamination_heatmap(part), width="stretch")
    st.caption("Training rows whose n-grams overlap an eval item, per source × benchmark. The decontamination gate "
               "drops them from the mixture; a non-zero cell says the source overlaps that benchmark.")
    c1, c2 = st.columns(2)
    source = c1.selectbox("Source", [None] + sorted(part["source"].unique()), key="contam_src",
                          format_func=lambda s: "(all)" if s is None else s)
    bench = c2.selectbox("Benchmark", [None] + sorted(part["benchmark"].unique()), key="contam_bench",
                         format_func=lambda s: "(all)" if s is None else s)
    mixture_id = None if mixture == "(all mixtures)" else part["mixture_id"].iloc[0]
    rows = load("contamination_rows", mixture_id=mixture_id, source=source, benchmark=bench)
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        "ngram": st.column_config.TextColumn("overlapping n-gram", width="large")})


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="mixlab", page_icon="⚖️", layout="wide")
    path = str(default_db_path())
    st.session_state["_db"] = path
    try:
        state = _cached("db_state", path, queries.db_stamp(path))
    except MixlabError as exc:
        st.error(str(exc))
        return
    if state.status != "ok":
        page_empty(state)
        return
    _init_from_query_params()
    for key in PERSISTENT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    st.sidebar.markdown("## ⚖️ mixlab")
    st.sidebar.caption(f"`{path}` · {state.n_runs} runs · {state.n_metrics} metrics · {state.n_mixtures} mixtures")
    view = st.sidebar.radio("View", VIEWS, key="view", label_visibility="collapsed")
    try:
        all_runs = load("runs")
        if view in ("Trade-off", "Leaderboard"):
            st.sidebar.divider()
            runs = sidebar_filters(all_runs)
        if view == "Trade-off":
            page_tradeoff(runs)
        elif view == "Leaderboard":
            page_leaderboard(runs)
        elif view == "Mixtures":
            page_mixtures(all_runs)
        elif view == "Optimiser":
            page_optimiser(all_runs)
        elif view == "Run detail":
            page_run(all_runs)
        else:
            page_contamination()
    except MixlabError as exc:  # e.g. a writer held the lock past the timeout
        st.warning(f"The database is busy or unreadable right now: {exc}")
        st.button("Retry", key="retry")
    if view != "Run detail" and st.query_params.get("view") != view:
        st.query_params.clear()
        st.query_params["view"] = view
    st.sidebar.divider()
    if st.sidebar.toggle("live: follow new writes", key="live", help=f"Re-check the database every {LIVE_EVERY_S} s "
                         "and redraw when a run or eval has written to it."):
        _watch_database(path, queries.db_stamp(path))
    st.sidebar.caption(f"read-only · refreshed on interaction (cache {CACHE_TTL_S} s) · {date.today():%Y-%m-%d}")


@st.fragment(run_every=LIVE_EVERY_S)
def _watch_database(path: str, stamp: tuple[int, int]) -> None:
    """Live mode: a tiny fragment polls the file's stamp (no database open) and reruns the app when it moved."""
    if queries.db_stamp(path) != stamp:
        st.rerun(scope="app")
