"""`mixlab optimise fit|propose|loop`: surrogates of a mixture family, proposals, and the propose-sweep-refit loop.

`mixlab.recipes.optimise` imports the sweep runner (torch, TRL): it is imported inside the commands so that
`mixlab --help` stays fast.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Learn from a mixture family's runs which weights move the front; propose and run the next.",
                  no_args_is_help=True)

FAMILY = typer.Option(..., "--family", help="base mixture name: its runs and those of its `extends:` variants")
GROUP = typer.Option(None, "--group", help="recipe signature when the family was trained several ways")


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else f"{x:.{digits}f}"


def _cost(seconds: float | None, kind: str | None) -> str:
    return "-" if seconds is None else f"{seconds:,.0f} device-s" + (f" ({kind})" if kind else "")


def _front_table(data) -> Table:
    from mixlab.recipes.optimise import front_mask, mixture_cost, realised_points

    ids, _, pts, half = realised_points(data)
    on = front_mask(pts) if len(pts) else []
    table = Table("mixture", *data.features, "leaderboard", "usability", "front", "cost", title="realised points")
    for i, mid in enumerate(ids):
        x = data.X[data.mixture_ids.index(mid)]
        table.add_row(data.name_of(mid), *(f"{v:.2f}" for v in x),
                      f"{pts[i, 0]:.3f} ±{half[i, 0]:.3f}", f"{pts[i, 1]:.3f} ±{half[i, 1]:.3f}",
                      "yes" if on[i] else "", _cost(*mixture_cost(data, mid)))
    return table


@app.command("fit")
def fit_cmd(
    family: str = FAMILY,
    models: Optional[List[str]] = typer.Option(None, "--model", help="linear | loglinear | gp (repeat; default all)"),
    group: Optional[str] = GROUP,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fit a surrogate per metric and per axis; report leave-one-mixture-out error and Spearman rho; store the fit."""
    from mixlab.recipes.optimise import MODELS, fit_family
    from mixlab.store import Store

    fit_id, data, fits = fit_family(Store(), family, models=models or MODELS, group=group, progress=not as_json)
    if as_json:
        typer.echo(json.dumps({"fit_id": fit_id, "group": data.group_key, "features": data.features, "fits": [
            {"target": f.target, "model": f.model, "selected": f.selected, "n_mixtures": f.n_mixtures,
             "n_runs": f.n_runs, "loo_rmse": f.loo_rmse, "loo_rmse_mean_only": f.baseline_rmse,
             "informative": f.informative, "loo_mae": f.loo_mae, "spearman": list(f.spearman),
             "effects_per_10pt": f.effects} for f in fits]}, default=float))
        return
    console = Console()
    console.print(f"fit [bold]{fit_id}[/bold]: family {family}, group {data.group_key}, {len(data.run_ids)} runs, "
                  f"{len(set(data.mixture_ids))} mixtures, features {data.features}")
    if data.other_groups:
        console.print(f"(other groups of this family, not used: {data.other_groups}; pick one with --group)")
    table = Table("target", "model", "mixtures", "LOO RMSE", "mean-only RMSE", "LOO MAE", "Spearman ρ [95% CI]", "",
                  title="leave-one-mixture-out (mean-only: predicting the other mixtures' mean)")
    for f in fits:
        rho, lo, hi = f.spearman
        note = ("selected" + ("" if f.informative else ", NO SIGNAL (not better than the mean, or ρ's CI reaches 0)")
                if f.selected else "")
        table.add_row(f.target, f.model, str(f.n_mixtures), _fmt(f.loo_rmse), _fmt(f.baseline_rmse),
                      _fmt(f.loo_mae), f"{_fmt(rho, 2)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]", note)
    console.print(table)
    eff = Table("target", *(f"+10 pt {name}" for name in data.features), title="per-source effects (selected model)")
    for f in fits:
        if f.selected:
            eff.add_row(f.target, *(f"{f.effects[n]:+.3f}" if n in f.effects else "-" for n in data.features))
    console.print(eff)
    console.print(_front_table(data))


@app.command("propose")
def propose_cmd(
    family: str = FAMILY,
    n: int = typer.Option(4, "--n", min=1, help="mixtures to propose"),
    mins: Optional[List[str]] = typer.Option(None, "--min", help="METRIC=VALUE floor (repeatable), e.g. gsm8k=0.6"),
    fit_id: Optional[str] = typer.Option(None, "--fit", help="stored fit id (default: the family's latest)"),
    beta: float = typer.Option(1.0, "--beta", min=0.0, help="optimism: mean + beta x sd"),
    confidence: float = typer.Option(0.5, "--confidence", min=0.0, max=1.0,
                                     help="predicted probability each --min floor must reach"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write N mixtures predicted to extend the front (or to maximise usability under --min floors) as YAML."""
    from mixlab.recipes.optimise import X_AXIS, Y_AXIS, propose
    from mixlab.store import Store

    out = propose(Store(), family, n, mins=mins or (), fit_id=fit_id, beta=beta, confidence=confidence, seed=seed)
    if as_json:
        typer.echo(json.dumps({**out, "proposals": [p.__dict__ for p in out["proposals"]]}, default=str))
        return
    console = Console()
    console.print(f"fit {out['fit_id']}; objective: {out['objective']}")
    table = Table("mixture", *out["features"], "leaderboard (pred ± sd)", "usability (pred ± sd)", "est. cost",
                  "YAML", title="proposals")
    for p in out["proposals"]:
        px, py = p.predicted[X_AXIS], p.predicted[Y_AXIS]
        table.add_row(p.mixture_name, *(f"{p.weights[f]:.2f}" for f in out["features"]),
                      f"{px['mean']:.3f} ± {px['sd']:.3f}", f"{py['mean']:.3f} ± {py['sd']:.3f}",
                      _cost(p.est_device_s, out["device_kind"]), p.mixture_path)
    console.print(table)
    total = sum(p.est_device_s or 0 for p in out["proposals"])
    console.print(f"running all {len(out['proposals'])}: about {_cost(total or None, out['device_kind'])}")


@app.command("loop")
def loop_cmd(
    family: str = FAMILY,
    rounds: int = typer.Option(1, "--rounds", min=1),
    n: int = typer.Option(2, "--n", min=1, help="mixtures per round"),
    mins: Optional[List[str]] = typer.Option(None, "--min", help="METRIC=VALUE floor (repeatable)"),
    parallel: int = typer.Option(1, "--parallel", min=1, help="runs at once (processes)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="training seed (default: the family's)"),
    group: Optional[str] = GROUP,
    quiet: bool = typer.Option(False, "--quiet"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Propose -> sweep -> refit, ROUNDS times; every round, its proposals, runs and refit are recorded."""
    from mixlab.recipes.optimise import X_AXIS, Y_AXIS, run_loop
    from mixlab.store import Store

    out = run_loop(Store(), family, rounds, n, mins=mins or (), parallel=parallel, seed=seed, group=group,
                   progress=not quiet)
    if as_json:
        typer.echo(json.dumps(out, default=float))
        return
    console = Console()
    for r in out["rounds"]:
        table = Table("proposal", "leaderboard pred → realised", "usability pred → realised", "cost",
                      "dominated by the initial sweep?", title=f"{out['loop_id']} round {r['round']}")
        for row in r["proposals"]:
            if row["status"] != "completed":
                table.add_row(row["proposal"], "-", "-", "-", "run failed")
                continue
            verdict = ("no" if not row["dominated"] else
                       f"yes, by {', '.join(row['dominated_by'])}"
                       + (" (beyond CIs: " + ", ".join(row["clearly_dominated_by"]) + ")"
                          if row["clearly_dominated_by"] else " (within CIs)"))
            cells = [f"{row['predicted'][a]['mean']:.3f}±{row['predicted'][a]['sd']:.3f} → "
                     f"{row['realised'][a]:.3f}±{row['ci_half'][a]:.3f}" for a in (X_AXIS, Y_AXIS)]
            table.add_row(row["proposal"], *cells, _cost(row["cost_device_s"], None), verdict)
        console.print(table)
        for axis, f in r["refit"].items():
            console.print(f"refit {axis}: {f['model']}, LOO RMSE {f['loo_rmse']:.3f}, Spearman ρ "
                          f"{_fmt(f['spearman'][0], 2)} [{_fmt(f['spearman'][1], 2)}, {_fmt(f['spearman'][2], 2)}]")
