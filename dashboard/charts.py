"""Altair chart builders: pure functions from DataFrames to charts, so they are testable without Streamlit."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

TIER_ORDER = ["front", "within CI of front", "dominated"]
MAX_LABELS = 12
TIER_OPACITY = [1.0, 0.75, 0.28]
PICK = "pick"  # the selection's name; Streamlit reports clicks under it


def _padded(lo: pd.Series, hi: pd.Series, pad: float = 0.06) -> list[float]:
    a, b = float(np.nanmin(lo)), float(np.nanmax(hi))
    span = (b - a) or abs(a) or 1.0
    return [a - pad * span, b + pad * span]


def tradeoff(points: pd.DataFrame, front: pd.DataFrame, *, x_title: str, y_title: str, color: str,
             color_title: str, tooltip_metrics: list[tuple[str, str]] = (), height: int = 520) -> alt.LayerChart:
    """Scatter of runs with 95 % CI whiskers on both axes, the Pareto staircase, labelled front points.

    `points` comes from `aggregates.tradeoff_points`; `tooltip_metrics` are (column, title) pairs shown on hover.
    Clicking a point selects its `run_id` under the selection named `PICK`.
    """
    points = points.assign(show_label=front_labels(points))
    x_scale = alt.Scale(domain=_padded(points["x_lo"], points["x_hi"]), nice=False, zero=False)
    y_scale = alt.Scale(domain=_padded(points["y_lo"], points["y_hi"]), nice=False, zero=False)
    colour = alt.Color(f"{color}:N", title=color_title, scale=alt.Scale(scheme="tableau10"),
                       legend=alt.Legend(orient="right", symbolType="circle", labelLimit=220))
    pick = alt.selection_point(name=PICK, fields=["run_id"], on="click", empty=False, clear="dblclick")
    hover = alt.selection_point(name="hover", fields=["run_id"], on="pointerover", empty=False, clear="pointerout")
    opacity = alt.Opacity("tier:N", title="Pareto status", scale=alt.Scale(domain=TIER_ORDER, range=TIER_OPACITY),
                          legend=alt.Legend(orient="right"))

    base = alt.Chart(points)
    x_enc = alt.X("x:Q", title=x_title, scale=x_scale, axis=alt.Axis(grid=True, gridOpacity=0.35))
    y_enc = alt.Y("y:Q", title=y_title, scale=y_scale, axis=alt.Axis(grid=True, gridOpacity=0.35))
    whisker_opacity = alt.condition(hover, alt.value(0.9), alt.value(0.3))
    x_err = base.mark_rule(strokeWidth=1.2).encode(
        x=alt.X("x_lo:Q", scale=x_scale, title=x_title), x2="x_hi:Q", y=alt.Y("y:Q", scale=y_scale), color=colour,
        opacity=whisker_opacity)
    y_err = base.mark_rule(strokeWidth=1.2).encode(
        y=alt.Y("y_lo:Q", scale=y_scale, title=y_title), y2="y_hi:Q", x=alt.X("x:Q", scale=x_scale), color=colour,
        opacity=whisker_opacity)

    tooltip = [
        alt.Tooltip("label:N", title="run"), alt.Tooltip("mixture_name:N", title="mixture"),
        alt.Tooltip("mixture_family:N", title="family"), alt.Tooltip("stage:N"), alt.Tooltip("rung:N"),
        alt.Tooltip("x_text:N", title=x_title), alt.Tooltip("y_text:N", title=y_title),
        alt.Tooltip("tier:N", title="Pareto"), alt.Tooltip("composition:N", title="mixture (realised)"),
    ] + [alt.Tooltip(f"{col}:N", title=title) for col, title in tooltip_metrics]
    dots = base.mark_circle(stroke="#1f2933").encode(
        x=x_enc, y=y_enc, color=colour, opacity=opacity,
        size=alt.condition(alt.datum.on_front, alt.value(190), alt.value(70)),
        strokeWidth=alt.when(pick).then(alt.value(3)).when(alt.datum.on_front).then(alt.value(1.4)).otherwise(
            alt.value(0)),
        tooltip=tooltip,
    ).add_params(pick, hover)

    layers = [x_err, y_err]
    if len(front) >= 1:
        stair = alt.Chart(front).mark_line(interpolate="step-before", color="#1f2933", strokeWidth=1.8,
                                           strokeDash=[6, 3], opacity=0.8).encode(
            x=alt.X("x:Q", scale=x_scale), y=alt.Y("y:Q", scale=y_scale), order="x:Q")
        layers.append(stair)
    labels = base.transform_filter(alt.datum.show_label).mark_text(
        align="left", dx=9, dy=-9, fontSize=11, fontWeight="bold", color="#1f2933").encode(
        x=alt.X("x:Q", scale=x_scale), y=alt.Y("y:Q", scale=y_scale), text="mixture_name:N")
    layers += [dots, labels]
    return alt.layer(*layers).properties(height=height).configure_axis(
        labelFontSize=12, titleFontSize=13, titleFontWeight="normal").configure_legend(
        labelFontSize=12, titleFontSize=12).configure_view(strokeOpacity=0)


def vega_lite_spec(chart: alt.TopLevelMixin) -> dict:
    """`chart` as a Vega-Lite dict whose data frames sit under `datasets` by name, for `st.vega_lite_chart`.

    `st.altair_chart` converts and re-validates the whole Altair object on every rerun (0.25-0.6 s for the
    trade-off chart on 2 cores); the view caches this dict per data instead. No global Altair state is touched
    (data transformers and themes are process-wide, and sessions run in parallel threads)."""
    datasets: dict[str, pd.DataFrame] = {}
    names: dict[int, str] = {}
    swapped = []
    try:
        for sub in [chart, *getattr(chart, "layer", [])]:
            if isinstance(sub.data, pd.DataFrame):
                key = names.setdefault(id(sub.data), f"data-{len(names)}")
                datasets[key] = sub.data
                swapped.append((sub, sub.data))
                sub.data = alt.NamedData(name=key)
        spec = chart.to_dict()
    finally:
        for sub, data in swapped:  # the caller's chart is left as it was
            sub.data = data
    view = spec.get("config", {}).get("view", {})
    for key in ("continuousWidth", "continuousHeight"):  # the default theme's fixed size; Streamlit sizes charts
        view.pop(key, None)
    spec["datasets"] = datasets
    return spec


def front_labels(points: pd.DataFrame) -> pd.Series:
    """Which front points get a text label: one per mixture (its first along the front), at most MAX_LABELS,
    so that a crowded front stays readable; hover still names every point."""
    front = points[points["on_front"]].sort_values("x")
    first = front.drop_duplicates("mixture_name").head(MAX_LABELS).index
    return points.index.isin(first)


# One hue family per top-level group (math, code, chat, ...), shades within it for its sources.
_HUES = [
    ["#2b6cb0", "#63a4e0", "#16427a", "#a3c9ef", "#4a88c7"],   # blues
    ["#dd6b20", "#f6a25b", "#9c4215", "#fbc99a", "#e88a3c"],   # oranges
    ["#2f855a", "#68c08f", "#1c5a3b", "#a6dcbc", "#48a774"],   # greens
    ["#805ad5", "#b197ef", "#553c9a", "#d6c8f7", "#9a78e2"],   # purples
    ["#c53030", "#f08080", "#822727", "#f6b3b3", "#dd5656"],   # reds
    ["#4a5568", "#a0aec0", "#2d3748", "#cbd5e0", "#718096"],   # greys
]


def group_colours(keys: pd.DataFrame) -> dict[str, str]:
    """source -> colour: sources of the same top-level group (first segment of group_path) share a hue."""
    out: dict[str, str] = {}
    groups: dict[str, int] = {}
    used: dict[str, int] = {}
    for group_path, source in zip(keys["group_path"], keys["source"]):
        top = (group_path or source).split("/")[0]
        g = groups.setdefault(top, len(groups))
        k = used.get(top, 0)
        used[top] = k + 1
        palette = _HUES[g % len(_HUES)]
        out.setdefault(source, palette[k % len(palette)])
    return out


def composition(comp: pd.DataFrame, height_per_mixture: int = 46) -> alt.Chart:
    """Stacked bars: per mixture, its target share (pale) and realised share (solid) per source.

    Sources are stacked and coloured in group order (e.g. math/…, code/…, chat/…) so related sources sit together."""
    long = pd.concat([
        comp.assign(which="target", share=comp["target_share"]),
        comp.assign(which="realised", share=comp["realised_share"]),
    ])[["mixture", "source", "group_path", "which", "share", "realised_rows", "epochs"]]
    keys = long[["group_path", "source"]].fillna("").drop_duplicates().sort_values(["group_path", "source"])
    order = list(dict.fromkeys(keys["source"]))
    long["source_rank"] = long["source"].map({s: i for i, s in enumerate(order)})
    colours = group_colours(keys)
    return alt.Chart(long).mark_bar(stroke="white", strokeWidth=0.5).encode(
        y=alt.Y("mixture:N", title=None, sort=None, axis=alt.Axis(labelLimit=260)),
        yOffset=alt.YOffset("which:N", sort=["target", "realised"]),
        x=alt.X("share:Q", stack="normalize", title="share of the mixture", axis=alt.Axis(format="%")),
        color=alt.Color("source:N", scale=alt.Scale(domain=order, range=[colours[s] for s in order]), title="source",
                        sort=order),
        opacity=alt.Opacity("which:N", scale=alt.Scale(domain=["target", "realised"], range=[0.4, 1.0]),
                            title="bar", sort=["target", "realised"]),
        order=alt.Order("source_rank:Q"),
        tooltip=["mixture:N", "source:N", "group_path:N", "which:N", alt.Tooltip("share:Q", format=".1%"),
                 alt.Tooltip("realised_rows:Q", format=","), alt.Tooltip("epochs:Q", format=".2f")],
    ).properties(height=alt.Step(18))


def mixture_delta(diff: pd.DataFrame, name_a: str, name_b: str) -> alt.Chart:
    """Diverging bars: realised share of each source in B minus A, in percentage points."""
    return alt.Chart(diff).mark_bar().encode(
        y=alt.Y("source:N", sort="-x", title=None),
        x=alt.X("delta_realised_pp:Q", title=f"realised share: {name_b} − {name_a} (pp)"),
        color=alt.condition(alt.datum.delta_realised_pp > 0, alt.value("#2f7ebc"), alt.value("#d1495b")),
        tooltip=["source:N", alt.Tooltip("realised_share_a:Q", format=".1%", title=name_a),
                 alt.Tooltip("realised_share_b:Q", format=".1%", title=name_b),
                 alt.Tooltip("delta_realised_pp:Q", format="+.1f", title="Δ pp")],
    ).properties(height=alt.Step(24))


def curves(train: pd.DataFrame, names: list[str]) -> alt.FacetChart:
    """Small multiples of training curves, one panel per metric, one line per run."""
    df = train[train["name"].isin(names)]
    return alt.Chart(df).mark_line(strokeWidth=1.8, point=alt.OverlayMarkDef(size=14)).encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title="run", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(orient="bottom")),
        tooltip=["run:N", "name:N", "step:Q", alt.Tooltip("value:Q", format=".4g")],
    ).properties(width=260, height=170).facet(facet=alt.Facet("name:N", title=None, sort=names), columns=3).resolve_scale(
        y="independent")


def imbalance_heatmap(imb: pd.DataFrame) -> alt.Chart:
    """MoE routing imbalance over steps × layers: max/mean expert load (1 = balanced)."""
    return alt.Chart(imb).mark_rect().encode(
        x=alt.X("step:O", title="step"),
        y=alt.Y("layer:O", title="MoE layer"),
        color=alt.Color("max_over_mean:Q", title="max / mean load", scale=alt.Scale(scheme="orangered", domainMin=1)),
        tooltip=["step:O", "layer:O", alt.Tooltip("max_over_mean:Q", format=".2f"), alt.Tooltip("cv:Q", format=".2f"),
                 "hottest_expert:O"],
    ).properties(height=alt.Step(30))


def expert_heatmap(load: pd.DataFrame, layer: int) -> alt.Chart:
    """Load fraction per expert over steps, for one layer."""
    df = load[load["layer"] == layer]
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("step:O", title="step"),
        y=alt.Y("expert:O", title=f"expert (layer {layer})"),
        color=alt.Color("load:Q", title="load share", scale=alt.Scale(scheme="viridis")),
        tooltip=["step:O", "expert:O", alt.Tooltip("load:Q", format=".3f"), alt.Tooltip("bias:Q", format=".4f")],
    ).properties(height=alt.Step(18 if df["expert"].nunique() <= 32 else 6))


def metric_intervals(df: pd.DataFrame, run_order: list[str] | None = None) -> alt.LayerChart:
    """Dot-and-whisker per metric, one colour per run (two runs compared on the same axis).

    `df` has key, run, mean, ci_low, ci_high, n and the position columns pos, pos_lo, pos_hi: the value mapped to
    0–1 on the metric's own scale (see `aggregates.catalog`), so rates, 1–10 judge scores and percentages share an
    axis; hover shows the raw numbers."""
    base = alt.Chart(df).encode(
        y=alt.Y("key:N", title=None, sort="ascending", axis=alt.Axis(labelLimit=260)),
        yOffset=alt.YOffset("run:N", sort=run_order),
        color=alt.Color("run:N", scale=alt.Scale(domain=run_order, scheme="tableau10") if run_order else
                        alt.Scale(scheme="tableau10"), legend=alt.Legend(orient="bottom"), sort=run_order),
    )
    tooltip = ["run:N", "key:N", alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f"),
               alt.Tooltip("ci_high:Q", format=".3f"), "n:Q"]
    rule = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("pos_lo:Q", title="on the metric's scale, 0 = worst … 1 = best (95 % CI)",
                scale=alt.Scale(domain=[0, 1])), x2="pos_hi:Q", tooltip=tooltip)
    dot = base.mark_circle(size=70, opacity=1).encode(x="pos:Q", tooltip=tooltip)
    return alt.layer(rule, dot).properties(height=alt.Step(16 if df["run"].nunique() > 1 else 22))


def contamination_heatmap(summary: pd.DataFrame) -> alt.LayerChart:
    """Flagged training rows per source × benchmark, summed over the mixtures shown."""
    agg = summary.groupby(["source", "benchmark"], as_index=False)["flagged"].sum()
    base = alt.Chart(agg).encode(x=alt.X("benchmark:N", title="benchmark"), y=alt.Y("source:N", title="source"))
    rect = base.mark_rect().encode(color=alt.Color("flagged:Q", scale=alt.Scale(scheme="reds"), title="flagged rows"),
                                   tooltip=["source:N", "benchmark:N", "flagged:Q"])
    threshold = float(agg["flagged"].max()) / 2 if len(agg) else 0.0
    text = base.mark_text(fontSize=12).encode(
        text="flagged:Q",
        color=alt.condition(alt.datum.flagged > threshold, alt.value("white"), alt.value("black")))
    return alt.layer(rect, text).properties(height=alt.Step(34))


def optimiser_front(points: pd.DataFrame, realised_front: pd.DataFrame, predicted_front: pd.DataFrame, *,
                    x_title: str = "leaderboard (mean of its metrics)", y_title: str = "usability (mean of its metrics)",
                    height: int = 460) -> alt.LayerChart:
    """Realised mixtures and proposed ones (predicted mean ± 1 sd whiskers), the realised front (solid staircase)
    and the predicted front (dashed: realised points plus the proposals' predicted means)."""
    x_scale = alt.Scale(domain=_padded(points["x_lo"], points["x_hi"]), nice=False, zero=False)
    y_scale = alt.Scale(domain=_padded(points["y_lo"], points["y_hi"]), nice=False, zero=False)
    colour = alt.Color("kind:N", title=None, scale=alt.Scale(
        domain=["realised", "proposed (predicted ± 1 sd)"], range=["#1f77b4", "#d62728"]),
        legend=alt.Legend(orient="bottom"))
    base = alt.Chart(points)
    x, y = alt.X("x:Q", title=x_title, scale=x_scale), alt.Y("y:Q", title=y_title, scale=y_scale)
    layers = [
        base.mark_rule(strokeWidth=1.2, opacity=0.6).encode(x=alt.X("x_lo:Q", scale=x_scale, title=x_title),
                                                            x2="x_hi:Q", y=y, color=colour),
        base.mark_rule(strokeWidth=1.2, opacity=0.6).encode(y=alt.Y("y_lo:Q", scale=y_scale, title=y_title),
                                                            y2="y_hi:Q", x=x, color=colour),
    ]
    for front, dash, name in ((realised_front, [1, 0], "realised front"), (predicted_front, [6, 3], "predicted")):
        if len(front):
            layers.append(alt.Chart(front.assign(front=name)).mark_line(
                interpolate="step-before", color="#1f2933", strokeWidth=1.6, strokeDash=dash, opacity=0.8).encode(
                x=alt.X("x:Q", scale=x_scale), y=alt.Y("y:Q", scale=y_scale), order="x:Q",
                tooltip=[alt.Tooltip("front:N")]))
    layers.append(base.mark_circle(size=90, stroke="#1f2933", strokeWidth=0.6).encode(
        x=x, y=y, color=colour, shape=alt.Shape("kind:N", legend=None),
        tooltip=[alt.Tooltip("mixture:N"), alt.Tooltip("kind:N"), alt.Tooltip("x:Q", format=".3f", title=x_title),
                 alt.Tooltip("y:Q", format=".3f", title=y_title)]))
    return alt.layer(*layers).properties(height=height).configure_view(strokeOpacity=0)
